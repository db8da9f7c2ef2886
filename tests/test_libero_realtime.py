"""LIBERO episodes under the real-time runner, on a stand-in for the simulator: ticks, holds, which measurement each
step used, deadline accounting and the recording, all on the simulated clock (the real simulator: test_libero_sim)."""

import math

import numpy as np
import pytest
import torch

from fasvla.libero.env import Observation
from fasvla.libero.episode import EpisodeJob
from fasvla.libero.perturbations import Perturbation, PerturbedActions
from fasvla.libero.realtime import LiberoRobot, RealTimeEpisodeRun, RealTimeOptions
from fasvla.realtime import SimulatedClock
from fake_env import FakeEnv

PERIOD = 0.05  # LIBERO's 20 Hz
COSTS = {"step": 0.010, "prefix": 0.030}


def _run(joint, mode, latency=0.010, costs=COSTS, prefix_lead=2, video=True, **env_options):
    model, processor = joint
    run = RealTimeEpisodeRun(FakeEnv(**env_options), model, processor, EpisodeJob("libero_object", 0, 0, video),
                             Perturbation(), seed=0, options=RealTimeOptions(latency, costs, prefix_lead),
                             feedback_mode=mode, n_action_steps=4)
    ticks = list(run)
    return run, ticks


def test_anticipatory_feedback_acts_at_every_tick_from_the_first_action_on(joint):
    run, ticks = _run(joint, "anticipatory")  # L + c = 20 ms <= 50 ms
    result = run.result("anticipatory")
    assert len(ticks) == result.steps == 30 and not result.success
    # the first action is ready after the latency, the prefix and a step (50 ms); the episode's ticks start with it
    assert run.robot.first_action_s == pytest.approx(0.010 + 0.030 + 0.010)
    assert run.robot.action_ticks == list(range(30))
    assert result.held_steps == 0 and result.missed_deadlines == 0
    assert all(np.isfinite(output.action).all() for _, output, _ in ticks)


def test_synchronous_feedback_waits_a_tick_for_each_measured_state(joint):
    run, ticks = _run(joint, "synchronous")
    timings, robot = run.runner.timings, run.robot
    for previous, timing in zip(timings, timings[1:]):
        # the state after the previous action arrives L after its tick ends, the step takes c: the next tick has
        # passed, the arm holds one tick and the action runs at the one after; a chunk's first action too, whose
        # stream starts from that state (the prefix was observed 2 actions earlier)
        assert robot.action_ticks[timing.index] == robot.action_ticks[previous.index] + 2
        assert timing.missed
        measured = robot.observations[robot.action_ticks[previous.index] + 1].state
        torch.testing.assert_close(run.runner.streamed[timing.index].state_input[0], torch.as_tensor(measured),
                                   atol=1e-5, rtol=0)
    result = run.result("synchronous")
    assert result.held_steps == 30 - len(timings) and result.held_steps >= 14
    assert result.missed_deadlines == len(timings) - 1


def test_anticipatory_residual_uses_the_state_measured_before_the_previous_action(joint):
    run, _ = _run(joint, "anticipatory")
    robot, streamed, beta = run.robot, run.runner.streamed, joint[0].config.feedback_gain
    for t in run.runner.timings[1:]:
        if t.step > 0:
            j = t.index - 1  # the previous action: the state measured when it was due, at the end of action j - 1
            before = robot.observations[0 if j == 0 else robot.action_ticks[j - 1] + 1].state
            residual = torch.as_tensor(before)[None] - streamed[j].state_input
            expected = streamed[j].predicted_state + beta * residual
            torch.testing.assert_close(streamed[t.index].state_input, expected, atol=1e-5, rtol=0)


def test_held_ticks_keep_the_arm_still_and_the_gripper_as_last_commanded(joint):
    run, ticks = _run(joint, "synchronous")
    received = run.env.received
    assert len(received) == 30
    last_gripper = -1.0  # the wait steps leave the gripper open
    for (observation, output, sent), executed in zip(ticks, received):
        np.testing.assert_array_equal(sent, executed)
        if np.isnan(output.action).all():
            assert np.array_equal(executed[:6], np.zeros(6)) and executed[6] == last_gripper
            assert math.isnan(output.latency_s)
        else:
            np.testing.assert_allclose(executed, output.action, atol=1e-7)
            last_gripper = executed[6]


def test_a_prefix_is_built_from_the_newest_observation_that_had_arrived(joint):
    run, _ = _run(joint, "open_loop", latency=0.020)
    robot, timings, streamed = run.robot, run.runner.timings, run.runner.streamed
    prefix_starts = [start for kind, start, _ in run.runner.worker.log if kind == "prefix"]
    for chunk, start in enumerate(prefix_starts[: timings[-1].chunk + 1]):
        first = next(t for t in timings if t.chunk == chunk)
        tick = round(float(streamed[first.index].state_input[0, 7]))  # the tick its state was measured at
        assert tick * PERIOD + 0.020 <= start + 1e-9  # it had arrived when the prefix started
        # with a prefix lead of 1 the observation is taken when the chunk's third action starts: that tick's
        expected = 0 if chunk == 0 else robot.action_ticks[first.index - 2]
        assert tick == expected


def test_a_recording_without_video_keeps_the_frames_the_prefixes_were_built_from(joint):
    run, ticks = _run(joint, "open_loop", latency=0.020, video=False)
    frames, observed = run.recorder.frames, run.robot.observed
    assert [t for t, seen in enumerate(frames["policy.observed"]) if seen] == sorted(observed)
    assert all((image is None) == (t not in observed) for t, image in enumerate(frames["observation.images.image"]))
    timings, streamed = run.runner.timings, run.runner.streamed
    starts = [round(float(streamed[t.index].state_input[0, 7])) for t in timings if t.step == 0]
    assert set(starts) <= observed and len(observed) <= len(starts) + 1  # + the prefix of a chunk never started
    for t in observed:  # the image of the tick it was measured at
        assert frames["observation.images.image"][t][0, 0, 0] == 10 * t % 255


def test_the_episode_stops_at_success(joint):
    run, ticks = _run(joint, "anticipatory", success_at=7)
    result = run.result("anticipatory")
    assert result.success and result.steps == len(ticks) == 7 and len(run.runner.timings) == 7


def test_without_given_costs_the_compute_is_charged_its_measured_time(joint):
    run, _ = _run(joint, "anticipatory", costs=None)
    log = run.runner.worker.log
    assert all(ready > start for _, start, ready in log)
    result = run.result("anticipatory")
    assert result.policy_ms_per_action == pytest.approx(
        1000 * np.mean([ready - start for kind, start, ready in log if kind == "step"][: len(run.runner.timings)]))


def test_the_real_time_robot_returns_tick_times_and_never_runs_ahead():
    clock = SimulatedClock()
    env = FakeEnv()
    robot = LiberoRobot(env, clock, PerturbedActions(Perturbation(), 0), 0.0, env.reset(0))
    clock.sleep_until(0.012)
    observation = robot.observe()
    assert observation["frame"] == 0 and robot.ticks == 0  # the arm rests until the first action: nothing held
    assert robot.execute(np.ones(7)) == pytest.approx(0.012)  # the first action starts tick 0 when it comes
    assert robot.first_action_s == pytest.approx(0.012) and robot.ticks == 1
    clock.sleep_until(0.012 + PERIOD + 0.010)
    assert robot.execute(np.ones(7)) == pytest.approx(0.012 + 2 * PERIOD)  # 10 ms into tick 1: at tick 2, 1 held
    assert robot.ticks == 3 and len(env.received) == 3 and np.array_equal(env.received[1][:6], np.zeros(6))
    observation = robot.observe()  # at tick 2: the state measured then, not tick 3's from the future
    assert observation["state"][7] == 2 and observation["frame"] == 1  # it precedes the second action
    clock.sleep_until(0.012 + 3 * PERIOD)
    assert robot.execute(np.ones(7)) == pytest.approx(0.012 + 3 * PERIOD)  # exactly at a tick: that tick


def test_bad_real_time_settings_are_refused(joint, tiny_models):
    with pytest.raises(ValueError, match="latency_s must be >= 0"):
        RealTimeOptions(-0.01)
    with pytest.raises(ValueError, match="costs must be None or"):
        RealTimeOptions(0.01, {"step": 0.01})
    chunk_model, processor = tiny_models("chunk")
    with pytest.raises(ValueError, match="a chunk model has no stream"):
        RealTimeEpisodeRun(FakeEnv(), chunk_model, processor, EpisodeJob("libero_object", 0, 0), Perturbation(), 0,
                           RealTimeOptions())

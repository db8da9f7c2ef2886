"""The real-time runner's schedule on a simulated clock: a tiny model computes for real, time is modelled (step and
prefix costs, control period, state latency), so every send time is an exact number the test can state."""

import numpy as np
import pytest
import torch

from fasvla.realtime import RealTimeRunner, SimulatedClock, SimulatedRobot, SimulatedWorker, timing_summary

STEP, PREFIX = 0.010, 0.030  # seconds of (simulated) compute
PERIOD = 0.050


def _runner(joint, mode, latency=0.0, prefix_lead=2, period=PERIOD, step=STEP, prefix=PREFIX, pushes=None):
    model, processor = joint
    clock = SimulatedClock()
    images = [np.full((32, 32, 3), 40 * (c + 1), np.uint8) for c in range(len(model.config.camera_names))]
    robot = SimulatedRobot(clock, images, np.linspace(-0.5, 0.5, model.config.state_dim), period, latency,
                           pushes=pushes)
    worker = SimulatedWorker(clock, {"step": step, "prefix": prefix})
    runner = RealTimeRunner(model, processor, "pick up the cube", robot, period, mode, n_action_steps=4,
                            prefix_lead=prefix_lead, clock=clock, worker=worker)
    return runner, robot, worker


def _gaps(timings) -> np.ndarray:
    return np.round(np.diff([t.sent for t in timings]), 9)


@pytest.mark.parametrize("mode", ["open_loop", "anticipatory"])
def test_without_waiting_for_states_actions_come_every_period(joint, mode):
    runner, robot, _ = _runner(joint, mode, latency=0.030)  # anticipatory: L + c = 40 ms <= P
    timings = runner.run(num_chunks=3)
    assert len(timings) == len(robot.sent_at) == 12
    assert np.array_equal(_gaps(timings), np.full(11, PERIOD))  # boundaries included: the prefix was pipelined
    assert not any(t.missed for t in timings[1:])


def test_synchronous_feedback_adds_the_state_latency_and_the_step_to_every_gap(joint):
    runner, _, _ = _runner(joint, "synchronous", latency=0.030)
    timings = runner.run(num_chunks=2)
    within = [g for g, t in zip(_gaps(timings), timings[1:]) if t.step > 0]
    assert np.allclose(within, PERIOD + 0.030 + STEP)  # measured after the action, arrives L later, then a step
    assert all(t.missed for t in timings[1:] if t.step > 0)
    late = [round(t.ready - t.due, 9) for t in timings[1:] if t.step > 0]
    assert np.allclose(late, 0.030 + STEP)


def test_anticipatory_feedback_is_late_only_by_what_exceeds_the_period(joint):
    runner, _, _ = _runner(joint, "anticipatory", latency=0.045)  # L + c = 55 ms > P = 50 ms
    timings = runner.run(num_chunks=2)
    # the state before action i is measured when action i - 1's period ends, so a late action does not delay the
    # next measurement: the lateness never exceeds L + c - P and does not accumulate
    gaps = _gaps(timings)
    assert set(gaps) == {PERIOD, 0.045 + STEP}
    late = [t for t in timings[1:] if t.missed]
    assert len(late) == sum(gaps > PERIOD) == timing_summary(timings, PERIOD)["misses"]
    assert max(t.ready - t.due for t in late) == pytest.approx(0.045 + STEP - PERIOD)


def test_prefix_pipelining_removes_the_halt_at_chunk_boundaries(joint):
    halted, _, _ = _runner(joint, "open_loop", prefix_lead=0)
    pipelined, _, _ = _runner(joint, "open_loop", prefix_lead=1)
    without, with_ = timing_summary(halted.run(3), PERIOD), timing_summary(pipelined.run(3), PERIOD)
    # without: the next observation is taken when the last action has executed, then prefix + step
    assert without["boundary_halt_ms"] == pytest.approx(1000 * (PREFIX + STEP))
    assert without["misses"] == 2 and with_["misses"] == 0 and with_["boundary_halt_ms"] == 0


def test_a_prefix_that_does_not_fit_its_window_is_counted_late(joint):
    runner, _, worker = _runner(joint, "open_loop", prefix=0.200)  # 200 ms of prefix in a 1-action window
    timings = runner.run(num_chunks=2)
    boundary = timings[4]
    assert boundary.step == 0 and boundary.missed
    prefix_ready = [ready for kind, _, ready in worker.log if kind == "prefix"][1]
    assert boundary.ready == pytest.approx(prefix_ready + STEP)  # the prefix, then the chunk's first step
    assert timing_summary(timings, PERIOD)["misses"] == 1


def test_the_worker_never_starts_a_step_before_its_state_arrived(joint):
    for mode, offset in (("anticipatory", 0), ("synchronous", 1)):  # the state before action i - 1, or after it
        runner, robot, worker = _runner(joint, mode, latency=0.020)
        timings = runner.run(num_chunks=2)
        starts = [start for kind, start, _ in worker.log if kind == "step"]  # the job of action i is the i-th
        assert len(starts) == len(timings) == 8
        for t, start in zip(timings, starts):
            if t.step > 0:
                arrival = robot.measured_at(t.index - 1 + offset) + robot.latency_s
                assert start >= arrival - 1e-12, (mode, t)
                assert start < arrival + 1e-12 or mode == "anticipatory"  # synchronous starts the moment it arrives


def test_actions_reach_the_robot_in_order_and_never_before_they_are_due(joint):
    runner, robot, _ = _runner(joint, "anticipatory", latency=0.010)
    timings = runner.run(num_chunks=2)
    assert [t.index for t in timings] == list(range(8))
    assert [(t.chunk, t.step) for t in timings] == [(c, k) for c in range(2) for k in range(4)]
    for t in timings:
        assert t.sent == pytest.approx(max(t.due, t.ready))
    for t, step in zip(timings, runner.streamed):
        assert robot.sent_at[t.index] == t.sent
        moved = np.zeros(8, np.float32)
        moved[:7] = robot.gain * step.action[0].numpy()
        np.testing.assert_allclose(robot.states[t.index + 1] - robot.states[t.index], moved, atol=1e-6)


def test_the_runner_feeds_back_the_states_the_schedule_says(joint):
    """Anticipatory: S_in of action i = s_hat_i + beta (state before action i - 1 - S_in_{i-1}); synchronous: S_in of
    action i = the state before action i. A push shows which measurement was used."""
    push = {2: np.full(8, 0.3, np.float32)}
    beta = joint[0].config.feedback_gain
    runner, robot, _ = _runner(joint, "anticipatory", latency=0.010, pushes=push)
    runner.run(num_chunks=1)
    steps = runner.streamed
    for i in range(1, 4):
        residual = torch.as_tensor(robot.states[i - 1])[None] - steps[i - 1].state_input
        expected = steps[i - 1].predicted_state + beta * residual
        torch.testing.assert_close(steps[i].state_input, expected, atol=1e-5, rtol=0)
    runner, robot, _ = _runner(joint, "synchronous", latency=0.010, pushes=push)
    runner.run(num_chunks=1)
    for i in range(1, 4):
        torch.testing.assert_close(runner.streamed[i].state_input, torch.as_tensor(robot.states[i])[None],
                                   atol=1e-5, rtol=0)


def test_bad_settings_are_refused(joint):
    for lead in (-1, 5, None):
        with pytest.raises(ValueError, match="prefix_lead must be an integer in \\[0, 4\\]"):
            _runner(joint, "open_loop", prefix_lead=lead)
    with pytest.raises(ValueError, match="period_s must be > 0"):
        _runner(joint, "open_loop", period=0.0)


def test_a_prefix_queued_early_delays_the_chunks_last_step_and_the_halt_counts_it(joint):
    # one worker: with a lead of 3 the prefix (120 ms) runs before the chunk's last step, which waits behind it
    runner, _, _ = _runner(joint, "open_loop", prefix=0.120, prefix_lead=3)
    timings = runner.run(num_chunks=2)
    last_step = timings[3]
    assert last_step.step == 3 and last_step.missed and not timings[4].missed
    lost = 1000 * (timings[4].sent - timings[1].sent) - 3 * 1000 * PERIOD  # the window's time beyond 3 periods
    assert lost > 0
    assert timing_summary(timings, PERIOD, prefix_lead=3)["boundary_halt_ms"] == pytest.approx(lost)
    assert timing_summary(timings, PERIOD)["boundary_halt_ms"] == 0  # the boundary gap alone hides it

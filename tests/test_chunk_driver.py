"""The chunk driver: lockstep episodes with no inference delay are today's (recorded traces), and every chunk
starts from a consistent pair (A_0 and S_in_0 of the same frame) in every feedback mode, for every delay, in lockstep
and in real time."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fake_env import GAIN, FakeEnv, lockstep_trace

from fasvla.libero.episode import EpisodeJob, EpisodeRun
from fasvla.libero.perturbations import Perturbation
from fasvla.libero.policy import make_controller
from fasvla.libero.realtime import RealTimeEpisodeRun, RealTimeOptions
from fasvla.realtime import RealTimeRunner, SimulatedClock, SimulatedRobot, SimulatedWorker

FIXTURE = Path(__file__).parent / "fixtures" / "lockstep"
sys.path.insert(0, str(FIXTURE))
from record import CASES, NOISE  # noqa: E402


@pytest.mark.parametrize("case", list(CASES))
def test_lockstep_without_delay_reproduces_the_controllers_before_the_driver(case, tiny_models):
    from fasvla.tiny import tiny_model_and_processor

    options, mode = CASES[case]
    model, processor = tiny_model_and_processor(seed=0, **options)
    controller = make_controller(model, processor, "pick up the cube", mode, n_action_steps=4, inference_delay=0)
    torch.manual_seed(0)
    trace = lockstep_trace(controller, perturbation=NOISE)
    recorded = load_file(str(FIXTURE / "traces.safetensors"))
    for key, value in trace.items():
        # Float32 kernels round differently across CPUs (the CI machine differs by ~1e-8); any change in what the
        # controllers do moves these values by orders of magnitude more.
        np.testing.assert_allclose(value, recorded[f"{case}/{key}"], rtol=1e-5, atol=1e-6, err_msg=f"{case}/{key}")


def exact_stream(monkeypatch, model, gain: float) -> None:
    """Makes the model's stream predict exactly what a robot with state[:7] += gain * action does: every step
    streams the same action and the state increment it causes, so that a state estimate is right exactly when it
    is the state of the frame it claims to be."""
    config, normalizer = model.config, model.normalizer
    action = torch.linspace(-0.5, 0.8, config.action_dim)[None]  # normalised

    def velocity(cache, x, time):
        batch = x.shape[0]
        moved = torch.zeros(batch, config.state_dim)
        moved[:, :7] = gain * normalizer.unnormalize_action(action)[:, :7]
        increment = normalizer.normalize_state(moved) - normalizer.normalize_state(torch.zeros_like(moved))
        v = torch.cat([action.expand(batch, -1), increment], dim=-1)
        return config.chunk_size * torch.nn.functional.pad(v, (0, config.max_action_dim - v.shape[-1]))[:, None]

    monkeypatch.setattr(model, "stream_velocity", velocity)


def _check_consistent_starts(starts, executed, states, state_inputs, delay, steps=4):
    """Every chunk start: A_0 is the sum of the actions executed before its first action, S_in_0 the state before
    that action, and the observation is `delay` actions older (the first chunk's: its own)."""
    assert [s.frame for s in starts] == [steps * c for c in range(len(starts))]
    for start in starts:
        np.testing.assert_allclose(start.cumulative_action[0], executed[: start.frame].sum(0), atol=1e-5)
        np.testing.assert_allclose(state_inputs[start.frame], states[start.frame], atol=1e-5)
        assert start.delay == (0 if start.frame == 0 else delay)


@pytest.mark.parametrize("mode", ["open_loop", "anticipatory", "synchronous"])
@pytest.mark.parametrize("delay", [0, 1, 2, 3])
def test_lockstep_chunks_start_from_the_state_and_cumulative_action_of_one_frame(joint, monkeypatch, mode, delay):
    model, processor = joint
    exact_stream(monkeypatch, model, GAIN)
    controller = make_controller(model, processor, "pick up the cube", mode, n_action_steps=4,
                                 inference_delay=delay)
    trace = lockstep_trace(controller, steps=17, env=FakeEnv(max_steps=17, tick_in_state=False))
    executed = trace["sent"]
    states = np.concatenate([np.zeros((1, 8)), np.cumsum(np.pad(GAIN * executed[:, :7], ((0, 0), (0, 1))), 0)])
    _check_consistent_starts(controller.driver.starts, executed, states, trace["state_input"], delay)


@pytest.mark.parametrize("mode", ["open_loop", "anticipatory", "synchronous"])
@pytest.mark.parametrize("lead", [0, 1, 2, 3])
def test_real_time_chunks_start_from_the_state_and_cumulative_action_of_one_frame(joint, monkeypatch, mode, lead):
    """The runner observes `lead` actions before a boundary and starts the stream at the boundary: before the
    driver, it started from the observed state with the cumulative action of the boundary."""
    model, processor = joint
    exact_stream(monkeypatch, model, gain=0.05)
    clock = SimulatedClock()
    images = [np.full((32, 32, 3), 40, np.uint8) for _ in model.config.camera_names]
    robot = SimulatedRobot(clock, images, np.linspace(-0.5, 0.5, 8), 0.05, 0.01, gain=0.05)
    runner = RealTimeRunner(model, processor, "pick up the cube", robot, 0.05, mode, n_action_steps=4,
                            prefix_lead=lead, clock=clock, worker=SimulatedWorker(clock, {"step": 0.01,
                                                                                        "prefix": 0.03}))
    runner.run(num_chunks=4)
    executed = np.stack([step.action[0].numpy() for step in runner.streamed])
    state_inputs = np.stack([step.state_input[0].numpy() for step in runner.streamed])
    _check_consistent_starts(runner.driver.starts, executed, np.stack(robot.states), state_inputs, lead)


def test_each_mode_starts_a_delayed_chunk_from_its_freshest_measurement(joint, monkeypatch):
    """Delay 3, 4 actions a chunk: the second chunk is observed before action 1 and starts at action 4. A push
    measured before action 3 (after the observation) reaches S_in_0 through anticipatory feedback (the state
    measured before action 3) and synchronous feedback (before action 4), not open loop (before action 1)."""
    model, processor = joint
    exact_stream(monkeypatch, model, gain=0.05)
    push = np.full(8, 0.3, np.float32)
    state_input_at_start, true_state = {}, None
    for mode, measured in (("open_loop", 1), ("anticipatory", 3), ("synchronous", 4)):
        clock = SimulatedClock()
        images = [np.full((32, 32, 3), 40, np.uint8) for _ in model.config.camera_names]
        robot = SimulatedRobot(clock, images, np.zeros(8), 0.05, 0.0, gain=0.05, pushes={3: push})
        runner = RealTimeRunner(model, processor, "pick up the cube", robot, 0.05, mode, n_action_steps=4,
                                prefix_lead=3, clock=clock, worker=SimulatedWorker(clock, {"step": 0.0, "prefix": 0.0}))
        runner.run(num_chunks=2)
        start = runner.driver.starts[1]
        assert (start.observed_frame, start.frame, start.measured_frame) == (1, 4, measured)
        state_input_at_start[mode], true_state = runner.streamed[4].state_input[0].numpy(), robot.states[4]
    np.testing.assert_allclose(state_input_at_start["synchronous"], true_state, atol=1e-5)
    np.testing.assert_allclose(state_input_at_start["anticipatory"], true_state, atol=1e-5)  # exact prediction
    np.testing.assert_allclose(state_input_at_start["open_loop"], true_state - push, atol=1e-5)  # never saw it


def _planned_chunk(model, frames: list[int]):
    """A chunk model whose chunk planned from the observation of tick t is [100 t + j for j in 0..H-1] on every
    action dimension (the tick read from the fed state), recording the ticks it planned from in `frames`."""
    def predict_action_chunk(pixel_values, input_ids, attention_mask, state, **unused):
        tick = round(float(state[0, 7]))
        frames.append(tick)
        j = torch.arange(model.config.chunk_size, dtype=torch.float32)
        return (100 * tick + j)[None, :, None].expand(1, -1, model.config.action_dim)

    return predict_action_chunk


@pytest.mark.parametrize("delay", [0, 2, 4])
def test_a_delayed_chunk_executes_the_actions_it_planned_for_the_times_they_run(tiny_models, monkeypatch, delay):
    model, processor = tiny_models("chunk")
    frames = []
    monkeypatch.setattr(model, "predict_action_chunk", _planned_chunk(model, frames))
    controller = make_controller(model, processor, "pick up the cube", n_action_steps=4, inference_delay=delay)
    env = FakeEnv(max_steps=16)
    sent = lockstep_trace(controller, steps=16, env=env)["sent"][:, 0]
    observed = [0] + [4 * c - delay for c in range(1, 4)]
    assert frames[:4] == observed  # each chunk planned `delay` actions before its first one runs (the first: at 0)
    for t, action in enumerate(sent):
        planned_from = observed[t // 4]
        assert action == pytest.approx(100 * planned_from + (t - planned_from))  # the entry planned for time t


def test_a_chunk_model_trained_under_observation_delay_executes_its_chunk_from_the_start(tiny_models, monkeypatch):
    model, processor = tiny_models("chunk")
    monkeypatch.setattr(model.config, "max_observation_delay", 4)
    monkeypatch.setattr(model, "predict_action_chunk", _planned_chunk(model, []))
    controller = make_controller(model, processor, "pick up the cube", n_action_steps=4, inference_delay=2)
    sent = lockstep_trace(controller, steps=12, env=FakeEnv(max_steps=12))["sent"][:, 0]
    observed = [0, 2, 6]
    for t, action in enumerate(sent):  # planned for the boundary: entry j of the chunk runs j actions after it
        assert action == pytest.approx(100 * observed[t // 4] + t % 4)


def test_inference_delays_that_do_not_fit_a_chunk_are_refused(joint, tiny_models):
    model, processor = joint
    with pytest.raises(ValueError, match="inference_delay must be an integer in \\[0, n_action_steps=4\\], got 5"):
        make_controller(model, processor, "pick", "open_loop", n_action_steps=4, inference_delay=5)
    chunk_model, chunk_processor = tiny_models("chunk")
    steps = chunk_model.config.chunk_size // 2 + 1
    with pytest.raises(ValueError, match="inference_delay \\+ n_action_steps must be at most chunk_size"):
        make_controller(chunk_model, chunk_processor, "pick", n_action_steps=steps, inference_delay=steps)


def test_an_observation_the_previous_chunk_does_not_cover_is_refused(joint, inputs_of):
    model, processor = joint
    streamer = model.episode_streamer("synchronous", n_action_steps=3)
    inputs = inputs_of(model, processor)
    with pytest.raises(ValueError, match="frame must be an action index in \\[0, 0\\]"):
        streamer.prepare(frame=1, **inputs)
    old = streamer.prepare(**inputs)
    stream = streamer.start_prepared(old)
    next(stream)
    for _ in range(2):
        stream.send(inputs["state"])
    late = streamer.prepare(frame=1, **inputs)
    with pytest.raises(ValueError, match="pass measured_state, the state measured before action 3"):
        streamer.start_prepared(late)
    with pytest.raises(ValueError, match="the observation of frame 0 precedes the current stream"):
        second = streamer.start_prepared(streamer.prepare(**inputs))  # frame 3: a new stream starts there
        next(second)
        streamer.start_prepared(old, inputs["state"])


@pytest.mark.parametrize("mode, latency, costs", [
    ("open_loop", 0.010, {"step": 0.010, "prefix": 0.030}), ("anticipatory", 0.010, {"step": 0.010, "prefix": 0.030}),
    ("synchronous", 0.0, {"step": 0.0, "prefix": 0.0})])  # synchronous holds no tick only with nothing to wait for
@pytest.mark.parametrize("delay", [1, 3])
def test_real_time_with_a_prefix_that_fits_runs_the_lockstep_episode_of_its_delay(joint, mode, latency, costs,
                                                                                 delay):
    model, processor = joint
    job, perturbation = EpisodeJob("libero_object", 0, 0), Perturbation(action_noise=0.5)
    controller = make_controller(model, processor, FakeEnv.task_language, mode, n_action_steps=4,
                                 inference_delay=delay)
    lockstep = EpisodeRun(FakeEnv(max_steps=20), controller, job, perturbation, seed=3, record=False)
    real_time = RealTimeEpisodeRun(FakeEnv(max_steps=20), model, processor, job, perturbation, seed=3,
                                   options=RealTimeOptions(latency, costs, prefix_lead=delay), feedback_mode=mode,
                                   n_action_steps=4, record=False)
    lockstep_steps, real_time_steps = list(lockstep), list(real_time)
    assert real_time.held_steps == 0 and len(lockstep_steps) == len(real_time_steps) == 20
    for (_, expected, expected_sent), (_, output, sent) in zip(lockstep_steps, real_time_steps):
        np.testing.assert_array_equal(sent, expected_sent)
        np.testing.assert_array_equal(output.state_input, expected.state_input)
    assert [s.observed_frame for s in real_time.runner.driver.starts] == \
        [s.observed_frame for s in controller.driver.starts]

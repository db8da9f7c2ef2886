"""stream_actions: the generator protocol, the three feedback modes and the cumulative action across chunks."""

import numpy as np
import pytest
import torch

from fasvla.tiny import fake_observation
from streaming_fasvla import AnticipatoryFeedback, SynchronousFeedback

MODES = ["open_loop", "synchronous", "anticipatory"]
OBSERVATION_KEYS = ("pixel_values", "input_ids", "attention_mask", "state")


def _measurements(config, steps, batch=1, seed=3):
    """Scripted 'measured' states the test sends back, robot units."""
    rng = np.random.default_rng(seed)
    return [torch.tensor(rng.normal(0, 0.4, (batch, config.state_dim)), dtype=torch.float32) for _ in range(steps)]


def _run(stream, measured):
    """next() then send(measured[k]) after each step, until the stream stops."""
    steps = [next(stream)]
    for state in measured:
        try:
            steps.append(stream.send(state))
        except StopIteration:
            break
    return steps


@torch.no_grad()
def _offline(model, inputs, mode, measured, gain=1.0, cumulative=None):
    """DESIGN.md section 5 written out step by step, in normalised units, independently of the generator."""
    config, norm = model.config, model.normalizer
    cache = model.encode_prefix(**{k: inputs[k] for k in OBSERVATION_KEYS})
    d_a, d_s, horizon = config.action_dim, config.state_dim, config.chunk_size
    batch = inputs["state"].shape[0]
    accumulated = torch.zeros(batch, d_a) if cumulative is None else norm.normalize_action(cumulative)
    s_t = norm.normalize_state(inputs["state"])
    state_input, predicted, inputs_used = s_t, [s_t], []
    observed = [s_t] + [norm.normalize_state(m) if m is not None else None for m in measured]
    out = []
    for k in range(config.n_action_steps):
        if k > 0:
            if mode == "open_loop":
                state_input = predicted[k]
            elif mode == "synchronous":
                state_input = observed[k] if observed[k] is not None else predicted[k]
            else:  # the residual of the measurement one step older; none without one (revision 2)
                residual = 0 if observed[k - 1] is None else observed[k - 1] - inputs_used[k - 1]
                state_input = predicted[k] + gain * residual
        inputs_used.append(state_input)
        x = torch.nn.functional.pad(torch.cat([accumulated, state_input], -1), (0, config.max_action_dim - d_a - d_s))
        v = model.velocity(cache, x[:, None], torch.full((batch, 1), k / horizon))[:, 0]
        delta = v / horizon
        accumulated = accumulated + delta[:, :d_a]
        predicted.append(state_input + delta[:, d_a : d_a + d_s])
        out.append((norm.unnormalize_action(delta[:, :d_a]), norm.unnormalize_state(predicted[-1]),
                    norm.unnormalize_state(state_input)))
    return out


@pytest.mark.parametrize("mode", MODES)
def test_stream_equals_an_offline_step_by_step_recomputation(mode, joint, inputs_of):
    model, processor = joint
    inputs = inputs_of(model, processor, batch_size=2)
    measured = _measurements(model.config, model.config.n_action_steps, batch=2)
    measured[3] = None  # one step without a new measurement
    cumulative = torch.randn(2, model.config.action_dim)
    steps = _run(model.stream_actions(**inputs, feedback_mode=mode, feedback_gain=0.8, cumulative_action=cumulative),
                 measured)
    expected = _offline(model, inputs, mode, measured, gain=0.8, cumulative=cumulative)
    assert [s.index for s in steps] == list(range(model.config.n_action_steps))
    for step, (action, predicted, state_input) in zip(steps, expected, strict=True):
        torch.testing.assert_close(step.action, action, atol=1e-5, rtol=0)
        torch.testing.assert_close(step.predicted_state, predicted, atol=1e-5, rtol=0)
        torch.testing.assert_close(step.state_input, state_input, atol=1e-5, rtol=0)


def test_state_input_of_each_feedback_mode(joint, inputs_of):
    model, processor = joint
    inputs = inputs_of(model, processor)
    measured = _measurements(model.config, model.config.n_action_steps)
    run = {m: _run(model.stream_actions(**inputs, feedback_mode=m, feedback_gain=0.5), measured) for m in MODES}
    torch.testing.assert_close(run["open_loop"][0].state_input, inputs["state"])
    for k in range(1, model.config.n_action_steps):
        # open loop conditions on its own prediction; synchronous on the state measured after action k - 1
        torch.testing.assert_close(run["open_loop"][k].state_input, run["open_loop"][k - 1].predicted_state)
        torch.testing.assert_close(run["synchronous"][k].state_input, measured[k - 1])
    # anticipatory: s_hat_{k+1} + beta (s_obs_k - S_in_k), one measurement older (robot units: the scale
    # normalisation is linear, so the relation holds there too)
    steps = run["anticipatory"]
    torch.testing.assert_close(steps[1].state_input, steps[0].predicted_state)
    for k in range(2, model.config.n_action_steps):
        residual = measured[k - 2] - steps[k - 1].state_input
        torch.testing.assert_close(steps[k].state_input, steps[k - 1].predicted_state + 0.5 * residual,
                                   atol=1e-5, rtol=0)


def test_anticipatory_residual_is_observed_minus_predicted(joint, inputs_of):
    """A robot that runs ahead of the prediction pulls the next state inputs up, not down."""
    model, processor = joint
    inputs = inputs_of(model, processor)
    stream = model.stream_actions(**inputs, feedback_mode="anticipatory")
    first = next(stream)
    ahead = first.predicted_state + 1.0
    second = stream.send(ahead)
    third = stream.send(None)  # uses s_obs_1 - s_hat_1 = +1
    torch.testing.assert_close(second.state_input, first.predicted_state)
    torch.testing.assert_close(third.state_input - second.predicted_state, torch.ones_like(ahead), atol=1e-5, rtol=0)


def test_real_time_observe_then_step_reproduces_the_generator_protocol(joint, inputs_of):
    """A runner computes step k + 1 before s_obs_{k+1} exists: observe(s_obs_k), then send(None). That is the
    anticipatory rule exactly: each step uses the measurement one step older, paired with its own state input."""
    model, processor = joint
    inputs = inputs_of(model, processor)
    measured = _measurements(model.config, model.config.n_action_steps)
    generator = _run(model.stream_actions(**inputs, feedback_mode="anticipatory"), measured)
    stream = model.stream_actions(**inputs, feedback_mode="anticipatory")
    real_time = [next(stream), stream.send(None)]
    for k in range(2, model.config.n_action_steps):
        stream.observe(measured[k - 2])  # the state measured after step k - 2's action, i.e. before k - 1's ran
        real_time.append(stream.send(None))
    for offline, online in zip(generator, real_time, strict=True):
        assert torch.equal(offline.action, online.action) and torch.equal(offline.state_input, online.state_input)


def test_observe_is_refused_where_it_means_nothing(joint, inputs_of):
    model, processor = joint
    inputs = inputs_of(model, processor)
    with pytest.raises(ValueError, match="observe\\(\\) is for anticipatory feedback"):
        stream = model.stream_actions(**inputs, feedback_mode="synchronous")
        next(stream)
        stream.observe(inputs["state"])
    with pytest.raises(ValueError, match="observe\\(\\) before next\\(\\)"):
        model.stream_actions(**inputs, feedback_mode="anticipatory").observe(inputs["state"])


def test_feedback_rules_on_plain_tensors():
    predicted, observed = torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])
    assert torch.equal(SynchronousFeedback().state_input(predicted, observed), observed)
    assert torch.equal(SynchronousFeedback().state_input(predicted, None), predicted)
    anticipatory = AnticipatoryFeedback(gain=2.0, like=predicted)
    assert torch.equal(anticipatory.state_input(predicted, observed), predicted)  # r_0 = 0
    assert torch.equal(anticipatory.state_input(predicted, None), predicted + 2.0 * (observed - predicted))
    assert torch.equal(anticipatory.state_input(predicted, None), predicted)  # used once: no stale residual


@pytest.mark.parametrize("gain", [1.0, 0.5])
def test_anticipatory_estimation_error_follows_first_order_dynamics(gain):
    """With true states s_k, model increments d_k that miss a disturbance w_k (s_{k+1} = s_k + d_k + w_k), the
    anticipatory state input has error e_{k+1} = (1 - beta) e_k + w_k: one push is absorbed, never oscillates."""
    steps = 12
    disturbance = torch.zeros(steps, 2)
    disturbance[3] = torch.tensor([0.5, -0.2])  # a push during step 3
    increments = 0.1 * torch.arange(2 * steps, dtype=torch.float32).reshape(steps, 2).sin()
    true = torch.cat([torch.zeros(1, 2), (increments + disturbance).cumsum(0)])  # s_0..s_steps
    feedback = AnticipatoryFeedback(gain, true[0])
    state_input, error = true[0], torch.zeros(2)
    for k in range(steps - 1):
        predicted = state_input + increments[k]  # s_hat_{k+1}
        state_input = feedback.state_input(predicted, true[k + 1])  # S_in_{k+1}
        error = (1 - gain) * error + disturbance[k]
        torch.testing.assert_close(true[k + 1] - state_input, error, atol=1e-6, rtol=0)
    assert error.abs().max() < 0.01  # the push has been absorbed


def test_cumulative_action_continues_across_chunks_and_resets_per_episode(joint, inputs_of):
    model, processor = joint
    first_obs, second_obs = inputs_of(model, processor, seed=0), inputs_of(model, processor, seed=1)
    streamer = model.episode_streamer(feedback_mode="synchronous", n_action_steps=5)
    chunk = _run(streamer.start_chunk(**first_obs), _measurements(model.config, 4))
    executed = torch.stack([s.action for s in chunk]).sum(dim=0)
    torch.testing.assert_close(streamer.cumulative_action, executed, atol=1e-6, rtol=0)

    continued = next(streamer.start_chunk(**second_obs))
    fresh = next(model.stream_actions(**second_obs, feedback_mode="synchronous", cumulative_action=executed))
    torch.testing.assert_close(continued.action, fresh.action, atol=1e-6, rtol=0)
    assert not torch.allclose(continued.action, next(model.stream_actions(**second_obs)).action)

    streamer.reset()
    assert streamer.cumulative_action is None
    restarted = next(streamer.start_chunk(**second_obs))
    torch.testing.assert_close(restarted.action, next(model.stream_actions(**second_obs, feedback_mode="synchronous"))
                               .action)


def test_a_chunk_cut_short_counts_only_the_actions_streamed(joint, inputs_of):
    model, processor = joint
    streamer = model.episode_streamer()
    stream = streamer.start_chunk(**inputs_of(model, processor))
    first, second = next(stream), stream.send(None)
    torch.testing.assert_close(streamer.cumulative_action, first.action + second.action, atol=1e-6, rtol=0)


def test_prefix_is_computed_once_per_chunk(joint, inputs_of, monkeypatch):
    model, processor = joint
    calls = []
    original = model.vlm.vision_model.forward
    monkeypatch.setattr(model.vlm.vision_model, "forward", lambda *a, **k: calls.append(1) or original(*a, **k))
    streamer = model.episode_streamer()
    for seed in range(2):
        _run(streamer.start_chunk(**inputs_of(model, processor, seed=seed)), [None] * 10)
    assert len(calls) == 2


def test_stream_stops_after_n_action_steps(joint, inputs_of):
    model, processor = joint
    stream = model.stream_actions(**inputs_of(model, processor), n_action_steps=3)
    assert len(_run(stream, [None] * 10)) == 3
    with pytest.raises(StopIteration):
        stream.send(None)


def test_the_per_step_path_never_synchronises_with_the_host(joint, inputs_of, monkeypatch):
    model, processor = joint
    stream = model.stream_actions(**inputs_of(model, processor))
    next(stream)

    def forbidden(*args, **kwargs):
        raise AssertionError("host synchronisation in the streaming step")

    for name in ("item", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(3):
        stream.send(None)
    monkeypatch.undo()


def test_batched_stream_equals_single_streams(joint, inputs_of):
    model, processor = joint
    observations = [fake_observation(model.config, seed=s) for s in (0, 1)]
    batched = processor(images=[np.concatenate([o["images"][c] for o in observations]) for c in range(2)],
                        text=[o["text"][0] for o in observations],
                        state=np.concatenate([o["state"] for o in observations]))
    measured = _measurements(model.config, 7, batch=2)
    together = _run(model.stream_actions(**batched), measured)
    for b, observation in enumerate(observations):
        alone = _run(model.stream_actions(**processor(**observation)), [m[b : b + 1] for m in measured])
        for step_together, step_alone in zip(together, alone, strict=True):
            torch.testing.assert_close(step_together.action[b : b + 1], step_alone.action, atol=2e-5, rtol=0)


def test_action_only_stream_has_no_state_outputs(tiny_models, inputs_of):
    model, processor = tiny_models("stream")
    inputs = inputs_of(model, processor)
    steps = _run(model.stream_actions(**inputs), _measurements(model.config, 7))
    assert all(s.predicted_state is None and s.state_input is None for s in steps)
    ignored = _run(model.stream_actions(**inputs), [None] * 7)  # sent states do not matter without a state stream
    assert all(torch.equal(a.action, b.action) for a, b in zip(steps, ignored))


def test_states_may_be_sent_as_numpy_or_unbatched(joint, inputs_of):
    model, processor = joint
    inputs = inputs_of(model, processor)
    measured = _measurements(model.config, 3)
    as_tensor = _run(model.stream_actions(**inputs, feedback_mode="synchronous"), measured)
    as_numpy = _run(model.stream_actions(**inputs, feedback_mode="synchronous"), [m[0].numpy() for m in measured])
    for a, b in zip(as_tensor, as_numpy):
        assert torch.equal(a.action, b.action)

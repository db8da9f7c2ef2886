"""Properties of FasVLAForActionPrediction: cache == joint pass, losses, masking, batching, determinism, errors."""

import copy

import numpy as np
import pytest
import torch

from fasvla.tiny import fake_observation, fake_targets, tiny_model_and_processor
from modeling_fasvla import ATTENTION_FUNCTIONS, chunk_suffix_layout, eager_attention, query_suffix_layout
from reference_joint import joint_velocity

OBJECTIVES = ["chunk", "stream", "stream_joint"]


def _fixed_draws(model, batch, length, seed=1):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, length, model.config.max_action_dim, generator=generator)
    time = torch.rand(batch if model.config.objective == "chunk" else (batch, length), generator=generator)
    return noise, time


@pytest.mark.parametrize("overrides", [
    {"objective": "chunk"},
    {"objective": "stream_joint"},
    {"objective": "stream_joint", "attention_mode": "self_attn"},
    {"objective": "stream", "num_expert_layers": 2},
    {"objective": "chunk", "self_attn_every_n_layers": 3},
])
def test_cached_velocity_equals_joint_uncached_pass(overrides, inputs_of):
    model, processor = tiny_model_and_processor(seed=3, **overrides)
    with torch.no_grad():
        model.state_gate is not None and model.state_gate.fill_(0.7)  # let the state token matter
    inputs = inputs_of(model, processor, batch_size=2)  # two tasks of different length: padding mid-prefix
    length = 5
    x_t = torch.randn(2, length, model.config.max_action_dim)
    time = torch.rand(2, length)
    is_chunk = model.config.objective == "chunk"
    layout = (chunk_suffix_layout if is_chunk else query_suffix_layout)(length)
    expected = joint_velocity(model, inputs, x_t, time, layout)
    with torch.no_grad():
        cache = model.encode_prefix(**{k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask", "state")})
        cached = model.velocity(cache, x_t, time)
        again = model.velocity(cache, x_t, time)  # the cache is not modified by a suffix pass
    assert inputs["attention_mask"].sum(1).unique().numel() == 2
    torch.testing.assert_close(cached, expected, atol=2e-5, rtol=0)
    assert torch.equal(cached, again)


@pytest.mark.parametrize("objective", ["stream", "stream_joint"])
def test_multi_query_loss_is_the_mean_of_single_query_losses(objective, tiny_models, inputs_of):
    model, processor = tiny_models(objective)
    model = copy.deepcopy(model).double()
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs_of(model, processor, 2).items()}
    targets = fake_targets(model.config, inputs["state"], episode_end=4)  # later segments are padded
    noise = _fixed_draws(model, 2, 6)[0].double()
    tau = torch.tensor([[0.05, 0.3, 0.45, 0.6, 0.8, 0.99], [0.12, 0.2, 0.5, 0.55, 0.7, 0.93]], dtype=torch.float64)
    with torch.no_grad():
        together = model(**inputs, **targets, noise=noise, time=tau)
        alone = [model(**inputs, **targets, noise=noise[:, q : q + 1], time=tau[:, q : q + 1]) for q in range(6)]
    for term in ("loss", "action_loss", "state_loss"):
        mean = torch.stack([getattr(out, term) for out in alone]).mean()
        torch.testing.assert_close(getattr(together, term), mean, atol=1e-12, rtol=0)
    torch.testing.assert_close(together.losses, torch.cat([out.losses for out in alone], dim=1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_batch_of_two_equals_two_batches_of_one(objective, tiny_models, inputs_of):
    model, processor = tiny_models(objective)
    observations = [fake_observation(model.config, batch_size=1, seed=s) for s in (0, 1)]
    both = processor(images=[np.concatenate([o["images"][c] for o in observations]) for c in range(2)],
                     text=[o["text"][0] for o in observations], state=np.concatenate([o["state"] for o in observations]))
    singles = [processor(**o) for o in observations]
    targets = fake_targets(model.config, both["state"], episode_end=6)
    length = model.config.chunk_size if objective == "chunk" else 3
    noise, time = _fixed_draws(model, 2, length)
    with torch.no_grad():
        batched = model(**both, **targets, noise=noise, time=time).losses
        split = [model(**singles[b], **{k: v[b : b + 1] for k, v in targets.items()}, noise=noise[b : b + 1],
                       time=time[b : b + 1]).losses for b in range(2)]
    torch.testing.assert_close(batched, torch.cat(split), atol=2e-5, rtol=0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_is_the_weighted_sum_of_its_terms(objective, inputs_of):
    model, processor = tiny_model_and_processor(objective=objective, action_loss_weight=0.7, state_loss_weight=2.5)
    inputs = inputs_of(model, processor, batch_size=2)
    out = model(**inputs, **fake_targets(model.config, inputs["state"]))
    if objective == "stream_joint":
        torch.testing.assert_close(out.loss, 0.7 * out.action_loss + 2.5 * out.state_loss)
        assert out.state_loss > 0
    else:
        assert out.state_loss == 0
        torch.testing.assert_close(out.loss, (0.7 if objective == "stream" else 1.0) * out.action_loss)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_steps_beyond_the_episode_end_do_not_count(objective, tiny_models, inputs_of):
    model, processor = tiny_models(objective)
    inputs = inputs_of(model, processor, batch_size=2)
    targets = fake_targets(model.config, inputs["state"], episode_end=4)
    changed = {k: v.clone() for k, v in targets.items()}
    changed["actions"][:, 4:] += 5.0
    changed["future_states"][:, 3:] -= 5.0
    length = model.config.chunk_size if objective == "chunk" else 16
    noise, time = _fixed_draws(model, 2, length)
    with torch.no_grad():
        before = model(**inputs, **targets, noise=noise, time=time)
        after = model(**inputs, **changed, noise=noise, time=time)
    torch.testing.assert_close(after.loss, before.loss, atol=1e-6, rtol=0)
    assert not torch.allclose(after.losses, before.losses)  # the change was real, only masked


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_averages_only_real_transitions_and_real_dims(objective, tiny_models, inputs_of):
    model, processor = tiny_models(objective)
    config = model.config
    inputs = inputs_of(model, processor, batch_size=2)
    targets = fake_targets(config, inputs["state"], episode_end=5)
    length = config.chunk_size if objective == "chunk" else 8
    noise, time = _fixed_draws(model, 2, length)
    with torch.no_grad():
        out = model(**inputs, **targets, noise=noise, time=time)
    if objective == "chunk":
        valid = ~targets["action_is_pad"]
        expected = out.losses[..., : config.action_dim][valid].mean()
    else:
        segment = (time * config.chunk_size).floor().long()
        valid = ~targets["action_is_pad"].gather(1, segment)
        if objective == "stream_joint":
            valid &= ~targets["future_state_is_pad"].gather(1, segment)
        per_query = [out.losses[:, q, : config.action_dim][valid[:, q]] for q in range(length)]
        expected = torch.stack([e.mean() if e.numel() else torch.tensor(0.0) for e in per_query]).mean()
    torch.testing.assert_close(out.action_loss, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("objective", ["chunk", "stream_joint"])
def test_different_images_tasks_or_states_give_different_actions(objective, tiny_models, inputs_of):
    model, processor = tiny_models(objective)
    base = fake_observation(model.config, seed=0)
    variants = {
        "images": {**base, "images": fake_observation(model.config, seed=5)["images"]},
        "task": {**base, "text": ["close the microwave"]},
        "state": {**base, "state": base["state"] + 0.5},
    }
    first = _first_actions(model, processor(**base))
    for name, observation in variants.items():
        assert not torch.allclose(_first_actions(model, processor(**observation)), first, atol=1e-4), name


def _first_actions(model, inputs):
    if model.config.objective == "chunk":
        noise = torch.randn(1, model.config.chunk_size, model.config.max_action_dim,
                            generator=torch.Generator().manual_seed(0))
        return model.predict_action_chunk(**inputs, noise=noise)[:, :3]
    stream = model.stream_actions(**inputs, feedback_mode="open_loop")
    return torch.stack([next(stream).action, stream.send(None).action, stream.send(None).action], dim=1)


def test_a_masked_camera_does_not_influence_the_actions(joint, inputs_of):
    model, processor = joint
    inputs = inputs_of(model, processor, batch_size=2)
    other = {**inputs, "pixel_values": inputs["pixel_values"].clone()}
    other["pixel_values"][:, 1] = torch.rand_like(other["pixel_values"][:, 1]) * 2 - 1  # a different wrist view
    wrist_missing = torch.tensor([[True, False], [True, False]])

    def first_action(batch, image_masks=None):
        return next(model.stream_actions(**batch, image_masks=image_masks)).action

    assert not torch.allclose(first_action(inputs), first_action(other))
    torch.testing.assert_close(first_action(inputs, wrist_missing), first_action(other, wrist_missing),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("overrides", [{"objective": "stream_joint"}, {"objective": "chunk", "num_expert_layers": 2}])
def test_exactly_the_unused_parameters_receive_no_gradient(overrides, inputs_of):
    """What DDP needs: every parameter but `unused_parameter_names()` gets a gradient from the loss."""
    model, processor = tiny_model_and_processor(**overrides)
    inputs = inputs_of(model, processor, batch_size=2)
    model(**inputs, **fake_targets(model.config, inputs["state"])).loss.backward()
    without_gradient = {name for name, p in model.named_parameters() if p.grad is None}
    assert without_gradient == model.unused_parameter_names()
    assert "vlm.text_model.norm.weight" in without_gradient


def test_chunk_prediction_is_deterministic_given_the_noise(tiny_models, inputs_of):
    model, processor = tiny_models("chunk")
    inputs = inputs_of(model, processor, batch_size=2)
    noise, _ = _fixed_draws(model, 2, model.config.chunk_size)
    first = model.predict_action_chunk(**inputs, noise=noise)
    assert torch.equal(first, model.predict_action_chunk(**inputs, noise=noise.clone()))
    assert not torch.allclose(first, model.predict_action_chunk(**inputs, noise=noise + 1.0))
    assert first.shape == (2, model.config.chunk_size, model.config.action_dim)


def test_chunk_prediction_integrates_the_velocity_with_euler_steps(tiny_models, inputs_of):
    model, processor = tiny_models("chunk")
    inputs = inputs_of(model, processor)
    noise, _ = _fixed_draws(model, 1, model.config.chunk_size)
    with torch.no_grad():
        cache = model.encode_prefix(**{k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask", "state")})
        x, steps = noise.clone(), model.config.num_steps
        for i in range(steps):
            t = torch.full((1, model.config.chunk_size), 1.0 - i / steps)
            x = x - model.velocity(cache, x, t) / steps
    expected = model.normalizer.unnormalize_action(x[..., : model.config.action_dim])
    torch.testing.assert_close(model.predict_action_chunk(**inputs, noise=noise), expected, atol=1e-5, rtol=0)


def test_state_gate_closed_at_init_keeps_the_state_out_of_the_prefix(inputs_of):
    model, processor = tiny_model_and_processor(objective="stream_joint")
    assert model.state_gate.item() == 0.0
    inputs = inputs_of(model, processor)
    keys = ("pixel_values", "input_ids", "attention_mask")
    with torch.no_grad():
        base = model.encode_prefix(**{k: inputs[k] for k in keys}, state=inputs["state"])
        moved = model.encode_prefix(**{k: inputs[k] for k in keys}, state=inputs["state"] + 1.0)
        assert all(torch.equal(a, b) for a, b in zip(base.keys, moved.keys))
        model.state_gate.fill_(0.5)
        gated = model.encode_prefix(**{k: inputs[k] for k in keys}, state=inputs["state"] + 1.0)
    assert not torch.allclose(base.keys[-1], gated.keys[-1])
    assert tiny_model_and_processor(objective="chunk")[0].state_gate is None


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_loss_decreases_when_overfitting_one_batch(objective, inputs_of):
    model, processor = tiny_model_and_processor(seed=0, objective=objective)
    inputs = inputs_of(model, processor, batch_size=2)
    targets = fake_targets(model.config, inputs["state"])
    length = model.config.chunk_size if objective == "chunk" else 8
    noise, time = _fixed_draws(model, 2, length, seed=7)

    batch = {**inputs, **targets, "noise": noise, "time": time}  # one batch, one draw: the loss can reach 0
    with torch.no_grad():
        initial = model(**batch).loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(60):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert model(**batch).loss < 0.3 * initial


@pytest.mark.parametrize("objective", ["stream_joint", "chunk"])
def test_eager_and_sdpa_attention_give_the_same_model(objective, inputs_of, monkeypatch):
    """`attn_implementation` is honoured, not ignored: the joint attention (and the vision tower) switch, with the
    same losses, streamed actions and chunks."""
    calls = []
    monkeypatch.setitem(ATTENTION_FUNCTIONS, "eager", lambda *a: calls.append(1) or eager_attention(*a))
    model, processor = tiny_model_and_processor(seed=0, objective=objective)
    inputs = inputs_of(model, processor, batch_size=2)
    targets = fake_targets(model.config, inputs["state"])
    noise, time = _fixed_draws(model, 2, model.config.chunk_size if objective == "chunk"
                               else model.config.num_flow_queries)

    def outputs():
        with torch.no_grad():
            loss = model(**inputs, **targets, noise=noise, time=time).losses
        if objective == "chunk":
            return loss, model.predict_action_chunk(**inputs, noise=noise)
        return loss, next(model.stream_actions(**inputs)).action

    sdpa = outputs()
    assert not calls
    model.set_attn_implementation("eager")
    eager = outputs()
    assert model.config._attn_implementation == "eager" and calls  # the eager function did the attention
    for a, b in zip(sdpa, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)

"""The streaming trajectory of revision 2 (DESIGN.md section 3b), each option as a property that the first version
lacks: centred states, absolute action dimensions, the chunk origin, feedback-consistent stabilisation, executed
actions counted, and every option off is the first version bit for bit."""

import copy

import numpy as np
import pytest
import torch

from configuration_fasvla import FasVLAConfig
from fasvla.state_response import ridge_pseudo_inverse
from fasvla.tiny import fake_targets, tiny_model_and_processor
from flow_fasvla import feedback_stabilize, stabilize, trajectory_knots, trajectory_start
from normalization_fasvla import Normalizer

F64 = torch.float64
GRIPPER = 6


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def model_with(inputs_of, seed=0, **options):
    """A tiny stream_joint model with revision-2 options, its processor and a batch of two."""
    model, processor = tiny_model_and_processor(seed=seed, **options)
    inputs = inputs_of(model, processor, batch_size=2)
    return model.eval(), inputs


def loss_terms(model, inputs, targets, seed=3):
    queries = model.config.num_flow_queries
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(2, queries, model.config.max_action_dim, generator=generator)
    time = torch.rand(2, queries, generator=generator)
    with torch.no_grad():
        return model(**inputs, **targets, noise=noise, time=time)


# -- centred states ------------------------------------------------------------------------------------------------


def test_a_centred_state_enters_the_network_near_unit_scale():
    """LIBERO's axis-angle x: mean 3.13, std 0.013. Divided by its std only it enters at about 238."""
    stats = {"state": {"mean": [3.13] * 8, "std": [0.013] * 8},
             "action": {"mean": [0.0] * 7, "std": [1.0] * 7, "q01": [-1.0] * 7, "q99": [1.0] * 7}}
    state = torch.full((1, 8), 3.14)
    first = Normalizer(FasVLAConfig(norm_stats=stats)).normalize_state(state)
    centred = Normalizer(FasVLAConfig(norm_stats=stats, center_state=True))
    assert first.abs().min() > 200 and centred.normalize_state(state).abs().max() < 1
    torch.testing.assert_close(centred.unnormalize_state(centred.normalize_state(state)), state)


# -- absolute action dimensions and the trajectory origin -------------------------------------------------------


def test_an_absolute_dimension_is_the_command_in_force_not_the_running_sum():
    """Closing the gripper (+1) for a whole chunk: integrated, its coordinate climbs to C + 16; absolute, it is 1."""
    actions = torch.ones(1, 16, 7, dtype=F64)
    cumulative, previous = torch.full((1, 7), 30.0, dtype=F64), torch.full((1, 7), -1.0, dtype=F64)
    absolute = torch.zeros(7, dtype=torch.bool)
    absolute[GRIPPER] = True
    start = trajectory_start(cumulative, previous, absolute, "episode")
    knots = trajectory_knots(start, actions, None, 8, absolute)
    assert knots[0, 0, GRIPPER] == -1 and torch.all(knots[0, 1:, GRIPPER] == 1)  # a_{t-1}, then each a_{t+k}
    torch.testing.assert_close(knots[0, :, 0], 30 + torch.arange(17, dtype=F64))  # integrated as before
    first = trajectory_knots(cumulative, actions, None, 8)
    assert first[0, -1, GRIPPER] == 46  # the first version's gripper coordinate


def test_the_chunk_origin_starts_every_chunk_at_zero_whatever_the_episode_did(inputs_of):
    model, inputs = model_with(inputs_of, objective="stream_joint", trajectory_origin="chunk")
    targets = fake_targets(model.config, inputs["state"])
    moved = {**targets, "cumulative_action": targets["cumulative_action"] + 5.0}
    assert torch.equal(loss_terms(model, inputs, targets).losses, loss_terms(model, inputs, moved).losses)
    episode, _ = model_with(inputs_of, objective="stream_joint")
    assert not torch.equal(loss_terms(episode, inputs, targets).losses, loss_terms(episode, inputs, moved).losses)


def test_a_stream_emits_levels_for_absolute_dimensions_and_carries_them_to_the_next_chunk(inputs_of):
    model, inputs = model_with(inputs_of, objective="stream_joint", absolute_action_dims=[GRIPPER])
    streamer = model.episode_streamer(feedback_mode="open_loop", n_action_steps=3)
    first = streamer.start_chunk(**inputs)
    steps = [next(first), first.send(None), first.send(None)]
    # the gripper action is the trajectory level itself: its increments are what the velocity moved it by
    last = steps[-1].action
    torch.testing.assert_close(streamer.last_action, last)
    second = streamer.start_chunk(**inputs)
    norm = model.normalizer
    start = second._trajectory  # A_0 of the next chunk: the gripper level carried over, the rest the running sum
    torch.testing.assert_close(start[:, GRIPPER], norm.normalize_action(last)[:, GRIPPER])
    executed = sum(s.action for s in steps)
    torch.testing.assert_close(start[:, :GRIPPER], norm.normalize_action(executed)[:, :GRIPPER], atol=1e-6, rtol=0)


# -- executed actions -------------------------------------------------------------------------------------------------


def test_the_trajectory_counts_what_the_robot_executed(inputs_of):
    model, inputs = model_with(inputs_of, objective="stream_joint")

    def run(executed):
        stream = model.stream_actions(**inputs, feedback_mode="synchronous", n_action_steps=4)
        steps = [next(stream)]
        for k in range(3):
            steps.append(stream.send(inputs["state"], executed_action=executed(steps[-1].action, k)))
        return steps, stream

    streamed, as_streamed = run(lambda action, k: action)
    plain = model.stream_actions(**inputs, feedback_mode="synchronous", n_action_steps=4)
    same = [next(plain)] + [plain.send(inputs["state"]) for _ in range(3)]
    for a, b in zip(streamed, same):  # executed as streamed: unchanged (up to the round trip through robot units)
        torch.testing.assert_close(a.action, b.action, atol=1e-6, rtol=0)
    round_trip = (streamed[3].action - same[3].action).abs().max()
    halved, stream = run(lambda action, k: 0.5 * action)  # a robot that executes half of each command
    sent = [0.5 * s.action for s in halved[:3]] + [halved[3].action]
    torch.testing.assert_close(stream.cumulative_action, sum(sent), atol=1e-6, rtol=0)
    # the steps continue from what happened: far beyond the round trip's noise (a random model barely reads A)
    assert (halved[3].action - streamed[3].action).abs().max() > 100 * round_trip


# -- feedback-consistent stabilisation -------------------------------------------------------------------------


def test_feedback_consistent_targets_explain_the_state_returning_through_the_actions():
    """A linear robot (state increments B times action increments): with kappa_fb = kappa, the action target's
    correction moves the state by exactly the state target's correction, -kappa n_S (n_S in the range of B)."""
    B = randn(8, 7, seed=1)
    G = torch.as_tensor(ridge_pseudo_inverse(B.numpy(), ridge=0.0))
    xi, dxi = randn(2, 3, 15, seed=2), randn(2, 3, 15, seed=3)
    tau = torch.rand(2, 3, dtype=F64)
    eps = torch.cat([torch.zeros(2, 3, 7, dtype=F64), randn(2, 3, 7, seed=4) @ B.T], dim=-1)  # n_A = 0
    kappa = 4.0
    x, u = feedback_stabilize(xi, dxi, tau, eps, 0.16, kappa, kappa, kappa, G, 7, 8)
    n = x - xi
    torch.testing.assert_close((u - dxi)[..., 7:], -kappa * n[..., 7:], rtol=0, atol=1e-12)
    torch.testing.assert_close((u - dxi)[..., :7] @ B.T, -kappa * n[..., 7:], rtol=0, atol=1e-10)
    _, first = stabilize(xi, dxi, tau, eps, 0.16, kappa)
    assert torch.equal((first - dxi)[..., :7], torch.zeros(2, 3, 7, dtype=F64))  # the first version asks nothing


def test_with_every_option_off_the_loss_is_the_first_versions_bit_for_bit(inputs_of):
    model, inputs = model_with(inputs_of, objective="stream_joint")
    targets = fake_targets(model.config, inputs["state"])
    explicit = copy.deepcopy(model)
    G = np.random.default_rng(0).normal(size=(7, 8))
    explicit.set_feedback_matrix(G, feedback_kappa=0.0)  # a matrix, but no rate: nothing changes
    explicit.config.kappa_a = explicit.config.kappa
    assert torch.equal(loss_terms(model, inputs, targets).losses, loss_terms(explicit, inputs, targets).losses)
    explicit.set_feedback_matrix(G, feedback_kappa=2.0)
    changed = loss_terms(explicit, inputs, targets)
    reference = loss_terms(model, inputs, targets)
    assert not torch.equal(changed.u_t[..., :7], reference.u_t[..., :7])  # the action targets carry G n_S
    assert torch.equal(changed.u_t[..., 7:15], reference.u_t[..., 7:15])  # the state targets do not change


def test_the_trajectory_starts_at_the_trajectory_state_and_the_prefix_keeps_the_observed_one(inputs_of):
    """Training under observation delay: knot 0 of the state trajectory is `trajectory_state` (s_t), whatever the
    prefix's `state` (s_{t-d}); passing the prefix's own state changes nothing."""
    model, inputs = model_with(inputs_of, objective="stream_joint")
    targets = fake_targets(model.config, inputs["state"])
    reference = loss_terms(model, inputs, targets)
    same = loss_terms(model, inputs, {**targets, "trajectory_state": inputs["state"].clone()})
    assert torch.equal(same.losses, reference.losses)
    moved = inputs["state"] + 0.5
    delayed = loss_terms(model, inputs, {**targets, "trajectory_state": moved})
    assert not torch.equal(delayed.u_t, reference.u_t)  # the reference path runs from the moved knot 0
    shifted = loss_terms(model, {**inputs, "state": moved}, targets)  # another prefix state, the same knots
    assert torch.equal(delayed.u_t, shifted.u_t)
    with pytest.raises(ValueError, match="trajectory_state must be a tensor of shape \\(2, 8\\)"):
        loss_terms(model, inputs, {**targets, "trajectory_state": moved[:1]})
    with pytest.raises(ValueError, match="FasVLAConfig\\.max_observation_delay must be >= 0"):
        FasVLAConfig(max_observation_delay=-1)


def test_an_ungated_prefix_state_reaches_the_expert_from_the_start(inputs_of):
    """The reference's gate starts closed (tanh(0) = 0): a new model's actions ignore the prefix's state token, and
    the expert has nothing to compare the fed-back state with. Ungated, the token counts from the first step."""
    for gated in (True, False):
        model, inputs = model_with(inputs_of, objective="stream_joint", prefix_state_gate=gated)
        targets = fake_targets(model.config, inputs["state"])
        reference = loss_terms(model, inputs, {**targets, "trajectory_state": inputs["state"]})
        moved = loss_terms(model, {**inputs, "state": inputs["state"] + 0.5},
                           {**targets, "trajectory_state": inputs["state"]})
        assert torch.equal(moved.v_t, reference.v_t) == gated
        assert (model.state_gate is not None) == gated


@pytest.mark.parametrize("overrides, field", [
    ({"trajectory_origin": "step"}, "trajectory_origin"),
    ({"absolute_action_dims": [7]}, "absolute_action_dims"),
    ({"absolute_action_dims": [6, 6]}, "absolute_action_dims"),
    ({"feedback_kappa": 1.0}, "feedback_matrix"),
    ({"feedback_kappa": 1.0, "feedback_matrix": [[0.0] * 8] * 6}, "feedback_matrix"),
    ({"feedback_kappa": 1.0, "objective": "stream", "feedback_matrix": [[0.0] * 8] * 7}, "feedback_kappa"),
    ({"center_state": "yes"}, "center_state"),
    ({"prefix_state_gate": 0}, "prefix_state_gate"),
    ({"kappa_a": -1.0}, "kappa_a"),
    ({"tracking_kappa": -1.0}, "tracking_kappa"),
    ({"tracking_state_dims": [8]}, "tracking_state_dims"),
    ({"tracking_state_dims": []}, "tracking_state_dims"),
    ({"tracking_kappa": 4.0}, "feedback_matrix"),
    ({"tracking_kappa": 4.0, "objective": "chunk", "feedback_matrix": [[0.0] * 8] * 7}, "tracking_kappa"),
])
def test_bad_trajectory_options_are_refused_by_name(overrides, field):
    with pytest.raises(ValueError, match=rf"FasVLAConfig\.{field} must be"):
        FasVLAConfig(**overrides)

"""Tracking (`config.tracking_kappa`): the stream adds the stabilising correction `(kappa_t / H) G (s_plan - S_in)`
itself. On a linear robot whose motion the stream predicts, a push decays at the rate the stabilisation asks for,
and only where the stream is fed the measured state."""

import copy
import json

import numpy as np
import pytest
import torch

from fasvla.state_response import DEFAULT_RIDGE, ridge_pseudo_inverse

PUSH_STEP = 2  # the push lands after action 1: the state measured before action 2 carries it


def with_tracking(model, G, tracking_kappa):
    tracked = copy.deepcopy(model)
    tracked.set_feedback_matrix(G)
    tracked.config.tracking_kappa = tracking_kappa
    return tracked


def linear_robot(seed=1):
    """B (d_s=8, d_a=7), normalised units: a state increment per action; G its exact pseudo-inverse; a push in the
    range of B, the part of the state the actions can move."""
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(8, 7))
    push = B @ rng.normal(size=7)
    return B, ridge_pseudo_inverse(B, ridge=0.0), 0.3 * push / np.linalg.norm(push)


def plan_follower(model, B, seed=2):
    """The network replaced by a plan that ignores its input: v_A fixed, v_S = B v_A (it predicts the robot's
    motion exactly), so every deviation of the state from the plan is the push's."""
    v_A = torch.as_tensor(np.random.default_rng(seed).normal(size=7), dtype=torch.float32)
    v = torch.zeros(model.config.max_action_dim)
    v[:7], v[7:15] = v_A, torch.as_tensor(B, dtype=torch.float32) @ v_A

    def stream_velocity(cache, x, tau):
        return v.expand(x.shape[0], x.shape[1], -1).clone()

    model.stream_velocity = stream_velocity
    return model


def deviations_after_a_push(model, inputs, mode, B, push):
    """|s_k - s_plan_k| (normalised) at every step of one chunk on the linear robot, pushed by `push` after action
    PUSH_STEP - 1."""
    norm = model.normalizer
    state = norm.normalize_state(inputs["state"])[0].double().numpy()
    plan = state.copy()
    stream = model.stream_actions(**inputs, feedback_mode=mode, feedback_gain=1.0)
    step, deviations = next(stream), []
    for k in range(model.config.n_action_steps):
        action = norm.normalize_action(step.action)[0].double().numpy()
        planned = norm.normalize_state(step.predicted_state)[0] - norm.normalize_state(step.state_input)[0]
        plan, state = plan + planned.double().numpy(), state + B @ action + (push if k == PUSH_STEP - 1 else 0)
        deviations.append(np.linalg.norm(state - plan))
        try:
            step = stream.send(norm.unnormalize_state(torch.as_tensor(state, dtype=torch.float32)[None]))
        except StopIteration:
            break
    return np.array(deviations)


@pytest.fixture
def robot_and_models(joint, inputs_of):
    model, processor = joint
    B, G, push = linear_robot()
    follower = plan_follower(copy.deepcopy(model), B)
    return (B, push, inputs_of(model, processor),
            {kappa: with_tracking(follower, G, kappa) for kappa in (0.0, 4.0)})


def test_synchronous_tracking_decays_a_push_geometrically_at_the_stabilising_rate(robot_and_models):
    B, push, inputs, models = robot_and_models
    tracked = models[4.0]
    deviations = deviations_after_a_push(tracked, inputs, "synchronous", B, push)
    rate = 1 - tracked.config.tracking_kappa / tracked.config.chunk_size
    expected = np.linalg.norm(push) * rate ** np.arange(len(deviations) - PUSH_STEP + 1)
    np.testing.assert_allclose(deviations[:PUSH_STEP - 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(deviations[PUSH_STEP - 1:], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["synchronous", "anticipatory"])
def test_only_tracking_brings_a_fed_back_push_back_to_the_plan(robot_and_models, mode):
    B, push, inputs, models = robot_and_models
    untracked = deviations_after_a_push(models[0.0], inputs, mode, B, push)
    tracked = deviations_after_a_push(models[4.0], inputs, mode, B, push)
    np.testing.assert_allclose(untracked[PUSH_STEP - 1:], np.linalg.norm(push), rtol=1e-4)  # nothing corrects it
    assert tracked[-1] < 0.25 * np.linalg.norm(push)


def test_open_loop_never_sees_the_push(robot_and_models):
    B, push, inputs, models = robot_and_models
    deviations = deviations_after_a_push(models[4.0], inputs, "open_loop", B, push)
    np.testing.assert_allclose(deviations[PUSH_STEP - 1:], np.linalg.norm(push), rtol=1e-4)


def test_only_the_tracked_state_dimensions_are_corrected(robot_and_models):
    """A push the tracked dimensions do not see goes uncorrected; one they see is brought back."""
    B, push, inputs, models = robot_and_models
    position = copy.deepcopy(models[4.0])
    position.config.tracking_state_dims = [0, 1, 2]
    null = np.linalg.svd(B[:3])[2][-1]  # an action that moves none of dims 0-2: its push is invisible to them
    unseen = 0.3 * (B @ null) / np.linalg.norm(B @ null)
    seen = np.concatenate([push[:3], np.zeros(5)])
    uncorrected = deviations_after_a_push(position, inputs, "synchronous", B, unseen)
    np.testing.assert_allclose(uncorrected[PUSH_STEP - 1:], 0.3, rtol=1e-4)
    corrected = deviations_after_a_push(position, inputs, "synchronous", B, seen)
    assert corrected[-1] < 0.5 * corrected[PUSH_STEP - 1]


def test_tracking_leaves_open_loop_bit_for_bit_and_changes_fed_back_actions(joint, inputs_of):
    """With the real (tiny) network: open loop streams the same actions with and without tracking; fed measured
    states, the actions differ."""
    model, processor = joint
    inputs = inputs_of(model, processor, batch_size=2)
    tracked = with_tracking(model, linear_robot()[1], 4.0)
    measured = [torch.randn(2, 8) for _ in range(model.config.n_action_steps)]

    def actions(m, mode):
        stream = m.stream_actions(**inputs, feedback_mode=mode)
        steps = [next(stream)] + [stream.send(s) for s in measured[:model.config.n_action_steps - 1]]
        return torch.stack([s.action for s in steps])

    assert torch.equal(actions(model, "open_loop"), actions(tracked, "open_loop"))
    for mode in ("synchronous", "anticipatory"):
        plain, corrected = actions(model, mode), actions(tracked, mode)
        assert torch.equal(plain[0], corrected[0])  # step 0 is on the plan: S_in_0 = s_plan_0
        assert (plain[1:] - corrected[1:]).abs().max() > 1e-3


def test_tracking_never_moves_an_absolute_dimension(joint, inputs_of):
    """A gripper level is not an increment that undoes a displacement: with a G that would move every dimension,
    only the integrated ones are corrected (the plan follower's velocity ignores its input, so the difference is
    the correction's alone)."""
    model, processor = joint
    inputs = inputs_of(model, processor)
    levels = plan_follower(copy.deepcopy(model), linear_robot()[0])
    levels.config.absolute_action_dims = [6]
    tracked = with_tracking(levels, np.ones((7, 8)), 4.0)
    measured = [torch.randn(1, 8) for _ in range(3)]

    def actions(m):
        stream = m.stream_actions(**inputs, feedback_mode="synchronous")
        return torch.stack([next(stream).action] + [stream.send(s).action for s in measured])[:, 0]

    plain, corrected = actions(levels), actions(tracked)
    assert torch.equal(plain[:, 6], corrected[:, 6])
    assert (plain[1:, :6] - corrected[1:, :6]).abs().min() > 1e-4


# -- scripts/add_tracking.py ---------------------------------------------------------------------------------------


@pytest.fixture
def saved_model(joint, tmp_path):
    model, processor = joint
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_a_tracking_copy_keeps_the_weights_and_fits_g_as_training_does(saved_model, tmp_path):
    from fasvla.data.lerobot_dataset import LeRobotDataset
    from fasvla.data.synthetic import write_synthetic_dataset
    from fasvla.training import fit_feedback_matrix, load_model_and_processor
    from scripts import add_tracking

    root = write_synthetic_dataset(tmp_path / "data", storage="image", num_episodes=4, min_length=12, max_length=16,
                                   image_size=32, seed=1)
    output = add_tracking.main(["--model", str(saved_model), "--dataset", str(root), "--tracking_kappa", "3",
                                "--output", str(tmp_path / "tracked")])
    tracked, _ = load_model_and_processor(str(output))
    original, _ = load_model_and_processor(str(saved_model))
    assert (output / "model.safetensors").read_bytes() == (saved_model / "model.safetensors").read_bytes()
    assert tracked.config.tracking_kappa == 3.0 and original.config.tracking_kappa == 0.0
    expected = fit_feedback_matrix(original, LeRobotDataset.open(root), "observation.state", "action", DEFAULT_RIDGE)
    np.testing.assert_allclose(np.array(tracked.config.feedback_matrix), expected, rtol=1e-6, atol=1e-9)

    assert tracked.config.tracking_state_dims is None
    again = add_tracking.main(["--model", str(saved_model), "--matrix_from", str(output), "--tracking_kappa", "1",
                               "--state_dims", "0", "1", "2", "--output", str(tmp_path / "copied")])
    written = json.loads((again / "config.json").read_text())
    assert written["feedback_matrix"] == tracked.config.feedback_matrix and written["tracking_state_dims"] == [0, 1, 2]
    with pytest.raises(ValueError, match="--output .* exists"):
        add_tracking.main(["--model", str(saved_model), "--matrix_from", str(output), "--tracking_kappa", "1",
                           "--output", str(again)])


def test_a_tracking_copy_refuses_a_g_in_other_units_or_none(saved_model, tmp_path):
    from fasvla.tiny import tiny_model_and_processor, tiny_norm_stats
    from scripts import add_tracking

    stats = tiny_norm_stats(8, 7)
    stats["state"]["std"] = [2 * v for v in stats["state"]["std"]]
    other, processor = tiny_model_and_processor(seed=0, norm_stats=stats, feedback_kappa=1.0,
                                                feedback_matrix=np.ones((7, 8)).tolist())
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="--matrix_from .* normalises differently"):
        add_tracking.main(["--model", str(saved_model), "--matrix_from", str(tmp_path / "other"),
                           "--tracking_kappa", "1", "--output", str(tmp_path / "tracked")])
    with pytest.raises(ValueError, match="feedback_matrix"):  # the model holds no G and none was given
        add_tracking.main(["--model", str(saved_model), "--tracking_kappa", "1", "--output", str(tmp_path / "t")])
    assert not (tmp_path / "tracked").exists() and not (tmp_path / "t").exists()

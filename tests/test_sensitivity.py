"""The corrective-gain diagnostic (fasvla/sensitivity.py, benchmarks/feedback_sensitivity.py) and the state response
it projects on (fasvla/state_response.py): recovered from data with a known response, measured exactly on a model
built to have a known gain, and the same by finite differences and by autograd on a real model."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fasvla.data.synthetic import write_synthetic_dataset
from fasvla.sensitivity import STATE_GROUPS, corrective_gains, group_summary
from fasvla.state_response import fit_state_response, ridge_pseudo_inverse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import feedback_sensitivity  # noqa: E402
from fasvla.tiny import tiny_model_and_processor  # noqa: E402


def response_data(seed=0, episodes=(40, 25, 60)):
    """States that answer their actions through a known B (d_s 8, d_a 7), with a jump between episodes that a fit
    across episode boundaries would take for a response."""
    rng = np.random.default_rng(seed)
    B = rng.normal(size=(8, 7)) * 0.1
    states, actions, starts = [], [], []
    for length in episodes:
        starts.append(sum(len(s) for s in states))
        a = rng.uniform(-1, 1, (length, 7))
        s = np.cumsum(np.vstack([rng.normal(size=(1, 8)) * 10, a[:-1] @ B.T]), axis=0)
        states.append(s)
        actions.append(a)
    return B, np.concatenate(states), np.concatenate(actions), starts


def test_the_state_response_is_recovered_within_episodes_and_inverted():
    B, states, actions, starts = response_data()
    fit = fit_state_response(states, actions, starts, ridge=0.0)
    np.testing.assert_allclose(fit.B, B, atol=1e-10)
    assert fit.transitions == len(states) - 3 and np.all(fit.r2 > 1 - 1e-12)
    np.testing.assert_allclose(fit.G @ fit.B, np.eye(7), atol=1e-8)  # G undoes what B does
    shrunk = ridge_pseudo_inverse(B, ridge=0.1)
    assert np.linalg.norm(shrunk) < np.linalg.norm(fit.G)  # the ridge only shrinks
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        fit_state_response(states, actions, starts, ridge=-1.0)


def test_the_ridge_bounds_every_gain_and_an_absolute_dimension_corrects_nothing():
    B, states, actions, starts = response_data()
    B_weak = B @ np.diag([1, 1, 1, 1, 1, 1, 1e-3])  # one action direction barely moves the state
    for ridge in (0.01, 0.1):
        singular = np.linalg.svd(ridge_pseudo_inverse(B_weak, ridge), compute_uv=False)
        s_max = np.linalg.svd(B_weak, compute_uv=False)[0]
        assert singular.max() <= 1 / (2 * np.sqrt(ridge) * s_max) + 1e-9  # s / (s^2 + ridge s_max^2) at most
    fit = fit_state_response(states, actions, starts, ridge=0.0, absolute_dims=[6])
    assert not fit.B[:, 6].any() and not fit.G[6].any()
    np.testing.assert_allclose(fit.G @ fit.B, np.diag([1.0] * 6 + [0.0]), atol=1e-8)  # the others still undone


class LinearFeedbackModel:
    """A streaming model whose action velocity is `v_A = -gain * kappa * G S_in + W A`: its corrective gain is `gain`
    along every state dimension, whatever A."""

    def __init__(self, G: np.ndarray, gain: float, kappa: float = 4.0, tracking_kappa: float = 0.0):
        self.config = SimpleNamespace(action_dim=7, state_dim=8, max_action_dim=16, kappa=kappa,
                                      tracking_kappa=tracking_kappa)
        self.G, self.gain, self.W = torch.as_tensor(G, dtype=torch.float32), gain, torch.randn(7, 7)

    def tracking_matrix(self, device):  # as FasVLAForActionPrediction's: kappa_t G, None without tracking
        return self.config.tracking_kappa * self.G.to(device) if self.config.tracking_kappa else None

    def stream_velocity(self, cache, x, time):  # x (B, 1, 16) -> (B, 1, 16)
        A, S = x[..., :7], x[..., 7:15]
        v_A = -self.gain * self.config.kappa * S @ self.G.T + A @ self.W.T + torch.tanh(time)[..., None]
        return F.pad(v_A, (0, 9))


@pytest.mark.parametrize("gain", [1.0, 0.0, -0.5, 0.25])
def test_a_model_built_with_a_known_gain_measures_that_gain(gain):
    B, *_ = response_data()
    G = ridge_pseudo_inverse(B, 0.0)
    model = LinearFeedbackModel(G, gain)
    A, S = torch.randn(5, 7), torch.randn(5, 8)
    measured = corrective_gains(model, None, A, S, G, model.config.kappa, tau=0.3)
    np.testing.assert_allclose(measured.autograd, gain, atol=1e-5)
    np.testing.assert_allclose(measured.finite_difference, gain, atol=1e-4)
    summary = group_summary(measured)
    assert set(summary) == set(STATE_GROUPS) and abs(summary["position"]["gain"] - gain) < 1e-5


def test_tracking_adds_its_rate_over_kappa_to_the_networks_gain():
    B, *_ = response_data()
    G = ridge_pseudo_inverse(B, 0.0)
    model = LinearFeedbackModel(G, 0.25, tracking_kappa=2.0)  # kappa 4: tracking alone undoes half the rate
    measured = corrective_gains(model, None, torch.randn(5, 7), torch.randn(5, 8), G, model.config.kappa, tau=0.3)
    np.testing.assert_allclose(measured.autograd, 0.75, atol=1e-5)
    np.testing.assert_allclose(measured.finite_difference, 0.75, atol=1e-4)


def test_on_a_real_model_finite_differences_agree_with_autograd(joint, inputs_of):
    model, processor = joint
    inputs = inputs_of(model, processor, batch_size=3)
    cache = model.encode_observation(**inputs)
    B, *_ = response_data()
    A, S = torch.randn(3, 7) * 0.5, torch.randn(3, 8) * 0.5
    measured = corrective_gains(model, cache, A, S, ridge_pseudo_inverse(B), model.config.kappa, epsilon=1e-3)
    np.testing.assert_allclose(measured.finite_difference, measured.autograd, atol=2e-3, rtol=2e-2)
    assert np.isfinite(measured.relative_change).all() and (measured.relative_change > 0).all()


def test_the_benchmark_reports_every_group_of_a_trained_models_held_out_frames(joint, tmp_path):
    model, processor = joint
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    root = write_synthetic_dataset(tmp_path / "data", storage="image", num_episodes=8, min_length=12, max_length=16,
                                   image_size=32, seed=1)
    summary = feedback_sensitivity.main(["--model", str(tmp_path / "model"), "--dataset", str(root), "--frames", "6",
                                         "--val_fraction", "0.25", "--batch_size", "4",
                                         "--output", str(tmp_path / "gains.json")])
    written = json.loads((tmp_path / "gains.json").read_text())
    assert written["frames"] == 6 and set(summary) == set(STATE_GROUPS) == set(written["summary"])
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    other = tiny_model_and_processor(seed=5)[0]  # other weights under the same config
    other.save_pretrained(tmp_path / "other")
    processor.save_pretrained(tmp_path / "other")
    again = feedback_sensitivity.main(["--model", str(tmp_path / "other"), "--weights",
                                       str(tmp_path / "weights.safetensors"), "--dataset", str(root), "--frames",
                                       "6", "--val_fraction", "0.25", "--batch_size", "4"])
    assert again == summary  # the checkpoint's weights, not the folder's
    assert np.array(written["gains_autograd"]).shape == (6, 8)
    for group in summary.values():
        assert group["gain_q25"] <= group["gain"] <= group["gain_q75"]


def test_a_revision_2_model_is_measured_where_its_chunks_start_and_against_its_own_g(tmp_path, monkeypatch):
    """trajectory_origin "chunk": A_0 = 0 on the integrated dimensions, the last command on the gripper; G: the one
    in the model's config."""
    from fasvla.tiny import tiny_model_and_processor

    G = np.random.default_rng(0).normal(size=(7, 8))
    model, processor = tiny_model_and_processor(seed=0, trajectory_origin="chunk", absolute_action_dims=[6],
                                                center_state=True, feedback_kappa=1.0, feedback_matrix=G.tolist())
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    root = write_synthetic_dataset(tmp_path / "data", storage="image", num_episodes=4, min_length=12, max_length=16,
                                   image_size=32, seed=1)
    seen = []

    def recording(model, cache, A, S, G, kappa, epsilon):
        seen.append((A.clone(), G))
        return real(model, cache, A, S, G, kappa, epsilon=epsilon)

    real = feedback_sensitivity.corrective_gains
    monkeypatch.setattr(feedback_sensitivity, "corrective_gains", recording)
    feedback_sensitivity.main(["--model", str(tmp_path / "model"), "--dataset", str(root), "--frames", "4",
                               "--unseen_dataset", "--batch_size", "4"])
    (A, used), = seen
    assert not A[:, :6].any() and A[:, 6].abs().sum() > 0  # the gripper's last command, nothing integrated
    np.testing.assert_array_equal(used, G)


def test_a_model_that_is_not_fed_the_state_is_refused(tiny_models, tmp_path):
    model, processor = tiny_models("stream")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="only 'stream_joint' models are fed the state"):
        feedback_sensitivity.main(["--model", str(tmp_path / "model"), "--dataset", str(tmp_path)])

"""Mathematical facts of the flow math in flow_fasvla.py, checked in float64."""

import math

import numpy as np
import pytest
import torch

from flow_fasvla import (
    chunk_flow_path,
    euler_denoise,
    masked_mean,
    masked_query_mean,
    sample_chunk_time,
    sample_stream_time,
    sinusoidal_time_embedding,
    stabilize,
    stream_reference,
    trajectory_knots,
    transition_mask,
)

F64 = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def random_knots(batch=2, chunk_size=8, width=5, seed=0):
    return randn(batch, chunk_size + 1, width, seed=seed)


# ---------------------------------------------------------------------------------------------------------------
# chunk objective
# ---------------------------------------------------------------------------------------------------------------


def test_chunk_flow_path_end_points_are_data_and_noise():
    actions, noise = randn(2, 4, 3, seed=1), randn(2, 4, 3, seed=2)
    x_0, _ = chunk_flow_path(actions, noise, torch.zeros(2, 1, 1, dtype=F64))
    x_1, _ = chunk_flow_path(actions, noise, torch.ones(2, 1, 1, dtype=F64))
    assert torch.equal(x_0, actions)
    assert torch.equal(x_1, noise)


def test_chunk_flow_target_is_the_time_derivative_of_the_path():
    actions, noise = randn(2, 4, 3, seed=1), randn(2, 4, 3, seed=2)
    t = torch.tensor([0.2, 0.7], dtype=F64)[:, None, None]
    _, u_t = chunk_flow_path(actions, noise, t)
    _, dx_dt = torch.autograd.functional.jvp(lambda s: chunk_flow_path(actions, noise, s)[0], t, torch.ones_like(t))
    torch.testing.assert_close(u_t, dx_dt, rtol=0, atol=1e-12)


@pytest.mark.parametrize("num_steps", [1, 4, 8])
def test_euler_denoise_integrates_the_exact_velocity_back_to_the_data(num_steps):
    # dt = -1 / num_steps is exact in float32 for powers of two, so the constant velocity integrates exactly.
    actions, noise = randn(2, 5, 3, seed=1), randn(2, 5, 3, seed=2)
    result = euler_denoise(lambda x, t: noise - actions, noise, num_steps)
    torch.testing.assert_close(result, actions, rtol=0, atol=1e-12)


def test_euler_denoise_error_with_ten_steps_is_only_the_float32_rounding_of_dt():
    actions, noise = randn(2, 5, 3, seed=1), randn(2, 5, 3, seed=2)
    result = euler_denoise(lambda x, t: noise - actions, noise, 10)
    dt = float(np.float32(-1 / 10))  # SmolVLA advances t in float32
    torch.testing.assert_close(result, noise + 10 * dt * (noise - actions), rtol=0, atol=1e-12)
    torch.testing.assert_close(result, actions, rtol=0, atol=1e-6)


def _recorded_times(num_steps):
    times = []

    def velocity(x, t):
        times.append(t.clone())
        return torch.zeros_like(x)

    euler_denoise(velocity, torch.zeros(1, 1, 1), num_steps)
    return times


def test_euler_denoise_feeds_smolvla_float32_times():
    times = _recorded_times(4)
    assert all(t.dtype == torch.float32 and t.ndim == 0 for t in times)
    assert [t.item() for t in times] == [1.0, 0.75, 0.5, 0.25]


def test_euler_denoise_times_match_a_float32_accumulation_bit_for_bit():
    expected, t, dt = [], np.float32(1.0), np.float32(-1.0 / 10)
    for _ in range(10):
        expected.append(t)
        t = np.float32(t + dt)
    assert np.array_equal(np.array([t.item() for t in _recorded_times(10)], dtype=np.float32), np.array(expected))


def test_euler_denoise_converges_on_a_linear_ode_at_first_order():
    # dx/dt = x from t = 1 to t = 0 has x(0) = x(1) * exp(-1); Euler's error is O(1 / num_steps).
    x_1 = randn(3, 2, 2, seed=3)
    errors = [(euler_denoise(lambda x, t: x, x_1, n) - x_1 * math.exp(-1)).abs().max().item() for n in (10, 20, 40, 80)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    for earlier, later in zip(errors, errors[1:]):
        assert 0.45 < later / earlier < 0.55
    assert errors[-1] < 0.01 * x_1.abs().max().item()


def test_sample_chunk_time_range_and_beta_mean():
    t = sample_chunk_time(200_000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert abs(t.double().mean().item() - (0.999 * 0.6 + 0.001)) < 3e-3  # standard error 6e-4


@pytest.mark.parametrize("x", [0.1, 0.3, 0.5, 0.8])
def test_sample_chunk_time_follows_the_beta_cdf(x):
    t = sample_chunk_time(200_000, generator=torch.Generator().manual_seed(1))
    beta = (t.double() - 0.001) / 0.999
    assert abs((beta <= x).double().mean().item() - x**1.5) < 5e-3  # standard error <= 1.2e-3


# ---------------------------------------------------------------------------------------------------------------
# streaming objectives
# ---------------------------------------------------------------------------------------------------------------


def test_trajectory_knots_start_at_the_cumulative_action_and_step_by_the_actions():
    cumulative, actions, states = randn(2, 3, seed=1), randn(2, 6, 3, seed=2), randn(2, 7, 4, seed=3)
    knots = trajectory_knots(cumulative, actions, states, width=10)
    assert knots.shape == (2, 7, 10)
    torch.testing.assert_close(knots[:, 0, :3], cumulative, rtol=0, atol=1e-12)
    torch.testing.assert_close(knots[:, 1:, :3] - knots[:, :-1, :3], actions, rtol=0, atol=1e-12)
    assert torch.equal(knots[..., 3:7], states)
    assert torch.equal(knots[..., 7:], torch.zeros(2, 7, 3, dtype=F64))


def test_trajectory_knots_without_states_hold_the_action_only():
    cumulative, actions = randn(2, 3, seed=1), randn(2, 6, 3, seed=2)
    knots = trajectory_knots(cumulative, actions, None, width=8)
    expected = torch.cat([cumulative[:, None], cumulative[:, None] + actions.cumsum(dim=1)], dim=1)
    torch.testing.assert_close(knots[..., :3], expected, rtol=0, atol=1e-12)
    assert torch.equal(knots[..., 3:], torch.zeros(2, 7, 5, dtype=F64))


def test_stream_reference_passes_through_every_knot_at_its_grid_time():
    knots = random_knots(chunk_size=8)
    tau = (torch.arange(8, dtype=F64) / 8).expand(2, -1)
    xi, _, segment = stream_reference(knots, tau)
    torch.testing.assert_close(xi, knots[:, :8], rtol=0, atol=1e-12)
    assert torch.equal(segment, torch.arange(8).expand(2, -1))


def test_stream_reference_hits_the_knots_for_the_default_chunk_size():
    # With H = 50 some k / H round below the knot, so the left segment is picked with alpha ~ 1: xi is still X_k.
    knots = random_knots(chunk_size=50)
    xi, _, _ = stream_reference(knots, (torch.arange(50, dtype=F64) / 50).expand(2, -1))
    torch.testing.assert_close(xi, knots[:, :50], rtol=0, atol=1e-12)


def test_stream_reference_segment_index_is_floor_of_h_tau():
    tau = torch.tensor([[0.0, 0.01, 0.124, 0.125, 0.3, 0.5626, 0.875, 0.999]], dtype=F64).expand(2, -1)
    _, _, segment = stream_reference(random_knots(chunk_size=8), tau)
    assert segment[0].tolist() == [0, 0, 0, 1, 2, 4, 7, 7]


def test_stream_reference_velocity_is_the_derivative_inside_a_segment():
    knots, h = random_knots(chunk_size=8), 1e-6
    tau = ((torch.arange(8, dtype=F64) + torch.tensor([0.5, 0.2, 0.8, 0.4, 0.6, 0.3, 0.7, 0.5], dtype=F64)) / 8)
    tau = tau.expand(2, -1)
    _, dxi, _ = stream_reference(knots, tau)
    finite_difference = (stream_reference(knots, tau + h)[0] - stream_reference(knots, tau - h)[0]) / (2 * h)
    torch.testing.assert_close(dxi, finite_difference, rtol=0, atol=1e-7)
    torch.testing.assert_close(dxi, 8 * (knots[:, 1:] - knots[:, :-1]), rtol=0, atol=1e-12)


def test_stream_reference_is_continuous_at_the_knots():
    knots = random_knots(chunk_size=8)
    grid = (torch.arange(1, 8, dtype=F64) / 8).expand(2, -1)
    at_knot, _, right_segment = stream_reference(knots, grid)
    torch.testing.assert_close(at_knot, knots[:, 1:8], rtol=0, atol=1e-12)
    for distance in (1e-2, 1e-3):
        from_left, dxi_left, left_segment = stream_reference(knots, grid - distance)
        assert torch.equal(right_segment, left_segment + 1)
        bound = dxi_left.abs() * distance + 1e-12
        assert ((from_left - at_knot).abs() <= bound).all()


def test_grid_points_that_round_below_their_knot_start_its_segment():
    """50 * (29 / 50) is 28.999999999999996 in float64: the grid point must still give X_29 and segment 29."""
    knots = random_knots(chunk_size=50)
    tau = torch.tensor([[29 / 50]], dtype=F64).expand(2, -1)
    assert (tau * 50).floor().eq(28).all()  # the rounding this guards against
    xi, dxi, segment = stream_reference(knots, tau)
    assert segment.tolist() == [[29], [29]]
    torch.testing.assert_close(xi[:, 0], knots[:, 29], rtol=0, atol=1e-12)
    torch.testing.assert_close(dxi[:, 0], 50 * (knots[:, 30] - knots[:, 29]), rtol=0, atol=1e-12)


def test_euler_steps_of_the_reference_velocity_recover_every_knot():
    chunk_size = 8
    knots = random_knots(chunk_size=chunk_size)
    x = knots[:, 0]
    for k in range(chunk_size):
        _, dxi, _ = stream_reference(knots, torch.full((2, 1), k / chunk_size, dtype=F64))
        x = x + dxi[:, 0] / chunk_size
        torch.testing.assert_close(x, knots[:, k + 1], rtol=0, atol=1e-12)


def test_stabilize_adds_decaying_noise_and_its_restoring_velocity():
    xi, dxi, eps = randn(2, 3, 4, seed=1), randn(2, 3, 4, seed=2), randn(2, 3, 4, seed=3)
    tau = torch.tensor([[0.0, 0.3, 0.9], [0.1, 0.5, 0.7]], dtype=F64)
    sigma0, kappa = 0.16, 4.0
    x, u = stabilize(xi, dxi, tau, eps, sigma0, kappa)
    n = sigma0 * torch.exp(-kappa * tau)[..., None] * eps
    torch.testing.assert_close(x - xi, n, rtol=0, atol=1e-12)
    torch.testing.assert_close(u - dxi, -kappa * n, rtol=0, atol=1e-12)


def test_stabilized_field_pulls_a_perturbed_point_back_at_rate_kappa():
    # u(x, tau) = dxi - kappa (x - xi): written through `stabilize` with sigma0 = 1, eps = (x - xi) exp(kappa tau).
    chunk_size, steps_per_segment, kappa = 4, 256, 4.0
    knots = random_knots(batch=1, chunk_size=chunk_size, width=3)
    h = 1 / (chunk_size * steps_per_segment)  # a power of two: every tau of the loop is exact
    perturbation = 0.3 * randn(1, 3, seed=5)
    x, distances = knots[:, 0] + perturbation, []
    for step in range(chunk_size * steps_per_segment):
        tau = torch.full((1, 1), step * h, dtype=F64)
        xi, dxi, _ = stream_reference(knots, tau)
        distances.append((x - xi[:, 0]).norm().item())
        eps = (x[:, None] - xi) * torch.exp(kappa * tau)[..., None]
        _, u = stabilize(xi, dxi, tau, eps, sigma0=1.0, kappa=kappa)
        x = x + h * u[:, 0]
    distances.append((x - knots[:, -1]).norm().item())
    assert all(later < earlier for earlier, later in zip(distances, distances[1:]))
    ratios = np.array(distances) / distances[0]
    taus = np.arange(len(distances)) * h
    np.testing.assert_allclose(ratios, (1 - kappa * h) ** np.arange(len(distances)), rtol=1e-9)
    np.testing.assert_allclose(ratios, np.exp(-kappa * taus), rtol=1e-2)


def test_sample_stream_time_covers_every_segment_uniformly():
    chunk_size = 8
    tau = sample_stream_time(1000, 200, chunk_size, generator=torch.Generator().manual_seed(0))
    assert tau.shape == (1000, 200)
    assert tau.min() >= 0 and tau.max() < 1
    segment = (tau.double() * chunk_size).floor().long()
    frequency = torch.bincount(segment.flatten(), minlength=chunk_size).double() / segment.numel()
    torch.testing.assert_close(frequency, torch.full((chunk_size,), 1 / chunk_size, dtype=F64), rtol=0, atol=5e-3)


def test_sample_stream_time_offset_inside_a_segment_is_uniform():
    chunk_size = 8
    tau = sample_stream_time(1000, 200, chunk_size, generator=torch.Generator().manual_seed(1)).double()
    alpha = tau * chunk_size - (tau * chunk_size).floor()
    quartiles = torch.bincount((alpha * 4).long().flatten(), minlength=4).double() / alpha.numel()
    torch.testing.assert_close(quartiles, torch.full((4,), 0.25, dtype=F64), rtol=0, atol=5e-3)


def test_sample_stream_time_is_reproducible_with_a_generator():
    first = sample_stream_time(4, 3, 8, generator=torch.Generator().manual_seed(7))
    second = sample_stream_time(4, 3, 8, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)


# Episode of `end` frames from t: action k exists for k < end, next state t + k + 1 for k < end - 1.
@pytest.mark.parametrize(
    "action_pad, next_state_pad, expected",
    [
        ([0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]),  # inside the episode
        ([0, 0, 0, 0], [0, 0, 0, 1], [1, 1, 1, 0]),  # episode ends after action 3: no state after it
        ([0, 0, 0, 1], [0, 0, 1, 1], [1, 1, 0, 0]),  # 3 frames left
        ([0, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]),  # last frame of the episode
        ([0, 0, 1, 1], None, [1, 1, 0, 0]),  # `stream` objective: actions only
        (None, [0, 1, 1, 1], [1, 0, 0, 0]),
        (None, None, [1, 1, 1, 1]),
    ],
)
def test_transition_mask_at_episode_ends(action_pad, next_state_pad, expected):
    segment = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])

    def pads(values):
        return None if values is None else torch.tensor([values, values], dtype=torch.bool)

    valid = transition_mask(segment, pads(action_pad), pads(next_state_pad))
    expected = torch.tensor(expected, dtype=torch.bool)
    assert torch.equal(valid, torch.stack([expected, expected.flip(0)]))


def test_masked_mean_of_a_hand_computed_example():
    losses = torch.tensor([[[1.0, 2.0, 100.0], [3.0, 4.0, 100.0]], [[5.0, 6.0, 100.0], [7.0, 9.0, 100.0]]], dtype=F64)
    valid = torch.tensor([[True, False], [True, True]])
    assert masked_mean(losses, valid, slice(0, 2)).item() == (1 + 2 + 5 + 6 + 7 + 9) / 6
    assert masked_mean(losses, valid, slice(2, 3)).item() == 100.0


def test_masked_mean_without_valid_element_is_zero():
    result = masked_mean(torch.ones(2, 3, 4, dtype=F64), torch.zeros(2, 3, dtype=torch.bool), slice(0, 4))
    assert result.item() == 0.0


def test_masked_query_mean_of_a_hand_computed_example():
    losses = torch.tensor([[[1.0, 3.0], [10.0, 20.0]], [[5.0, 7.0], [30.0, 50.0]]], dtype=F64)  # (B=2, Q=2, D=2)
    valid = torch.tensor([[True, True], [False, True]])
    # query 0: batch 0 only -> (1 + 3) / 2 = 2; query 1: both -> (10 + 20 + 30 + 50) / 4 = 27.5
    assert masked_query_mean(losses, valid, slice(0, 2)).item() == (2 + 27.5) / 2


def test_masked_query_mean_equals_the_mean_of_single_query_losses():
    losses, valid = randn(3, 5, 6, seed=1).square(), torch.rand(3, 5, generator=torch.Generator().manual_seed(2)) > 0.4
    dims = slice(1, 4)
    singles = [masked_query_mean(losses[:, q : q + 1], valid[:, q : q + 1], dims) for q in range(5)]
    torch.testing.assert_close(masked_query_mean(losses, valid, dims), torch.stack(singles).mean(), rtol=0, atol=1e-12)
    per_query = [masked_mean(losses[:, q : q + 1], valid[:, q : q + 1], dims) for q in range(5)]
    torch.testing.assert_close(masked_query_mean(losses, valid, dims), torch.stack(per_query).mean(), rtol=0, atol=1e-12)


def test_masked_query_mean_query_without_valid_element_contributes_zero():
    losses = torch.tensor([[[2.0, 4.0], [8.0, 8.0]]], dtype=F64)  # (B=1, Q=2, D=2)
    result = masked_query_mean(losses, torch.tensor([[True, False]]), slice(0, 2))
    assert result.item() == 3.0 / 2
    assert masked_query_mean(losses, torch.zeros(1, 2, dtype=torch.bool), slice(0, 2)).item() == 0.0


# ---------------------------------------------------------------------------------------------------------------
# time embedding
# ---------------------------------------------------------------------------------------------------------------


def test_time_embedding_at_zero_is_sin_zero_cos_one():
    embedding = sinusoidal_time_embedding(torch.zeros(3, dtype=torch.float32), 16, 4e-3, 4.0)
    assert embedding.dtype == F64 and embedding.shape == (3, 16)
    assert torch.equal(embedding[:, :8], torch.zeros(3, 8, dtype=F64))
    assert torch.equal(embedding[:, 8:], torch.ones(3, 8, dtype=F64))


def test_time_embedding_periods_are_log_spaced_from_min_to_max_period():
    t = 1e-4  # below half the smallest period, so atan2 recovers the angle
    embedding = sinusoidal_time_embedding(torch.tensor([t], dtype=F64), 16, 4e-3, 4.0)[0]
    periods = 2 * math.pi * t / torch.atan2(embedding[:8], embedding[8:])
    torch.testing.assert_close(periods[[0, -1]], torch.tensor([4e-3, 4.0], dtype=F64), rtol=1e-12, atol=0)
    ratios = periods[1:] / periods[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 1000 ** (1 / 7)), rtol=1e-12, atol=0)


def test_time_embedding_is_periodic_in_the_first_and_last_period():
    t = torch.tensor([0.0123, 0.37, 0.9], dtype=F64)
    embed = lambda time: sinusoidal_time_embedding(time, 8, 4e-3, 4.0)  # noqa: E731
    shifted_min, shifted_max, base = embed(t + 4e-3), embed(t + 4.0), embed(t)
    torch.testing.assert_close(shifted_min[:, [0, 4]], base[:, [0, 4]], rtol=0, atol=1e-10)
    torch.testing.assert_close(shifted_max[:, [3, 7]], base[:, [3, 7]], rtol=0, atol=1e-12)
    assert (shifted_min[:, [3, 7]] - base[:, [3, 7]]).abs().max() > 1e-3  # the slow frequency did move


def test_time_embedding_rejects_an_odd_dimension():
    with pytest.raises(ValueError, match="dim must be even"):
        sinusoidal_time_embedding(torch.zeros(2), 7, 4e-3, 4.0)

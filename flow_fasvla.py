"""Flow math of FAS-VLA: pure tensor functions, no modules (DESIGN.md section 3).

Two time conventions, stated once:
- chunk flow matching (SmolVLA): `t` in [0, 1] is the noise level, t = 1 is noise and t = 0 is data; sampling
  integrates from t = 1 down to t = 0.
- streaming flow (SFP / StreamingVLA / FAS-VLA): `tau` in [0, 1) is execution time; knot k of the trajectory sits at
  tau = k / H and sampling integrates forwards, one Euler step of size 1 / H per executed action.

Shape letters: B batch, H chunk size, Q flow-time queries per sample, D trajectory width (max_action_dim).
"""

import math

import torch

KNOT_SNAP = 1e-5  # in units of segments


def sinusoidal_time_embedding(time: torch.Tensor, dim: int, min_period: float, max_period: float) -> torch.Tensor:
    """`[sin(2 pi t / p_i), cos(2 pi t / p_i)]` with periods `p_i` log-spaced in [min_period, max_period].

    Computed in float64 (as SmolVLA does) and returned in float64; `time` has any shape (...,), the result (..., dim).
    """
    if dim % 2:
        raise ValueError(f"dim must be even for a sin/cos embedding, got {dim}")
    fraction = torch.linspace(0.0, 1.0, dim // 2, dtype=torch.float64, device=time.device)
    period = min_period * (max_period / min_period) ** fraction
    angular_frequency = 1.0 / period * 2 * math.pi
    radians = time[..., None].to(torch.float64) * angular_frequency  # (..., dim / 2)
    return torch.cat([torch.sin(radians), torch.cos(radians)], dim=-1)


# ---------------------------------------------------------------------------------------------------------------
# chunk objective (SmolVLA)
# ---------------------------------------------------------------------------------------------------------------


def sample_chunk_time(batch_size: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
    """SmolVLA's flow time `t ~ 0.999 * Beta(1.5, 1) + 0.001`, shape (B,), float32.

    Beta(1.5, 1) has the CDF t^1.5, so it is sampled by inverting the CDF of a uniform draw (this keeps an explicit
    `generator` usable, which `torch.distributions.Beta` does not accept).
    """
    uniform = torch.rand(batch_size, device=device, generator=generator, dtype=torch.float32)
    return 0.999 * uniform ** (1 / 1.5) + 0.001


def chunk_flow_path(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear path between data and noise: `x_t = t * noise + (1 - t) * actions`, `u_t = d x_t / dt = noise - actions`.

    actions, noise: (B, H, D); t broadcastable to them, e.g. (B, 1, 1).
    """
    x_t = t * noise + (1 - t) * actions
    u_t = noise - actions
    return x_t, u_t


def euler_denoise(velocity, x_1: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Integrate `dx/dt = velocity(x, t)` from t = 1 to t = 0 with `num_steps` Euler steps.

    `t` is advanced in float32 by repeated addition of `dt = -1 / num_steps`, exactly as SmolVLA does, so the
    times fed to the model match it bit for bit. `velocity(x, t)` receives `t` as a 0-d float32 tensor.
    """
    dt = torch.tensor(-1.0 / num_steps, dtype=torch.float32, device=x_1.device)
    t = torch.tensor(1.0, dtype=torch.float32, device=x_1.device)
    x_t = x_1
    for _ in range(num_steps):
        x_t = x_t + dt * velocity(x_t, t)
        t = t + dt
    return x_t


# ---------------------------------------------------------------------------------------------------------------
# streaming objectives (SFP on the accumulated action, optionally joint with the state)
# ---------------------------------------------------------------------------------------------------------------


def trajectory_start(cumulative_action: torch.Tensor, previous_action: torch.Tensor, absolute: torch.Tensor,
                     origin: str) -> torch.Tensor:
    """A_0 (B, d_a): the integrated dimensions at the episode's running sum C_t (`origin="episode"`) or at 0
    (`"chunk"`), the absolute ones at the last command a_{t-1}. absolute: (d_a,) bool."""
    integrated = cumulative_action if origin == "episode" else torch.zeros_like(cumulative_action)
    return torch.where(absolute, previous_action, integrated)


def trajectory_knots(
    start: torch.Tensor, actions: torch.Tensor, states: torch.Tensor | None, width: int,
    absolute: torch.Tensor | None = None,
) -> torch.Tensor:
    """Knots `X_k = [A_k ; S_k ; 0]` for k = 0..H: `A_k = A_0 + sum_{i<k} a_{t+i}` for the integrated action
    dimensions, `A_k = a_{t+k-1}` (the command in force, `A_0` the one before the chunk) for the absolute ones.

    start: (B, d_a) = A_0 (`trajectory_start`); actions: (B, H, d_a); states: (B, H + 1, d_s) = S_0..S_H or None for
    the action-only `stream` objective; absolute: (d_a,) bool or None (every dimension integrated). Returns
    (B, H + 1, width), zero-padded on the right.
    """
    steps = torch.cat([start[:, None], actions], dim=1)  # (B, H + 1, d_a)
    levels = steps.cumsum(dim=1)
    if absolute is not None:
        levels = torch.where(absolute, steps, levels)
    parts = [levels]
    if states is not None:
        parts.append(states)
    knots = torch.cat(parts, dim=-1)
    return torch.nn.functional.pad(knots, (0, width - knots.shape[-1]))


def sample_stream_time(
    batch_size: int, num_queries: int, chunk_size: int, device=None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Flow times `tau = (k + alpha) / H`, k uniform over the H segments and alpha uniform in [0, 1): (B, Q).

    Sampling k uniformly gives every inference grid point k / H (where alpha = 0) the same weight, unlike a Beta
    distribution over tau that would starve the end of the chunk.
    """
    shape = (batch_size, num_queries)
    k = torch.randint(0, chunk_size, shape, device=device, generator=generator)
    alpha = torch.rand(shape, device=device, generator=generator)
    below_one = torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)).item()  # (H - 1 + alpha) / H rounds up to 1
    return ((k + alpha) / chunk_size).clamp(max=below_one)


def stream_reference(knots: torch.Tensor, tau: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Piecewise-linear reference path through the knots and its velocity.

    With `k = floor(H tau)` and `alpha = H tau - k`: `xi = X_k + alpha (X_{k+1} - X_k)`, `dxi = H (X_{k+1} - X_k)`.
    knots: (B, H + 1, D); tau: (B, Q) in [0, 1). Returns xi, dxi (B, Q, D) and the segment index k (B, Q).
    """
    chunk_size = knots.shape[1] - 1
    scaled = tau * chunk_size
    # k / H times H can land one ulp below k: snap such grid points onto their knot, which starts segment k.
    segment = (scaled + KNOT_SNAP).floor().long().clamp(0, chunk_size - 1)
    alpha = (scaled - segment).clamp(min=0).unsqueeze(-1).to(knots.dtype)  # (B, Q, 1)
    index = segment.unsqueeze(-1).expand(-1, -1, knots.shape[-1])  # (B, Q, D)
    start = knots.gather(1, index)
    end = knots.gather(1, index + 1)
    return start + alpha * (end - start), chunk_size * (end - start), segment


def stabilize(
    xi: torch.Tensor, dxi: torch.Tensor, tau: torch.Tensor, eps: torch.Tensor, sigma0: float, kappa: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFP stabilising flow around the reference: `n = sigma0 exp(-kappa tau) eps`, `x = xi + n`, `u = dxi - kappa n`.

    `u` is the velocity of `x` along `d(x - xi)/dtau = -kappa (x - xi)`: a perturbed point decays back to the
    reference at rate kappa. xi, dxi, eps: (B, Q, D); tau: (B, Q).
    """
    n = sigma0 * torch.exp(-kappa * tau).unsqueeze(-1).to(xi.dtype) * eps
    return xi + n, dxi - kappa * n


def feedback_stabilize(
    xi: torch.Tensor, dxi: torch.Tensor, tau: torch.Tensor, eps: torch.Tensor, sigma0: float, kappa: float,
    kappa_a: float, kappa_fb: float, G: torch.Tensor | None, action_dim: int, state_dim: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Feedback-consistent stabilisation (DESIGN.md section 3b): the noise of `stabilize`, with the action target

        u_A = dxi_A - kappa_a n_A - kappa_fb G n_S,   u_S = dxi_S - kappa n_S:

    a state displaced from the reference returns only through the actions, so the action target carries the
    increments `G n_S` that remove the displacement, at rate kappa_fb. `kappa_a = kappa, kappa_fb = 0` is `stabilize`
    bit for bit. G: (d_a, d_s); the state dimensions follow the action dimensions in the trajectory.
    """
    x, u = stabilize(xi, dxi, tau, eps, sigma0, kappa)
    if kappa_a == kappa and kappa_fb == 0:
        return x, u
    n = sigma0 * torch.exp(-kappa * tau).unsqueeze(-1).to(xi.dtype) * eps  # as in stabilize
    n_a, n_s = n[..., :action_dim], n[..., action_dim:action_dim + state_dim]
    correction = (kappa - kappa_a) * n_a
    if kappa_fb:
        correction = correction - kappa_fb * n_s @ G.to(n.dtype).T  # (B, Q, d_a)
    return x, u + torch.nn.functional.pad(correction, (0, u.shape[-1] - action_dim))


def transition_mask(
    segment: torch.Tensor, action_is_pad: torch.Tensor | None, next_state_is_pad: torch.Tensor | None
) -> torch.Tensor:
    """True where segment k is a real transition: action k and (if given) state k + 1 lie inside the episode.

    segment: (B, Q); action_is_pad: (B, H) for actions t..t+H-1; next_state_is_pad: (B, H) for states t+1..t+H.
    """
    valid = torch.ones_like(segment, dtype=torch.bool)
    for is_pad in (action_is_pad, next_state_is_pad):
        if is_pad is not None:
            valid = valid & ~is_pad.gather(1, segment)
    return valid


def masked_mean(losses: torch.Tensor, valid: torch.Tensor, dims: slice) -> torch.Tensor:
    """Mean of `losses[..., dims]` over the positions where `valid` is True (0 if there are none).

    losses: (B, H, D); valid: (B, H).
    """
    selected = losses[..., dims]
    weights = valid.to(selected.dtype).unsqueeze(-1)
    count = weights.sum() * selected.shape[-1]
    return (selected * weights).sum() / count.clamp(min=1)


def masked_query_mean(losses: torch.Tensor, valid: torch.Tensor, dims: slice) -> torch.Tensor:
    """Mean over queries of the per-query masked mean squared error over the batch and the feature slice `dims`.

    losses: (B, Q, D) elementwise squared errors; valid: (B, Q). Each query q is normalised by its own count of valid
    elements, so Q queries in one pass give exactly the mean of Q single-query losses. Queries without any valid
    element contribute 0.
    """
    selected = losses[..., dims]  # (B, Q, d)
    weights = valid.to(selected.dtype).unsqueeze(-1)
    per_query_sum = (selected * weights).sum(dim=(0, 2))  # (Q,)
    per_query_count = weights.sum(dim=(0, 2)) * selected.shape[-1]
    return (per_query_sum / per_query_count.clamp(min=1)).mean()


__all__ = [
    "chunk_flow_path",
    "euler_denoise",
    "masked_mean",
    "masked_query_mean",
    "sample_chunk_time",
    "sample_stream_time",
    "sinusoidal_time_embedding",
    "stabilize",
    "stream_reference",
    "trajectory_knots",
    "transition_mask",
]

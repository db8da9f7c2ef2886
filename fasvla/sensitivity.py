"""Corrective gain of a streaming model (DESIGN.md section 9): does the next action undo a displacement of the state
it is fed?

At a streamed step the model reads `x = [A ; S_in]` and returns the velocity `v = [v_A ; v_S]` (normalised units).
Displacing the fed-back state by `u` (a unit vector) changes the action velocity by `J u`, `J = dv_A / dS_in`. The
stabilising flow decays a state displacement at rate `kappa` (`u_S = dxi_S - kappa n_S`), which the actions can only
do by `-kappa G u`, G mapping a state displacement to the actions that remove it (fasvla/state_response.py). So

    gain(u) = <J u, -G u> / (kappa |G u|^2)

is 1 when the action undoes the displacement at the rate the stabilisation asks for, 0 when it ignores it and < 0
when it makes it worse. `J u` is measured twice: by central finite differences of the streamed step and by autograd
through it; the two must agree. A model that tracks its plan (`config.tracking_kappa` = kappa_t, streaming_fasvla.py)
adds `kappa_t G (s_plan - S_in)` to `v_A` outside the network: with the plan fixed, `J` gains `-kappa_t G` on the
integrated action dimensions, counted in both estimates (a gain of kappa_t / kappa by construction).
"""

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

STATE_GROUPS = {"position": (0, 1, 2), "rotation": (3, 4, 5), "gripper": (6, 7)}  # LIBERO's 8-dim state


@dataclass
class Gains:
    finite_difference: np.ndarray  # (frames, d_s): gain of a displacement along each state dimension
    autograd: np.ndarray  # (frames, d_s)
    relative_change: np.ndarray  # (frames, d_s): |J e_d| / |v_A|, the action's change per unit displacement


def action_velocity(model, cache, A: torch.Tensor, S: torch.Tensor, tau: float) -> torch.Tensor:
    """v_A (B, d_a) of one streamed step from the normalised trajectory point [A ; S] (B, d_a), (B, d_s)."""
    config = model.config
    x = F.pad(torch.cat([A, S], dim=-1), (0, config.max_action_dim - A.shape[-1] - S.shape[-1]))[:, None]
    time = torch.full((A.shape[0], 1), float(tau), device=A.device)
    return model.stream_velocity(cache, x, time)[:, 0, : config.action_dim]


def state_jacobian(model, cache, A: torch.Tensor, S: torch.Tensor, tau: float) -> torch.Tensor:
    """J = dv_A / dS (B, d_a, d_s) by autograd: one backward pass per action dimension (frames are independent)."""
    S = S.detach().requires_grad_(True)
    with torch.enable_grad():
        v = action_velocity(model, cache, A, S, tau)
        rows = [torch.autograd.grad(v[:, i].sum(), S, retain_graph=i < v.shape[1] - 1)[0] for i in range(v.shape[1])]
    return torch.stack(rows, dim=1)


def finite_difference_jacobian(model, cache, A: torch.Tensor, S: torch.Tensor, tau: float,
                               epsilon: float) -> torch.Tensor:
    """J (B, d_a, d_s) by central differences of the streamed step, `epsilon` in normalised state units."""
    columns = []
    with torch.no_grad():
        for d in range(S.shape[1]):
            step = torch.zeros_like(S)
            step[:, d] = epsilon
            plus, minus = action_velocity(model, cache, A, S + step, tau), action_velocity(model, cache, A, S - step,
                                                                                            tau)
            columns.append((plus - minus) / (2 * epsilon))
    return torch.stack(columns, dim=2)


def tracking_jacobian(model, device) -> torch.Tensor | None:
    """dv_A / dS_in (d_a, d_s) of the tracking correction with the plan fixed, `-kappa_t G` where it tracks (the
    model's `tracking_matrix`); None for a model that does not track."""
    G = model.tracking_matrix(device)
    return None if G is None else -G


def corrective_gains(model, cache, A: torch.Tensor, S: torch.Tensor, G: np.ndarray, kappa: float, tau: float = 0.0,
                     epsilon: float = 1e-2) -> Gains:
    """The gain of a displacement along every state dimension, for a batch of frames (their prefix `cache`), of the
    streamed step: the network's and, for a model that tracks its plan, the tracking correction's."""
    if not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa!r}")
    corrective = -torch.as_tensor(G, dtype=torch.float32, device=S.device)  # (d_a, d_s): column d answers e_d
    norms = (corrective**2).sum(dim=0)  # (d_s,)
    with torch.no_grad():
        speed = action_velocity(model, cache, A, S, tau).norm(dim=1, keepdim=True)  # (B, 1)

    def gains(J: torch.Tensor) -> np.ndarray:  # (B, d_a, d_s) -> (B, d_s)
        projected = torch.einsum("bad,ad->bd", J, corrective)
        return (projected / (kappa * norms.clamp_min(1e-12))).cpu().numpy()

    exact = state_jacobian(model, cache, A, S, tau)
    numeric = finite_difference_jacobian(model, cache, A, S, tau, epsilon)
    if (tracking := tracking_jacobian(model, S.device)) is not None:
        exact, numeric = exact + tracking, numeric + tracking
    return Gains(gains(numeric), gains(exact), (exact.norm(dim=1) / speed.clamp_min(1e-12)).cpu().numpy())


def group_summary(gains: Gains, groups: dict[str, tuple[int, ...]] = STATE_GROUPS) -> dict[str, dict[str, float]]:
    """Per group of state dimensions: median and interquartile range of the gain over frames and dimensions (both
    estimates), and the median relative change of the action."""
    summary = {}
    for name, dims in groups.items():
        dims = [d for d in dims if d < gains.autograd.shape[1]]
        if not dims:
            continue
        exact, numeric = gains.autograd[:, dims].ravel(), gains.finite_difference[:, dims].ravel()
        q25, q50, q75 = np.percentile(exact, [25, 50, 75])
        summary[name] = {"gain": float(q50), "gain_q25": float(q25), "gain_q75": float(q75),
                         "gain_finite_difference": float(np.median(numeric)),
                         "relative_action_change": float(np.median(gains.relative_change[:, dims]))}
    return summary


def gains_table(summaries: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown of several models' `group_summary`s: per model the median gain [q25, q75] of each state group, and
    the action's change per unit displacement of the position."""
    groups = list(STATE_GROUPS)
    rows = ["| model | " + " | ".join(groups) + " | action change per unit (position) |",
            "|---|" + "---|" * (len(groups) + 1)]
    for name, summary in summaries.items():
        cells = [f"{s['gain']:.3f} [{s['gain_q25']:.3f}, {s['gain_q75']:.3f}]" if (s := summary.get(g)) else "-"
                 for g in groups]
        change = 100 * summary["position"]["relative_action_change"]
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {change:.0f}% |")
    return "\n".join(rows) + "\n"

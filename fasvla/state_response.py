"""How the robot's state answers its actions, fitted from demonstrations (DESIGN.md section 3b): `S_{k+1} - S_k ~ B a_k`
in the model's normalised units, and `G`, the ridge pseudo-inverse of `B`, which maps a displacement of the state to
the action increments that remove it.

For LIBERO's delta end-effector actions `B` is close to diagonal on position (an action of 1 moves the end effector
by about 5 mm in a step); on rotation it couples the axes, because the axis-angle state of a gripper pointing down is
not in the end effector's frame. `G` is what feedback-consistent stabilisation asks the action stream to apply to a
displaced state, and what the corrective-gain diagnostic projects the model's answer on.

Two choices make `G` usable (measured on the 100 plain libero_object demonstrations of results/feedback_v2):
- Absolute action dimensions (the gripper, a level) are not increments: they are left out of the fit and their
  rows of `G` are 0. Fitted as increments, the gripper's row of `G` read 14 on the finger states (R^2 of the
  fingers' increments: 0.06), a correction that is noise.
- The ridge is relative to the largest eigenvalue of `B^T B`, which bounds every gain of `G` by
  1 / (2 sqrt(ridge) s_max). B's singular values there run from 0.48 to 0.017; with a ridge relative to the mean
  eigenvalue (1e-3) one rotation row of `G` reached 41, so the stabilising noise put action targets 10 times the
  position's on a direction the data barely determine. With the default 0.01 the largest gain of `G` is 9.3 and
  its position diagonal 5.8 / 9.0 / 5.8 (6.6 / 12.4 / 6.4 before).

    fit = fit_state_response(states, actions, episode_starts, absolute_dims=[6])   # normalised (N, d_s), (N, d_a)
    fit.B  # (d_s, d_a);  fit.G  # (d_a, d_s);  fit.r2  # (d_s,) share of each state increment that B explains
"""

from dataclasses import dataclass

import numpy as np

DEFAULT_RIDGE = 0.01  # relative to the largest eigenvalue of B^T B: bounds G along directions B barely moves


@dataclass(frozen=True)
class StateResponse:
    B: np.ndarray  # (d_s, d_a): state increment per action
    G: np.ndarray  # (d_a, d_s): action that removes a state displacement, (B^T B + lambda I)^-1 B^T
    r2: np.ndarray  # (d_s,): the share of the variance of each state increment that B a explains
    transitions: int


def transitions(states: np.ndarray, actions: np.ndarray, episode_starts) -> tuple[np.ndarray, np.ndarray]:
    """(dS (M, d_s), a (M, d_a)): every step k with k + 1 in the same episode, dS = S_{k+1} - S_k."""
    ends = list(episode_starts)[1:] + [len(states)]
    keep = np.ones(len(states), dtype=bool)
    keep[np.asarray(ends) - 1] = False  # the last frame of an episode has no successor in it
    rows = np.flatnonzero(keep)
    return states[rows + 1] - states[rows], actions[rows]


def fit_state_response(states: np.ndarray, actions: np.ndarray, episode_starts, ridge: float = DEFAULT_RIDGE,
                       absolute_dims=()) -> StateResponse:
    """Least squares `dS = a B^T` over a dataset's transitions on the integrated action dimensions (the columns of
    `absolute_dims` are 0), and G its ridge pseudo-inverse (float64; 0 on the rows of `absolute_dims`)."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    delta, action = (np.asarray(x, dtype=np.float64) for x in transitions(states, actions, episode_starts))
    integrated = np.setdiff1d(np.arange(action.shape[1]), np.asarray(absolute_dims, dtype=int))
    if len(delta) <= len(integrated):
        raise ValueError(f"{len(delta)} transitions cannot determine a {delta.shape[1]} x {len(integrated)} response")
    B = np.zeros((delta.shape[1], action.shape[1]))
    B[:, integrated] = np.linalg.lstsq(action[:, integrated], delta, rcond=None)[0].T  # (d_s, d_a)
    residual = delta - action @ B.T
    variance = delta.var(axis=0)
    r2 = 1.0 - residual.var(axis=0) / np.where(variance > 0, variance, 1.0)
    G = np.zeros((action.shape[1], delta.shape[1]))
    G[integrated] = ridge_pseudo_inverse(B[:, integrated], ridge)
    return StateResponse(B, G, r2, len(delta))


def ridge_pseudo_inverse(B: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """(d_a, d_s): (B^T B + lambda I)^-1 B^T with lambda = ridge * the largest eigenvalue of B^T B; ridge 0 is the
    pseudo-inverse of a B of full column rank."""
    gram = B.T @ B  # (d_a, d_a)
    lam = ridge * np.linalg.eigvalsh(gram)[-1]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), B.T)

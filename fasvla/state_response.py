"""How the robot's state answers its actions, fitted from demonstrations (DESIGN.md section 3b): `S_{k+1} - S_k ~ B a_k`
in the model's normalised units, and `G`, the ridge pseudo-inverse of `B`, which maps a displacement of the state to
the action increments that remove it.

For LIBERO's delta end-effector actions `B` is close to diagonal on position and rotation: an action of 1 moves the
end effector by about 5 mm in a step. `G` is what feedback-consistent stabilisation asks the action stream to apply to
a displaced state, and what the corrective-gain diagnostic projects the model's answer on.

    fit = fit_state_response(states, actions, episode_starts)     # normalised (N, d_s), (N, d_a)
    fit.B  # (d_s, d_a);  fit.G  # (d_a, d_s);  fit.r2  # (d_s,) share of each state increment that B explains
"""

from dataclasses import dataclass

import numpy as np

DEFAULT_RIDGE = 1e-3  # relative to the mean eigenvalue of B^T B: keeps G finite along directions B barely moves


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


def fit_state_response(states: np.ndarray, actions: np.ndarray, episode_starts,
                       ridge: float = DEFAULT_RIDGE) -> StateResponse:
    """Least squares `dS = a B^T` over a dataset's transitions, and G its ridge pseudo-inverse (float64)."""
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge!r}")
    delta, action = (np.asarray(x, dtype=np.float64) for x in transitions(states, actions, episode_starts))
    if len(delta) <= action.shape[1]:
        raise ValueError(f"{len(delta)} transitions cannot determine a {delta.shape[1]} x {action.shape[1]} response")
    B = np.linalg.lstsq(action, delta, rcond=None)[0].T  # (d_s, d_a)
    residual = delta - action @ B.T
    variance = delta.var(axis=0)
    r2 = 1.0 - residual.var(axis=0) / np.where(variance > 0, variance, 1.0)
    return StateResponse(B, ridge_pseudo_inverse(B, ridge), r2, len(delta))


def ridge_pseudo_inverse(B: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """(d_a, d_s): (B^T B + lambda I)^-1 B^T with lambda = ridge * trace(B^T B) / d_a; ridge 0 is the pseudo-inverse
    of a B of full column rank."""
    gram = B.T @ B  # (d_a, d_a)
    lam = ridge * np.trace(gram) / gram.shape[0]
    return np.linalg.solve(gram + lam * np.eye(gram.shape[0]), B.T)

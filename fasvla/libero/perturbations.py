"""Perturbations for robustness tests: noisy actions, delayed actions, an external push of the end effector.

They act between the policy and the environment, so that the same policy can be compared with and without state
feedback under the same disturbance.
"""

import json
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from fasvla.libero.env import WAIT_ACTION


@dataclass(frozen=True)
class Perturbation:
    """action_noise: std of Gaussian noise added to the 6 end-effector values of every executed action.
    action_delay: executed actions lag the policy's by this many steps (the first ones hold still, gripper open).
    push_step / push_force / push_steps: from policy step `push_step` on, for `push_steps` environment steps, a
    force (newtons, world frame) pushes the end effector."""

    action_noise: float = 0.0
    action_delay: int = 0
    push_step: int | None = None
    push_force: tuple[float, float, float] = (0.0, 0.0, 0.0)
    push_steps: int = 1

    def __post_init__(self):
        if not self.action_noise >= 0:
            raise ValueError(f"action_noise must be >= 0, got {self.action_noise}")
        if isinstance(self.action_delay, bool) or not isinstance(self.action_delay, int) or self.action_delay < 0:
            raise ValueError(f"action_delay must be an integer >= 0, got {self.action_delay!r}")
        if self.push_step is not None and self.push_step < 0:
            raise ValueError(f"push_step must be >= 0, got {self.push_step}")
        if len(self.push_force) != 3 or self.push_steps < 1:
            raise ValueError(f"push_force must be 3 numbers and push_steps >= 1, got {self.push_force}, "
                             f"{self.push_steps}")

    @property
    def is_nominal(self) -> bool:
        return self.action_noise == 0 and self.action_delay == 0 and self.push_step is None

    def describe(self) -> str:
        return "nominal" if self.is_nominal else json.dumps(asdict(self), sort_keys=True)


class PerturbedActions:
    """The actions that reach the environment: delayed by a FIFO, then noised (seeded, per episode)."""

    def __init__(self, perturbation: Perturbation, seed: int):
        self.perturbation = perturbation
        self.rng = np.random.default_rng(seed)
        self.pending = deque([WAIT_ACTION.copy() for _ in range(perturbation.action_delay)])

    def __call__(self, action: np.ndarray) -> np.ndarray:
        self.pending.append(np.asarray(action, dtype=np.float64).copy())
        executed = self.pending.popleft()
        if self.perturbation.action_noise:
            executed[:6] += self.rng.normal(0.0, self.perturbation.action_noise, 6)
        return executed

    def force_at(self, step: int) -> np.ndarray:
        """The external force (3,) on the end effector during policy step `step`."""
        start = self.perturbation.push_step
        active = start is not None and start <= step < start + self.perturbation.push_steps
        return np.asarray(self.perturbation.push_force if active else (0.0, 0.0, 0.0), dtype=np.float64)

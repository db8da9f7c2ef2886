"""Recovery demonstrations (DART, DESIGN.md section 3b): the expert's actions are executed perturbed, while the
dataset keeps the states that happened and the expert's own corrective action as the label.

The expert is closed loop on privileged state, so what it commands after a perturbation is the correction. In the
data the accumulated action then disagrees with the state exactly as it does under perturbation at test time, and
the labels show what to do about it. Three perturbations, each with its own magnitude option, drawn per episode
from the episode's own random stream:
- action noise: Gaussian on the 6 end-effector values of every executed action, its std uniform in [0, noise];
- pushes: at each step, with probability `push_probability`, a push starts: a horizontal force of
  [0.5, 1] x `push_force` newtons in a uniform direction for `push_steps` steps;
- actuation delay: every executed action lags its command by d steps, d uniform in {0..delay} (the first d
  executed actions hold still with the gripper open).
"""

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from fasvla.libero.env import WAIT_ACTION

END_EFFECTOR_DIMS = 6


@dataclass(frozen=True)
class Dart:
    noise: float = 0.0  # max std of the executed actions' noise
    push_probability: float = 0.0  # chance per step that a push starts
    push_force: float = 0.0  # newtons, the largest push
    push_steps: int = 3
    delay: int = 0  # the longest actuation delay, steps

    def __post_init__(self):
        for name in ("noise", "push_probability", "push_force"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.push_probability > 1:
            raise ValueError(f"push_probability must be in [0, 1], got {self.push_probability!r}")
        if self.push_steps < 1 or self.delay < 0:
            raise ValueError(f"push_steps must be >= 1 and delay >= 0, got {self.push_steps}, {self.delay}")

    @property
    def active(self) -> bool:
        return self.noise > 0 or (self.push_probability > 0 and self.push_force > 0) or self.delay > 0

    def episode(self, rng: np.random.Generator) -> "DartEpisode":
        """The perturbations of one episode, drawn from `rng` (the episode's own stream)."""
        noise = float(rng.uniform(0.0, self.noise)) if self.noise else 0.0
        delay = int(rng.integers(0, self.delay + 1)) if self.delay else 0
        return DartEpisode(self, noise, delay, rng)


@dataclass
class DartEpisode:
    """Between the expert and the simulator: `executed(action)` is what the simulator gets for a command,
    `force_at(step)` the push during that step; `injected` describes what was done (per-episode metadata)."""

    options: Dart
    noise: float
    delay: int
    rng: np.random.Generator
    pushes: list[dict] = field(default_factory=list)  # {"step", "steps", "force": [fx, fy, fz]}

    def __post_init__(self):
        self._pending = deque([WAIT_ACTION.copy() for _ in range(self.delay)])
        self._push_until, self._force = -1, np.zeros(3)

    def executed(self, action: np.ndarray) -> np.ndarray:
        self._pending.append(np.asarray(action, dtype=np.float64).copy())
        executed = self._pending.popleft()
        if self.noise:
            executed[:END_EFFECTOR_DIMS] += self.rng.normal(0.0, self.noise, END_EFFECTOR_DIMS)
        return np.clip(executed, -1.0, 1.0)

    def force_at(self, step: int) -> np.ndarray:
        """The push force (3,) during `step`; steps are asked for in order."""
        options = self.options
        if step > self._push_until and options.push_force and self.rng.random() < options.push_probability:
            magnitude = options.push_force * self.rng.uniform(0.5, 1.0)
            angle = self.rng.uniform(0.0, 2 * np.pi)
            self._force = magnitude * np.array([np.cos(angle), np.sin(angle), 0.0])
            self._push_until = step + options.push_steps - 1
            self.pushes.append({"step": step, "steps": options.push_steps, "force": self._force.round(3).tolist()})
        return self._force.copy() if step <= self._push_until else np.zeros(3)

    @property
    def injected(self) -> dict:
        return {"dart_noise": self.noise, "dart_delay": self.delay, "dart_pushes": len(self.pushes),
                "dart_push_schedule": [[p["step"], *p["force"]] for p in self.pushes]}

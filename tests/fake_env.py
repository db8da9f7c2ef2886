"""A stand-in for `LiberoEnv` with trivial, exact physics, and the trace of a lockstep episode on it.

The state is an exact function of the executed actions (state[:7] += 0.01 * action) plus, unless `tick_in_state`
is off, the tick in state[7], so that a state tells when it was measured; the images carry the tick in their
brightness.
"""

import numpy as np

from fasvla.libero.env import CAMERAS, Observation
from fasvla.libero.episode import EpisodeJob, EpisodeRun
from fasvla.libero.perturbations import Perturbation

GAIN = 0.01


class FakeEnv:
    """LiberoEnv's interface; succeeds at tick `success_at`."""

    suite, task_id, task_language, gripper_close_sign = "libero_object", 0, "pick up the cube", 1.0
    init_states = [None]

    def __init__(self, max_steps=30, success_at=None, tick_in_state=True):
        self.max_steps, self.success_at, self.cameras = max_steps, success_at, list(CAMERAS)
        self.tick_in_state = tick_in_state
        self.received, self.forces = [], []

    def reset(self, init_state_id, placement_seed=None):
        self.tick, self.state = 0, np.zeros(8, np.float32)
        return self._observation()

    def step(self, action, push_force=None, render=False):
        self.received.append(np.array(action))
        self.forces.append(push_force)
        self.state[:7] += GAIN * np.asarray(action, np.float32)
        self.tick += 1
        self.state[7] = self.tick if self.tick_in_state else 0.0
        return self._observation(), self.tick == self.success_at

    def _observation(self):
        images = [np.full((32, 32, 3), 10 * self.tick % 255, np.uint8) for _ in self.cameras]
        return Observation(self.state.copy(), {}, images)


def lockstep_trace(controller, steps: int = 30, perturbation: Perturbation | None = None,
                   env: FakeEnv | None = None) -> dict[str, np.ndarray]:
    """Every step of a lockstep episode of `controller` on a `FakeEnv`: what it sent, predicted and conditioned
    on, (steps, dim) each."""
    env = env or FakeEnv(max_steps=steps)
    run = EpisodeRun(env, controller, EpisodeJob("libero_object", 0, 0), perturbation or Perturbation(), seed=3,
                     record=False)
    outputs = [(sent, output.predicted_state, output.state_input) for _, output, sent in run]
    return {name: np.stack(column) for name, column in zip(("sent", "predicted_state", "state_input"),
                                                           zip(*outputs))}

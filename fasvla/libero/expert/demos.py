"""Demonstrations: plan each episode on the simulator without rendering, render the frames of the kept ones.

The expert plans in a `LiberoEnv` whose cameras render on demand (fasvla/libero/frames.py): the physics runs alone,
while the simulator data of every observation is held (about 1 MB each). A plan that succeeds is kept, and only then
are its frames rendered, once each, from the held data: exactly the images that cameras rendering at every step
would have given, without replaying the physics or rendering a frame that is not kept (the reset's, the one after
the last action, those of failed plans).

The reset follows the evaluation protocol (DESIGN.md section 7): hard reset, the fixed init state, 10 wait steps;
the episode's frames start after them, capped at the suite's step limit. LIBERO's hard reset re-places the fixtures
(cabinet, stove, wine rack: by up to about 1 cm) with numpy's global random generator, which the init state does not
hold: each plan draws a placement seed and keeps it, so an episode can be rebuilt exactly. Frame t holds the
observation the expert acted on and the action it sent (LIBERO's convention: gripper -1 open, +1 close).
"""

import functools
import time
from dataclasses import dataclass

import numpy as np

from fasvla.libero.env import CAMERAS, LiberoEnv, Observation
from fasvla.libero.expert.dart import DartEpisode
from fasvla.libero.expert.diversity import Style
from fasvla.libero.expert.expert import solve
from fasvla.libero.expert.motions import Arm, EpisodeEnded
from fasvla.libero.expert.scene import Scene
from fasvla.libero.recording import rollout_features


def demo_features(resolution: int, cameras=tuple(CAMERAS)) -> dict:
    """The features of LeRobot's LIBERO datasets: two videos, the 8-dim state, the 7-dim action (the recordings'
    features without the policy's columns)."""
    return {key: feature for key, feature in rollout_features(resolution, list(cameras)).items()
            if not key.startswith("policy.")}


class DemoEnv:
    """One LIBERO task for the expert: `reset` and `step` drive the physics without rendering, `observations` holds
    the episode's observations (0: after the reset), whose images can be rendered until the next reset."""

    def __init__(self, suite: str, task_id: int, resolution: int = 256):
        self.env = LiberoEnv(suite, task_id, resolution=resolution, keep_frames=None)
        self.init_states, self.cameras = self.env.init_states, self.env.cameras
        self.observations: list[Observation] = []

    def reset(self, init_state_id: int | None, placement_seed: int) -> Scene:
        self.observations = [self.env.reset(init_state_id, placement_seed)]
        return Scene(self.env.env.env)

    def step(self, action: np.ndarray, push_force: np.ndarray | None = None) -> bool:
        observation, success = self.env.step(action, push_force=push_force)
        self.observations.append(observation)
        return success

    def close(self) -> None:
        self.env.close()


@dataclass
class Plan:
    init_state_id: int | None  # None: a random reset
    placement_seed: int  # numpy's global seed before the hard reset: the fixtures' placement
    actions: np.ndarray  # (T, 7) float64, the expert's commands (the labels)
    success_step: int | None  # actions after which the task first succeeded
    seconds: float
    injected: dict | None = None  # recovery demonstrations: the perturbations executed (DartEpisode.injected)


def plan_episode(env: DemoEnv, init_state_id: int | None, style: Style, rng: np.random.Generator, max_steps: int,
                 stop_at_success: bool = True, recovery: DartEpisode | None = None) -> Plan:
    """Run the expert once from `init_state_id` (None: a random reset, seeded by the plan's placement seed); with
    `stop_at_success` the plan ends at the first success. With `recovery` its commands are executed perturbed
    (fasvla/libero/expert/dart.py) while the plan keeps them as the labels."""
    started = time.perf_counter()
    placement_seed = int(rng.integers(2**31))
    step = env.step if recovery is None else functools.partial(perturbed_step, env, recovery)
    arm = Arm(step, env.reset(init_state_id, placement_seed), style, rng, max_steps, stop_at_success)
    try:
        solve(arm)
    except EpisodeEnded:
        pass
    actions = np.array(arm.actions).reshape(-1, 7)
    return Plan(init_state_id, placement_seed, actions, arm.success_step, time.perf_counter() - started,
                None if recovery is None else recovery.injected)


def perturbed_step(env: DemoEnv, recovery: DartEpisode, action: np.ndarray) -> bool:
    """The simulator executes the perturbed command, pushed during the step if a push is on."""
    step = len(env.observations) - 1  # actions executed so far
    return env.step(recovery.executed(action), push_force=recovery.force_at(step))


@dataclass
class Recording:
    frames: dict[str, np.ndarray]  # feature -> (T, ...): cameras (T, H, W, 3) uint8, state (T, 8), action (T, 7)
    seconds: float  # rendering and stacking


def render_plan(env: DemoEnv, plan: Plan) -> Recording:
    """The frames of the plan just run in `env`: each action with the observation it was taken on, images rendered
    now from the simulator data held since the plan's reset."""
    if len(env.observations) != len(plan.actions) + 1:
        raise ValueError(f"env holds {len(env.observations)} observations, not those of this plan's "
                         f"{len(plan.actions)} actions: render a plan right after planning it")
    started = time.perf_counter()
    observed = env.observations[:-1]  # the last one follows the last action: no frame of the episode
    frames = {camera: np.stack([o.images[i] for o in observed]) for i, camera in enumerate(env.cameras)}
    frames["observation.state"] = np.stack([o.state for o in observed]).astype(np.float32)
    frames["action"] = plan.actions.astype(np.float32)
    return Recording(frames, time.perf_counter() - started)

"""Demonstrations: plan each episode on a simulator without cameras, replay the successful ones with cameras.

Planning runs LIBERO's `ControlEnv` with no renderer and no camera observations (several times faster per step
than `OffScreenRenderEnv`). MuJoCo is deterministic: the planned actions, replayed from the same init state on the
same model in the rendering `LiberoEnv`, reproduce the planned trajectory bit for bit, so only the kept
demonstrations pay for rendering. The same model needs care: LIBERO's hard reset rebuilds it and re-places the
fixtures (cabinet, stove, wine rack: by up to about 1 cm) with numpy's global random generator, and the init state
does not hold their placement. Both resets therefore take the plan's placement seed (`reset_to_init_state`). The
replay still checks: a demonstration is kept only if it succeeds at the
planned step.

Both environments follow the evaluation protocol (DESIGN.md section 7): hard reset, the fixed init state, 10 wait
steps; the episode's frames start after them, capped at the suite's step limit. Frame t holds the observation the
expert acted on and the action it sent (LIBERO's convention: gripper -1 open, +1 close).
"""

import time
from dataclasses import dataclass

import numpy as np

from fasvla.libero.env import CAMERAS, LiberoEnv, libero_task, reset_to_init_state, to_env_action
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


class PlanningEnv:
    """One LIBERO task without renderer or cameras, reset as `LiberoEnv` resets (same init states, same waits)."""

    def __init__(self, suite: str, task_id: int):
        task = libero_task(suite, task_id)
        from libero.libero.envs.env_wrapper import ControlEnv

        self.init_states = task.init_states
        self.env = ControlEnv(bddl_file_name=str(task.bddl_file), has_offscreen_renderer=False, use_camera_obs=False)

    def reset(self, init_state_id: int, placement_seed: int) -> Scene:
        reset_to_init_state(self.env, self.init_states[init_state_id], placement_seed)
        return Scene(self.env.env)

    def step(self, action: np.ndarray) -> bool:
        _, _, done, _ = self.env.step(to_env_action(action))
        return bool(done)

    def close(self) -> None:
        self.env.close()


@dataclass
class Plan:
    init_state_id: int
    placement_seed: int  # numpy's global seed before the hard reset: the fixtures' placement
    actions: np.ndarray  # (T, 7) float64, as sent
    success_step: int | None  # actions after which the task first succeeded
    seconds: float


def plan_episode(env: PlanningEnv, init_state_id: int, style: Style, rng: np.random.Generator, max_steps: int,
                 stop_at_success: bool = True) -> Plan:
    """Run the expert once from `init_state_id`; with `stop_at_success` the plan ends at the first success."""
    started = time.perf_counter()
    placement_seed = int(rng.integers(2**31))
    arm = Arm(env.step, env.reset(init_state_id, placement_seed), style, rng, max_steps, stop_at_success)
    try:
        solve(arm)
    except EpisodeEnded:
        pass
    actions = np.array(arm.actions).reshape(-1, 7)
    return Plan(init_state_id, placement_seed, actions, arm.success_step, time.perf_counter() - started)


@dataclass
class Recording:
    frames: dict[str, np.ndarray]  # feature -> (T, ...): cameras (T, H, W, 3) uint8, state (T, 8), action (T, 7)
    success_step: int | None
    seconds: float


def record_episode(env: LiberoEnv, plan: Plan) -> Recording:
    """Replay a plan's actions on its model and init state with cameras, recording what each action was taken on."""
    started = time.perf_counter()
    observation = env.reset(plan.init_state_id, plan.placement_seed)
    frames = {key: [] for key in [*env.cameras, "observation.state", "action"]}
    success_step = None
    for t, action in enumerate(plan.actions):
        for camera, image in zip(env.cameras, observation.images):
            frames[camera].append(image)
        frames["observation.state"].append(observation.state)
        frames["action"].append(action)
        observation, success = env.step(action)
        if success and success_step is None:
            success_step = t + 1
    stacked = {key: np.stack(values).astype(np.uint8 if key in env.cameras else np.float32)
               for key, values in frames.items()}
    return Recording(stacked, success_step, time.perf_counter() - started)

"""LIBERO (MuJoCo) seen through the model's conventions (DESIGN.md section 7).

The protocol used by openpi, OpenVLA and LeRobot: reset to one of the task's fixed init states, send 10 wait steps of
`[0, 0, 0, 0, 0, 0, -1]`, then act for at most the suite's step limit; success ends the episode. Observations:
both camera images rotated by 180 degrees (the LeRobot LIBERO datasets store them upright) and the 8-dim state
`[eef position (3), axis-angle of the eef quaternion (3), gripper finger positions (2)]`. Actions: 6 end-effector
deltas and a gripper command whose sign LIBERO reads as -1 open / +1 close.

The pure conversions are module functions (tested without a simulator); `LiberoEnv` wraps one task's environment.
"""

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SUITE_MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
WAIT_STEPS = 10
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float64)
# model camera -> LIBERO observation key (LeRobot's LIBERO datasets: `image` is the agent view, `image2` the wrist)
CAMERAS = {"observation.images.image": "agentview_image", "observation.images.image2": "robot0_eye_in_hand_image"}
CONTROL_FREQUENCY = 20  # Hz, LIBERO's OSC controller
PUSHED_BODY = "gripper0_eef"  # where an external push acts
GRIPPER_ACTION_INDEX = 6


def quat_to_axis_angle(quat_xyzw: np.ndarray) -> np.ndarray:
    """Rotation vector (axis times angle in [0, 2 pi)) of a unit quaternion in robosuite's (x, y, z, w) order.

    Written as robosuite's `quat2axisangle`, which produced the LeRobot LIBERO datasets' states: the angle is
    2 acos(w), so q and -q give different (equivalent) vectors, as there.
    """
    w = min(1.0, max(-1.0, float(quat_xyzw[3])))
    sin_half = math.sqrt(1.0 - w * w)
    if math.isclose(sin_half, 0.0):
        return np.zeros(3)
    return np.asarray(quat_xyzw[:3], dtype=np.float64) * 2.0 * math.acos(w) / sin_half


def observation_state(raw: dict) -> np.ndarray:
    """(8,) float32: eef position, axis-angle of the eef quaternion, the two gripper finger positions."""
    return np.concatenate([raw["robot0_eef_pos"], quat_to_axis_angle(raw["robot0_eef_quat"]),
                           raw["robot0_gripper_qpos"]]).astype(np.float32)


def upright(image: np.ndarray) -> np.ndarray:
    """A camera image as LIBERO renders it (upside down) -> upright: rotated by 180 degrees."""
    return np.ascontiguousarray(image[::-1, ::-1])


def to_env_action(action: np.ndarray, gripper_close_sign: float = 1.0) -> np.ndarray:
    """A model action (7,) -> LIBERO's: clipped to [-1, 1], the gripper flipped when the training data closed the
    gripper with negative values (`gripper_close_sign` = -1; see `gripper_close_sign_of`)."""
    if gripper_close_sign not in (1.0, -1.0):
        raise ValueError(f"gripper_close_sign must be 1 or -1, got {gripper_close_sign!r}")
    env_action = np.clip(np.asarray(action, dtype=np.float64).reshape(-1), -1.0, 1.0)
    if env_action.shape != (7,):
        raise ValueError(f"a LIBERO action has 7 values, got shape {np.shape(action)}")
    env_action[GRIPPER_ACTION_INDEX] *= gripper_close_sign
    return env_action


def gripper_close_sign_of(states: np.ndarray, actions: np.ndarray, episode_starts, lag: int = 5) -> float:
    """Which sign of the gripper action closes the gripper, read off demonstrations rather than assumed.

    The finger opening is state[6] - state[7]. `lag` steps after a closing command the gripper is more closed than
    after an opening one, so compare the mean opening `lag` steps after positive and after negative commands (within
    each episode). Returns +1 (LIBERO's convention) when positive commands leave the gripper more closed, else -1.
    states: (N, 8), actions: (N, 7), episode_starts: the row of each episode's first frame.
    """
    opening = states[:, 6] - states[:, 7]
    later = np.roll(opening, -lag)  # opening(t + lag)
    valid = np.ones(len(states), dtype=bool)
    for start in list(episode_starts)[1:] + [len(states)]:  # t + lag must stay in t's episode
        valid[max(0, start - lag):start] = False
    command = actions[:, GRIPPER_ACTION_INDEX]
    after_positive, after_negative = later[valid & (command > 0)], later[valid & (command < 0)]
    if not len(after_positive) or not len(after_negative):
        raise ValueError("the gripper actions never take both signs: cannot tell which sign closes the gripper")
    difference = after_positive.mean() - after_negative.mean()
    if abs(difference) < 0.1 * opening.std():
        raise ValueError(f"the gripper actions do not explain the finger opening (difference {difference:.4f}): "
                         "cannot tell which sign closes the gripper")
    return 1.0 if difference < 0 else -1.0


def prepare_rendering() -> None:
    """MuJoCo renders off-screen with EGL, LIBERO finds its config: defaults set before LIBERO is imported (and only
    then, never at import time of this module). The config is the Python environment's own (written by
    scripts/setup_libero.sh), not ~/.libero, which another environment may have left pointing at its files."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    os.environ.setdefault("LIBERO_CONFIG_PATH", str(Path(sys.prefix) / "etc" / "libero"))
    config = Path(os.environ["LIBERO_CONFIG_PATH"]) / "config.yaml"
    if not config.is_file():  # LIBERO would ask for one on the terminal
        raise FileNotFoundError(f"LIBERO's config {config} is missing: run scripts/setup_libero.sh {sys.executable} "
                                "(or set LIBERO_CONFIG_PATH to the folder of this installation's config)")


@dataclass(frozen=True)
class LiberoTask:
    language: str
    bddl_file: Path
    init_states: np.ndarray  # the task's fixed init states (50 in every suite)


def libero_task(suite: str, task_id: int) -> LiberoTask:
    """A LIBERO task's language, BDDL file and init states (LIBERO imported here, after `prepare_rendering`)."""
    if suite not in SUITE_MAX_STEPS:
        raise ValueError(f"suite must be one of {tuple(SUITE_MAX_STEPS)}, got {suite!r}")
    prepare_rendering()
    from libero.libero import benchmark, get_libero_path

    benchmark_suite = benchmark.get_benchmark_dict()[suite]()
    if not 0 <= task_id < benchmark_suite.n_tasks:
        raise ValueError(f"task_id must be in [0, {benchmark_suite.n_tasks}) for {suite}, got {task_id}")
    task = benchmark_suite.get_task(task_id)
    bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    return LiberoTask(task.language, bddl, benchmark_suite.get_task_init_states(task_id))


def reset_to_init_state(env, init_state, placement_seed: int | None = None) -> dict:
    """The protocol's reset of a LIBERO environment: a hard reset (it also restarts the horizon, which
    `set_init_state` does not), the fixed init state, then the wait steps while the objects settle and the gripper
    opens. Returns LIBERO's last observation dict. `init_state=None` keeps the placement the hard reset drew: a
    random reset, a new draw from the distribution the fixed init states were drawn from (DESIGN.md section 9).

    The hard reset rebuilds the model and places the fixtures (cabinet, stove, rack: by up to about 1 cm) and, for a
    random reset, the objects with numpy's global generator, which the init state does not pin down.
    `placement_seed` seeds it first (LIBERO's `env.seed`), so that an episode's scene depends on its own seed, not on
    how many resets came before."""
    if placement_seed is not None:
        env.seed(placement_seed)
    env.reset()
    if init_state is not None:
        env.set_init_state(init_state)
    raw = None
    for _ in range(WAIT_STEPS):
        raw, _, _, _ = env.step(WAIT_ACTION)
    return raw


class Observation:
    """What the robot measured at one step: `state` (8,) float32, LIBERO's unconverted `raw` dict, and `images` (per
    model camera, (H, W, 3) uint8, upright), rendered when first read (by `renderer()`) and kept."""

    def __init__(self, state: np.ndarray, raw: dict, images: list[np.ndarray] | None = None, renderer=None):
        if images is None and renderer is None:
            raise ValueError("an Observation needs its images or a renderer for them")
        self.state, self.raw, self._images, self._renderer = state, raw, images, renderer

    @property
    def images(self) -> list[np.ndarray]:
        return self.render()

    def render(self) -> list[np.ndarray]:
        """The images, rendered now unless they already were."""
        if self._images is None:
            self._images = self._renderer()
        return self._images

    @property
    def rendered(self) -> bool:
        """Whether the images exist yet (someone read them)."""
        return self._images is not None


class LiberoEnv:
    """One LIBERO task at one resolution. `reset(init_state_id)` runs the protocol's wait steps; `step(action)` takes
    a model action and returns the next observation and whether the task succeeded.

    The cameras render on demand (fasvla/libero/frames.py): an observation's images are rendered when first read,
    which must happen while the simulator still holds its frame (the `keep_frames` newest observations; None: every
    one since the last reset), or at once with `step(..., render=True)`.
    """

    def __init__(self, suite: str, task_id: int, resolution: int = 256, seed: int = 7,
                 cameras=tuple(CAMERAS), gripper_close_sign: float = 1.0, keep_frames: int | None = 2):
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise ValueError(f"cameras {unknown} are not LIBERO cameras; known: {list(CAMERAS)}")
        task = libero_task(suite, task_id)
        from libero.libero.envs import OffScreenRenderEnv

        from fasvla.libero.frames import CameraFrames

        self.suite, self.task_id, self.task_language = suite, task_id, task.language
        self.max_steps = SUITE_MAX_STEPS[suite]
        self.cameras, self.gripper_close_sign = list(cameras), gripper_close_sign
        self.init_states = task.init_states
        self.env = OffScreenRenderEnv(bddl_file_name=str(task.bddl_file), camera_heights=resolution,
                                      camera_widths=resolution)
        self.env.seed(seed)
        libero_cameras = [CAMERAS[camera].removesuffix("_image") for camera in self.cameras]
        self.frames = CameraFrames(self.env.env, libero_cameras, resolution, keep_frames)

    def reset(self, init_state_id: int | None, placement_seed: int | None = None) -> Observation:
        """The protocol's reset to fixed init state `init_state_id`, or (None) a random reset seeded by
        `placement_seed`."""
        if init_state_id is None and placement_seed is None:
            raise ValueError("a random reset (init_state_id None) needs a placement_seed to be reproducible")
        if init_state_id is not None and not 0 <= init_state_id < len(self.init_states):
            raise ValueError(f"init_state_id must be None or in [0, {len(self.init_states)}), got {init_state_id}")
        self.frames.drop()
        init_state = None if init_state_id is None else self.init_states[init_state_id]
        return self.observation(reset_to_init_state(self.env, init_state, placement_seed))

    def step(self, action: np.ndarray, push_force: np.ndarray | None = None,
             render: bool = False) -> tuple[Observation, bool]:
        """Execute a model action; `push_force` (3,) newtons, world frame, pushes the end effector meanwhile.
        `render`: render the cameras now rather than when the images are first read."""
        self._set_push(push_force)
        raw, _, done, _ = self.env.step(to_env_action(action, self.gripper_close_sign))
        observation = self.observation(raw)
        if render:
            observation.render()
        return observation, bool(done)

    def _set_push(self, force: np.ndarray | None) -> None:
        sim = self.env.env.sim
        body = sim.model.body_name2id(PUSHED_BODY)
        sim.data.xfrc_applied[body, :3] = 0.0 if force is None else force

    def observation(self, raw: dict) -> Observation:
        """The observation of the newest frame, its images rendered from it when read."""
        frame = self.frames.latest
        return Observation(observation_state(raw), raw,
                           renderer=lambda: [upright(image) for image in self.frames.render(frame)])

    def close(self) -> None:
        self.frames.close()
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

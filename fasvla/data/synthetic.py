"""A small synthetic robot dataset written in the real LeRobot on-disk layout (format v2.1 or v3.0).

Used by the tests, which read it back across file boundaries, and by the README's offline training example. Each
episode is a planar reaching task that a small policy can learn, with a top camera and a wrist camera:

    top view, observation.images.image      wrist view, observation.images.image2 (the scene zoomed 2x on the agent)
    +--------------------------------+      +--------------------+
    |    (R)                         |      |                    |
    |               o          (B)   |      |      .  O  .       |   R, B: red and blue target disks
    |                                |      |                    |   o / O: the agent; . : its gripper fingers
    +--------------------------------+      +--------------------+

The task string names the target. A proportional controller with a speed limit, plus seeded noise, moves the agent
towards it and closes the gripper once the agent is close; z and the orientation drift with small sinusoidal
deltas. The state integrates the actions exactly (in float32): state[t+1][:6] = state[t][:6] + STEP_SCALE *
action[t][:6].

World frame: x to the right, y up, the table is the square [-1, 1]^2 and the top view covers it exactly. Shapes: T
frames per episode, S = image_size, images are (T, S, S, 3) uint8 RGB.

The layout, schemas and statistics are those of LeRobot's recorders (`fasvla/data/writer.py`).

    python -m fasvla.data.synthetic --root /tmp/synthetic --version v3.0 --storage video --episodes_per_file 2
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fasvla.data.writer import VERSIONS, EpisodeRecord, write_lerobot_dataset

STORAGES = ("video", "image")
CODECS = ("libx264", "libsvtav1")
ROBOT_TYPE = "synthetic"

# The task index is the index of the target it names (0: red, 1: blue); episodes alternate between them.
TASKS = ("move to the red target", "move to the blue target")
CAMERA_KEYS = ("observation.images.image", "observation.images.image2")  # top view, wrist view (LIBERO's keys)
STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper_left", "gripper_right"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]

# Physics, in world units per frame. Actions live in [-1, 1] like LIBERO's end-effector deltas.
STEP_SCALE = 0.1  # state change per frame for an action of 1: state[t+1][:6] = state[t][:6] + STEP_SCALE * action
GAIN = 3.0  # proportional gain of the reaching controller, action units per world unit of position error
MAX_SPEED = 1.0  # planar speed limit in action units, so at most STEP_SCALE world units per frame
ACTION_NOISE = 0.05  # std of the seeded noise added to the planar action
DRIFT_AMPLITUDE = 0.2  # amplitude of the sinusoidal z / roll / pitch / yaw actions
DRIFT_PERIOD = 20  # frames per period of the drift
INITIAL_Z = 0.5
INITIAL_ORIENTATION_RANGE = 0.1  # roll, pitch, yaw start uniformly in [-range, range]
GRASP_RADIUS = 0.1  # the gripper closes (action +1) once the agent is this close to its target, and stays closed
GRIPPER_OPEN_WIDTH = 0.04  # finger position when open: gripper_left = +width, gripper_right = -width
FINGER_RATE = 0.5  # fraction of the remaining distance to open/closed the fingers cover each frame
TARGET_RANGE = 0.6  # target centres are uniform in [-range, range]^2
START_RANGE = 0.8  # the agent starts uniformly in [-range, range]^2
MIN_TARGET_SEPARATION = 0.5  # so that the two targets never overlap
MIN_START_DISTANCE = 0.4  # so that every episode starts with some reaching to do

# Rendering, sizes in world units so that the zoomed wrist view shows everything bigger. Soft edges, a smooth table
# texture and moderate contrasts keep the lossy codecs' error small (AV1 at 64 px: below ~6 / 255 per frame).
TARGET_COLORS = ((200, 70, 60), (60, 100, 200))  # red, blue: indexed like TASKS
TARGET_RADIUS = 0.12
AGENT_COLOR = (225, 225, 225)
AGENT_RADIUS = 0.06
FINGER_COLOR = (150, 150, 165)
FINGER_RADIUS = 0.03
FINGER_SPREAD = 2.0  # world units of finger displacement per unit of finger position, to make the opening visible
EDGE_WIDTH = 2.0  # pixels over which a disk's edge fades into the background (anti-aliasing)
WRIST_HALF_WIDTH = 0.5  # the wrist view covers [-0.5, 0.5]^2 around the agent: a 2x zoom
TABLE_COLOR = (120, 110, 95)
TABLE_TILE = 0.25  # side of the squares of the table's soft checkerboard, which shows the wrist view's motion
TABLE_TILE_CONTRAST = 8
FLOOR_COLOR = (75, 70, 65)  # beyond the table's edge, seen only by the wrist view

MIN_IMAGE_SIZE = 16


# --- Physics -----------------------------------------------------------------------------------------------------


def _sample_scene(rng: np.random.Generator, task_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Target centres (2, 2), rows [red, blue], and the agent's start (2,), in world units."""
    while True:
        targets = rng.uniform(-TARGET_RANGE, TARGET_RANGE, size=(2, 2))
        if np.linalg.norm(targets[0] - targets[1]) >= MIN_TARGET_SEPARATION:
            break
    while True:
        start = rng.uniform(-START_RANGE, START_RANGE, size=2)
        if np.linalg.norm(start - targets[task_index]) >= MIN_START_DISTANCE:
            return targets, start


def _initial_state(rng: np.random.Generator, start: np.ndarray) -> np.ndarray:
    """State (8,) float32 at frame 0: at `start`, INITIAL_Z high, slightly rotated, gripper open."""
    orientation = rng.uniform(-INITIAL_ORIENTATION_RANGE, INITIAL_ORIENTATION_RANGE, size=3)
    state = [*start, INITIAL_Z, *orientation, GRIPPER_OPEN_WIDTH, -GRIPPER_OPEN_WIDTH]
    return np.array(state, dtype=np.float32)


def _controller_action(state: np.ndarray, target: np.ndarray, t: int, phases: np.ndarray, grasped: bool,
                       noise: np.ndarray) -> np.ndarray:
    """Action (7,) float32 in [-1, 1]: a speed-limited proportional step towards `target` plus `noise` (2,), the
    sinusoidal drift of z / roll / pitch / yaw with per-episode `phases` (4,), and the gripper (-1 open, +1 close)."""
    planar = GAIN * (target - state[:2])
    speed = np.linalg.norm(planar)
    if speed > MAX_SPEED:
        planar *= MAX_SPEED / speed
    drift = DRIFT_AMPLITUDE * np.sin(2 * np.pi * t / DRIFT_PERIOD + phases)
    gripper = 1.0 if grasped else -1.0
    action = np.concatenate([planar + noise, drift, [gripper]])
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def _step(state: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Next state (8,) float32: the pose integrates the action exactly (float32 arithmetic, so that tests can check
    equality), the fingers move FINGER_RATE of the way towards open (action -1) or closed (action +1)."""
    next_state = state.copy()
    next_state[:6] = state[:6] + action[:6] * np.float32(STEP_SCALE)
    goal = 0.0 if action[6] > 0 else GRIPPER_OPEN_WIDTH
    width = state[6] + np.float32(FINGER_RATE) * (np.float32(goal) - state[6])
    next_state[6], next_state[7] = width, -width
    return next_state


def _rollout(rng: np.random.Generator, length: int, target: np.ndarray,
             start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """States (T, 8) and actions (T, 7), float32: state[t] is observed before action[t] is applied."""
    phases = rng.uniform(0, 2 * np.pi, size=4)
    noise = rng.normal(0.0, ACTION_NOISE, size=(length, 2))
    states = np.empty((length, len(STATE_NAMES)), dtype=np.float32)
    actions = np.empty((length, len(ACTION_NAMES)), dtype=np.float32)
    state, grasped = _initial_state(rng, start), False
    for t in range(length):
        grasped = grasped or np.linalg.norm(target - state[:2]) < GRASP_RADIUS
        actions[t] = _controller_action(state, target, t, phases, grasped, noise[t])
        states[t] = state
        state = _step(state, actions[t])
    return states, actions


# --- Rendering (numpy only) --------------------------------------------------------------------------------------


def _pixel_centres(centre: np.ndarray, half_width: float, size: int) -> np.ndarray:
    """World coordinates (S, S, 2) of the pixel centres of a square view; row 0 is the top (largest y)."""
    offsets = ((np.arange(size) + 0.5) / size * 2 - 1) * half_width  # (S,)
    x = np.broadcast_to(centre[0] + offsets[None, :], (size, size))
    y = np.broadcast_to(centre[1] - offsets[:, None], (size, size))
    return np.stack([x, y], axis=-1)


def _table(xy: np.ndarray) -> np.ndarray:
    """Background (S, S, 3) float64: the table on [-1, 1]^2 shaded like a soft checkerboard, the floor beyond it."""
    tiles = np.sin(np.pi * xy[..., 0] / TABLE_TILE) * np.sin(np.pi * xy[..., 1] / TABLE_TILE)  # (S, S) in [-1, 1]
    table = np.asarray(TABLE_COLOR, dtype=np.float64) + TABLE_TILE_CONTRAST * tiles[..., None]
    on_table = np.all(np.abs(xy) <= 1.0, axis=-1)[..., None]
    return np.where(on_table, table, np.asarray(FLOOR_COLOR, dtype=np.float64))


def _draw_disk(canvas: np.ndarray, xy: np.ndarray, centre, radius: float, color, pixel_size: float) -> None:
    """Alpha-blend a disk into `canvas` (S, S, 3) in place; its edge fades over EDGE_WIDTH pixels."""
    distance = np.linalg.norm(xy - np.asarray(centre), axis=-1)  # (S, S)
    alpha = np.clip((radius - distance) / (EDGE_WIDTH * pixel_size) + 0.5, 0.0, 1.0)[..., None]
    canvas += alpha * (np.asarray(color, dtype=np.float64) - canvas)


def _render_view(state: np.ndarray, targets: np.ndarray, centre, half_width: float, size: int) -> np.ndarray:
    """One (S, S, 3) uint8 view of the scene covering [centre - half_width, centre + half_width]^2."""
    xy = _pixel_centres(np.asarray(centre, dtype=np.float64), half_width, size)
    pixel_size = 2 * half_width / size
    canvas = _table(xy)
    for target, color in zip(targets, TARGET_COLORS):
        _draw_disk(canvas, xy, target, TARGET_RADIUS, color, pixel_size)
    agent = state[:2].astype(np.float64)
    finger_offset = AGENT_RADIUS + FINGER_RADIUS  # closed fingers touch the agent
    left = agent - [finger_offset + FINGER_SPREAD * state[6], 0.0]
    right = agent + [finger_offset - FINGER_SPREAD * state[7], 0.0]
    for finger in (left, right):
        _draw_disk(canvas, xy, finger, FINGER_RADIUS, FINGER_COLOR, pixel_size)
    _draw_disk(canvas, xy, agent, AGENT_RADIUS, AGENT_COLOR, pixel_size)
    return np.round(canvas).astype(np.uint8)


def synthetic_episode(rng: np.random.Generator, length: int, image_size: int, task_index: int) -> dict:
    """One episode of the reaching task, drawn from `rng` (deterministic given its state).

    Returns numpy arrays: "state" (T, 8) float32 [x, y, z, roll, pitch, yaw, gripper_left, gripper_right];
    "action" (T, 7) float32 in [-1, 1] [dx, dy, dz, droll, dpitch, dyaw, gripper] with state[t+1][:6] ==
    state[t][:6] + action[t][:6] * float32(STEP_SCALE); "image" (T, S, S, 3) uint8, the top view of the whole
    table; "image2" (T, S, S, 3) uint8, the wrist view centred on the agent; and "targets" (2, 2) float64, the
    centres of the red and blue targets (row `task_index` is the one the agent reaches for).
    """
    if task_index not in range(len(TASKS)):
        raise ValueError(f"task_index must be in [0, {len(TASKS) - 1}], got {task_index!r}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size!r}")
    targets, start = _sample_scene(rng, task_index)
    states, actions = _rollout(rng, length, targets[task_index], start)
    top = np.stack([_render_view(s, targets, (0.0, 0.0), 1.0, image_size) for s in states])
    wrist = np.stack([_render_view(s, targets, s[:2], WRIST_HALF_WIDTH, image_size) for s in states])
    return {"state": states, "action": actions, "image": top, "image2": wrist, "targets": targets}


# --- Episodes as LeRobot columns ---------------------------------------------------------------------------------


def _features(image_size: int, storage: str) -> dict:
    """meta/info.json `features` of the frames: the cameras, state and action (the writer adds LeRobot's defaults)."""
    camera = {"dtype": storage, "shape": [image_size, image_size, 3], "names": ["height", "width", "channels"]}
    features = {key: dict(camera) for key in CAMERA_KEYS}
    features["observation.state"] = {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)}
    features["action"] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)}
    return features


def _generate(num_episodes: int, min_length: int, max_length: int, image_size: int, seed: int) -> list[EpisodeRecord]:
    """Every episode's frames; lengths uniform in [min_length, max_length], tasks alternating."""
    rng = np.random.default_rng(seed)
    records = []
    for episode_index in range(num_episodes):
        length = int(rng.integers(min_length, max_length + 1))
        task_index = episode_index % len(TASKS)
        episode = synthetic_episode(rng, length, image_size, task_index)
        frames = {CAMERA_KEYS[0]: episode["image"], CAMERA_KEYS[1]: episode["image2"],
                  "observation.state": episode["state"], "action": episode["action"]}
        records.append(EpisodeRecord(TASKS[task_index], frames))
    return records


# --- Public API ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _validate(root: Path, version, storage, codec, num_episodes, min_length, max_length, image_size, fps,
              episodes_per_file) -> None:
    _check_choice("version", version, VERSIONS)
    _check_choice("storage", storage, STORAGES)
    _check_choice("codec", codec, CODECS)
    _check_int("num_episodes", num_episodes, 1)
    _check_int("min_length", min_length, 2)  # two frames at least, so that every episode has a motion and a std
    if isinstance(max_length, bool) or not isinstance(max_length, (int, np.integer)) or max_length < min_length:
        raise ValueError(f"max_length must be an integer >= min_length ({min_length}), got {max_length!r}")
    _check_int("image_size", image_size, MIN_IMAGE_SIZE)
    if storage == "video" and image_size % 2:
        raise ValueError(f"image_size must be even for storage='video' (yuv420p halves the chroma), got {image_size}")
    _check_int("fps", fps, 1)
    if episodes_per_file is not None:
        if version != "v3.0":
            raise ValueError(f"episodes_per_file applies to version 'v3.0' only (v2.1 has one file per episode), "
                             f"got episodes_per_file={episodes_per_file!r} with version={version!r}")
        _check_int("episodes_per_file", episodes_per_file, 1)
    if root.exists() and not root.is_dir():
        raise ValueError(f"root must be a new or empty directory, got {str(root)!r}, which is a file")
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"root must be a new or empty directory, got {str(root)!r}, which is not empty")


def write_synthetic_dataset(root, version="v3.0", storage="video", codec="libx264", num_episodes=6, min_length=20,
                            max_length=40, image_size=64, fps=10, episodes_per_file=None, with_quantiles=True,
                            seed=0) -> Path:
    """Write a synthetic reaching dataset in LeRobot format `version` ("v2.1" or "v3.0") under `root`.

    Args:
        root: folder to create; it must not exist or be empty.
        storage: "video" (one mp4 per camera, per episode in v2.1, per file in v3.0) or "image" (PNG bytes in the
            data parquet).
        codec: "libx264" (H.264) or "libsvtav1" (AV1, LeRobot's default); used with storage="video" only.
        num_episodes: >= 1; tasks alternate, so both tasks appear from 2 episodes on.
        min_length, max_length: episode lengths are uniform in [min_length, max_length], 2 <= min_length.
        image_size: S >= 16, the side of both square cameras; even for videos.
        fps: frames per second (int >= 1); timestamps are frame_index / fps.
        episodes_per_file: v3.0 only, episodes per data parquet and per mp4 (None: all in one file); small values
            spread the dataset over file-000, file-001, ... to exercise readers across file boundaries.
        with_quantiles: v3.0 only, whether stats carry q01, q10, q50, q90, q99 (v2.1 stats never do).
        seed: the dataset is a deterministic function of the arguments.

    Returns the root as a Path.
    """
    root = Path(root)
    _validate(root, version, storage, codec, num_episodes, min_length, max_length, image_size, fps,
              episodes_per_file)
    records = _generate(num_episodes, min_length, max_length, image_size, seed)
    return write_lerobot_dataset(root, records, _features(image_size, storage), fps, version, codec, episodes_per_file,
                                 with_quantiles, ROBOT_TYPE)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fasvla.data.synthetic",
                                     description="Write a synthetic reaching dataset in LeRobot format.")
    parser.add_argument("--root", type=Path, required=True, help="new (or empty) folder to write")
    parser.add_argument("--version", default="v3.0", choices=VERSIONS)
    parser.add_argument("--storage", default="video", choices=STORAGES)
    parser.add_argument("--codec", default="libx264", choices=CODECS)
    parser.add_argument("--num_episodes", type=int, default=6)
    parser.add_argument("--min_length", type=int, default=20)
    parser.add_argument("--max_length", type=int, default=40)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--episodes_per_file", type=int, default=None, help="v3.0 only (default: all in one)")
    parser.add_argument("--no_quantiles", action="store_true", help="v3.0: leave q01..q99 out of the stats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = write_synthetic_dataset(args.root, args.version, args.storage, args.codec, args.num_episodes,
                                   args.min_length, args.max_length, args.image_size, args.fps,
                                   args.episodes_per_file, not args.no_quantiles, args.seed)
    info = json.loads((root / "meta/info.json").read_text())
    num_data = len(list((root / "data").rglob("*.parquet")))
    num_videos = len(list(root.glob("videos/**/*.mp4")))
    media = f"{num_videos} {args.codec} videos" if args.storage == "video" else "PNG images in the parquet"
    print(f"wrote LeRobot {info['codebase_version']} dataset {root}: {info['total_episodes']} episodes, "
          f"{info['total_frames']} frames, {info['total_tasks']} tasks, {num_data} data files, {media} "
          f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()

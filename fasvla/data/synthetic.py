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

The layout, schemas and statistics follow LeRobot's recorders: v2.1 as in lerobot v0.3.3 (one parquet and one mp4
per episode, `meta/episodes_stats.jsonl`), v3.0 as in lerobot v0.4.0 and later (several episodes per parquet and
per mp4, `meta/episodes/*.parquet`, `meta/stats.json`, `meta/tasks.parquet`).

    python -m fasvla.data.synthetic --root /tmp/synthetic --version v3.0 --storage video --episodes_per_file 2
"""

import argparse
import io
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fasvla.data.video import write_video

VERSIONS = ("v2.1", "v3.0")
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

# LeRobot's format constants (lerobot src/lerobot/datasets/utils.py at v0.3.3, v0.4.0 and main).
CHUNKS_SIZE = 1000  # v2.1: episodes per chunk directory; v3.0: files per chunk directory
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V30_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
PNG_NAMES = {"v2.1": "frame_{:06d}.png", "v3.0": "frame-{:06d}.png"}  # the `path` of embedded PNGs is a basename
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}  # v3.0 stats only
# Image stats use a subset of frames: linspace over the episode, max(min(T, 100), min(int(T ** 0.75), 10000))
# of them (lerobot compute_stats.py, estimate_num_samples), i.e. every frame for episodes up to 100 frames.
STATS_MIN_SAMPLES, STATS_MAX_SAMPLES, STATS_SAMPLES_POWER = 100, 10_000, 0.75
IMAGE_ARROW_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets.Image() storage
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
    """meta/info.json `features`: the cameras, state and action, then LeRobot's 5 default features."""
    camera = {"dtype": storage, "shape": [image_size, image_size, 3], "names": ["height", "width", "channels"]}
    features = {key: dict(camera) for key in CAMERA_KEYS}
    features["observation.state"] = {"dtype": "float32", "shape": [len(STATE_NAMES)], "names": list(STATE_NAMES)}
    features["action"] = {"dtype": "float32", "shape": [len(ACTION_NAMES)], "names": list(ACTION_NAMES)}
    features.update({key: dict(value) for key, value in DEFAULT_FEATURES.items()})
    return features


def _episode_columns(episode: dict, episode_index: int, task_index: int, first_index: int, fps: int) -> dict:
    """Feature name -> (T, ...) array of one episode; `index` is global, `timestamp` restarts at 0 per episode."""
    frame_index = np.arange(len(episode["state"]), dtype=np.int64)  # (T,)
    return {
        CAMERA_KEYS[0]: episode["image"],
        CAMERA_KEYS[1]: episode["image2"],
        "observation.state": episode["state"],
        "action": episode["action"],
        "timestamp": (frame_index / fps).astype(np.float32),  # nearest float32 of k / fps
        "frame_index": frame_index,
        "episode_index": np.full_like(frame_index, episode_index),
        "index": first_index + frame_index,
        "task_index": np.full_like(frame_index, task_index),
    }


def _generate(num_episodes: int, min_length: int, max_length: int, image_size: int, fps: int,
              seed: int) -> list[dict]:
    """The columns of every episode; lengths uniform in [min_length, max_length], tasks alternating."""
    rng = np.random.default_rng(seed)
    episodes, first_index = [], 0
    for episode_index in range(num_episodes):
        length = int(rng.integers(min_length, max_length + 1))
        task_index = episode_index % len(TASKS)
        episode = synthetic_episode(rng, length, image_size, task_index)
        episodes.append(_episode_columns(episode, episode_index, task_index, first_index, fps))
        first_index += length
    return episodes


# --- Statistics ----------------------------------------------------------------------------------------------------


def _sample_indices(length: int) -> np.ndarray:
    """Frames used for image stats, as LeRobot picks them (compute_stats.py sample_indices)."""
    num = max(min(length, STATS_MIN_SAMPLES), min(int(length ** STATS_SAMPLES_POWER), STATS_MAX_SAMPLES))
    return np.round(np.linspace(0, length - 1, num)).astype(int)


def _feature_stats(values: np.ndarray, is_image: bool, with_quantiles: bool) -> dict:
    """Stats over the first axis of (N, ...) values as JSON lists: length D for (N, D) or (N,) -> D = 1; per
    channel, shape (3, 1, 1) in [0, 1], for (N, S, S, 3) uint8 images. `count` is [N]."""
    count = len(values)
    if is_image:
        data, shape = values.reshape(-1, 3) / 255.0, (3, 1, 1)  # (N * S * S, 3)
    else:
        data = values.reshape(count, -1)  # (N, D)
        shape = (data.shape[1],)
    as_float = data.astype(np.float64)
    stats = {"min": data.min(axis=0), "max": data.max(axis=0), "mean": as_float.mean(axis=0),
             "std": as_float.std(axis=0)}
    stats = {name: value.reshape(shape).tolist() for name, value in stats.items()}
    stats["count"] = [count]
    if with_quantiles:
        quantiles = np.quantile(as_float, list(QUANTILES.values()), axis=0)  # (5, D) or (5, 3), one sort
        stats.update({name: q.reshape(shape).tolist() for name, q in zip(QUANTILES, quantiles)})
    return stats


def _stats(episodes: list[dict], features: dict, with_quantiles: bool) -> dict:
    """Stats of every feature over the frames of `episodes` (image stats over LeRobot's frame sample)."""
    stats = {}
    for key, feature in features.items():
        is_image = feature["dtype"] in ("image", "video")
        parts = [columns[key][_sample_indices(len(columns[key]))] if is_image else columns[key]
                 for columns in episodes]
        stats[key] = _feature_stats(np.concatenate(parts), is_image, with_quantiles)
    return stats


# --- Parquet ------------------------------------------------------------------------------------------------------


def _arrow_type(feature: dict) -> pa.DataType:
    """Arrow type that LeRobot's recorder writes: scalar, fixed_size_list<D> or the PNG struct."""
    if feature["dtype"] == "image":
        return IMAGE_ARROW_TYPE
    value_type = pa.from_numpy_dtype(np.dtype(feature["dtype"]))
    return value_type if feature["shape"] == [1] else pa.list_(value_type, feature["shape"][0])


def _hf_feature(feature: dict) -> dict:
    """The `datasets` feature as serialised by datasets <= 3.6, whose "Sequence" form datasets >= 4 also reads."""
    if feature["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": feature["dtype"], "_type": "Value"}
    return value if feature["shape"] == [1] else {"feature": value, "length": feature["shape"][0], "_type": "Sequence"}


def _data_schema(features: dict) -> pa.Schema:
    """Schema of the data parquet: every feature except videos, with the `huggingface` metadata."""
    stored = {key: feature for key, feature in features.items() if feature["dtype"] != "video"}
    fields = [pa.field(key, _arrow_type(feature)) for key, feature in stored.items()]
    hf_features = {key: _hf_feature(feature) for key, feature in stored.items()}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf_features}})})


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _arrow_column(values: np.ndarray, arrow_type: pa.DataType, png_name: str) -> pa.Array:
    if arrow_type == IMAGE_ARROW_TYPE:
        images = [{"bytes": _png_bytes(image), "path": png_name.format(k)} for k, image in enumerate(values)]
        return pa.array(images, type=arrow_type)
    if pa.types.is_fixed_size_list(arrow_type):
        flat = pa.array(values.reshape(-1), type=arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size)
    return pa.array(values, type=arrow_type)


def _data_table(columns: dict, schema: pa.Schema, png_name: str) -> pa.Table:
    """The T rows of one episode, in frame order."""
    arrays = [_arrow_column(columns[field.name], field.type, png_name) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


# --- Writers -------------------------------------------------------------------------------------------------------


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False) + "\n")


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))


def _tasks(episodes: list[dict]) -> list[str]:
    """Task strings by task index: those the episodes use (task indices are 0, 1, ... by construction)."""
    return list(TASKS[:len({int(columns["task_index"][0]) for columns in episodes})])


def _common_info(version: str, episodes: list[dict]) -> dict:
    """The first meta/info.json keys, shared by v2.1 and v3.0, in LeRobot's order."""
    return {"codebase_version": version, "robot_type": ROBOT_TYPE, "total_episodes": len(episodes),
            "total_frames": sum(len(columns["index"]) for columns in episodes), "total_tasks": len(_tasks(episodes))}


def _write_v21(root: Path, episodes: list[dict], features: dict, codec: str, fps: int) -> None:
    """v2.1: one parquet and one mp4 per camera for each episode, JSON-lines metadata, no stats.json."""
    video_keys = [key for key, feature in features.items() if feature["dtype"] == "video"]
    schema = _data_schema(features)
    for columns in episodes:
        episode_index = int(columns["episode_index"][0])
        chunk = episode_index // CHUNKS_SIZE
        path = root / V21_DATA_PATH.format(episode_chunk=chunk, episode_index=episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(columns, schema, PNG_NAMES["v2.1"]), path, compression="snappy")
        for key in video_keys:
            video = root / V21_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=episode_index)
            info = write_video(video, columns[key], fps, codec)
            features[key].setdefault("info", info)  # LeRobot probes the first episode's file
    _write_v21_meta(root, episodes, features, fps, num_videos=len(episodes) * len(video_keys))


def _write_v21_meta(root: Path, episodes: list[dict], features: dict, fps: int, num_videos: int) -> None:
    """meta/tasks.jsonl, meta/episodes.jsonl, meta/episodes_stats.jsonl (no quantiles in v2.1) and meta/info.json."""
    tasks = [{"task_index": i, "task": task} for i, task in enumerate(_tasks(episodes))]
    _write_jsonl(root / "meta/tasks.jsonl", tasks)
    _write_jsonl(root / "meta/episodes.jsonl", [
        {"episode_index": e, "tasks": [TASKS[int(columns["task_index"][0])]], "length": len(columns["index"])}
        for e, columns in enumerate(episodes)])
    _write_jsonl(root / "meta/episodes_stats.jsonl", [
        {"episode_index": e, "stats": _stats([columns], features, with_quantiles=False)}
        for e, columns in enumerate(episodes)])
    info = _common_info("v2.1", episodes)
    info.update({"total_videos": num_videos, "total_chunks": math.ceil(len(episodes) / CHUNKS_SIZE),
                 "chunks_size": CHUNKS_SIZE, "fps": fps, "splits": {"train": f"0:{len(episodes)}"},
                 "data_path": V21_DATA_PATH, "video_path": V21_VIDEO_PATH if num_videos else None,
                 "features": features})
    _write_json(root / "meta/info.json", info)


def _write_v30_data(path: Path, group: list[dict], schema: pa.Schema) -> None:
    """One data file: the episodes of `group` back to back, one row group each (as LeRobot's recorder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=True) as writer:
        for columns in group:
            writer.write_table(_data_table(columns, schema, PNG_NAMES["v3.0"]))


def _write_v30_videos(root: Path, group: list[dict], features: dict, chunk: int, file: int, codec: str,
                      fps: int) -> list[dict]:
    """One mp4 per camera holding the episodes of `group` back to back; returns each episode's `videos/*` columns.

    Encoding the concatenated frames in one pass gives the same frame times as LeRobot's stream-copy concatenation:
    frame k of an episode is at from_timestamp + k / fps, from_timestamp being the frames before it over fps.
    """
    starts = np.cumsum([0] + [len(columns["index"]) for columns in group])  # (E + 1,) frames before each episode
    rows = [{} for _ in group]
    for key, feature in features.items():
        if feature["dtype"] != "video":
            continue
        path = root / V30_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
        info = write_video(path, np.concatenate([columns[key] for columns in group]), fps, codec)
        feature.setdefault("info", info)  # LeRobot probes the first file
        for row, start, end in zip(rows, starts[:-1], starts[1:]):
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": float(start / fps),
                        f"videos/{key}/to_timestamp": float(end / fps)})
    return rows


def _episode_row(columns: dict, chunk: int, file: int, video_columns: dict, features: dict,
                 with_quantiles: bool) -> dict:
    """One row of meta/episodes/*.parquet, columns in the recorder's order."""
    index = columns["index"]
    row = {"episode_index": int(columns["episode_index"][0]), "tasks": [TASKS[int(columns["task_index"][0])]],
           "length": len(index), "data/chunk_index": chunk, "data/file_index": file,
           "dataset_from_index": int(index[0]), "dataset_to_index": int(index[-1]) + 1, **video_columns}
    for key, stats in _stats([columns], features, with_quantiles).items():
        row.update({f"stats/{key}/{name}": value for name, value in stats.items()})
    row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})  # all rows fit in one file
    return row


def _write_v30_meta(root: Path, episodes: list[dict], rows: list[dict], features: dict, fps: int,
                    with_quantiles: bool) -> None:
    """meta/episodes, meta/tasks.parquet, meta/stats.json and meta/info.json."""
    path = root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
    # LeRobot reads the task string from the pandas index (`tasks.iloc[i].name`): the pandas metadata must be there.
    # Object dtypes keep that metadata as pandas 2, which LeRobot pins, writes it.
    tasks = _tasks(episodes)
    frame = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)},
                         index=pd.Index(tasks, name="task", dtype=object))
    frame.columns = pd.Index(frame.columns, dtype=object)
    frame.to_parquet(root / "meta/tasks.parquet")
    _write_json(root / "meta/stats.json", _stats(episodes, features, with_quantiles))
    has_videos = any(feature["dtype"] == "video" for feature in features.values())
    info = _common_info("v3.0", episodes)
    info.update({"chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
                 "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": fps,
                 "splits": {"train": f"0:{len(episodes)}"}, "data_path": V30_DATA_PATH,
                 "video_path": V30_VIDEO_PATH if has_videos else None, "features": features})
    _write_json(root / "meta/info.json", info)


def _write_v30(root: Path, episodes: list[dict], features: dict, codec: str, fps: int, episodes_per_file: int,
               with_quantiles: bool) -> None:
    """v3.0: `episodes_per_file` episodes per data parquet and per mp4, parquet metadata, stats.json."""
    schema = _data_schema(features)
    rows = []
    for file_number, first in enumerate(range(0, len(episodes), episodes_per_file)):
        group = episodes[first:first + episodes_per_file]
        chunk, file = divmod(file_number, CHUNKS_SIZE)  # lerobot's update_chunk_file_indices, in closed form
        _write_v30_data(root / V30_DATA_PATH.format(chunk_index=chunk, file_index=file), group, schema)
        video_columns = _write_v30_videos(root, group, features, chunk, file, codec, fps)
        rows += [_episode_row(columns, chunk, file, videos, features, with_quantiles)
                 for columns, videos in zip(group, video_columns)]
    _write_v30_meta(root, episodes, rows, features, fps, with_quantiles)


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
    root.mkdir(parents=True, exist_ok=True)
    episodes = _generate(num_episodes, min_length, max_length, image_size, fps, seed)
    features = _features(image_size, storage)
    if version == "v2.1":
        _write_v21(root, episodes, features, codec, fps)
    else:
        _write_v30(root, episodes, features, codec, fps, episodes_per_file or num_episodes, with_quantiles)
    return root


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

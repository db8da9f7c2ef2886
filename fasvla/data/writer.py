"""Writing LeRobot datasets (format v2.1 or v3.0) from episodes held in memory, as LeRobot's own recorders write them:
v2.1 as in lerobot v0.3.3 (one parquet and one mp4 per episode, `meta/episodes_stats.jsonl`), v3.0 as in lerobot
v0.4.0 and later (several episodes per parquet and per mp4, `meta/episodes/*.parquet`, `meta/stats.json`,
`meta/tasks.parquet`). Used by the synthetic datasets, the LIBERO evaluation's recordings and the scripted LIBERO
demonstrations (whose frames may be memory-mapped arrays: image stats are accumulated per episode).

    write_lerobot_dataset(root, [EpisodeRecord(task, {"observation.state": (T, 8), ...}, metadata)], features, fps)
"""

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fasvla.data.video import write_video

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
VERSIONS = ("v2.1", "v3.0")


@dataclass
class EpisodeRecord:
    """One episode to write: its task, its frames (feature name -> (T, ...) array, for every feature given to the
    writer; an `image` feature may instead be a list of T images with None where the step has no frame) and extra
    per-episode columns (scalars or short lists) added to its metadata row."""

    task: str
    frames: dict[str, np.ndarray]
    metadata: dict = field(default_factory=dict)


def _episode_columns(record: EpisodeRecord, episode_index: int, task_index: int, first_index: int, fps: int) -> dict:
    """Feature name -> (T, ...) array of one episode plus LeRobot's default columns; `index` is global and
    `timestamp` restarts at 0 in every episode."""
    length = len(next(iter(record.frames.values())))
    frame_index = np.arange(length, dtype=np.int64)  # (T,)
    return {
        **record.frames,
        "timestamp": (frame_index / fps).astype(np.float32),  # nearest float32 of k / fps
        "frame_index": frame_index,
        "episode_index": np.full_like(frame_index, episode_index),
        "index": first_index + frame_index,
        "task_index": np.full_like(frame_index, task_index),
    }


def _sample_indices(length: int) -> np.ndarray:
    """Frames used for image stats, as LeRobot picks them (compute_stats.py sample_indices)."""
    num = max(min(length, STATS_MIN_SAMPLES), min(int(length ** STATS_SAMPLES_POWER), STATS_MAX_SAMPLES))
    return np.round(np.linspace(0, length - 1, num)).astype(int)


def _feature_stats(values: np.ndarray, with_quantiles: bool) -> dict:
    """Stats over the first axis of (N, D) or (N,) values (D = 1) as JSON lists of length D; `count` is [N]."""
    data = values.reshape(len(values), -1)  # (N, D)
    as_float = data.astype(np.float64)
    stats = {"min": data.min(axis=0), "max": data.max(axis=0), "mean": as_float.mean(axis=0),
             "std": as_float.std(axis=0)}
    stats = {name: value.tolist() for name, value in stats.items()}
    stats["count"] = [len(values)]
    if with_quantiles:
        quantiles = np.quantile(as_float, list(QUANTILES.values()), axis=0)  # (5, D), one sort
        stats.update({name: q.tolist() for name, q in zip(QUANTILES, quantiles)})
    return stats


def _image_histogram(images: np.ndarray) -> np.ndarray:
    """(3, 256) counts of every value of every channel of (N, S, S, 3) uint8 images."""
    return np.stack([np.bincount(images[..., channel].ravel(), minlength=256) for channel in range(3)])


def _histogram_quantile(cumulative: np.ndarray, levels: np.ndarray, q: float) -> np.ndarray:
    """(3,) quantile q of each channel from its (3, 256) cumulative counts, interpolated as np.quantile's default:
    position (n - 1) q between the sorted values x[floor] and x[floor + 1], x[k] being the first level whose
    cumulative count exceeds k."""
    total = cumulative[:, -1]
    position = (total - 1) * q
    below = np.floor(position)
    sorted_value = lambda k: levels[[np.searchsorted(c, i, side="right") for c, i in zip(cumulative, k)]]  # noqa: E731
    low, high = sorted_value(below), sorted_value(np.minimum(below + 1, total - 1))
    return low + (position - below) * (high - low)


def _image_stats(histogram: np.ndarray, count: int, with_quantiles: bool) -> dict:
    """Per-channel stats of the pixel values in [0, 1], shape (3, 1, 1), from their (3, 256) histogram: the numbers
    the pixels themselves give, in memory that does not grow with the dataset. `count` is [frames]."""
    levels = np.arange(256) / 255.0  # (256,)
    pixels = histogram.sum(axis=1)  # (3,)
    mean = histogram @ levels / pixels
    seen = histogram > 0
    stats = {"min": levels[seen.argmax(axis=1)], "max": levels[255 - seen[:, ::-1].argmax(axis=1)], "mean": mean,
             "std": np.sqrt((histogram * (levels - mean[:, None]) ** 2).sum(axis=1) / pixels)}
    stats = {name: value.reshape(3, 1, 1).tolist() for name, value in stats.items()}
    stats["count"] = [count]
    if with_quantiles:
        cumulative = histogram.cumsum(axis=1)
        stats.update({name: _histogram_quantile(cumulative, levels, q).reshape(3, 1, 1).tolist()
                      for name, q in QUANTILES.items()})
    return stats


def _present_frames(values) -> np.ndarray:
    """(N, S, S, 3): the frames of an image column, without the steps that have none (None)."""
    if isinstance(values, np.ndarray):
        return values
    return np.stack([image for image in values if image is not None])


def _stats(episodes: list[dict], features: dict, with_quantiles: bool) -> dict:
    """Stats of every feature over the frames of `episodes` (image stats over LeRobot's frame sample of the frames
    present, accumulated episode by episode as histograms: a dataset's frames need not fit in memory)."""
    stats = {}
    for key, feature in features.items():
        if feature["dtype"] in ("image", "video"):
            present = [_present_frames(columns[key]) for columns in episodes]
            samples = [_sample_indices(len(frames)) for frames in present]
            histogram = sum(_image_histogram(frames[rows]) for frames, rows in zip(present, samples))
            stats[key] = _image_stats(histogram, sum(len(rows) for rows in samples), with_quantiles)
        else:
            stats[key] = _feature_stats(np.concatenate([columns[key] for columns in episodes]), with_quantiles)
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
        images = [None if image is None else {"bytes": _png_bytes(image), "path": png_name.format(k)}
                  for k, image in enumerate(values)]
        return pa.array(images, type=arrow_type)
    if pa.types.is_fixed_size_list(arrow_type):
        flat = pa.array(values.reshape(-1), type=arrow_type.value_type)
        return pa.FixedSizeListArray.from_arrays(flat, arrow_type.list_size)
    return pa.array(values, type=arrow_type)


def _data_table(columns: dict, schema: pa.Schema, png_name: str) -> pa.Table:
    """The T rows of one episode, in frame order."""
    arrays = [_arrow_column(columns[field.name], field.type, png_name) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=4, ensure_ascii=False) + "\n")


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))


@dataclass
class _Plan:
    """What every part of one dataset's writing shares."""

    features: dict  # user and default features; video `info` is filled in as the first file is written
    tasks: list[str]  # by task index
    fps: int
    codec: str
    robot_type: str | None
    with_quantiles: bool
    metadata: list[dict]  # extra columns per episode

    def task_of(self, columns: dict) -> str:
        return self.tasks[int(columns["task_index"][0])]

    def info(self, version: str, episodes: list[dict]) -> dict:
        """The first meta/info.json keys, shared by v2.1 and v3.0, in LeRobot's order."""
        return {"codebase_version": version, "robot_type": self.robot_type, "total_episodes": len(episodes),
                "total_frames": sum(len(columns["index"]) for columns in episodes), "total_tasks": len(self.tasks)}


def _video_keys(features: dict) -> list[str]:
    return [key for key, feature in features.items() if feature["dtype"] == "video"]


def _write_v21(root: Path, episodes: list[dict], plan: _Plan) -> None:
    """v2.1: one parquet and one mp4 per camera for each episode, JSON-lines metadata, no stats.json."""
    schema = _data_schema(plan.features)
    for columns in episodes:
        episode_index = int(columns["episode_index"][0])
        chunk = episode_index // CHUNKS_SIZE
        path = root / V21_DATA_PATH.format(episode_chunk=chunk, episode_index=episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_data_table(columns, schema, PNG_NAMES["v2.1"]), path, compression="snappy")
        for key in _video_keys(plan.features):
            video = root / V21_VIDEO_PATH.format(episode_chunk=chunk, video_key=key, episode_index=episode_index)
            info = write_video(video, columns[key], plan.fps, plan.codec)
            plan.features[key].setdefault("info", info)  # LeRobot probes the first episode's file
    _write_v21_meta(root, episodes, plan)


def _write_v21_meta(root: Path, episodes: list[dict], plan: _Plan) -> None:
    """meta/tasks.jsonl, meta/episodes.jsonl, meta/episodes_stats.jsonl (no quantiles in v2.1) and meta/info.json."""
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": task} for i, task in enumerate(plan.tasks)])
    _write_jsonl(root / "meta/episodes.jsonl", [
        {"episode_index": e, "tasks": [plan.task_of(columns)], "length": len(columns["index"]), **extra}
        for e, (columns, extra) in enumerate(zip(episodes, plan.metadata))])
    _write_jsonl(root / "meta/episodes_stats.jsonl", [
        {"episode_index": e, "stats": _stats([columns], plan.features, with_quantiles=False)}
        for e, columns in enumerate(episodes)])
    num_videos = len(episodes) * len(_video_keys(plan.features))
    info = plan.info("v2.1", episodes)
    info.update({"total_videos": num_videos, "total_chunks": math.ceil(len(episodes) / CHUNKS_SIZE),
                 "chunks_size": CHUNKS_SIZE, "fps": plan.fps, "splits": {"train": f"0:{len(episodes)}"},
                 "data_path": V21_DATA_PATH, "video_path": V21_VIDEO_PATH if num_videos else None,
                 "features": plan.features})
    _write_json(root / "meta/info.json", info)


def _write_v30_data(path: Path, group: list[dict], schema: pa.Schema) -> None:
    """One data file: the episodes of `group` back to back, one row group each (as LeRobot's recorder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=True) as writer:
        for columns in group:
            writer.write_table(_data_table(columns, schema, PNG_NAMES["v3.0"]))


def _write_v30_videos(root: Path, group: list[dict], plan: _Plan, chunk: int, file: int) -> list[dict]:
    """One mp4 per camera holding the episodes of `group` back to back; returns each episode's `videos/*` columns.

    Encoding the concatenated frames in one pass gives the same frame times as LeRobot's stream-copy concatenation:
    frame k of an episode is at from_timestamp + k / fps, from_timestamp being the frames before it over fps.
    """
    starts = np.cumsum([0] + [len(columns["index"]) for columns in group])  # (E + 1,) frames before each episode
    rows = [{} for _ in group]
    for key in _video_keys(plan.features):
        path = root / V30_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
        info = write_video(path, np.concatenate([columns[key] for columns in group]), plan.fps, plan.codec)
        plan.features[key].setdefault("info", info)  # LeRobot probes the first file
        for row, start, end in zip(rows, starts[:-1], starts[1:]):
            row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                        f"videos/{key}/from_timestamp": float(start / plan.fps),
                        f"videos/{key}/to_timestamp": float(end / plan.fps)})
    return rows


def _episode_row(columns: dict, chunk: int, file: int, video_columns: dict, plan: _Plan, extra: dict) -> dict:
    """One row of meta/episodes/*.parquet, columns in the recorder's order, then the extra metadata."""
    index = columns["index"]
    row = {"episode_index": int(columns["episode_index"][0]), "tasks": [plan.task_of(columns)],
           "length": len(index), "data/chunk_index": chunk, "data/file_index": file,
           "dataset_from_index": int(index[0]), "dataset_to_index": int(index[-1]) + 1, **video_columns}
    for key, stats in _stats([columns], plan.features, plan.with_quantiles).items():
        row.update({f"stats/{key}/{name}": value for name, value in stats.items()})
    row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})  # all rows fit in one file
    return row | extra


def _write_v30_meta(root: Path, episodes: list[dict], rows: list[dict], plan: _Plan) -> None:
    """meta/episodes, meta/tasks.parquet, meta/stats.json and meta/info.json."""
    path = root / V30_EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = dict.fromkeys(key for row in rows for key in row)  # pyarrow would take the first row's keys alone
    pq.write_table(pa.Table.from_pylist([{key: row.get(key) for key in columns} for row in rows]), path,
                   compression="snappy")
    # LeRobot reads the task string from the pandas index (`tasks.iloc[i].name`): the pandas metadata must be there.
    # Object dtypes keep that metadata as pandas 2, which LeRobot pins, writes it.
    frame = pd.DataFrame({"task_index": np.arange(len(plan.tasks), dtype=np.int64)},
                         index=pd.Index(plan.tasks, name="task", dtype=object))
    frame.columns = pd.Index(frame.columns, dtype=object)
    frame.to_parquet(root / "meta/tasks.parquet")
    _write_json(root / "meta/stats.json", _stats(episodes, plan.features, plan.with_quantiles))
    info = plan.info("v3.0", episodes)
    info.update({"chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": DATA_FILES_SIZE_IN_MB,
                 "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB, "fps": plan.fps,
                 "splits": {"train": f"0:{len(episodes)}"}, "data_path": V30_DATA_PATH,
                 "video_path": V30_VIDEO_PATH if _video_keys(plan.features) else None, "features": plan.features})
    _write_json(root / "meta/info.json", info)


def _write_v30(root: Path, episodes: list[dict], plan: _Plan, episodes_per_file: int) -> None:
    """v3.0: `episodes_per_file` episodes per data parquet and per mp4, parquet metadata, stats.json."""
    schema = _data_schema(plan.features)
    rows = []
    for file_number, first in enumerate(range(0, len(episodes), episodes_per_file)):
        group = episodes[first:first + episodes_per_file]
        chunk, file = divmod(file_number, CHUNKS_SIZE)  # lerobot's update_chunk_file_indices, in closed form
        _write_v30_data(root / V30_DATA_PATH.format(chunk_index=chunk, file_index=file), group, schema)
        video_columns = _write_v30_videos(root, group, plan, chunk, file)
        extras = plan.metadata[first:first + episodes_per_file]
        rows += [_episode_row(columns, chunk, file, videos, plan, extra)
                 for columns, videos, extra in zip(group, video_columns, extras)]
    _write_v30_meta(root, episodes, rows, plan)


def write_lerobot_dataset(root, episodes: list[EpisodeRecord], features: dict, fps: int, version: str = "v3.0",
                          codec: str = "libx264", episodes_per_file: int | None = None, with_quantiles: bool = True,
                          robot_type: str | None = None) -> Path:
    """Write `episodes` as a LeRobot dataset under `root` (created; it must not hold a dataset already).

    features: meta/info.json features of the frames (LeRobot's default features are added); `image` features are
    stored as PNG in the parquet, `video` features as mp4 (codec "libx264" for H.264 or "libsvtav1" for AV1).
    episodes_per_file: v3.0, episodes per data parquet and per mp4 (None: all in one file).
    """
    root = Path(root)
    if version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    if not episodes:
        raise ValueError("episodes must hold at least one EpisodeRecord")
    if (root / "meta" / "info.json").exists():
        raise ValueError(f"root {str(root)!r} already holds a dataset")
    tasks = list(dict.fromkeys(record.task for record in episodes))
    all_features = {key: dict(value) for key, value in features.items()} | {
        key: dict(value) for key, value in DEFAULT_FEATURES.items()}
    plan = _Plan(all_features, tasks, fps, codec, robot_type, with_quantiles, [r.metadata for r in episodes])
    columns, first_index = [], 0
    for episode_index, record in enumerate(episodes):
        columns.append(_episode_columns(record, episode_index, tasks.index(record.task), first_index, fps))
        first_index += len(columns[-1]["index"])
    root.mkdir(parents=True, exist_ok=True)
    if version == "v2.1":
        _write_v21(root, columns, plan)
    else:
        _write_v30(root, columns, plan, episodes_per_file or len(episodes))
    return root

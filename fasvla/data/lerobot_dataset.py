"""A LeRobot dataset on disk, format v2.1 (a parquet and an mp4 per episode) or v3.0 (many episodes per file).

Numeric columns (state, action, indices, timestamps) are read once into memory with pyarrow; images stay on disk:
inside the parquet files (read lazily through a memory-mapped `datasets` table) or in mp4 files (decoded with PyAV at
the frame's timestamp, plus the episode's offset in the file for v3.0).

    dataset = LeRobotDataset.open("lerobot/libero")          # Hub id (snapshot_download) or local folder
    dataset.check(cameras=[...], state_key="observation.state", action_key="action")
    image = dataset.image("observation.images.image", row)   # (H, W, 3) uint8
"""

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fasvla.data.video import VideoDecoder

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
DEFAULT_COLUMNS = ("index", "episode_index", "frame_index", "timestamp", "task_index")
# columns of the episodes metadata that LeRobot itself writes (the rest is the episode's own metadata)
EPISODE_COLUMNS = ("episode_index", "tasks", "length", "dataset_from_index", "dataset_to_index")
EPISODE_COLUMN_PREFIXES = ("stats/", "data/", "videos/", "meta/")


class DatasetError(ValueError):
    """The dataset is missing, corrupt or inconsistent; the message names the file or feature."""


@dataclass
class Episode:
    index: int
    start: int  # first row of the episode in the concatenated data
    length: int
    tasks: list[str]
    data_file: Path  # the parquet holding its rows
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # camera -> (mp4, start time in file)
    metadata: dict = field(default_factory=dict)  # the episode's own columns (an evaluation's suite, success, ...)


def resolve_dataset(repo_or_path: str, revision: str | None = None, cameras=None) -> Path:
    """A local folder, or a Hub dataset downloaded with `snapshot_download` (metadata, data, the cameras' videos)."""
    path = Path(repo_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    patterns = ["meta/*", "meta/**", "data/**"] + (["videos/**"] if cameras is None else
                                                    [f"videos/**/{c}/**" for c in cameras] + [f"videos/{c}/**"
                                                                                               for c in cameras])
    try:
        return Path(snapshot_download(repo_or_path, repo_type="dataset", revision=revision, allow_patterns=patterns))
    except Exception as error:  # the Hub client raises many types; all mean "not available"
        raise DatasetError(f"dataset {repo_or_path!r} is neither a folder nor a reachable Hub dataset "
                           f"({type(error).__name__}: {error})") from error


class LeRobotDataset:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.info = _read_json(self.root / "meta" / "info.json")
        self.version = self.info.get("codebase_version")
        if self.version not in SUPPORTED_VERSIONS:
            raise DatasetError(f"{self.root}: codebase_version {self.version!r} is not one of {SUPPORTED_VERSIONS}")
        self.fps = float(self.info["fps"])
        self.features = self.info["features"]
        self.tasks = self._read_tasks()
        self.episodes = self._read_episodes()
        self._data_files = self._data_file_list()
        self._columns: dict[str, np.ndarray] = {}
        self._image_tables = None
        self._decoder = VideoDecoder()

    @classmethod
    def open(cls, repo_or_path: str, revision: str | None = None, cameras=None) -> "LeRobotDataset":
        return cls(resolve_dataset(repo_or_path, revision, cameras))

    # -- metadata ----------------------------------------------------------------------------------------------

    @property
    def camera_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] in ("image", "video")]

    @property
    def num_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def _read_tasks(self) -> dict[int, str]:
        if self.version == "v3.0":
            table = pq.read_table(self._meta_file("tasks.parquet"))
            names = table.column("task" if "task" in table.column_names else "__index_level_0__").to_pylist()
            return dict(zip(table.column("task_index").to_pylist(), names))
        rows = _read_jsonl(self._meta_file("tasks.jsonl"))
        return {row["task_index"]: row["task"] for row in rows}

    def _read_episodes(self) -> list[Episode]:
        if self.version == "v3.0":
            files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
            if not files:
                raise DatasetError(f"{self.root}/meta/episodes holds no parquet file")
            rows = [row for f in files for row in pq.read_table(f).to_pylist()]
            return [self._v3_episode(row) for row in rows]
        episodes, start, chunks = [], 0, self.info["chunks_size"]
        for row in sorted(_read_jsonl(self._meta_file("episodes.jsonl")), key=lambda r: r["episode_index"]):
            index = row["episode_index"]
            data_file = self.root / self.info["data_path"].format(episode_chunk=index // chunks, episode_index=index)
            episode = Episode(index, start, row["length"], list(row["tasks"]), data_file, metadata=_own_columns(row))
            for camera in self._video_keys():
                episode.videos[camera] = (self.root / self.info["video_path"].format(
                    episode_chunk=index // chunks, video_key=camera, episode_index=index), 0.0)
            episodes.append(episode)
            start += episode.length
        return episodes

    def _v3_episode(self, row: dict) -> Episode:
        data_file = self.root / self.info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                              file_index=row["data/file_index"])
        episode = Episode(row["episode_index"], row["dataset_from_index"], row["length"], list(row["tasks"]),
                          data_file, metadata=_own_columns(row))
        for camera in self._video_keys():
            path = self.root / self.info["video_path"].format(
                video_key=camera, chunk_index=row[f"videos/{camera}/chunk_index"],
                file_index=row[f"videos/{camera}/file_index"])
            episode.videos[camera] = (path, float(row[f"videos/{camera}/from_timestamp"]))
        return episode

    def _video_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f["dtype"] == "video"]

    def _data_file_list(self) -> list[Path]:
        """The data files in row order: those the episodes name, in episode order (each listed once)."""
        return list(dict.fromkeys(e.data_file for e in self.episodes))

    def _meta_file(self, name: str) -> Path:
        path = self.root / "meta" / name
        if not path.is_file():
            raise DatasetError(f"{path} is missing")
        return path

    # -- data --------------------------------------------------------------------------------------------------

    def column(self, key: str) -> np.ndarray:
        """A numeric feature over every frame, (num_frames, *shape), read once."""
        if key not in self._columns:
            if key not in self.features and key not in DEFAULT_COLUMNS:
                raise DatasetError(f"{self.root} has no feature {key!r}; it has {sorted(self.features)}")
            missing = [str(f) for f in self._data_files if not f.is_file()]
            if missing:
                raise DatasetError(f"data files of {self.root} are missing: {missing}")
            parts = [_to_numpy(pq.read_table(f, columns=[key]).column(key)) for f in self._data_files]
            self._columns[key] = np.concatenate(parts)
        return self._columns[key]

    def task(self, row: int) -> str:
        return self.tasks[int(self.column("task_index")[row])]

    def image(self, camera: str, row: int) -> np.ndarray:
        """The camera's frame at a row, (H, W, 3) uint8 (an image feature may lack frames: DatasetError)."""
        if self.features[camera]["dtype"] == "image":
            cell = self._images()[row][camera]
            if cell is None:
                raise DatasetError(f"{self.root}: camera {camera!r} has no frame at row {row}")
            return np.asarray(Image.open(io.BytesIO(cell["bytes"])).convert("RGB"))
        episode = self.episodes[int(self.column("episode_index")[row])]
        path, offset = episode.videos[camera]
        return self._decoder.frame_at(path, offset + float(self.column("timestamp")[row]))

    def _images(self):
        """The image columns as a memory-mapped `datasets` table (its Arrow cache), rows in data order."""
        if self._image_tables is None:
            from datasets import Dataset

            keys = [k for k in self.camera_keys if self.features[k]["dtype"] == "image"]
            table = Dataset.from_parquet([str(f) for f in self._data_files], columns=keys)
            self._image_tables = table.cast(_undecoded(table.features, keys))  # PNG bytes, decoded by us
        return self._image_tables

    # -- consistency -------------------------------------------------------------------------------------------

    def check(self, cameras: list[str], state_key: str, action_key: str) -> None:
        """Fail with a clear message before training if anything needed is missing or inconsistent."""
        unknown = [c for c in cameras if c not in self.camera_keys]
        if unknown:
            raise DatasetError(f"unknown camera keys {unknown}; {self.root} has cameras {self.camera_keys}")
        missing_files = [str(f) for f in self._data_files if not f.is_file()]
        missing_files += [str(path) for e in self.episodes for c in cameras if c in e.videos
                          for path, _ in [e.videos[c]] if not path.is_file()]
        if missing_files:
            raise DatasetError(f"{len(missing_files)} files of {self.root} are missing, e.g. {missing_files[:3]}")
        for key in (state_key, action_key):
            values = self.column(key)
            expected = tuple(self.features[key]["shape"])
            if values.shape[1:] != expected:
                raise DatasetError(f"feature {key!r} has shape {values.shape[1:]} in the data but {list(expected)} "
                                   "in meta/info.json")
        if len(self.column("index")) != self.num_frames:
            raise DatasetError(f"the data holds {len(self.column('index'))} frames but the episodes metadata "
                               f"{self.num_frames}")
        for camera in cameras:  # one frame per camera, decoded for real
            expected = tuple(self.features[camera]["shape"])
            shape = self.image(camera, 0).shape
            if shape != expected and shape != tuple(expected[i] for i in (1, 2, 0)):
                raise DatasetError(f"camera {camera!r} decodes to {shape}, meta/info.json says {list(expected)}")

    def __getstate__(self):  # DataLoader workers reopen the image tables and videos themselves
        state = dict(self.__dict__)
        state["_image_tables"] = None
        return state


def _undecoded(features, keys):
    from datasets import Image as ImageFeature

    features = features.copy()
    for key in keys:
        features[key] = ImageFeature(decode=False)
    return features


def _to_numpy(column) -> np.ndarray:
    """A pyarrow column of scalars -> (rows,); of fixed-size or variable lists of equal length -> (rows, D)."""
    combined = column.combine_chunks()
    kind = combined.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return combined.flatten().to_numpy(zero_copy_only=False).reshape(len(combined), -1)
    return combined.to_numpy(zero_copy_only=False)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DatasetError(f"{path} is missing: not a LeRobot dataset folder")
    return json.loads(path.read_text())


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _own_columns(row: dict) -> dict:
    return {key: value for key, value in row.items()
            if key not in EPISODE_COLUMNS and not key.startswith(EPISODE_COLUMN_PREFIXES)}

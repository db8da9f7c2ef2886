"""The rollouts the app may show: every LeRobot dataset found under the folders (or Hub datasets) it was given.

Episodes are addressed by ids that the catalog itself made (`<source>/<folder>#<episode>`); a request is looked up
in that table and never turned into a path, so nothing outside the given folders can be reached through an id.
A source or a dataset folder that cannot be read is listed in the catalog's `problems` (per source) with the reason,
instead of failing the app.

    catalog = RolloutCatalog.scan(["outputs/libero_eval", "user/fasvla-libero-rollouts"])
    episode = catalog.load(catalog.rollouts[0].id)     # arrays of one episode, and its videos
"""

import functools
import json
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fasvla.data.lerobot_dataset import DatasetError, LeRobotDataset
from fasvla.data.video import write_video

# what an evaluation recording holds per frame (fasvla/libero/recording.py); datasets without the policy columns
# (demonstrations) show their states and actions alone
STATE_KEY, ACTION_KEY = "observation.state", "action"
POLICY_KEYS = ("policy.action", "policy.predicted_state", "policy.state_input", "policy.latency_ms")
OBSERVED_KEY = "policy.observed"  # the steps at which the policy read the cameras
MAX_DEPTH = 8  # how deep under a source folder datasets are looked for


class RolloutError(ValueError):
    """A rollout id that is not in the catalog, or a recording that cannot be read; the message says which."""


@dataclass(frozen=True)
class Rollout:
    """One recorded episode, as its metadata describes it (nothing of its frames is read)."""

    id: str
    source: str
    root: Path  # the dataset folder
    episode_index: int
    task: str
    steps: int
    suite: str = "unknown"
    task_id: int = -1
    trial: int = -1
    init_state_id: int = -1
    success: bool | None = None
    feedback_mode: str = "unknown"
    perturbation: str = "unknown"
    model: str = "unknown"

    @property
    def label(self) -> str:
        outcome = {True: "success", False: "failure", None: "no outcome"}[self.success]
        return (f"trial {self.trial} · init {self.init_state_id} · {self.feedback_mode} · "
                f"{perturbation_label(self.perturbation)} · {outcome} · {self.steps} steps · {self.source}")


@dataclass
class EpisodeData:
    """The frames of one episode as arrays, aligned on the policy step t.

    states[t] is observed before action t; state_inputs[t] is the state the model conditioned on for action t;
    predicted_states[t] is its prediction of states[t + 1]. Policy columns are NaN where the recording has none.
    `observed[t]`: the policy read the cameras at step t (None: not recorded). A recording without full-rate video
    holds frames only there (`has_every_frame` False): the frame shown at step t is then the newest one at or before
    t, the view the policy was acting on (`frame_step`).
    """

    rollout: Rollout
    fps: float
    states: np.ndarray  # (T, d_s)
    actions: np.ndarray  # (T, d_a) sent to the robot
    policy_actions: np.ndarray  # (T, d_a) what the model output
    predicted_states: np.ndarray  # (T, d_s)
    state_inputs: np.ndarray  # (T, d_s)
    latency_ms: np.ndarray  # (T,)
    state_names: list[str]
    action_names: list[str]
    videos: dict[str, Path | None] = field(default_factory=dict)  # camera -> mp4 holding this episode alone
    frame_source: object = None  # (camera, t) -> (H, W, 3) uint8, for a t that has a frame
    observed: np.ndarray | None = None  # (T,) bool
    has_every_frame: bool = True

    @property
    def num_steps(self) -> int:
        return len(self.actions)

    @property
    def cameras(self) -> list[str]:
        return list(self.videos)

    def frame(self, camera: str, t: int) -> np.ndarray:
        return self.frame_source(camera, self.frame_step(t))

    def frame_step(self, t: int) -> int:
        """The step whose frame is shown at step t: t itself, or the policy's newest observation by then."""
        if not 0 <= t < self.num_steps:
            raise RolloutError(f"step must be in [0, {self.num_steps}), got {t}")
        if self.has_every_frame:
            return t
        seen = np.flatnonzero(self.observed[: t + 1])
        return int(seen[-1]) if len(seen) else int(np.flatnonzero(self.observed)[0])


class RolloutCatalog:
    def __init__(self, requested: list[str], sources: dict[str, Path], rollouts: list[Rollout],
                 problems: dict[str, list[str]]):
        self.requested = requested  # the folders and Hub ids as given
        self.sources = sources  # those found: as given -> folder
        self.rollouts = rollouts
        self.problems = problems  # source as given -> ["what: why it could not be read", ...]
        self._by_id = {r.id: r for r in rollouts}
        self._datasets: dict[Path, LeRobotDataset] = {}
        self._load = functools.lru_cache(maxsize=16)(self._read)
        self._clips = None  # a temporary folder for cut-out videos, made when first needed

    @classmethod
    def scan(cls, sources: list[str]) -> "RolloutCatalog":
        """Folders or Hub dataset ids; each searched for LeRobot datasets (`meta/info.json`)."""
        folders, rollouts, problems = {}, [], {}
        for source in sources:
            try:
                folders[source] = resolve_source(source)
            except RolloutError as error:
                problems[source] = [str(error)]
                continue
            found, unreadable = _scan_folder(source, folders[source])
            rollouts += found
            if unreadable:
                problems[source] = unreadable
        return cls(list(sources), folders, rollouts, problems)

    def rescanned(self, source: str) -> "RolloutCatalog":
        """The catalog with one source scanned again (after a new recording in it), the others as they were."""
        if source not in self.sources:
            raise RolloutError(f"source must be one of {list(self.sources)}, got {source!r}")
        found, unreadable = _scan_folder(source, self.sources[source])
        rollouts = [r for r in self.rollouts if r.source != source] + found
        problems = {s: p for s, p in self.problems.items() if s != source} | ({source: unreadable} if unreadable
                                                                              else {})
        return RolloutCatalog(self.requested, self.sources, rollouts, problems)

    def get(self, rollout_id: str) -> Rollout:
        if rollout_id not in self._by_id:
            raise RolloutError(f"no rollout {rollout_id!r} in the catalog")
        return self._by_id[rollout_id]

    def load(self, rollout_id: str) -> EpisodeData:
        return self._load(self.get(rollout_id))

    def _read(self, rollout: Rollout) -> EpisodeData:
        try:
            return _episode_data(rollout, self._dataset(rollout.root))
        except (DatasetError, OSError, KeyError) as error:
            raise RolloutError(f"rollout {rollout.id!r} cannot be read: {error}") from error

    def video(self, episode: EpisodeData, camera: str) -> Path:
        """An mp4 of the camera over exactly this episode: the recording's own file, or one cut out of a file that
        holds several episodes (decoded and re-encoded once into a temporary folder)."""
        if camera not in episode.videos:
            raise RolloutError(f"camera must be one of {episode.cameras}, got {camera!r}")
        if episode.videos[camera] is not None:
            return episode.videos[camera]
        if self._clips is None:
            self._clips = Path(tempfile.mkdtemp(prefix="fasvla_app_clips_"))
        clip = self._clips / f"{zlib.crc32(episode.rollout.id.encode()):08x}_{camera}.mp4"
        if not clip.is_file():
            frames = np.stack([episode.frame(camera, t) for t in range(episode.num_steps)])
            write_video(clip, frames, round(episode.fps), codec="libx264")  # H.264 plays in every browser
        return clip

    def _dataset(self, root: Path) -> LeRobotDataset:
        if root not in self._datasets:
            self._datasets[root] = LeRobotDataset(root)
        return self._datasets[root]

    def comparable(self, rollout_id: str) -> list[Rollout]:
        """The other rollouts of the same suite, task and init state (another feedback mode, perturbation, model)."""
        rollout = self.get(rollout_id)
        key = (rollout.suite, rollout.task_id, rollout.init_state_id, rollout.task)
        return [r for r in self.rollouts if r.id != rollout.id and (r.suite, r.task_id, r.init_state_id, r.task) == key]

    @property
    def allowed_paths(self) -> list[str]:
        """The folders the web server may serve files from."""
        return [str(path) for path in self.sources.values()]


def resolve_source(source: str) -> Path:
    """A local folder as it is, or a Hub dataset repository downloaded with `snapshot_download`."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise RolloutError(f"rollout source {source!r} is neither a folder nor a Hub dataset id (user/name)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, repo_type="dataset")).resolve()
    except Exception as error:  # the Hub client raises many types; all mean "not available"
        raise RolloutError(f"rollout source {source!r} is not a folder and could not be fetched from the Hub "
                           f"({type(error).__name__}: {error})") from error


def _scan_folder(source: str, folder: Path) -> tuple[list[Rollout], list[str]]:
    rollouts, problems = [], []
    for info in sorted(_dataset_infos(folder)):
        root = info.parent.parent
        try:
            dataset = LeRobotDataset(root)
            _check_files(dataset)
            relative = root.relative_to(folder).as_posix()
            rollouts += [_rollout(source, root, relative, episode) for episode in dataset.episodes]
        except (DatasetError, OSError, KeyError, ValueError) as error:
            problems.append(f"{root}: {error}")
    return rollouts, problems


def _check_files(dataset: LeRobotDataset) -> None:
    """A recording whose writing was interrupted lacks files its metadata names: refuse it at once."""
    paths = {e.data_file for e in dataset.episodes} | {path for e in dataset.episodes for path, _ in e.videos.values()}
    missing = sorted(str(path.relative_to(dataset.root)) for path in paths if not path.is_file())
    if missing:
        raise DatasetError(f"files named by its metadata are missing: {missing}")


def _dataset_infos(folder: Path, depth: int = 0):
    """Every `meta/info.json` under `folder`, not following links out of it and not descending into datasets."""
    if (folder / "meta" / "info.json").is_file():
        yield folder / "meta" / "info.json"
        return
    if depth == MAX_DEPTH:
        return
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.is_symlink() and not child.name.startswith("."):
            yield from _dataset_infos(child, depth + 1)


def _rollout(source: str, root: Path, relative: str, episode) -> Rollout:
    meta = episode.metadata
    known = {name: meta[name] for name in ("suite", "task_id", "trial", "init_state_id", "success", "feedback_mode",
                                           "perturbation", "model") if meta.get(name) is not None}
    return Rollout(id=f"{source}/{relative}#{episode.index}", source=source, root=root, episode_index=episode.index,
                   task=episode.tasks[0] if episode.tasks else "", steps=episode.length, **known)


def _episode_data(rollout: Rollout, dataset: LeRobotDataset) -> EpisodeData:
    episode = next((e for e in dataset.episodes if e.index == rollout.episode_index), None)
    if episode is None:
        raise DatasetError(f"{dataset.root} has no episode {rollout.episode_index}")
    rows = slice(episode.start, episode.start + episode.length)
    states, actions = dataset.column(STATE_KEY)[rows], dataset.column(ACTION_KEY)[rows]
    policy = {key: dataset.column(key)[rows] if key in dataset.features else None for key in POLICY_KEYS}
    observed = dataset.column(OBSERVED_KEY)[rows].reshape(-1).astype(bool) if OBSERVED_KEY in dataset.features else None
    # frames only where the policy looked: images in the parquet, null elsewhere (fasvla/libero/recording.py)
    every_frame = observed is None or observed.all() or any(
        dataset.features[camera]["dtype"] == "video" for camera in dataset.camera_keys)
    _check_files(dataset)  # again: the folder may have changed since it was scanned
    nan = lambda like: np.full(like.shape, np.nan, np.float32)  # noqa: E731
    return EpisodeData(
        rollout=rollout, fps=dataset.fps, states=states, actions=actions,
        policy_actions=_or(policy["policy.action"], nan(actions)),
        predicted_states=_or(policy["policy.predicted_state"], nan(states)),
        state_inputs=_or(policy["policy.state_input"], nan(states)),
        latency_ms=_or(policy["policy.latency_ms"], nan(actions[:, 0])).reshape(-1),
        state_names=_names(dataset, STATE_KEY, states.shape[1]), action_names=_names(dataset, ACTION_KEY,
                                                                                     actions.shape[1]),
        videos={camera: _episode_video(dataset, episode, camera) for camera in dataset.camera_keys},
        frame_source=lambda camera, t: dataset.image(camera, episode.start + t), observed=observed,
        has_every_frame=every_frame)


def _episode_video(dataset: LeRobotDataset, episode, camera: str) -> Path | None:
    """The mp4 of the camera when it holds this episode alone (as the evaluation writes them), else None."""
    if camera not in episode.videos:
        return None
    path, offset = episode.videos[camera]
    alone = offset == 0 and sum(e.videos[camera][0] == path for e in dataset.episodes) == 1
    return path if alone else None


def _or(values, default):
    return default if values is None else values


def _names(dataset: LeRobotDataset, key: str, width: int) -> list[str]:
    names = dataset.features[key].get("names")
    if isinstance(names, dict):  # LeRobot's {"motors": [...]} form
        names = next(iter(names.values()), None)
    return list(names) if isinstance(names, list) and len(names) == width else [f"{key}[{i}]" for i in range(width)]


def perturbation_label(perturbation: str) -> str:
    """`Perturbation.describe()` (JSON) in a few words: "push (0, 60, 0) N at step 30 for 4 steps, noise 0.1"."""
    try:
        fields = json.loads(perturbation)
    except ValueError:
        return perturbation  # "nominal", "unknown", or another recorder's own words
    parts = []
    if fields.get("push_step") is not None:
        force = ", ".join(f"{f:g}" for f in fields["push_force"])
        parts.append(f"push ({force}) N at step {fields['push_step']} for {fields['push_steps']} steps")
    if fields.get("action_noise"):
        parts.append(f"noise {fields['action_noise']:g}")
    if fields.get("action_delay"):
        parts.append(f"delay {fields['action_delay']} steps")
    return ", ".join(parts) or "nominal"

"""The replay app without a browser: the rollout catalog, the figures, and the callbacks called directly."""

import queue
import shutil

import numpy as np
import pytest

from fasvla.app.live import LiveProgress, _newest, _unused
from fasvla.app.overview import success_table
from fasvla.app.plots import comparison_figure, episode_figure
from fasvla.app.rollouts import RolloutCatalog, RolloutError, perturbation_label, resolve_source
from fasvla.app.ui import ReplayApp
from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.data.video import VideoDecoder
from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset
from fasvla.libero.episode import EpisodeJob
from fasvla.libero.recording import STATE_NAMES, rollout_features
from rollouts import TASK, frame_value, write_evaluation, write_rollout

CAMERAS = ["observation.images.image", "observation.images.image2"]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluation")
    return root, write_evaluation(root)


@pytest.fixture(scope="module")
def catalog(evaluation):
    return RolloutCatalog.scan([str(evaluation[0])])


def _id(catalog, folder) -> str:
    return next(r.id for r in catalog.rollouts if r.root == folder.resolve())


# -- the catalog -------------------------------------------------------------------------------------------------


def test_catalog_lists_every_episode_with_the_metadata_the_evaluation_wrote(evaluation, catalog):
    root, folders = evaluation
    assert catalog.problems == {} and len(catalog.rollouts) == 3
    rollout = catalog.get(_id(catalog, folders["open_loop"]))
    assert (rollout.suite, rollout.task_id, rollout.trial, rollout.init_state_id) == ("libero_object", 0, 0, 0)
    assert (rollout.feedback_mode, rollout.success, rollout.steps, rollout.model) == ("open_loop", False, 15, "tiny")
    assert rollout.task == TASK and rollout.id == f"{root}/open_loop/rollouts/libero_object/task_00/trial_000#0"
    assert catalog.get(_id(catalog, folders["anticipatory"])).success is True


def test_comparable_rollouts_share_suite_task_and_init_state(evaluation, catalog):
    _, folders = evaluation
    anticipatory, open_loop = _id(catalog, folders["anticipatory"]), _id(catalog, folders["open_loop"])
    assert [r.id for r in catalog.comparable(anticipatory)] == [open_loop]
    assert catalog.comparable(_id(catalog, folders["other_task"])) == []


def test_loaded_episode_holds_the_recorded_columns(evaluation, catalog):
    _, folders = evaluation
    episode = catalog.load(_id(catalog, folders["open_loop"]))
    dataset = LeRobotDataset(folders["open_loop"])
    for array, key in ((episode.states, "observation.state"), (episode.actions, "action"),
                       (episode.policy_actions, "policy.action"), (episode.predicted_states, "policy.predicted_state"),
                       (episode.state_inputs, "policy.state_input")):
        np.testing.assert_array_equal(array, dataset.column(key))
    np.testing.assert_allclose(episode.latency_ms, 1000 * 0.001 * np.arange(1, 16), rtol=1e-6)
    assert episode.state_names == STATE_NAMES and episode.cameras == CAMERAS
    assert episode.videos[CAMERAS[0]] == folders["open_loop"] / "videos" / CAMERAS[0] / "chunk-000" / "file-000.mp4"
    for t in (0, 7, 14):
        assert abs(int(episode.frame(CAMERAS[1], t).mean()) - frame_value(t, 1)) <= 3


@pytest.mark.parametrize("rollout_id", ["../../etc/passwd", "/etc/passwd#0", "{root}/../rollouts#0",
                                        "{root}/open_loop/rollouts/libero_object/task_00/trial_000#1"])
def test_ids_not_made_by_the_catalog_are_refused(evaluation, catalog, rollout_id):
    with pytest.raises(RolloutError, match="no rollout"):
        catalog.load(rollout_id.format(root=evaluation[0]))


def test_a_folder_linked_from_inside_a_source_is_not_followed(tmp_path, evaluation):
    source = tmp_path / "source"
    write_rollout(source, EpisodeJob("libero_goal", 1, 0))
    (source / "elsewhere").symlink_to(evaluation[0], target_is_directory=True)
    catalog = RolloutCatalog.scan([str(source)])
    assert [r.suite for r in catalog.rollouts] == ["libero_goal"]
    assert catalog.allowed_paths == [str(source.resolve())]


def test_malformed_and_partial_recordings_are_reported_not_fatal(tmp_path, evaluation):
    shutil.copytree(evaluation[0], tmp_path / "eval")
    good = tmp_path / "eval" / "anticipatory" / "rollouts" / "libero_object" / "task_00" / "trial_000"
    no_data = tmp_path / "eval" / "open_loop" / "rollouts" / "libero_object" / "task_00" / "trial_000"
    broken = tmp_path / "eval" / "anticipatory" / "rollouts" / "libero_object" / "task_03" / "trial_001"
    (no_data / "data" / "chunk-000" / "file-000.parquet").unlink()  # an evaluation killed while writing
    info = broken / "meta" / "info.json"
    info.write_text(info.read_text()[:100])
    (tmp_path / "eval" / "notes").mkdir()  # not a dataset: ignored
    catalog = RolloutCatalog.scan([str(tmp_path / "eval"), str(tmp_path / "missing")])
    assert [r.root for r in catalog.rollouts] == [good]
    truncated, partial = catalog.problems[str(tmp_path / "eval")]
    assert truncated.startswith(f"{broken}: ")
    assert partial == f"{no_data}: files named by its metadata are missing: ['data/chunk-000/file-000.parquet']"
    assert "neither a folder nor a Hub dataset id" in catalog.problems[str(tmp_path / "missing")][0]
    assert catalog.load(_id(catalog, good)).num_steps == 12
    overview = ReplayApp(catalog).choose_source(str(tmp_path / "eval"))[0]
    assert "1 episode**" in overview and "Could not be read" in overview and str(no_data) in overview


def test_files_that_vanish_after_the_scan_are_named(tmp_path, evaluation):
    shutil.copytree(evaluation[0] / "open_loop", tmp_path / "eval")
    catalog = RolloutCatalog.scan([str(tmp_path / "eval")])
    next((tmp_path / "eval").rglob("observation.images.image2/**/*.mp4")).unlink()
    with pytest.raises(RolloutError, match="cannot be read: files named by its metadata are missing: .*image2"):
        catalog.load(catalog.rollouts[0].id)


def test_a_hub_dataset_source_resolves_through_the_hub_cache(tmp_path, evaluation, monkeypatch):
    """Offline, `snapshot_download` answers from the cache: a cached dataset repository is a real source."""
    import huggingface_hub.constants

    commit = "0" * 40
    repo = tmp_path / "hub" / "datasets--someone--fasvla-rollouts"
    shutil.copytree(evaluation[0] / "anticipatory", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_source("someone/fasvla-rollouts") == (repo / "snapshots" / commit).resolve()
    catalog = RolloutCatalog.scan(["someone/fasvla-rollouts", "someone/absent"])
    assert {r.task_id for r in catalog.rollouts} == {0, 3}
    assert list(catalog.problems) == ["someone/absent"]
    assert "could not be fetched from the Hub" in catalog.problems["someone/absent"][0]


def test_a_video_holding_several_episodes_is_cut_to_the_episode(tmp_path):
    def record(steps, offset):
        frames = {camera: np.stack([np.full((16, 16, 3), frame_value(t + offset, c), np.uint8) for t in range(steps)])
                  for c, camera in enumerate(CAMERAS)}
        frames |= {key: np.zeros((steps, 8 if "state" in key else 7), np.float32)
                   for key in ("observation.state", "action")}
        return EpisodeRecord(TASK, frames, {})

    features = {k: v for k, v in rollout_features(16, CAMERAS).items() if not k.startswith("policy.")}
    write_lerobot_dataset(tmp_path / "demos", [record(6, 0), record(5, 6)], features, fps=20)
    catalog = RolloutCatalog.scan([str(tmp_path)])
    second = catalog.load(catalog.rollouts[1].id)
    assert np.isnan(second.predicted_states).all() and np.isnan(second.latency_ms).all()  # no policy columns
    clip = catalog.video(second, CAMERAS[0])
    frames = [VideoDecoder().frame_at(clip, t / 20) for t in range(5)]
    assert not clip.is_relative_to(tmp_path)
    assert [round(f.mean() / 10) for f in frames] == [round(frame_value(t + 6, 0) / 10) for t in range(5)]


# -- what the app computes -----------------------------------------------------------------------------------


def test_success_table_counts_per_task_and_suite_and_condition(catalog):
    table = success_table(catalog.rollouts).set_index(["suite / task", "condition"])
    anticipatory, open_loop = "anticipatory · nominal · tiny", "open_loop · nominal · tiny"
    assert table.loc[("libero_object/0", anticipatory), "success rate"] == 1.0
    assert table.loc[("libero_object/3", anticipatory), "success rate"] == 0.0
    assert table.loc[("libero_object (all)", anticipatory), ["episodes", "successes"]].tolist() == [2, 1]
    assert table.loc[("libero_object (all)", open_loop), "mean steps"] == 15
    assert success_table([]).empty


def _traces(figure) -> dict:
    return {trace.name: trace for trace in figure.data}


def test_episode_figure_plots_the_recording_aligned_on_the_step(evaluation, catalog):
    episode = catalog.load(_id(catalog, evaluation[1]["open_loop"]))
    traces = _traces(episode_figure(episode, [0, 6], step=4))
    t = np.arange(episode.num_steps)
    assert np.array_equal(np.float32(traces["sent dyaw"].y), episode.actions[:, 5])
    assert np.array_equal(np.float32(traces["observed gripper_left"].y), episode.states[:, 6])
    assert np.array_equal(traces["predicted eef_x"].x, t + 1)  # the prediction of the state after action t
    assert np.array_equal(np.float32(traces["predicted eef_x"].y), episode.predicted_states[:, 0])
    np.testing.assert_allclose(traces["residual eef_x"].y, episode.states[:, 0] - episode.state_inputs[:, 0],
                               rtol=1e-6)
    assert "observed eef_y" not in traces  # only the chosen dimensions
    assert np.allclose(traces["latency"].y, episode.latency_ms)
    markers = [shape for shape in episode_figure(episode, [0], step=4).layout.shapes if shape.type == "line"]
    assert len(markers) == 4 and all(m.x0 == m.x1 == 4 for m in markers)


def test_missing_predictions_are_gaps_in_the_plot(evaluation, catalog):
    episode = catalog.load(_id(catalog, evaluation[1]["anticipatory"]))
    episode.predicted_states = episode.predicted_states.copy()
    episode.predicted_states[3] = np.nan
    trace = _traces(episode_figure(episode, [0], 0))["predicted eef_x"]
    assert trace.y[3] is None and trace.y[2] is not None


def test_comparison_figure_holds_both_rollouts(evaluation, catalog):
    a = catalog.load(_id(catalog, evaluation[1]["anticipatory"]))
    b = catalog.load(_id(catalog, evaluation[1]["open_loop"]))
    traces = _traces(comparison_figure(a, b, [2], step=11))
    assert np.array_equal(np.float32(traces["A observed eef_z"].y), a.states[:, 2])
    assert np.array_equal(np.float32(traces["B sent gripper"].y), b.actions[:, 6])
    assert len(traces["A latency"].y) == 12 and len(traces["B latency"].y) == 15


# -- the callbacks ---------------------------------------------------------------------------------------------


@pytest.fixture
def app(catalog):
    return ReplayApp(catalog)


def test_choosing_source_suite_and_task_narrows_down_to_episodes(evaluation, catalog, app):
    source = str(evaluation[0])
    text, _, table, suites = app.choose_source(source)
    assert "3 episodes" in text and suites.value == "libero_object" and len(table) == 3 + 2
    tasks = app.choose_suite(source, "libero_object")
    assert [value for _, value in tasks.choices] == [0, 3] and tasks.value == 0
    episodes = app.choose_task(source, "libero_object", 0)
    assert {value for _, value in episodes.choices} == {_id(catalog, evaluation[1][k])
                                                        for k in ("anticipatory", "open_loop")}
    with pytest.raises(RolloutError, match="source must be one of"):
        app.choose_source("/etc")


def test_show_episode_then_step_gives_videos_frames_and_figure(evaluation, catalog, app):
    rollout_id = _id(catalog, evaluation[1]["open_loop"])
    header, video_a, video_b, slider, names, frame_a, frame_b, figure, others = app.show_episode(rollout_id, [1])
    assert TASK in header and "open_loop" in header and "failure in 15 steps" in header
    assert video_a.name == "file-000.mp4" and CAMERAS[1] in str(video_b)
    assert (slider.maximum, slider.value) == (14, 0) and names.value == ["eef_y"]
    assert abs(int(frame_b.mean()) - frame_value(0, 1)) <= 3
    assert [value for _, value in others.choices] == [_id(catalog, evaluation[1]["anticipatory"])]
    frame_a, frame_b, figure = app.show_step(rollout_id, [1], 9)
    assert abs(int(frame_a.mean()) - frame_value(9, 0)) <= 3
    assert all(shape.x0 == 9 for shape in figure.layout.shapes)
    with pytest.raises(RolloutError, match="step must be in"):
        app.show_step(rollout_id, [1], 15)


def test_an_episode_without_video_shows_the_frames_the_policy_saw_each_until_the_next(tmp_path):
    folder = write_rollout(tmp_path / "rollouts", EpisodeJob("libero_object", 2, 5), steps=10, chunk_every=4)
    catalog = RolloutCatalog.scan([str(tmp_path)])
    rollout_id = catalog.rollouts[0].id
    episode = catalog.load(rollout_id)
    assert not episode.has_every_frame and list(np.flatnonzero(episode.observed)) == [0, 4, 8]
    for t, shown in ((0, 0), (3, 0), (4, 4), (7, 4), (9, 8)):  # lossless PNGs: the exact frame of that step
        assert episode.frame_step(t) == shown
        assert int(episode.frame(CAMERAS[1], t)[0, 0, 0]) == frame_value(shown, 1)
    assert episode.num_steps == 10 and np.isfinite(episode.policy_actions).all()  # every step's columns
    header, video_a, *_ = ReplayApp(catalog).show_episode(rollout_id, [0])
    assert "the 3 frames the policy looked at" in header
    frames = [VideoDecoder().frame_at(video_a, t / 20) for t in (2, 5)]  # the clip holds each frame until the next
    assert [abs(int(f.mean()) - frame_value(k, 0)) <= 3 for f, k in zip(frames, (0, 4))] == [True, True]
    assert LeRobotDataset(folder).features[CAMERAS[0]]["dtype"] == "image"


def test_comparison_shows_frames_of_both_and_refuses_unrelated_rollouts(evaluation, catalog, app):
    a, b = _id(catalog, evaluation[1]["anticipatory"]), _id(catalog, evaluation[1]["open_loop"])
    header, video_a, video_b, slider, frame_a, frame_b, figure = app.show_comparison(a, b, 1, [0])
    assert "**A**" in header and slider.maximum == 14 and CAMERAS[1] in str(video_a) and CAMERAS[1] in str(video_b)
    frame_a, frame_b, _ = app.compare_step(a, b, 0, [0], 13)
    assert abs(int(frame_a.mean()) - frame_value(11, 0)) <= 3  # A ended after 12 steps: its last frame
    assert abs(int(frame_b.mean()) - frame_value(13, 0)) <= 3
    with pytest.raises(RolloutError, match="not a rollout of the same task"):
        app.show_comparison(a, _id(catalog, evaluation[1]["other_task"]), 0, [0])
    with pytest.raises(RolloutError, match="camera index"):
        app.show_comparison(a, b, 2, [0])


def test_live_runs_need_a_runner(app):
    with pytest.raises(RolloutError, match="--model"):
        next(app.run_live("libero_object", 0, 0, "anticipatory", -1, 0, 0, 0, 0.0, 5))


# -- the live runner's plumbing ----------------------------------------------------------------------------------


def _progress(step: int, final: bool = False) -> LiveProgress:
    return LiveProgress(step, [], None, None, result=object() if final else None)


def test_the_viewer_skips_to_the_newest_report_but_never_past_the_last():
    reports = queue.Queue()
    for item in (_progress(1), _progress(2), _progress(3, final=True), None):
        reports.put(item)
    assert _newest(reports).step == 3 and _newest(reports) is None
    for item in (_progress(1), _progress(2), None):  # an episode that failed: its newest report, then the end
        reports.put(item)
    assert _newest(reports).step == 2 and _newest(reports) is None


def test_live_recordings_never_overwrite_each_other(tmp_path):
    first = _unused(tmp_path / "libero_object" / "task_00" / "trial_000")
    first.mkdir(parents=True)
    assert first.name == "run_000" and _unused(first.parent).name == "run_001"


def test_perturbations_are_labelled_in_a_few_words():
    from fasvla.libero.perturbations import Perturbation

    assert perturbation_label(Perturbation().describe()) == "nominal"
    assert perturbation_label(Perturbation(0.1, 2, 30, (0, 60, 0), 4).describe()) == \
        "push (0, 60, 0) N at step 30 for 4 steps, noise 0.1, delay 2 steps"
    assert perturbation_label("a recorder's own words") == "a recorder's own words"


# -- the command line and the Space --------------------------------------------------------------------------


def test_the_app_opens_on_the_shipped_example_unless_told_otherwise(monkeypatch):
    import app

    monkeypatch.delenv("FASVLA_ROLLOUTS", raising=False)
    assert app.parse_args([]).rollouts == [str(app.EXAMPLE_ROLLOUTS)]
    monkeypatch.setenv("FASVLA_ROLLOUTS", "someone/rollouts outputs/eval")
    assert app.parse_args([]).rollouts == ["someone/rollouts", "outputs/eval"]
    catalog = RolloutCatalog.scan([str(app.EXAMPLE_ROLLOUTS)])
    assert catalog.problems == {} and len(catalog.rollouts) == 4
    conditions = {(r.feedback_mode, r.perturbation == "nominal") for r in catalog.rollouts}
    assert conditions == {(m, p) for m in ("anticipatory", "open_loop") for p in (True, False)}
    assert sum(f.stat().st_size for f in app.EXAMPLE_ROLLOUTS.rglob("*") if f.is_file()) < 4e6


@pytest.mark.slow
def test_the_staged_space_replays_the_examples_without_torch(tmp_path):
    import subprocess
    import sys

    from scripts.deploy_space import stage

    folder = stage(tmp_path / "space")
    header = (folder / "README.md").read_text().split("---")[1]
    assert "sdk: gradio" in header and "app_file: app.py" in header
    assert "torch" not in (folder / "requirements.txt").read_text()
    check = ("import sys, app; blocks, paths = app.build(app.parse_args([])); "
             "assert 'torch' not in sys.modules, 'the replay app imported torch'; print(paths)")
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", check], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "4 rollouts in 1 sources" in done.stdout and str(folder / "examples") in done.stdout

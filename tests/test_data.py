"""LeRobot datasets (fasvla/data): reading v2.1 / v3.0 back exactly, training samples at episode boundaries, the
collator, normalisation statistics, the episode split, clear errors for broken datasets, DataLoader workers.

Every dataset is written once per module by `write_synthetic_dataset`. The expected values are regenerated
independently of the reader from the writer's seeding (`expected_episodes`), so a reader that shifts rows, drops an
episode or looks a video frame up at the wrong time fails against numbers it never produced.
"""

import copy
import gc
import json
import os
import re
import pickle
import shutil

import av
import numpy as np
import pytest
import torch

from fasvla.data.lerobot_dataset import DatasetError, LeRobotDataset
from fasvla.data.samples import (TrainingCollator, TrajectorySamples, cumulative_actions, episode_bounds,
                                 split_episodes)
from fasvla.data.stats import dataset_norm_stats, metadata_stats, pooled
from fasvla.data.synthetic import CAMERA_KEYS, TASKS, synthetic_episode, write_synthetic_dataset
from normalization_fasvla import normalization_tensors

STATE, ACTION = "observation.state", "action"
TOP, WRIST = CAMERA_KEYS  # top view of the table, wrist view centred on the agent
EPISODE_KWARGS = dict(num_episodes=5, min_length=8, max_length=14, image_size=32, fps=10, seed=3)
NUM_EPISODES, FPS = EPISODE_KWARGS["num_episodes"], EPISODE_KWARGS["fps"]
CONFIGS = {
    "v2.1-image": dict(version="v2.1", storage="image"),
    "v2.1-video-h264": dict(version="v2.1", storage="video", codec="libx264"),
    "v3.0-image": dict(version="v3.0", storage="image"),
    "v3.0-video-av1": dict(version="v3.0", storage="video", codec="libsvtav1"),
    "v3.0-video-h264-2perfile": dict(version="v3.0", storage="video", codec="libx264", episodes_per_file=2),
    "v3.0-video-av1-2perfile": dict(version="v3.0", storage="video", codec="libsvtav1", episodes_per_file=2),
    "v3.0-image-noquantiles": dict(version="v3.0", storage="image", with_quantiles=False),
}
VIDEO_CONFIGS = [name for name, config in CONFIGS.items() if config["storage"] == "video"]
IMAGE_CONFIGS = [name for name, config in CONFIGS.items() if config["storage"] == "image"]

# Lossy codecs: the writer's author measured a mean absolute error of ~2-3 / 255 per frame, up to ~7.5 for AV1 (CRF
# 30, preset 11) at 32 px, whose predicted frames are nearly copies of their keyframe. Bounds with margin:
MAX_FRAME_ERROR = 10.0  # per frame, mean over pixels and channels
MAX_MEAN_ERROR = 6.0  # mean over every frame of a camera


def expected_episodes(num_episodes, min_length, max_length, image_size, fps, seed) -> list[dict]:
    """The episodes `write_synthetic_dataset` writes, regenerated with its seeding: one generator for the whole
    dataset, each episode drawing its length then its content from it; task indices alternate."""
    rng = np.random.default_rng(seed)
    episodes = []
    for index in range(num_episodes):
        length = int(rng.integers(min_length, max_length + 1))
        episodes.append(synthetic_episode(rng, length, image_size, task_index=index % len(TASKS)))
    return episodes


@pytest.fixture(scope="module")
def expected():
    return expected_episodes(**EPISODE_KWARGS)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    """`roots(name)` -> the folder of the dataset CONFIGS[name], written on first use."""
    base, written = tmp_path_factory.mktemp("datasets"), {}

    def get(name):
        if name not in written:
            written[name] = write_synthetic_dataset(base / name, **CONFIGS[name], **EPISODE_KWARGS)
        return written[name]

    return get


@pytest.fixture
def broken_copy(roots, tmp_path):
    """`broken_copy(name)` -> a fresh copy of a dataset that the test may damage."""
    def copy(name):
        return shutil.copytree(roots(name), tmp_path / name)

    return copy


def lengths_of(expected):
    return [len(episode["state"]) for episode in expected]


def starts_of(expected):
    return np.cumsum([0] + lengths_of(expected))[:-1].tolist()


def camera_array(episode, camera):
    return episode["image"] if camera == TOP else episode["image2"]


def video_file_and_position(root, name, camera, episode, frame, lengths):
    """Where frame `frame` of `episode` lies: the mp4 (path templates of the format spec) and the frame's position in
    it, the frames of the file's earlier episodes coming first (LeRobot v3.0 concatenates episodes)."""
    config = CONFIGS[name]
    if config["version"] == "v2.1":
        return root / f"videos/chunk-000/{camera}/episode_{episode:06d}.mp4", frame
    per_file = config.get("episodes_per_file") or NUM_EPISODES
    file, first = divmod(episode, per_file)
    return root / f"videos/{camera}/chunk-000/file-{file:03d}.mp4", sum(lengths[episode - first:episode]) + frame


def all_frames(path):
    """Every frame of an mp4 in decoding order, (T, H, W, 3) uint8: the reference for the reader's seek."""
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def mean_abs(a, b):
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


# ---------------------------------------------------------------------------------------------------------------
# Round trip: the reader returns what the writer wrote
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_numeric_columns_episodes_and_tasks_round_trip(roots, expected, name):
    dataset = LeRobotDataset.open(str(roots(name)))
    lengths = lengths_of(expected)
    assert dataset.version == CONFIGS[name]["version"]
    assert dataset.fps == FPS and dataset.num_frames == sum(lengths)
    assert dataset.camera_keys == list(CAMERA_KEYS)
    np.testing.assert_array_equal(dataset.column(STATE), np.concatenate([e["state"] for e in expected]))
    np.testing.assert_array_equal(dataset.column(ACTION), np.concatenate([e["action"] for e in expected]))
    assert dataset.column(STATE).dtype == np.float32 and dataset.column(ACTION).dtype == np.float32
    frame_index = np.concatenate([np.arange(length) for length in lengths])
    np.testing.assert_array_equal(dataset.column("frame_index"), frame_index)
    np.testing.assert_array_equal(dataset.column("timestamp"), (frame_index / FPS).astype(np.float32))
    np.testing.assert_array_equal(dataset.column("index"), np.arange(sum(lengths)))
    np.testing.assert_array_equal(dataset.column("episode_index"), np.repeat(np.arange(NUM_EPISODES), lengths))
    assert [e.index for e in dataset.episodes] == list(range(NUM_EPISODES))
    assert [e.start for e in dataset.episodes] == starts_of(expected)
    assert [e.length for e in dataset.episodes] == lengths
    assert [e.tasks for e in dataset.episodes] == [[TASKS[i % 2]] for i in range(NUM_EPISODES)]
    row_tasks = [dataset.task(row) for row in range(dataset.num_frames)]
    assert row_tasks == [TASKS[i % 2] for i, length in enumerate(lengths) for _ in range(length)]


@pytest.mark.parametrize("name", IMAGE_CONFIGS)
def test_png_images_round_trip_exactly(roots, expected, name):
    dataset = LeRobotDataset(roots(name))
    for camera in CAMERA_KEYS:
        read = np.stack([dataset.image(camera, row) for row in range(dataset.num_frames)])
        written = np.concatenate([camera_array(e, camera) for e in expected])
        assert read.dtype == np.uint8
        np.testing.assert_array_equal(read, written)


@pytest.mark.parametrize("name", VIDEO_CONFIGS)
def test_video_frames_are_the_written_frames_within_codec_error(roots, expected, name):
    """Every frame decodes close to the frame written for its row; and it is exactly the mp4's frame at the row's
    position (frames before it in the file, as LeRobot concatenates episodes), so the timestamp lookup, including the
    file's offset for the second episode of a v3.0 file, picks the right frame and not a neighbour."""
    root, lengths = roots(name), lengths_of(expected)
    dataset = LeRobotDataset(root)
    decoded_files = {}
    for camera in CAMERA_KEYS:
        errors = []
        for episode, (start, length) in enumerate(zip(starts_of(expected), lengths)):
            written = camera_array(expected[episode], camera)
            for frame in range(length):
                read = dataset.image(camera, start + frame)
                assert read.shape == written[frame].shape and read.dtype == np.uint8
                errors.append(mean_abs(read, written[frame]))
                path, position = video_file_and_position(root, name, camera, episode, frame, lengths)
                if path not in decoded_files:
                    decoded_files[path] = all_frames(path)
                np.testing.assert_array_equal(read, decoded_files[path][position],
                                              err_msg=f"{camera} episode {episode} frame {frame}")
        assert max(errors) < MAX_FRAME_ERROR, (camera, max(errors))
        assert np.mean(errors) < MAX_MEAN_ERROR, (camera, np.mean(errors))
    # Every file holds exactly the frames of its episodes: no frame dropped or duplicated by the writer.
    per_file = {}
    for episode, length in enumerate(lengths):
        path, _ = video_file_and_position(root, name, WRIST, episode, 0, lengths)
        per_file[path] = per_file.get(path, 0) + length
    assert {path: len(decoded_files[path]) for path in per_file} == per_file
    expected_files = NUM_EPISODES if CONFIGS[name]["version"] == "v2.1" else \
        -(-NUM_EPISODES // (CONFIGS[name].get("episodes_per_file") or NUM_EPISODES))
    assert len(per_file) == expected_files


@pytest.mark.parametrize("codec", ["libsvtav1", "libx264"])
def test_encoding_leaves_the_threads_scheduling_as_it_was(tmp_path, codec):
    """Run as root, SVT-AV1 made the encoding thread real-time (SCHED_FIFO 99) for good: every later busy loop of the
    process starved the other processes of its core (a DataLoader's workers never ran)."""
    from fasvla.data.video import write_video

    before = os.sched_getscheduler(0), os.sched_getparam(0)
    write_video(tmp_path / "clip.mp4", np.zeros((3, 32, 32, 3), np.uint8), fps=10, codec=codec)
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before


@pytest.mark.parametrize("name", [n for n in VIDEO_CONFIGS if CONFIGS[n]["codec"] == "libx264"])
def test_h264_frames_are_much_closer_to_their_own_frame_than_to_a_neighbour(roots, expected, name):
    """Wrist view (the scene moves under the camera): wherever the written frame differs clearly from the previous
    or next frame of its episode, the decoded frame is much closer to its own. (AV1 at CRF 30 on 32 px images is left
    out: its predicted frames are nearly copies of their keyframe, so this does not hold there; the exact comparison
    with the decoded file above covers AV1.)"""
    dataset = LeRobotDataset(roots(name))
    compared = 0
    for start, episode in zip(starts_of(expected), expected):
        written = episode["image2"]
        for frame in range(len(written)):
            read = dataset.image(WRIST, start + frame)
            for neighbour in (frame - 1, frame + 1):
                if 0 <= neighbour < len(written) and mean_abs(written[frame], written[neighbour]) > 4.0:
                    assert mean_abs(read, written[frame]) < 0.8 * mean_abs(read, written[neighbour]), (start, frame)
                    compared += 1
    assert compared >= 10  # the property was checked on many frames, including the first frames of episodes


# ---------------------------------------------------------------------------------------------------------------
# Training samples
# ---------------------------------------------------------------------------------------------------------------

CHUNK = 4


@pytest.fixture(scope="module")
def image_dataset(roots):
    return LeRobotDataset(roots("v2.1-image"))


@pytest.fixture(scope="module")
def samples(image_dataset):
    return TrajectorySamples(image_dataset, CHUNK, list(CAMERA_KEYS), STATE, ACTION)


def test_samples_at_the_end_of_an_episode_pad_with_its_last_frame(samples, expected):
    """Hand-written table for the last frames of episode 0 (length L, rows 0..L-1) and the first frame of episode 1:
    action k is a_{t+k}, padded (and equal to a_{L-1}) iff t + k >= L; future state k is s_{t+k+1}, padded (equal to
    s_{L-1}) iff t + k + 1 >= L."""
    a0, s0 = expected[0]["action"], expected[0]["state"]
    a1, s1 = expected[1]["action"], expected[1]["state"]
    last = len(s0) - 1
    F, T = False, True
    cases = {  # row: (actions, action_is_pad, future_states, future_state_is_pad)
        last - 2: ([a0[last - 2], a0[last - 1], a0[last], a0[last]], [F, F, F, T],
                   [s0[last - 1], s0[last], s0[last], s0[last]], [F, F, T, T]),
        last - 1: ([a0[last - 1], a0[last], a0[last], a0[last]], [F, F, T, T],
                   [s0[last], s0[last], s0[last], s0[last]], [F, T, T, T]),
        last: ([a0[last], a0[last], a0[last], a0[last]], [F, T, T, T],
               [s0[last], s0[last], s0[last], s0[last]], [T, T, T, T]),
        last + 1: ([a1[0], a1[1], a1[2], a1[3]], [F, F, F, F], [s1[1], s1[2], s1[3], s1[4]], [F, F, F, F]),
    }
    for row, (actions, action_is_pad, future_states, future_state_is_pad) in cases.items():
        sample = samples[row]
        np.testing.assert_array_equal(sample["actions"], np.stack(actions), err_msg=f"row {row}")
        np.testing.assert_array_equal(sample["action_is_pad"], action_is_pad, err_msg=f"row {row}")
        np.testing.assert_array_equal(sample["future_states"], np.stack(future_states), err_msg=f"row {row}")
        np.testing.assert_array_equal(sample["future_state_is_pad"], future_state_is_pad, err_msg=f"row {row}")
        episode = expected[0] if row <= last else expected[1]
        np.testing.assert_array_equal(sample["state"], episode["state"][row if row <= last else 0])
        assert sample["action_is_pad"].dtype == bool and sample["future_state_is_pad"].dtype == bool


def test_sample_fields_follow_the_dataset(samples, image_dataset, expected):
    for row in (0, 5, starts_of(expected)[3] + 2, image_dataset.num_frames - 1):
        sample = samples[row]
        episode = int(np.searchsorted(starts_of(expected), row, side="right")) - 1
        assert sample["task"] == TASKS[episode % 2]
        assert len(sample["images"]) == len(CAMERA_KEYS)
        for camera, image in zip(CAMERA_KEYS, sample["images"]):
            np.testing.assert_array_equal(image, image_dataset.image(camera, row))
        assert sample["state"].dtype == np.float32 and sample["actions"].dtype == np.float32


def test_delayed_samples_see_frame_t_minus_d_and_start_their_trajectory_at_t(image_dataset, samples):
    """max_observation_delay 3: images and prefix state from t - d, d in {0..min(3, t - episode start)}, every
    value drawn; everything else (trajectory state, actions, cumulative action) still frame t's."""
    delayed = TrajectorySamples(image_dataset, CHUNK, list(CAMERA_KEYS), STATE, ACTION, max_observation_delay=3,
                                seed=1)
    states, seen = image_dataset.column(STATE), set()
    for row in range(image_dataset.num_frames):
        sample, plain = delayed[row], samples[row]
        observed = int(np.flatnonzero((states == sample["state"]).all(axis=1))[0])
        d = row - observed
        assert 0 <= d <= min(3, row - int(delayed.starts[row])), row
        seen.add(d)
        for camera, image in zip(CAMERA_KEYS, sample["images"]):
            np.testing.assert_array_equal(image, image_dataset.image(camera, observed))
        np.testing.assert_array_equal(sample["trajectory_state"], plain["state"])
        for key in ("actions", "future_states", "cumulative_action", "previous_action"):
            np.testing.assert_array_equal(sample[key], plain[key])
    assert seen == {0, 1, 2, 3}


def test_observation_delays_are_a_function_of_seed_epoch_and_frame(image_dataset):
    def delays(seed, epoch):
        made = TrajectorySamples(image_dataset, CHUNK, list(CAMERA_KEYS), STATE, ACTION, max_observation_delay=3,
                                 seed=seed)
        made.set_epoch(epoch)
        return [made.observation_delay(t) for t in range(image_dataset.num_frames)]

    assert delays(0, 1) == delays(0, 1)  # another instance (a loader worker, a resumed run): the same draws
    assert delays(0, 1) != delays(0, 2) and delays(0, 1) != delays(1, 1)
    with pytest.raises(ValueError, match="max_observation_delay must be an integer >= 0, got -1"):
        TrajectorySamples(image_dataset, CHUNK, list(CAMERA_KEYS), STATE, ACTION, max_observation_delay=-1)


def test_camera_order_of_samples_is_the_requested_order(image_dataset):
    swapped = TrajectorySamples(image_dataset, CHUNK, [WRIST, TOP], STATE, ACTION)[3]
    np.testing.assert_array_equal(swapped["images"][0], image_dataset.image(WRIST, 3))
    np.testing.assert_array_equal(swapped["images"][1], image_dataset.image(TOP, 3))


def test_cumulative_action_sums_the_episode_actions_before_t(samples, expected):
    """C_t against a plain loop over each episode's own actions, 0 at every episode's first frame (episodes 1 and
    more start with a dataset-wide running sum far from 0, so a global cumsum would show)."""
    for start, episode in zip(starts_of(expected), expected):
        for frame in range(len(episode["action"])):
            total = np.zeros(episode["action"].shape[1])
            for earlier in range(frame):
                total += episode["action"][earlier].astype(np.float64)
            cumulative = samples[start + frame]["cumulative_action"]
            assert cumulative.shape == (7,)
            np.testing.assert_allclose(cumulative, total, rtol=1e-6, atol=1e-6, err_msg=f"row {start + frame}")
        assert np.all(samples[start]["cumulative_action"] == 0)
    assert np.abs(expected[0]["action"].sum(0)).max() > 0.1  # episode 1 starts far from a global running sum


def test_cumulative_actions_of_a_hand_made_dataset():
    actions = np.array([[1.0, -1.0], [2.0, 0.5], [3.0, 0.0], [10.0, 4.0], [20.0, -4.0], [0.5, 0.25]])
    starts = np.array([0, 0, 0, 3, 3, 3])  # two episodes of three frames
    expected = np.array([[0.0, 0.0], [1.0, -1.0], [3.0, -0.5], [0.0, 0.0], [10.0, 4.0], [30.0, 0.0]])
    result = cumulative_actions(actions, starts)
    assert result.dtype == np.float64
    np.testing.assert_array_equal(result, expected)


def test_episode_bounds_give_each_row_its_episode(image_dataset, expected):
    starts, ends = episode_bounds(image_dataset)
    lengths = lengths_of(expected)
    first = starts_of(expected)
    np.testing.assert_array_equal(starts, np.repeat(first, lengths))
    np.testing.assert_array_equal(ends, np.repeat(np.add(first, lengths), lengths))


def test_samples_restricted_to_episodes(image_dataset, expected):
    subset = TrajectorySamples(image_dataset, CHUNK, [TOP], STATE, ACTION, episodes=[1, 3])
    assert len(subset) == len(expected[1]["state"]) + len(expected[3]["state"])
    states = np.stack([subset[i]["state"] for i in range(len(subset))])
    np.testing.assert_array_equal(states, np.concatenate([expected[1]["state"], expected[3]["state"]]))
    assert {subset[i]["task"] for i in range(len(subset))} == {TASKS[1]}
    # The first sample of episode 3 in the subset starts a fresh cumulative action and pads against episode 3's end.
    first_of_3 = len(expected[1]["state"])
    assert np.all(subset[first_of_3]["cumulative_action"] == 0)
    np.testing.assert_array_equal(subset[len(subset) - 1]["actions"], np.repeat(expected[3]["action"][-1:], CHUNK, 0))
    assert len(TrajectorySamples(image_dataset, CHUNK, [TOP], STATE, ACTION, episodes=[])) == 0


# ---------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------


def test_collator_batches_samples_for_the_model(joint, samples, expected):
    model, processor = joint
    assert model.config.chunk_size == 8
    chunk_samples = TrajectorySamples(samples.dataset, model.config.chunk_size, list(CAMERA_KEYS), STATE, ACTION)
    last = len(expected[0]["state"]) - 1
    items = [chunk_samples[row] for row in (last - 2, last, last + 1)]  # padded chunks, two tasks
    batch = TrainingCollator(processor)(items)

    size = processor.image_processor.image_size
    assert batch["pixel_values"].shape == (3, 2, 3, size, size)
    assert batch["pixel_values"].min() >= -1 and batch["pixel_values"].max() <= 1
    assert batch["pixel_values"].std() > 0.05  # real images, not a constant
    for b, item in enumerate(items):  # each element is the processor's output for that sample alone
        alone = processor(images=[image[None] for image in item["images"]], text=item["task"], state=item["state"])
        torch.testing.assert_close(batch["pixel_values"][b], alone["pixel_values"][0], rtol=0, atol=1e-6)
        mask = batch["attention_mask"][b].bool()
        assert torch.equal(batch["input_ids"][b][mask], alone["input_ids"][0][alone["attention_mask"][0].bool()])
    assert not torch.equal(batch["input_ids"][0], batch["input_ids"][2])  # red vs blue target
    assert torch.equal(batch["state"], torch.from_numpy(np.stack([item["state"] for item in items])))
    for key in TrainingCollator.TARGETS:
        assert torch.equal(batch[key], torch.from_numpy(np.stack([item[key] for item in items]))), key
    assert batch["action_is_pad"].dtype == torch.bool and batch["action_is_pad"][1, 1:].all()

    with torch.no_grad():
        output = model(**batch)
    assert output.loss.ndim == 0 and torch.isfinite(output.loss)


# ---------------------------------------------------------------------------------------------------------------
# Normalisation statistics
# ---------------------------------------------------------------------------------------------------------------


def columns_of(expected):
    return {STATE: np.concatenate([e["state"] for e in expected]).astype(np.float64),
            ACTION: np.concatenate([e["action"] for e in expected]).astype(np.float64)}


def test_v30_stats_come_from_metadata_but_the_quantiles_from_the_data(broken_copy, expected):
    root = broken_copy("v3.0-image")
    dataset = LeRobotDataset(root)
    stats, computed = dataset_norm_stats(dataset, STATE, ACTION)
    assert computed == [f"{STATE}.q01", f"{STATE}.q99", f"{ACTION}.q01", f"{ACTION}.q99"]
    columns = columns_of(expected)
    for name, key in (("state", STATE), ("action", ACTION)):
        np.testing.assert_allclose(stats[name]["mean"], columns[key].mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(stats[name]["q01"], np.quantile(columns[key], 0.01, axis=0), rtol=0, atol=1e-12)
        np.testing.assert_allclose(stats[name]["q99"], np.quantile(columns[key], 0.99, axis=0), rtol=0, atol=1e-12)
    # mean/std/min/max are those of meta/stats.json, the quantiles never (LeRobot averages per-episode quantiles)
    stats_file = root / "meta" / "stats.json"
    raw = json.loads(stats_file.read_text())
    raw[ACTION]["q99"] = [100.0 + i for i in range(7)]
    raw[STATE]["std"] = [7.0] * 8
    stats_file.write_text(json.dumps(raw))
    changed, _ = dataset_norm_stats(LeRobotDataset(root), STATE, ACTION)
    assert changed["action"]["q99"] == stats["action"]["q99"] and changed["state"]["std"] == [7.0] * 8
    assert changed["state"]["mean"] == stats["state"]["mean"]


def test_one_content_as_v21_and_as_v30_gets_one_action_scale(tmp_path, joint):
    """The same episodes written in both layouts, the v3.0 stats.json holding LeRobot 0.4's mean of per-episode
    quantiles: the scales a model is configured with agree (they came out 2.6x apart on LIBERO before)."""
    from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset

    rng = np.random.default_rng(0)
    records = [EpisodeRecord("push the block", {STATE: rng.normal(size=(n, 8)).astype(np.float32),
                                                ACTION: (rng.standard_t(2, size=(n, 7)) * 0.1).astype(np.float32)})
               for n in (30, 45, 12)]
    features = {key: {"dtype": "float32", "shape": [d], "names": None} for key, d in ((STATE, 8), (ACTION, 7))}
    scales = {}
    for version in ("v2.1", "v3.0"):
        root = write_lerobot_dataset(tmp_path / version, records, features, fps=10, version=version)
        if version == "v3.0":  # as LeRobot 0.4.x aggregates them: the mean of the episodes' own quantiles
            raw = json.loads((root / "meta/stats.json").read_text())
            per_episode = [np.quantile(r.frames[ACTION].astype(np.float64), [0.01, 0.99], axis=0) for r in records]
            raw[ACTION]["q01"], raw[ACTION]["q99"] = np.mean(per_episode, axis=0).tolist()
            (root / "meta/stats.json").write_text(json.dumps(raw))
        stats, _ = dataset_norm_stats(LeRobotDataset(root), STATE, ACTION)
        config = copy.deepcopy(joint[0].config)  # a streaming model: the action scale max(|q01|, |q99|)
        config.norm_stats = stats
        scales[version] = normalization_tensors(config, "action", 7)["in_scale"]
    torch.testing.assert_close(scales["v2.1"], scales["v3.0"], rtol=0, atol=0)
    metadata_scale = np.abs(np.mean(per_episode, axis=0)).max(axis=0) + 1e-6
    assert np.abs(metadata_scale - scales["v3.0"].numpy()).max() > 0.01  # the metadata's would have differed


def test_v30_stats_without_quantiles_compute_q01_q99_from_the_data(roots, expected):
    dataset = LeRobotDataset(roots("v3.0-image-noquantiles"))
    assert "q01" not in metadata_stats(dataset)[STATE]
    stats, computed = dataset_norm_stats(dataset, STATE, ACTION)
    assert computed == [f"{STATE}.q01", f"{STATE}.q99", f"{ACTION}.q01", f"{ACTION}.q99"]
    columns = columns_of(expected)
    for name, key in (("state", STATE), ("action", ACTION)):
        assert stats[name]["q01"] == np.quantile(columns[key], 0.01, axis=0).tolist()
        assert stats[name]["q99"] == np.quantile(columns[key], 0.99, axis=0).tolist()
        assert np.all(np.array(stats[name]["q01"]) < np.array(stats[name]["q99"]))
        np.testing.assert_allclose(stats[name]["std"], columns[key].std(0), rtol=1e-12, atol=1e-12)


def test_v21_pooled_episode_stats_equal_the_stats_of_the_whole_column(roots, expected):
    """v2.1 keeps per-episode mean/std/min/max/count only; pooling them (the variance of a union identity) must give
    the statistics of all frames together; the quantiles are computed."""
    dataset = LeRobotDataset(roots("v2.1-image"))
    stats, computed = dataset_norm_stats(dataset, STATE, ACTION)
    assert computed == [f"{STATE}.q01", f"{STATE}.q99", f"{ACTION}.q01", f"{ACTION}.q99"]
    columns = columns_of(expected)
    for name, key in (("state", STATE), ("action", ACTION)):
        np.testing.assert_allclose(stats[name]["mean"], columns[key].mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(stats[name]["std"], columns[key].std(0), rtol=0, atol=1e-6)
        assert stats[name]["min"] == columns[key].min(0).tolist()
        assert stats[name]["max"] == columns[key].max(0).tolist()
        assert stats[name]["q01"] == np.quantile(columns[key], 0.01, axis=0).tolist()
    # Between-episode spread matters: the pooled std exceeds the mean of the per-episode stds somewhere.
    per_episode = np.mean([e["state"].astype(np.float64).std(0) for e in expected], axis=0)
    assert np.any(np.array(stats["state"]["std"]) > per_episode + 1e-3)


def test_pooled_on_a_hand_made_example():
    """Episode 1 holds x = {0, 2} (mean 1, std 1), episode 2 holds x = {6} (mean 6, std 0); their union {0, 2, 6}
    has mean 8/3 and variance ((8/3)^2 + (2/3)^2 + (10/3)^2) / 3 = 56/9. Second dimension: {1, 1} and {4}."""
    per_episode = [
        {"mean": [1.0, 1.0], "std": [1.0, 0.0], "min": [0.0, 1.0], "max": [2.0, 1.0], "count": [2]},
        {"mean": [6.0, 4.0], "std": [0.0, 0.0], "min": [6.0, 4.0], "max": [6.0, 4.0], "count": [1]},
    ]
    result = pooled(per_episode)
    np.testing.assert_allclose(result["mean"], [8 / 3, 2.0], rtol=1e-15)
    np.testing.assert_allclose(result["std"], [np.sqrt(56) / 3, np.sqrt(2.0)], rtol=1e-15)
    np.testing.assert_array_equal(result["min"], [0.0, 1.0])
    np.testing.assert_array_equal(result["max"], [6.0, 4.0])
    np.testing.assert_array_equal(result["count"], [3])
    np.testing.assert_allclose(result["std"][0], np.std([0.0, 2.0, 6.0]), rtol=1e-15)


# ---------------------------------------------------------------------------------------------------------------
# Train / validation split
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_episodes, fraction, validation_size", [
    (10, 0.2, 2), (10, 0.0, 0), (2, 0.01, 1), (7, 0.5, 4), (1, 0.5, 0), (50, 0.1, 5),
])
def test_split_episodes_is_a_disjoint_cover(num_episodes, fraction, validation_size):
    train, validation = split_episodes(num_episodes, fraction, seed=4)
    assert len(validation) == validation_size
    assert set(train).isdisjoint(validation)
    assert sorted(train + validation) == list(range(num_episodes))
    assert train == sorted(train) and validation == sorted(validation)
    assert all(isinstance(i, int) for i in train + validation)
    assert split_episodes(num_episodes, fraction, seed=4) == (train, validation)


def test_split_episodes_depends_on_the_seed():
    splits = {tuple(split_episodes(20, 0.25, seed)[1]) for seed in range(8)}
    assert len(splits) > 1


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_split_episodes_rejects_a_fraction_outside_0_1(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        split_episodes(10, fraction, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# Broken datasets fail with a clear DatasetError
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v2.1-image", "v2.1-video-h264", "v3.0-video-h264-2perfile"])
def test_intact_datasets_pass_the_check(roots, name):
    LeRobotDataset(roots(name)).check(list(CAMERA_KEYS), STATE, ACTION)


@pytest.mark.parametrize("name, video", [
    ("v2.1-video-h264", "videos/chunk-000/observation.images.image2/episode_000003.mp4"),
    ("v3.0-video-h264-2perfile", "videos/observation.images.image2/chunk-000/file-001.mp4"),
])
def test_missing_video_file(broken_copy, name, video):
    root = broken_copy(name)
    (root / video).unlink()
    dataset = LeRobotDataset(root)
    dataset.check([TOP], STATE, ACTION)  # the other camera is not needed
    with pytest.raises(DatasetError, match=r"missing.*" + re.escape(video.split("/")[-1])):
        dataset.check(list(CAMERA_KEYS), STATE, ACTION)


def test_missing_data_file_v21(broken_copy):
    root = broken_copy("v2.1-image")
    (root / "data/chunk-000/episode_000002.parquet").unlink()
    with pytest.raises(DatasetError, match=r"missing.*episode_000002\.parquet"):
        LeRobotDataset(root).check(list(CAMERA_KEYS), STATE, ACTION)


def test_missing_data_file_v30(broken_copy):
    root = broken_copy("v3.0-video-h264-2perfile")
    (root / "data/chunk-000/file-001.parquet").unlink()
    with pytest.raises(DatasetError, match=r"missing, e\.g\. \[.*data/chunk-000/file-001\.parquet"):
        LeRobotDataset(root).check(list(CAMERA_KEYS), STATE, ACTION)
    with pytest.raises(DatasetError, match=r"file-001\.parquet"):  # never silently the wrong rows
        LeRobotDataset(root).column(STATE)


@pytest.mark.parametrize("name", ["v2.1-image", "v3.0-video-av1"])
def test_feature_shape_disagreeing_with_info_json(broken_copy, name):
    root = broken_copy(name)
    info_file = root / "meta/info.json"
    info = json.loads(info_file.read_text())
    info["features"][STATE]["shape"] = [9]
    info_file.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"observation\.state.*\(8,\).*\[9\]"):
        LeRobotDataset(root).check(list(CAMERA_KEYS), STATE, ACTION)


def test_camera_shape_disagreeing_with_info_json(broken_copy):
    root = broken_copy("v3.0-video-av1")
    info_file = root / "meta/info.json"
    info = json.loads(info_file.read_text())
    info["features"][WRIST]["shape"] = [64, 64, 3]
    info_file.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"observation\.images\.image2.*\(32, 32, 3\)"):
        LeRobotDataset(root).check(list(CAMERA_KEYS), STATE, ACTION)


def test_unknown_camera(roots):
    with pytest.raises(DatasetError, match=r"observation\.images\.wrist"):
        LeRobotDataset(roots("v2.1-image")).check([TOP, "observation.images.wrist"], STATE, ACTION)


def test_unknown_feature(roots):
    with pytest.raises(DatasetError, match="observation.velocity"):
        LeRobotDataset(roots("v2.1-image")).column("observation.velocity")


@pytest.mark.parametrize("name", ["v2.1-image", "v3.0-image"])
def test_missing_info_json(broken_copy, name):
    root = broken_copy(name)
    (root / "meta/info.json").unlink()
    with pytest.raises(DatasetError, match=r"info\.json is missing"):
        LeRobotDataset.open(str(root))


@pytest.mark.parametrize("name, tasks_file", [("v2.1-image", "tasks.jsonl"), ("v3.0-image", "tasks.parquet")])
def test_missing_tasks_file(broken_copy, name, tasks_file):
    root = broken_copy(name)
    (root / "meta" / tasks_file).unlink()
    with pytest.raises(DatasetError, match=tasks_file.replace(".", r"\.") + " is missing"):
        LeRobotDataset(root)


def test_unsupported_codebase_version(broken_copy):
    root = broken_copy("v3.0-image")
    info_file = root / "meta/info.json"
    info = json.loads(info_file.read_text())
    info["codebase_version"] = "v1.6"
    info_file.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="v1.6"):
        LeRobotDataset(root)


# ---------------------------------------------------------------------------------------------------------------
# DataLoader workers
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v2.1-image", "v3.0-video-h264-2perfile"])
def test_dataset_survives_pickling_after_use(roots, name):
    dataset = LeRobotDataset(roots(name))
    rows = [0, 13, dataset.num_frames - 1]
    before = [dataset.image(WRIST, row) for row in rows]  # opens image tables / video files
    copy = pickle.loads(pickle.dumps(dataset))
    for row, image in zip(rows, before):
        np.testing.assert_array_equal(copy.image(WRIST, row), image)
    np.testing.assert_array_equal(copy.column(STATE), dataset.column(STATE))


def loader_batches(samples, processor, num_workers, batch_size=4, collect_garbage=False):
    """Every batch of a DataLoader over `samples`, in order. `collect_garbage` runs the garbage collector in the worker
    before each batch, as Python eventually does by itself, so that the outcome does not depend on its timing. A
    worker that dies or hangs fails the test after `timeout` s instead of hanging the suite."""
    collator = TrainingCollator(processor)

    def collate(items):
        if collect_garbage:
            gc.collect()
        return collator(items)

    loader = torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate, timeout=20 if num_workers else 0)
    return list(loader)


def assert_same_batches(batches, others):
    assert len(batches) == len(others)
    for one, other in zip(batches, others):
        assert one.keys() == other.keys()
        for key in one:
            assert torch.equal(one[key], other[key]), key


def test_dataloader_workers_yield_the_same_first_batch(joint, roots):
    _, processor = joint
    dataset = LeRobotDataset(roots("v3.0-video-h264-2perfile"))
    samples = TrajectorySamples(dataset, 8, list(CAMERA_KEYS), STATE, ACTION)
    parallel = loader_batches(samples, processor, num_workers=2)
    serial = loader_batches(samples, processor, num_workers=0)
    assert len(serial) == -(-len(samples) // 4)
    assert_same_batches(serial[:1], parallel[:1])
    assert not torch.equal(serial[0]["pixel_values"], serial[1]["pixel_values"])


def test_dataloader_workers_after_the_parent_read_videos(joint, roots):
    """The training flow: `check` (and here a whole serial pass) decodes frames in the main process, so its video
    files are open when the DataLoader forks its workers. The workers must yield the same batches, all of them (every
    worker opens every file of both cameras, more than the decoder keeps open), whenever the garbage collector runs."""
    _, processor = joint
    dataset = LeRobotDataset(roots("v3.0-video-h264-2perfile"))
    dataset.check(list(CAMERA_KEYS), STATE, ACTION)
    samples = TrajectorySamples(dataset, 8, list(CAMERA_KEYS), STATE, ACTION)
    serial = loader_batches(samples, processor, num_workers=0)
    parallel = loader_batches(samples, processor, num_workers=2, collect_garbage=True)
    assert_same_batches(serial, parallel)


def test_a_forked_child_never_frees_the_files_of_decoders_that_were_garbage_at_the_fork(roots):
    """A decoder left in a reference cycle (garbage the collector has not reached yet) still holds open files with
    decoder threads when a DataLoader forks; the child's collector must not close them (FFmpeg would wait for the
    threads forever or crash), and the child decodes with files of its own."""
    import os
    import time

    from fasvla.data.video import VideoDecoder

    dataset = LeRobotDataset(roots("v3.0-video-h264-2perfile"))
    path, offset = dataset.episodes[0].videos[CAMERA_KEYS[0]]
    expected = VideoDecoder().frame_at(path, offset)
    gc.disable()
    try:
        garbage = VideoDecoder()
        garbage.frame_at(path, offset)
        garbage.cycle = garbage
        del garbage
        pid = os.fork()
        if pid == 0:  # the child: collect the garbage, then decode
            try:
                gc.collect()
                os._exit(0 if np.array_equal(VideoDecoder().frame_at(path, offset), expected) else 1)
            except BaseException:
                os._exit(2)
    finally:
        gc.enable()
    deadline = time.monotonic() + 30
    while (status := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if status[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung freeing files it inherited")
    assert os.WIFEXITED(status[1]) and os.WEXITSTATUS(status[1]) == 0, f"child status {status[1]}"


def test_an_unreachable_hub_dataset_is_refused_with_the_reason(monkeypatch):
    """Offline (HF_HUB_OFFLINE=1, as in the tests), a Hub id that is not in the cache cannot be fetched."""
    with pytest.raises(DatasetError, match="neither a folder nor a reachable Hub dataset"):
        LeRobotDataset.open("nobody-here/no-such-dataset")


def test_image_stats_accumulated_as_histograms_equal_those_of_the_sampled_pixels(tmp_path):
    from fasvla.data.writer import EpisodeRecord, _sample_indices, write_lerobot_dataset

    rng = np.random.default_rng(0)
    images = [rng.integers(10, 240, (length, 8, 8, 3), dtype=np.uint8) for length in (7, 130)]
    records = [EpisodeRecord("task", {"camera": frames, "x": rng.normal(size=(len(frames), 2)).astype(np.float32)})
               for frames in images]
    features = {"camera": {"dtype": "image", "shape": [8, 8, 3], "names": ["height", "width", "channels"]},
                "x": {"dtype": "float32", "shape": [2], "names": None}}
    write_lerobot_dataset(tmp_path, records, features, fps=10)
    stats = json.loads((tmp_path / "meta" / "stats.json").read_text())["camera"]
    sampled = [frames[_sample_indices(len(frames))] for frames in images]  # LeRobot's frame sample
    pixels = np.concatenate(sampled).reshape(-1, 3) / 255.0  # (pixels, 3)
    expected = {"min": pixels.min(0), "max": pixels.max(0), "mean": pixels.mean(0), "std": pixels.std(0),
                **{name: np.quantile(pixels, q, axis=0) for name, q in (("q01", 0.01), ("q50", 0.5), ("q99", 0.99))}}
    for name, value in expected.items():
        np.testing.assert_allclose(np.array(stats[name]).reshape(3), value, rtol=0, atol=1e-12, err_msg=name)
    assert stats["count"] == [sum(len(frames) for frames in sampled)]


@pytest.mark.parametrize("version", ["v2.1", "v3.0"])
def test_metadata_that_only_later_episodes_have_is_kept(tmp_path, version):
    """Recovery demonstrations after plain ones: their metadata keys appear only from the second episode on."""
    from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset

    rng = np.random.default_rng(0)
    frames = lambda n: {STATE: rng.normal(size=(n, 8)).astype(np.float32),  # noqa: E731
                        ACTION: rng.normal(size=(n, 7)).astype(np.float32)}
    records = [EpisodeRecord("push the block", frames(5), {"slot": 0}),
               EpisodeRecord("push the block", frames(6), {"slot": 1, "dart_noise": 0.2, "dart_pushes": 1})]
    features = {key: {"dtype": "float32", "shape": [d], "names": None} for key, d in ((STATE, 8), (ACTION, 7))}
    read = LeRobotDataset(write_lerobot_dataset(tmp_path, records, features, fps=10, version=version))
    assert read.episodes[1].metadata == {"slot": 1, "dart_noise": 0.2, "dart_pushes": 1}
    assert read.episodes[0].metadata["slot"] == 0 and read.episodes[0].metadata.get("dart_noise") is None

"""The action-size diagnostic (benchmarks/action_scale.py): the labels' size is the dataset's, a model that plans
half the labels measures a ratio of one half and an error of one half, the image-swap control shows each frame
another episode's cameras of the same task and keeps everything else the frame's own, and real streaming and chunk
models run through it reproducibly."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.data.synthetic import write_synthetic_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import action_scale  # noqa: E402


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("scale") / "data", storage="image", num_episodes=4,
                                   min_length=10, max_length=26, image_size=32, seed=3)


def saved(model, processor, folder: Path) -> str:
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def label_norms(root, steps: int, chunks: int, dims: slice) -> np.ndarray:
    """The labels' mean norm per (episode, chunk), computed directly; NaN where fewer than `steps` labels remain."""
    dataset = LeRobotDataset.open(root)
    actions = dataset.column("action")
    norms = np.full((len(dataset.episodes), chunks), np.nan)
    for i, episode in enumerate(dataset.episodes):
        for chunk in range(chunks):
            first = chunk * steps
            if first + steps <= episode.length:
                labels = actions[episode.start + first:episode.start + first + steps, dims]
                norms[i, chunk] = np.linalg.norm(labels, axis=1).mean()
    return norms


def test_a_model_planning_half_the_labels_measures_half(joint, dataset_root, tmp_path, monkeypatch):
    model, processor = joint
    folder = saved(model, processor, tmp_path / "model")
    dataset = LeRobotDataset.open(dataset_root)
    states, actions = dataset.column("observation.state"), dataset.column("action")
    steps = model.config.n_action_steps

    def half_the_labels(model, inputs, cumulative, previous, steps):
        observed = inputs["state"].numpy()
        rows = [int(np.flatnonzero(np.abs(states - s).max(axis=1) < 1e-5)[0]) for s in observed]
        return np.stack([0.5 * actions[row:row + steps] for row in rows])

    monkeypatch.setattr(action_scale, "planned_actions", half_the_labels)
    table = action_scale.main(["--model", folder, "--dataset", str(dataset_root), "--unseen_dataset",
                               "--chunks", "4", "--output", str(tmp_path / "scale.json")])
    expected = label_norms(dataset_root, steps, 4, slice(0, 3))
    written = json.loads((tmp_path / "scale.json").read_text())
    np.testing.assert_allclose(np.array(written["norms"]["expert_translation"], dtype=float), expected, rtol=1e-6)
    assert [row["episodes"] for row in table] == [int((~np.isnan(c)).sum()) for c in expected.T][:len(table)]
    for row in table:
        assert row["ratio_translation"] == pytest.approx(0.5) and row["ratio_end_effector"] == pytest.approx(0.5)
        assert row["error_share_translation"] == pytest.approx(0.5)  # half the labels short, every frame
        assert row["expert_translation"] == pytest.approx(np.nanmean(expected[:, row["chunk"]]))


def test_partners_are_other_rows_of_the_same_task():
    tasks = ["a", "b", "a", "a", "c", "b"]
    partners = action_scale.partner_rows(tasks)
    np.testing.assert_array_equal(partners, [2, 5, 3, 0, -1, 1])


def test_the_swap_control_changes_the_cameras_only(joint, dataset_root, tmp_path, monkeypatch):
    model, processor = joint
    folder = saved(model, processor, tmp_path / "model")
    dataset = LeRobotDataset.open(dataset_root)
    states, actions = dataset.column("observation.state"), dataset.column("action")
    episode_of = np.repeat(np.arange(len(dataset.episodes)), [e.length for e in dataset.episodes])
    seen, calls = [], []  # every frame whose image was read; per chunk start, (frame viewed, frame planned for)

    def the_labels(model, inputs, cumulative, previous, steps):  # the frame's own labels, found by its state
        observed = inputs["state"].numpy()
        rows = [int(np.flatnonzero(np.abs(states - s).max(axis=1) < 1e-5)[0]) for s in observed]
        cameras = len(model.config.camera_names)
        calls.append(list(zip(seen[-cameras * len(rows):][:len(rows)], rows)))  # the first camera's, in row order
        return np.stack([actions[row:row + steps] for row in rows])

    image = LeRobotDataset.image
    monkeypatch.setattr(LeRobotDataset, "image", lambda self, camera, row: seen.append(row) or image(self, camera, row))
    monkeypatch.setattr(action_scale, "planned_actions", the_labels)
    arguments = ["--model", folder, "--dataset", str(dataset_root), "--unseen_dataset", "--chunks", "2"]
    table = action_scale.main(arguments + ["--swap_images"])
    steps = model.config.n_action_steps
    pairs = [pair for call in calls for pair in call]
    assert calls and pairs
    for view, own in pairs:
        assert episode_of[view] != episode_of[own] and dataset.task(int(view)) == dataset.task(int(own))
        assert view - dataset.episodes[episode_of[view]].start == own - dataset.episodes[episode_of[own]].start
    assert all(row["error_translation"] == pytest.approx(0.0) for row in table)  # state and labels the frame's own
    labels = dataset.column("action")[:, :3]
    partner = np.mean([np.linalg.norm(labels[view:view + steps] - labels[own:own + steps], axis=1).mean()
                       for view, own in calls[0]])
    assert table[0]["partner_translation"] == pytest.approx(partner, rel=1e-5) and partner > 0


@pytest.mark.parametrize("objective", ["stream_joint", "chunk"])
def test_real_models_are_measured_reproducibly(tiny_models, dataset_root, tmp_path, objective):
    model, processor = tiny_models(objective)
    folder = saved(model, processor, tmp_path / objective)
    arguments = ["--model", folder, "--dataset", str(dataset_root), "--unseen_dataset", "--chunks", "3"]
    table = action_scale.main(arguments)
    assert table == action_scale.main(arguments)  # the flow's noise is seeded
    assert table and all(row["model_translation"] > 0 and np.isfinite(row["ratio_end_effector"]) for row in table)
    assert all(row["model_translation"] <= row["model_end_effector"] + 1e-9 for row in table)  # a part of it


def test_a_checkpoints_weights_are_measured_with_the_folders_config(tiny_models, dataset_root, tmp_path):
    from safetensors.torch import save_file

    from fasvla.tiny import tiny_model_and_processor

    model, processor = tiny_models("stream_joint")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    other = saved(tiny_model_and_processor(seed=5)[0], processor, tmp_path / "other")  # other weights, same config
    arguments = ["--dataset", str(dataset_root), "--unseen_dataset", "--chunks", "2"]
    measured = action_scale.main(["--model", saved(model, processor, tmp_path / "model"), *arguments])
    assert action_scale.main(["--model", other, *arguments]) != measured
    assert action_scale.main(["--model", other, "--weights", str(tmp_path / "weights.safetensors"),
                              *arguments]) == measured


def test_bad_arguments_are_refused(joint, dataset_root, tmp_path):
    with pytest.raises(SystemExit):
        action_scale.parse_args(["--model", "m", "--dataset", "d", "--chunks", "0"])
    model, processor = joint
    folder = saved(model, processor, tmp_path / "model")
    with pytest.raises(ValueError, match="validation_fraction 0.0 leaves no held-out episode"):
        action_scale.main(["--model", folder, "--dataset", str(dataset_root), "--val_fraction", "0"])

"""train_accelerate.py end to end on synthetic LeRobot datasets: the loss falls, the saved model loads and streams,
a killed run resumes with the same losses, two DDP processes agree, bad datasets fail before training."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import numpy as np
import torch
from accelerate.state import AcceleratorState
from transformers import AutoModel, AutoProcessor, SmolVLMConfig, SmolVLMForConditionalGeneration

import train_accelerate
from fasvla.data.lerobot_dataset import DatasetError, LeRobotDataset
from fasvla.data.synthetic import write_synthetic_dataset
from fasvla.tiny import TINY_VLM, tiny_model_and_processor, tiny_tokenizer
from fasvla.training import freeze, latest_checkpoint, lr_multiplier

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["--report_to", "none", "--num_workers", "0"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "synthetic", version="v3.0", storage="video",
                                   codec="libx264", num_episodes=6, min_length=12, max_length=20, image_size=48)


def train(*args):
    """train_accelerate.main in this process (Accelerate's state is a process-wide singleton: reset it)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    train_accelerate.main(QUIET + [str(a) for a in args])  # later flags win: a test may ask for workers


def metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run")
    train("--dataset", dataset, "--output_dir", output_dir, "--preset", "tiny", "--steps", 160, "--batch_size", 8,
          "--lr", 3e-3, "--warmup_steps", 10, "--log_every", 20, "--eval_every", 40, "--val_fraction", 0.2)
    return output_dir


def test_training_lowers_the_loss_and_logs_a_validation_loss(trained):
    logged = metrics(trained)
    train_losses = [m["train/loss"] for m in logged if "train/loss" in m]
    val_losses = [m["val/loss"] for m in logged if "val/loss" in m]
    assert len(train_losses) == 8 and len(val_losses) == 4
    assert torch.isfinite(torch.tensor(train_losses + val_losses)).all()
    # 5 training episodes are memorised, not generalised from: the held-out loss is only required to be logged
    assert sum(train_losses[-2:]) / 2 < 0.75 * train_losses[0]


def test_the_saved_model_loads_with_auto_classes_and_streams(trained, dataset):
    model = AutoModel.from_pretrained(trained / "model", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(trained / "model", trust_remote_code=True)
    data = LeRobotDataset(dataset)
    # the dataset's statistics (q01/q99 for the streaming scale) are in the saved config
    assert model.config.norm_stats["action"]["q99"] == json.loads((dataset / "meta/stats.json").read_text())[
        "action"]["q99"]
    assert model.config.camera_names == data.camera_keys
    inputs = processor(images=[data.image(c, 0) for c in data.camera_keys], text=data.task(0),
                       state=data.column("observation.state")[0])
    stream = model.stream_actions(**inputs, feedback_mode="anticipatory")
    steps = [next(stream)] + [stream.send(torch.as_tensor(data.column("observation.state")[k])) for k in (1, 2)]
    assert all(torch.isfinite(s.action).all() for s in steps)
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["steps"] == 160 and summary["ranks_agree"] and summary["samples_per_s"] > 0


def test_checkpoints_keep_the_latest_complete_ones(trained):
    kept = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert kept == ["step_0000160"]  # checkpoint_every 1000 > steps: only the final one
    assert latest_checkpoint(trained / "checkpoints").name == "step_0000160"


@pytest.mark.parametrize("change, message", [
    ({"cameras": ["observation.images.front"]}, "unknown camera keys"),
    ({"delete": "videos/observation.images.image2/chunk-000/file-000.mp4"}, "files of .* are missing"),
    ({"state_shape": [9]}, "has shape \\(8,\\) in the data but \\[9\\]"),
])
def test_a_bad_dataset_fails_before_training_starts(change, message, dataset, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(dataset, broken)
    if "delete" in change:
        (broken / change["delete"]).unlink()
    if "state_shape" in change:
        info = json.loads((broken / "meta/info.json").read_text())
        info["features"]["observation.state"]["shape"] = change["state_shape"]
        (broken / "meta/info.json").write_text(json.dumps(info))
    extra = ["--cameras", *change["cameras"]] if "cameras" in change else []
    with pytest.raises(DatasetError, match=message):
        train("--dataset", broken, "--output_dir", tmp_path / "out", "--preset", "tiny", "--steps", 5, *extra)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_new_model_takes_its_backbone_from_a_smolvlm_checkpoint(dataset, tmp_path):
    torch.manual_seed(3)
    vlm = SmolVLMForConditionalGeneration(SmolVLMConfig(**TINY_VLM))
    vlm.save_pretrained(tmp_path / "smolvlm")
    tiny_tokenizer().save_pretrained(tmp_path / "smolvlm")
    train("--dataset", dataset, "--output_dir", tmp_path / "out", "--preset", "tiny", "--vlm", tmp_path / "smolvlm",
          "--steps", 3, "--batch_size", 4)
    trained = AutoModel.from_pretrained(tmp_path / "out" / "model", trust_remote_code=True)
    source = vlm.model.state_dict()
    # the VLM is frozen (expert_only): the trained model's backbone is the checkpoint's, bit for bit
    for name, value in trained.vlm.state_dict().items():
        assert torch.equal(value, source[name]), name
    assert trained.config.image_size == TINY_VLM["vision_config"]["image_size"]


def test_training_continues_from_an_existing_model(trained, dataset, tmp_path):
    train("--dataset", dataset, "--output_dir", tmp_path / "out", "--model", trained / "model", "--steps", 2,
          "--batch_size", 4, "--freeze", "full")
    before = AutoModel.from_pretrained(trained / "model", trust_remote_code=True).state_dict()
    after = AutoModel.from_pretrained(tmp_path / "out" / "model", trust_remote_code=True).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("vlm.vision_model.") for k in changed)  # --freeze full trains the vision tower too
    assert "vlm.text_model.norm.weight" not in changed  # unused parameters stay frozen
    with pytest.raises(ValueError, match="the model expects"):
        train("--dataset", dataset, "--output_dir", tmp_path / "again", "--model", trained / "model", "--cameras",
              "observation.images.image2", "observation.images.image")


def test_dataloader_worker_processes_decode_their_own_videos(dataset, tmp_path):
    """The dataset is opened (and its videos read by `check`) in the main process before workers fork: each worker
    must decode with its own file handles."""
    train("--dataset", dataset, "--output_dir", tmp_path, "--preset", "tiny", "--steps", 6, "--batch_size", 8,
          "--num_workers", 2, "--log_every", 1)
    assert len(metrics(tmp_path)) == 6


def test_bf16_mixed_precision_runs_on_the_cpu(dataset, tmp_path):
    train("--dataset", dataset, "--output_dir", tmp_path, "--preset", "tiny", "--steps", 3, "--batch_size", 4,
          "--mixed_precision", "bf16", "--log_every", 1)
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in metrics(tmp_path))


def test_learning_rate_schedule_is_smolvla_warmup_then_cosine():
    peak, floor = 1e-4, 2.5e-6
    at = [lr_multiplier(step, 10, 110, peak, floor) * peak for step in (0, 9, 10, 60, 110, 500)]
    assert at[0] == pytest.approx(peak / 11) and at[1] == pytest.approx(peak * 10 / 11)
    assert at[2] == pytest.approx(peak)  # the cosine starts at the peak
    assert at[3] == pytest.approx(floor + (peak - floor) / 2)  # half way down
    assert at[4] == pytest.approx(floor) and at[5] == pytest.approx(floor)  # and stays at the floor


@pytest.mark.parametrize("mode, trains, frozen", [
    ("expert_only", ["expert.layers.0.mlp.up_proj.weight", "state_gate", "state_proj.weight"],
     ["vlm.vision_model.post_layernorm.weight", "vlm.text_model.layers.0.mlp.up_proj.weight"]),
    ("vision_frozen", ["vlm.text_model.layers.0.mlp.up_proj.weight", "vlm.connector.modality_projection.proj.weight"],
     ["vlm.vision_model.post_layernorm.weight"]),
    ("full", ["vlm.vision_model.post_layernorm.weight"], ["vlm.text_model.norm.weight"]),
])
def test_freezing_modes(mode, trains, frozen):
    model, _ = tiny_model_and_processor()
    trainable = set(freeze(model, mode))
    assert set(trains) <= trainable and not set(frozen) & trainable
    assert not model.unused_parameter_names() & trainable
    with pytest.raises(ValueError, match="freeze must be one of"):
        freeze(model, "vision")


def test_resuming_from_an_incomplete_checkpoint_is_refused(dataset, tmp_path):
    (tmp_path / "checkpoints" / "step_0000004").mkdir(parents=True)  # a save that crashed half way
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        train("--dataset", dataset, "--output_dir", tmp_path, "--preset", "tiny", "--steps", 5,
              "--resume_from_checkpoint", tmp_path / "checkpoints" / "step_0000004")


def test_latest_checkpoint_ignores_incomplete_saves(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):
        (tmp_path / f"step_{step:07d}").mkdir()
        if complete:
            (tmp_path / f"step_{step:07d}" / "COMPLETE").touch()
    assert latest_checkpoint(tmp_path).name == "step_0000008"
    assert latest_checkpoint(tmp_path / "nothing") is None


# -- separate processes -----------------------------------------------------------------------------------------


def _command(dataset, output_dir, *extra) -> list[str]:
    return [sys.executable, str(ROOT / "train_accelerate.py"), "--dataset", str(dataset), "--output_dir",
            str(output_dir), "--preset", "tiny", "--batch_size", "4", "--val_fraction", "0", "--lr", "1e-3",
            "--warmup_steps", "2", "--decay_steps", "100", "--log_every", "1", "--checkpoint_every", "4", *QUIET,
            *map(str, extra)]


def _losses(output_dir: Path) -> dict[int, float]:
    return {m["step"]: m["train/loss"] for m in metrics(output_dir)}  # a later line for a step wins


@pytest.mark.slow
def test_a_killed_run_resumes_with_the_losses_of_an_uninterrupted_one(dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_command(dataset, tmp_path / "straight", "--steps", 16), check=True, env=env, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(dataset, killed, "--steps", 100), env=env, stderr=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoints" / "step_0000004" / "COMPLETE").exists() and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed_from = latest_checkpoint(killed / "checkpoints")
    start = json.loads((resumed_from / "progress.json").read_text())["step"]
    assert start <= 12, "the run was not killed early enough to compare anything"

    subprocess.run(_command(dataset, killed, "--steps", 16, "--resume_from_checkpoint", "latest"), check=True,
                   env=env, timeout=300)
    straight, resumed = _losses(tmp_path / "straight"), _losses(killed)
    assert [resumed[s] for s in range(start + 1, 17)] == [straight[s] for s in range(start + 1, 17)]


@pytest.mark.slow
def test_two_ddp_processes_on_the_cpu_train_the_same_weights(dataset, tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts ONE process (Accelerate's CPU multi-process launcher needs
    # mpirun); --multi_gpu starts two through torchrun, and the script asks for CPU DDP on gloo when there is no GPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               *_command(dataset, tmp_path, "--steps", 4)[1:]]
    subprocess.run(command, check=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["ranks_agree"] is True
    assert summary["samples_per_s"] > 0 and len(metrics(tmp_path)) == 4  # one log line per step, from rank 0 only
    assert AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True) is not None


def test_a_small_model_trains_from_scratch_with_a_tokenizer_of_the_datasets_tasks(dataset, tmp_path):
    train("--dataset", dataset, "--output_dir", tmp_path, "--preset", "small", "--freeze", "full", "--steps", 2,
          "--batch_size", 4, "--log_every", 1)
    model = AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(tmp_path / "model", trust_remote_code=True)
    assert model.config.image_size == 96 and model.config.chunk_size == 16
    assert 1.5e6 < sum(p.numel() for p in model.parameters()) < 3e6
    tasks = list(LeRobotDataset(dataset).tasks.values())
    for task in tasks:  # BPE merges learnt from the dataset's own tasks: fewer tokens than bytes
        assert len(processor.tokenizer(task)["input_ids"]) < len(task.encode()) / 2


def test_a_new_model_takes_the_revision_2_trajectory_with_g_fitted_on_the_dataset(dataset, tmp_path):
    from fasvla.state_response import fit_state_response

    train("--dataset", dataset, "--output_dir", tmp_path, "--preset", "tiny", "--steps", 2, "--batch_size", 4,
          "--absolute_action_dims", 6, "--trajectory_origin", "chunk", "--center_state", "--feedback_kappa", 2.0,
          "--kappa_a", 1.0)
    model = AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True)
    config = model.config
    assert (config.absolute_action_dims, config.trajectory_origin, config.center_state) == ([6], "chunk", True)
    assert (config.feedback_kappa, config.kappa_a) == (2.0, 1.0)
    data = LeRobotDataset(dataset)
    with torch.no_grad():
        states = model.normalizer.normalize_state(torch.as_tensor(data.column("observation.state"))).numpy()
        actions = model.normalizer.normalize_action(torch.as_tensor(data.column("action"))).numpy()
    expected = fit_state_response(states, actions, [e.start for e in data.episodes], absolute_dims=[6]).G
    assert not expected[6].any()  # the gripper is a level: no correction through it
    np.testing.assert_allclose(np.array(config.feedback_matrix), expected, rtol=1e-4, atol=1e-6)
    assert abs(np.mean(states, axis=0)).max() < 1e-3  # centred with the dataset's own mean


def test_training_under_observation_delay_records_it_and_feeds_the_delayed_prefix(dataset, tmp_path, monkeypatch):
    seen = []
    forward = train_accelerate.FasVLAForActionPrediction.forward

    def recording_forward(self, *args, **kwargs):
        seen.append((kwargs["state"].clone(), kwargs["trajectory_state"].clone()))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(train_accelerate.FasVLAForActionPrediction, "forward", recording_forward)
    train("--dataset", dataset, "--output_dir", tmp_path, "--preset", "tiny", "--steps", 3, "--batch_size", 8,
          "--max_observation_delay", 4, "--val_fraction", 0)
    assert AutoModel.from_pretrained(tmp_path / "model", trust_remote_code=True).config.max_observation_delay == 4
    prefix_states = torch.cat([state for state, _ in seen])
    trajectory_states = torch.cat([trajectory for _, trajectory in seen])
    delayed = (prefix_states != trajectory_states).any(dim=1)
    assert 0.3 < delayed.float().mean() < 1.0  # d = 0 for about 1 in 5 (and at episode starts)

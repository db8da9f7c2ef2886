"""The small models shipped in checkpoints/ (RESULTS.md): they load like Hub models, and the FAS-VLA solves a LIBERO
episode it was not trained on."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoProcessor

import demo
import eval_libero

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"stream_joint": demo.LIBERO_MODEL, "chunk": ROOT / "checkpoints" / "chunk-small-libero-object"}
TASK = "pick up the alphabet soup and place it in the basket"


@pytest.mark.parametrize("objective", list(CHECKPOINTS))
def test_its_remote_code_is_the_repository_code_not_a_copy_that_could_drift(objective):
    folder = CHECKPOINTS[objective]
    names = {path.name for path in folder.glob("*.py")}
    assert {"configuration_fasvla.py", "modeling_fasvla.py", "processing_fasvla.py"} <= names
    for name in names:
        assert (folder / name).is_symlink() and (folder / name).resolve() == ROOT / name


@pytest.mark.parametrize("objective", list(CHECKPOINTS))
def test_it_loads_with_the_auto_classes_and_carries_the_demonstrations_statistics(objective):
    model = AutoModel.from_pretrained(CHECKPOINTS[objective], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(CHECKPOINTS[objective], trust_remote_code=True)
    config = model.config
    assert (config.objective, config.state_dim, config.action_dim) == (objective, 8, 7)
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 2.5e6  # small enough to live in the repository
    state = config.norm_stats["state"]
    # the end effector points down in every demonstration: its axis-angle x component stays near pi
    assert abs(state["mean"][3] - torch.pi) < 0.1 and state["std"][3] < 0.05
    assert state["mean"][6] > 0 > state["mean"][7]  # the two fingers' positions (LIBERO's 8-dim state)
    # the tokenizer was trained on the three tasks: a task is at most one token per word
    assert len(processor.tokenizer(TASK)["input_ids"]) <= len(TASK.split())


@pytest.mark.slow
def test_the_fasvla_solves_a_held_out_libero_object_episode_with_anticipatory_feedback(tmp_path):
    pytest.importorskip("libero")
    eval_libero.main(["--model", str(demo.LIBERO_MODEL), *demo.ROLLOUT_TASK, "--feedback_mode", "anticipatory",
                      "--resolution", "128", "--no_record", "--output_dir", str(tmp_path)])
    (episode,) = json.loads((tmp_path / "results.json").read_text())["episodes"]
    assert episode["init_state_id"] == 40 and episode["success"], episode

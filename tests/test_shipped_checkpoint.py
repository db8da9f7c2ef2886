"""The small models shipped in checkpoints/ (RESULTS.md): they load like Hub models, the current code does what they
did when shipped (as it does for the first study's models, kept in results/libero_object/models), and the FAS-VLA
shows `make demo`'s recovery from a push in LIBERO."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoProcessor

import demo
import eval_libero
from conftest import FIXTURES
from configuration_fasvla import FasVLAConfig
from fasvla.checkpoint_outputs import fixed_observation, model_outputs
from fasvla.training import load_model_and_processor, load_processor
from scripts.sync_checkpoint_code import REMOTE_CODE

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = {"stream_joint": demo.LIBERO_MODEL, "chunk": ROOT / "checkpoints" / "chunk-small-libero-object"}
FIRST_STUDY = ROOT / "results" / "libero_object" / "models"
FINGERPRINTED = [*CHECKPOINTS.values(), FIRST_STUDY / "fasvla-small-libero-object",
                 FIRST_STUDY / "chunk-small-libero-object"]
TASKS = ["pick up the alphabet soup and place it in the basket", "pick up the cream cheese and place it in the basket",
         "pick up the salad dressing and place it in the basket", "pick up the bbq sauce and place it in the basket",
         "pick up the ketchup and place it in the basket"]  # libero_object tasks 0-4, the demonstrations' tasks


@pytest.mark.parametrize("objective", list(CHECKPOINTS))
def test_its_remote_code_is_real_files_equal_to_the_repository_code(objective):
    """Files, not links (a link reaches the Hub as a path), kept equal to the root's by scripts/sync_checkpoint_code.py
    once the outputs below say a code change leaves the checkpoint's behaviour as it was."""
    folder = CHECKPOINTS[objective]
    assert {path.name for path in folder.glob("*.py")} == set(REMOTE_CODE)
    for name in REMOTE_CODE:
        assert not (folder / name).is_symlink()
        assert (folder / name).read_bytes() == (ROOT / name).read_bytes(), \
            f"{folder.name}/{name} differs from ./{name}: run scripts/sync_checkpoint_code.py"


@pytest.mark.parametrize("folder", FINGERPRINTED, ids=lambda folder: str(folder.relative_to(ROOT)))
def test_the_current_code_reproduces_what_the_shipped_checkpoint_did(folder):
    """Outputs for fixed inputs recorded with the code the checkpoint was shipped with (fasvla/checkpoint_outputs.py):
    a change of the code, or a new config field whose default differs from what a config.json without it meant,
    shows here. Loaded from the checkpoint's own config.json, with the repository's code. The first study's models,
    whose config.json predates every revision-2 field, keep what those fields' defaults mean under test."""
    model, processor = load_model_and_processor(str(folder), "cpu")
    outputs = model_outputs(model.eval(), processor)
    recorded = load_file(FIXTURES / "checkpoint_outputs" / folder.relative_to(ROOT).with_suffix(".safetensors"))
    assert set(outputs) == set(recorded)
    for name, value in recorded.items():  # float32 on CPUs of other makes: kernels differ in the last bits
        torch.testing.assert_close(outputs[name], value, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("objective", list(CHECKPOINTS))
def test_it_loads_with_the_auto_classes_and_carries_the_demonstrations_statistics(objective):
    model = AutoModel.from_pretrained(CHECKPOINTS[objective], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(CHECKPOINTS[objective], trust_remote_code=True)
    config = model.config
    assert (config.objective, config.state_dim, config.action_dim) == (objective, 8, 7)
    assert 2e6 < sum(p.numel() for p in model.parameters()) < 2.5e6  # small enough to live in the repository
    state = config.norm_stats["state"]
    # the end effector points down in every demonstration: its axis-angle x component stays near pi, the
    # recovery demonstrations' pushes tilting it by up to a few tenths
    assert abs(state["mean"][3] - torch.pi) < 0.2 and 0.01 < state["std"][3] < 0.5
    assert state["q01"][3] > torch.pi - 1.5 and state["q99"][3] < torch.pi + 0.1
    assert state["mean"][6] > 0 > state["mean"][7]  # the two fingers' positions (LIBERO's 8-dim state)
    # the tokenizer was trained on the five tasks: a task is at most one token per word
    for task in TASKS:
        assert len(processor.tokenizer(task)["input_ids"]) <= len(task.split()), task


@pytest.mark.parametrize("objective", list(CHECKPOINTS))
def test_a_saved_processor_loads_without_its_remote_code_and_processes_as_auto_processor_does(objective, tmp_path):
    """The models kept in results/*/models have no code copies: load_processor never runs a folder's code."""
    folder = CHECKPOINTS[objective]
    bare = shutil.copytree(folder, tmp_path / "bare", ignore=shutil.ignore_patterns("*_fasvla.py"))
    observation = fixed_observation(FasVLAConfig.from_pretrained(bare))
    ours = load_processor(str(bare))(**observation)
    auto = AutoProcessor.from_pretrained(folder, trust_remote_code=True)(**observation)
    assert set(ours) == set(auto)
    for name in auto:
        assert torch.equal(ours[name], auto[name]), name


@pytest.mark.slow
def test_the_fasvla_recovers_from_the_demos_push_with_anticipatory_feedback_where_open_loop_fails(tmp_path):
    """What `make demo` shows and demo.py says: the same episode, the same push at the grasp, two outcomes."""
    pytest.importorskip("libero")
    outcomes = {}
    for mode in ("anticipatory", "open_loop"):
        eval_libero.main(["--model", str(demo.LIBERO_MODEL), *demo.ROLLOUT_TASK, *demo.PUSH, "--feedback_mode", mode,
                          "--resolution", "128", "--no_record", "--output_dir", str(tmp_path / mode)])
        (episode,) = json.loads((tmp_path / mode / "results.json").read_text())["episodes"]
        assert episode["init_state_id"] == 2 and episode["held_steps"] == 0, episode
        outcomes[mode] = episode["success"]
    assert outcomes == {"anticipatory": True, "open_loop": False}

"""The grasp-offset diagnostic (benchmarks/grasp_offset.py): the first closing command is found whatever the close
sign, and each recorded rollout is set against the expert of its own task and init state, with the offset in mm,
wherever its evaluation folder has moved."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import grasp_offset  # noqa: E402

FEATURES = {"observation.state": {"dtype": "float32", "shape": [8], "names": None},
            "action": {"dtype": "float32", "shape": [7], "names": None}}


def episode(start: list[float], close_at: int | None, length: int = 12) -> dict[str, np.ndarray]:
    """A straight reach from `start` along +x at 1 cm a step, the gripper closing (+1) from `close_at` on."""
    states = np.zeros((length, 8), np.float32)
    states[:, :3] = np.array(start) + np.outer(np.arange(length), [0.01, 0.0, 0.0])
    actions = np.zeros((length, 7), np.float32)
    actions[:, -1] = -1.0
    if close_at is not None:
        actions[close_at:, -1] = 1.0
    return {"observation.state": states, "action": actions}


def test_the_first_closing_command_with_either_sign():
    frames = episode([0.1, 0.2, 0.3], close_at=4)
    step, position = grasp_offset.first_close(frames["observation.state"], frames["action"])
    assert step == 4 and position == pytest.approx([0.14, 0.2, 0.3])
    assert grasp_offset.first_close(frames["observation.state"], frames["action"], close_sign=-1.0)[0] == 0
    never = episode([0, 0, 0], close_at=None)
    assert grasp_offset.first_close(never["observation.state"], never["action"]) is None


@pytest.fixture
def expert_and_rollouts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recordings are named relative to where the evaluation ran
    expert = [EpisodeRecord("task a", episode([0, 0, 0.2], 5), {"task_id": 0, "init_state_id": 0}),
              EpisodeRecord("task a", episode([0, 0.1, 0.2], 3), {"task_id": 0, "init_state_id": 1})]
    write_lerobot_dataset("expert", expert, FEATURES, fps=20)
    lines = []
    for init, (start, close_at, success) in enumerate([([0, 0.03, 0.2], 7, False), ([0, 0.1, 0.2], 3, True)]):
        recording = f"evaluation/rollouts/libero_object/task_00/trial_{init:03d}"
        write_lerobot_dataset(recording, [EpisodeRecord("task a", episode(start, close_at))], FEATURES, fps=20)
        lines.append({"task_id": 0, "init_state_id": init, "trial": init, "success": success, "recording": recording})
    lines.append({"task_id": 3, "init_state_id": 0, "trial": 0, "success": False, "recording": "elsewhere"})
    Path("evaluation/results_rank0.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return tmp_path


def test_each_rollout_is_set_against_the_expert_of_its_init_state(expert_and_rollouts):
    rows = grasp_offset.main(["--expert", "expert", "--rollouts", "evaluation", "--output", "offsets.json"])
    assert [(r["init_state_id"], r["success"], r["step"], r["expert_step"]) for r in rows] == [
        (0, False, 7, 5), (1, True, 3, 3)]  # task 3 has no expert: left out
    assert rows[0]["offset_mm"] == pytest.approx([20.0, 30.0, 0.0], abs=0.01)  # 2 steps later, 3 cm aside
    assert rows[0]["horizontal_mm"] == pytest.approx(np.hypot(20, 30), abs=0.05)
    assert rows[1]["offset_mm"] == pytest.approx([0, 0, 0], abs=0.01)
    assert json.loads(Path("offsets.json").read_text())["episodes"] == rows


def test_a_moved_evaluation_folder_is_still_read(expert_and_rollouts):
    rows = grasp_offset.main(["--expert", "expert", "--rollouts", "evaluation"])
    Path("evaluation").rename("moved")
    assert grasp_offset.main(["--expert", "expert", "--rollouts", "moved"]) == rows


def test_nothing_to_compare_is_an_error(expert_and_rollouts):
    Path("empty").mkdir()
    with pytest.raises(ValueError, match="--rollouts empty holds no recorded episode"):
        grasp_offset.main(["--expert", "expert", "--rollouts", "empty"])

"""The README's main command: synthetic dataset -> training -> streaming with the three feedback modes."""

from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState

import demo
from fasvla.app.rollouts import RolloutCatalog


@pytest.mark.slow
def test_demo_trains_streams_records_rollouts_and_opens_the_app(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the demo writes to ./outputs/demo
    AcceleratorState._reset_state(reset_partial_state=True)
    opened = []
    monkeypatch.setattr(demo.app, "main", opened.append)  # the app would serve until interrupted
    demo.main(["--steps", "20", "--push_step", "2", "--rollout_steps", "5"])
    printed = capsys.readouterr().out
    for mode in ("open_loop", "synchronous", "anticipatory"):
        assert f"== {mode} ==" in printed
    assert printed.count("\n   7 ") == 3  # eight streamed steps per mode
    assert (tmp_path / "outputs/demo/run/model/config.json").is_file()
    assert (tmp_path / "outputs/demo/data/meta/info.json").is_file()
    # LIBERO is installed by `make test`: fresh rollouts of the model, then the app on them and on the examples
    fresh = tmp_path / "outputs/demo/libero"
    catalog = RolloutCatalog.scan([str(fresh)])
    assert sorted((r.feedback_mode, r.steps) for r in catalog.rollouts) == [("anticipatory", 5), ("open_loop", 5)]
    assert all('"push_step": 40' in r.perturbation for r in catalog.rollouts)
    assert opened == [["--rollouts", str(Path("outputs/demo/libero")), str(demo.app.EXAMPLE_ROLLOUTS),
                       "--inbrowser"]]


def test_toy_robot_follows_the_dataset_dynamics_and_is_pushed_once():
    robot = demo.ToyRobot(torch.zeros(1, 8), push_step=2, push=0.5)
    states = [robot.execute(torch.ones(1, 7)) for _ in range(3)]
    step = demo.STEP_SCALE
    assert torch.allclose(states[0][0, :6], torch.full((6,), step)) and states[0][0, 6:].abs().sum() == 0
    assert torch.allclose(states[1][0, 0] - states[0][0, 0], torch.tensor(step + 0.5))
    assert torch.allclose(states[2][0, 0] - states[1][0, 0], torch.tensor(step))

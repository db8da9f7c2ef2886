"""The README's main command: the streaming demo runs and shows the three feedback modes reacting to a push."""

import demo


def test_demo_prints_every_feedback_mode(capsys):
    demo.main(["--push_step", "2"])
    printed = capsys.readouterr().out
    for mode in ("open_loop", "synchronous", "anticipatory"):
        assert f"== {mode} ==" in printed
    assert printed.count("\n   7 ") == 3  # eight streamed steps per mode


def test_toy_robot_applies_the_push_once():
    import torch

    robot = demo.ToyRobot(torch.zeros(1, 8), push_step=2, push=0.5)
    states = [robot.execute(torch.ones(1, 7)) for _ in range(3)]
    assert torch.allclose(states[0][0, 0], torch.tensor(0.1))
    assert torch.allclose(states[1][0, 0] - states[0][0, 0], torch.tensor(0.6))
    assert torch.allclose(states[2][0, 0] - states[1][0, 0], torch.tensor(0.1))

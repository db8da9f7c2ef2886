"""The app's Run tab on the real simulator: a new episode streamed step by step and recorded like the evaluation
records them. Needs LIBERO (scripts/setup_libero.sh, run by `make test`)."""

import numpy as np
import pytest

from fasvla.app.live import LiveRunner
from fasvla.app.rollouts import RolloutCatalog
from fasvla.app.ui import ReplayApp
from fasvla.data.lerobot_dataset import LeRobotDataset

pytestmark = pytest.mark.slow
STEPS = 6


@pytest.fixture(scope="module")
def app(tiny_models, tmp_path_factory):
    record_dir = tmp_path_factory.mktemp("app_runs")
    model, processor = tiny_models("stream_joint")
    runner = LiveRunner(model, processor, "tiny", record_dir, resolution=64)
    yield ReplayApp(RolloutCatalog.scan([str(record_dir)]), runner)
    runner.close()


def test_a_live_episode_streams_its_steps_and_joins_the_catalog(app):
    updates = list(app.run_live("libero_object", 0, 1, "open_loop", 2, 0.0, 40.0, 0.0, 0.0, STEPS))
    statuses = [status for status, *_ in updates]
    assert statuses[-1].startswith(f"no success after {STEPS} steps; recorded in")
    assert all(s.startswith("step ") for s in statuses[:-1])
    _, frame_a, frame_b, figure = updates[-1]
    assert frame_a.shape == frame_b.shape == (64, 64, 3) and not np.array_equal(frame_a, frame_b)
    assert len(figure.data[0].y) == STEPS
    [rollout] = app.catalog.rollouts
    assert (rollout.suite, rollout.task_id, rollout.trial, rollout.init_state_id) == ("libero_object", 0, 1, 1)
    assert rollout.feedback_mode == "open_loop" and rollout.steps == STEPS and rollout.model == "tiny"
    assert '"push_force": [0.0, 40.0, 0.0]' in rollout.perturbation
    # what the live view plotted is what was recorded
    recorded = LeRobotDataset(rollout.root)
    np.testing.assert_array_equal(np.float32(figure.data[0].y), recorded.column("action")[:, 0])
    assert rollout.root.name == "run_000" and rollout.root.parent.name == "trial_001"


def test_a_second_episode_of_the_task_reuses_the_environment_and_a_new_folder(app):
    env = app.runner.env
    *_, (status, *_) = app.run_live("libero_object", 0, 1, "anticipatory", -1, 0, 0, 0, 0.0, 3)
    assert app.runner.env is env and "run_001" in status
    assert {r.feedback_mode for r in app.catalog.rollouts} == {"open_loop", "anticipatory"}


def test_bad_live_requests_are_refused_before_the_simulator_starts(app):
    with pytest.raises(ValueError, match="suite must be one of"):
        next(app.run_live("libero_99", 0, 0, "anticipatory", -1, 0, 0, 0, 0.0, 3))
    with pytest.raises(ValueError, match="action_noise must be >= 0"):
        next(app.run_live("libero_object", 0, 0, "anticipatory", -1, 0, 0, 0, -1.0, 3))

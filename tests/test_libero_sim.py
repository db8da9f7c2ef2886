"""The LIBERO evaluation on the real simulator (MuJoCo, EGL on the CPU), CI-sized: one task, a few dozen steps,
a tiny random model. Needs scripts/setup_libero.sh (run by `make test`)."""

import json

import numpy as np
import pytest
import robosuite.utils.transform_utils as T
import torch

import eval_libero
from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.libero.env import WAIT_ACTION, WAIT_STEPS, LiberoEnv, to_env_action
from fasvla.libero.episode import EpisodeJob, EpisodeRun, episode_seed, run_episode
from fasvla.libero.perturbations import Perturbation
from fasvla.libero.policy import StreamingController
from fasvla.tiny import tiny_model_and_processor

pytestmark = pytest.mark.slow
STEPS = 24


@pytest.fixture(scope="module")
def env():
    with LiberoEnv("libero_object", task_id=0, resolution=64) as environment:
        sent = []
        step = environment.env.step
        environment.env.step = lambda action: sent.append(np.array(action)) or step(action)  # what LIBERO receives
        environment.sent_actions = sent
        environment.max_steps = STEPS
        yield environment


@pytest.fixture(scope="module")
def model():
    return tiny_model_and_processor(seed=0)


def test_reset_sends_the_wait_steps_and_converts_the_observation(env):
    env.sent_actions.clear()
    observation = env.reset(init_state_id=0)
    assert len(env.sent_actions) == WAIT_STEPS
    assert all(np.array_equal(a, WAIT_ACTION) for a in env.sent_actions)
    raw = observation.raw  # the images, rendered on demand, are checked against LIBERO's in test_libero_frames.py
    assert [image.shape for image in observation.images] == [(64, 64, 3)] * 2
    np.testing.assert_allclose(observation.state[:3], raw["robot0_eef_pos"], rtol=1e-6)
    np.testing.assert_allclose(observation.state[3:6], T.quat2axisangle(raw["robot0_eef_quat"].copy()), atol=1e-6)
    np.testing.assert_allclose(observation.state[6:], raw["robot0_gripper_qpos"], rtol=1e-6)


def test_a_recorded_episode_holds_what_the_policy_saw_and_the_simulator_received(env, model, tmp_path):
    network, processor = model
    controller = StreamingController(network, processor, env.task_language, "anticipatory")
    seen = []
    act = controller.act
    controller.act = lambda observation: seen.append(observation) or act(observation)
    env.sent_actions.clear()
    run = EpisodeRun(env, controller, EpisodeJob("libero_object", 0, trial=1), Perturbation(), seed=0)
    result = run_episode(run, recording_root=tmp_path, feedback_mode="anticipatory", model_name="tiny")
    assert result.steps == STEPS and not result.success and result.init_state_id == 1
    dataset = LeRobotDataset(result.recording)
    policy_actions = env.sent_actions[WAIT_STEPS:]
    assert dataset.num_frames == STEPS == len(policy_actions)
    for t in range(STEPS):
        np.testing.assert_array_equal(dataset.column("observation.state")[t], seen[t].state)
        # the recorded action is the model's action clipped; LIBERO received exactly its conversion
        np.testing.assert_allclose(to_env_action(dataset.column("action")[t]), policy_actions[t], atol=1e-7)
    for t in (0, STEPS // 2, STEPS - 1):
        decoded = dataset.image("observation.images.image", t).astype(int)
        errors = [np.abs(decoded - s.images[0]).mean() for s in seen]
        # a nearly still arm makes neighbouring frames alike: frame t must be as close as any (the exact frame lookup
        # is proven against a sequential decode in test_data.py)
        assert errors[t] < 6 and errors[t] <= min(errors) + 0.5
    # the state inputs of the anticipatory stream were recorded, with the prediction of every step
    assert np.isfinite(dataset.column("policy.predicted_state")).all()
    np.testing.assert_allclose(dataset.column("policy.state_input")[0], seen[0].state, atol=1e-5)


def test_a_push_moves_the_end_effector_and_a_delay_holds_the_first_actions(env):
    still = np.zeros(7)

    def final_x(force):
        env.reset(init_state_id=0)
        for step in range(6):
            observation, _ = env.step(still, push_force=np.array(force) if step < 2 else None)
        return observation.state[0]

    assert final_x((80.0, 0.0, 0.0)) - final_x((0.0, 0.0, 0.0)) > 0.004  # metres


def test_the_evaluation_cli_runs_and_records(model, tmp_path):
    network, processor = model
    network.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    eval_libero.main(["--model", str(tmp_path / "model"), "--task_suite_name", "libero_object", "--task_ids", "0",
                      "--num_trials_per_task", "1", "--max_steps", "12", "--resolution", "64", "--action_delay",
                      "3", "--output_dir", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    episode = results["episodes"][0]
    assert results["summary"]["overall"]["episodes"] == 1 and episode["steps"] == 12
    assert json.loads(episode["perturbation"])["action_delay"] == 3
    recorded = LeRobotDataset(episode["recording"])
    sent = recorded.column("action")
    assert np.array_equal(sent[:3], np.tile(WAIT_ACTION.astype(np.float32), (3, 1)))  # the delayed start
    np.testing.assert_allclose(sent[3], recorded.column("policy.action")[0], atol=1e-6)
    assert "libero_object/0" in (tmp_path / "eval" / "results.md").read_text()
    torch.manual_seed(0)


def test_episodes_are_sharded_over_two_processes(model, tmp_path):
    import subprocess
    import sys

    network, processor = model
    network.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               str(eval_libero.__file__), "--model", str(tmp_path / "model"), "--task_suite_name", "libero_object",
               "--task_ids", "0", "1", "--num_trials_per_task", "1", "--max_steps", "4", "--resolution", "64",
               "--no_record", "--output_dir", str(tmp_path / "eval")]
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    per_rank = [[json.loads(line)["task_id"] for line in (tmp_path / "eval" / f"results_rank{r}.jsonl").open()]
                for r in range(2)]
    assert sorted(per_rank) == [[0], [1]]  # each process ran one task, none ran both
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["summary"]["overall"]["episodes"] == 2


def test_the_evaluation_runs_in_real_time_on_the_simulator(model, tmp_path):
    network, processor = model
    network.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--task_suite_name", "libero_object", "--task_ids", "0",
              "--num_trials_per_task", "1", "--max_steps", "12", "--resolution", "64", "--real_time",
              "--compute_ms", "10", "30", "--state_latency_ms", "10"]
    episodes = {}
    for mode in ("anticipatory", "synchronous"):
        eval_libero.main(common + ["--feedback_mode", mode, "--output_dir", str(tmp_path / mode)])
        episodes[mode] = json.loads((tmp_path / mode / "results.json").read_text())["episodes"][0]
    # the episode starts with its first action; every next prefix (10 ms latency + 30 ms + a 10 ms step) fits in
    # the period of the action before its boundary (the default prefix lead, 1)
    assert episodes["anticipatory"]["held_steps"] == 0 and episodes["anticipatory"]["missed_deadlines"] == 0
    assert episodes["synchronous"]["held_steps"] >= 5 and episodes["synchronous"]["missed_deadlines"] >= 4
    assert episodes["synchronous"]["feedback_mode"] == "synchronous, real time (latency 10 ms)"
    recorded = LeRobotDataset(episodes["synchronous"]["recording"])
    held = np.isnan(recorded.column("policy.action")).all(axis=1)
    assert recorded.num_frames == 12 and held.sum() == episodes["synchronous"]["held_steps"]
    assert np.array_equal(recorded.column("action")[held][:, :6], np.zeros((held.sum(), 6), np.float32))
    assert "held steps | missed deadlines" in (tmp_path / "synchronous" / "results.md").read_text()


def test_the_feedback_comparison_runs_every_condition_and_resumes(tmp_path, tiny_models):
    import compare_libero

    for objective in ("stream_joint", "chunk"):
        network, processor = tiny_models(objective)
        network.save_pretrained(tmp_path / objective)
        processor.save_pretrained(tmp_path / objective)
    argv = ["--stream_model", str(tmp_path / "stream_joint"), "--chunk_model", str(tmp_path / "chunk"),
            "--policies", "chunk", "stream anticipatory", "--perturbations", "nominal", "push",
            "--push", "1", "0", "80", "0", "2", "--inference_delays", "0", "2", "--output_dir", str(tmp_path / "cmp"),
            "--task_suite_name", "libero_object", "--task_ids", "0", "--num_trials_per_task", "1", "--first_trial",
            "7", "--max_steps", "5", "--resolution", "64", "--no_record", "--n_action_steps", "4"]
    summaries = compare_libero.main(argv)
    assert set(summaries) == {(p, n) for p in ("nominal", "push", "inference delay 2")
                              for n in ("chunk", "stream anticipatory")}
    episodes = {}
    for perturbation, policy in summaries:
        folder = tmp_path / "cmp" / perturbation.replace(" ", "_") / policy.replace(" ", "_")
        episode = json.loads((folder / "results.json").read_text())["episodes"][0]
        assert episode["trial"] == 7 and episode["init_state_id"] == 7 and episode["steps"] == 5
        pushed = perturbation == "push"
        assert episode["perturbation"] == "nominal" or pushed and json.loads(episode["perturbation"])["push_step"] == 1
        assert json.loads((folder / "settings.json").read_text())["inference_delay"] == (2 if "delay" in perturbation
                                                                                         else 0)
        episodes[perturbation, policy] = episode
    assert episodes["nominal", "stream anticipatory"]["feedback_mode"] == "anticipatory"
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| chunk | 0.0% [0, 79] (1) | 0.0% [0, 79] (1) |" in table
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 5000
    assert (tmp_path / "cmp" / "delay_sweep.png").stat().st_size > 5000
    assert "| chunk at D=2 - chunk at D=0 | +0 (0/0, p=1.00) |" in table
    lines = lambda: sorted(p.read_text() for p in (tmp_path / "cmp").rglob("results_rank*.jsonl"))  # noqa: E731
    before = lines()
    compare_libero.main(argv)  # everything done: nothing runs again
    assert lines() == before
    reported = compare_libero.main(argv + ["--perturbations", "nominal", "action noise", "--report_only"])
    assert lines() == before and not (tmp_path / "cmp" / "action_noise").exists()  # reported, not run
    assert reported["action noise", "chunk"] == {}
    assert reported["nominal", "chunk"]["overall"] == summaries["nominal", "chunk"]["overall"]
    report = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| chunk | 0.0% [0, 79] (1) | not run | 0.0% [0, 79] (1) |" in report


def test_an_episode_depends_on_its_own_seed_not_on_the_episodes_before_it(model):
    """The hard reset re-places the fixtures (here the cabinet and the stove) with numpy's global generator: each
    episode seeds it, so a resumed or sharded evaluation reruns an episode exactly."""
    network, processor = model
    with LiberoEnv("libero_goal", task_id=7, resolution=64) as goal_env:  # "turn on the stove"
        goal_env.max_steps = 3

        def scene(trial: int) -> np.ndarray:
            job = EpisodeJob("libero_goal", 7, trial)
            controller = StreamingController(network, processor, goal_env.task_language, "anticipatory")
            run = EpisodeRun(goal_env, controller, job, Perturbation(), seed=episode_seed(7, job), record=False)
            next(iter(run))
            return goal_env.env.env.sim.model.body_pos.copy()  # where the rebuilt model put every body

        first = scene(2)
        assert not np.array_equal(scene(3), first)  # another episode: its fixtures sit elsewhere
        np.testing.assert_array_equal(scene(2), first)

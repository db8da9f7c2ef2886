"""The LIBERO evaluation's pure parts, without a simulator: conversions, perturbations, recordings, summaries."""

import json
import re
from dataclasses import asdict
import math

import numpy as np
import pytest
import pyarrow.parquet as pq

from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.data.synthetic import write_synthetic_dataset
from fasvla.libero.env import (CAMERAS, WAIT_ACTION, Observation, gripper_close_sign_of, upright,
                               observation_state, quat_to_axis_angle, to_env_action)
from fasvla.libero.evaluation import EpisodeResult, markdown_table, summarize, wilson_interval
from fasvla.libero.perturbations import Perturbation, PerturbedActions
from fasvla.libero.policy import PolicyOutput
from fasvla.libero.recording import EpisodeRecorder

import eval_libero


def quaternion_xyzw(axis, angle):
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    return np.concatenate([axis * math.sin(angle / 2), [math.cos(angle / 2)]])


@pytest.mark.parametrize("axis, angle", [((1, 0, 0), 0.3), ((0, 1, 1), 2.0), ((1, -2, 0.5), 3.1), ((0, 0, 1), 0.0)])
def test_axis_angle_of_a_quaternion_is_the_rotation_vector(axis, angle):
    expected = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis) * angle
    np.testing.assert_allclose(quat_to_axis_angle(quaternion_xyzw(axis, angle)), expected, atol=1e-12)


def fake_raw(seed=0, size=8):
    rng = np.random.default_rng(seed)
    quaternion = quaternion_xyzw((0.3, -0.2, 0.9), 1.2)
    return {"agentview_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            "robot0_eef_pos": rng.normal(size=3), "robot0_eef_quat": quaternion,
            "robot0_gripper_qpos": np.array([0.03, -0.03])}


def test_observation_state_and_upright_images_from_raw_values():
    raw = fake_raw()
    state = observation_state(raw)
    assert state.dtype == np.float32 and state.shape == (8,)
    np.testing.assert_allclose(state[:3], raw["robot0_eef_pos"], rtol=1e-6)
    np.testing.assert_allclose(state[3:6], quat_to_axis_angle(raw["robot0_eef_quat"]), rtol=1e-6)
    np.testing.assert_allclose(state[6:], [0.03, -0.03], rtol=1e-6)
    agent, wrist = upright(raw["agentview_image"]), upright(raw["robot0_eye_in_hand_image"])
    assert np.array_equal(agent, np.rot90(raw["agentview_image"], 2))  # 180 degrees: both axes reversed
    assert np.array_equal(wrist[0, 0], raw["robot0_eye_in_hand_image"][-1, -1])


def test_model_actions_become_clipped_env_actions_with_the_gripper_convention():
    action = np.array([0.5, -2.0, 0.1, 0, 0, 0, 0.7])
    np.testing.assert_array_equal(to_env_action(action), [0.5, -1.0, 0.1, 0, 0, 0, 0.7])
    np.testing.assert_array_equal(to_env_action(action, gripper_close_sign=-1.0)[6], -0.7)
    with pytest.raises(ValueError, match="7 values"):
        to_env_action(np.zeros(6))
    with pytest.raises(ValueError, match="gripper_close_sign"):
        to_env_action(action, 0.5)


def test_the_gripper_convention_is_read_off_demonstrations(tmp_path):
    dataset = LeRobotDataset(write_synthetic_dataset(tmp_path / "d", num_episodes=6, image_size=16,
                                                     storage="image"))
    states, actions = dataset.column("observation.state"), dataset.column("action")
    starts = [e.start for e in dataset.episodes]
    assert gripper_close_sign_of(states, actions, starts) == 1.0  # +1 closes, as in LIBERO
    flipped = actions.copy()
    flipped[:, 6] *= -1
    assert gripper_close_sign_of(states, flipped, starts) == -1.0
    for useless in (np.zeros_like(actions), np.random.default_rng(0).choice([-1.0, 1.0], size=actions.shape)):
        with pytest.raises(ValueError, match="cannot tell"):
            gripper_close_sign_of(states, useless, starts)


def test_delayed_actions_hold_still_then_lag_by_k_steps():
    actions = PerturbedActions(Perturbation(action_delay=2), seed=0)
    executed = [actions(np.full(7, float(k))) for k in range(5)]
    np.testing.assert_array_equal(executed[0], WAIT_ACTION)
    np.testing.assert_array_equal(executed[1], WAIT_ACTION)
    assert [e[0] for e in executed[2:]] == [0.0, 1.0, 2.0]


def test_action_noise_is_seeded_and_spares_the_gripper():
    noisy = [PerturbedActions(Perturbation(action_noise=0.1), seed=3)(np.zeros(7)) for _ in range(2)]
    np.testing.assert_array_equal(noisy[0], noisy[1])
    assert np.all(noisy[0][:6] != 0) and noisy[0][6] == 0
    assert not np.array_equal(noisy[0], PerturbedActions(Perturbation(action_noise=0.1), seed=4)(np.zeros(7)))


def test_the_push_acts_during_its_window_only():
    actions = PerturbedActions(Perturbation(push_step=3, push_force=(10.0, 0.0, -5.0), push_steps=2), seed=0)
    forces = [actions.force_at(step) for step in range(7)]
    assert [bool(f.any()) for f in forces] == [False, False, False, True, True, False, False]
    np.testing.assert_array_equal(forces[3], [10.0, 0.0, -5.0])


@pytest.mark.parametrize("bad, message", [({"action_noise": -1.0}, "action_noise"), ({"action_delay": 1.5}, "delay"),
                                          ({"push_step": -2}, "push_step"), ({"push_force": (1.0, 2.0)}, "3 numbers")])
def test_bad_perturbations_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        Perturbation(**bad)


def test_a_recorded_episode_reads_back_as_a_lerobot_dataset(tmp_path):
    rng = np.random.default_rng(0)
    recorder, expected = EpisodeRecorder(), []
    ramp = np.linspace(0, 200, 32, dtype=np.float64)
    for step in range(6):  # smooth images that change from frame to frame (what a camera sees; noise would not code)
        images = [np.stack([np.add.outer(ramp, ramp * (c + 1) / 4) / 2 + 8 * step] * 3, -1).astype(np.uint8)
                  for c in range(2)]
        observation = Observation(rng.normal(size=8).astype(np.float32), {}, images)
        output = PolicyOutput(rng.normal(size=7).astype(np.float32), rng.normal(size=8).astype(np.float32),
                              observation.state, latency_s=0.001 * (step + 1))
        sent = np.clip(output.action, -1, 1).astype(np.float64)
        recorder.add(observation, output, sent)
        expected.append((observation, output, sent))
    root = recorder.save(tmp_path / "episode", "pick up the bowl", {"success": True, "feedback_mode": "synchronous"})
    dataset = LeRobotDataset(root)
    assert dataset.version == "v3.0" and dataset.task(0) == "pick up the bowl" and dataset.num_frames == 6
    for t, (observation, output, sent) in enumerate(expected):
        np.testing.assert_array_equal(dataset.column("observation.state")[t], observation.state)
        np.testing.assert_array_equal(dataset.column("action")[t], sent.astype(np.float32))
        np.testing.assert_array_equal(dataset.column("policy.predicted_state")[t], output.predicted_state)
        assert dataset.column("policy.latency_ms")[t] == pytest.approx(1.0 * (t + 1))
        decoded = dataset.image("observation.images.image", t).astype(int)
        errors = [np.abs(decoded - other[0].images[0]).mean() for other in expected]
        assert errors[t] < 3 and int(np.argmin(errors)) == t  # lossy, but unmistakably frame t
    row = pq.read_table(next((root / "meta/episodes").glob("*/*.parquet"))).to_pylist()[0]
    assert row["success"] is True and row["feedback_mode"] == "synchronous"


def test_a_recording_without_video_keeps_every_step_and_only_the_frames_the_policy_saw(tmp_path):
    rng = np.random.default_rng(1)
    recorder, rendered = EpisodeRecorder(video=False), []

    def observation(step):
        image = lambda c: np.full((16, 16, 3), 20 * step + c, np.uint8)  # noqa: E731
        return Observation(rng.normal(size=8).astype(np.float32), {}, renderer=lambda: [image(0), image(1)])

    for step in range(7):
        current = observation(step)
        if step % 3 == 0:  # the policy reads the images at its chunk starts
            rendered.append(current.images)
        output = PolicyOutput(rng.normal(size=7).astype(np.float32), np.full(8, np.nan, np.float32),
                              current.state, latency_s=0.002)
        recorder.add(current, output, output.action.astype(np.float64))
        assert current.rendered == (step % 3 == 0)  # the recorder rendered nothing more
    dataset = LeRobotDataset(recorder.save(tmp_path / "episode", "stack the cups", {"success": False}))
    assert dataset.num_frames == 7 and dataset.features["observation.images.image2"]["dtype"] == "image"
    np.testing.assert_array_equal(dataset.column("policy.observed"), [1, 0, 0, 1, 0, 0, 1])
    for images, t in zip(rendered, (0, 3, 6)):  # PNG: exactly what the policy saw
        for c, camera in enumerate(CAMERAS):
            np.testing.assert_array_equal(dataset.image(camera, t), images[c])
    stats = json.loads((dataset.root / "meta/stats.json").read_text())["observation.images.image"]
    assert stats["count"] == [3] and stats["max"][0][0][0] == pytest.approx(120 / 255)  # over the frames present


@pytest.mark.parametrize("objective", ["stream_joint", "chunk"])
def test_controllers_say_before_each_action_whether_they_read_the_images(objective, tiny_models):
    from fasvla.libero.policy import make_controller
    from fasvla.tiny import fake_observation

    model, processor = tiny_models(objective)
    controller = make_controller(model, processor, "pick up the cube", n_action_steps=3)
    fake = fake_observation(model.config, seed=0)
    reads, announced = [], []
    for step in range(8):
        announced.append(controller.needs_images)
        images = [camera[0] for camera in fake["images"]]
        observation = Observation(fake["state"][0], {}, renderer=lambda: reads.append(step) or images)
        controller.act(observation)
    assert reads == [0, 3, 6] and [s for s, needed in enumerate(announced) if needed] == reads


def test_the_first_trials_of_each_task_record_video_and_a_resumed_run_may_change_how_many(tmp_path):
    argv = ["--model", "m", "--task_suite_name", "libero_object", "--task_ids", "0", "1", "--num_trials_per_task",
            "4", "--first_trial", "10", "--output_dir", str(tmp_path)]
    args = eval_libero.parse_args(argv + ["--max_episodes_rendered", "1"])
    assert [[(job.trial, job.video) for job in group] for group in eval_libero.make_jobs(args)] == [
        [(10, True), (11, False), (12, False), (13, False)]] * 2
    eval_libero.check_settings(tmp_path, args)
    eval_libero.check_settings(tmp_path, eval_libero.parse_args(argv + ["--max_episodes_rendered", "4"]))


def results():
    def result(suite, task_id, success, steps):
        return EpisodeResult(suite, task_id, f"task {task_id}", 0, 0, success, steps, 5.0, 100.0, "open_loop",
                             "nominal", None)
    return [result("libero_object", 0, True, 100), result("libero_object", 0, False, 280),
            result("libero_object", 1, True, 120), result("libero_goal", 3, False, 300)]


def test_summary_rates_per_task_per_suite_and_overall():
    summary = summarize(results())
    assert summary["per_task"]["libero_object/0"]["success_rate"] == 0.5
    assert summary["per_task"]["libero_object/0"]["mean_steps"] == 190
    assert summary["per_suite"]["libero_object"]["success_rate"] == pytest.approx(2 / 3)
    assert summary["overall"]["successes"] == 2 and summary["overall"]["episodes"] == 4
    table = markdown_table(summary, "test")
    assert "| libero_object/0 (task 0) | 50.0% [9, 91] | 2 | 190.0 |" in table
    assert "| **overall** | 50.0% [15, 85] | 4 |" in table


def test_wilson_intervals_match_their_closed_form_and_stay_in_bounds():
    # 0 of 10: the upper end solves p = z^2 / (n + z^2) exactly; n of n mirrors it
    z2 = 1.959964 ** 2
    assert wilson_interval(0, 10) == pytest.approx([0.0, z2 / (10 + z2)])
    assert wilson_interval(10, 10) == pytest.approx([10 / (10 + z2), 1.0])
    # the bounds are the two rates p at which the observed rate is z standard errors sqrt(p (1 - p) / n) away
    for successes, trials in ((30, 50), (3, 17), (1, 2)):
        rate = successes / trials
        for p in wilson_interval(successes, trials):
            assert trials * (rate - p) ** 2 == pytest.approx(z2 * p * (1 - p), rel=1e-9)
    widths = [np.diff(wilson_interval(n // 2, n))[0] for n in (10, 40, 160)]
    assert widths[0] > widths[1] > widths[2] and widths[1] / widths[2] == pytest.approx(2, rel=0.05)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(3, 2)


def test_jobs_cover_every_trial_of_every_task_and_shard_without_overlap():
    args = eval_libero.parse_args(["--model", "m", "--task_suite_name", "libero_goal", "libero_10", "--task_ids",
                                   "1", "4", "--num_trials_per_task", "3"])
    groups = eval_libero.make_jobs(args)
    names = [job.name for group in groups for job in group]
    assert len(names) == 12 == len(set(names)) and all(len({(j.suite, j.task_id) for j in g}) == 1 for g in groups)
    shards = [groups[rank::3] for rank in range(3)]
    assert sorted(json.dumps(str(g)) for shard in shards for g in shard) == sorted(json.dumps(str(g)) for g in groups)


def test_held_out_trials_start_at_first_trial():
    args = eval_libero.parse_args(["--model", "m", "--task_suite_name", "libero_object", "--task_ids", "2",
                                   "--num_trials_per_task", "3", "--first_trial", "40"])
    assert [job.trial for job in eval_libero.make_jobs(args)[0]] == [40, 41, 42]


def test_an_interrupted_evaluation_resumes_and_refuses_other_settings(tmp_path):
    args = eval_libero.parse_args(["--model", "m", "--task_suite_name", "libero_object", "--task_ids", "0", "1",
                                   "--num_trials_per_task", "2", "--output_dir", str(tmp_path)])
    eval_libero.check_settings(tmp_path, args)
    done = results()[0]
    done.task_id, done.trial = 1, 0
    (tmp_path / "results_rank0.jsonl").write_text(json.dumps(asdict(done)) + "\n")
    pending = eval_libero.pending_jobs(eval_libero.make_jobs(args), tmp_path)
    assert [job.name for group in pending for job in group] == [
        "libero_object/task_00/trial_000", "libero_object/task_00/trial_001", "libero_object/task_01/trial_001"]
    eval_libero.check_settings(tmp_path, args)  # the same settings: fine
    other = eval_libero.parse_args(["--model", "m", "--task_suite_name", "libero_object", "--push_step", "40",
                                    "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="other settings \\(push_step=None, now 40\\)"):
        eval_libero.check_settings(tmp_path, other)


def test_a_condition_run_in_parts_merges_into_one_finished_evaluation_of_their_union(tmp_path):
    from scripts import merge_conditions

    def finished_part(name, first_trial, successes, push_step=None):
        folder = tmp_path / name
        folder.mkdir()
        argv = ["--model", "m", "--task_suite_name", "libero_object", "--task_ids", "0", "--first_trial",
                str(first_trial), "--num_trials_per_task", "2", "--output_dir", str(folder)]
        args = eval_libero.parse_args(argv + (["--push_step", str(push_step)] if push_step else []))
        eval_libero.check_settings(folder, args)
        episodes = [EpisodeResult("libero_object", 0, "task 0", first_trial + i, first_trial + i, ok, 100 + i, 5.0,
                                  100.0, "open_loop", "nominal", None) for i, ok in enumerate(successes)]
        (folder / "results_rank0.jsonl").write_text("".join(json.dumps(asdict(e)) + "\n" for e in episodes))
        eval_libero.write_summary(folder, args, 1.0)
        return folder, episodes

    (first, early), (second, late) = finished_part("a", 0, [True, False]), finished_part("b", 2, [True, True])
    merged = tmp_path / "merged"
    assert merge_conditions.main([str(first), str(second), "--output", str(merged)]) == 4
    union = eval_libero.parse_args(["--model", "m", "--task_suite_name", "libero_object", "--task_ids", "0",
                                    "--num_trials_per_task", "4", "--output_dir", str(merged)])
    eval_libero.check_settings(merged, union)  # the parts' settings: the union resumes them
    assert eval_libero.pending_jobs(eval_libero.make_jobs(union), merged) == []  # nothing left to run
    summary = eval_libero.write_summary(merged, union, 0.0)
    assert summary["overall"] == summarize(early + late)["overall"] and summary["overall"]["successes"] == 3

    with pytest.raises(ValueError, match="is not empty"):
        merge_conditions.merge([first], merged)
    with pytest.raises(ValueError, match="in both"):
        merge_conditions.merge([first, first], tmp_path / "twice")
    pushed, _ = finished_part("c", 4, [False], push_step=40)
    with pytest.raises(ValueError, match="other settings .*push_step"):
        merge_conditions.merge([first, pushed], tmp_path / "mixed")
    with pytest.raises(ValueError, match="not a finished evaluation"):
        merge_conditions.merge([first, tmp_path / "missing"], tmp_path / "unfinished")


def test_the_comparison_table_and_figure_show_every_condition(tmp_path):
    from fasvla.libero.comparison import POLICIES, comparison_figure, comparison_table, condition_folder

    summary = summarize(results())  # 2 of 4
    summaries = {("nominal", "chunk"): summary, ("push", "stream anticipatory"): summary}
    table = comparison_table(summaries, [POLICIES[0], POLICIES[3]], ["nominal", "push"])
    assert "| chunk | 50.0% [15, 85] (4) | not run |" in table
    assert "| stream anticipatory | not run | 50.0% [15, 85] (4) |" in table
    assert "| chunk | 200 steps, 5.0 ms | not run |" in table  # (100 + 280 + 120 + 300) / 4
    held = {**summary, "overall": {**summary["overall"], "held_steps": 2.5}}
    assert "| chunk | 200 steps, 5.0 ms, 2.5 held |" in comparison_table({("nominal", "chunk"): held}, [POLICIES[0]],
                                                                         ["nominal"])
    figure = comparison_figure(summaries, [POLICIES[0], POLICIES[3]], ["nominal", "push"], tmp_path / "c.png")
    assert figure.stat().st_size > 5000
    assert condition_folder(tmp_path, "action delay", POLICIES[2]) == tmp_path / "action_delay" / "stream_synchronous"


def test_the_sign_test_matches_scipys_exact_binomial_test():
    from scipy.stats import binomtest

    from fasvla.libero.comparison import sign_test_p

    for wins in range(9):
        for losses in range(9):
            expected = binomtest(wins, wins + losses).pvalue if wins + losses else 1.0
            assert sign_test_p(wins, losses) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(ValueError, match="got -1 and 2"):
        sign_test_p(-1, 2)


def test_paired_differences_count_only_the_episodes_both_policies_ran():
    from fasvla.libero.comparison import POLICIES, paired_difference, paired_differences, paired_table

    anticipatory = {("s", 0, t): ok for t, ok in enumerate([True, True, True, False, True])}
    open_loop = {("s", 0, t): ok for t, ok in enumerate([True, False, False, True])}  # trial 4 not run
    paired = paired_difference(anticipatory, open_loop)
    assert paired == {"episodes": 4, "difference": 0.25, "wins": 2, "losses": 1, "p": 1.0}
    assert paired_difference(anticipatory, {}) is None
    outcomes = {("push", "stream anticipatory"): anticipatory, ("push", "stream open loop"): open_loop}
    differences = paired_differences(outcomes, [POLICIES[1], POLICIES[3]], ["nominal", "push"])
    assert [(d["pair"], d["perturbation"]) for d in differences] == [
        (["stream anticipatory", "stream open loop"], "nominal"), (["stream anticipatory", "stream open loop"], "push")]
    table = paired_table(differences, ["nominal", "push"])
    assert "| stream anticipatory - stream open loop | not run | +25 (2/1, p=1.00) |" in table


def test_two_runs_of_a_policy_agree_episode_by_episode_or_say_where_not(tmp_path, capsys):
    from scripts import episode_agreement

    def episode(trial, success, steps, task=0):
        return {"suite": "s", "task_id": task, "trial": trial, "success": success, "steps": steps}

    run = [episode(0, True, 100), episode(1, False, 280), episode(2, True, 150), episode(0, True, 90, task=1)]
    reference = [episode(0, True, 100), episode(1, True, 200), episode(2, True, 151), episode(3, False, 280)]
    folders = []
    for name, episodes in (("run", run), ("reference", reference)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({"summary": {}, "episodes": episodes}))
        folders.append(str(tmp_path / name))
    agreement = episode_agreement.main([*folders, "--output", str(tmp_path / "agreement.json")])
    # trial 3 and task 1 ran in one of them only: three episodes are shared
    assert agreement == {"episodes": 3, "successes": 2, "reference_successes": 3, "other_outcome": [["s", 0, 1]],
                         "other_length": [["s", 0, 1], ["s", 0, 2]],
                         "paired": {"episodes": 3, "difference": -1 / 3, "wins": 0, "losses": 1, "p": 1.0}}
    assert json.loads((tmp_path / "agreement.json").read_text()) == agreement
    assert "3 shared episodes: 2 solved against 3; 1 end otherwise, 2 at another step" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no results.json"):
        episode_agreement.main([folders[0], str(tmp_path / "missing")])


def test_pairs_across_models_are_added_once_and_checked_against_the_policies_run():
    import compare_libero
    from fasvla.libero.comparison import paired_differences

    args = compare_libero.parse_args(["--stream_model", "new=runs/a", "old=runs/b", "--pair", "new open loop",
                                      "old open loop", "--pair", "new anticipatory", "new open loop"])
    new = {("s", 0, t): ok for t, ok in enumerate([True, True, True, False])}
    old = {("s", 0, t): ok for t, ok in enumerate([False, False, True, True])}
    outcomes = {("nominal", "new open loop"): new, ("nominal", "old open loop"): old}
    differences = paired_differences(outcomes, args.chosen, ["nominal"], args.pair)
    pairs = [tuple(d["pair"]) for d in differences]
    assert pairs.count(("new anticipatory", "new open loop")) == 1  # a model's own pair, not repeated
    assert pairs[-1] == ("new open loop", "old open loop") and len(pairs) == 7
    assert differences[-1]["paired"] == {"episodes": 4, "difference": 0.25, "wins": 2, "losses": 1, "p": 1.0}
    with pytest.raises(SystemExit):
        compare_libero.parse_args(["--stream_model", "new=runs/a", "--pair", "new open loop", "old open loop"])


def test_named_models_give_every_policy_and_the_pairs_of_each_model():
    import compare_libero
    from fasvla.libero.comparison import policy_pairs

    args = compare_libero.parse_args(["--stream_model", "v1=runs/a", "fixed=runs/b", "--chunk_model", "runs/c",
                                      "--task_ids", "0"])
    assert args.models == {"v1": "runs/a", "fixed": "runs/b", "chunk": "runs/c"} and args.common == ["--task_ids", "0"]
    names = [policy.name for policy in args.chosen]
    assert names == ["chunk", "v1 open loop", "v1 synchronous", "v1 anticipatory", "fixed open loop",
                     "fixed synchronous", "fixed anticipatory"]
    pairs = policy_pairs(args.chosen)
    assert ("fixed anticipatory", "fixed open loop") in pairs and ("v1 anticipatory", "chunk") in pairs
    assert not any(a.split()[0] != b.split()[0] and b != "chunk" for a, b in pairs)  # never v1 against fixed
    chosen = compare_libero.parse_args(["--stream_model", "x", "--chunk_model", "y", "--policies",
                                        "stream anticipatory"]).chosen
    assert [(p.name, p.model, p.feedback_mode) for p in chosen] == [("stream anticipatory", "stream", "anticipatory")]


def test_the_delay_sweep_adds_a_condition_per_delay_and_pairs_each_policy_with_itself_at_zero(tmp_path):
    import compare_libero
    from fasvla.libero.comparison import delay_differences, delay_sweep_figure, perturbations

    args = compare_libero.parse_args(["--chunk_model", "runs/c", "--perturbations", "nominal", "push",
                                      "--inference_delays", "4", "0", "1"])
    assert args.delays == [0, 1, 4]
    assert args.conditions == ["nominal", "push", "inference delay 1", "inference delay 4"]
    arguments = perturbations(2, (40, 0, 60, 0, 4), 0.1, (0, 1, 4))
    assert arguments["inference delay 4"] == ["--inference_delay", "4"] and "inference delay 0" not in arguments
    chunk = args.chosen[0]
    outcomes = {("nominal", "chunk"): {("s", 0, i): True for i in range(4)},
                ("inference delay 4", "chunk"): {("s", 0, i): i < 1 for i in range(4)}}
    costs = delay_differences(outcomes, [chunk], [0, 1, 4])
    assert [(d["pair"], d["perturbation"]) for d in costs] == [
        (["chunk at D=1", "chunk at D=0"], "inference delay 1"),
        (["chunk at D=4", "chunk at D=0"], "inference delay 4")]
    assert costs[0]["paired"] is None
    assert costs[1]["paired"]["difference"] == -0.75 and costs[1]["paired"]["losses"] == 3
    summaries = {(name, "chunk"): {"overall": {"success_rate": rate, "ci95": [rate - 0.1, rate + 0.1]}}
                 for name, rate in (("nominal", 0.9), ("inference delay 1", 0.8), ("inference delay 4", 0.3))}
    assert delay_sweep_figure(summaries, [chunk], [0, 1, 4], tmp_path / "sweep.png").stat().st_size > 5000


@pytest.mark.parametrize("argv, message", [
    (["--stream_model", "a=x", "a=y"], "given twice"),
    (["--stream_model", "x", "--policies", "chunk"], r"--policies \['chunk'\] are not among"),
    ([], "at least one --stream_model or --chunk_model"),
    (["--chunk_model", "x", "--inference_delays", "-1"], "--inference_delays must be >= 0"),
])
def test_bad_comparisons_are_refused(argv, message, capsys):
    import compare_libero

    with pytest.raises(SystemExit):
        compare_libero.parse_args(argv)
    assert re.search(message, capsys.readouterr().err)

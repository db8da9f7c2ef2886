"""The scripted LIBERO expert: its pure parts (controller, geometry, grasps, plans, diversity, motions) without a
simulator, then (slow) the expert, the replay and the generator on the real simulator at 64 px."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import generate_libero_demos
from fasvla.libero.expert.controller import (CLOSE, OPEN, POSITION_PER_UNIT, ROTATION_PER_UNIT, pose_action,
                                             rotation_action, rotation_error)
from fasvla.libero.expert.diversity import Diversity, Style, episode_rng
from fasvla.libero.expert.generation import Attempt, make_jobs, summarize
from fasvla.libero.expert.geometry import (R_DOWN, ObjectShape, box_surface_points, closing_yaw, downward_rotation,
                                           finger_axis, footprint, horizontal_rotation, rotation_z,
                                           triangle_surface_points, wrap_half_turn)
from fasvla.libero.expert.grasps import (MAX_GRASP_WIDTH, choose_grasp, corridor_top, fitting_turn,
                                         gripper_collisions, hand_floor)
from fasvla.libero.expert.motions import Arm, EpisodeEnded
from fasvla.libero.expert.plans import OpenDrawer, PickAndPlace, TurnOn, plan_task

# --- controller -------------------------------------------------------------------------------------------------


def test_near_targets_put_the_controllers_goal_exactly_on_the_target():
    position, target = np.array([0.1, -0.2, 1.0]), np.array([0.13, -0.18, 0.97])  # 4.2 cm away
    action = pose_action(position, R_DOWN, target, R_DOWN, CLOSE)
    np.testing.assert_allclose(position + POSITION_PER_UNIT * action[:3], target, atol=1e-15)
    np.testing.assert_allclose(action[3:6], 0.0, atol=1e-12)
    assert action[6] == CLOSE


def test_far_targets_saturate_at_the_requested_speed():
    action = pose_action(np.zeros(3), R_DOWN, np.array([1.0, -0.002, 0.0]), R_DOWN, OPEN, speed=0.4)
    np.testing.assert_allclose(action[:3], [0.4, -0.04, 0.0], atol=1e-12)


def test_the_rotation_action_turns_the_hand_onto_the_target_in_world_frame():
    rng = np.random.default_rng(0)
    for _ in range(20):
        current = Rotation.random(random_state=rng).as_matrix()
        error = rng.normal(size=3)
        error *= rng.uniform(0.05, 0.45) / np.linalg.norm(error)  # every component under 0.5 rad: no clipping
        target = Rotation.from_rotvec(error).as_matrix() @ current
        action = rotation_action(current, target)
        # the OSC controller's goal: R(0.5 a) R_current
        reached = Rotation.from_rotvec(ROTATION_PER_UNIT * action).as_matrix() @ current
        np.testing.assert_allclose(reached, target, atol=1e-12)
        assert rotation_error(current, target) == pytest.approx(np.linalg.norm(error), abs=1e-12)


def test_large_rotation_errors_are_clipped_but_point_the_right_way():
    target = Rotation.from_rotvec([0.0, 0.0, 2.0]).as_matrix() @ R_DOWN
    np.testing.assert_allclose(rotation_action(R_DOWN, target), [0.0, 0.0, 1.0], atol=1e-12)


# --- geometry ---------------------------------------------------------------------------------------------------


def test_downward_poses_close_the_fingers_along_the_finger_axis():
    np.testing.assert_array_equal(downward_rotation(0.0), R_DOWN)
    for yaw in (-1.2, 0.0, 0.4, 1.5):
        hand = downward_rotation(yaw)
        np.testing.assert_allclose(hand[:2, 1], finger_axis(yaw), atol=1e-12)  # the hand's y axis
        np.testing.assert_allclose(hand[:, 2], [0.0, 0.0, -1.0], atol=1e-12)  # pointing down
    for angle in (-2.0, 0.3, 1.9):
        axis = finger_axis(closing_yaw(angle))
        assert abs(axis @ [np.cos(angle), np.sin(angle)]) == pytest.approx(1.0)
        assert -np.pi / 2 <= closing_yaw(angle) < np.pi / 2


def test_half_turns_of_the_gripper_are_the_same_yaw():
    for yaw in (-3.0, -1.0, 0.5, 2.5, 7.0):
        wrapped = wrap_half_turn(yaw)
        assert -np.pi / 2 <= wrapped < np.pi / 2
        assert np.sin(wrapped - yaw) == pytest.approx(0.0, abs=1e-12)


def test_horizontal_grasps_are_rotations_with_the_requested_approach():
    hand = horizontal_rotation([0.3, -1.0, 0.0])
    np.testing.assert_allclose(hand.T @ hand, np.eye(3), atol=1e-12)
    assert np.linalg.det(hand) == pytest.approx(1.0)
    np.testing.assert_allclose(hand[:, 2], np.array([0.3, -1.0, 0.0]) / np.hypot(0.3, 1.0), atol=1e-12)
    np.testing.assert_allclose(hand[:, 1], [0.0, 0.0, 1.0], atol=1e-12)  # fingers close vertically


def rectangle_points(center, short, long, short_axis_angle, z=(0.0, 0.05)):
    """Surface samples of an upright box whose short side lies along `short_axis_angle`."""
    local = box_surface_points([short / 2, long / 2, (z[1] - z[0]) / 2], 0.005)
    turned = local @ rotation_z(short_axis_angle).T
    return turned + np.r_[center, (z[0] + z[1]) / 2]


def test_the_footprint_recovers_a_turned_rectangle():
    points = rectangle_points([0.1, -0.05], 0.04, 0.09, 0.5)
    box = footprint(points[:, :2])
    np.testing.assert_allclose(box.center, [0.1, -0.05], atol=1e-3)
    # the search's 2-degree resolution: 0.5 rad is 0.6 degrees off the nearest angle it tries
    assert box.short == pytest.approx(0.04, abs=2e-3) and box.long == pytest.approx(0.09, abs=2e-3)
    assert np.sin(box.short_axis_angle - 0.5) == pytest.approx(0.0, abs=0.04)


def test_surface_samples_lie_on_the_surface_and_cover_it():
    half = np.array([0.03, 0.01, 0.02])
    points = box_surface_points(half, 0.01)
    assert np.isclose(np.abs(points), half).any(axis=1).all() and (np.abs(points) <= half + 1e-12).all()
    face = points[np.isclose(points[:, 2], half[2])]  # the top face: a grid at most 1 cm apart
    assert len(np.unique(face[:, 0].round(6))) >= 7 and len(np.unique(face[:, 1].round(6))) >= 3
    vertices = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.05, 0.0]])
    samples = triangle_surface_points(vertices, np.array([[0, 1, 2]]), 0.01)
    assert (samples[:, 2] == 0).all() and (samples[:, :2] >= -1e-12).all()
    assert (samples[:, 0] / 0.1 + samples[:, 1] / 0.05 <= 1 + 1e-9).all()  # inside the triangle
    assert len(samples) > 30 and (samples[:3] == vertices).all()


# --- grasps -----------------------------------------------------------------------------------------------------


def test_the_gripper_model_counts_the_points_between_and_above_the_fingers():
    grip = np.array([0.0, 0.0, 0.1])
    axis = finger_axis(0.0)
    points = np.array([np.r_[0.05 * axis, 0.1],  # at a finger
                       np.r_[0.03 * np.array([-axis[1], axis[0]]), 0.1],  # beside the fingers, below the hand
                       np.r_[0.09 * axis, 0.2],  # under the wide hand
                       [0.0, 0.0, 0.05]])  # below the fingertips
    assert gripper_collisions(points, grip, 0.0) == 2


def test_top_grasps_go_across_the_short_side_and_avoid_neighbours():
    shape = ObjectShape.from_points(rectangle_points([0.0, 0.0], 0.04, 0.12, 0.0))  # short side along x
    free = choose_grasp(shape, np.zeros((0, 3)))
    assert abs(finger_axis(free.yaw) @ [1.0, 0.0]) == pytest.approx(1.0, abs=1e-3)  # fingers close along x
    np.testing.assert_allclose(free.position, [0.0, 0.0, 0.025], atol=2e-3)  # centre, 2.5 cm below the top
    # a tall neighbour just beside one end: the grasp slides along the long side, away from it
    neighbour = rectangle_points([0.06, 0.05], 0.04, 0.04, 0.0, z=(0.0, 0.2))
    crowded = choose_grasp(shape, neighbour)
    assert crowded.collisions == 0 and crowded.position[1] < -0.005


def test_a_grasp_turn_keeps_the_object_between_the_fingers():
    assert fitting_turn(0.04, 0.05, 0.3) == 0.3
    narrow_enough = fitting_turn(0.06, 0.10, 0.3)
    assert 0 < narrow_enough < 0.3
    assert 0.06 * np.cos(narrow_enough) + 0.10 * np.sin(narrow_enough) <= MAX_GRASP_WIDTH


def test_wide_objects_are_grasped_by_the_rim_on_the_robot_side_unless_it_failed():
    bowl = ObjectShape.from_points(rectangle_points([0.0, 0.0], 0.12, 0.12, 0.0))
    grasp = choose_grasp(bowl, np.zeros((0, 3)))
    assert grasp.rim_angle is not None and grasp.position[0] < -0.05  # the side facing the robot (-x)
    retry = choose_grasp(bowl, np.zeros((0, 3)), avoid_angles=[grasp.rim_angle])
    assert abs(np.angle(np.exp(1j * (retry.rim_angle - grasp.rim_angle)))) >= 0.5


def test_clearance_heights_come_from_the_obstacles_under_the_hand_and_the_path():
    wall = rectangle_points([0.2, 0.0], 0.01, 0.2, 0.0, z=(0.0, 0.15))
    assert corridor_top(wall, np.array([0.0, 0.0]), np.array([0.4, 0.0]), 0.05) == pytest.approx(0.15)
    assert corridor_top(wall, np.array([0.0, 0.3]), np.array([0.4, 0.3]), 0.05) == -np.inf
    assert hand_floor(wall, np.array([0.15, 0.0]), np.pi / 2) == pytest.approx(0.15 - 0.03 + 0.01)
    assert hand_floor(wall, np.array([0.0, 0.0]), 0.0) == -np.inf


# --- plans ------------------------------------------------------------------------------------------------------


def test_goals_become_skill_steps():
    drawers = {"wooden_cabinet_1_top_region"}
    plan = plan_task([("In", "bowl_1", "wooden_cabinet_1_top_region"), ("on", "pot_1", "stove_1_cook_region"),
                      ("open", "wooden_cabinet_1_middle_region"), ("turnon", "stove_1"),
                      ("in", "soup_1", "basket_1_contain_region")], drawers.__contains__)
    assert plan == [OpenDrawer("wooden_cabinet_1_top_region", make_room_for="bowl_1"),
                    PickAndPlace("bowl_1", "in", "wooden_cabinet_1_top_region"),
                    PickAndPlace("pot_1", "on", "stove_1_cook_region"), OpenDrawer("wooden_cabinet_1_middle_region"),
                    TurnOn("stove_1"), PickAndPlace("soup_1", "in", "basket_1_contain_region")]


def test_unsupported_goals_are_named():
    with pytest.raises(ValueError, match="'close'"):
        plan_task([("in", "mug_1", "microwave_1_heating_region"), ("close", "microwave_1")], lambda name: False)


# --- diversity --------------------------------------------------------------------------------------------------


def test_styles_are_a_function_of_the_seed_and_the_attempt():
    diversity = Diversity()
    first = diversity.sample(episode_rng(0, 1, 2, 3, 0))
    assert first == diversity.sample(episode_rng(0, 1, 2, 3, 0))
    others = [diversity.sample(episode_rng(*key)) for key in ((1, 1, 2, 3, 0), (0, 1, 2, 3, 1), (0, 1, 2, 4, 0))]
    assert all(other != first for other in others)
    styles = [diversity.sample(episode_rng(0, 0, 0, k, 0)) for k in range(50)]
    speeds = [s.speed for s in styles]
    assert min(speeds) >= diversity.speed[0] and max(speeds) <= diversity.speed[1] and np.std(speeds) > 0.05
    plain = Diversity.none().sample(episode_rng(0, 0, 0, 0, 0))
    assert plain.speed == 1.0 and plain.action_noise == 0.0 and plain.grasp_yaw == 0.0


@pytest.mark.parametrize("field, value, message", [("speed", (0.5, 1.2), "speed"), ("lift_height", (0.01, 0.05),
                                                   "lift_height"), ("action_noise", -0.1, "action_noise")])
def test_bad_diversity_ranges_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        Diversity(**{field: value})


# --- motions (a point hand that goes where the controller's goal is) -------------------------------------------


class PointHand:
    """A fake scene and simulator: the hand jumps to the OSC goal (position + 0.05 a) unless a wall at z = floor
    stops it; success once the hand is within 1 mm of `goal`."""

    def __init__(self, floor=-np.inf, goal=None):
        self.position, self.rotation, self.floor, self.goal = np.zeros(3), R_DOWN.copy(), floor, goal
        self.sent, self.before = [], []  # the actions and the hand pose each was sent from

    def hand_pose(self):
        return self.position.copy(), self.rotation.copy()

    def step(self, action):
        self.sent.append(action)
        self.before.append(self.hand_pose())
        self.position = self.position + POSITION_PER_UNIT * action[:3]
        self.position[2] = max(self.position[2], self.floor)
        self.rotation = Rotation.from_rotvec(ROTATION_PER_UNIT * action[3:6]).as_matrix() @ self.rotation
        return self.goal is not None and np.linalg.norm(self.position - self.goal) < 2e-3


def make_arm(hand, noise=0.0, max_steps=200, stop_at_success=True, speed=1.0):
    style = Style(speed=speed, approach_height=0.06, lift_height=0.06, carry_clearance=0.03, grasp_yaw=0.0,
                  action_noise=noise)
    return Arm(hand.step, hand, style, np.random.default_rng(0), max_steps, stop_at_success)


def test_a_move_reaches_the_target_pose_at_the_styles_speed():
    hand = PointHand()
    arm = make_arm(hand, speed=0.5)
    assert arm.move([0.2, 0.0, 0.0], downward_rotation(0.3), OPEN)
    assert np.linalg.norm(hand.position - [0.2, 0.0, 0.0]) < 0.01
    assert rotation_error(hand.rotation, downward_rotation(0.3)) < 0.1
    assert max(abs(a[0]) for a in arm.actions) == pytest.approx(0.5)  # capped by the style
    assert all(a[6] == OPEN for a in arm.actions) and len(arm.actions) == len(hand.sent)
    sent = len(arm.actions)
    assert arm.move([0.0, 0.0, 0.0], downward_rotation(0.3), OPEN, speed=0.3)  # a careful motion: its own cap
    assert max(abs(a[0]) for a in arm.actions[sent:]) == pytest.approx(0.3)


def test_a_blocked_move_gives_up_early():
    hand = PointHand(floor=0.0)
    arm = make_arm(hand)
    assert not arm.move([0.0, 0.0, -0.3], R_DOWN, CLOSE, max_steps=150)
    assert len(arm.actions) < 20


def test_noise_perturbs_free_motions_only():
    hand = PointHand()
    arm = make_arm(hand, noise=0.02)
    arm.move([0.1, 0.0, 0.0], R_DOWN, CLOSE)
    free = np.array(arm.actions)
    assert np.ptp(free[:, 1]) > 0 and (free[:, 6] == CLOSE).all()  # noisy y, never a noisy gripper
    sent = len(arm.actions)
    arm.move([0.1, 0.0, -0.03], R_DOWN, CLOSE, speed=0.6)  # a careful motion: the exact proportional law
    for before, action in zip(hand.before[sent:], arm.actions[sent:]):
        np.testing.assert_array_equal(action, np.clip(pose_action(*before, [0.1, 0.0, -0.03], R_DOWN, CLOSE, 0.6),
                                                      -1, 1))


def test_success_or_the_step_limit_end_the_episode():
    hand = PointHand(goal=np.array([0.1, 0.0, 0.0]))
    arm = make_arm(hand)
    with pytest.raises(EpisodeEnded, match="success"):
        arm.hold([0.1, 0.0, 0.0], R_DOWN, CLOSE, steps=100)
    assert arm.success_step == len(arm.actions) < 100
    limited = make_arm(PointHand(), max_steps=5)
    with pytest.raises(EpisodeEnded, match="step limit"):
        limited.hold(np.zeros(3), R_DOWN, OPEN, steps=10)
    assert len(limited.actions) == 5


# --- generation -------------------------------------------------------------------------------------------------


def test_demonstration_slots_cycle_through_the_init_states():
    jobs = make_jobs(["libero_object"], [3], 5, [7, 8])
    assert [(j.demo_index, j.init_state_id) for j in jobs] == [(0, 7), (1, 8), (2, 7), (3, 8), (4, 7)]
    assert generate_libero_demos.parse_id_ranges(["0-3", "9"]) == [0, 1, 2, 3, 9]


def test_the_summary_counts_attempts_successes_and_kept_frames():
    def attempt(task, kept, steps):
        return Attempt("libero_goal", task, 0, 0, 0, kept, steps if kept else None, steps, 2.0,
                       render_s=10.0 if kept else None, kept=kept)

    summary = summarize([attempt(0, False, 300), attempt(0, True, 120), attempt(1, False, 90)], requested_per_task=1)
    assert summary["tasks"]["libero_goal/0"] | {"mean_plan_s": 0} == {
        "requested": 1, "kept": 1, "attempts": 2, "planned_successes": 1, "plan_success_rate": 0.5,
        "frames": 120, "mean_plan_s": 0, "mean_render_s": 10.0}
    assert summary["tasks"]["libero_goal/1"]["kept"] == 0 and summary["tasks"]["libero_goal/1"]["mean_render_s"] == 0
    assert summary["overall"]["kept"] == 1 and summary["overall"]["requested"] == 2


@pytest.mark.parametrize("argv, message", [(["--init_states", "45-52"], "--init_states must be 'random' or lie in"),
                                           (["--speed", "0.5", "2"], "speed must not exceed 1"),
                                           (["--demos_per_task", "0"], "must be >= 1")])
def test_bad_options_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        generate_libero_demos.parse_args(["--task_ids", "0"] + argv)
    assert message in capsys.readouterr().err


def test_unsupported_tasks_are_refused_before_anything_runs(capsys):
    with pytest.raises(SystemExit):  # libero_10 task 3 ends with Close(white_cabinet_1_bottom_region)
        generate_libero_demos.parse_args(["--task_suite_name", "libero_10", "--task_ids", "3"])
    error = capsys.readouterr().err
    assert "libero_10 task 3" in error and "'close'" in error


# --- the real simulator -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planning_env():
    from fasvla.libero.expert.demos import DemoEnv

    env = DemoEnv("libero_object", 0, resolution=64)
    yield env
    env.close()


def plan(env, style_seed, diversity):
    from fasvla.libero.expert.demos import plan_episode

    rng = episode_rng(style_seed, 0, 0, 0, 0)
    return plan_episode(env, 0, diversity.sample(rng), rng, max_steps=280)


@pytest.mark.slow
def test_the_expert_solves_a_task_and_its_frames_are_those_a_rendering_replay_shows(planning_env):
    """The kept frames are rendered from the data the plan held: they equal what cameras rendering at every step of
    a replay show, and the replay (MuJoCo is deterministic) ends in the plan's state."""
    from fasvla.libero.expert.demos import render_plan

    first = plan(planning_env, 0, Diversity.none())
    assert first.success_step == len(first.actions) < 200  # stopped at the first success
    recording = render_plan(planning_env, first)
    final_state = planning_env.env.env.get_sim_state().copy()
    env = planning_env.env
    env.reset(0, placement_seed=first.placement_seed + 1)  # another episode in between
    observation, successes = env.reset(0, first.placement_seed), []
    for t, action in enumerate(first.actions):
        if t % 15 == 0:  # both cameras, as every-step rendering gives them
            for camera, image in zip(env.cameras, observation.images):
                np.testing.assert_array_equal(recording.frames[camera][t], image)
            np.testing.assert_array_equal(recording.frames["observation.state"][t], observation.state)
        observation, success = env.step(action, render=True)
        successes.append(success)
    assert successes.index(True) + 1 == first.success_step
    np.testing.assert_array_equal(env.env.get_sim_state(), final_state)
    planning_env.reset(0, first.placement_seed)
    with pytest.raises(ValueError, match="not those of this plan"):
        render_plan(planning_env, first)  # the env now holds a new episode, not the plan


@pytest.mark.slow
def test_the_placement_seed_fixes_the_fixtures_that_a_hard_reset_moves():
    from fasvla.libero.expert.demos import DemoEnv

    env = DemoEnv("libero_goal", 7, resolution=64)  # the init state does not hold where the stove and cabinet sit

    def fixture_positions(seed):
        scene = env.reset(0, seed)
        return np.array([scene.data.xpos[scene.model.body(f"{name}_main").id] for name in ("flat_stove_1",
                                                                                             "wooden_cabinet_1")])

    try:
        first = fixture_positions(1)
        assert np.abs(fixture_positions(2) - first).max() > 1e-4
        np.testing.assert_array_equal(fixture_positions(1), first)
    finally:
        env.close()


@pytest.mark.slow
def test_two_seeds_give_different_successful_trajectories(planning_env):
    plans = [plan(planning_env, seed, Diversity()) for seed in (1, 2)]
    assert all(p.success_step is not None for p in plans)
    length = min(len(p.actions) for p in plans)
    assert np.abs(plans[0].actions[:length, :6] - plans[1].actions[:length, :6]).mean() > 0.05


@pytest.mark.slow
def test_the_generator_writes_a_dataset_of_the_planned_demonstrations(tmp_path, monkeypatch):
    from fasvla.data.lerobot_dataset import LeRobotDataset
    from fasvla.libero.env import LiberoEnv, to_env_action

    received, first_observations = [], []
    original_init = LiberoEnv.__init__

    def recording_init(self, *args, **kwargs):  # capture what the simulator receives and shows
        original_init(self, *args, **kwargs)
        step, reset = self.env.step, self.reset
        self.env.step = lambda action: received.append(np.array(action)) or step(action)
        self.reset = lambda *reset_args: first_observations.append(reset(*reset_args)) or first_observations[-1]

    monkeypatch.setattr(LiberoEnv, "__init__", recording_init)
    summary = generate_libero_demos.main([
        "--task_suite_name", "libero_object", "--task_ids", "0", "--demos_per_task", "1", "--init_states", "2",
        "--resolution", "64", "--seed", "3", "--output_dir", str(tmp_path)])
    attempts = [json.loads(line) for line in (tmp_path / "attempts.jsonl").read_text().splitlines()]
    kept = [a for a in attempts if a["kept"]]
    assert summary["overall"]["kept"] == 1 and len(kept) == 1 and kept[0]["render_s"] > 0
    assert not (tmp_path / "staging").exists()
    dataset = LeRobotDataset(tmp_path / "dataset")
    assert dataset.fps == 10 and dataset.num_frames == kept[0]["success_step"] == summary["overall"]["frames"]
    assert dataset.features["observation.images.image"]["dtype"] == "video"
    assert dataset.features["observation.images.image2"]["shape"] == [64, 64, 3]
    assert dataset.column("observation.state").shape == (dataset.num_frames, 8)
    assert dataset.column("action").shape == (dataset.num_frames, 7)
    assert dataset.episodes[0].tasks == ["pick up the alphabet soup and place it in the basket"]
    assert dataset.episodes[0].metadata["init_state_id"] == 2
    sent = np.array(received[-dataset.num_frames:])  # the kept plan's actions, after its reset's wait steps
    np.testing.assert_allclose([to_env_action(a) for a in dataset.column("action")], sent, atol=1e-7)
    for camera, upright in zip(["observation.images.image", "observation.images.image2"],
                               first_observations[-1].images):  # the rotated images LiberoEnv gives, not raw ones
        decoded = dataset.image(camera, 0).astype(int)
        assert np.abs(decoded - upright).mean() < 6 < np.abs(decoded - upright[::-1, ::-1]).mean()


@pytest.mark.slow
def test_a_random_reset_is_a_new_seeded_placement_not_a_fixed_init_state(planning_env):
    """Demonstrations start from random resets (DESIGN.md section 9): the placement is a function of the seed, and
    none of the benchmark's fixed init states (compared as MuJoCo states before the objects settle)."""
    libero = planning_env.env.env

    def placed(seed):  # the flattened state [time, qpos, qvel] right after the seeded hard reset
        libero.seed(seed)
        libero.reset()
        return libero.get_sim_state().copy()

    first = placed(11)
    np.testing.assert_array_equal(placed(11), first)
    assert np.abs(placed(12) - first).max() > 1e-3  # metres: the basket alone moves by about a centimetre
    fixed = np.stack(planning_env.init_states)[:, 1:]  # without the time
    assert np.abs(fixed - first[1:]).max(axis=1).min() > 1e-3
    with pytest.raises(ValueError, match="needs a placement_seed"):
        planning_env.env.reset(None)


# --- recovery demonstrations ----------------------------------------------------------------------------------


def test_recovery_perturbations_lag_noise_and_push_the_executed_actions_reproducibly():
    from fasvla.libero.env import WAIT_ACTION
    from fasvla.libero.expert.dart import Dart

    options = Dart(noise=0.2, push_probability=0.3, push_force=50.0, push_steps=2, delay=3)
    episodes = [options.episode(np.random.default_rng(seed)) for seed in (5, 5)]
    commands = [np.full(7, 0.1 * (k + 1)) for k in range(12)]
    runs = [[(e.executed(c.copy()), e.force_at(k)) for k, c in enumerate(commands)] for e in episodes]
    for (a, fa), (b, fb) in zip(*runs):  # the same stream, the same perturbations
        assert np.array_equal(a, b) and np.array_equal(fa, fb)
    episode, run = episodes[0], runs[0]
    d = episode.delay
    assert 0 <= d <= 3 and 0 <= episode.noise <= 0.2
    for k, (executed, _) in enumerate(run):
        expected = WAIT_ACTION if k < d else commands[k - d]
        assert executed[6] == np.clip(expected[6], -1, 1)  # the gripper is lagged but never noised
        assert np.abs(executed[:6] - np.clip(expected[:6], -1, 1)).max() <= 6 * episode.noise + 1e-12
    pushed = [k for k, (_, force) in enumerate(run) if force.any()]
    in_window = sum(min(p["steps"], len(commands) - p["step"]) for p in episode.pushes)  # a push near the end is cut
    assert len(pushed) == in_window and episode.injected["dart_pushes"] == len(episode.pushes) > 0
    for push in episode.pushes:
        force = np.array(push["force"])
        assert 25.0 - 1e-3 <= np.linalg.norm(force) <= 50.0 + 1e-3 and force[2] == 0  # horizontal, [0.5, 1] F
    assert not Dart().active and Dart(delay=1).active
    with pytest.raises(ValueError, match="push_probability must be in"):
        Dart(push_probability=1.5)


@pytest.mark.slow
def test_a_recovery_demonstration_labels_the_commands_while_the_states_follow_the_perturbed_execution(
        planning_env):
    from fasvla.libero.expert.dart import Dart
    from fasvla.libero.expert.demos import plan_episode

    rng = episode_rng(0, 0, 0, 0, 0)
    recovery = Dart(noise=0.2, push_probability=0.02, push_force=40.0).episode(episode_rng(0, 0, 0, 0, 0, stream=1))
    plan = plan_episode(planning_env, None, Diversity.none().sample(rng), rng, 280, recovery=recovery)
    assert plan.success_step is not None and plan.injected["dart_noise"] == recovery.noise
    perturbed = np.stack([o.state for o in planning_env.observations])
    planning_env.reset(None, plan.placement_seed)  # the same scene, the labels executed as they are
    for action in plan.actions:
        planning_env.step(action)
    replayed = np.stack([o.state for o in planning_env.observations])
    assert np.abs(replayed - perturbed).max() > 0.01  # metres: the labels are not what moved the robot


@pytest.mark.slow
def test_plain_slots_before_the_recovery_slots_are_the_plain_runs_demonstrations(tmp_path):
    from fasvla.data.lerobot_dataset import LeRobotDataset

    common = ["--task_suite_name", "libero_object", "--task_ids", "0", "--resolution", "32", "--seed", "4"]
    generate_libero_demos.main(common + ["--demos_per_task", "1", "--output_dir", str(tmp_path / "plain")])
    generate_libero_demos.main(common + ["--demos_per_task", "2", "--dart_from_slot", "1", "--dart_noise", "0.3",
                                         "--output_dir", str(tmp_path / "mixed")])
    read = lambda name: [json.loads(line) for line in (tmp_path / name / "attempts.jsonl").open()]  # noqa: E731
    plain, mixed = read("plain"), read("mixed")
    first = next(a for a in mixed if a["demo_index"] == 0 and a["kept"])
    assert {k: first[k] for k in ("placement_seed", "style", "success_step")} == \
        {k: plain[-1][k] for k in ("placement_seed", "style", "success_step")} and first["injected"] is None
    assert next(a for a in mixed if a["demo_index"] == 1)["injected"]["dart_noise"] > 0
    a, b = LeRobotDataset(tmp_path / "plain/dataset"), LeRobotDataset(tmp_path / "mixed/dataset")
    length = a.episodes[0].length
    np.testing.assert_array_equal(a.column("action"), b.column("action")[:length])


@pytest.mark.slow
def test_an_interrupted_generation_resumes_with_the_demonstrations_of_an_uninterrupted_one(tmp_path, monkeypatch):
    from fasvla.data.lerobot_dataset import LeRobotDataset

    common = ["--task_suite_name", "libero_object", "--task_ids", "0", "--demos_per_task", "2", "--resolution",
              "32", "--seed", "5", "--num_workers", "1"]
    generate_libero_demos.main(common + ["--output_dir", str(tmp_path / "straight")])
    run_jobs = generate_libero_demos.run_jobs

    def stopping_after_one(jobs, options, num_workers, on_result):
        def once(attempts):
            on_result(attempts)
            raise KeyboardInterrupt  # the session ends after the first demonstration
        run_jobs(jobs[:1], options, num_workers, once)

    monkeypatch.setattr(generate_libero_demos, "run_jobs", stopping_after_one)
    with pytest.raises(KeyboardInterrupt):
        generate_libero_demos.main(common + ["--output_dir", str(tmp_path / "resumed")])
    with (tmp_path / "resumed" / "attempts.jsonl").open("a") as f:
        f.write('{"suite": "libero_obj')  # the line being written when the session ended
    monkeypatch.setattr(generate_libero_demos, "run_jobs", run_jobs)
    ran = []
    monkeypatch.setattr(generate_libero_demos, "run_jobs",
                        lambda jobs, *rest: ran.extend(jobs) or run_jobs(jobs, *rest))
    summary = generate_libero_demos.main(common + ["--output_dir", str(tmp_path / "resumed")])
    assert [job.demo_index for job in ran] == [1] and summary["overall"]["kept"] == 2
    lines = (tmp_path / "resumed" / "attempts.jsonl").read_text().splitlines()
    assert {json.loads(line)["demo_index"] for line in lines} == {0, 1}  # every line whole again
    straight, resumed = LeRobotDataset(tmp_path / "straight/dataset"), LeRobotDataset(tmp_path / "resumed/dataset")
    for column in ("action", "observation.state"):
        np.testing.assert_array_equal(straight.column(column), resumed.column(column))
    with pytest.raises(SystemExit, match="holds a finished run"):
        generate_libero_demos.main(common + ["--output_dir", str(tmp_path / "resumed")])


def test_a_folder_of_another_generation_is_refused(tmp_path):
    common = ["--task_suite_name", "libero_object", "--task_ids", "0", "--demos_per_task", "1",
              "--output_dir", str(tmp_path)]
    args = generate_libero_demos.parse_args(common + ["--seed", "1"])
    assert generate_libero_demos.resumed_attempts(tmp_path, args) == []  # a new run: its settings written
    with pytest.raises(SystemExit, match="holds a run with other seed"):
        generate_libero_demos.resumed_attempts(tmp_path, generate_libero_demos.parse_args(common + ["--seed", "2"]))
    (tmp_path / "settings.json").unlink()
    with pytest.raises(SystemExit, match="is not empty and holds no run to resume"):
        (tmp_path / "other").write_text("x")
        generate_libero_demos.resumed_attempts(tmp_path, args)

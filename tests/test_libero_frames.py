"""Cameras rendered on demand (fasvla/libero/frames.py) on the real simulator: the pixels equal those of robosuite's
camera observables, the physics does not depend on what is rendered or when, and an evaluation gives the same
episodes with full-rate video or with only the frames the policy saw. Needs scripts/setup_libero.sh."""

import json

import numpy as np
import pytest

import eval_libero
from fasvla.data.lerobot_dataset import DatasetError, LeRobotDataset
from fasvla.libero.env import LiberoEnv, libero_task, observation_state, reset_to_init_state, to_env_action, upright

pytestmark = pytest.mark.slow
RESOLUTION = 64
TASK = 1


@pytest.fixture(scope="module")
def env():
    with LiberoEnv("libero_object", TASK, resolution=RESOLUTION) as environment:
        yield environment


def reference_env(suite: str, task_id: int):
    """LIBERO as the evaluation ran it before: both camera observables rendered at every step, a new rendering
    context at every hard reset."""
    from libero.libero.envs import OffScreenRenderEnv

    task = libero_task(suite, task_id)
    environment = OffScreenRenderEnv(bddl_file_name=str(task.bddl_file), camera_heights=RESOLUTION,
                                     camera_widths=RESOLUTION)
    environment.seed(7)
    environment.init_states = task.init_states
    return environment


@pytest.fixture(scope="module")
def reference():
    environment = reference_env("libero_object", TASK)
    yield environment
    current(environment).close()


def reference_images(raw: dict) -> list[np.ndarray]:
    return [upright(raw["agentview_image"]), upright(raw["robot0_eye_in_hand_image"])]


def current(environment):
    """robosuite renders into whichever GL context is current: the reference's own, not the one under test."""
    context = environment.env.sim._render_context_offscreen
    if context is not None:
        context.gl_ctx.make_current()
    return environment


def test_images_rendered_on_demand_equal_the_camera_observables_and_leave_the_physics_alone(env, reference):
    rng = np.random.default_rng(0)
    observation = env.reset(3, placement_seed=11)
    raw = reset_to_init_state(current(reference), reference.init_states[3], 11)
    assert not observation.rendered and "agentview_image" not in observation.raw  # nothing rendered by the step
    previous = None
    for step in range(30):
        np.testing.assert_array_equal(observation.state, observation_state(raw))
        if step % 4 == 0:  # read now: the frame of this step
            for ours, theirs in zip(observation.images, reference_images(raw)):
                np.testing.assert_array_equal(ours, theirs)
        if step % 4 == 1:  # read one step late, as the real-time runner may: still this step's frame
            for ours, theirs in zip(previous[0].images, previous[1]):
                np.testing.assert_array_equal(ours, theirs)
        previous = observation, reference_images(raw)
        action = rng.uniform(-1, 1, 7)
        force = np.array([0.0, 40.0, 0.0]) if step in (10, 11) else None
        observation, success = env.step(action, push_force=force)
        reference.env.sim.data.xfrc_applied[reference.env.sim.model.body_name2id("gripper0_eef"), :3] = (
            0.0 if force is None else force)
        raw, _, done, _ = current(reference).step(to_env_action(action))
        assert success == done
    np.testing.assert_array_equal(env.env.get_sim_state(), reference.get_sim_state())  # bit for bit


def test_the_rendering_context_kept_across_hard_resets_renders_what_a_new_one_does():
    """libero_goal task 7: the hard reset moves the stove and the cabinet, the kept context must show them moved."""
    positions = []
    with LiberoEnv("libero_goal", 7, resolution=RESOLUTION) as env:
        reference = reference_env("libero_goal", 7)
        try:
            for placement_seed in (1, 2, 1):
                observation = env.reset(0, placement_seed)
                raw = reset_to_init_state(current(reference), reference.init_states[0], placement_seed)
                for ours, theirs in zip(observation.images, reference_images(raw)):
                    np.testing.assert_array_equal(ours, theirs)
                positions.append(env.env.env.sim.model.body_pos.copy())
        finally:
            current(reference).close()
    assert np.abs(positions[1] - positions[0]).max() > 1e-4  # the fixtures did move
    np.testing.assert_array_equal(positions[2], positions[0])


def test_a_hard_reset_frees_the_old_model_without_a_garbage_collection(env):
    import gc
    import weakref

    env.reset(0)
    old_model = weakref.ref(env.env.env.sim.model._model)
    enabled = gc.isenabled()
    gc.disable()  # reference counting alone must free it (a model holds 250 MB of textures here)
    try:
        env.reset(1)
        assert old_model() is None
    finally:
        if enabled:
            gc.enable()


def test_a_frame_the_simulator_no_longer_holds_is_refused_by_name(env):
    observation = env.reset(0)
    for _ in range(2):  # two more frames: the default keeps the newest two
        env.step(np.zeros(7))
    with pytest.raises(RuntimeError, match=r"frame \d+ is no longer held"):
        observation.images
    stale = env.step(np.zeros(7))[0]
    env.reset(1)  # a hard reset rebuilds the model: every frame of the old one is gone
    with pytest.raises(RuntimeError, match="no longer held"):
        stale.images
    assert env.step(np.zeros(7), render=True)[0].rendered


def _evaluate(model_dir, output_dir, extra):
    eval_libero.main(["--model", str(model_dir), "--task_suite_name", "libero_object", "--task_ids", "0",
                      "--num_trials_per_task", "2", "--first_trial", "3", "--max_steps", "18", "--resolution",
                      str(RESOLUTION), "--action_noise", "0.05", "--output_dir", str(output_dir), *extra])
    results = json.loads((output_dir / "results.json").read_text())["episodes"]
    return {episode["trial"]: (episode, LeRobotDataset(episode["recording"])) for episode in results}


@pytest.mark.parametrize("objective", ["stream_joint", "chunk"])
def test_an_evaluation_gives_the_same_episodes_whichever_frames_it_renders(objective, tiny_models, tmp_path):
    model, processor = tiny_models(objective)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    every = _evaluate(tmp_path / "model", tmp_path / "every", ["--max_episodes_rendered", "2"])
    observed = _evaluate(tmp_path / "model", tmp_path / "observed", ["--max_episodes_rendered", "0"])
    camera = "observation.images.image"
    for trial, (episode, video) in every.items():
        other, sparse = observed[trial]
        for key in ("success", "steps", "init_state_id", "perturbation"):
            assert episode[key] == other[key]
        for column in ("observation.state", "action", "policy.action", "policy.state_input", "policy.observed"):
            np.testing.assert_array_equal(video.column(column), sparse.column(column))
        seen = np.flatnonzero(sparse.column("policy.observed"))
        n_action_steps = model.config.n_action_steps
        assert list(seen) == list(range(0, episode["steps"], n_action_steps))  # chunk starts only
        assert video.features[camera]["dtype"] == "video" and sparse.features[camera]["dtype"] == "image"
        for t in seen:  # the frames the policy saw, losslessly: as close to the video's as its coding allows
            assert np.abs(sparse.image(camera, int(t)).astype(int) - video.image(camera, int(t))).mean() < 6
        with pytest.raises(DatasetError, match="has no frame at row 1"):
            sparse.image(camera, 1)

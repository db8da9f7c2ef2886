"""One new LIBERO episode run while the app watches, recorded like the evaluation records its episodes.

The simulator lives on one thread of its own: MuJoCo's EGL context belongs to the thread that made it, while the
web server calls the app from a pool of threads. The episode thread reports every policy step through a queue; the
app shows the newest report whenever it is ready for one, so a slow browser never slows the robot down.
"""

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fasvla.app.rollouts import EpisodeData, Rollout
from fasvla.libero.env import CONTROL_FREQUENCY, SUITE_MAX_STEPS
from fasvla.libero.episode import EpisodeJob, EpisodeResult, EpisodeRun, episode_seed, make_env
from fasvla.libero.perturbations import Perturbation
from fasvla.libero.policy import make_controller
from fasvla.libero.recording import ACTION_NAMES, STATE_NAMES, EpisodeRecorder


@dataclass
class LiveProgress:
    step: int  # policy steps taken so far
    images: list[np.ndarray]  # the cameras' newest frames, (H, W, 3) uint8
    recorder: EpisodeRecorder  # the episode's recording (it grows while the episode runs)
    rollout: Rollout  # how the episode is labelled
    result: EpisodeResult | None = None  # set on the last report
    recording: Path | None = None  # where the episode was saved (last report)

    @property
    def episode(self) -> EpisodeData:
        """The first `step` steps recorded, as the app's arrays: built only for the reports someone looks at."""
        return recorded_episode(self.recorder, self.rollout, self.step)


class LiveRunner:
    """Runs episodes of a loaded model; `record_dir` receives one LeRobot dataset per episode."""

    def __init__(self, model, processor, model_name: str, record_dir: Path, resolution: int = 256, seed: int = 7,
                 gripper_close_sign: float = 1.0):
        self.model, self.processor, self.model_name = model, processor, model_name
        self.record_dir = Path(record_dir)
        self.options = {"resolution": resolution, "seed": seed, "gripper_close_sign": gripper_close_sign}
        self.simulator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libero")
        self.env = None

    def run(self, job: EpisodeJob, feedback_mode: str | None, perturbation: Perturbation, max_steps: int | None):
        """Yields a `LiveProgress` per step taken (skipping those the caller was too slow to take), the last one
        with the result and the recording."""
        reports = queue.Queue()
        finished = self.simulator.submit(self._episode, job, feedback_mode, perturbation, max_steps, reports)
        while (progress := _newest(reports)) is not None:
            yield progress
        finished.result()  # re-raises what stopped the episode, if anything did

    def _episode(self, job, feedback_mode, perturbation, max_steps, reports: queue.Queue) -> None:
        try:
            env = self._env(job, max_steps)
            mode = feedback_mode or self.model.config.feedback_mode
            controller = make_controller(self.model, self.processor, env.task_language, feedback_mode)
            run = EpisodeRun(env, controller, job, perturbation, episode_seed(self.options["seed"], job))
            rollout = Rollout("live", "live", self.record_dir, 0, env.task_language, 0, job.suite, job.task_id,
                              job.trial, run.init_state_id, None, mode, perturbation.describe(), self.model_name)
            for observation, _, _ in run:
                reports.put(LiveProgress(run.steps, observation.images, run.recorder, rollout))
            result = run.result(mode)
            folder = _unused(self.record_dir / job.name)
            result.recording = str(run.save(result, folder, self.model_name))
            reports.put(LiveProgress(run.steps, observation.images, run.recorder, rollout, result, folder))
        finally:
            reports.put(None)

    def _env(self, job: EpisodeJob, max_steps: int | None):
        """The task's environment, kept between episodes of the same task (building one takes seconds)."""
        if self.env is None or (self.env.suite, self.env.task_id) != (job.suite, job.task_id):
            if self.env is not None:
                self.env.close()
            self.env = make_env(job, self.options, self.model.config.camera_names)
        self.env.max_steps = min(SUITE_MAX_STEPS[job.suite], max_steps or SUITE_MAX_STEPS[job.suite])
        return self.env

    def close(self) -> None:
        if self.env is not None:
            self.simulator.submit(self.env.close).result()
        self.simulator.shutdown()


def recorded_episode(recorder: EpisodeRecorder, rollout: Rollout, steps: int) -> EpisodeData:
    """The first `steps` steps an `EpisodeRecorder` holds, as the app's episode arrays (the recorder may grow
    meanwhile on the simulator's thread: only complete steps are read)."""
    frames = {key: np.stack(values[:steps]) for key, values in recorder.frames.items() if key not in recorder.cameras}
    images = {camera: recorder.frames[camera][:steps] for camera in recorder.cameras}
    return EpisodeData(rollout=rollout, fps=float(CONTROL_FREQUENCY), states=frames["observation.state"],
                       actions=frames["action"], policy_actions=frames["policy.action"],
                       predicted_states=frames["policy.predicted_state"], state_inputs=frames["policy.state_input"],
                       latency_ms=frames["policy.latency_ms"], state_names=STATE_NAMES, action_names=ACTION_NAMES,
                       videos={camera: None for camera in recorder.cameras},
                       frame_source=lambda camera, t: images[camera][t], observed=frames["policy.observed"],
                       has_every_frame=recorder.video)


def _newest(reports: queue.Queue):
    """Waits for a report, then skips to the newest one waiting; never past the last report (the one with the
    result) and never onto the end (None) while a report is in hand."""
    report = reports.get()
    while report is not None and report.result is None and not reports.empty():
        following = reports.get_nowait()
        if following is None:
            reports.put(None)  # the end: show this report first
            break
        report = following
    return report


def _unused(folder: Path) -> Path:
    """`folder/run_NNN` with the first number not taken (episodes of one job are kept side by side)."""
    number = 0
    while (folder / f"run_{number:03d}").exists():
        number += 1
    return folder / f"run_{number:03d}"

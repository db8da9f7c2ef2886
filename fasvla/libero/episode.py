"""One LIBERO episode with a FAS-VLA in lockstep (the simulator waits for the policy), recorded for the app."""

import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fasvla.libero.env import LiberoEnv
from fasvla.libero.perturbations import Perturbation, PerturbedActions
from fasvla.libero.recording import EpisodeRecorder


@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    task: str
    trial: int
    init_state_id: int
    success: bool
    steps: int  # environment steps taken (the wait steps excluded; in real time, the held ones included)
    policy_ms_per_action: float
    env_ms_per_step: float
    feedback_mode: str  # in real time with the state latency, e.g. "anticipatory, real time (latency 10 ms)"
    perturbation: str
    recording: str | None
    held_steps: int = 0  # real time: steps that started with no new action ready (the arm held)
    missed_deadlines: int = 0  # real time: actions ready after they were due
    wall_s: float = 0.0  # the episode's wall time: reset, steps, recording written (not building the environment)


@dataclass(frozen=True)
class EpisodeJob:
    suite: str
    task_id: int
    trial: int
    video: bool = True  # record full-rate video (else only the frames the policy saw); outcomes do not depend on it

    @property
    def name(self) -> str:
        return f"{self.suite}/task_{self.task_id:02d}/trial_{self.trial:03d}"


class EpisodeRun:
    """One trial from init state `trial` (modulo the task's fixed init states), until success or the step limit.

    Iterating runs it a policy step at a time, yielding `(observation, output, sent_action)` (the live view of the
    app shows them as they come); `result()` then summarises it and `save()` writes the recording. The cameras are
    rendered where the policy reads them, and at every step only for a recording with `job.video`.
    """

    def __init__(self, env: LiberoEnv, controller, job: EpisodeJob, perturbation: Perturbation, seed: int,
                 record: bool = True):
        self.env, self.controller, self.job, self.perturbation, self.seed = env, controller, job, perturbation, seed
        self.init_state_id = job.trial % len(env.init_states)
        self.placement_seed = seed % 2**31  # the fixtures' placement: a function of the episode alone
        self.recorder = EpisodeRecorder(env.cameras, job.video) if record else None
        self.success, self.steps, self.policy_s, self.env_s = False, 0, 0.0, 0.0

    def __iter__(self):
        torch.manual_seed(self.seed)  # the chunk objective's noise, the same for every rerun of this episode
        actions = PerturbedActions(self.perturbation, self.seed)
        self.controller.reset()
        observation = self.env.reset(self.init_state_id, self.placement_seed)
        for step in range(self.env.max_steps):
            if self.controller.needs_images:  # rendered here: the simulator's time, not the policy's
                started = time.perf_counter()
                observation.render()
                self.env_s += time.perf_counter() - started
            output = self.controller.act(observation)
            sent = actions(output.action)
            if self.recorder is not None:  # before the step: the simulator still holds this frame
                self.recorder.add(observation, output, sent)
            started = time.perf_counter()
            next_observation, self.success = self.env.step(sent, push_force=actions.force_at(step))
            self.env_s += time.perf_counter() - started
            self.policy_s += output.latency_s
            self.steps = step + 1
            yield observation, output, sent
            observation = next_observation
            if self.success:
                break

    def result(self, feedback_mode: str) -> EpisodeResult:
        steps = max(self.steps, 1)
        return EpisodeResult(self.job.suite, self.job.task_id, self.env.task_language, self.job.trial,
                             self.init_state_id, self.success, self.steps, 1000 * self.policy_s / steps,
                             1000 * self.env_s / steps, feedback_mode, self.perturbation.describe(), None)

    def save(self, result: EpisodeResult, root: Path, model_name: str) -> Path:
        """The recording as a LeRobot v3.0 dataset at `root` (its per-episode metadata: `result` and the model)."""
        metadata = {k: v for k, v in asdict(result).items() if k not in ("recording", "task")} | {"model": model_name}
        return self.recorder.save(root, self.env.task_language, metadata)


def run_episode(run: EpisodeRun, recording_root: Path | None, feedback_mode: str, model_name: str) -> EpisodeResult:
    """Run an episode to its end; recorded under `recording_root / job.name` unless `recording_root` is None."""
    for _ in run:
        pass
    result = run.result(feedback_mode)
    if recording_root is not None:
        result.recording = str(run.save(result, recording_root / run.job.name, model_name))
    return result


def episode_seed(base_seed: int, job: EpisodeJob) -> int:
    """The episode's seed: a function of the job alone, so a rerun (in any process) reproduces it."""
    return base_seed * 100_003 + zlib.crc32(job.name.encode()) % 100_003


def make_env(job: EpisodeJob, options: dict, cameras: list[str]) -> LiberoEnv:
    env = LiberoEnv(job.suite, job.task_id, options["resolution"], options["seed"], cameras=cameras,
                    gripper_close_sign=options["gripper_close_sign"])
    if options.get("max_steps"):  # a cap for smoke tests, below the protocol's limit
        env.max_steps = min(env.max_steps, options["max_steps"])
    return env

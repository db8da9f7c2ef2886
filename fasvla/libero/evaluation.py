"""Running LIBERO episodes with a FAS-VLA and summarising them (the work of `eval_libero.py`)."""

import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fasvla.libero.env import LiberoEnv
from fasvla.libero.perturbations import Perturbation, PerturbedActions
from fasvla.libero.policy import make_controller
from fasvla.libero.recording import EpisodeRecorder


@dataclass
class EpisodeResult:
    suite: str
    task_id: int
    task: str
    trial: int
    init_state_id: int
    success: bool
    steps: int  # policy steps taken (the wait steps excluded)
    policy_ms_per_action: float
    env_ms_per_step: float
    feedback_mode: str
    perturbation: str
    recording: str | None


@dataclass(frozen=True)
class EpisodeJob:
    suite: str
    task_id: int
    trial: int

    @property
    def name(self) -> str:
        return f"{self.suite}/task_{self.task_id:02d}/trial_{self.trial:03d}"


class EpisodeRun:
    """One trial from init state `trial` (modulo the task's fixed init states), until success or the step limit.

    Iterating runs it a policy step at a time, yielding `(observation, output, sent_action)` (the live view of the
    app shows them as they come); `result()` then summarises it and `save()` writes the recording.
    """

    def __init__(self, env: LiberoEnv, controller, job: EpisodeJob, perturbation: Perturbation, seed: int,
                 record: bool = True):
        self.env, self.controller, self.job, self.perturbation, self.seed = env, controller, job, perturbation, seed
        self.init_state_id = job.trial % len(env.init_states)
        self.recorder = EpisodeRecorder(env.cameras) if record else None
        self.success, self.steps, self.policy_s, self.env_s = False, 0, 0.0, 0.0

    def __iter__(self):
        torch.manual_seed(self.seed)  # the chunk objective's noise, the same for every rerun of this episode
        actions = PerturbedActions(self.perturbation, self.seed)
        self.controller.reset()
        observation = self.env.reset(self.init_state_id)
        for step in range(self.env.max_steps):
            output = self.controller.act(observation)
            sent = actions(output.action)
            started = time.perf_counter()
            next_observation, self.success = self.env.step(sent, push_force=actions.force_at(step))
            self.env_s += time.perf_counter() - started
            self.policy_s += output.latency_s
            self.steps = step + 1
            if self.recorder is not None:
                self.recorder.add(observation, output, sent)
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


def run_episode(env: LiberoEnv, controller, job: EpisodeJob, perturbation: Perturbation, seed: int,
                recording_root: Path | None, feedback_mode: str, model_name: str) -> EpisodeResult:
    """Run one episode to its end; recorded under `recording_root / job.name` unless `recording_root` is None."""
    run = EpisodeRun(env, controller, job, perturbation, seed, record=recording_root is not None)
    for _ in run:
        pass
    result = run.result(feedback_mode)
    if recording_root is not None:
        result.recording = str(run.save(result, recording_root / job.name, model_name))
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


def evaluate_jobs(jobs: list[EpisodeJob], model, processor, options: dict, on_result=None) -> list[EpisodeResult]:
    """Run jobs in order, building one environment per task and reusing it across its trials."""
    results, env = [], None
    try:
        for job in jobs:
            if env is None or (env.suite, env.task_id) != (job.suite, job.task_id):
                if env is not None:
                    env.close()
                env = make_env(job, options, model.config.camera_names)
            controller = make_controller(model, processor, env.task_language, options["feedback_mode"],
                                         options["n_action_steps"])
            result = run_episode(env, controller, job, options["perturbation"], episode_seed(options["seed"], job),
                                 options["recording_root"], options["feedback_mode"] or model.config.feedback_mode,
                                 options["model_name"])
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if env is not None:
            env.close()
    return results


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rates per task, per suite and overall, with mean episode length and timings."""
    def stats(group: list[EpisodeResult]) -> dict:
        return {"episodes": len(group), "successes": sum(r.success for r in group),
                "success_rate": float(np.mean([r.success for r in group])),
                "mean_steps": float(np.mean([r.steps for r in group])),
                "policy_ms_per_action": float(np.mean([r.policy_ms_per_action for r in group])),
                "env_ms_per_step": float(np.mean([r.env_ms_per_step for r in group]))}

    suites = sorted({r.suite for r in results})
    per_task = {f"{s}/{t}": stats([r for r in results if (r.suite, r.task_id) == (s, t)])
                | {"task": next(r.task for r in results if (r.suite, r.task_id) == (s, t))}
                for s, t in sorted({(r.suite, r.task_id) for r in results})}
    return {"overall": stats(results), "per_suite": {s: stats([r for r in results if r.suite == s]) for s in suites},
            "per_task": per_task}


def markdown_table(summary: dict, title: str) -> str:
    rows = [f"# {title}", "", "| suite / task | success | episodes | mean steps | policy ms / action | env ms / step |",
            "|---|---|---|---|---|---|"]
    for name, entry in [*summary["per_task"].items(), *summary["per_suite"].items(), ("overall", summary["overall"])]:
        label = f"{name} ({entry['task']})" if "task" in entry else f"**{name}**"
        rows.append(f"| {label} | {100 * entry['success_rate']:.1f}% | {entry['episodes']} | "
                    f"{entry['mean_steps']:.1f} | {entry['policy_ms_per_action']:.1f} | {entry['env_ms_per_step']:.1f} |")
    return "\n".join(rows) + "\n"

"""Demonstration jobs: one job fills one demonstration slot of one task (plan, keep if successful, render, stage).

Slot j of a task starts from a random reset (the default: the placement drawn from the attempt's seed, never one of
the benchmark's fixed init states, DESIGN.md section 9) or from init state `init_states[j % len(init_states)]`; its
attempts draw their styles and placements from a
random stream named by (seed, suite, task, slot, attempt), so a dataset does not depend on the number of workers or
on the order jobs run in. An attempt is kept when the plan succeeds within the suite's step limit; its frames are
then rendered from the simulator data the plan left (fasvla/libero/expert/demos.py) and go to `staging/` as .npy
files (memory-mapped when the dataset is written), so memory does not grow with the number of demonstrations.
"""

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fasvla.libero.env import SUITE_MAX_STEPS, libero_task
from fasvla.libero.expert.dart import Dart
from fasvla.libero.expert.demos import DemoEnv, plan_episode, render_plan
from fasvla.libero.expert.diversity import Diversity, episode_rng
from fasvla.libero.expert.plans import check_supported


@dataclass(frozen=True)
class DemoJob:
    suite: str
    task_id: int
    demo_index: int  # the slot within the task
    init_state_id: int | None  # None: a random reset


@dataclass(frozen=True)
class GenerationOptions:
    diversity: Diversity
    seed: int
    resolution: int
    attempts_per_demo: int
    stop_at_success: bool
    staging: Path
    recovery: Dart = Dart()  # perturbations of the executed actions (inactive: plain demonstrations)
    recovery_from_slot: int = 0  # slots before it are plain demonstrations


@dataclass
class Attempt:
    """One planned episode, as written to attempts.jsonl."""

    suite: str
    task_id: int
    demo_index: int
    init_state_id: int | None
    attempt: int
    planned_success: bool
    success_step: int | None
    steps: int
    plan_s: float
    placement_seed: int | None = None
    render_s: float | None = None  # None: not rendered (the plan failed)
    kept: bool = False
    frames_dir: str | None = None
    style: dict | None = None
    injected: dict | None = None  # recovery demonstrations: the perturbations executed


@functools.cache
def task_goal(suite: str, task_id: int) -> tuple[str, list[tuple]]:
    """The task's language and BDDL goal, read from its BDDL file without building an environment."""
    task = libero_task(suite, task_id)
    from libero.libero.envs.bddl_utils import robosuite_parse_problem

    problem = robosuite_parse_problem(str(task.bddl_file))
    return task.language, [tuple(predicate) for predicate in problem["goal_state"]]


def check_tasks(suites: list[str], task_ids: list[int]) -> None:
    """Raise a ValueError naming every requested task whose goal the expert cannot solve."""
    problems = []
    for suite in suites:
        for task_id in task_ids:
            language, goal = task_goal(suite, task_id)
            try:
                check_supported(goal)
            except ValueError as error:
                problems.append(f"{suite} task {task_id} ({language!r}): {error}")
    if problems:
        raise ValueError("unsupported tasks (leave them out with --task_ids):\n  " + "\n  ".join(problems))


def make_jobs(suites: list[str], task_ids: list[int], demos_per_task: int,
              init_states: list[int] | None) -> list[DemoJob]:
    """`init_states` None: every slot starts from a random reset."""
    return [DemoJob(suite, task_id, j, None if init_states is None else init_states[j % len(init_states)])
            for suite in suites for task_id in task_ids for j in range(demos_per_task)]


class TaskEnvironments:
    """The environment of the task last asked for (a worker runs one task at a time)."""

    def __init__(self, resolution: int):
        self.resolution, self.key, self.env = resolution, None, None

    def get(self, suite: str, task_id: int) -> DemoEnv:
        if self.key != (suite, task_id):
            self.close()
            self.env, self.key = DemoEnv(suite, task_id, self.resolution), (suite, task_id)
        return self.env

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
        self.key, self.env = None, None


def run_job(job: DemoJob, options: GenerationOptions, envs: TaskEnvironments) -> list[Attempt]:
    """Attempts for one slot until one is kept or `attempts_per_demo` are spent."""
    env = envs.get(job.suite, job.task_id)
    suite_index = list(SUITE_MAX_STEPS).index(job.suite)
    attempts = []
    for number in range(options.attempts_per_demo):
        rng = episode_rng(options.seed, suite_index, job.task_id, job.demo_index, number)
        style = options.diversity.sample(rng)
        recovery = None
        if options.recovery.active and job.demo_index >= options.recovery_from_slot:
            recovery = options.recovery.episode(episode_rng(options.seed, suite_index, job.task_id, job.demo_index,
                                                            number, stream=1))
        plan = plan_episode(env, job.init_state_id, style, rng, SUITE_MAX_STEPS[job.suite],
                            options.stop_at_success, recovery)
        attempt = Attempt(job.suite, job.task_id, job.demo_index, job.init_state_id, number,
                          plan.success_step is not None, plan.success_step, len(plan.actions), plan.seconds,
                          plan.placement_seed, style=asdict(style), injected=plan.injected)
        attempts.append(attempt)
        if plan.success_step is None:
            continue
        recording = render_plan(env, plan)
        attempt.render_s, attempt.kept = recording.seconds, True
        attempt.frames_dir = str(stage_frames(recording.frames, options.staging / frames_name(job)))
        break
    return attempts


def frames_name(job: DemoJob) -> str:
    return f"{job.suite}/task_{job.task_id:02d}/demo_{job.demo_index:04d}"


def stage_frames(frames: dict[str, np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, values in frames.items():
        np.save(folder / f"{key}.npy", values)
    return folder


def load_frames(folder: Path, keys: list[str]) -> dict[str, np.ndarray]:
    """The staged frames, memory-mapped (read from disk as the writer needs them)."""
    return {key: np.load(Path(folder) / f"{key}.npy", mmap_mode="r") for key in keys}


def summarize(attempts: list[Attempt], requested_per_task: int) -> dict:
    """Per task and overall: demonstrations kept of those requested, attempts, planned successes, frames, and the
    mean seconds per planned and per rendered episode."""
    groups = {}
    for attempt in attempts:
        groups.setdefault(f"{attempt.suite}/{attempt.task_id}", []).append(attempt)
    per_task = {name: _counts(group, requested_per_task) for name, group in sorted(groups.items())}
    overall = _counts(attempts, requested_per_task * len(groups))
    return {"overall": overall, "tasks": per_task}


def _counts(attempts: list[Attempt], requested: int) -> dict:
    planned = [a for a in attempts if a.planned_success]
    kept = [a for a in attempts if a.kept]
    rendered = [a for a in attempts if a.render_s is not None]
    return {"requested": requested, "kept": len(kept), "attempts": len(attempts), "planned_successes": len(planned),
            "plan_success_rate": len(planned) / len(attempts) if attempts else 0.0,
            "frames": sum(a.steps for a in kept),
            "mean_plan_s": float(np.mean([a.plan_s for a in attempts])) if attempts else 0.0,
            "mean_render_s": float(np.mean([a.render_s for a in rendered])) if rendered else 0.0}


def summary_table(summary: dict) -> str:
    """The summary as a text table, one row per task and one overall."""
    header = f"{'task':<18} {'kept':>9} {'attempts':>8} {'planned ok':>10} {'frames':>7} " \
             f"{'plan s/ep':>9} {'render s/ep':>11}"
    rows = [header] + [_table_row(name, counts) for name, counts in summary["tasks"].items()]
    return "\n".join(rows + [_table_row("overall", summary["overall"])])


def _table_row(name: str, c: dict) -> str:
    kept = f"{c['kept']}/{c['requested']}"
    return f"{name:<18} {kept:>9} {c['attempts']:>8} {c['planned_successes']:>10} " \
           f"{c['frames']:>7} {c['mean_plan_s']:>9.1f} {c['mean_render_s']:>11.1f}"

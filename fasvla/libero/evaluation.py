"""Running LIBERO episodes with a FAS-VLA and summarising them (the work of `eval_libero.py`)."""

import time

import numpy as np

from fasvla.libero.episode import EpisodeJob, EpisodeResult, EpisodeRun, episode_seed, make_env, run_episode
from fasvla.libero.policy import make_controller
from fasvla.libero.realtime import RealTimeEpisodeRun


def evaluate_jobs(jobs: list[EpisodeJob], model, processor, options: dict, on_result=None) -> list[EpisodeResult]:
    """Run jobs in order, building one environment per task and reusing it across its trials."""
    results, env = [], None
    try:
        for job in jobs:
            if env is None or (env.suite, env.task_id) != (job.suite, job.task_id):
                if env is not None:
                    env.close()
                env = make_env(job, options, model.config.camera_names)
            started = time.perf_counter()
            run = episode_run(env, model, processor, job, options)
            mode = options["feedback_mode"] or model.config.feedback_mode
            if options.get("real_time") is not None:
                mode = f"{mode}, real time (latency {1000 * options['real_time'].latency_s:g} ms)"
            result = run_episode(run, options["recording_root"], mode, options["model_name"])
            result.wall_s = time.perf_counter() - started
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if env is not None:
            env.close()
    return results


def episode_run(env, model, processor, job: EpisodeJob, options: dict) -> EpisodeRun:
    """The run of one job: lockstep, or under the real-time runner when `options["real_time"]` is set."""
    seed, record = episode_seed(options["seed"], job), options["recording_root"] is not None
    if options.get("real_time") is not None:
        return RealTimeEpisodeRun(env, model, processor, job, options["perturbation"], seed, options["real_time"],
                                  options["feedback_mode"], options["n_action_steps"], record)
    controller = make_controller(model, processor, env.task_language, options["feedback_mode"],
                                 options["n_action_steps"], options.get("inference_delay", 0))
    return EpisodeRun(env, controller, job, options["perturbation"], seed, record)


def summarize(results: list[EpisodeResult]) -> dict:
    """Success rates per task, per suite and overall, with mean episode length and timings."""
    def stats(group: list[EpisodeResult]) -> dict:
        successes = sum(r.success for r in group)
        return {"episodes": len(group), "successes": successes,
                "success_rate": successes / len(group), "ci95": wilson_interval(successes, len(group)),
                "mean_steps": float(np.mean([r.steps for r in group])),
                "policy_ms_per_action": float(np.mean([r.policy_ms_per_action for r in group])),
                "env_ms_per_step": float(np.mean([r.env_ms_per_step for r in group])),
                "held_steps": float(np.mean([r.held_steps for r in group])),
                "missed_deadlines": float(np.mean([r.missed_deadlines for r in group]))}

    suites = sorted({r.suite for r in results})
    per_task = {f"{s}/{t}": stats([r for r in results if (r.suite, r.task_id) == (s, t)])
                | {"task": next(r.task for r in results if (r.suite, r.task_id) == (s, t))}
                for s, t in sorted({(r.suite, r.task_id) for r in results})}
    return {"overall": stats(results), "per_suite": {s: stats([r for r in results if r.suite == s]) for s in suites},
            "per_task": per_task}


def wilson_interval(successes: int, trials: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval of a success rate (95% for the default z): unlike the normal approximation it
    stays inside [0, 1] and is not empty at 0 or n successes."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}")
    rate, z2 = successes / trials, z * z
    center = (rate + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * np.sqrt(rate * (1 - rate) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return [float(max(0.0, center - half)), float(min(1.0, center + half))]


def percent_with_interval(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{100 * entry['success_rate']:.1f}% [{100 * low:.0f}, {100 * high:.0f}]"


def markdown_table(summary: dict, title: str, real_time: bool = False) -> str:
    """The summary as markdown; `real_time` adds the held steps and missed deadlines per episode."""
    extra = " held steps | missed deadlines |" if real_time else ""
    rows = [f"# {title}", "", "| suite / task | success [95% CI] | episodes | mean steps | policy ms / action | "
            "env ms / step |"
            + extra, "|---|---|---|---|---|---|" + "---|---|" * real_time]
    for name, entry in [*summary["per_task"].items(), *summary["per_suite"].items(), ("overall", summary["overall"])]:
        label = f"{name} ({entry['task']})" if "task" in entry else f"**{name}**"
        cells = (f" {entry['held_steps']:.1f} | {entry['missed_deadlines']:.1f} |" if real_time else "")
        rows.append(f"| {label} | {percent_with_interval(entry)} | {entry['episodes']} | "
                    f"{entry['mean_steps']:.1f} | {entry['policy_ms_per_action']:.1f} | "
                    f"{entry['env_ms_per_step']:.1f} |"
                    + cells)
    return "\n".join(rows) + "\n"

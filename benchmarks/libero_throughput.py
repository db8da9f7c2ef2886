"""LIBERO evaluation throughput: every frame rendered vs only the frames the policy observes (DESIGN.md section 10).

    python benchmarks/libero_throughput.py                       # the shipped small models, libero_object tasks 0-1
    python benchmarks/libero_throughput.py --trials 4 --workers 1 2 --resolution 256

Two parts, in one run, on the same episodes:
1. the cost of one episode, per environment step, split into policy, physics, rendering and recording (adding the
   steps, then writing the dataset: video encoding or PNGs), for each model with both kinds of recording;
2. `eval_libero.py` as a user runs it, for a streaming model and the chunk baseline, with 1 and 2 worker processes:
   environment steps per second and episodes per hour, `--max_episodes_rendered` all (every frame rendered and
   recorded as video, what the evaluation did before rendering on demand) vs 0 (only the frames the policy looked
   at), and whether the episodes' outcomes agree (they must: physics does not depend on rendering).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fasvla.libero.env import LiberoEnv, prepare_rendering  # noqa: E402
from fasvla.libero.episode import EpisodeJob, EpisodeRun, episode_seed  # noqa: E402
from fasvla.libero.perturbations import Perturbation  # noqa: E402
from fasvla.libero.policy import make_controller  # noqa: E402
from fasvla.training import load_model_and_processor  # noqa: E402

RENDERINGS = {"every frame": True, "observed frames": False}  # full-rate video recorded or not


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stream_model", default=str(ROOT / "checkpoints/fasvla-small-libero-object"))
    p.add_argument("--chunk_model", default=str(ROOT / "checkpoints/chunk-small-libero-object"))
    p.add_argument("--suite", default="libero_object")
    p.add_argument("--task_ids", type=int, nargs="+", default=[0, 1], help="2 workers need at least 2 tasks")
    p.add_argument("--trials", type=int, default=2, help="trials per task (fixed init states from --first_trial)")
    p.add_argument("--first_trial", type=int, default=0)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--max_steps", type=int, default=None, help="cap every episode (a smoke test, not the protocol)")
    p.add_argument("--skip_profile", action="store_true")
    p.add_argument("--output_dir", default=None, help="default: a temporary folder")
    return p.parse_args(argv)


# -- 1. one episode, per step ---------------------------------------------------------------------------------


def profile_episode(model, processor, env: LiberoEnv, job: EpisodeJob, folder: Path) -> dict:
    """ms per environment step of each part of one lockstep episode (the evaluation's own loop)."""
    physics = {"s": 0.0}
    step = env.step

    def timed_step(*args, **kwargs):
        started = time.perf_counter()
        try:
            return step(*args, **kwargs)
        finally:
            physics["s"] += time.perf_counter() - started

    env.step = timed_step
    renders, render_s = env.frames.renders, env.frames.render_s
    controller = make_controller(model, processor, env.task_language)
    run = EpisodeRun(env, controller, job, Perturbation(), episode_seed(7, job))
    started = time.perf_counter()
    for _ in run:
        pass
    loop_s = time.perf_counter() - started
    started = time.perf_counter()
    run.save(run.result("default"), folder, "benchmark")
    save_s = time.perf_counter() - started
    del env.step
    rendered_s = env.frames.render_s - render_s
    parts = {"policy": run.policy_s, "physics": physics["s"], "rendering": rendered_s,
             "recording steps": loop_s - run.policy_s - physics["s"] - rendered_s, "writing the dataset": save_s}
    per_step = {name: 1000 * seconds / run.steps for name, seconds in parts.items()}
    return per_step | {"total": sum(per_step.values()), "steps": run.steps,
                       "frames rendered": env.frames.renders - renders, "success": run.success}


def profile(args, root: Path) -> dict:
    results = {}
    job = EpisodeJob(args.suite, args.task_ids[0], args.first_trial)
    with LiberoEnv(args.suite, job.task_id, args.resolution) as env:
        env.max_steps = min(env.max_steps, args.max_steps or env.max_steps)
        for name, folder in (("streaming", args.stream_model), ("chunk", args.chunk_model)):
            model, processor = load_model_and_processor(folder, "cpu")
            for rendering, video in RENDERINGS.items():
                folder = root / f"{name}_{'video' if video else 'observed'}"
                results[name, rendering] = profile_episode(model, processor, env, EpisodeJob(
                    job.suite, job.task_id, job.trial, video), folder)
    return results


def profile_table(results: dict) -> str:
    columns = ["policy", "physics", "rendering", "recording steps", "writing the dataset", "total"]
    rows = ["| model | recording | " + " | ".join(columns) + " | frames rendered / steps |",
            "|---|---|" + "---|" * (len(columns) + 1)]
    for (name, rendering), r in results.items():
        cells = " | ".join(f"{r[c]:.1f}" for c in columns)
        rows.append(f"| {name} | {rendering} | {cells} | {r['frames rendered']} / {r['steps']} |")
    return "ms per environment step, one episode\n\n" + "\n".join(rows)


# -- 2. eval_libero.py as a user runs it ----------------------------------------------------------------------


def evaluate(args, model: str, video: bool, workers: int, output_dir: Path) -> dict:
    """One `eval_libero.py` run in its own process; wall time from its start to its summary."""
    command = [sys.executable, str(ROOT / "eval_libero.py"), "--model", model, "--task_suite_name", args.suite,
               "--task_ids", *map(str, args.task_ids), "--num_trials_per_task", str(args.trials), "--first_trial",
               str(args.first_trial), "--resolution", str(args.resolution), "--num_workers", str(workers),
               "--max_episodes_rendered", str(args.trials if video else 0), "--output_dir", str(output_dir)]
    command += ["--max_steps", str(args.max_steps)] if args.max_steps else []
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
    wall_s = time.perf_counter() - started
    results = json.loads((output_dir / "results.json").read_text())["episodes"]
    steps, episode_s = sum(r["steps"] for r in results), sum(r["wall_s"] for r in results)
    outcomes = sorted((r["task_id"], r["trial"], r["success"], r["steps"]) for r in results)
    # steady state: every worker busy with episodes (the process start, model and environments not counted)
    return {"wall_s": wall_s, "steps": steps, "episodes": len(results), "episode_s": episode_s,
            "steps_per_s": workers * steps / episode_s, "episodes_per_hour": 3600 * workers * len(results) / episode_s,
            "end_to_end_episodes_per_hour": 3600 * len(results) / wall_s, "outcomes": outcomes}


def throughput(args, root: Path) -> dict:
    runs = {}
    for name, model in (("streaming", args.stream_model), ("chunk", args.chunk_model)):
        for workers in args.workers:
            for rendering, video in RENDERINGS.items():
                folder = root / f"{name}_{workers}_workers_{'video' if video else 'observed'}"
                runs[name, workers, rendering] = evaluate(args, model, video, workers, folder)
                print(f"{name}, {workers} worker(s), {rendering}: {runs[name, workers, rendering]['wall_s']:.0f} s",
                      flush=True)
    return runs


def throughput_table(runs: dict, workers_list: list[int]) -> str:
    rows = ["| model | workers | every frame: steps/s | episodes/h | observed frames: steps/s | episodes/h | "
            "episodes/h ratio | end to end episodes/h (every / observed) | same outcomes |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in ("streaming", "chunk"):
        for workers in workers_list:
            every, observed = runs[name, workers, "every frame"], runs[name, workers, "observed frames"]
            ratio = observed["episodes_per_hour"] / every["episodes_per_hour"]
            same = "yes" if every["outcomes"] == observed["outcomes"] else "NO"
            rows.append(f"| {name} | {workers} | {every['steps_per_s']:.1f} | {every['episodes_per_hour']:.0f} | "
                        f"{observed['steps_per_s']:.1f} | {observed['episodes_per_hour']:.0f} | {ratio:.2f}x | "
                        f"{every['end_to_end_episodes_per_hour']:.0f} / "
                        f"{observed['end_to_end_episodes_per_hour']:.0f} | {same} |")
    return ("eval_libero.py: steps and episodes per worker-busy second (the episodes' own wall times: reset, steps, "
            "recording); end to end: the whole command, process start, model loading and environments included\n\n"
            + "\n".join(rows))


def main(argv=None):
    args = parse_args(argv)
    prepare_rendering()
    root = Path(args.output_dir or tempfile.mkdtemp(prefix="libero_throughput_"))
    shutil.rmtree(root, ignore_errors=True)  # every run measured afresh (eval_libero.py would resume)
    root.mkdir(parents=True)
    if not args.skip_profile:
        print(profile_table(profile(args, root / "profile")), flush=True)
    runs = throughput(args, root / "runs")
    print(throughput_table(runs, args.workers))
    (root / "throughput.json").write_text(json.dumps({" / ".join(map(str, key)): value
                                                      for key, value in runs.items()}, indent=2))


if __name__ == "__main__":
    main()

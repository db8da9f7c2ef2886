"""Generate LIBERO demonstrations with the scripted expert, as one LeRobot v3.0 dataset.

    python generate_libero_demos.py --task_suite_name libero_object --demos_per_task 50 --output_dir outputs/demos
    python generate_libero_demos.py --task_suite_name libero_spatial libero_goal --task_ids 0 1 2 \
        --demos_per_task 40 --num_workers 2 --seed 1        # random resets: every fixed init state stays held out
    python generate_libero_demos.py ... --init_states 0-39    # from the benchmark's fixed init states 0-39 instead
    python generate_libero_demos.py ... --no_diversity                       # the plain expert, one motion per state

The expert (fasvla/libero/expert) reads object poses, collision geometry and the task's BDDL goal from the simulator.
Each demonstration is planned without rendering and kept only if it succeeds within the suite's step limit; the
frames of a kept one are then rendered once each from the simulator data the plan held (fasvla/libero/frames.py).
Every demonstration draws its own motion style (speed, approach and lift heights, carry clearance, grasp turn,
action noise; see --speed and the options after it), seeded by --seed and the demonstration's identity.

Dataset (DESIGN.md section 6, the features of LeRobot's LIBERO datasets): `observation.images.image` (agent view)
and `observation.images.image2` (wrist) as videos, both rotated upright, `observation.state` (8: eef position,
axis-angle, two finger positions), `action` (7: delta eef, gripper -1 open / +1 close), the task's language. Frames
start after the protocol's 10 wait steps and end at the first success (--record_after_success: after the release).
One frame is one 20 Hz control step; the dataset is labelled 10 fps by default like the public LIBERO datasets
(--fps 20 labels the control rate instead).

Writes to --output_dir: `settings.json`, `attempts.jsonl` (one line per planned episode, appended as they finish),
`dataset/` (written at the end from the frames staged in `staging/`, which is then removed) and `summary.json`
(attempts, successes, frames, seconds per planned and per rendered episode, wall time), also printed. An interrupted
run resumes: the same command skips the demonstrations already in `attempts.jsonl` (each is a function of the seed,
its task and its slot), and refuses a folder written with other settings.
"""

import argparse
import json
import multiprocessing
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset
from fasvla.libero.env import CAMERAS, SUITE_MAX_STEPS
from fasvla.libero.expert.demos import demo_features
from fasvla.libero.expert.dart import Dart
from fasvla.libero.expert.diversity import Diversity
from fasvla.libero.expert.generation import (Attempt, DemoJob, GenerationOptions, TaskEnvironments, check_tasks,
                                             load_frames, make_jobs, run_job, summarize, summary_table,
                                             task_goal)

INIT_STATES_PER_TASK = 50  # in every LIBERO suite
EPISODES_PER_FILE = 50  # episodes per data parquet and per mp4: the writer holds one file's frames in memory
_WORKER = {}  # a worker process's options and environments


def parse_id_ranges(values: list[str]) -> list[int]:
    """["0-9", "20"] -> [0, 1, ..., 9, 20] (ranges inclusive)."""
    ids = []
    for value in values:
        first, _, last = value.partition("-")
        ids += list(range(int(first), int(last or first) + 1))
    return ids


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task_suite_name", nargs="+", default=["libero_object"], choices=list(SUITE_MAX_STEPS))
    p.add_argument("--task_ids", type=int, nargs="*", default=None, help="default: every task of the suites")
    p.add_argument("--demos_per_task", type=int, default=50)
    p.add_argument("--init_states", nargs="+", default=["random"],
                   help="'random' (seeded random resets, new placements: the benchmark's 50 fixed init states stay "
                        "held out) or fixed init state ids, cycled (e.g. 0-39)")
    p.add_argument("--attempts_per_demo", type=int, default=3, help="styles tried before a demonstration is skipped")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--fps", type=int, default=10, choices=[10, 20], help="the dataset's label; frames are 20 Hz steps")
    p.add_argument("--codec", default="libx264", choices=["libx264", "libsvtav1"])
    p.add_argument("--record_after_success", action="store_true", help="keep the frames up to the end of the plan")
    p.add_argument("--num_workers", type=int, default=1, help="processes, each with its own environments")
    p.add_argument("--seed", type=int, default=0, help="seed of the motion styles")
    p.add_argument("--output_dir", default="outputs/libero_demos")
    style = p.add_argument_group("trajectory diversity (ranges drawn uniformly per demonstration)")
    default = Diversity()
    style.add_argument("--no_diversity", action="store_true", help="the plain expert (full speed, no noise)")
    for name, help_text in (("speed", "fraction of full speed"), ("approach_height", "metres above a grasp"),
                            ("lift_height", "metres lifted after a grasp"), ("carry_clearance", "metres")):
        style.add_argument(f"--{name}", type=float, nargs=2, default=getattr(default, name),
                           metavar=("LOW", "HIGH"), help=help_text)
    style.add_argument("--grasp_yaw", type=float, default=default.grasp_yaw, help="max turn of top grasps (rad)")
    style.add_argument("--action_noise", type=float, default=default.action_noise, help="std on the 6 eef actions")
    dart = p.add_argument_group("recovery demonstrations (DART): the expert's commands executed perturbed, the "
                                "commands kept as labels (fasvla/libero/expert/dart.py); magnitudes drawn per "
                                "demonstration")
    dart.add_argument("--dart_noise", type=float, default=0.0, help="max std of noise on the executed eef actions")
    dart.add_argument("--dart_push_probability", type=float, default=0.0, help="chance per step that a push starts")
    dart.add_argument("--dart_push_force", type=float, default=0.0, help="newtons, the largest horizontal push")
    dart.add_argument("--dart_push_steps", type=int, default=3)
    dart.add_argument("--dart_delay", type=int, default=0, help="the longest actuation delay, steps")
    dart.add_argument("--dart_from_slot", type=int, default=0,
                      help="only demonstration slots >= this one are recovery demonstrations: a run with N plain "
                           "slots first holds exactly the demonstrations of the plain run with N per task")
    args = p.parse_args(argv)
    if min(args.demos_per_task, args.attempts_per_demo, args.num_workers, args.resolution) < 1:
        p.error("--demos_per_task, --attempts_per_demo, --num_workers and --resolution must be >= 1")
    args.task_ids = list(range(10)) if args.task_ids is None else args.task_ids
    try:
        args.init_states = None if args.init_states == ["random"] else parse_id_ranges(args.init_states)
        if args.init_states is not None and not all(0 <= i < INIT_STATES_PER_TASK for i in args.init_states):
            raise ValueError(f"--init_states must be 'random' or lie in [0, {INIT_STATES_PER_TASK}), got "
                             f"{args.init_states}")
        args.diversity = Diversity.none() if args.no_diversity else Diversity(
            tuple(args.speed), tuple(args.approach_height), tuple(args.lift_height), tuple(args.carry_clearance),
            args.grasp_yaw, args.action_noise)
        check_tasks(args.task_suite_name, args.task_ids)
        args.recovery = Dart(args.dart_noise, args.dart_push_probability, args.dart_push_force, args.dart_push_steps,
                             args.dart_delay)
    except ValueError as error:
        p.error(str(error))
    return args


def _start_worker(options: GenerationOptions) -> None:
    _WORKER["options"], _WORKER["envs"] = options, TaskEnvironments(options.resolution)


def _run_in_worker(job: DemoJob) -> list[Attempt]:
    return run_job(job, _WORKER["options"], _WORKER["envs"])


def run_jobs(jobs: list[DemoJob], options: GenerationOptions, num_workers: int, on_result) -> None:
    """Run every job, calling `on_result(attempts)` in this process as each finishes."""
    if num_workers == 1:
        _start_worker(options)
        for job in jobs:
            on_result(_run_in_worker(job))
        _WORKER["envs"].close()
        return
    context = multiprocessing.get_context("spawn")  # EGL contexts do not survive a fork
    with context.Pool(num_workers, initializer=_start_worker, initargs=(options,)) as pool:
        for attempts in pool.imap_unordered(_run_in_worker, jobs):  # jobs are grouped by task: few env rebuilds
            on_result(attempts)


def write_dataset(root: Path, kept: list[Attempt], resolution: int, fps: int, codec: str) -> Path:
    """The kept demonstrations in (suite, task, slot) order, read memory-mapped from staging."""
    features = demo_features(resolution)
    records = []
    for a in sorted(kept, key=lambda a: (list(SUITE_MAX_STEPS).index(a.suite), a.task_id, a.demo_index)):
        metadata = {"suite": a.suite, "task_id": a.task_id, "init_state_id": a.init_state_id,
                    "demo_index": a.demo_index, "attempt": a.attempt, "placement_seed": a.placement_seed,
                    "success_step": a.success_step, **a.style, **(a.injected or {})}
        records.append(EpisodeRecord(task_goal(a.suite, a.task_id)[0], load_frames(a.frames_dir, list(features)),
                                     metadata))
    return write_lerobot_dataset(root, records, features, fps, codec=codec, robot_type="panda",
                                 episodes_per_file=EPISODES_PER_FILE)


# what the demonstrations depend on (not --num_workers, which only changes how fast they come)
SETTINGS = ["task_suite_name", "task_ids", "demos_per_task", "init_states", "seed", "resolution", "fps", "codec",
            "attempts_per_demo", "record_after_success", "no_diversity", "speed", "approach_height", "lift_height",
            "carry_clearance", "grasp_yaw", "action_noise", "dart_noise", "dart_push_probability", "dart_push_force",
            "dart_push_steps", "dart_delay", "dart_from_slot"]


def resumed_attempts(output: Path, args) -> list[Attempt]:
    """The attempts an interrupted run of the same settings left in `output`; for a new folder none, after creating
    it with the run's `settings.json`. Refuses a folder of other settings or a finished run."""
    settings = json.loads(json.dumps({name: getattr(args, name) for name in SETTINGS}))
    saved = output / "settings.json"
    if not saved.is_file():
        if output.exists() and any(output.iterdir()):
            raise SystemExit(f"--output_dir {str(output)!r} is not empty and holds no run to resume; choose another")
        output.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(settings, indent=2))
        return []
    previous = json.loads(saved.read_text())
    changed = [name for name in SETTINGS if previous.get(name) != settings[name]]
    if changed:
        raise SystemExit(f"--output_dir {str(output)!r} holds a run with other {', '.join(changed)}; choose another")
    if (output / "summary.json").is_file():
        raise SystemExit(f"--output_dir {str(output)!r} holds a finished run ({output / 'summary.json'})")
    lines = (output / "attempts.jsonl").read_text().splitlines() if (output / "attempts.jsonl").is_file() else []
    attempts = []
    for line in lines:
        try:
            attempts.append(Attempt(**json.loads(line)))
        except json.JSONDecodeError:  # the line being written when the run stopped: its job runs again
            break
    return attempts


def finished_jobs_attempts(attempts: list[Attempt], attempts_per_demo: int) -> list[Attempt]:
    """The attempts of the jobs that finished (one was kept, or every attempt was made)."""
    by_job = {}
    for a in attempts:
        by_job.setdefault((a.suite, a.task_id, a.demo_index), []).append(a)
    return [a for group in by_job.values() if any(a.kept for a in group) or len(group) >= attempts_per_demo
            for a in group]


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output_dir)
    attempts, started = resumed_attempts(output, args), time.perf_counter()
    options = GenerationOptions(args.diversity, args.seed, args.resolution, args.attempts_per_demo,
                                not args.record_after_success, output / "staging", args.recovery,
                                args.dart_from_slot)
    attempts = finished_jobs_attempts(attempts, args.attempts_per_demo)
    # rewritten with the finished jobs alone: a line cut short by the stop would swallow the next one appended
    (output / "attempts.jsonl").write_text("".join(json.dumps(asdict(a)) + "\n" for a in attempts))
    done = {(a.suite, a.task_id, a.demo_index) for a in attempts}
    jobs = [job for job in make_jobs(args.task_suite_name, args.task_ids, args.demos_per_task, args.init_states)
            if (job.suite, job.task_id, job.demo_index) not in done]
    progress = tqdm(total=len(jobs) + len(done), initial=len(done), desc="demonstrations")

    def on_result(job_attempts: list[Attempt]) -> None:
        with (output / "attempts.jsonl").open("a") as f:  # appended as jobs finish: nothing is lost on a crash
            f.writelines(json.dumps(asdict(a)) + "\n" for a in job_attempts)
        attempts.extend(job_attempts)
        progress.update(1)
        progress.set_postfix(kept=sum(a.kept for a in attempts), attempts=len(attempts))

    run_jobs(jobs, options, args.num_workers, on_result)
    progress.close()
    kept = [a for a in attempts if a.kept]
    if kept:
        write_dataset(output / "dataset", kept, args.resolution, args.fps, args.codec)
        shutil.rmtree(output / "staging")
    summary = summarize(attempts, args.demos_per_task)
    options_run = {key: value for key, value in vars(args).items() if key not in ("diversity", "recovery")}
    summary["run"] = options_run | {
        "diversity": asdict(args.diversity), "recovery": asdict(args.recovery), "cameras": list(CAMERAS),
        "wall_s": time.perf_counter() - started, "dataset": str(output / "dataset") if kept else None}
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"{summary_table(summary)}\n{summary['run']['wall_s']:.0f} s of wall time; {output / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()

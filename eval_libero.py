"""Evaluate a FAS-VLA on LIBERO with the standard protocol, recording every rollout for the app.

    python eval_libero.py --model <folder or Hub id> --task_suite_name libero_object --num_trials_per_task 50
    python eval_libero.py --model ... --feedback_mode synchronous --push_step 40 --push_force 0 80 0
    python eval_libero.py --model ... --inference_delay 4   # each chunk observed 4 actions before it starts
    python eval_libero.py --model ... --real_time --state_latency_ms 20   # the real-time runner, simulated clock
    accelerate launch --multi_gpu --num_processes 4 eval_libero.py ...   # episodes sharded over processes/GPUs

Protocol (DESIGN.md section 7): the four suites, trial i starts from the task's fixed init state i, seed 7, 10 wait
steps, suite step limits 220 / 280 / 300 / 520, cameras rotated 180 degrees. Streaming models run `stream_actions`
with the chosen feedback mode; chunk models plan H actions and execute `n_action_steps` of them. By default the
simulator waits for the policy (lockstep); `--inference_delay D` observes each chunk D actions before its first
action while the previous chunk executes (fasvla/chunk_driver.py). `--real_time` runs streaming models under the
real-time runner instead, with the same schedule (`--prefix_lead` = D), where slow compute and state latency cost
held steps (fasvla/libero/realtime.py).

Cameras render only where they are looked at (fasvla/libero/frames.py): the policy at chunk starts, and the
recording of the first --max_episodes_rendered trials of each task, which keeps full-rate video for the app; the
other recordings keep every step's states, actions and predictions with only the frames the policy saw.

Writes to --output_dir: `rollouts/<suite>/task_NN/trial_NNN/` (one LeRobot v3.0 dataset per episode, written when
the episode ends), `results_rank*.jsonl` (one line per episode, appended as they finish), and at the end
`results.json` and `results.md` (success per task and per suite, mean episode length, steps per second, policy time
per action).
"""

import argparse
import json
import multiprocessing
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from fasvla.distributed import cpu_process_group_needed
from fasvla.libero.env import SUITE_MAX_STEPS
from fasvla.libero.evaluation import EpisodeJob, EpisodeResult, evaluate_jobs, markdown_table, summarize
from fasvla.libero.perturbations import Perturbation
from fasvla.libero.realtime import RealTimeOptions
from fasvla.training import load_model_and_processor

_WORKER = {}  # the model of a worker process, loaded once by `_load_worker`


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="FAS-VLA folder or Hub id")
    p.add_argument("--task_suite_name", nargs="+", default=list(SUITE_MAX_STEPS), choices=list(SUITE_MAX_STEPS))
    p.add_argument("--task_ids", type=int, nargs="*", default=None, help="default: every task of the suites")
    p.add_argument("--num_trials_per_task", type=int, default=50, help="50 = the full protocol")
    p.add_argument("--first_trial", type=int, default=0,
                   help="trials first_trial.. (init states modulo 50): hold out the init states trained on")
    p.add_argument("--feedback_mode", choices=["open_loop", "synchronous", "anticipatory"], default=None,
                   help="streaming models; default: the model's")
    p.add_argument("--n_action_steps", type=int, default=None, help="actions per observation; default: the model's")
    p.add_argument("--inference_delay", type=int, default=0,
                   help="lockstep: each chunk's observation is taken this many actions before its first action, "
                        "while the previous chunk executes (streams start from the state at the boundary, chunks "
                        "execute from this index); in real time --prefix_lead is this delay")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--resolution", type=int, default=256, help="camera size (SmolVLA-based models: 512)")
    p.add_argument("--num_workers", type=int, default=1, help="environment processes per evaluation process")
    p.add_argument("--output_dir", default="outputs/libero_eval")
    p.add_argument("--device", default=None, help="default: the process's accelerator, else the CPU")
    p.add_argument("--gripper_close_sign", type=float, default=1.0, choices=[1.0, -1.0],
                   help="sign of the model's gripper action that closes the gripper (LIBERO's: +1)")
    p.add_argument("--gripper_from_dataset", default=None,
                   help="read --gripper_close_sign off a LeRobot dataset (the model's training data)")
    p.add_argument("--no_record", action="store_true", help="do not record rollouts")
    p.add_argument("--max_episodes_rendered", type=int, default=2,
                   help="the first N trials of each task record full-rate video; the others record every step's "
                        "states, actions and predictions but only the frames the policy saw, and render no other "
                        "frame (several times faster). Outcomes do not depend on it: a resumed run may change it")
    p.add_argument("--max_steps", type=int, default=None, help="cap every episode (smoke tests; not the protocol)")
    disturb = p.add_argument_group("perturbations")
    disturb.add_argument("--action_noise", type=float, default=0.0)
    disturb.add_argument("--action_delay", type=int, default=0)
    disturb.add_argument("--push_step", type=int, default=None)
    disturb.add_argument("--push_force", type=float, nargs=3, default=(0.0, 0.0, 0.0), metavar=("FX", "FY", "FZ"))
    disturb.add_argument("--push_steps", type=int, default=2)
    timing = p.add_argument_group("real time (streaming models; fasvla/libero/realtime.py)")
    timing.add_argument("--real_time", action="store_true",
                        help="run the real-time runner on a simulated clock: 50 ms control ticks, the compute "
                             "charged its time, the arm held when no action is ready")
    timing.add_argument("--state_latency_ms", type=float, default=10.0)
    timing.add_argument("--compute_ms", type=float, nargs=2, default=None, metavar=("STEP", "PREFIX"),
                        help="charge these costs instead of the measured ones (another machine's figures)")
    timing.add_argument("--prefix_lead", type=int, default=1,
                        help="actions of a chunk that run between the next chunk's observation and its first action "
                             "(the inference delay of the pipelined prefix); 0: no pipelining")
    args = p.parse_args(argv)
    if args.num_trials_per_task < 1 or args.num_workers < 1 or args.first_trial < 0 or args.max_episodes_rendered < 0:
        p.error("--num_trials_per_task and --num_workers must be >= 1, --first_trial and --max_episodes_rendered >= 0")
    if args.inference_delay < 0 or (args.real_time and args.inference_delay):
        p.error(f"--inference_delay must be >= 0 and is for lockstep runs (in real time: --prefix_lead), got "
                f"{args.inference_delay}")
    try:
        args.real_time_options = real_time_options(args)
    except ValueError as error:
        p.error(str(error))
    return args


def real_time_options(args) -> RealTimeOptions | None:
    if not args.real_time:
        return None
    costs = None
    if args.compute_ms is not None:
        step_ms, prefix_ms = args.compute_ms
        costs = {"step": step_ms / 1000, "prefix": prefix_ms / 1000}
    return RealTimeOptions(args.state_latency_ms / 1000, costs, args.prefix_lead)


def make_jobs(args) -> list[list[EpisodeJob]]:
    """Episode jobs grouped by task (a worker builds one environment per group)."""
    groups, first_without_video = [], args.first_trial + args.max_episodes_rendered
    for suite in args.task_suite_name:
        task_ids = args.task_ids if args.task_ids is not None else range(10)
        for task_id in task_ids:
            trials = range(args.first_trial, args.first_trial + args.num_trials_per_task)
            groups.append([EpisodeJob(suite, task_id, trial, video=trial < first_without_video) for trial in trials])
    return groups


# what an evaluation folder's episodes depend on: a rerun into the same folder must agree on them to resume
# (--max_episodes_rendered, --num_workers and --no_record change what is recorded and how fast, never an outcome)
SETTINGS = ["model", "feedback_mode", "n_action_steps", "seed", "resolution", "gripper_close_sign", "max_steps",
            "action_noise", "action_delay", "push_step", "push_force", "push_steps", "real_time", "state_latency_ms",
            "compute_ms", "prefix_lead", "inference_delay"]
# settings added later, with the value that evaluations recorded before them ran with
ADDED_SETTINGS = {"inference_delay": 0}


def check_settings(output_dir: Path, args) -> None:
    """Record the evaluation's settings in `output_dir/settings.json`, or check that they match the ones there: an
    interrupted evaluation resumes, episodes of another evaluation are never mixed in."""
    settings = json.loads(json.dumps({name: getattr(args, name) for name in SETTINGS}))  # tuples as JSON lists
    saved = output_dir / "settings.json"
    if not saved.is_file():
        saved.write_text(json.dumps(settings, indent=2))
        return
    previous = json.loads(saved.read_text())
    changed = [name for name in SETTINGS if previous.get(name, ADDED_SETTINGS.get(name)) != settings[name]]
    if changed:
        raise ValueError(f"--output_dir {output_dir} holds an evaluation with other settings "
                         f"({', '.join(f'{n}={previous.get(n)!r}, now {settings[n]!r}' for n in changed)}): "
                         "use another --output_dir")


def pending_jobs(groups: list[list[EpisodeJob]], output_dir: Path) -> list[list[EpisodeJob]]:
    """The non-empty groups of the jobs whose results are not in `output_dir` yet."""
    done = {(r.suite, r.task_id, r.trial) for r in read_results(output_dir)}
    groups = [[job for job in group if (job.suite, job.task_id, job.trial) not in done] for group in groups]
    return [group for group in groups if group]


def read_results(output_dir: Path) -> list[EpisodeResult]:
    return [EpisodeResult(**json.loads(line)) for f in sorted(output_dir.glob("results_rank*.jsonl"))
            for line in f.read_text().splitlines() if line.strip()]


def _load_worker(args, device: str, threads: int | None = None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)  # one core per environment process; the renderer and the model share it
    _WORKER["model"], _WORKER["processor"] = load_model_and_processor(args.model, device)
    _WORKER["args"] = args


def _run_group(options_and_jobs) -> list[dict]:
    options, jobs = options_and_jobs
    results = evaluate_jobs(jobs, _WORKER["model"], _WORKER["processor"], options)
    return [asdict(r) for r in results]


def episode_options(args, model_name: str) -> dict:
    perturbation = Perturbation(args.action_noise, args.action_delay, args.push_step, tuple(args.push_force),
                                args.push_steps)
    return {"resolution": args.resolution, "seed": args.seed, "feedback_mode": args.feedback_mode,
            "n_action_steps": args.n_action_steps, "inference_delay": args.inference_delay,
            "perturbation": perturbation, "model_name": model_name,
            "gripper_close_sign": args.gripper_close_sign, "max_steps": args.max_steps,
            "real_time": args.real_time_options,
            "recording_root": None if args.no_record else Path(args.output_dir) / "rollouts"}


def gripper_sign_from_dataset(name: str) -> float:
    from fasvla.data.lerobot_dataset import LeRobotDataset
    from fasvla.libero.env import gripper_close_sign_of

    dataset = LeRobotDataset.open(name)
    starts = [e.start for e in dataset.episodes]
    return gripper_close_sign_of(dataset.column("observation.state"), dataset.column("action"), starts)


def main(argv=None):
    args = parse_args(argv)
    state = PartialState(cpu=cpu_process_group_needed())
    device = args.device or str(state.device)
    if args.gripper_from_dataset:
        args.gripper_close_sign = gripper_sign_from_dataset(args.gripper_from_dataset)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    groups = make_jobs(args)[state.process_index :: state.num_processes]
    if state.is_main_process:
        check_settings(output_dir, args)
    state.wait_for_everyone()
    groups = pending_jobs(groups, output_dir)
    for job in (job for group in groups for job in group):  # recordings of episodes interrupted before their result
        shutil.rmtree(output_dir / "rollouts" / job.name, ignore_errors=True)
    options = episode_options(args, args.model)
    results_file = output_dir / f"results_rank{state.process_index}.jsonl"
    progress = tqdm(total=sum(len(g) for g in groups), desc=f"episodes (rank {state.process_index})",
                    position=state.process_index)
    started = time.perf_counter()

    def record(result: dict) -> None:
        with results_file.open("a") as f:  # appended as episodes finish: nothing is lost on a crash
            f.write(json.dumps(result) + "\n")
        progress.update(1)
        progress.set_postfix(success=result["success"])

    if args.num_workers == 1:
        _load_worker(args, device)
        for group in groups:
            evaluate_jobs(group, _WORKER["model"], _WORKER["processor"], options, on_result=lambda r: record(asdict(r)))
    else:  # spawn: EGL contexts and FFmpeg threads do not survive a fork
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.num_workers, initializer=_load_worker, initargs=(args, device, 1)) as pool:
            for results in pool.imap_unordered(_run_group, [(options, group) for group in groups]):
                for result in results:
                    record(result)
    progress.close()
    state.wait_for_everyone()
    if state.is_main_process:
        write_summary(output_dir, args, time.perf_counter() - started)


def write_summary(output_dir: Path, args, wall_s: float) -> dict:
    results = read_results(output_dir)
    summary = summarize(results)
    total_steps = sum(r.steps for r in results)
    episode_s = sum(r.steps * (r.policy_ms_per_action + r.env_ms_per_step) / 1000 for r in results)
    summary["run"] = {"model": args.model, "feedback_mode": args.feedback_mode, "resolution": args.resolution,
                      "seed": args.seed, "wall_s": wall_s, "steps_per_s": total_steps / episode_s if episode_s else 0,
                      "perturbation": results[0].perturbation if results else None}
    (output_dir / "results.json").write_text(json.dumps({"summary": summary, "episodes": [asdict(r) for r in
                                                                                            results]}, indent=2))
    mode = args.feedback_mode or "model default"
    if args.real_time:
        mode += f", real time: state latency {args.state_latency_ms:g} ms, " + (
            f"compute {args.compute_ms[0]:g} / {args.compute_ms[1]:g} ms" if args.compute_ms else "measured compute")
    title = f"LIBERO: {args.model} ({mode}, {args.resolution} px)"
    footer = (f"\n{summary['run']['steps_per_s']:.2f} steps per second inside episodes (policy + environment), "
              f"{len(results)} episodes in {wall_s:.0f} s of wall time including environment construction\n")
    (output_dir / "results.md").write_text(markdown_table(summary, title, args.real_time) + footer)
    print((output_dir / "results.md").read_text())
    return summary


if __name__ == "__main__":
    main()

"""Where does a policy close its gripper? Against the scripted expert from the same LIBERO init states.

    python generate_libero_demos.py --task_suite_name libero_object --task_ids 0 1 2 3 4 --demos_per_task 2 \
        --init_states 0-1 --resolution 128 --output_dir outputs/expert_init01
    python eval_libero.py --model ... --task_ids 0 1 2 3 4 --num_trials_per_task 2 --output_dir outputs/rollouts
    python benchmarks/grasp_offset.py --expert outputs/expert_init01/dataset --rollouts outputs/rollouts

An init state fixes where the objects are, so the expert's end effector at its first gripper-closing command is where
a grasp of that episode's object happens. For every recorded rollout whose task and init state the expert ran: the
step of the policy's first closing command, its end-effector position then, and its offset from the expert's
(millimetres, and the horizontal distance). A policy that closes the gripper centimetres from the object fails by
missing it, however well it moves otherwise. Writes `--output` (JSON) when given.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fasvla.data.lerobot_dataset import LeRobotDataset  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expert", required=True, help="a generate_libero_demos.py dataset from fixed init states")
    p.add_argument("--rollouts", required=True, help="an eval_libero.py output folder that recorded its episodes")
    p.add_argument("--close_sign", type=float, default=1.0, choices=[1.0, -1.0],
                   help="the sign of the gripper action that closes the gripper (LIBERO's: +1)")
    p.add_argument("--output", default=None, help="JSON file for every episode's offset")
    return p.parse_args(argv)


def first_close(states: np.ndarray, actions: np.ndarray, close_sign: float = 1.0) -> tuple[int, np.ndarray] | None:
    """(step, end-effector position (3,)) of the first action (T, d_a) whose gripper value (the last) closes; None
    when the gripper never closes. states: (T, d_s), the position in dims 0-2."""
    closing = np.flatnonzero(close_sign * actions[:, -1] > 0)
    return (int(closing[0]), states[closing[0], :3]) if len(closing) else None


def episode_grasps(dataset: LeRobotDataset, close_sign: float) -> dict[tuple[int, int], tuple[int, np.ndarray]]:
    """(task id, init state id) -> `first_close` of each episode of an expert dataset (its first, if several)."""
    states, actions = dataset.column("observation.state"), dataset.column("action")
    grasps = {}
    for episode in dataset.episodes:
        key = (int(episode.metadata["task_id"]), int(episode.metadata["init_state_id"]))
        rows = slice(episode.start, episode.start + episode.length)
        grasp = first_close(states[rows], actions[rows], close_sign)
        if grasp is not None:
            grasps.setdefault(key, grasp)
    return grasps


def recording_folder(rollouts: Path, recorded: str) -> Path:
    """A rollout's recording as the evaluation named it, or, when its folder has moved since, the same recording
    under `rollouts` (eval_libero.py writes them to <output_dir>/rollouts/<suite>/task_NN/trial_NNN)."""
    path = Path(recorded)
    if path.is_dir() or "rollouts" not in path.parts:
        return path
    last = len(path.parts) - 1 - path.parts[::-1].index("rollouts")
    return rollouts.joinpath(*path.parts[last:])


def rollout_offsets(expert: dict, rollouts: Path, close_sign: float) -> list[dict]:
    """One row per recorded rollout the expert has a grasp for: its outcome, first closing step and offset."""
    rows = []
    for results in sorted(rollouts.glob("results_rank*.jsonl")):
        for line in results.read_text().splitlines():
            episode = json.loads(line)
            key = (episode["task_id"], episode["init_state_id"])
            if key not in expert or not episode.get("recording"):
                continue
            recording = LeRobotDataset.open(str(recording_folder(rollouts, episode["recording"])))
            grasp = first_close(recording.column("observation.state"), recording.column("action"), close_sign)
            expert_step, expert_position = expert[key]
            row = {"task_id": key[0], "init_state_id": key[1], "success": episode["success"],
                   "expert_step": expert_step, "step": None, "offset_mm": None, "horizontal_mm": None}
            if grasp is not None:
                offset = 1000 * (grasp[1] - expert_position)
                row |= {"step": grasp[0], "offset_mm": offset.round(1).tolist(),
                        "horizontal_mm": round(float(np.linalg.norm(offset[:2])), 1)}
            rows.append(row)
    return sorted(rows, key=lambda r: (r["task_id"], r["init_state_id"]))


def report(rows: list[dict]) -> str:
    lines = ["| task | init state | success | closes at (expert) | offset x / y / z (mm) | horizontal (mm) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        offset = " / ".join(f"{v:+.0f}" for v in r["offset_mm"]) if r["offset_mm"] else "never closes"
        horizontal = f"{r['horizontal_mm']:.0f}" if r["horizontal_mm"] is not None else "-"
        lines.append(f"| {r['task_id']} | {r['init_state_id']} | {'yes' if r['success'] else 'no'} | "
                     f"{r['step'] if r['step'] is not None else '-'} ({r['expert_step']}) | {offset} | {horizontal} |")
    distances = [r["horizontal_mm"] for r in rows if r["horizontal_mm"] is not None]
    if distances:
        lines.append(f"\nhorizontal offset: median {np.median(distances):.1f} mm over {len(distances)} rollouts "
                     f"that closed the gripper (of {len(rows)})")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    expert = episode_grasps(LeRobotDataset.open(args.expert), args.close_sign)
    if not expert:
        raise ValueError(f"--expert {args.expert} holds no episode whose gripper closes")
    rows = rollout_offsets(expert, Path(args.rollouts), args.close_sign)
    if not rows:
        raise ValueError(f"--rollouts {args.rollouts} holds no recorded episode of a task and init state in --expert")
    print(report(rows))
    if args.output:
        Path(args.output).write_text(json.dumps({"expert": args.expert, "rollouts": args.rollouts, "episodes": rows},
                                                indent=1))
    return rows


if __name__ == "__main__":
    main()

"""Are a model's actions as large as the expert's, and do they point where the expert's do? The size and the error of
the actions a model plans, chunk by chunk, against the demonstrations' labels of the same frames.

    python benchmarks/action_scale.py --model outputs/feedback_v2/runs/fas_recovery/model \
        --dataset outputs/demos_random_eval/dataset --unseen_dataset
    python benchmarks/action_scale.py ... --swap_images   # the control: another episode's cameras, same task

A model that reaches for the object at two thirds of the expert's speed arrives late, closes its gripper in the
wrong place and fails nominally, whatever its feedback does. On held-out episodes (as `train_accelerate.py` drew
them, or every episode with `--unseen_dataset`), at the chunk starts t = 0, n, 2n, ... (n: the model's
`n_action_steps`) the model plans n actions from the recorded observation of frame t, the cumulative and previous
actions of the demonstration: a streaming model open loop (no state fed back: the planned stream itself), a chunk
model its chunk's first n. Per chunk index: the mean norm of the translation (dims 0-2) and of the end-effector
command (dims 0-5) over those n frames, for the model and for the labels, and their ratio; and the mean norm of the
model's error (planned minus labels) as a share of the labels'. With `--swap_images` each frame's cameras are those
of another held-out episode of the same task at the same frame (its objects elsewhere; the state, the instruction and
the labels the frame's own): a model that finds the object in the image errs more, one that ignores the image as
much. How much more is bounded by how much the two episodes' labels differ (`partner`: the error of a model that
follows the wrong cameras exactly), which is small where every placement starts alike. Writes `--output` (JSON)
when given.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fasvla.data.lerobot_dataset import LeRobotDataset  # noqa: E402
from fasvla.data.samples import cumulative_actions, held_out_episodes  # noqa: E402
from fasvla.training import load_model_and_processor  # noqa: E402

PARTS = {"translation": slice(0, 3), "end_effector": slice(0, 6)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="FAS-VLA folder or Hub id (streaming or chunk)")
    p.add_argument("--weights", default=None,
                   help="a training checkpoint's model.safetensors, measured with --model's config (along training)")
    p.add_argument("--dataset", required=True, help="LeRobot dataset (folder or Hub id)")
    p.add_argument("--state_key", default="observation.state")
    p.add_argument("--action_key", default="action")
    p.add_argument("--chunks", type=int, default=6, help="chunk starts per episode, from its first frame")
    p.add_argument("--val_fraction", type=float, default=0.05, help="as the model was trained (train_accelerate.py)")
    p.add_argument("--unseen_dataset", action="store_true",
                   help="the model was not trained on --dataset: every episode is held out")
    p.add_argument("--seed", type=int, default=0, help="as the model was trained; also seeds the flow's noise")
    p.add_argument("--swap_images", action="store_true",
                   help="the control: each frame seen through the cameras of another episode of the same task")
    p.add_argument("--output", default=None, help="JSON file for the table and every episode's norms")
    args = p.parse_args(argv)
    if args.chunks < 1:
        p.error(f"--chunks must be >= 1, got {args.chunks}")
    return args


def planned_actions(model, inputs: dict, cumulative: np.ndarray, previous: np.ndarray, steps: int) -> np.ndarray:
    """The first `steps` actions (B, steps, d_a), robot units, a model plans from one observation per row."""
    if model.config.objective == "chunk":
        return model.predict_action_chunk(**inputs)[:, :steps].numpy()
    stream = model.stream_actions(**inputs, feedback_mode="open_loop", n_action_steps=steps,
                                  cumulative_action=torch.as_tensor(cumulative, dtype=torch.float32),
                                  previous_action=torch.as_tensor(previous, dtype=torch.float32))
    actions = [next(stream).action]
    with torch.no_grad():
        actions += [stream.send(None).action for _ in range(steps - 1)]
    return torch.stack(actions, dim=1).numpy()


def partner_rows(tasks: list[str]) -> np.ndarray:
    """For each row, the next row of the same task (cyclically, in row order); -1 for a task's only row."""
    partners = np.full(len(tasks), -1)
    for task in set(tasks):
        rows = [i for i, t in enumerate(tasks) if t == task]
        if len(rows) > 1:
            partners[rows] = np.roll(rows, -1)
    return partners


def measure(model, processor, dataset: LeRobotDataset, episodes: list[int], args) -> dict[str, np.ndarray]:
    """Mean norms (episodes, chunks) per part of the model's plan, the labels and the model's error; NaN where an
    episode is too short (or, with --swap_images, has no other episode of its task long enough)."""
    states, actions = dataset.column(args.state_key), dataset.column(args.action_key)
    starts = np.array([dataset.episodes[e].start for e in episodes])
    lengths = np.array([dataset.episodes[e].length for e in episodes])
    all_starts = np.repeat([e.start for e in dataset.episodes], [e.length for e in dataset.episodes])
    cumulative = cumulative_actions(actions, all_starts)
    steps = model.config.n_action_steps
    measured = ("model", "expert", "error") + (("partner",) if args.swap_images else ())
    norms = {f"{who}_{part}": np.full((len(episodes), args.chunks), np.nan) for who in measured for part in PARTS}
    for chunk in tqdm(range(args.chunks), desc="chunk starts"):
        offset = chunk * steps
        rows_of = np.flatnonzero(lengths >= offset + steps)  # episodes with n labels left
        seen_from = starts[rows_of] + offset  # the frames whose cameras each row sees
        if args.swap_images:
            partners = partner_rows([dataset.task(int(row)) for row in seen_from])
            rows_of, seen_from = rows_of[partners >= 0], seen_from[partners[partners >= 0]]
        if not len(rows_of):
            break
        rows = starts[rows_of] + offset
        images = [np.stack([dataset.image(camera, int(row)) for row in seen_from])
                  for camera in model.config.camera_names]
        inputs = processor(images=images, text=[dataset.task(int(row)) for row in rows], state=states[rows])
        previous = actions[rows - 1] if offset else np.zeros_like(actions[rows])  # a_{t-1}; 0 before the first
        torch.manual_seed(args.seed + chunk)
        planned = planned_actions(model, inputs, cumulative[rows], previous, steps)  # (B, n, d_a)
        labels = np.stack([actions[row:row + steps] for row in rows])  # (B, n, d_a)
        if args.swap_images:  # the labels of the frames whose cameras were seen
            seen = np.stack([actions[row:row + steps] for row in seen_from])  # (B, n, d_a)
        for part, dims in PARTS.items():
            norms[f"model_{part}"][rows_of, chunk] = np.linalg.norm(planned[..., dims], axis=-1).mean(-1)
            norms[f"expert_{part}"][rows_of, chunk] = np.linalg.norm(labels[..., dims], axis=-1).mean(-1)
            norms[f"error_{part}"][rows_of, chunk] = np.linalg.norm((planned - labels)[..., dims], axis=-1).mean(-1)
            if args.swap_images:
                norms[f"partner_{part}"][rows_of, chunk] = np.linalg.norm((seen - labels)[..., dims],
                                                                          axis=-1).mean(-1)
    return norms


def summary_table(norms: dict[str, np.ndarray], steps: int) -> list[dict]:
    """Per chunk index: the mean over episodes of each norm and the model/expert ratios."""
    rows = []
    for chunk in range(norms["model_translation"].shape[1]):
        present = ~np.isnan(norms["model_translation"][:, chunk])
        if not present.any():
            break
        row = {"chunk": chunk, "first_frame": chunk * steps, "episodes": int(present.sum())}
        for part in PARTS:
            model, expert, error = (float(norms[f"{who}_{part}"][present, chunk].mean())
                                    for who in ("model", "expert", "error"))
            row |= {f"model_{part}": model, f"expert_{part}": expert, f"ratio_{part}": model / max(expert, 1e-12),
                    f"error_{part}": error, f"error_share_{part}": error / max(expert, 1e-12)}
            if f"partner_{part}" in norms:
                partner = float(norms[f"partner_{part}"][present, chunk].mean())
                row |= {f"partner_{part}": partner, f"partner_share_{part}": partner / max(expert, 1e-12)}
        rows.append(row)
    return rows


def report(table: list[dict], model_name: str) -> str:
    """Markdown of the translation's rows (the end effector's are in the JSON)."""
    swapped = bool(table) and "partner_translation" in table[0]
    lines = [f"translation planned by {model_name} against the labels (mean norm over a chunk's frames)", "",
             "| chunk (first frame) | episodes | model / expert (ratio) | error (share of the labels) |"
             + (" labels of the episode seen (share) |" if swapped else ""),
             "|---|---|---|---|" + ("---|" if swapped else "")]
    for row in table:
        line = (f"| {row['chunk']} ({row['first_frame']}) | {row['episodes']} | {row['model_translation']:.3f} / "
                f"{row['expert_translation']:.3f} ({100 * row['ratio_translation']:.0f}%) | "
                f"{row['error_translation']:.3f} ({100 * row['error_share_translation']:.0f}%) |")
        if swapped:
            line += f" {row['partner_translation']:.3f} ({100 * row['partner_share_translation']:.0f}%) |"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    model, processor = load_model_and_processor(args.model, "cpu", args.weights)
    dataset = LeRobotDataset.open(args.dataset)
    dataset.check(model.config.camera_names, args.state_key, args.action_key)
    episodes = held_out_episodes(len(dataset.episodes), args.val_fraction, args.seed, args.unseen_dataset)
    norms = measure(model, processor, dataset, episodes, args)
    table = summary_table(norms, model.config.n_action_steps)
    print(report(table, args.model))
    if args.output:
        Path(args.output).write_text(json.dumps({
            "model": args.model, "weights": args.weights, "dataset": args.dataset, "swap_images": args.swap_images,
            "table": table,
            "norms": {k: v.tolist() for k, v in norms.items()}}, indent=1))
    return table


if __name__ == "__main__":
    main()

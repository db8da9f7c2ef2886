"""Does a streaming FAS-VLA's next action respond to the state it is fed? The corrective gain (DESIGN.md section 9).

    python benchmarks/feedback_sensitivity.py --model checkpoints/fasvla-small-libero-object \
        --dataset outputs/results/demos/dataset

On held-out frames (the validation episodes of the training split, as `train_accelerate.py` draws it, or every
episode of a dataset the model never saw: `--unseen_dataset`) each frame is
a chunk start: the model's prefix from its images, task and state, the trajectory point [A ; S_in] a chunk starts
from (A_0 as the model's `trajectory_origin` and absolute dimensions say) and its state. The fed-back state is
displaced along each dimension and the change of the action velocity projected on the corrective direction -G e_d
(G: the model's own when it was trained with feedback-consistent stabilisation, else the ridge pseudo-inverse of the
state's response to the actions, fitted on the whole dataset): 1 = the action undoes the displacement at the rate
the stabilising flow asks for (kappa), 0 = it ignores it, < 0 = it makes it worse. Finite differences and autograd
side by side; per group of state dimensions the median and interquartile range over frames and dimensions, and the
median change of the action per unit displacement relative to its size. Writes `--output` (JSON) when given.
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
from fasvla.data.samples import cumulative_actions, episode_bounds, held_out_episodes  # noqa: E402
from fasvla.sensitivity import Gains, corrective_gains, group_summary  # noqa: E402
from fasvla.state_response import DEFAULT_RIDGE, fit_state_response  # noqa: E402
from fasvla.training import load_model_and_processor  # noqa: E402
from flow_fasvla import trajectory_start  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="streaming FAS-VLA folder or Hub id")
    p.add_argument("--weights", default=None,
                   help="a training checkpoint's model.safetensors, measured with --model's config (the gain along "
                        "training: a run's statistics and G are set before its first step)")
    p.add_argument("--dataset", required=True, help="LeRobot dataset (folder or Hub id), the model's training data")
    p.add_argument("--state_key", default="observation.state")
    p.add_argument("--action_key", default="action")
    p.add_argument("--frames", type=int, default=128, help="held-out frames, drawn uniformly")
    p.add_argument("--val_fraction", type=float, default=0.05, help="as the model was trained (train_accelerate.py)")
    p.add_argument("--unseen_dataset", action="store_true",
                   help="the model was not trained on --dataset: every episode is held out")
    p.add_argument("--seed", type=int, default=0, help="as the model was trained; also draws the frames")
    p.add_argument("--epsilon", type=float, default=1e-2, help="finite-difference step, normalised state units")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--output", default=None, help="JSON file for the per-group figures and every frame's gains")
    args = p.parse_args(argv)
    if args.frames < 1 or args.batch_size < 1 or not args.epsilon > 0:
        p.error("--frames and --batch_size must be >= 1 and --epsilon > 0")
    return args


def normalised(model, states: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    normalizer = model.normalizer
    with torch.no_grad():
        return (normalizer.normalize_state(torch.as_tensor(states, dtype=torch.float32)).numpy(),
                normalizer.normalize_action(torch.as_tensor(actions, dtype=torch.float32)).numpy())


def held_out_rows(dataset: LeRobotDataset, args) -> np.ndarray:
    held_out = set(held_out_episodes(len(dataset.episodes), args.val_fraction, args.seed, args.unseen_dataset))
    rows = np.concatenate([np.arange(e.start, e.start + e.length) for i, e in enumerate(dataset.episodes)
                           if i in held_out])
    rng = np.random.default_rng(args.seed)
    return np.sort(rng.choice(rows, size=min(args.frames, len(rows)), replace=False))


def measure(model, processor, dataset: LeRobotDataset, rows: np.ndarray, G: np.ndarray, args) -> Gains:
    """The gains of every held-out frame, batch by batch."""
    states, actions = dataset.column(args.state_key), dataset.column(args.action_key)
    starts = episode_bounds(dataset)[0]
    cumulative = cumulative_actions(actions, starts)  # C_t of every row
    previous = np.where((np.arange(len(actions)) > starts)[:, None], np.roll(actions, 1, axis=0), 0.0)  # a_{t-1}
    absolute, origin = model.absolute_action_mask("cpu"), model.config.trajectory_origin
    cameras = model.config.camera_names
    parts = []
    for first in tqdm(range(0, len(rows), args.batch_size), desc="frames"):
        batch = rows[first:first + args.batch_size]
        images = [np.stack([dataset.image(camera, int(row)) for row in batch]) for camera in cameras]
        inputs = processor(images=images, text=[dataset.task(int(row)) for row in batch], state=states[batch])
        cache = model.encode_observation(**inputs)
        S, C = (torch.as_tensor(x) for x in normalised(model, states[batch], cumulative[batch]))
        _, last = (torch.as_tensor(x) for x in normalised(model, states[batch], previous[batch]))
        A = trajectory_start(C, last, absolute, origin)  # the trajectory point a chunk starts from
        parts.append(corrective_gains(model, cache, A, S, G, model.config.kappa, epsilon=args.epsilon))
    return Gains(*(np.concatenate([getattr(p, field) for p in parts]) for field in
                   ("finite_difference", "autograd", "relative_change")))


def report(summary: dict, response, model_name: str) -> str:
    rows = [f"corrective gain of {model_name} (1 = undoes a displacement at the stabilising rate, 0 = ignores it)",
            "", "| state group | gain (autograd) [q25, q75] | gain (finite differences) | action change / unit |",
            "|---|---|---|---|"]
    for group, s in summary.items():
        rows.append(f"| {group} | {s['gain']:.3f} [{s['gain_q25']:.3f}, {s['gain_q75']:.3f}] | "
                    f"{s['gain_finite_difference']:.3f} | {100 * s['relative_action_change']:.1f}% |")
    r2 = ", ".join(f"{value:.2f}" for value in response.r2)
    return "\n".join(rows) + f"\n\nstate response fitted on {response.transitions} transitions, R^2 per state dim: {r2}"


def main(argv=None) -> dict:
    args = parse_args(argv)
    model, processor = load_model_and_processor(args.model, "cpu", args.weights)
    if not model.config.uses_state_trajectory:
        raise ValueError(f"--model {args.model} has objective {model.config.objective!r}: only 'stream_joint' "
                         "models are fed the state")
    dataset = LeRobotDataset.open(args.dataset)
    dataset.check(model.config.camera_names, args.state_key, args.action_key)
    states, actions = normalised(model, dataset.column(args.state_key), dataset.column(args.action_key))
    response = fit_state_response(states, actions, [e.start for e in dataset.episodes], args.ridge,
                                  model.config.absolute_action_dims)
    trained_G = model.config.feedback_matrix  # a stabilised model is measured against the G it was trained with
    G = response.G if trained_G is None else np.asarray(trained_G)
    gains = measure(model, processor, dataset, held_out_rows(dataset, args), G, args)
    summary = group_summary(gains)
    print(report(summary, response, args.model))
    if args.output:
        Path(args.output).write_text(json.dumps({
            "model": args.model, "dataset": args.dataset, "frames": len(gains.autograd), "summary": summary,
            "tracking_kappa": model.config.tracking_kappa,
            "state_response_r2": response.r2.tolist(), "gains_autograd": gains.autograd.tolist(),
            "gains_finite_difference": gains.finite_difference.tolist()}, indent=1))
    return summary


if __name__ == "__main__":
    main()

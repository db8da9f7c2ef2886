"""A copy of a streaming FAS-VLA that tracks its own plan at inference (`config.tracking_kappa`, DESIGN.md
section 5): the weights byte for byte, the config with `tracking_kappa` and G.

    python scripts/add_tracking.py --model results/feedback_v2/models/fas_recovery_no_delay_kappa0 \
        --dataset outputs/feedback_v2/demos_recovery_no_delay/dataset --tracking_kappa 4 --output outputs/tracked

G is fitted on `--dataset` (the model's training data) in the model's normalised units, as `train_accelerate.py`
fits it for feedback-consistent stabilisation, or copied from `--matrix_from`, another model whose normalisation
statistics are the same (refused otherwise). A model that already holds a G keeps it unless one of them is given.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_fasvla import FasVLAConfig  # noqa: E402
from fasvla.data.lerobot_dataset import LeRobotDataset  # noqa: E402
from fasvla.state_response import DEFAULT_RIDGE  # noqa: E402
from fasvla.training import fit_feedback_matrix, load_model_and_processor  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a saved stream_joint FAS-VLA folder")
    p.add_argument("--output", required=True, help="the new folder (must not exist)")
    p.add_argument("--tracking_kappa", type=float, required=True, help="kappa_t, the rate a displacement decays at")
    p.add_argument("--state_dims", type=int, nargs="+", default=None,
                   help="the state dimensions tracking corrects (default all; LIBERO's position: 0 1 2)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="LeRobot dataset to fit G on (the model's training data)")
    source.add_argument("--matrix_from", help="a saved model with the same statistics whose G to copy")
    p.add_argument("--state_key", default="observation.state")
    p.add_argument("--action_key", default="action")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE)
    return p.parse_args(argv)


def feedback_matrix(config: FasVLAConfig, args) -> list[list[float]] | None:
    if args.matrix_from:
        other = FasVLAConfig.from_pretrained(args.matrix_from)
        if (other.norm_stats, other.normalization, other.center_state) != (
                config.norm_stats, config.normalization, config.center_state):
            raise ValueError(f"--matrix_from {args.matrix_from} normalises differently from --model {args.model}: "
                             "its G is in other units; fit one with --dataset")
        if other.feedback_matrix is None:
            raise ValueError(f"--matrix_from {args.matrix_from} holds no feedback_matrix")
        return other.feedback_matrix
    if args.dataset:
        model, _ = load_model_and_processor(args.model)
        G = fit_feedback_matrix(model, LeRobotDataset.open(args.dataset), args.state_key, args.action_key, args.ridge)
        return G.tolist()
    return config.feedback_matrix


def main(argv=None) -> Path:
    args = parse_args(argv)
    source, output = Path(args.model), Path(args.output)
    if output.exists():
        raise ValueError(f"--output {output} exists: choose a new folder")
    config = FasVLAConfig.from_pretrained(source)
    fields = json.loads((source / "config.json").read_text())
    fields.update(tracking_kappa=args.tracking_kappa, tracking_state_dims=args.state_dims,
                  feedback_matrix=feedback_matrix(config, args))
    FasVLAConfig.from_dict(fields)  # every field validated (a G, a streaming objective) before anything is written
    shutil.copytree(source, output)
    (output / "config.json").write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    source_of_G = f"fitted on {args.dataset}" if args.dataset else f"from {args.matrix_from or args.model}"
    print(f"{output}: tracking_kappa {args.tracking_kappa} on state dims {args.state_dims or 'all'}, G {source_of_G}")
    return output


if __name__ == "__main__":
    main()

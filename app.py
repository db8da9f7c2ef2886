"""Replay LIBERO rollouts recorded by `eval_libero.py` in the browser (also the app of the Hugging Face Space).

    python app.py                                       # the example rollouts shipped in examples/libero_rollouts
    python app.py --rollouts outputs/libero_eval user/fasvla-libero-rollouts    # folders and Hub datasets
    python app.py --rollouts outputs/libero_eval --model <FAS-VLA>              # + a tab that runs new episodes

Overview: success per task and suite, per feedback mode, perturbation and model. Episode: both cameras' videos, a
step slider with the frames at that step, and time-aligned plots of the actions sent, the observed state against
the predicted state and the state input, the residual and the policy latency. Compare: two rollouts of the same
task and init state side by side. Run (with --model, where LIBERO is installed): one new episode streamed live and
recorded like the evaluation records them.

Listens on 127.0.0.1 unless --host (or GRADIO_SERVER_NAME, which Spaces set) says otherwise, and serves only files
of the rollout folders it was given.
"""

import argparse
import importlib.util
import os
from pathlib import Path

EXAMPLE_ROLLOUTS = Path(__file__).resolve().parent / "examples" / "libero_rollouts"


def default_rollouts() -> list[str]:
    return os.environ.get("FASVLA_ROLLOUTS", "").split() or [str(EXAMPLE_ROLLOUTS)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", nargs="+", default=default_rollouts(),
                   help="folders or Hub dataset ids holding rollouts (searched for LeRobot datasets); default: "
                        "$FASVLA_ROLLOUTS (a Space variable), else the shipped examples")
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--inbrowser", action="store_true", help="open the page in the default browser")
    run = p.add_argument_group("live runs (the Run tab; needs LIBERO)")
    run.add_argument("--model", default=None, help="FAS-VLA folder or Hub id")
    run.add_argument("--record_dir", default="outputs/app_runs", help="where live episodes are recorded")
    run.add_argument("--resolution", type=int, default=256)
    run.add_argument("--device", default="cpu")
    run.add_argument("--gripper_close_sign", type=float, default=1.0, choices=[1.0, -1.0])
    return p.parse_args(argv)


def live_runner(args):
    """The Run tab's episode runner, or None (and why) when there is no model or no LIBERO."""
    if args.model is None:
        return None
    if importlib.util.find_spec("libero") is None:
        print("LIBERO is not installed (scripts/setup_libero.sh): the Run tab is off")
        return None
    from fasvla.app.live import LiveRunner
    from fasvla.training import load_model_and_processor

    model, processor = load_model_and_processor(args.model, args.device)
    record_dir = Path(args.record_dir)
    record_dir.mkdir(parents=True, exist_ok=True)
    return LiveRunner(model, processor, args.model, record_dir, args.resolution,
                      gripper_close_sign=args.gripper_close_sign)


def build(args):
    """The Gradio page and the folders it may serve."""
    from fasvla.app.rollouts import RolloutCatalog
    from fasvla.app.ui import ReplayApp, build_blocks

    runner = live_runner(args)
    sources = list(args.rollouts) + ([str(runner.record_dir)] if runner is not None else [])
    catalog = RolloutCatalog.scan(sources)
    print(f"{len(catalog.rollouts)} rollouts in {len(catalog.sources)} sources")
    for source, problems in catalog.problems.items():
        print(f"could not read in {source}:\n  " + "\n  ".join(problems))
    return build_blocks(ReplayApp(catalog, runner)), catalog.allowed_paths


def main(argv=None, block: bool = True):
    args = parse_args(argv)
    blocks, allowed_paths = build(args)
    blocks.queue().launch(server_name=args.host, server_port=args.port, allowed_paths=allowed_paths,
                          inbrowser=args.inbrowser, show_error=True, prevent_thread_lock=not block)
    return blocks


if __name__ == "__main__":
    main()

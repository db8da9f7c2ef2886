"""The project's main job on an embedded default, fully offline:

    python demo.py                      # synthetic LeRobot dataset -> train a tiny FAS-VLA -> stream with feedback
    python demo.py --model <folder or Hub id>     # stream from an existing model instead
    python demo.py --record_example examples/libero_rollouts     # re-record the rollouts shipped with the app

1. writes a small synthetic dataset in the LeRobot v3.0 layout (two cameras as H.264 video, 8-dim state, 7-dim
   action, two tasks) to outputs/demo/data;
2. trains a tiny FAS-VLA on it with train_accelerate.py (a minute on a laptop CPU) into outputs/demo/run;
3. loads the result with AutoModel / AutoProcessor (trust_remote_code) and streams one chunk per feedback mode from
   the first frame of an episode, against a toy robot with the dataset's dynamics that gets pushed mid-chunk, next to
   the actions the dataset recorded there;
4. where LIBERO is installed (scripts/setup_libero.sh; `make test` runs it), records fresh LIBERO rollouts with
   eval_libero.py of the small FAS-VLA shipped in checkpoints/ (trained on the project's own scripted LIBERO
   demonstrations, RESULTS.md), anticipatory and open-loop feedback under the same push, on an init state it was not
   trained on, to outputs/demo/libero;
5. opens the replay app (app.py) on them and on the example rollouts shipped in examples/libero_rollouts.
"""

import argparse
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import torch

import app
import eval_libero
import train_accelerate
from fasvla.data.lerobot_dataset import LeRobotDataset
from fasvla.data.synthetic import STEP_SCALE, write_synthetic_dataset
from streaming_fasvla import FEEDBACK_MODES

OUTPUT = Path("outputs/demo")
# The best small FAS-VLA of the feedback experiment, trained on the project's own libero_object recovery
# demonstrations and tracking its planned position (RESULTS.md says how)
LIBERO_MODEL = Path(__file__).resolve().parent / "checkpoints" / "fasvla-small-libero-object"
# LIBERO rollouts: task 2 from init state 2 (demonstrations start from random resets, never from these), each
# feedback mode with and without the feedback experiment's push at the grasp. Both modes solve it unpushed; under the
# push anticipatory feedback recovers and open loop fails, as in 36 of the 150 episodes of RESULTS.md's tracking
# sections (6 the other way round).
ROLLOUT_TASK = ["--task_suite_name", "libero_object", "--task_ids", "2", "--first_trial", "2",
                "--num_trials_per_task", "1"]
PUSH = ["--push_step", "40", "--push_force", "0", "60", "0", "--push_steps", "4"]
ROLLOUT_CONDITIONS = {"anticipatory_push": ["--feedback_mode", "anticipatory", *PUSH],
                      "open_loop_push": ["--feedback_mode", "open_loop", *PUSH],
                      "anticipatory": ["--feedback_mode", "anticipatory"],
                      "open_loop": ["--feedback_mode", "open_loop"]}


class ToyRobot:
    """Integrates actions like the synthetic dataset (state[:6] += STEP_SCALE * action[:6]); pushed once."""

    def __init__(self, initial_state: torch.Tensor, push_step: int, push: float):
        self.state = initial_state.clone()
        self.push_step, self.push, self.steps = push_step, push, 0

    def execute(self, action: torch.Tensor) -> torch.Tensor:
        width = min(action.shape[-1], self.state.shape[-1], 6)
        self.state[..., :width] += STEP_SCALE * action[..., :width]
        self.steps += 1
        if self.steps == self.push_step:
            self.state[..., 0] += self.push
        return self.state.clone()


def prepare_model(steps: int) -> Path:
    """The trained tiny model's folder, training it first if needed."""
    data, run = OUTPUT / "data", OUTPUT / "run"
    if not (data / "meta" / "info.json").is_file():
        write_synthetic_dataset(data, version="v3.0", storage="video", codec="libx264", num_episodes=12, seed=0)
    if not (run / "model" / "config.json").is_file():
        train_accelerate.main(["--dataset", str(data), "--output_dir", str(run), "--preset", "tiny", "--steps",
                               str(steps), "--batch_size", "8", "--lr", "3e-3", "--warmup_steps", "20",
                               "--eval_every", "100", "--num_workers", "0", "--report_to", "none"])
    return run / "model"


def record_rollouts(model: Path, output_dir: Path, conditions: list[str], max_steps: int | None,
                    resolution: int = 128) -> Path:
    """LIBERO rollouts of `model` recorded by eval_libero.py, one output folder per condition, replacing old ones.
    max_steps=None runs the suite's full episodes."""
    shutil.rmtree(output_dir, ignore_errors=True)
    cap = [] if max_steps is None else ["--max_steps", str(max_steps)]
    for name in conditions:
        eval_libero.main(["--model", str(model), *ROLLOUT_TASK, *ROLLOUT_CONDITIONS[name], *cap,
                          "--resolution", str(resolution), "--output_dir", str(output_dir / name)])
    return output_dir


def run_mode(model, inputs, mode: str, push_step: int) -> list[str]:
    robot = ToyRobot(inputs["state"], push_step=push_step, push=0.3)
    stream = model.stream_actions(**inputs, feedback_mode=mode)
    rows, step = [], next(stream)
    while True:
        measured = robot.execute(step.action)
        rows.append(_row(step, measured))
        try:
            step = stream.send(measured)
        except StopIteration:
            return rows


def _fmt(values) -> str:
    return " ".join(f"{v:+.3f}" for v in values[:3])


def _row(step, measured) -> str:
    state_part = "" if step.state_input is None else \
        f"  {_fmt(step.state_input[0].tolist())}  {_fmt(step.predicted_state[0].tolist())}"
    return f"{step.index:>4}  {_fmt(step.action[0].tolist())}{state_part}  {_fmt(measured[0].tolist())}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: train the tiny demo model)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the tiny demo model")
    parser.add_argument("--push_step", type=int, default=3, help="step after which the toy robot is pushed")
    parser.add_argument("--rollout_steps", type=int, default=None,
                        help="cap on the steps of each LIBERO rollout (default: the suite's full episode)")
    parser.add_argument("--libero_model", default=str(LIBERO_MODEL), help="model of the LIBERO rollouts")
    parser.add_argument("--no_app", action="store_true", help="do not open the replay app at the end")
    parser.add_argument("--record_example", default=None, metavar="DIR",
                        help="only record the app's example rollouts of --libero_model (all conditions) into DIR")
    args = parser.parse_args(argv)
    if args.record_example:
        record_rollouts(args.libero_model, Path(args.record_example), list(ROLLOUT_CONDITIONS), args.rollout_steps)
        return

    from transformers import AutoModel, AutoProcessor

    folder = args.model or prepare_model(args.steps)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    dataset = LeRobotDataset(OUTPUT / "data")
    episode = dataset.episodes[-1]
    t = episode.start
    inputs = processor(images=[dataset.image(c, t) for c in model.config.camera_names], text=dataset.task(t),
                       state=dataset.column("observation.state")[t])
    recorded = dataset.column("action")[t : t + model.config.n_action_steps]

    print(f"\nmodel {folder}: {sum(p.numel() for p in model.parameters()):,} parameters, objective "
          f"'{model.config.objective}', {model.config.n_action_steps} streamed actions per observation")
    print(f"episode {episode.index}, task {dataset.task(t)!r}; the toy robot is pushed by +0.3 on x after step "
          f"{args.push_step}")
    print("recorded actions[:3]: " + " | ".join(_fmt(a) for a in recorded[:4]) + " ...")
    header = "step  action[:3]              state_input[:3]         predicted[:3]         measured[:3]"
    for mode in FEEDBACK_MODES if model.config.objective == "stream_joint" else ("open_loop",):
        print(f"\n== {mode} ==\n{header}")
        print("\n".join(run_mode(model, inputs, mode, args.push_step)))
    streamed = np.stack([s.action[0].numpy() for s in _open_loop_steps(model, inputs)])
    error = np.abs(streamed[: len(recorded), :2] - recorded[:, :2]).mean()
    print(f"\nopen-loop streamed vs recorded planar actions: mean abs difference {error:.3f} (recorded mean abs "
          f"{np.abs(recorded[:, :2]).mean():.3f})")
    print("open_loop conditions on its own prediction, synchronous on the state just measured (it waits for it), "
          "anticipatory on the prediction corrected by the residual (measured - state input) of one step earlier, "
          "so it absorbs the push one step after synchronous without waiting for any measurement.")
    replay(args)


def replay(args) -> None:
    """Fresh LIBERO rollouts where LIBERO is installed, then the app on them and on the shipped examples."""
    sources = [str(app.EXAMPLE_ROLLOUTS)]
    if importlib.util.find_spec("libero") is not None:
        print(f"\nLIBERO is installed: recording rollouts of {args.libero_model} (anticipatory and open-loop, same "
              "push)")
        fresh = record_rollouts(Path(args.libero_model), OUTPUT / "libero", ["anticipatory_push", "open_loop_push"],
                                args.rollout_steps)
        sources.insert(0, str(fresh))
    else:
        print("\nLIBERO is not installed (scripts/setup_libero.sh): the app shows the shipped example rollouts")
    if not args.no_app:
        app.main(["--rollouts", *sources, "--inbrowser"])


def _open_loop_steps(model, inputs):
    stream = model.stream_actions(**inputs, feedback_mode="open_loop")
    steps = [next(stream)]
    while True:
        try:
            steps.append(stream.send(None))
        except StopIteration:
            return steps


if __name__ == "__main__":
    main()

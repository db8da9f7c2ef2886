"""Stream actions from a FAS-VLA with the three feedback modes and print them, step by step.

    python demo.py                      # a tiny random model, built offline
    python demo.py --model <folder or Hub id>

A toy robot integrates the actions into its state and gets pushed once mid-chunk, so the three feedback modes see
different measured states and condition on different state inputs. With the tiny random model the actions mean
nothing; the mechanics (what each mode feeds back, and when) are what the demo shows.
"""

import argparse
import time

import torch

from fasvla.tiny import fake_observation, tiny_model_and_processor
from streaming_fasvla import FEEDBACK_MODES


class ToyRobot:
    """State = initial state + its share of the summed actions + an external push at `push_step`."""

    def __init__(self, initial_state: torch.Tensor, push_step: int, push: float):
        self.state = initial_state.clone()
        self.push_step, self.push, self.steps = push_step, push, 0

    def execute(self, action: torch.Tensor) -> torch.Tensor:
        width = min(action.shape[-1], self.state.shape[-1])
        self.state[..., :width] += 0.1 * action[..., :width]
        self.steps += 1
        if self.steps == self.push_step:
            self.state[..., 0] += self.push
        return self.state.clone()


def run_mode(model, inputs, mode: str, push_step: int) -> list[str]:
    robot = ToyRobot(inputs["state"], push_step=push_step, push=0.5)
    stream = model.stream_actions(**inputs, feedback_mode=mode)
    rows, step = [], next(stream)
    while True:
        started = time.perf_counter()
        measured = robot.execute(step.action)
        rows.append(_row(step, measured))
        try:
            step = stream.send(measured)
        except StopIteration:
            break
        rows[-1] += f"  {1000 * (time.perf_counter() - started):6.1f} ms"
    return rows


def _row(step, measured) -> str:
    def fmt(x):
        return " ".join(f"{v:+.3f}" for v in x[0, :3].tolist())

    state_part = "" if step.state_input is None else f"  {fmt(step.state_input)}  {fmt(step.predicted_state)}"
    return f"{step.index:>4}  {fmt(step.action)}{state_part}  {fmt(measured)}"


def load(model_path: str | None, objective: str):
    if model_path is None:
        return tiny_model_and_processor(seed=0, objective=objective)
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(model_path, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(model_path, trust_remote_code=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model folder or Hub id (default: a tiny random model)")
    parser.add_argument("--objective", default="stream_joint", choices=["stream_joint", "stream"],
                        help="objective of the tiny model")
    parser.add_argument("--push_step", type=int, default=3, help="step after which the toy robot is pushed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    model, processor = load(args.model, args.objective)
    observation = fake_observation(model.config, seed=args.seed)
    inputs = processor(**observation)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, objective '{model.config.objective}', "
          f"chunk of {model.config.chunk_size}, {model.config.n_action_steps} streamed actions per observation")
    print(f"task: {observation['text'][0]!r}; the toy robot is pushed by +0.5 on state[0] after step {args.push_step}")
    header = "step  action[:3]" + ("" if model.config.objective == "stream" else
                                    "              state_input[:3]         predicted[:3]       ")
    modes = FEEDBACK_MODES if model.config.objective == "stream_joint" else ("open_loop",)
    for mode in modes:
        print(f"\n== {mode} ==\n{header}  measured[:3]            step time")
        print("\n".join(run_mode(model, inputs, mode, args.push_step)))
    print("\nopen_loop conditions on its own prediction, synchronous on the state just measured (it waits for it), "
          "anticipatory on the prediction corrected by the residual (measured - state input) of one step earlier, "
          "so it absorbs the push one step after synchronous without waiting for any measurement.")


if __name__ == "__main__":
    main()

"""What a model outputs for fixed inputs: a fingerprint of its behaviour, recorded for the shipped checkpoints so that
a change of the code that changes what they do is caught (tests/test_shipped_checkpoint.py).

A streaming model streams two chunks in each feedback mode, the state measured after every action given (a fixed
function of the step); a chunk model predicts a chunk from fixed noise. Inputs: two cameras of seeded pixels at the
model's image size, the task, a state.

    python -m fasvla.checkpoint_outputs checkpoints/fasvla-small-libero-object \
        tests/fixtures/checkpoint_outputs/checkpoints/fasvla-small-libero-object.safetensors
"""

import argparse
from pathlib import Path

import numpy as np
import torch

TASK = "pick up the alphabet soup and place it in the basket"
MODES = ("open_loop", "synchronous", "anticipatory")
CHUNKS = 2


def fixed_observation(config, seed: int = 0) -> dict:
    """Raw inputs for the processor: uint8 frames per camera, the task, a state near LIBERO's."""
    rng = np.random.default_rng(seed)
    size = config.image_size
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in config.camera_names]
    state = np.array([-0.15, 0.0, 0.25, 3.1, 0.0, -0.1, 0.039, -0.039], np.float32)[: config.state_dim]
    return {"images": images, "text": TASK, "state": state}


def model_outputs(model, processor) -> dict[str, torch.Tensor]:
    """name -> tensor of the model's outputs for the fixed inputs."""
    torch.manual_seed(0)
    inputs = dict(processor(**fixed_observation(model.config)))
    if model.config.objective == "chunk":
        noise = torch.randn(1, model.config.chunk_size, model.config.max_action_dim,
                            generator=torch.Generator().manual_seed(0))
        return {"chunk": model.predict_action_chunk(**inputs, noise=noise)}
    return {f"{mode}.{field}": value for mode in MODES for field, value in streamed(model, inputs, mode).items()}


def streamed(model, inputs: dict, mode: str) -> dict[str, torch.Tensor]:
    """(steps, d) actions, predicted states and state inputs of `CHUNKS` chunks, every measured state given."""
    streamer = model.episode_streamer(feedback_mode=mode)
    steps, measured = [], inputs["state"].clone()
    for _ in range(CHUNKS):
        stream = streamer.start_chunk(**{**inputs, "state": measured})
        step = next(stream)
        while True:
            steps.append(step)
            measured = measured + 0.002 * torch.arange(1, measured.shape[1] + 1)  # a state that drifts by itself
            try:
                step = stream.send(measured)
            except StopIteration:
                break
    return {field: torch.cat([getattr(s, field) for s in steps]) for field in ("action", "predicted_state",
                                                                                "state_input")}


def main(argv=None):
    from safetensors.torch import save_file

    from fasvla.training import load_model_and_processor

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model folder")
    p.add_argument("output", help=".safetensors file to write")
    args = p.parse_args(argv)
    model, processor = load_model_and_processor(args.model, "cpu")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model_outputs(model.eval(), processor).items()}, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

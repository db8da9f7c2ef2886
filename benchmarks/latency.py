"""Streaming vs chunk latency of FAS-VLA, measured side by side in one run with the same weights.

    python benchmarks/latency.py                          # full-size default config, random weights, CPU
    python benchmarks/latency.py --preset tiny
    python benchmarks/latency.py --device cuda --dtype bfloat16 --batch_sizes 1 8

For each batch size it times the prefix pass (images + task + state, once per observation), one streamed action
(one expert pass on one token against the cached prefix) and one chunk denoising step (the expert on H tokens), and
derives the time to the first action of each method and their ratios.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_fasvla import FasVLAConfig  # noqa: E402
from fasvla.tiny import tiny_config  # noqa: E402
from modeling_fasvla import FasVLAForActionPrediction  # noqa: E402


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    """Wall times in ms of `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return times


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def fake_inputs(config: FasVLAConfig, batch: int, device, dtype, task_tokens: int = 12) -> dict:
    size, cameras = config.image_size, len(config.camera_names)
    input_ids = torch.randint(0, config.text_config.vocab_size, (batch, task_tokens), device=device)
    return {
        "pixel_values": (torch.rand(batch, cameras, 3, size, size, device=device) * 2 - 1).to(dtype),
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
        "state": torch.randn(batch, config.state_dim, device=device),
    }


def same_weights_chunk_model(model: FasVLAForActionPrediction) -> FasVLAForActionPrediction:
    """The SmolVLA-style chunk policy with the weights and backbone of `model` (everything but the state gate)."""
    config = FasVLAConfig(**{**model.config.to_dict(), "objective": "chunk", "normalization": None})
    chunk_model = FasVLAForActionPrediction(config).eval().to(model.device, model.dtype)
    chunk_model.load_state_dict({k: v for k, v in model.state_dict().items() if k != "state_gate"})
    return chunk_model


@torch.no_grad()
def measure(model, chunk_model, batch: int, repeats: int) -> dict:
    config, device = model.config, model.device
    inputs = fake_inputs(config, batch, device, model.dtype)
    prefix = timed(lambda: model.encode_prefix(**inputs), max(3, repeats // 10), device)
    cache = model.encode_prefix(**inputs)
    one_token = torch.randn(batch, 1, config.max_action_dim, device=device)
    stream_step = timed(lambda: model.velocity(cache, one_token, torch.zeros(batch, 1, device=device)), repeats,
                        device)
    chunk_cache = chunk_model.encode_prefix(**inputs)
    chunk_tokens = torch.randn(batch, config.chunk_size, config.max_action_dim, device=device)
    chunk_time = torch.ones(batch, config.chunk_size, device=device)
    chunk_step = timed(lambda: chunk_model.velocity(chunk_cache, chunk_tokens, chunk_time), max(3, repeats // 5),
                       device)
    p50 = {name: statistics.median(t) for name, t in (("prefix", prefix), ("stream", stream_step),
                                                        ("chunk", chunk_step))}
    return {
        "batch": batch, "prefix_ms": p50["prefix"], "stream_step_ms": p50["stream"],
        "stream_step_p99_ms": percentile(stream_step, 99), "chunk_step_ms": p50["chunk"],
        "stream_first_action_ms": p50["prefix"] + p50["stream"],
        "chunk_first_action_ms": p50["prefix"] + config.num_steps * p50["chunk"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = FasVLAConfig() if args.preset == "full" else tiny_config()
    model = FasVLAForActionPrediction(config).eval().to(args.device, getattr(torch, args.dtype))
    chunk_model = same_weights_chunk_model(model)
    parameters = sum(p.numel() for p in model.parameters())
    device_name = (torch.cuda.get_device_name() if model.device.type == "cuda"
                   else f"CPU, {torch.get_num_threads()} threads")
    print(f"# {args.preset} config, {parameters / 1e6:.1f}M parameters, {args.dtype}, {device_name}, "
          f"torch {torch.__version__}, H={config.chunk_size}, num_steps={config.num_steps}")
    print("| batch | prefix ms | stream step ms (p50 / p99) | chunk step ms | first action: stream / chunk ms | "
          "chunk / stream first action | chunk / stream compute per executed action |")
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        r = measure(model, chunk_model, batch, args.repeats)
        # amortised over the n_action_steps actions executed per observation
        per_action_chunk = r["chunk_first_action_ms"] / config.n_action_steps
        per_action_stream = r["stream_step_ms"] + r["prefix_ms"] / config.n_action_steps
        print(f"| {batch} | {r['prefix_ms']:.1f} | {r['stream_step_ms']:.2f} / {r['stream_step_p99_ms']:.2f} | "
              f"{r['chunk_step_ms']:.2f} | {r['stream_first_action_ms']:.1f} / {r['chunk_first_action_ms']:.1f} | "
              f"{r['chunk_first_action_ms'] / r['stream_first_action_ms']:.2f}x | "
              f"{per_action_chunk / per_action_stream:.2f}x |")


if __name__ == "__main__":
    main()

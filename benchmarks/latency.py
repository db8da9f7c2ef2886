"""Streaming vs chunk latency of FAS-VLA, measured side by side in one run with the same weights.

    python benchmarks/latency.py                          # full-size default config, random weights, CPU
    python benchmarks/latency.py --preset tiny
    python benchmarks/latency.py --device cuda --dtype bfloat16 --compile   # the GPU path (static_step_fasvla.py)

1. Compute, per batch size: the prefix pass (images + task + state, once per observation), one streamed action (one
   expert pass on one token against the cached prefix) and one chunk denoising step (the expert on H tokens). From
   them: the time to the first action after an observation (prefix + 1 step against prefix + `num_steps` chunk
   steps) and the halt at a chunk boundary without pipelining (the same sums: nothing can be sent before them).
2. Control loop, batch 1: the real-time runner on a simulated clock charged the compute samples measured in part 1,
   at each control period and state latency given: synchronous vs anticipatory vs open-loop streaming with prefix
   pipelining, anticipatory without it, and the SmolVLA-style chunk policy (it halts at every boundary for a prefix
   and `num_steps` steps).
   Inter-action gap p50/p99, deadline misses, boundary halt, and ratios.
"""

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_fasvla import FasVLAConfig  # noqa: E402
from fasvla.realtime import (ActionTiming, RealTimeRunner, SimulatedClock, SimulatedRobot,  # noqa: E402
                             SimulatedWorker, timing_summary)
from fasvla.tiny import tiny_config, tiny_tokenizer  # noqa: E402
from fasvla.timing import expert_weight_bytes, measured_bandwidth, percentile, timed  # noqa: E402
from modeling_fasvla import FasVLAForActionPrediction  # noqa: E402
from processing_fasvla import FasVLAProcessor  # noqa: E402
from static_step_fasvla import StaticStreamStep  # noqa: E402

MODES = ["anticipatory", "synchronous", "open_loop"]


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
def measure(model, chunk_model, batch: int, repeats: int, compile_step: bool) -> dict[str, list[float]]:
    """Samples (ms) of the prefix, one streamed step (eager, and compiled on a static prefix cache if asked) and one
    chunk denoising step."""
    config, device = model.config, model.device
    inputs = fake_inputs(config, batch, device, model.dtype)
    prefix = timed(lambda: model.encode_prefix(**inputs), max(3, repeats // 10), device)
    cache = model.encode_prefix(**inputs)
    one_token = torch.randn(batch, 1, config.max_action_dim, device=device)
    zero_time = torch.zeros(batch, 1, device=device)
    samples = {"prefix": prefix, "stream": timed(lambda: model.velocity(cache, one_token, zero_time), repeats, device)}
    if compile_step:
        step = StaticStreamStep(model, batch)
        step.load_prefix(cache)
        samples["compiled"] = timed(lambda: step(one_token, zero_time), repeats, device)
    chunk_cache = chunk_model.encode_prefix(**inputs)
    chunk_tokens = torch.randn(batch, config.chunk_size, config.max_action_dim, device=device)
    chunk_time = torch.ones(batch, config.chunk_size, device=device)
    samples["chunk"] = timed(lambda: chunk_model.velocity(chunk_cache, chunk_tokens, chunk_time), max(3, repeats // 5),
                             device)
    return samples


def compute_row(samples: dict, batch: int, config: FasVLAConfig) -> str:
    """One row of the compute table; the streamed step is the compiled one when it was measured."""
    p50 = {name: statistics.median(values) for name, values in samples.items()}
    step = "compiled" if "compiled" in samples else "stream"
    stream_first = p50["prefix"] + p50[step]
    chunk_first = p50["prefix"] + config.num_steps * p50["chunk"]
    # compute per executed action, n_action_steps actions per observation
    stream_per_action = p50["prefix"] / config.n_action_steps + p50[step]
    chunk_per_action = chunk_first / config.n_action_steps
    compiled = (f" {p50['compiled']:.2f} / {percentile(samples['compiled'], 99):.2f} | "
                f"**{p50['stream'] / p50['compiled']:.2f}x** |" if step == "compiled" else "")
    return (f"| {batch} | {p50['prefix']:.1f} | {p50['stream']:.2f} / {percentile(samples['stream'], 99):.2f} |"
            f"{compiled} {p50['chunk']:.2f} | {stream_first:.1f} / {chunk_first:.1f} | "
            f"**{chunk_first / stream_first:.2f}x** | {chunk_per_action / stream_per_action:.2f}x |")


def schedule_model(config: FasVLAConfig):
    """A tiny model with the chunk length of `config`: the control loop's schedule depends on the costs charged and
    the number of actions per chunk, not on the network that computes them."""
    model = FasVLAForActionPrediction(tiny_config(chunk_size=config.chunk_size,
                                                  n_action_steps=config.n_action_steps)).eval()
    return model, FasVLAProcessor.from_config(model.config, tiny_tokenizer())


def streaming_loop(model, processor, mode: str, period_s: float, latency_s: float, chunks: int, prefix_lead,
                   costs: dict) -> dict:
    clock = SimulatedClock()
    size = model.config.image_size
    images = [np.zeros((size, size, 3), np.uint8) for _ in model.config.camera_names]
    robot = SimulatedRobot(clock, images, np.zeros(model.config.state_dim, np.float32), period_s, latency_s)
    runner = RealTimeRunner(model, processor, "pick up the cube", robot, period_s, mode, prefix_lead=prefix_lead,
                            clock=clock, worker=SimulatedWorker(clock, costs))
    return timing_summary(runner.run(chunks), period_s, prefix_lead)


def chunk_loop(prefix_s: list[float], chunk_step_s: list[float], num_steps: int, actions_per_chunk: int,
               period_s: float, latency_s: float, chunks: int) -> dict:
    """SmolVLA's synchronous execution: observe when the chunk has executed (the observation arrives `latency_s`
    later, as the runner's), then a prefix and `num_steps` denoising steps (samples charged in turn), then the
    actions one per period."""
    prefixes, steps = iter(np.resize(prefix_s, chunks)), iter(np.resize(chunk_step_s, chunks * num_steps))
    timings, now = [], 0.0
    for chunk in range(chunks):
        ready = now + latency_s + next(prefixes) + sum(next(steps) for _ in range(num_steps))
        for k in range(actions_per_chunk):
            due = ready if not timings else timings[-1].sent + period_s
            sent = max(due, ready)
            timings.append(ActionTiming(len(timings), chunk, k, due, ready if k == 0 else due, sent, 0.0))
        now = timings[-1].sent + period_s  # the next observation follows the chunk
    return timing_summary(timings, period_s)


def control_rows(samples: dict, config: FasVLAConfig, periods_ms, latency_ms: float, chunks: int,
                 prefix_lead: int) -> list[str]:
    model, processor = schedule_model(config)
    step = samples.get("compiled", samples["stream"])
    costs = {"step": np.array(step) / 1000, "prefix": np.array(samples["prefix"]) / 1000}
    rows = []
    for period in periods_ms:
        period_s, latency_s = period / 1000, latency_ms / 1000
        results = {mode: streaming_loop(model, processor, mode, period_s, latency_s, chunks, prefix_lead, costs)
                   for mode in MODES}
        results["anticipatory, no pipelining"] = streaming_loop(model, processor, "anticipatory", period_s,
                                                                latency_s, chunks, None, costs)
        results["chunk (SmolVLA)"] = chunk_loop(costs["prefix"], np.array(samples["chunk"]) / 1000,
                                                config.num_steps, config.n_action_steps, period_s, latency_s,
                                                chunks)
        reference = results["anticipatory"]
        for name, r in results.items():
            rows.append(f"| {period:g} | {name} | {r['gap_p50_ms']:.1f} / {r['gap_p99_ms']:.1f} | "
                        f"{r['misses']} / {r['actions']} | {r['boundary_halt_ms']:.1f} | "
                        f"{r['gap_p50_ms'] / reference['gap_p50_ms']:.2f}x / "
                        f"{r['gap_p99_ms'] / reference['gap_p99_ms']:.2f}x |")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["full", "tiny"], default="full")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--compile", action="store_true",
                        help="also time the streamed step compiled on a static prefix cache (static_step_fasvla.py; "
                             "CUDA graphs on a GPU); the first-action and control-loop figures then use it")
    parser.add_argument("--period_ms", type=float, nargs="+", default=[100.0, 50.0, 20.0])
    parser.add_argument("--latency_ms", type=float, default=10.0, help="state latency of the control loop")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per control loop")
    parser.add_argument("--prefix_lead", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = FasVLAConfig() if args.preset == "full" else tiny_config()
    model = FasVLAForActionPrediction(config).eval().to(args.device, getattr(torch, args.dtype))
    chunk_model = same_weights_chunk_model(model)
    parameters = sum(p.numel() for p in model.parameters())
    device_name = (torch.cuda.get_device_name() if model.device.type == "cuda"
                   else f"CPU, {torch.get_num_threads()} threads")
    print(f"# {args.preset} config, {parameters / 1e6:.1f}M parameters, {args.dtype}, {device_name}, "
          f"torch {torch.__version__}, H={config.chunk_size}, num_steps={config.num_steps}, "
          f"{config.n_action_steps} actions per chunk{', compiled step' if args.compile else ''}")
    print("\n## Compute\n")
    compiled = " compiled step ms (p50 / p99) | eager / compiled |" if args.compile else ""
    print(f"| batch | prefix ms | stream step ms (p50 / p99) |{compiled} chunk step ms | first action and boundary "
          "halt: stream / chunk ms | chunk / stream | chunk / stream compute per executed action |")
    print("|---|---|---|---|---|---|---|" + "---|---|" * args.compile)
    measured = {}
    for batch in args.batch_sizes:
        measured[batch] = measure(model, chunk_model, batch, args.repeats, args.compile)
        print(compute_row(measured[batch], batch, config), flush=True)
    weights = expert_weight_bytes(model)
    bandwidth = measured_bandwidth(model.device)
    floor_ms = 1000 * weights / bandwidth
    first = measured[args.batch_sizes[0]]
    step_ms = statistics.median(first.get("compiled", first["stream"]))
    print(f"\nOne expert step reads {weights / 1e6:.0f} MB of weights: {floor_ms:.3f} ms at the {bandwidth / 1e9:.0f} "
          f"GB/s measured by a device copy here; the step takes {step_ms:.2f} ms, {step_ms / floor_ms:.1f}x that "
          f"floor (batch {args.batch_sizes[0]}).")
    if 1 in measured:
        print(f"\n## Control loop at batch 1 (simulated clock charged the samples above; state latency "
              f"{args.latency_ms:g} ms, prefix lead {args.prefix_lead}, {args.chunks} chunks)\n")
        print("| period ms | policy | gap p50 / p99 ms | misses / actions | boundary halt ms | "
              "gap p50 / p99 vs anticipatory |")
        print("|---|---|---|---|---|---|")
        print("\n".join(control_rows(measured[1], config, args.period_ms, args.latency_ms, args.chunks,
                                     args.prefix_lead)))


if __name__ == "__main__":
    main()

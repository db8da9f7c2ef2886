"""Training throughput for 1 vs Q flow-time queries per prefix (DESIGN.md section 3: prefix amortisation).

    python benchmarks/train_throughput.py                                   # tiny model, CPU
    python benchmarks/train_throughput.py --preset full --device cuda --bf16 --batch_size 32
    python benchmarks/train_throughput.py --preset small --freeze full --batch_size 32   # from scratch on a CPU

One optimizer step = forward (prefix + Q-query suffix), backward and AdamW on a fixed batch, with SmolVLA's default
freezing (the VLM frozen, the expert trained) unless `--freeze` says otherwise. A training *sample* is one
observation; each carries Q flow-time queries, so the loss sees B * Q flow samples per step for one prefix pass per
observation.
"""

import argparse
import statistics
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_fasvla import FasVLAConfig  # noqa: E402
from fasvla.tiny import fake_observation, fake_targets, small_config, tiny_config, tiny_tokenizer  # noqa: E402
from fasvla.timing import timed  # noqa: E402
from fasvla.training import FREEZE_MODES, freeze, make_optimizer  # noqa: E402
from modeling_fasvla import FasVLAForActionPrediction  # noqa: E402
from processing_fasvla import FasVLAProcessor  # noqa: E402


def batch_for(config, processor, batch_size: int, device) -> dict:
    if processor is not None:
        inputs = dict(processor(**fake_observation(config, batch_size=batch_size)))
    else:  # full size: random pixels and token ids stand in for a processed observation
        size = config.image_size
        input_ids = torch.randint(0, config.text_config.vocab_size, (batch_size, 16))
        inputs = {"pixel_values": torch.rand(batch_size, len(config.camera_names), 3, size, size) * 2 - 1,
                  "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                  "state": torch.randn(batch_size, config.state_dim)}
    inputs.update(fake_targets(config, inputs["state"]))
    return {k: v.to(device) for k, v in inputs.items()}


def step_times(model, batch, optimizer, repeats: int, device, bf16: bool) -> list[float]:
    """Seconds of `repeats` optimizer steps after two warm-up steps."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return [ms / 1000 for ms in timed(step, repeats, device)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["tiny", "small", "full"], default="tiny")
    parser.add_argument("--freeze", choices=FREEZE_MODES, default="expert_only",
                        help="what is trained (a new small model from scratch: full)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (mixed precision)")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    torch.manual_seed(0)
    if args.preset in ("tiny", "small"):
        config = tiny_config() if args.preset == "tiny" else small_config()
        model, processor = FasVLAForActionPrediction(config), FasVLAProcessor.from_config(config, tiny_tokenizer())
    else:
        config, processor = FasVLAConfig(), None
        model = FasVLAForActionPrediction(config)
    model.to(device).train()
    freeze(model, args.freeze)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(model, 1e-4, (0.9, 0.95), 1e-8, 1e-10)
    batch = batch_for(config, processor, args.batch_size, device)

    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"# {args.preset} model, batch {args.batch_size}, {'bf16 autocast' if args.bf16 else 'float32'}, {where}, "
          f"torch {torch.__version__}; freeze: {args.freeze}, {trained / 1e6:.2f}M of {total / 1e6:.2f}M parameters "
          "trained")
    print("| queries Q | step ms | observations / s | flow samples / s | flow samples / s vs Q=1 | peak memory GiB |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for queries in args.queries:
        model.config.num_flow_queries = queries
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds = statistics.median(step_times(model, batch, optimizer, args.repeats, device, args.bf16))
        flow_rate = args.batch_size * queries / seconds
        baseline = baseline or flow_rate
        memory = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if device.type == "cuda" else "-"
        print(f"| {queries} | {1000 * seconds:.1f} | {args.batch_size / seconds:.1f} | {flow_rate:.1f} | "
              f"{flow_rate / baseline:.2f}x | {memory} |")


if __name__ == "__main__":
    main()

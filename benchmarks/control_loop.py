"""A control loop in real time: the streaming runner (fasvla/realtime.py) against a robot simulated in time, for the
three feedback modes and with / without prefix pipelining, measured side by side in one run.

    python benchmarks/control_loop.py --preset tiny --period_ms 50 --latency_ms 20
    python benchmarks/control_loop.py --preset full --period_ms 100 --latency_ms 20 --chunks 2
    python benchmarks/control_loop.py --simulate_ms 12.6 21 --period_ms 20 50 100 --latency_ms 10   # modelled costs

The model computes for real on a worker thread (random weights; the schedule does not depend on them) while the
robot takes one action per period and returns the state measured at the start of each action `latency_ms` later.
`--simulate_ms STEP PREFIX` replaces the compute by those costs on a simulated clock (to read off what measured
costs of another machine mean at other control rates). Prints the inter-action gap (p50 / p99), the deadline
misses, the mean halt at chunk boundaries, and the ratios to anticipatory feedback.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_fasvla import FasVLAConfig  # noqa: E402
from fasvla.realtime import (RealTimeRunner, SimulatedClock, SimulatedRobot, SimulatedWorker,  # noqa: E402
                             SystemClock, timing_summary)
from fasvla.tiny import tiny_config, tiny_tokenizer  # noqa: E402
from modeling_fasvla import FasVLAForActionPrediction  # noqa: E402
from processing_fasvla import FasVLAProcessor  # noqa: E402

MODES = ["anticipatory", "synchronous", "open_loop"]


def run_loop(model, processor, mode: str, period_s: float, latency_s: float, chunks: int, prefix_lead,
             simulate: tuple[float, float] | None) -> dict:
    clock = SimulatedClock() if simulate else SystemClock()
    size = model.config.image_size
    images = [np.zeros((size, size, 3), np.uint8) for _ in model.config.camera_names]
    robot = SimulatedRobot(clock, images, np.zeros(model.config.state_dim, np.float32), period_s, latency_s)
    worker = SimulatedWorker(clock, {"step": simulate[0], "prefix": simulate[1]}) if simulate else None
    runner = RealTimeRunner(model, processor, "pick up the cube", robot, period_s, mode, prefix_lead=prefix_lead,
                            clock=clock, worker=worker)
    try:
        return timing_summary(runner.run(chunks), period_s, prefix_lead)
    finally:
        runner.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["full", "tiny"], default="tiny")
    parser.add_argument("--period_ms", type=float, nargs="+", default=[50.0])
    parser.add_argument("--latency_ms", type=float, default=20.0)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--prefix_lead", type=int, default=3,
                        help="actions of a chunk between the next observation and the boundary; 0: no pipelining")
    parser.add_argument("--simulate_ms", type=float, nargs=2, default=None, metavar=("STEP", "PREFIX"))
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    config = FasVLAConfig() if args.preset == "full" else tiny_config()
    model = FasVLAForActionPrediction(config).eval()
    processor = FasVLAProcessor.from_config(config, tiny_tokenizer())  # the prompt's tokens do not change timings
    how = (f"simulated compute: step {args.simulate_ms[0]} ms, prefix {args.simulate_ms[1]} ms" if args.simulate_ms
           else f"{args.preset} model computing on CPU, {torch.get_num_threads()} threads")
    print(f"# control loop, {how}; state latency {args.latency_ms} ms, H={config.chunk_size}, "
          f"{config.n_action_steps} actions per chunk, {args.chunks} chunks")
    print("| period ms | mode | prefix pipelining | gap p50 / p99 ms | misses / actions | boundary halt ms | "
          "gap p50 / anticipatory's |")
    print("|---|---|---|---|---|---|---|")
    simulate = tuple(v / 1000 for v in args.simulate_ms) if args.simulate_ms else None
    for period in args.period_ms:
        rows = {(mode, lead): run_loop(model, processor, mode, period / 1000, args.latency_ms / 1000, args.chunks,
                                       lead, simulate)
                for mode in MODES for lead in (args.prefix_lead, 0)}
        for (mode, lead), r in rows.items():
            reference = rows[("anticipatory", lead)]["gap_p50_ms"]
            print(f"| {period:g} | {mode} | {'yes' if lead else 'no'} | {r['gap_p50_ms']:.1f} / {r['gap_p99_ms']:.1f} "
                  f"| {r['misses']} / {r['actions']} | {r['boundary_halt_ms']:.1f} | "
                  f"{r['gap_p50_ms'] / reference:.2f}x |")


if __name__ == "__main__":
    main()

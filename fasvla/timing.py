"""Measurements for the benchmarks: wall-clock timing (warm-up calls first, the accelerator synchronised around
each call), the bytes of weights a streamed step reads and the memory bandwidth that bounds it."""

import statistics
import time

import torch


def timed(fn, repeats: int, device: torch.device, warmup: int = 2) -> list[float]:
    """Wall times in ms of `repeats` calls of `fn` after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return times


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (inclusive method; the value itself for one sample)."""
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def expert_weight_bytes(model) -> int:
    """Bytes of weights one streamed step reads: the expert and the suffix projections."""
    modules = [model.expert, model.action_in_proj, model.action_out_proj, model.action_time_mlp_in,
               model.action_time_mlp_out]
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def measured_bandwidth(device: torch.device, megabytes: int = 256, repeats: int = 10) -> float:
    """Memory bandwidth in bytes/s from timed device-to-device copies (a copy reads and writes every byte)."""
    device = torch.device(device)
    source = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        target.copy_(source)
        _synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * source.numel() / best


def _synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()

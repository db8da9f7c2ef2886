"""The streamed step as fast as the hardware allows at batch 1: a static prefix cache and a compiled expert pass.

At batch 1 the eager step is bound by kernel launches, not by arithmetic or memory traffic: the full-size expert runs
hundreds of small kernels per step (16 layers of norms, projections, rotary, attention and MLP) and took 12.6 ms on
an H200 that reads the expert's bf16 weights in about 46 us. Compiling the step fuses its element-wise work; on a GPU
`mode="reduce-overhead"` also records it as a CUDA graph, replayed with one launch. A graph reads its inputs at fixed
addresses, so the prefix cache (keys, values, masks, rotary angles) lives in static buffers that each new chunk copies
into (`load_prefix`: a few MB, once per chunk), and each step copies its (x, tau) into static buffers as well.

`model.use_static_step(batch)` routes the one-token steps of `stream_actions` (and so of the real-time runner) through
a `StaticStreamStep`; the results equal the eager step's to float rounding (tests/test_static_step.py). Remote code:
this file sits next to modeling_fasvla.py and imports nothing of the project.
"""

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten


class StaticStreamStep:
    """`step(x_t, time)` = `model.velocity(cache, x_t, time)` for one token against the prefix last loaded with
    `load_prefix(cache)`: x_t (B, 1, D), time (B, 1) -> (B, 1, D) float32."""

    def __init__(self, model, batch: int, mode: str | None = None):
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
        self.model, self.batch = model, batch
        self.mode = mode or ("reduce-overhead" if model.device.type == "cuda" else "default")
        self._compiled = torch.compile(model.expert_velocity, mode=self.mode, fullgraph=True, dynamic=False)
        self._static = None  # the flattened (keys, values, masks, rope) buffers
        self._spec = None
        self.loaded = None  # the cache whose copy the buffers hold
        self._x = torch.zeros(batch, 1, model.config.max_action_dim, device=model.device)
        self._time = torch.zeros(batch, 1, device=model.device)
        self._mark_static([self._x, self._time])

    def load_prefix(self, cache) -> None:
        masks, rope = self.model.suffix_context(cache, 1)
        leaves, spec = tree_flatten((cache.keys, cache.values, masks, rope))
        if leaves[0].shape[0] != self.batch:
            raise ValueError(f"the prefix has batch {leaves[0].shape[0]}, this step was built for {self.batch}")
        if self._static is None or spec != self._spec or any(a.shape != b.shape for a, b in zip(self._static, leaves)):
            # a new prefix length (another task's prompt): new buffers, compiled (and captured) again on first use
            self._static, self._spec = [leaf.clone() for leaf in leaves], spec
            self._mark_static(self._static)
        else:
            for buffer, leaf in zip(self._static, leaves):
                buffer.copy_(leaf)
        self.loaded = cache

    @torch.no_grad()
    def __call__(self, x_t: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        if self._static is None:
            raise ValueError("load_prefix(cache) before the first step")
        self._x.copy_(x_t)
        self._time.copy_(time)
        keys, values, masks, rope = tree_unflatten(self._static, self._spec)
        # a CUDA graph writes its output into the same memory at every replay: hand out a copy
        return self._compiled(keys, values, masks, rope, self._x, self._time).clone()

    @staticmethod
    def _mark_static(tensors) -> None:
        for tensor in tensors:
            torch._dynamo.mark_static_address(tensor)

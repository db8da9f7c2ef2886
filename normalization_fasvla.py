"""Robot units <-> model units. The statistics live in the config; this module turns them into tensors.

`normalize(x) = (x - offset) / in_scale` and `unnormalize(y) = y * out_scale + offset`, per dimension:

| `normalization` | state in / out scale     | action in / out scale                  | offset |
|-----------------|--------------------------|----------------------------------------|--------|
| `mean_std`      | std + eps / std          | std + eps / std                        | mean   |
| `scale`         | std + eps / std + eps    | max(abs(q01), abs(q99)) + 1e-6 (both)  | 0 (states: mean with `center_state`) |

`mean_std` is SmolVLA's (LeRobot adds eps when normalising inputs and omits it when unnormalising outputs).
`scale` has no action offset, so it commutes with the cumulative sum of actions that the streaming objectives
integrate; `center_state` (revision 2) centres the states, whose increments alone enter the streaming targets.
"""

import torch

# DESIGN.md section 3: the quantile scale of the streaming objectives is offset by 1e-6 (StreamingVLA's value).
QUANTILE_SCALE_EPS = 1e-6


# Built on the CPU explicitly: `from_pretrained` constructs models under a meta-device context.
def _vector(values, dim: int, fill: float) -> torch.Tensor:
    if values is None:
        return torch.full((dim,), fill, dtype=torch.float32, device="cpu")
    return torch.tensor(values, dtype=torch.float32, device="cpu")


def normalization_tensors(config, key: str, dim: int) -> dict[str, torch.Tensor]:
    """Offset and input/output scales of one feature (`"state"` or `"action"`), float32 (dim,)."""
    stats = (config.norm_stats or {}).get(key)
    if stats is None:
        return {"offset": _vector(None, dim, 0.0), "in_scale": _vector(None, dim, 1.0),
                "out_scale": _vector(None, dim, 1.0)}
    std = _vector(stats.get("std"), dim, 1.0)
    if config.normalization == "mean_std":
        return {"offset": _vector(stats["mean"], dim, 0.0), "in_scale": std + config.norm_eps, "out_scale": std}
    if key == "action":
        scale = torch.maximum(_vector(stats["q01"], dim, 1.0).abs(), _vector(stats["q99"], dim, 1.0).abs())
        scale = scale + QUANTILE_SCALE_EPS
    else:
        scale = std + config.norm_eps
    centred = key == "state" and getattr(config, "center_state", False)
    offset = _vector(stats["mean"] if centred else None, dim, 0.0)
    return {"offset": offset, "in_scale": scale, "out_scale": scale.clone()}


class Normalizer:
    """Normalises states and actions with the statistics of a config.

    A plain object rather than an `nn.Module` with buffers: the config is the single source of truth (nothing is
    saved twice), and the statistics stay float32 when the model is cast to bfloat16. Tensors are built once per
    device. Every method keeps the input's shape and returns at least float32 (float64 stays float64).
    """

    def __init__(self, config):
        self._host = {
            key: normalization_tensors(config, key, dim)
            for key, dim in (("state", config.state_dim), ("action", config.action_dim))
        }
        self._per_device = {}

    def _with_stats(self, key: str, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        dtype = torch.promote_types(x.dtype, torch.float32)
        if (x.device, dtype) not in self._per_device:
            self._per_device[x.device, dtype] = {
                name: {k: v.to(x.device, dtype) for k, v in tensors.items()} for name, tensors in self._host.items()
            }
        return x.to(dtype), self._per_device[x.device, dtype][key]

    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        state, t = self._with_stats("state", state)
        return (state - t["offset"]) / t["in_scale"]

    def unnormalize_state(self, state: torch.Tensor) -> torch.Tensor:
        state, t = self._with_stats("state", state)
        return state * t["out_scale"] + t["offset"]

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        action, t = self._with_stats("action", action)
        return (action - t["offset"]) / t["in_scale"]

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        action, t = self._with_stats("action", action)
        return action * t["out_scale"] + t["offset"]


__all__ = ["Normalizer", "normalization_tensors"]

"""Pieces of `train_accelerate.py` that are worth testing on their own: SmolVLA's optimizer and learning-rate
schedule, the freezing modes, model initialisation and checkpoint discovery."""

import json
import math
import re
from pathlib import Path

import numpy as np
import torch

from configuration_fasvla import FasVLAConfig
from fasvla.state_response import fit_state_response
from fasvla.tiny import small_config, tiny_config
from modeling_fasvla import FasVLAForActionPrediction
from processing_fasvla import FasVLAImageProcessor, FasVLAProcessor

FREEZE_MODES = ("expert_only", "vision_frozen", "full")
CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)$")


def lr_multiplier(step: int, warmup_steps: int, decay_steps: int, peak_lr: float, decay_lr: float) -> float:
    """SmolVLA's schedule as a multiplier of the peak learning rate: linear warmup from peak / (warmup + 1) to the
    peak over `warmup_steps`, then a cosine from the peak down to `decay_lr` at `decay_steps`, constant after."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    progress = min(1.0, (step - warmup_steps) / max(1, decay_steps - warmup_steps))
    floor = decay_lr / peak_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def freeze(model: FasVLAForActionPrediction, mode: str) -> list[str]:
    """Set `requires_grad` for a freezing mode and return the names of the trainable parameters.

    - expert_only (SmolVLA's default): the VLM (vision, connector, text layers) is frozen;
    - vision_frozen: the vision tower is frozen, the VLM text layers and connector train;
    - full: everything trains.
    Parameters that never influence the actions (`model.unused_parameter_names()`) are always frozen.
    """
    if mode not in FREEZE_MODES:
        raise ValueError(f"freeze must be one of {FREEZE_MODES}, got {mode!r}")
    frozen_prefixes = {"expert_only": ("vlm.",), "vision_frozen": ("vlm.vision_model.",), "full": ()}[mode]
    unused = model.unused_parameter_names()
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not name.startswith(frozen_prefixes) and name not in unused)
        if parameter.requires_grad:
            trainable.append(name)
    return trainable


def make_optimizer(model, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=betas, eps=eps,
                             weight_decay=weight_decay)


def load_smolvlm_backbone(model: FasVLAForActionPrediction, vlm: str) -> None:
    """Copy the weights of a SmolVLM(2) checkpoint (folder or Hub id) into the model's backbone: vision tower,
    connector, token embeddings and the first `num_vlm_layers` text layers. Its other layers and the language-model
    head are not part of FAS-VLA."""
    from transformers import SmolVLMForConditionalGeneration

    source = SmolVLMForConditionalGeneration.from_pretrained(vlm, dtype=torch.float32).model.state_dict()
    layers = model.config.num_vlm_layers
    wanted = model.vlm.state_dict()
    kept = {k: v for k, v in source.items() if not (k.startswith("text_model.layers.")
                                                    and int(k.split(".")[2]) >= layers)}
    missing = sorted(set(wanted) - set(kept))
    unexpected = sorted(set(kept) - set(wanted))
    mismatched = [k for k in set(kept) & set(wanted) if kept[k].shape != wanted[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"the SmolVLM checkpoint {vlm!r} does not match the model's vlm_config: missing {missing}, "
                         f"unexpected {unexpected}, shape mismatches {mismatched}")
    model.vlm.load_state_dict(kept)


def new_config(preset: str, vlm: str | None = None, **fields) -> FasVLAConfig:
    """A new model's config: the preset's hyperparameters ("tiny", "small" or "full", SmolVLA 0.45B) and, when `vlm` (a
    SmolVLM(2) folder or Hub id) is given, its backbone: its dimensions, its image size and at most the preset's
    number of VLM layers."""
    make = {"tiny": tiny_config, "small": small_config, "full": FasVLAConfig}[preset]
    if vlm is not None:
        from transformers import SmolVLMConfig

        backbone = SmolVLMConfig.from_pretrained(vlm)
        fields = {"vlm_config": backbone.to_dict(), "image_size": backbone.vision_config.image_size,
                  "num_vlm_layers": min(make().num_vlm_layers, backbone.text_config.num_hidden_layers), **fields}
    return make(**fields)


def load_processor(folder_or_hub_id: str) -> FasVLAProcessor:
    """A saved processor, rebuilt with this repository's classes from its processor_config.json and tokenizer, so
    the folder's copy of the remote code is never run: it may be older, or absent (the models kept in
    results/*/models)."""
    from transformers import PreTrainedTokenizerFast
    from transformers.utils import cached_file

    saved = json.loads(Path(cached_file(folder_or_hub_id, "processor_config.json")).read_text())
    options = {name: saved[name] for name in ("camera_names", "state_dim", "max_length", "padding", "truncation")
               if name in saved}
    return FasVLAProcessor(FasVLAImageProcessor(image_size=saved["image_processor"]["image_size"]),
                           PreTrainedTokenizerFast.from_pretrained(folder_or_hub_id), **options)


def load_model_and_processor(folder_or_hub_id: str, device: str = "cpu", weights: str | None = None):
    """A saved FAS-VLA in eval mode and its processor, with this repository's code; `weights`: a training
    checkpoint's model.safetensors to load into it instead of the folder's (a run's statistics and G are set before
    its first step, so the finished model's config holds for every checkpoint)."""
    model = FasVLAForActionPrediction.from_pretrained(folder_or_hub_id)
    if weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(weights), strict=True)
    return model.to(device).eval(), load_processor(folder_or_hub_id)


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The `step_N` folder with the largest N that holds a complete Accelerate state, or None."""
    candidates = [(int(m.group(1)), p) for p in Path(checkpoint_dir).glob("step_*")
                  if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / "COMPLETE").is_file()]
    return max(candidates)[1] if candidates else None


def parameter_checksum(model) -> float:
    """A float64 sum over every parameter, to check that distributed ranks hold the same weights."""
    with torch.no_grad():
        return float(sum(p.double().sum() for p in model.parameters()))


def fit_feedback_matrix(model, dataset, state_key: str, action_key: str, ridge: float) -> np.ndarray:
    """G (d_a, d_s): the ridge pseudo-inverse of the state's response to the actions, fitted on the whole LeRobot
    `dataset` in the model's normalised units (fasvla/state_response.py): what feedback-consistent stabilisation
    trains with and tracking corrects with."""
    normalizer = model.normalizer
    with torch.no_grad():
        states = normalizer.normalize_state(torch.as_tensor(dataset.column(state_key), dtype=torch.float32))
        actions = normalizer.normalize_action(torch.as_tensor(dataset.column(action_key), dtype=torch.float32))
    response = fit_state_response(states.numpy(), actions.numpy(), [e.start for e in dataset.episodes], ridge,
                                  model.config.absolute_action_dims)
    return response.G

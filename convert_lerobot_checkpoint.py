"""Convert a LeRobot v0.3.2 SmolVLA policy, or the reference FAS-VLA release, into a FAS-VLA model folder.

    python convert_lerobot_checkpoint.py --checkpoint lerobot/smolvla_base --output_dir smolvla_base_fasvla
    python convert_lerobot_checkpoint.py --checkpoint <folder> --output_dir <out> --objective stream_joint

- A plain SmolVLA checkpoint becomes objective `chunk` and computes what SmolVLA computes.
- `--objective stream` / `stream_joint` starts a streaming model from a SmolVLA checkpoint for fine-tuning: the
  backbone, expert and projections carry over, the new state gate starts at 0.
- A reference FAS checkpoint (it has `model.gating_factor`) becomes objective `stream_joint`.

Every tensor is mapped to a FAS-VLA parameter; unknown, missing or mis-shaped tensors stop the conversion with their
list. The only tensors left behind are named in `KNOWN_UNUSED` and reported. The normalisation statistics come from
LeRobot's normalisation buffers, the SmolVLM config and tokenizer from `--vlm` (default: the checkpoint's
`vlm_model_name`, relative to the checkpoint folder when it is a relative path).
"""

import argparse
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, SmolVLMConfig

from configuration_fasvla import OBJECTIVES, FasVLAConfig
from modeling_fasvla import FasVLAForActionPrediction
from processing_fasvla import FasVLAImageProcessor, FasVLAProcessor

# LeRobot key prefix -> FAS-VLA key prefix, first match wins.
KEY_PREFIXES = [
    ("model.vlm_with_expert.vlm.model.", "vlm."),
    ("model.vlm_with_expert.lm_expert.", "expert."),
    ("model.gating_factor", "state_gate"),
    ("model.", ""),
]
# Present in LeRobot checkpoints, never used to compute actions: SmolVLM's language-model head, and the
# `*schedule*` buffers of the reference release's unreleased training module.
KNOWN_UNUSED = [re.compile(r"^model\.vlm_with_expert\.vlm\.lm_head\."), re.compile(r"schedule")]
NORM_BUFFERS = {
    "state": ("normalize_inputs.buffer_observation_state.mean", "normalize_inputs.buffer_observation_state.std"),
    "action": ("normalize_targets.buffer_action.mean", "normalize_targets.buffer_action.std"),
}
OUTPUT_BUFFERS = ("unnormalize_outputs.buffer_action.mean", "unnormalize_outputs.buffer_action.std")
# SmolVLAConfig fields copied as they are into FasVLAConfig, and those read otherwise.
COPIED_FIELDS = ("num_steps", "max_state_dim", "max_action_dim", "num_vlm_layers", "num_expert_layers",
                 "self_attn_every_n_layers", "expert_width_multiplier", "attention_mode", "tokenizer_max_length",
                 "min_period", "max_period")
REQUIRED_FIELDS = COPIED_FIELDS + ("chunk_size", "n_action_steps", "resize_imgs_with_padding", "input_features",
                                   "output_features")
# LeRobot options this model does not implement; converting them would silently change the numbers.
UNSUPPORTED = {"adapt_to_pi_aloha": True, "use_delta_joint_actions_aloha": True, "add_image_special_tokens": True}


class CheckpointError(ValueError):
    """The checkpoint cannot be converted; the message says why and what to do."""


def resolve_checkpoint(checkpoint: str, revision: str | None = None) -> Path:
    """A local LeRobot policy folder, or a Hub id downloaded with `snapshot_download`."""
    path = Path(checkpoint)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(checkpoint, revision=revision, allow_patterns=["config.json", "*.safetensors"]))
    except Exception as error:  # the Hub client raises many types; all mean "not available"
        raise CheckpointError(f"--checkpoint {checkpoint!r} is neither a folder nor a reachable Hub repository "
                              f"({type(error).__name__}: {error})") from error


def read_checkpoint(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} is not a LeRobot policy folder: {missing} missing")
    config = json.loads((folder / "config.json").read_text())
    if config.get("type") != "smolvla":
        raise CheckpointError(f"{folder}/config.json has type {config.get('type')!r}; only 'smolvla' converts")
    absent = [key for key in REQUIRED_FIELDS if key not in config]
    if absent:
        raise CheckpointError(f"{folder}/config.json lacks the SmolVLA settings {absent}")
    state_dict = load_file(folder / "model.safetensors")
    # torch.compile'd policies save their weights under `model._orig_mod.`
    return config, {key.replace("model._orig_mod.", "model.", 1): value for key, value in state_dict.items()}


def check_supported(lerobot: dict):
    problems = [f"{key}={lerobot[key]!r}" for key, bad in UNSUPPORTED.items() if lerobot.get(key) == bad]
    if lerobot.get("empty_cameras", 0):
        problems.append(f"empty_cameras={lerobot['empty_cameras']}")
    if lerobot.get("prefix_length", -1) > 0:
        problems.append(f"prefix_length={lerobot['prefix_length']}")
    mapping = lerobot.get("normalization_mapping", {})
    for feature in ("STATE", "ACTION"):
        if mapping.get(feature, "MEAN_STD") != "MEAN_STD":
            problems.append(f"normalization_mapping.{feature}={mapping[feature]!r} (only MEAN_STD converts)")
    width, height = lerobot["resize_imgs_with_padding"]
    if width != height:
        problems.append(f"resize_imgs_with_padding={[width, height]} (SmolVLM's connector needs square images)")
    if problems:
        raise CheckpointError("this SmolVLA checkpoint uses options FAS-VLA does not implement: " + ", ".join(problems))


def resolve_vlm(folder: Path, lerobot: dict, vlm: str | None) -> str:
    name = vlm or lerobot.get("vlm_model_name")
    if not name:
        raise CheckpointError("the checkpoint names no vlm_model_name; pass --vlm <path or Hub id>")
    relative = (folder / name).resolve()
    return str(relative) if vlm is None and not Path(name).is_absolute() and relative.is_dir() else name


def norm_stats_from_buffers(state_dict: dict[str, torch.Tensor]) -> dict:
    """LeRobot's mean/std buffers; the output unnormaliser must hold the same action statistics."""
    missing = [key for keys in NORM_BUFFERS.values() for key in keys if key not in state_dict]
    if missing:
        raise CheckpointError(f"normalisation buffers missing from the checkpoint: {missing}")
    for key, output_key in zip(NORM_BUFFERS["action"], OUTPUT_BUFFERS):
        if output_key in state_dict and not torch.equal(state_dict[key], state_dict[output_key]):
            raise CheckpointError(f"{key} and {output_key} differ: the checkpoint's action statistics are "
                                  "inconsistent")
    return {feature: {"mean": state_dict[mean].tolist(), "std": state_dict[std].tolist()}
            for feature, (mean, std) in NORM_BUFFERS.items()}


def choose_objective(state_dict: dict, requested: str | None) -> str:
    is_fas = "model.gating_factor" in state_dict
    if requested is None:
        return "stream_joint" if is_fas else "chunk"
    if requested not in OBJECTIVES:
        raise CheckpointError(f"--objective must be one of {OBJECTIVES}, got {requested!r}")
    if is_fas and requested != "stream_joint":
        raise CheckpointError(f"a FAS checkpoint (it has model.gating_factor) was trained with the joint streaming "
                              f"objective; it cannot become {requested!r}")
    return requested


def fasvla_config(lerobot: dict, vlm_config: SmolVLMConfig, stats: dict, objective: str, chunk_size=None):
    """Our config from LeRobot's. SmolVLA's numerical conventions are already our defaults (RoPE base 10000, the
    time embedding in float64, LeRobot's mean/std normalisation); only the fields below differ per checkpoint."""
    features = lerobot["input_features"]
    cameras = [name for name, feature in features.items() if feature["type"] == "VISUAL"]
    if "observation.state" not in features or "action" not in lerobot["output_features"]:
        raise CheckpointError("the checkpoint's features have no 'observation.state' input or 'action' output")
    chunk = chunk_size or lerobot["chunk_size"]
    fields = {key: lerobot[key] for key in COPIED_FIELDS}
    try:
        return FasVLAConfig(
            vlm_config=vlm_config.to_dict(), objective=objective, chunk_size=chunk,
            n_action_steps=min(lerobot["n_action_steps"], chunk), camera_names=cameras,
            image_size=lerobot["resize_imgs_with_padding"][0], state_dim=features["observation.state"]["shape"][0],
            action_dim=lerobot["output_features"]["action"]["shape"][0], norm_stats=stats,
            normalization="mean_std", **fields,
        )
    except ValueError as error:
        raise CheckpointError(f"the checkpoint's settings make no valid FAS-VLA config: {error}") from error


def map_state_dict(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """LeRobot keys -> FAS-VLA keys. Returns the mapped weights and the known-unused keys left behind."""
    mapped, unused = {}, []
    for key, value in state_dict.items():
        if key.startswith(("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")):
            continue  # read into the config by norm_stats_from_buffers
        if any(pattern.search(key) for pattern in KNOWN_UNUSED):
            unused.append(key)
            continue
        for source, target in KEY_PREFIXES:
            if key.startswith(source):
                mapped[target + key[len(source):]] = value
                break
        else:
            mapped[key] = value  # not a LeRobot policy key: reported as unknown by load_exactly
    return mapped, unused


def load_exactly(model: FasVLAForActionPrediction, weights: dict[str, torch.Tensor], allow_missing=()):
    """Load every tensor or explain, with lists, what does not fit. Keys in `allow_missing` keep their init."""
    expected = model.state_dict()
    unknown = sorted(set(weights) - set(expected))
    missing = sorted(set(expected) - set(weights) - set(allow_missing))
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in weights.items() if k in expected and v.shape != expected[k].shape]
    problems = [f"{label} ({len(keys)}): {keys}" for label, keys in
                (("unknown tensors", unknown), ("missing tensors", missing), ("shape mismatches", mismatched)) if keys]
    if problems:
        raise CheckpointError("the checkpoint does not fit the FAS-VLA architecture built from its config; "
                              + "; ".join(problems))
    model.load_state_dict(weights, strict=False)


def convert(checkpoint: str, output_dir: str, vlm: str | None = None, objective: str | None = None,
            chunk_size: int | None = None, revision: str | None = None) -> FasVLAForActionPrediction:
    """Convert and save; returns the converted model. See the module docstring."""
    folder = resolve_checkpoint(checkpoint, revision)
    lerobot, state_dict = read_checkpoint(folder)
    check_supported(lerobot)
    objective = choose_objective(state_dict, objective)
    is_fas = "model.gating_factor" in state_dict
    stats = norm_stats_from_buffers(state_dict)
    notes = []
    if objective != "chunk" and not is_fas:
        # The streaming objectives integrate a cumulative sum of actions: no offset is allowed. Fine-tuning with
        # train_accelerate.py replaces these statistics with the dataset's.
        stats["action"]["mean"] = [0.0] * len(stats["action"]["mean"])
        notes.append("actions are scaled by SmolVLA's action std without its mean (the stream needs no offset)")

    vlm_name = resolve_vlm(folder, lerobot, vlm)
    config = fasvla_config(lerobot, SmolVLMConfig.from_pretrained(vlm_name), stats, objective, chunk_size)
    model = FasVLAForActionPrediction(config).eval()
    weights, unused = map_state_dict(state_dict)
    load_exactly(model, weights, allow_missing=() if is_fas or objective == "chunk" else ("state_gate",))
    if unused:
        notes.append(f"left behind {len(unused)} tensors never used for actions: {unused}")

    tokenizer = AutoTokenizer.from_pretrained(vlm_name)
    processor = FasVLAProcessor(
        FasVLAImageProcessor(image_size=config.image_size), tokenizer, camera_names=config.camera_names,
        state_dim=config.state_dim, max_length=config.tokenizer_max_length,
        padding="max_length" if lerobot.get("pad_language_to") == "max_length" else "longest",
        truncation=False,  # LeRobot never truncates the task
    )
    output = Path(output_dir)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    print(f"converted {checkpoint} -> {output}: objective '{objective}', {sum(p.numel() for p in model.parameters()):,}"
          f" parameters, cameras {config.camera_names}, state {config.state_dim}, action {config.action_dim}, "
          f"chunk {config.chunk_size}, VLM config and tokenizer from {vlm_name}")
    for note in notes:
        print(f"note: {note}")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="LeRobot policy folder or Hub id")
    parser.add_argument("--output_dir", required=True, help="where to write the FAS-VLA folder")
    parser.add_argument("--vlm", default=None, help="SmolVLM2 folder or Hub id (default: the checkpoint's)")
    parser.add_argument("--objective", default=None, choices=OBJECTIVES,
                        help="default: stream_joint for FAS checkpoints, chunk for SmolVLA")
    parser.add_argument("--chunk_size", type=int, default=None, help="override the chunk size (streaming init)")
    parser.add_argument("--revision", default=None, help="Hub revision of --checkpoint")
    args = parser.parse_args(argv)
    try:
        convert(args.checkpoint, args.output_dir, args.vlm, args.objective, args.chunk_size, args.revision)
    except CheckpointError as error:
        parser.exit(2, f"cannot convert: {error}\n")


if __name__ == "__main__":
    main()

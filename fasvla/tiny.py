"""A tiny FAS-VLA built fully offline: config, byte-level BPE tokenizer, processor and fake observations; and the
small config trained from scratch on a CPU (issue 8's LIBERO demonstrations).

Used by the tests and the README demo. The dimensions follow the tiny SmolVLA of `tests/fixtures/smolvla_tiny_A`
(vision 32 wide on 64x64 images, 4 text layers 64 wide, expert 32 wide), so a model builds in well under a second.
"""

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import TokenizersBackend

from configuration_fasvla import FasVLAConfig
from modeling_fasvla import FasVLAForActionPrediction
from processing_fasvla import FasVLAProcessor

# SmolVLM2's special tokens, in its order; "<|im_end|>" is its pad token.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<global-img>", "<fake_token_around_image>",
                  "<image>", "<end_of_utterance>"]
TASKS = [
    "pick up the black bowl and place it on the plate",
    "put the red cube in the basket",
    "open the top drawer of the cabinet",
    "close the microwave",
    "turn on the stove",
    "push the plate to the front of the stove",
    "put the cream cheese in the bowl",
    "pick up the alphabet soup and place it in the basket",
    "stack the blue block on the green block",
    "move the mug to the left of the plate",
]

TINY_VLM = {
    "image_token_id": 5,
    "scale_factor": 2,
    "tie_word_embeddings": False,
    "text_config": {
        "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 320,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "pad_token_id": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0},
    },
    "vision_config": {
        "model_type": "smolvlm_vision", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 2, "image_size": 64, "patch_size": 16,
    },
}


def tiny_config(**overrides) -> FasVLAConfig:
    """A tiny config; any `FasVLAConfig` field can be overridden (e.g. `objective="chunk"`)."""
    fields = dict(
        vlm_config=TINY_VLM, num_vlm_layers=4, expert_width_multiplier=0.5, image_size=64, tokenizer_max_length=16,
        max_state_dim=16, max_action_dim=16, chunk_size=8, n_action_steps=8, num_steps=4, num_flow_queries=4,
    )
    fields.update(overrides)
    if "norm_stats" not in overrides:
        fields["norm_stats"] = tiny_norm_stats(fields.get("state_dim", 8), fields.get("action_dim", 7))
    return FasVLAConfig(**fields)


SMALL_VLM = {
    **TINY_VLM,
    "text_config": {**TINY_VLM["text_config"], "hidden_size": 128, "intermediate_size": 384, "head_dim": 32,
                    "vocab_size": 512},
    "vision_config": {**TINY_VLM["vision_config"], "hidden_size": 128, "intermediate_size": 384,
                      "num_hidden_layers": 4, "num_attention_heads": 4, "image_size": 96, "patch_size": 12},
}


def small_config(**overrides) -> FasVLAConfig:
    """A small FAS-VLA (about 2.6M parameters) that trains from scratch on a CPU: 96 px cameras seen as 8 x 8 patches
    of 12 px (16 tokens per camera after the pixel shuffle), 4 text layers 128 wide, an expert 96 wide; chunks of 16
    actions, 8 executed per observation. Every field can be overridden, like `tiny_config`."""
    fields = dict(vlm_config=SMALL_VLM, num_vlm_layers=4, expert_width_multiplier=0.75, image_size=96,
                  tokenizer_max_length=32, max_state_dim=16, max_action_dim=16, chunk_size=16, n_action_steps=8,
                  num_steps=10, num_flow_queries=8)
    return tiny_config(**(fields | overrides))


def tiny_norm_stats(state_dim: int, action_dim: int) -> dict:
    """Non-trivial statistics so that tests exercise the normalisation (robot units differ from model units)."""
    def spread(dim, low, high):
        return np.linspace(low, high, dim).round(4).tolist()

    return {
        "state": {"mean": spread(state_dim, -0.5, 0.5), "std": spread(state_dim, 0.2, 0.6),
                  "q01": spread(state_dim, -1.0, -0.4), "q99": spread(state_dim, 0.4, 1.0)},
        "action": {"mean": spread(action_dim, -0.1, 0.1), "std": spread(action_dim, 0.3, 0.5),
                   "q01": spread(action_dim, -0.9, -0.5), "q99": spread(action_dim, 0.6, 1.0)},
    }


def tiny_tokenizer(vocab_size: int = 320, tasks: list[str] = TASKS) -> TokenizersBackend:
    """A byte-level BPE tokenizer trained on robot task strings (`tasks`), with SmolVLM2's special tokens (no
    BOS/EOS added)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([task + "\n" for task in tasks], trainer)
    return TokenizersBackend(tokenizer_object=tokenizer, unk_token="<|endoftext|>", bos_token="<|im_start|>",
                             eos_token="<end_of_utterance>", pad_token="<|im_end|>")


def tiny_model_and_processor(seed: int = 0, **overrides) -> tuple[FasVLAForActionPrediction, FasVLAProcessor]:
    """A randomly initialised tiny model (seeded) and its processor, in eval mode."""
    config = tiny_config(**overrides)
    torch.manual_seed(seed)
    model = FasVLAForActionPrediction(config).eval()
    return model, FasVLAProcessor.from_config(config, tiny_tokenizer(config.text_config.vocab_size))


def fake_observation(config: FasVLAConfig, batch_size: int = 1, seed: int = 0, image_hw=(48, 64)) -> dict:
    """Raw robot-side inputs for `processor(**obs)`: uint8 HWC frames per camera, task strings, a state."""
    rng = np.random.default_rng(seed)
    height, width = image_hw
    images = [rng.integers(0, 256, (batch_size, height, width, 3), dtype=np.uint8) for _ in config.camera_names]
    tasks = [TASKS[(seed + i) % len(TASKS)] for i in range(batch_size)]
    state = rng.normal(0.0, 0.5, (batch_size, config.state_dim)).astype(np.float32)
    return {"images": images, "text": tasks, "state": state}


def fake_targets(config: FasVLAConfig, state: torch.Tensor, seed: int = 0, episode_end: int | None = None) -> dict:
    """Training targets consistent with `state`: actions, future states that follow them, pads after
    `episode_end` steps (None: no padding), a cumulative action and the action before. All robot units."""
    generator = torch.Generator().manual_seed(seed)
    batch, chunk = state.shape[0], config.chunk_size
    actions = 0.3 * torch.randn(batch, chunk, config.action_dim, generator=generator)
    drift = torch.nn.functional.pad(actions, (0, max(0, config.state_dim - config.action_dim)))
    future_states = state[:, None] + 0.1 * drift[..., : config.state_dim].cumsum(dim=1)
    # The episode holds frames t..t+episode_end-1: action k exists for k < episode_end, state t+k+1 for
    # k < episode_end - 1.
    end = chunk + 1 if episode_end is None else episode_end
    steps = torch.arange(chunk).expand(batch, -1)
    return {
        "actions": actions, "action_is_pad": steps >= end, "future_states": future_states,
        "future_state_is_pad": steps >= end - 1,
        "cumulative_action": torch.randn(batch, config.action_dim, generator=generator),
        "previous_action": 0.3 * torch.randn(batch, config.action_dim, generator=generator),
    }

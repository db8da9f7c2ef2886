"""The default config is SmolVLA 0.45B: it builds offline with random weights and streams an action on the CPU."""

import pytest
import torch

from configuration_fasvla import FasVLAConfig
from modeling_fasvla import FasVLAForActionPrediction


@pytest.mark.slow
def test_full_size_default_model_builds_offline_and_streams_one_action():
    torch.manual_seed(0)
    model = FasVLAForActionPrediction(FasVLAConfig()).eval()
    # SmolVLA 0.45B without the unused 47M-parameter lm_head of SmolVLM2: vision 86.4M + connector + 16 text layers
    # + token embeddings + the 720-wide expert (98.2M) + projections.
    assert sum(p.numel() for p in model.parameters()) == 402_737_377
    assert sum(p.numel() for p in model.expert.parameters()) == 98_245_840
    assert model.expert.layers[0].mlp.gate_proj.weight.shape == (2048, 720)
    assert model.expert.layers[1].self_attn.k_proj.weight.shape == (320, 320)  # cross attention reads VLM k/v

    pixel_values = torch.rand(1, 2, 3, 512, 512) * 2 - 1
    input_ids = torch.randint(0, 49_000, (1, 12))
    stream = model.stream_actions(pixel_values, input_ids, torch.ones_like(input_ids), torch.randn(1, 8))
    assert stream._cache.keys[0].shape == (1, 2 * 64 + 12 + 1, 5, 64)  # 64 image tokens per 512x512 camera
    step = next(stream)
    assert step.action.shape == (1, 7) and torch.isfinite(step.action).all()
    assert torch.isfinite(stream.send(None).predicted_state).all()

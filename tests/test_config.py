"""FasVLAConfig: SmolVLA 0.45B defaults, serialization round trips and validation of every field."""

import pytest

from configuration_fasvla import FasVLAConfig
from fasvla.tiny import tiny_config, tiny_norm_stats


def test_defaults_are_the_smolvlm2_500m_backbone():
    vlm = FasVLAConfig().vlm_config
    text, vision = vlm.text_config, vlm.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (960, 2560, 32)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (15, 5, 64)
    assert (text.vocab_size, text.max_position_embeddings, text.rms_norm_eps) == (49280, 8192, 1e-5)
    assert text.rope_parameters["rope_theta"] == 100000.0
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads) == (768, 12, 12)
    assert (vision.intermediate_size, vision.image_size, vision.patch_size) == (3072, 512, 16)
    assert (vlm.scale_factor, vlm.image_token_id, vlm.tie_word_embeddings) == (4, 49190, False)


def test_defaults_are_smolvla_0_45b_with_the_joint_stream_objective():
    config = FasVLAConfig()
    assert config.num_vlm_layers == 16
    assert (config.expert_hidden_size, config.expert_intermediate_size, config.expert_layer_stride) == (720, 2048, 1)
    assert (config.chunk_size, config.n_action_steps, config.num_steps) == (50, 50, 10)
    assert (config.attention_mode, config.self_attn_every_n_layers, config.rope_theta) == ("cross_attn", 2, 10000.0)
    assert (config.image_size, config.tokenizer_max_length) == (512, 48)
    assert (config.max_state_dim, config.max_action_dim) == (32, 32)
    assert (config.sigma0, config.kappa) == (0.16, 4.0)
    assert (config.objective, config.normalization) == ("stream_joint", "scale")
    assert config.camera_names == ["observation.images.image", "observation.images.image2"]


@pytest.mark.parametrize("objective, normalization", [("chunk", "mean_std"), ("stream", "scale"),
                                                      ("stream_joint", "scale")])
def test_default_normalization_follows_the_objective(objective, normalization):
    assert FasVLAConfig(objective=objective).normalization == normalization


@pytest.mark.parametrize("num_expert_layers, stride", [(-1, 1), (0, 1), (16, 1), (8, 2), (4, 4)])
def test_expert_layer_stride(num_expert_layers, stride):
    assert FasVLAConfig(num_expert_layers=num_expert_layers).expert_layer_stride == stride


def non_default_config():
    return tiny_config(objective="chunk", kappa=2.5, sigma0=0.3, camera_names=["front", "wrist", "side"],
                       num_expert_layers=2, attention_mode="self_attn", feedback_mode="synchronous", chunk_size=6,
                       n_action_steps=3, state_dim=5, action_dim=4, norm_stats=tiny_norm_stats(5, 4))


def assert_same_config(loaded, config):
    assert loaded.to_dict() == config.to_dict()
    for name in ("objective", "kappa", "sigma0", "camera_names", "num_expert_layers", "attention_mode",
                 "feedback_mode", "chunk_size", "n_action_steps", "state_dim", "action_dim", "norm_stats",
                 "normalization", "image_size", "expert_width_multiplier"):
        assert getattr(loaded, name) == getattr(config, name)
    assert loaded.vlm_config.to_dict() == config.vlm_config.to_dict()
    assert loaded.text_config.hidden_size == 64 and loaded.vlm_config.vision_config.image_size == 64


def test_save_and_load_round_trip_every_field(tmp_path):
    config = non_default_config()
    config.save_pretrained(tmp_path)
    assert_same_config(FasVLAConfig.from_pretrained(tmp_path), config)


def test_dict_round_trip_every_field():
    config = non_default_config()
    assert_same_config(FasVLAConfig.from_dict(config.to_dict()), config)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_vlm_sub_configs(implementation):
    vlm = FasVLAConfig(attn_implementation=implementation).vlm_config
    assert vlm._attn_implementation == implementation
    assert vlm.text_config._attn_implementation == implementation
    assert vlm.vision_config._attn_implementation == implementation


def test_stream_objective_allows_a_trajectory_wider_than_the_joint_one():
    config = FasVLAConfig(objective="stream", action_dim=20, state_dim=16)
    assert config.action_dim + config.state_dim > config.max_action_dim


def stats_without(key, name):
    stats = tiny_norm_stats(8, 7)
    del stats[key][name]
    return stats


def stats_with(key, name, values):
    stats = tiny_norm_stats(8, 7)
    stats[key][name] = values
    return stats


INVALID = [
    ({"objective": "x"}, "objective"),
    ({"feedback_mode": "y"}, "feedback_mode"),
    ({"attention_mode": "z"}, "attention_mode"),
    ({"normalization": "minmax"}, "normalization"),
    ({"chunk_size": 0}, "chunk_size"),
    ({"chunk_size": 2.5}, "chunk_size"),
    ({"chunk_size": True}, "chunk_size"),
    ({"n_action_steps": 51}, "n_action_steps"),
    ({"num_steps": 0}, "num_steps"),
    ({"num_flow_queries": 0}, "num_flow_queries"),
    ({"num_vlm_layers": 33}, "num_vlm_layers"),
    ({"num_vlm_layers": 0}, "num_vlm_layers"),
    ({"num_expert_layers": 3}, "num_expert_layers"),
    ({"num_expert_layers": 1.5}, "num_expert_layers"),
    ({"self_attn_every_n_layers": 0}, "self_attn_every_n_layers"),
    ({"sigma0": -0.1}, "sigma0"),
    ({"kappa": -1.0}, "kappa"),
    ({"kappa": float("nan")}, "kappa"),
    ({"feedback_gain": -1.0}, "feedback_gain"),
    ({"state_loss_weight": -1.0}, "state_loss_weight"),
    ({"expert_width_multiplier": 0}, "expert_width_multiplier"),
    ({"expert_width_multiplier": 1.5}, "expert_width_multiplier"),
    ({"expert_width_multiplier": 1e-4}, "expert_width_multiplier"),
    ({"rope_theta": 0.0}, "rope_theta"),
    ({"min_period": 4.0}, "min_period"),
    ({"min_period": 5.0}, "min_period"),
    ({"min_period": 0.0}, "min_period"),
    ({"state_dim": 40}, "state_dim"),
    ({"action_dim": 20, "state_dim": 16}, "max_action_dim"),
    ({"objective": "stream", "action_dim": 33}, "max_action_dim"),
    ({"objective": "stream", "normalization": "mean_std", "norm_stats": tiny_norm_stats(8, 7)}, "normalization"),
    ({"normalization": "mean_std", "norm_stats": tiny_norm_stats(8, 7)}, "normalization"),
    ({"image_size": 500}, "image_size"),
    ({"image_size": 528}, "image_size"),
    ({"camera_names": []}, "camera_names"),
    ({"camera_names": ["front", "front"]}, "camera_names"),
    ({"camera_names": ["front", ""]}, "camera_names"),
    ({"norm_stats": {"state": tiny_norm_stats(8, 7)["state"]}}, "norm_stats"),
    ({"norm_stats": stats_with("state", "std", [1.0] * 7)}, r"norm_stats\['state'\]\['std'\]"),
    ({"norm_stats": stats_with("action", "std", [1.0] * 8)}, r"norm_stats\['action'\]\['std'\]"),
    ({"norm_stats": stats_without("action", "q01")}, r"norm_stats\['action'\]\['q01'\]"),
    ({"norm_stats": stats_without("action", "q99")}, r"norm_stats\['action'\]\['q99'\]"),
    ({"objective": "chunk", "norm_stats": stats_without("state", "mean")}, r"norm_stats\['state'\]\['mean'\]"),
]


@pytest.mark.parametrize("overrides, field", INVALID, ids=[repr(overrides)[:60] for overrides, _ in INVALID])
def test_invalid_value_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"FasVLAConfig\.{field} must be"):
        FasVLAConfig(**overrides)


def test_mean_std_normalization_needs_no_quantiles():
    stats = tiny_norm_stats(8, 7)
    for key in ("state", "action"):
        del stats[key]["q01"], stats[key]["q99"]
    assert FasVLAConfig(objective="chunk", norm_stats=stats).norm_stats == stats


def test_streaming_accepts_mean_std_without_action_offset():
    """LeRobot-style buffers with zero action means (the reference FAS release) normalise without offset."""
    stats = tiny_norm_stats(8, 7)
    stats["action"]["mean"] = [0.0] * 7
    config = FasVLAConfig(objective="stream_joint", normalization="mean_std", norm_stats=stats)
    assert config.normalization == "mean_std"

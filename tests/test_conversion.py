"""LeRobot v0.3.2 SmolVLA -> FAS-VLA: numerical parity with LeRobot's own outputs (tests/fixtures/smolvla_tiny_A,
see its README), and a converter that refuses, with reasons, what it cannot convert."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoProcessor

import convert_lerobot_checkpoint as conversion
from conftest import FIXTURES
from reference_joint import joint_velocity
from modeling_fasvla import chunk_suffix_layout
from streaming_fasvla import ChunkQueue

FIXTURE = FIXTURES / "smolvla_tiny_A"
TOLERANCE = 1e-5  # float32 on CPU, as the issue asks
CAMERAS = ["observation.images.image", "observation.images.image2"]


@pytest.fixture(scope="module")
def fixture():
    manifest = json.loads((FIXTURE / "manifest.json").read_text())
    return manifest, load_file(FIXTURE / "inputs_and_outputs.safetensors")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smolvla_tiny_A")
    conversion.convert(str(FIXTURE / "lerobot_checkpoint"), str(folder))
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    return model, processor, folder


@pytest.fixture(scope="module")
def inputs(converted, fixture):
    manifest, tensors = fixture
    _, processor, _ = converted
    return processor(images=[tensors[f"input.{camera}.uint8"] for camera in CAMERAS], text=manifest["tasks"],
                     state=tensors["input.observation.state"])


def _max_diff(ours, theirs) -> float:
    return (ours.float() - theirs.float()).abs().max().item()


def _cache(model, inputs):
    with torch.no_grad():
        return model.encode_prefix(**{k: inputs[k] for k in ("pixel_values", "input_ids", "attention_mask", "state")})


def test_converted_config_is_smolvla_chunk(converted):
    model, processor, _ = converted
    config = model.config
    assert (config.objective, config.chunk_size, config.num_steps, config.max_action_dim) == ("chunk", 8, 4, 16)
    assert config.camera_names == CAMERAS and processor.truncation is False
    assert [model.expert.cross_attention[i] for i in range(4)] == [False, True, False, True]


def test_processor_pixel_values_and_token_ids(inputs, fixture):
    _, tensors = fixture
    for index, camera in enumerate(CAMERAS):
        assert _max_diff(inputs["pixel_values"][:, index], tensors[f"pre.image.{camera}"]) <= TOLERANCE
    assert torch.equal(inputs["input_ids"], tensors["pre.lang_tokens"])
    assert torch.equal(inputs["attention_mask"].bool(), tensors["pre.lang_masks"])


def test_long_tasks_are_not_truncated_like_lerobot(converted, fixture):
    _, processor, _ = converted
    _, tensors = fixture
    task = "pick up the red cube and put the red cube in the bowl then close the drawer"
    tokens = processor(images=[tensors[f"input.{c}.uint8"][:1] for c in CAMERAS], text=task)
    assert tokens["input_ids"].shape[1] > processor.max_length


def test_prefix_embeddings_at_valid_positions(converted, inputs, fixture):
    model, _, _ = converted
    _, tensors = fixture
    state = torch.nn.functional.pad(model.normalizer.normalize_state(inputs["state"]), (0, 8))
    assert _max_diff(state, tensors["pre.state_padded"]) <= TOLERANCE
    with torch.no_grad():
        embeddings, pad_mask, _ = model.embed_prefix(inputs["pixel_values"], inputs["input_ids"],
                                                     inputs["attention_mask"], state)
    valid = tensors["prefix.pad_masks"]
    assert torch.equal(pad_mask, valid)
    # the embeddings reach about 10 (scaled by sqrt(hidden)): float32 rounding there is 1e-6, so the tolerance is
    # relative (a CPU with other kernels differed by 1.5e-5 at 9.8, 2026-12-03)
    expected = tensors["prefix.embs"][valid]
    assert _max_diff(embeddings[valid], expected) <= TOLERANCE * max(1.0, expected.abs().max().item())


def test_prefix_keys_and_values_at_valid_positions(converted, inputs, fixture):
    model, _, _ = converted
    _, tensors = fixture
    cache, valid = _cache(model, inputs), tensors["prefix.pad_masks"]
    for layer in range(4):
        keys, values = tensors[f"kv_cache.layer{layer}.key_states"], tensors[f"kv_cache.layer{layer}.value_states"]
        # cross-attention layers cache the expert's projection of the VLM keys/values
        keys, values = model.expert.project_prefix(layer, keys, values)
        assert _max_diff(cache.keys[layer][valid], keys[valid]) <= TOLERANCE
        assert _max_diff(cache.values[layer][valid], values[valid]) <= TOLERANCE


def test_velocity_cached_and_uncached(converted, inputs, fixture):
    model, _, _ = converted
    _, tensors = fixture
    x_t, time = tensors["train.x_t"], tensors["input.time"][:, None].expand(-1, 8)
    with torch.no_grad():
        cached = model.velocity(_cache(model, inputs), x_t, time)
    uncached = joint_velocity(model, inputs, x_t, time, chunk_suffix_layout(8))
    for ours in (cached, uncached):
        assert _max_diff(ours, tensors["train.v_t"]) <= TOLERANCE  # LeRobot's joint training pass
        assert _max_diff(ours, tensors["denoise.v_t"]) <= TOLERANCE  # LeRobot's cached denoising step


def test_training_losses_for_the_given_noise_and_time(converted, inputs, fixture):
    model, _, _ = converted
    _, tensors = fixture
    with torch.no_grad():
        out = model(**inputs, actions=tensors["input.action"], noise=tensors["input.noise"], time=tensors["input.time"])
    assert _max_diff(out.u_t, tensors["train.u_t"]) <= TOLERANCE
    # squared errors reach ~15: their float32 rounding alone is ~1e-6 of them (1.1e-5 on an Intel Xeon's kernels)
    torch.testing.assert_close(out.losses[..., :7], tensors["train.losses"][..., :7], atol=TOLERANCE, rtol=1e-6)
    # our loss averages the real action dims only (LeRobot averages the padding too)
    torch.testing.assert_close(out.loss, tensors["train.losses"][..., :7].mean(), atol=TOLERANCE, rtol=0)


def test_sampled_chunk_from_the_given_noise(converted, inputs, fixture):
    model, _, _ = converted
    _, tensors = fixture
    noise = tensors["input.noise"].clone()
    sampled = model.sample_actions(_cache(model, inputs), noise)
    assert torch.equal(noise, tensors["input.noise"])  # unlike LeRobot, the noise is not updated in place
    assert _max_diff(sampled, tensors["sample.actions"]) <= TOLERANCE
    chunk = model.predict_action_chunk(**inputs, noise=noise)
    assert _max_diff(chunk, tensors["policy.predict_action_chunk"]) <= TOLERANCE


def test_select_action_queue(converted, inputs, fixture):
    model, _, _ = converted
    _, tensors = fixture
    queue = ChunkQueue(model)
    actions = [queue.select_action(**inputs, noise=tensors["input.noise"]) for _ in range(8)]
    assert _max_diff(actions[0], tensors["policy.select_action.first"]) <= TOLERANCE
    assert _max_diff(torch.stack(actions), tensors["policy.select_action.sequence"]) <= TOLERANCE


def test_converted_folder_round_trips_through_save_pretrained(converted, inputs, fixture, tmp_path):
    model, processor, _ = converted
    manifest, tensors = fixture
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path, trust_remote_code=True).eval()
    reprocessed = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)(
        images=[tensors[f"input.{c}.uint8"] for c in CAMERAS], text=manifest["tasks"],
        state=tensors["input.observation.state"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert all(torch.equal(reprocessed[k], inputs[k]) for k in inputs)
    noise = tensors["input.noise"]
    assert torch.equal(model.predict_action_chunk(**inputs, noise=noise),
                       again.predict_action_chunk(**reprocessed, noise=noise))


# -- streaming models from LeRobot checkpoints ----------------------------------------------------------------------


def _fas_checkpoint(folder, gate=0.3):
    """The reference release's layout: a SmolVLA folder with `model.gating_factor` and zero-mean action buffers."""
    shutil.copytree(FIXTURE / "lerobot_checkpoint", folder)
    state_dict = load_file(folder / "model.safetensors")
    state_dict["model.gating_factor"] = torch.tensor([gate])
    state_dict["model.tau_schedule.weights"] = torch.ones(8)  # from the release's unreleased training module
    for key in ("normalize_targets.buffer_action.mean", "unnormalize_outputs.buffer_action.mean"):
        state_dict[key] = torch.zeros_like(state_dict[key])
    save_file(state_dict, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config["vlm_model_name"] = str(FIXTURE / "vlm")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_reference_fas_checkpoint_becomes_stream_joint_and_streams(tmp_path, fixture, capsys):
    _, tensors = fixture
    model = conversion.convert(str(_fas_checkpoint(tmp_path / "fas")), str(tmp_path / "out"))
    assert "'model.tau_schedule.weights'" in capsys.readouterr().out  # left behind, and said so
    assert model.config.objective == "stream_joint" and model.config.chunk_size == 8
    assert model.state_gate.item() == pytest.approx(0.3)
    loaded = AutoModel.from_pretrained(tmp_path / "out", trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "out", trust_remote_code=True)
    inputs = processor(images=[tensors[f"input.{c}.uint8"] for c in CAMERAS], text="pick up the red cube",
                       state=tensors["input.observation.state"])
    stream = loaded.stream_actions(**inputs, feedback_mode="anticipatory")
    steps = [next(stream)] + [stream.send(inputs["state"]) for _ in range(7)]
    assert all(torch.isfinite(s.action).all() and s.action.shape == (2, 7) for s in steps)
    # the action std buffers (zero mean) carry over exactly: a_k = (v / H) * std
    std = torch.tensor(loaded.config.norm_stats["action"]["std"])
    torch.testing.assert_close(loaded.normalizer.unnormalize_action(torch.ones(1, 7)), std[None])


def test_smolvla_starts_a_streaming_model_with_a_closed_state_gate(tmp_path, converted):
    chunk_model, _, _ = converted
    model = conversion.convert(str(FIXTURE / "lerobot_checkpoint"), str(tmp_path), objective="stream_joint",
                               chunk_size=6)
    assert model.config.chunk_size == 6 and model.state_gate.item() == 0.0
    assert model.config.norm_stats["action"]["mean"] == [0.0] * 7
    carried = chunk_model.state_dict()
    assert all(torch.equal(v, carried[k]) for k, v in model.state_dict().items() if k != "state_gate")


# -- refusals -------------------------------------------------------------------------------------------------------


def _broken_checkpoint(folder, config_change=None, weights_change=None):
    shutil.copytree(FIXTURE / "lerobot_checkpoint", folder)
    config = json.loads((folder / "config.json").read_text())
    config["vlm_model_name"] = str(FIXTURE / "vlm")
    (config_change or (lambda c: None))(config)
    (folder / "config.json").write_text(json.dumps(config))
    if weights_change:
        state_dict = load_file(folder / "model.safetensors")
        weights_change(state_dict)
        save_file(state_dict, folder / "model.safetensors")
    return folder


def _drop(key):
    return lambda state_dict: state_dict.pop(key)


BROKEN = [
    ({"weights_change": lambda sd: sd.update({"model.extra_head.weight": torch.zeros(2)})},
     r"unknown tensors \(1\): \['extra_head.weight'\]"),
    ({"weights_change": _drop("model.action_out_proj.bias")}, r"missing tensors \(1\): \['action_out_proj.bias'\]"),
    ({"config_change": lambda c: c.update(expert_width_multiplier=0.75)}, "shape mismatches"),
    ({"weights_change": _drop("normalize_inputs.buffer_observation_state.std")}, "normalisation buffers missing"),
    ({"weights_change": lambda sd: sd["unnormalize_outputs.buffer_action.std"].mul_(2)}, "inconsistent"),
    ({"config_change": lambda c: c.update(type="pi0")}, "only 'smolvla' converts"),
    ({"config_change": lambda c: c.update(adapt_to_pi_aloha=True)}, "adapt_to_pi_aloha=True"),
    ({"config_change": lambda c: c.update(resize_imgs_with_padding=[64, 32])}, "square images"),
    ({"config_change": lambda c: c["normalization_mapping"].update(ACTION="MIN_MAX")}, "only MEAN_STD converts"),
    ({"config_change": lambda c: c.pop("num_vlm_layers")}, r"lacks the SmolVLA settings \['num_vlm_layers'\]"),
    ({"config_change": lambda c: c.update(num_vlm_layers=5)}, "no valid FAS-VLA config.*num_vlm_layers"),
]


@pytest.mark.parametrize("change, message", BROKEN, ids=[m[:30] for _, m in BROKEN])
def test_unconvertible_checkpoints_are_refused_with_the_reason(change, message, tmp_path):
    folder = _broken_checkpoint(tmp_path / "checkpoint", **change)
    with pytest.raises(conversion.CheckpointError, match=message):
        conversion.convert(str(folder), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_fas_checkpoint_cannot_become_a_chunk_model(tmp_path):
    with pytest.raises(conversion.CheckpointError, match="cannot become 'chunk'"):
        conversion.convert(str(_fas_checkpoint(tmp_path / "fas")), str(tmp_path / "out"), objective="chunk")


def test_cli_exits_with_the_reason(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        conversion.main(["--checkpoint", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "cannot convert: --checkpoint" in capsys.readouterr().err


def test_cli_converts(tmp_path, capsys):
    conversion.main(["--checkpoint", str(FIXTURE / "lerobot_checkpoint"), "--output_dir", str(tmp_path)])
    assert "objective 'chunk'" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "processor_config.json").is_file()

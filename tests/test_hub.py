"""save_pretrained -> AutoModel / AutoProcessor.from_pretrained(trust_remote_code=True) reproduces everything."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoProcessor

from fasvla.tiny import fake_observation, fake_targets, tiny_model_and_processor

ROOT = Path(__file__).resolve().parents[1]
REMOTE_CODE = ["configuration_fasvla.py", "modeling_fasvla.py", "processing_fasvla.py", "flow_fasvla.py",
               "normalization_fasvla.py", "static_step_fasvla.py", "streaming_fasvla.py"]


def _outputs(model, processor, seed=0) -> dict:
    """Every kind of output the model produces, from fixed inputs and draws."""
    inputs = processor(**fake_observation(model.config, batch_size=2, seed=seed))
    generator = torch.Generator().manual_seed(seed)
    length = model.config.chunk_size if model.config.objective == "chunk" else 4
    noise = torch.randn(2, length, model.config.max_action_dim, generator=generator)
    time = torch.rand(2 if model.config.objective == "chunk" else (2, length), generator=generator)
    with torch.no_grad():
        out = model(**inputs, **fake_targets(model.config, inputs["state"], episode_end=5), noise=noise, time=time)
    result = {"pixel_values": inputs["pixel_values"], "input_ids": inputs["input_ids"], "losses": out.losses}
    if model.config.objective == "chunk":
        result["chunk"] = model.predict_action_chunk(**inputs, noise=noise)
    else:
        stream = model.stream_actions(**inputs)
        result["stream"] = torch.stack([next(stream).action] + [stream.send(inputs["state"]).action for _ in range(3)])
    return result


@pytest.fixture(scope="module", params=["stream_joint", "chunk"])
def saved(request, tmp_path_factory):
    model, processor = tiny_model_and_processor(seed=4, objective=request.param)
    if model.state_gate is not None:
        with torch.no_grad():
            model.state_gate.fill_(0.3)  # a trained, non-default value must survive
    folder = tmp_path_factory.mktemp(f"fasvla_{request.param}")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor, folder


def test_saved_folder_carries_the_remote_code(saved):
    _, _, folder = saved
    assert all((folder / name).is_file() for name in REMOTE_CODE)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.auto_map["AutoModel"] == "modeling_fasvla.FasVLAForActionPrediction"


def _config_fields(config) -> dict:
    """Every field, without the bookkeeping that loading adds (source path, dtype propagated to sub-configs)."""
    def strip(d):
        return {k: strip(v) if isinstance(v, dict) else v for k, v in d.items()
                if k not in ("_name_or_path", "architectures", "auto_map", "dtype")}

    return strip(config.to_dict())


def test_auto_classes_reproduce_weights_and_outputs_bit_exactly(saved):
    model, processor, folder = saved
    loaded = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    loaded_processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(loaded).__name__ == "FasVLAForActionPrediction"
    assert type(loaded_processor).__name__ == "FasVLAProcessor"
    expected, reloaded = model.state_dict(), loaded.state_dict()
    assert expected.keys() == reloaded.keys()
    assert all(torch.equal(expected[k], reloaded[k]) for k in expected)
    assert _config_fields(loaded.config) == _config_fields(model.config)
    for name, value in _outputs(model, processor).items():
        assert torch.equal(_outputs(loaded, loaded_processor)[name], value), name


@pytest.mark.slow
def test_a_fresh_process_reproduces_the_outputs(saved, tmp_path):
    model, processor, folder = saved
    script = textwrap.dedent(f"""
        import os, sys
        os.environ["HF_HUB_OFFLINE"] = "1"
        sys.path.insert(0, {str(ROOT)!r})  # for the test helpers; the model code comes from the saved folder
        from safetensors.torch import save_file
        from transformers import AutoModel, AutoProcessor
        from tests.test_hub import _outputs
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        processor = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        save_file(_outputs(model, processor), {str(tmp_path / "outputs.safetensors")!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path, timeout=300)
    fresh = load_file(tmp_path / "outputs.safetensors")
    for name, value in _outputs(model, processor).items():
        assert torch.equal(fresh[name], value), name


def test_outputs_helper_is_sensitive_to_weights(saved):
    """Guards the round-trip tests against comparing things that do not depend on the weights."""
    model, processor, _ = saved
    perturbed, _ = tiny_model_and_processor(seed=5, objective=model.config.objective)
    before, after = _outputs(model, processor), _outputs(perturbed, processor)
    assert not torch.equal(before["losses"], after["losses"])
    assert not torch.equal(before.get("chunk", before.get("stream")), after.get("chunk", after.get("stream")))

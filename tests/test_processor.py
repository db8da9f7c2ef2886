"""Image preprocessing, tokenization, state handling and input errors of processing_fasvla.py."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fasvla.tiny import tiny_config, tiny_tokenizer
from processing_fasvla import FasVLAImageProcessor, FasVLAProcessor, resize_with_pad

CAMERAS = ["observation.images.image", "observation.images.image2"]
LONG_TASK = "pick up the black bowl and place it on the plate then close the microwave"  # 25 tokens with "\n"


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def processor(tokenizer):
    return FasVLAProcessor.from_config(tiny_config(), tokenizer)  # 64x64 images, state_dim 8, max_length 16


def frames(batch=2, height=48, width=64, seed=0):
    """uint8 HWC frames (B, H, W, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def unit_images(batch, height, width, seed=0):
    """(B, 3, H, W) float in [0.1, 1]: no resized pixel is 0, so padding is recognisable."""
    return 0.1 + 0.9 * torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def observation(batch=2, tasks=None, state_dim=8):
    tasks = tasks or ["close the microwave", "put the red cube in the basket"][:batch]
    state = np.random.default_rng(1).normal(size=(batch, state_dim))
    return {"images": [frames(batch, seed=0), frames(batch, seed=1)], "text": tasks, "state": state}


# ---------------------------------------------------------------------------------------------------------------
# resize_with_pad
# ---------------------------------------------------------------------------------------------------------------


def test_resize_with_pad_keeps_an_image_of_the_target_size():
    images = unit_images(2, 64, 64)
    assert torch.equal(resize_with_pad(images, 64), images)


def test_resize_with_pad_pads_a_wide_image_on_the_top_only():
    images = unit_images(2, 32, 64)
    out = resize_with_pad(images, 64)
    assert torch.equal(out[..., :32, :], torch.zeros(2, 3, 32, 64))
    assert torch.equal(out[..., 32:, :], F.interpolate(images, size=(32, 64), mode="bilinear", align_corners=False))


def test_resize_with_pad_pads_a_tall_image_on_the_left_only():
    images = unit_images(2, 64, 32)
    out = resize_with_pad(images, 64)
    assert torch.equal(out[..., :, :32], torch.zeros(2, 3, 64, 32))
    assert torch.equal(out[..., :, 32:], F.interpolate(images, size=(64, 32), mode="bilinear", align_corners=False))


def test_resize_with_pad_downscales_with_truncated_sizes():
    # ratio = 150 / 64, so the height is 100 / ratio = 42.67 -> 42 (truncated, not rounded) and 22 rows are padding.
    images = unit_images(1, 100, 150)
    out = resize_with_pad(images, 64)
    padded_rows = (out == 0).all(dim=1).all(dim=-1)[0]
    assert padded_rows.tolist() == [True] * 22 + [False] * 42
    expected = F.interpolate(images, size=(42, 64), mode="bilinear", align_corners=False)
    assert torch.equal(out[..., 22:, :], expected)


# ---------------------------------------------------------------------------------------------------------------
# image processor
# ---------------------------------------------------------------------------------------------------------------


def test_every_image_format_gives_the_same_pixel_values():
    image_processor = FasVLAImageProcessor(image_size=64)
    hwc = frames(1)[0]
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    inputs = [hwc, chw.contiguous(), chw.float() / 255.0, Image.fromarray(hwc)]
    outputs = [image_processor(image)["pixel_values"] for image in inputs]
    for output in outputs[1:]:
        assert torch.equal(output, outputs[0])


def test_batched_images_equal_single_images():
    image_processor = FasVLAImageProcessor(image_size=64)
    batch = frames(3)
    singles = torch.cat([image_processor(image)["pixel_values"] for image in batch])
    assert torch.equal(image_processor(batch)["pixel_values"], singles)
    assert torch.equal(image_processor(list(batch))["pixel_values"], singles)
    chw_batch = torch.from_numpy(batch).permute(0, 3, 1, 2)
    assert torch.equal(image_processor(chw_batch)["pixel_values"], singles)


def test_pixel_values_are_scaled_to_minus_one_one_with_padding_at_minus_one():
    batch = frames(2, height=48, width=64)
    pixel_values = FasVLAImageProcessor(image_size=64)(batch)["pixel_values"]
    assert pixel_values.shape == (2, 3, 64, 64)
    assert pixel_values.min() >= -1 and pixel_values.max() <= 1
    assert torch.equal(pixel_values[..., :16, :], torch.full((2, 3, 16, 64), -1.0))
    expected = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0 * 2.0 - 1.0
    assert torch.equal(pixel_values[..., 16:, :], expected)


@pytest.mark.parametrize("image_size", [0, -64, True, 64.0])
def test_image_processor_rejects_a_bad_image_size(image_size):
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        FasVLAImageProcessor(image_size=image_size)


# ---------------------------------------------------------------------------------------------------------------
# processor
# ---------------------------------------------------------------------------------------------------------------


def test_processor_stacks_cameras_in_model_order(processor):
    obs = observation()
    out = processor(**obs)
    assert out["pixel_values"].shape == (2, 2, 3, 64, 64)
    for camera, images in enumerate(obs["images"]):
        assert torch.equal(out["pixel_values"][:, camera], processor.image_processor(images)["pixel_values"])


def test_processor_accepts_a_dict_of_cameras_in_any_order(processor):
    obs = observation()
    by_name = {CAMERAS[1]: obs["images"][1], CAMERAS[0]: obs["images"][0], "unused_camera": frames(2, seed=9)}
    assert torch.equal(processor(**{**obs, "images": by_name})["pixel_values"], processor(**obs)["pixel_values"])


def test_processor_right_pads_tasks_with_a_newline_appended(processor, tokenizer):
    tasks = ["close the microwave", "put the red cube in the basket"]
    out = processor(**observation(tasks=tasks))
    direct = [tokenizer(task + "\n")["input_ids"] for task in tasks]
    assert out["input_ids"].shape[1] == max(len(ids) for ids in direct)  # padding="longest"
    for row, ids in enumerate(direct):
        padding = out["input_ids"].shape[1] - len(ids)
        assert out["input_ids"][row].tolist() == ids + [tokenizer.pad_token_id] * padding
        assert out["attention_mask"][row].tolist() == [1] * len(ids) + [0] * padding


def test_processor_does_not_double_a_trailing_newline(processor):
    with_newline = processor(**observation(tasks=["close the microwave\n", "turn on the stove\n"]))
    without = processor(**observation(tasks=["close the microwave", "turn on the stove"]))
    assert torch.equal(with_newline["input_ids"], without["input_ids"])


def test_processor_repeats_a_single_task_over_the_batch(processor, tokenizer):
    out = processor(**{**observation(), "text": "turn on the stove"})
    expected = tokenizer("turn on the stove\n")["input_ids"]
    assert out["input_ids"].tolist() == [expected, expected]


def test_processor_truncates_to_max_length(processor, tokenizer):
    out = processor(**observation(tasks=["close the microwave", LONG_TASK]))
    full = tokenizer(LONG_TASK + "\n")["input_ids"]
    assert len(full) > 16
    assert out["input_ids"].shape == (2, 16)
    assert out["input_ids"][1].tolist() == full[:16]


def test_processor_without_truncation_keeps_the_whole_task(tokenizer):
    processor = FasVLAProcessor(FasVLAImageProcessor(64), tokenizer, camera_names=CAMERAS, state_dim=8, max_length=16,
                                truncation=False)
    out = processor(**observation(tasks=["close the microwave", LONG_TASK]))
    assert out["input_ids"][1].tolist() == tokenizer(LONG_TASK + "\n")["input_ids"]


def test_processor_max_length_padding(tokenizer):
    processor = FasVLAProcessor(FasVLAImageProcessor(64), tokenizer, camera_names=CAMERAS, max_length=16,
                                padding="max_length")
    out = processor(**observation(tasks=["close the microwave", "turn on the stove"]))
    assert out["input_ids"].shape == (2, 16)
    assert out["attention_mask"].sum(dim=1).tolist() == [len(tokenizer(t + "\n")["input_ids"])
                                                          for t in ("close the microwave", "turn on the stove")]


def test_processor_passes_the_state_through_as_float32(processor):
    obs = observation()
    state = processor(**obs)["state"]
    assert state.dtype == torch.float32
    assert torch.equal(state, torch.tensor(obs["state"], dtype=torch.float32))
    assert torch.equal(processor(**{**obs, "state": obs["state"].tolist()})["state"], state)


def test_processor_single_observation_with_a_vector_state(processor):
    obs = observation(batch=1)
    out = processor(**{**obs, "state": obs["state"][0]})
    assert torch.equal(out["state"], torch.tensor(obs["state"], dtype=torch.float32))


# ---------------------------------------------------------------------------------------------------------------
# input errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"camera_names": []}, "camera_names must be a non-empty list"),
    ({"camera_names": CAMERAS, "padding": "do_not_pad"}, "padding must be 'longest' or 'max_length'"),
])
def test_processor_rejects_bad_settings(tokenizer, kwargs, message):
    with pytest.raises(ValueError, match=message):
        FasVLAProcessor(FasVLAImageProcessor(64), tokenizer, **kwargs)

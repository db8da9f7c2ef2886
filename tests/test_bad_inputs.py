"""Every bad input of the public API, as a new user would make it, in one table: each is refused with a ValueError
whose message names the argument (and the value), before the model computes anything."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from configuration_fasvla import FasVLAConfig
from fasvla.tiny import fake_observation, fake_targets

CAMERAS = 2  # the tiny models' cameras


@pytest.fixture(scope="module")
def api(tiny_models):
    stream, processor = tiny_models("stream_joint")
    chunk, _ = tiny_models("chunk")
    raw = fake_observation(stream.config, batch_size=2, seed=0)  # images: per camera (2, 48, 64, 3) uint8
    inputs = dict(processor(**raw))
    return SimpleNamespace(stream=stream, chunk=chunk, processor=processor, raw=raw, inputs=inputs,
                           targets=fake_targets(stream.config, inputs["state"]),
                           chunk_targets=fake_targets(chunk.config, inputs["state"]),
                           vocab=stream.config.text_config.vocab_size)


def raw_with(api, **changes):
    return {**api.raw, **changes}


def images_with(api, first):
    """The raw observation with camera 0 replaced."""
    return raw_with(api, images=[first, *api.raw["images"][1:]])


def inputs_with(api, **changes):
    return {**api.inputs, **changes}


def started(model, inputs):
    stream = model.stream_actions(**inputs)
    next(stream)
    return stream


PROCESSOR = {
    "zero-size image": (lambda a: a.processor(**images_with(a, a.raw["images"][0][:, :0])),
                        "positive height and width"),
    "NaN in a float image": (lambda a: a.processor(**images_with(a, np.full((2, 48, 64, 3), np.nan, np.float32))),
                             "NaN or infinite"),
    "float image in 0..255": (lambda a: a.processor(**images_with(a, a.raw["images"][0].astype(np.float32))),
                              r"must lie in \[0, 1\] \(pass uint8 for 0..255\), got values in \[0, 255\]"),
    "negative float image": (lambda a: a.processor(**images_with(a, np.full((2, 8, 8, 3), -0.5, np.float32))),
                             r"got values in \[-0.5, -0.5\]"),
    "one camera short": (lambda a: a.processor(**raw_with(a, images=a.raw["images"][:1])), "one entry per camera"),
    "camera missing from a dict": (lambda a: a.processor(**raw_with(a, images={"observation.images.image":
                                                                              a.raw["images"][0]})),
                                   "missing the cameras"),
    "grayscale image": (lambda a: a.processor(**images_with(a, a.raw["images"][0][..., 0])), "3 channels"),
    "HWC tensor": (lambda a: a.processor(**images_with(a, torch.zeros(2, 48, 64, 3))), "CHW with 3 channels"),
    "int32 tensor": (lambda a: a.processor(**images_with(a, torch.zeros(2, 3, 8, 8, dtype=torch.int32))),
                     "uint8 or float"),
    "not an image": (lambda a: a.processor(**images_with(a, "image.png")), "PIL image, a numpy array or a torch"),
    "cameras of different batch sizes": (lambda a: a.processor(**images_with(a, a.raw["images"][0][:1])),
                                         "same number of images"),
    "empty task": (lambda a: a.processor(**raw_with(a, text=["pick up the cube", ""])), "empty task"),
    "too few tasks": (lambda a: a.processor(**raw_with(a, text=["pick up the cube"])), "list of 2 task strings"),
    "NaN state": (lambda a: a.processor(**raw_with(a, state=np.full((2, 8), np.nan))), "NaN or infinite"),
    "wrong state size": (lambda a: a.processor(**raw_with(a, state=np.zeros((2, 5)))), r"state must have shape"),
}

OBSERVATION = {  # for both inference entry points
    "pixel_values not square": (lambda i: inputs_with_pixels(i, i["pixel_values"][..., :-8]),
                                r"pixel_values must be a float tensor \(B, 2, 3, 64, 64\)"),
    "pixel_values at another resolution": (lambda i: inputs_with_pixels(i, F.interpolate(
        i["pixel_values"].flatten(0, 1), size=32).unflatten(0, (2, CAMERAS))), "at image_size 64"),
    "pixel_values of one camera": (lambda i: inputs_with_pixels(i, i["pixel_values"][:, :1]), "pixel_values must be"),
    "uint8 pixel_values": (lambda i: inputs_with_pixels(i, i["pixel_values"].to(torch.uint8)), "pixel_values must"),
    "input_ids past the vocabulary": (lambda i: {**i, "input_ids": i["input_ids"] + 10**6},
                                      r"input_ids must lie in \[0, \d+\)"),
    "negative input_ids": (lambda i: {**i, "input_ids": i["input_ids"] - 10**6}, "input_ids must lie in"),
    "input_ids of another batch": (lambda i: {**i, "input_ids": i["input_ids"][:1]}, "input_ids must be"),
    "attention_mask of another length": (lambda i: {**i, "attention_mask": i["attention_mask"][:, :-1]},
                                         "same shape"),
    "state of another size": (lambda i: {**i, "state": i["state"][:, :5]}, r"state must be a tensor of shape"),
    "NaN state": (lambda i: {**i, "state": torch.full_like(i["state"], float("nan"))}, "NaN or infinite"),
}


def inputs_with_pixels(inputs, pixel_values):
    return {**inputs, "pixel_values": pixel_values}


MODEL = {
    "infinite feedback gain": (lambda a: a.stream.stream_actions(**a.inputs, feedback_gain=float("inf")),
                               "feedback_gain must be a finite number >= 0, got inf"),
    "negative feedback gain": (lambda a: a.stream.stream_actions(**a.inputs, feedback_gain=-1.0), "feedback_gain"),
    "unknown feedback mode": (lambda a: a.stream.stream_actions(**a.inputs, feedback_mode="closed_loop"),
                              "feedback_mode must be one of"),
    "no action step": (lambda a: a.stream.stream_actions(**a.inputs, n_action_steps=0), "n_action_steps must be"),
    "more steps than the chunk": (lambda a: a.stream.stream_actions(**a.inputs, n_action_steps=9), "chunk_size=8"),
    "cumulative action of another size": (lambda a: started(a.stream, {**a.inputs, "cumulative_action":
                                                                       torch.zeros(2, 3)}), "cumulative_action"),
    "chunk from a streaming model": (lambda a: a.stream.predict_action_chunk(**a.inputs), "use stream_actions"),
    "stream from a chunk model": (lambda a: a.chunk.stream_actions(**a.inputs), "objective='chunk'"),
    "chunk noise of another shape": (lambda a: a.chunk.predict_action_chunk(**a.inputs, noise=torch.zeros(2, 8, 3)),
                                     "noise must be a tensor of shape"),
    "streaming loss without C_t": (lambda a: a.stream(**a.inputs, **{**a.targets, "cumulative_action": None}),
                                   r"cumulative_action must be a tensor of shape \(2, 7\), got NoneType"),
    "streaming noise of another shape": (lambda a: a.stream(**a.inputs, **a.targets, noise=torch.zeros(2, 4, 3)),
                                         r"noise must be a tensor of shape \(2, 4, 16\)"),
    "streaming time of another shape": (lambda a: a.stream(**a.inputs, **a.targets, time=torch.zeros(2)),
                                        r"time must be a tensor of shape \(2, 4\)"),
    "chunk noise in the loss": (lambda a: a.chunk(**a.inputs, **a.chunk_targets, noise=torch.zeros(2, 8)),
                                r"noise must be a tensor of shape \(2, 8, 16\)"),
    "chunk time in the loss": (lambda a: a.chunk(**a.inputs, **a.chunk_targets, time=torch.zeros(2, 8)),
                               r"time must be a tensor of shape \(2,\)"),
    "actions of another length": (lambda a: a.stream(**a.inputs, **{**a.targets, "actions": a.targets["actions"]
                                                                    [:, :3]}), "actions must be"),
    "no future states": (lambda a: a.stream(**a.inputs, **{**a.targets, "future_states": None}),
                         "future_states must be"),
    "pads of another length": (lambda a: a.stream(**a.inputs, **{**a.targets, "action_is_pad":
                                                                 a.targets["action_is_pad"][:, :2]}),
                               "action_is_pad must be"),
    "unknown argument": (lambda a: a.stream(**a.inputs, **a.targets, action_ispad=None), "action_ispad"),
    "infinite gain in the config": (lambda a: FasVLAConfig(feedback_gain=float("inf")),
                                    r"FasVLAConfig.feedback_gain must be a finite number, got inf"),
}

AFTER_THE_PREFIX = {  # a started stream: the prefix exists by construction
    "measured state of another size": (lambda a: started(a.stream, a.inputs).send(torch.zeros(2, 5)),
                                       r"measured state must have shape \(2, 8\)"),
    "NaN measured state": (lambda a: started(a.stream, a.inputs).send(torch.full((2, 8), float("nan"))),
                           "NaN or infinite"),
    "integer measured state": (lambda a: started(a.stream, a.inputs).send(torch.zeros(2, 8, dtype=torch.int64)),
                               "measured state must be a float tensor"),
    "send before next": (lambda a: a.stream.stream_actions(**a.inputs).send(torch.zeros(2, 8)), "before next"),
}

CASES = {**{f"processor: {name}": case for name, case in PROCESSOR.items()},
         **{f"{entry}: {name}": (lambda a, c=change, e=entry: getattr(a.chunk if e == "predict_action_chunk"
                                                                       else a.stream, e)(**c(a.inputs)), message)
            for entry in ("stream_actions", "predict_action_chunk") for name, (change, message) in OBSERVATION.items()},
         **{f"model: {name}": case for name, case in MODEL.items()}}


@pytest.mark.parametrize("call, message", CASES.values(), ids=CASES.keys())
def test_a_bad_input_is_refused_by_name_before_any_compute(call, message, api, monkeypatch):
    for model in (api.stream, api.chunk):
        monkeypatch.setattr(model, "encode_prefix", lambda *a, **k: pytest.fail("the prefix ran for a bad input"))
    with pytest.raises((ValueError, TypeError), match=message) as raised:
        call(api)
    assert raised.type is ValueError or "action_ispad" in message  # Python itself refuses unknown keywords


@pytest.mark.parametrize("call, message", AFTER_THE_PREFIX.values(), ids=AFTER_THE_PREFIX.keys())
def test_a_bad_input_to_a_started_stream_is_refused_by_name(call, message, api):
    with pytest.raises(ValueError, match=message):
        call(api)

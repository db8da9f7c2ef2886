"""Processor of FAS-VLA: camera images, task text and robot state -> the model's inputs.

Images are resized with padding to a square and scaled to [-1, 1] with torch alone (no torchvision, no PIL needed
for arrays and tensors), exactly as SmolVLA does it in LeRobot v0.3.2:
`ratio = max(W / size, H / size)`, resize to `(int(H / ratio), int(W / ratio))` (bilinear, no antialiasing, also
when the size does not change), pad with 0 on the left and top, then `2 x - 1`.
The task gets a trailing newline and is tokenized with right padding, as SmolVLA does.
"""

import numpy as np
import torch
import torch.nn.functional as F
from transformers import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor
from transformers.processing_utils import ProcessorMixin

try:
    from PIL import Image
except ImportError:  # PIL images are optional input
    Image = None


def resize_with_pad(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> (B, 3, size, size), aspect ratio kept, padding (0) on the left and top."""
    height, width = images.shape[-2:]
    ratio = max(width / size, height / size)
    resized_height, resized_width = int(height / ratio), int(width / ratio)
    resized = F.interpolate(images, size=(resized_height, resized_width), mode="bilinear", align_corners=False)
    return F.pad(resized, (size - resized_width, 0, size - resized_height, 0), value=0.0)


def _single_image_to_tensor(image) -> torch.Tensor:
    """One image -> (3, H, W) float32 in [0, 1]. PIL and numpy are HWC, torch tensors are CHW; uint8 is / 255."""
    if Image is not None and isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))  # a writable copy: torch.from_numpy warns on read-only arrays
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"a numpy image must be HWC with 3 channels, got shape {image.shape}")
        if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays (e.g. decoded PNGs)
            image = image.copy()
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not torch.is_tensor(image):
        raise ValueError(f"an image must be a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"a torch image must be CHW with 3 channels, got shape {tuple(image.shape)}")
    if image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"an image must have a positive height and width, got (C, H, W) = {tuple(image.shape)}")
    return _to_unit_float(image)


def _to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 / 255, or a float image checked to lie in [0, 1] (a float image in 0..255 is refused, not clipped)."""
    if image.dtype == torch.uint8:
        return image.float() / 255.0
    if not image.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {image.dtype}")
    image = image.float()
    if not torch.isfinite(image).all():
        raise ValueError("images contain NaN or infinite values")
    low, high = image.min().item(), image.max().item()  # host-side input check, once per image
    if low < 0.0 or high > 1.0:
        raise ValueError(f"float images must lie in [0, 1] (pass uint8 for 0..255), got values in [{low:g}, {high:g}]")
    return image


def images_to_batch(images) -> list[torch.Tensor]:
    """One camera's input, a single image or a batch, -> a list of (3, H, W) float tensors in [0, 1].

    A batch is a list of images, a (B, H, W, 3) numpy array or a (B, 3, H, W) tensor.
    """
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("an empty list of images was given for a camera")
        return [_single_image_to_tensor(image) for image in images]
    is_array_batch = isinstance(images, np.ndarray) and images.ndim == 4
    if is_array_batch or (torch.is_tensor(images) and images.ndim == 4):
        return [_single_image_to_tensor(image) for image in images]
    return [_single_image_to_tensor(images)]


class FasVLAImageProcessor(BaseImageProcessor):
    """Images of one camera -> `pixel_values` (B, 3, image_size, image_size) in [-1, 1], torch only.

    Accepts uint8 or [0, 1] float images as HWC numpy arrays, CHW torch tensors or PIL images, single or batched.
    """

    model_input_names = ["pixel_values"]

    def __init__(self, image_size: int = 512, **kwargs):
        super().__init__(**kwargs)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.image_size = image_size

    def preprocess(self, images, return_tensors="pt", **kwargs) -> BatchFeature:
        resized = [resize_with_pad(image[None], self.image_size)[0] for image in images_to_batch(images)]
        return BatchFeature({"pixel_values": torch.stack(resized) * 2.0 - 1.0}, tensor_type=return_tensors)


class FasVLAProcessor(ProcessorMixin):
    """`processor(images=[camera_0, camera_1, ...], text=task, state=state)` -> a `BatchFeature` with
    `pixel_values` (B, N, 3, S, S), `input_ids` and `attention_mask` (B, L) and `state` (B, d_s) float32, which
    `forward`, `predict_action_chunk` and `stream_actions` take directly.

    Args:
        image_processor: a `FasVLAImageProcessor`.
        tokenizer: the VLM's tokenizer (its pad token pads the task).
        camera_names: the model's camera order; `images` has one entry per camera in this order (or is a dict
            keyed by these names).
        state_dim: expected state size (checked when given).
        max_length: maximum number of task tokens.
        padding: "longest" (pad to the longest task of the batch) or "max_length".
        truncation: cut tasks longer than `max_length` (SmolVLA never truncates: False for converted models).
    """

    def __init__(self, image_processor=None, tokenizer=None, camera_names=None, state_dim=None, max_length=48,
                 padding="longest", truncation=True, **kwargs):
        if not camera_names:
            raise ValueError(f"camera_names must be a non-empty list of camera names, got {camera_names!r}")
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        self.camera_names = list(camera_names)
        self.state_dim = state_dim
        self.max_length = max_length
        self.padding = padding
        self.truncation = truncation
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_config(cls, config, tokenizer):
        """A processor whose settings follow a `FasVLAConfig` (cameras, image size, state dim, task length)."""
        return cls(
            FasVLAImageProcessor(image_size=config.image_size), tokenizer, camera_names=config.camera_names,
            state_dim=config.state_dim, max_length=config.tokenizer_max_length,
        )

    def __call__(self, images=None, text=None, state=None, return_tensors="pt", **kwargs) -> BatchFeature:
        pixel_values = self._camera_batch(images)
        batch = pixel_values.shape[0]
        language = self._tokenize(text, batch)
        features = {"pixel_values": pixel_values, **language}
        if state is not None:
            features["state"] = self._state_batch(state, batch)
        return BatchFeature(features, tensor_type=return_tensors)

    def _camera_batch(self, images) -> torch.Tensor:
        if isinstance(images, dict):
            missing = [name for name in self.camera_names if name not in images]
            if missing:
                raise ValueError(f"images is missing the cameras {missing}; the model expects {self.camera_names}")
            images = [images[name] for name in self.camera_names]
        if not isinstance(images, (list, tuple)) or len(images) != len(self.camera_names):
            received = len(images) if isinstance(images, (list, tuple)) else type(images).__name__
            raise ValueError(f"images must be a list with one entry per camera {self.camera_names} "
                             f"(each one image or a batch), got {received}")
        per_camera = [self.image_processor(entry)["pixel_values"] for entry in images]  # N x (B, 3, S, S)
        sizes = {len(camera) for camera in per_camera}
        if len(sizes) != 1:
            raise ValueError(f"every camera must hold the same number of images, got {[len(c) for c in per_camera]}")
        return torch.stack(per_camera, dim=1)

    def _tokenize(self, text, batch: int) -> dict:
        tasks = [text] * batch if isinstance(text, str) else text
        if not isinstance(tasks, (list, tuple)) or len(tasks) != batch or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"text must be one task string or a list of {batch} task strings, got {text!r}")
        if any(not task.strip() for task in tasks):
            raise ValueError(f"text must not contain an empty task, got {list(tasks)!r}")
        tasks = [task if task.endswith("\n") else task + "\n" for task in tasks]
        tokens = self.tokenizer(
            tasks, padding=self.padding, padding_side="right", max_length=self.max_length,
            truncation=self.truncation, return_tensors="pt",
        )
        return {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}

    def _state_batch(self, state, batch: int) -> torch.Tensor:
        state = torch.as_tensor(np.asarray(state) if not torch.is_tensor(state) else state, dtype=torch.float32)
        if state.ndim == 1:
            state = state[None]
        if state.ndim != 2 or state.shape[0] != batch or (self.state_dim and state.shape[1] != self.state_dim):
            raise ValueError(f"state must have shape ({batch}, {self.state_dim or 'state_dim'}), "
                             f"got {tuple(state.shape)}")
        if not torch.isfinite(state).all():
            raise ValueError(f"state contains NaN or infinite values: {state}")
        return state


FasVLAImageProcessor.register_for_auto_class("AutoImageProcessor")
FasVLAProcessor.register_for_auto_class("AutoProcessor")

__all__ = ["FasVLAImageProcessor", "FasVLAProcessor", "resize_with_pad"]

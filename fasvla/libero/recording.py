"""Every evaluated episode as a LeRobot v3.0 dataset, written as soon as the episode ends (nothing is lost if the
evaluation stops), readable by `fasvla.data.lerobot_dataset`, the app and LeRobot's own tools.

Per frame t (one policy step): the observed state the policy saw, the action sent to the environment (after
perturbations), the model's action, its predicted next state and the state it conditioned on, the policy's latency,
whether the policy looked at the cameras (`policy.observed`: a chunk start), and the camera images:
- `video=True`: every frame, as mp4 videos (what the app plays);
- `video=False`: only the frames the policy looked at, as PNG images in the parquet, null at the other steps: the
  cameras are then rendered only where the policy needed them (fasvla/libero/frames.py), and writing costs a few
  PNGs instead of two videos.
Per episode (columns of meta/episodes): suite, task id, init state, success, steps, feedback mode, perturbation,
model.
"""

from pathlib import Path

import numpy as np

from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset
from fasvla.libero.env import CAMERAS, CONTROL_FREQUENCY

STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "gripper_left", "gripper_right"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


def rollout_features(resolution: int, cameras: list[str], video: bool = True) -> dict:
    camera = {"dtype": "video" if video else "image", "shape": [resolution, resolution, 3],
              "names": ["height", "width", "channels"]}
    vector = lambda names: {"dtype": "float32", "shape": [len(names)], "names": list(names)}  # noqa: E731
    return {
        **{key: dict(camera) for key in cameras},
        "observation.state": vector(STATE_NAMES),
        "action": vector(ACTION_NAMES),  # what the environment executed
        "policy.action": vector(ACTION_NAMES),  # what the model output
        "policy.predicted_state": vector(STATE_NAMES),  # NaN for models that predict no state
        "policy.state_input": vector(STATE_NAMES),
        "policy.latency_ms": {"dtype": "float32", "shape": [1], "names": None},
        "policy.observed": {"dtype": "bool", "shape": [1], "names": None},  # the policy read the cameras
    }


class EpisodeRecorder:
    """The steps of one episode, in memory until `save`; `video` chooses full-rate videos or the policy's frames."""

    def __init__(self, cameras: list[str] = tuple(CAMERAS), video: bool = True):
        self.cameras, self.video = list(cameras), video
        self.frames = {key: [] for key in rollout_features(1, self.cameras)}

    def add(self, observation, output, sent_action: np.ndarray, observed: bool | None = None) -> None:
        """One policy step: the observation it acted on, the policy's output, the action the environment got.
        `observed`: whether the policy read this observation's images (default: whether they were rendered, which
        in lockstep only the policy does before the recorder)."""
        observed = observation.rendered if observed is None else observed
        for camera, image in zip(self.cameras, observation.images if self.video or observed else
                                 [None] * len(self.cameras)):
            self.frames[camera].append(image)
        self.frames["observation.state"].append(observation.state)
        self.frames["action"].append(sent_action)
        self.frames["policy.action"].append(output.action)
        self.frames["policy.predicted_state"].append(output.predicted_state)
        self.frames["policy.state_input"].append(output.state_input)
        self.frames["policy.latency_ms"].append(1000.0 * output.latency_s)
        self.frames["policy.observed"].append(observed)

    def __len__(self) -> int:
        return len(self.frames["action"])

    def save(self, root: Path, task: str, metadata: dict, codec: str = "libx264") -> Path:
        if not len(self):
            raise ValueError("the episode has no policy step to save")
        images = [image for image in self.frames[self.cameras[0]] if image is not None]
        if not images:
            raise ValueError("the episode has no camera frame to save: the policy never looked at the cameras")
        frames = {key: self._column(key, values) for key, values in self.frames.items()}
        features = rollout_features(images[0].shape[0], self.cameras, self.video)
        return write_lerobot_dataset(root, [EpisodeRecord(task, frames, metadata)], features, CONTROL_FREQUENCY,
                                     codec=codec, robot_type="panda")

    def _column(self, key: str, values: list):
        if key in self.cameras:  # (T, S, S, 3) uint8 videos, or a list with None where no frame was rendered
            return np.stack(values) if self.video else values
        return np.stack(values).astype(bool if key == "policy.observed" else np.float32)

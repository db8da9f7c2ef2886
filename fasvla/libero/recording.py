"""Every evaluated episode as a LeRobot v3.0 dataset, written as soon as the episode ends (nothing is lost if the
evaluation stops), readable by `fasvla.data.lerobot_dataset`, the app and LeRobot's own tools.

Per frame t (one policy step): both camera images and the observed state the policy saw, the action sent to the
environment (after perturbations), the model's action, its predicted next state and the state it conditioned on,
and the policy's latency. Per episode (columns of meta/episodes): suite, task id, init state, success, steps,
feedback mode, perturbation, model.
"""

from pathlib import Path

import numpy as np

from fasvla.data.writer import EpisodeRecord, write_lerobot_dataset
from fasvla.libero.env import CAMERAS, CONTROL_FREQUENCY

STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_axis_angle_x", "eef_axis_angle_y", "eef_axis_angle_z",
               "gripper_left", "gripper_right"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


def rollout_features(resolution: int, cameras: list[str]) -> dict:
    camera = {"dtype": "video", "shape": [resolution, resolution, 3], "names": ["height", "width", "channels"]}
    vector = lambda names: {"dtype": "float32", "shape": [len(names)], "names": list(names)}  # noqa: E731
    return {
        **{key: dict(camera) for key in cameras},
        "observation.state": vector(STATE_NAMES),
        "action": vector(ACTION_NAMES),  # what the environment executed
        "policy.action": vector(ACTION_NAMES),  # what the model output
        "policy.predicted_state": vector(STATE_NAMES),  # NaN for models that predict no state
        "policy.state_input": vector(STATE_NAMES),
        "policy.latency_ms": {"dtype": "float32", "shape": [1], "names": None},
    }


class EpisodeRecorder:
    def __init__(self, cameras: list[str] = tuple(CAMERAS)):
        self.cameras = list(cameras)
        self.frames = {key: [] for key in rollout_features(1, self.cameras)}

    def add(self, observation, output, sent_action: np.ndarray) -> None:
        """One policy step: the observation it acted on, the policy's output, the action the environment got."""
        for camera, image in zip(self.cameras, observation.images):
            self.frames[camera].append(image)
        self.frames["observation.state"].append(observation.state)
        self.frames["action"].append(sent_action)
        self.frames["policy.action"].append(output.action)
        self.frames["policy.predicted_state"].append(output.predicted_state)
        self.frames["policy.state_input"].append(output.state_input)
        self.frames["policy.latency_ms"].append(1000.0 * output.latency_s)

    def __len__(self) -> int:
        return len(self.frames["action"])

    def save(self, root: Path, task: str, metadata: dict, codec: str = "libx264") -> Path:
        if not len(self):
            raise ValueError("the episode has no policy step to save")
        resolution = self.frames[self.cameras[0]][0].shape[0]
        frames = {key: np.stack(values).astype(np.uint8 if key in self.cameras else np.float32)
                  for key, values in self.frames.items()}
        record = EpisodeRecord(task, frames, metadata)
        return write_lerobot_dataset(root, [record], rollout_features(resolution, self.cameras), CONTROL_FREQUENCY,
                                     codec=codec, robot_type="panda")

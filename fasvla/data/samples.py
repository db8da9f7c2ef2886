"""Training samples of a LeRobot dataset for every objective, and the collator that batches them.

A sample is the frame t of an episode: images at t for the chosen cameras, the task, the state s_t, the actions
a_t..a_{t+H-1}, the future states s_{t+1}..s_{t+H}, the episode's cumulative action C_t = sum of its actions before t,
and pad masks where these run past the episode end (padded entries repeat the last frame, as in LeRobot).

With `max_observation_delay` D the observation (images and the prefix's state) is the one of frame t - d, d uniform
in {0..D} within the episode, while the trajectory still starts at t (`trajectory_state` = s_t): the chunk the model
then learns is the one that starts d actions after what it sees, as under inference delay. The draws are a function
of (seed, epoch, frame), so that any number of loader workers and a resumed run see the same ones.
"""

import numpy as np
import torch

from fasvla.data.lerobot_dataset import LeRobotDataset


def episode_bounds(dataset: LeRobotDataset) -> tuple[np.ndarray, np.ndarray]:
    """First row and end row (exclusive) of each row's episode, (num_frames,) each."""
    starts = np.array([e.start for e in dataset.episodes])
    ends = starts + np.array([e.length for e in dataset.episodes])
    episode_of_row = np.repeat(np.arange(len(dataset.episodes)), [e.length for e in dataset.episodes])
    return starts[episode_of_row], ends[episode_of_row]


def cumulative_actions(actions: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """C_t = sum of the episode's actions before t, for every row at once (float64).

    With E the exclusive running sum over the whole dataset, C_t = E_t - E_{start(t)}: one cumulative sum, no loop.
    """
    exclusive = np.concatenate([np.zeros_like(actions[:1], dtype=np.float64), actions.cumsum(0, dtype=np.float64)[:-1]])
    return exclusive - exclusive[starts]


class TrajectorySamples(torch.utils.data.Dataset):
    """One sample per frame of the selected episodes.

    cameras: dataset camera keys in the model's camera order (the mapping from dataset to model cameras).
    """

    def __init__(self, dataset: LeRobotDataset, chunk_size: int, cameras: list[str], state_key: str,
                 action_key: str, episodes: list[int] | None = None, max_observation_delay: int = 0,
                 seed: int = 0):
        if isinstance(max_observation_delay, bool) or not isinstance(max_observation_delay, int) or \
                max_observation_delay < 0:
            raise ValueError(f"max_observation_delay must be an integer >= 0, got {max_observation_delay!r}")
        self.dataset, self.chunk_size, self.cameras = dataset, chunk_size, list(cameras)
        self.max_observation_delay, self.seed, self.epoch = max_observation_delay, seed, 0
        self.states = dataset.column(state_key).astype(np.float32)
        self.actions = dataset.column(action_key).astype(np.float32)
        self.starts, self.ends = episode_bounds(dataset)
        self.cumulative = cumulative_actions(self.actions, self.starts).astype(np.float32)
        selected = range(len(dataset.episodes)) if episodes is None else episodes
        self.rows = np.concatenate([np.arange(dataset.episodes[e].start,
                                              dataset.episodes[e].start + dataset.episodes[e].length)
                                    for e in selected]) if len(selected) else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose observation delays the next iterator draws."""
        self.epoch = epoch

    def observation_delay(self, t: int) -> int:
        """d for frame t in this epoch: uniform in {0..D}, never before the episode's first frame."""
        highest = min(self.max_observation_delay, t - int(self.starts[t]))
        if highest == 0:
            return 0
        return int(np.random.default_rng([self.seed, self.epoch, t]).integers(0, highest + 1))

    def __getitem__(self, i: int) -> dict:
        t = int(self.rows[i])
        end = int(self.ends[t])
        observed = t - self.observation_delay(t)
        action_rows = t + np.arange(self.chunk_size)  # a_t .. a_{t+H-1}
        state_rows = action_rows + 1  # s_{t+1} .. s_{t+H}
        return {
            "images": [self.dataset.image(camera, observed) for camera in self.cameras],
            "task": self.dataset.task(t),
            "state": self.states[observed],
            "trajectory_state": self.states[t],
            "actions": self.actions[np.minimum(action_rows, end - 1)],
            "action_is_pad": action_rows >= end,
            "future_states": self.states[np.minimum(state_rows, end - 1)],
            "future_state_is_pad": state_rows >= end,
            "cumulative_action": self.cumulative[t],
            "previous_action": self.actions[t - 1] if t > self.starts[t] else np.zeros_like(self.actions[t]),
        }


class TrainingCollator:
    """Batches samples through the model's processor (images, task, state) and stacks the targets."""

    TARGETS = ("actions", "action_is_pad", "future_states", "future_state_is_pad", "cumulative_action",
               "previous_action", "trajectory_state")

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        cameras = len(samples[0]["images"])
        batch = self.processor(images=[np.stack([s["images"][c] for s in samples]) for c in range(cameras)],
                               text=[s["task"] for s in samples], state=np.stack([s["state"] for s in samples]))
        batch = dict(batch)
        for key in self.TARGETS:
            batch[key] = torch.from_numpy(np.stack([s[key] for s in samples]))
        return batch


def split_episodes(num_episodes: int, validation_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Held-out validation episodes (at least one when the fraction is > 0 and there are two or more episodes)."""
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    order = np.random.default_rng(seed).permutation(num_episodes)
    count = 0 if validation_fraction == 0 or num_episodes < 2 else max(1, round(validation_fraction * num_episodes))
    return sorted(order[count:].tolist()), sorted(order[:count].tolist())


def held_out_episodes(num_episodes: int, validation_fraction: float, seed: int, unseen: bool = False) -> list[int]:
    """The episodes a model trained with this split never saw: its validation episodes, or every episode of a
    dataset it was not trained on (`unseen`)."""
    if unseen:
        return list(range(num_episodes))
    episodes = split_episodes(num_episodes, validation_fraction, seed)[1]
    if not episodes:
        raise ValueError(f"validation_fraction {validation_fraction} leaves no held-out episode of {num_episodes}")
    return episodes

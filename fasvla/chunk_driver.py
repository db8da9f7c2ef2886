"""When each chunk is observed and started, on action indices, for every caller: lockstep evaluation
(fasvla/libero/policy.py, also the app's live run) and the real-time runner (fasvla/realtime.py).

Frame t is what the robot measured before its action t ran. With R actions per chunk and an inference delay D
(0 <= D <= R), a chunk starting at frame s runs actions s .. s+R-1; the next chunk's observation is the one that
preceded action s + R - D, and its first action is action s + R: its D-step-old prefix is computed while the
current chunk executes its last D actions. The first chunk starts from the first observation (nothing executes
before it). D = 0 is the chunk-after-chunk schedule without delay.

A streaming chunk starts from a consistent pair (A_0, S_in_0) of its first action's frame (`EpisodeStreamer`
in streaming_fasvla.py); a chunk of the chunk objective executes from index D, as LeRobot's asynchronous inference
does without real-time chunking: its first D actions belong to times already past (unless the model was trained
under observation delay, see `ChunkPlanDriver`).
"""

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ChunkStart:
    """How a chunk started: its observation preceded action `observed_frame` (t_o), its first action is action
    `frame` (t_b), a stream's S_in_0 was anchored at the state measured before action `measured_frame`, and
    `cumulative_action` (robot units, (B, d_a); streams only) is the sum of the actions executed before t_b."""

    observed_frame: int
    frame: int
    measured_frame: int
    cumulative_action: np.ndarray | None = None

    @property
    def delay(self) -> int:
        return self.frame - self.observed_frame


class ChunkSchedule:
    """The frames of the next observation and of the next chunk start."""

    def __init__(self, n_action_steps: int, inference_delay: int = 0):
        if isinstance(inference_delay, bool) or not isinstance(inference_delay, int) or \
                not 0 <= inference_delay <= n_action_steps:
            raise ValueError(f"inference_delay must be an integer in [0, n_action_steps={n_action_steps}], got "
                             f"{inference_delay!r}.")
        self.steps, self.delay = n_action_steps, inference_delay
        self.reset()

    def reset(self) -> None:
        self.next_observation = self.next_start = 0

    def started(self, frame: int) -> None:
        """A chunk started at `frame`."""
        self.next_start = frame + self.steps
        self.next_observation = self.next_start - self.delay

    def observes(self, frame: int) -> bool:
        """Whether the observation before action `frame` is one a chunk starts from: the next observation, or the
        one after the chunk starting at `frame` (D = R: each chunk is observed at its predecessor's start)."""
        return frame == self.next_observation or (frame == self.next_start and self.delay == self.steps)


class StreamDriver:
    """A streaming model's chunks over an episode on `ChunkSchedule`; `starts` logs every chunk start."""

    def __init__(self, model, feedback_mode: str | None = None, n_action_steps: int | None = None,
                 inference_delay: int = 0):
        self.streamer = model.episode_streamer(feedback_mode, n_action_steps=n_action_steps)
        self.schedule = ChunkSchedule(n_action_steps or model.config.n_action_steps, inference_delay)
        self.starts: list[ChunkStart] = []

    def reset(self) -> None:
        self.streamer.reset()
        self.schedule.reset()
        self.starts = []

    @property
    def frame(self) -> int:
        """The index of the next action."""
        return self.streamer.frame

    @property
    def at_boundary(self) -> bool:
        """Whether the next action starts a chunk."""
        return self.frame == self.schedule.next_start

    def prepare(self, inputs: dict, frame: int):
        """The prefix of the observation that preceded action `frame` (`PreparedChunk`)."""
        return self.streamer.prepare(frame=frame, **inputs)

    def measurement_frame(self, prepared) -> int | None:
        """Which frame's measured state the chunk of `prepared` starts from (None: the observation's own)."""
        return self.streamer.measurement_frame(prepared)

    def start(self, prepared, measured_state: torch.Tensor | None = None):
        """The `ActionStream` of the chunk whose first action is the next one."""
        if not self.at_boundary:
            raise RuntimeError(f"a chunk starts at frame {self.schedule.next_start}, not at frame {self.frame}")
        frame, measured_frame = self.frame, self.measurement_frame(prepared)
        stream = self.streamer.start_prepared(prepared, measured_state)
        self.starts.append(ChunkStart(prepared.frame, frame, prepared.frame if measured_frame is None
                                      else measured_frame, stream.cumulative_action.cpu().numpy()))
        self.schedule.started(frame)
        return stream


class ChunkPlanDriver:
    """A chunk model's chunks over an episode on `ChunkSchedule`: each planned from its observation and executed
    from index `delay`, or from index 0 for a model trained under observation delay (`max_observation_delay` > 0),
    which learnt to plan the chunk that starts at the boundary from an older observation."""

    def __init__(self, model, n_action_steps: int | None = None, inference_delay: int = 0):
        self.model = model
        steps = n_action_steps or model.config.n_action_steps
        self.plans_for_the_boundary = model.config.max_observation_delay > 0
        if not self.plans_for_the_boundary and inference_delay + steps > model.config.chunk_size:
            raise ValueError(f"inference_delay + n_action_steps must be at most chunk_size="
                             f"{model.config.chunk_size}, got {inference_delay} + {steps}.")
        self.schedule = ChunkSchedule(steps, inference_delay)
        self.reset()

    def reset(self) -> None:
        self.schedule.reset()
        self.frame, self.queue, self.starts = 0, [], []

    @property
    def at_boundary(self) -> bool:
        return self.frame == self.schedule.next_start

    def prepare(self, inputs: dict, frame: int) -> tuple[torch.Tensor, int]:
        """(the chunk planned from the observation before action `frame`, (B, H, d_a) robot units, `frame`)."""
        return self.model.predict_action_chunk(**inputs), frame

    def start(self, prepared: tuple[torch.Tensor, int]) -> None:
        if not self.at_boundary:
            raise RuntimeError(f"a chunk starts at frame {self.schedule.next_start}, not at frame {self.frame}")
        chunk, observed = prepared
        first = 0 if self.plans_for_the_boundary else self.frame - observed
        self.queue = list(chunk[:, first : first + self.schedule.steps].unbind(dim=1))
        self.starts.append(ChunkStart(observed, self.frame, observed))
        self.schedule.started(self.frame)

    def next_action(self) -> torch.Tensor:
        """(B, d_a) robot units."""
        self.frame += 1
        return self.queue.pop(0)

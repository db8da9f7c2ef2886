"""A FAS-VLA driving an environment one action at a time: streaming with state feedback, or SmolVLA-style chunks.

Both controllers take an observation after every executed action and return the next action with what the model
predicted and conditioned on, and the time the policy took for it. They read the observation's images only when a
chunk is observed, and say beforehand whether the next action will (`needs_images`), so that the caller renders the
cameras then and only then (fasvla/libero/frames.py), outside the policy's time.

With `inference_delay` D, a chunk's observation is the one D actions before its first action, while the previous
chunk keeps executing (fasvla/chunk_driver.py, the same schedule as the real-time runner's).
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

from fasvla.chunk_driver import ChunkPlanDriver, StreamDriver


@dataclass
class PolicyOutput:
    action: np.ndarray  # (7,) robot units, model convention
    predicted_state: np.ndarray  # (8,) the model's prediction of the next state (NaN where it predicts none)
    state_input: np.ndarray  # (8,) the state the model conditioned on (the observed state for a chunk)
    latency_s: float  # policy time for this action: a prefix pass at chunk starts, one expert step otherwise


class _ScheduledController:
    """What both controllers share: the observation a chunk starts from is encoded when the schedule reaches its
    frame, and a chunk starts at its boundary (fasvla/chunk_driver.py); `act` gets the observation that precedes
    the next action."""

    def reset(self) -> None:
        self.driver.reset()
        self.pending = None  # the next chunk's encoded observation

    @property
    def needs_images(self) -> bool:
        """Whether the next `act` encodes an observation (and reads its images)."""
        return self.driver.schedule.observes(self.driver.frame)

    def act(self, observation) -> PolicyOutput:
        start = time.perf_counter()
        frame = self.driver.frame
        self._remember(observation, frame)
        self._observe_if_due(observation, frame)
        if self.driver.at_boundary:
            self._start(self.pending)
            self.pending = None
            self._observe_if_due(observation, frame)  # inference delay R: the next chunk is observed here
        return self._action(observation, start)

    def _observe_if_due(self, observation, frame: int) -> None:
        if self.pending is None and frame == self.driver.schedule.next_observation:
            self.pending = self.driver.prepare(_model_inputs(self.model, self.processor, observation, self.task),
                                               frame)

    def _remember(self, observation, frame: int) -> None:
        pass


class StreamingController(_ScheduledController):
    """`stream_actions` chunk after chunk: the observation after each action is sent into the stream as the
    measured state; each chunk starts from the state and cumulative action of its first action's frame, carrying
    the cumulative action over."""

    def __init__(self, model, processor, task: str, feedback_mode: str | None = None,
                 n_action_steps: int | None = None, inference_delay: int = 0):
        self.model, self.processor, self.task = model, processor, task
        self.driver = StreamDriver(model, feedback_mode, n_action_steps, inference_delay)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.stream, self.measured = None, {}  # measured: frame -> the state measured before that action

    def _remember(self, observation, frame: int) -> None:
        self.measured = {frame - 1: self.measured.get(frame - 1), frame: observation.state}

    def _start(self, prepared) -> None:
        measured_frame = self.driver.measurement_frame(prepared)
        measured = None if measured_frame is None else self.measured[measured_frame]
        self.stream = self.driver.start(prepared, measured)

    def _action(self, observation, start: float) -> PolicyOutput:
        if self.stream.steps_streamed == 0:
            step = next(self.stream)
            if self.driver.streamer.feedback_mode == "anticipatory" and self.model.config.uses_state_trajectory:
                # r_0 for step 1: S_in_0 is an estimate after an inference delay (and the measurement itself without)
                self.stream.observe(observation.state)
        else:
            step = self.stream.send(torch.as_tensor(observation.state)[None])
        return policy_output(step, time.perf_counter() - start)


class ChunkController(_ScheduledController):
    """SmolVLA's execution: plan H actions from an observation, execute `n_action_steps` of them open loop (from
    index `inference_delay`, the actions that were still to come when the chunk was ready)."""

    def __init__(self, model, processor, task: str, n_action_steps: int | None = None, inference_delay: int = 0):
        self.model, self.processor, self.task = model, processor, task
        self.driver = ChunkPlanDriver(model, n_action_steps, inference_delay)
        self.reset()

    def _start(self, prepared) -> None:
        self.driver.start(prepared)

    def _action(self, observation, start: float) -> PolicyOutput:
        action = self.driver.next_action()[0].cpu().numpy()
        latency = time.perf_counter() - start
        return PolicyOutput(action, np.full(8, np.nan, np.float32), observation.state.astype(np.float32), latency)


def policy_output(step, latency_s: float) -> PolicyOutput:
    """The `PolicyOutput` of a streamed step (batch of one)."""
    return PolicyOutput(step.action[0].cpu().numpy(), _vector(step.predicted_state), _vector(step.state_input),
                        latency_s)


def make_controller(model, processor, task: str, feedback_mode: str | None = None, n_action_steps: int | None = None,
                    inference_delay: int = 0):
    if model.config.objective == "chunk":
        return ChunkController(model, processor, task, n_action_steps, inference_delay)
    return StreamingController(model, processor, task, feedback_mode, n_action_steps, inference_delay)


def _model_inputs(model, processor, observation, task: str) -> dict:
    inputs = processor(images=observation.images, text=task, state=observation.state)
    return {key: value.to(model.device) for key, value in inputs.items()}


def _vector(value) -> np.ndarray:
    return np.full(8, np.nan, np.float32) if value is None else value[0].cpu().numpy().astype(np.float32)

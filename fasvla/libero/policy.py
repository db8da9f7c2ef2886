"""A FAS-VLA driving an environment one action at a time: streaming with state feedback, or SmolVLA-style chunks.

Both controllers take an observation after every executed action and return the next action with what the model
predicted and conditioned on, and the time the policy took for it. They read the observation's images only when a
chunk starts, and say beforehand whether the next action will (`needs_images`), so that the caller renders the
cameras then and only then (fasvla/libero/frames.py), outside the policy's time.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

from streaming_fasvla import ChunkQueue


@dataclass
class PolicyOutput:
    action: np.ndarray  # (7,) robot units, model convention
    predicted_state: np.ndarray  # (8,) the model's prediction of the next state (NaN where it predicts none)
    state_input: np.ndarray  # (8,) the state the model conditioned on (the observed state for a chunk)
    latency_s: float  # policy time for this action: a prefix pass at chunk starts, one expert step otherwise


class StreamingController:
    """`stream_actions` chunk after chunk: the observation after each action is sent into the stream as the
    measured state; after `n_action_steps` actions a new chunk starts from the current images and state, carrying
    the cumulative action over."""

    def __init__(self, model, processor, task: str, feedback_mode: str | None = None,
                 n_action_steps: int | None = None):
        self.model, self.processor, self.task = model, processor, task
        self.streamer = model.episode_streamer(feedback_mode=feedback_mode, n_action_steps=n_action_steps)
        self.stream = None

    def reset(self) -> None:
        self.streamer.reset()
        self.stream = None

    @property
    def needs_images(self) -> bool:
        """Whether the next `act` starts a chunk (and reads the observation's images)."""
        return self.stream is None or self.stream.done

    def act(self, observation) -> PolicyOutput:
        start = time.perf_counter()
        if self.needs_images:
            inputs = _model_inputs(self.model, self.processor, observation, self.task)
            self.stream = self.streamer.start_chunk(**inputs)
            step = next(self.stream)
        else:
            step = self.stream.send(torch.as_tensor(observation.state)[None])
        return policy_output(step, time.perf_counter() - start)


class ChunkController:
    """SmolVLA's execution: plan H actions from an observation, execute `n_action_steps` of them open loop."""

    def __init__(self, model, processor, task: str, n_action_steps: int | None = None):
        self.model, self.processor, self.task = model, processor, task
        self.queue = ChunkQueue(model, n_action_steps)

    def reset(self) -> None:
        self.queue.reset()

    @property
    def needs_images(self) -> bool:
        """Whether the next `act` plans a chunk (and reads the observation's images)."""
        return self.queue.is_empty

    def act(self, observation) -> PolicyOutput:
        start = time.perf_counter()
        inputs = _model_inputs(self.model, self.processor, observation, self.task) if self.needs_images else {}
        action = self.queue.select_action(**inputs)[0].cpu().numpy()
        latency = time.perf_counter() - start
        return PolicyOutput(action, np.full(8, np.nan, np.float32), observation.state.astype(np.float32), latency)


def policy_output(step, latency_s: float) -> PolicyOutput:
    """The `PolicyOutput` of a streamed step (batch of one)."""
    return PolicyOutput(step.action[0].cpu().numpy(), _vector(step.predicted_state), _vector(step.state_input),
                        latency_s)


def make_controller(model, processor, task: str, feedback_mode: str | None = None, n_action_steps: int | None = None):
    if model.config.objective == "chunk":
        return ChunkController(model, processor, task, n_action_steps)
    return StreamingController(model, processor, task, feedback_mode, n_action_steps)


def _model_inputs(model, processor, observation, task: str) -> dict:
    inputs = processor(images=observation.images, text=task, state=observation.state)
    return {key: value.to(model.device) for key, value in inputs.items()}


def _vector(value) -> np.ndarray:
    return np.full(8, np.nan, np.float32) if value is None else value[0].cpu().numpy().astype(np.float32)

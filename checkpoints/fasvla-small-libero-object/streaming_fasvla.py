"""Streaming actions with state feedback (DESIGN.md section 5), and the chunk-queue baseline.

At a chunk start (frame t) the prefix is cached and, in normalised units, `A = A_0` (`C_t`, the sum of the actions
executed so far, or 0 with `trajectory_origin="chunk"`; the last command for `absolute_action_dims`), `S_in = s_t`,
`s_hat_0 = s_t`. Step k runs the expert once at `tau = k / H` on `x = [A ; S_in]` and takes one Euler step,
`delta = v / H`:

    a_{t+k} = delta_A  (A_k + delta_A for absolute dims)      s_hat_{k+1} = S_in + delta_S      A += delta_A

`send(s_obs, executed_action=a)` says what the robot really executed (after clipping, holds, safety limits); the
trajectory then continues from it rather than from the streamed action.

The state input of step k + 1 depends on the feedback mode:

    open_loop      S_in_{k+1} = s_hat_{k+1}                             no feedback: what a plain chunk does
    synchronous    S_in_{k+1} = s_obs_{k+1}                             waits for the state measured after a_{t+k}
    anticipatory   S_in_{k+1} = s_hat_{k+1} + beta (s_obs_k - S_in_k)   needs only the state measured before
                                                                        a_{t+k} ran, so step k + 1 can be computed
                                                                        while a_{t+k} executes

The anticipatory residual is observed minus what the stream assumed at step k (the reference release has the sign
reversed). DESIGN.md writes it against s_hat_k, the prediction made one step earlier; with the state fed back that
counts each correction twice: the estimation error then follows e_{k+1} = e_k - beta e_{k-1} + ..., which for
beta = 1 oscillates forever (period 6) after a single push. Measured against S_in_k, the estimation error follows
e_{k+1} = (1 - beta) e_k + w_k (w: what the model could not predict); beta = 1 is then "the latest measurement plus
the predicted increment", `s_obs_k + delta_S_k`. The two agree in open loop, where S_in_k = s_hat_k.
Sending None means "no new measurement": anticipatory adds no residual (each one corrects a single step: re-adding
it would turn one push into a drift), synchronous falls back to the prediction.

Tracking (`config.tracking_kappa` = kappa_t > 0) adds the correction of feedback-consistent stabilisation at
inference instead of relying on the network to have learnt it: with `s_plan_k = S_in_0 + delta_S_0 + ... +
delta_S_{k-1}` (the state the stream predicted, whatever it was fed),

    a_{t+k} = delta_A + (kappa_t / H) G (s_plan_k - S_in_k)

In open loop `S_in_k = s_plan_k` bit for bit, so nothing changes; fed a measured state, a displacement from the plan
decays at rate kappa_t, as the stabilising flow asks (`u_S = dxi_S - kappa n_S`), through the actions that remove it.

In real time the anticipatory step k + 1 is computed before s_obs_{k+1} exists, so a real-time runner splits `send`:
`observe(s_obs_k)` as soon as the state measured before a_{t+k} ran arrives (it sets r_k against S_in_k), then
`send(None)` computes step k + 1 (fasvla/realtime.py).
"""

import math
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

try:
    from .configuration_fasvla import FEEDBACK_MODES
    from .flow_fasvla import trajectory_start
except ImportError:
    from configuration_fasvla import FEEDBACK_MODES
    from flow_fasvla import trajectory_start


@dataclass
class StreamStep:
    """One streamed action, batched, in robot units. `predicted_state` (s_hat_{k+1}) and `state_input` (the S_in
    this step conditioned on) are None for the action-only `stream` objective."""

    action: torch.Tensor  # (B, d_a)
    predicted_state: torch.Tensor | None  # (B, d_s)
    state_input: torch.Tensor | None  # (B, d_s)
    index: int  # k, the step within the chunk


class OpenLoopFeedback:
    """S_in = s_hat_{k+1}: the stream follows its own prediction."""

    def state_input(self, predicted: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        return predicted


class SynchronousFeedback:
    """S_in = s_obs_{k+1}, the state measured after the previous action (the prediction if none was sent)."""

    def state_input(self, predicted: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        return predicted if observed is None else observed


class AnticipatoryFeedback:
    """S_in_{k+1} = s_hat_{k+1} + beta r_k with the residual `r_k = s_obs_k - S_in_k` of the measurement one step
    older (see the module docstring for why S_in_k and not s_hat_k).

    `state_input` is called for step k + 1 with s_hat_{k+1} and s_obs_{k+1}; it uses r_k and stores r_{k+1} for
    step k + 2. r_0 = 0 because S_in_0 = s_obs_0 = s_t.
    """

    def __init__(self, gain: float, like: torch.Tensor):
        self.gain = gain
        self.none = torch.zeros_like(like)
        self.residual = self.none

    def state_input(self, predicted: torch.Tensor, observed: torch.Tensor | None) -> torch.Tensor:
        state_input = predicted + self.gain * self.residual
        self.residual = self.none  # used once: without a new measurement the next step adds none
        if observed is not None:
            self.observe(observed, state_input)
        return state_input

    def observe(self, observed: torch.Tensor, state_input: torch.Tensor) -> None:
        """r = s_obs_k - S_in_k: the measurement of the state step k conditioned on, against what it assumed."""
        self.residual = observed - state_input


@dataclass(frozen=True)
class StreamOptions:
    feedback_mode: str
    feedback_gain: float
    n_action_steps: int


def stream_options(config, feedback_mode=None, feedback_gain=None, n_action_steps=None) -> StreamOptions:
    """The options of one stream, the config's where not given, validated before any compute is spent."""
    mode = config.feedback_mode if feedback_mode is None else feedback_mode
    gain = config.feedback_gain if feedback_gain is None else feedback_gain
    steps = config.n_action_steps if n_action_steps is None else n_action_steps
    if mode not in FEEDBACK_MODES:
        raise ValueError(f"feedback_mode must be one of {FEEDBACK_MODES}, got {mode!r}.")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 <= gain < math.inf:
        raise ValueError(f"feedback_gain must be a finite number >= 0, got {gain!r}.")
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= config.chunk_size:
        raise ValueError(f"n_action_steps must be an integer in [1, chunk_size={config.chunk_size}], got {steps!r}.")
    return StreamOptions(mode, float(gain), steps)


def tracking_matrix(model, device) -> torch.Tensor | None:
    """(kappa_t / H) G^T (d_s, d_a): a step's action correction per unit of `s_plan - S_in`; None without tracking."""
    G = model.tracking_matrix(device)
    return None if G is None else G.T / model.config.chunk_size


def make_feedback(options: StreamOptions, like: torch.Tensor):
    if options.feedback_mode == "anticipatory":
        return AnticipatoryFeedback(options.feedback_gain, like)
    return OpenLoopFeedback() if options.feedback_mode == "open_loop" else SynchronousFeedback()


class ActionStream(Generator):
    """The actions of one chunk as a generator (made by `FasVLAForActionPrediction.stream_actions`).

    `next(stream)` computes step 0; `stream.send(measured_state)` computes the next step from the state measured
    after executing the previous action; after `n_action_steps` steps `send` raises StopIteration. The per-step path
    is tensor operations only: no `.item()`, no host synchronisation.
    """

    def __init__(self, model, cache, state, cumulative_action, options: StreamOptions, previous_action=None,
                 state_input=None):
        """`state_input`: S_in_0 normalised, when it is not the observation's `state` (a chunk started after an
        inference delay: `EpisodeStreamer.start_prepared`)."""
        config = model.config
        self._model, self._cache = model, cache
        self._normalizer = model.normalizer
        self._batch, self._device = state.shape[0], state.device
        self._action_dim, self._state_dim = config.action_dim, config.state_dim
        self._num_steps, self._chunk_size = options.n_action_steps, config.chunk_size
        self._joint = config.uses_state_trajectory
        self._absolute = model.absolute_action_mask(self._device)  # (d_a,)

        self._executed = self._normalised_action("cumulative_action", cumulative_action)  # C: the sum executed
        self._last = self._normalised_action("previous_action", previous_action)  # the last executed command
        self._trajectory = trajectory_start(self._executed, self._last, self._absolute, config.trajectory_origin)
        self._streamed = None  # the last streamed action, normalised, until the robot says what it executed
        self._state_input = None  # S_in
        if self._joint:
            self._state_input = self._normalizer.normalize_state(state) if state_input is None else state_input
        self._predicted = self._plan = self._state_input  # s_hat, s_plan
        self._tracking = tracking_matrix(model, self._device)  # (d_s, d_a) or None
        self._state_increments = []  # delta_S of every step streamed (normalised): the motion the stream predicted
        self._feedback = make_feedback(options, state.float())
        # tau_k = k / H for every step, (n_action_steps, B, 1), so the step loop never builds tensors from Python.
        taus = torch.arange(self._num_steps, device=self._device, dtype=torch.float32) / self._chunk_size
        self._taus = taus[:, None, None].expand(-1, self._batch, 1)
        self._index = 0
        self._started = self._finished = False

    def _normalised_action(self, name: str, value) -> torch.Tensor:
        if value is None:
            return torch.zeros(self._batch, self._action_dim, device=self._device)
        return self._normalizer.normalize_action(self._as_batch(name, value, self._action_dim))

    @property
    def cumulative_action(self) -> torch.Tensor:
        """C_t plus every action executed so far, (B, d_a) robot units: the next chunk's cumulative action."""
        return self._normalizer.unnormalize_action(self._executed)

    @property
    def last_action(self) -> torch.Tensor:
        """The last action executed (streamed, unless `send` said otherwise), (B, d_a) robot units."""
        return self._normalizer.unnormalize_action(self._last)

    @property
    def steps_streamed(self) -> int:
        return self._index

    def state_estimate(self, measured: torch.Tensor, since_step: int) -> torch.Tensor:
        """The state after this stream's last step, normalised: `measured` (normalised), the state measured before
        step `since_step` ran, plus the increments the stream predicted from that step on."""
        if not 0 <= since_step <= self._index:
            raise ValueError(f"since_step must be in [0, {self._index}] (the steps streamed), got {since_step}.")
        return measured + sum(self._state_increments[since_step:], torch.zeros_like(measured))

    @property
    def done(self) -> bool:
        """Every one of the `n_action_steps` steps has been streamed: the next action needs a new chunk."""
        return self._index >= self._num_steps

    def send(self, measured_state, executed_action=None):
        """The next step, from the state measured after the last action (None: no measurement) and, if it differs
        from the streamed one, the action the robot executed (robot units, (B, d_a))."""
        if not self._started:
            if measured_state is not None or executed_action is not None:
                raise ValueError("send() before next(): call next(stream) first to get step 0, then send the state "
                                 "measured after executing its action.")
            self._started = True
            return self._step()
        if self._finished:
            raise StopIteration
        observed = None
        if measured_state is not None:
            observed = self._normalizer.normalize_state(self._as_batch("measured state", measured_state,
                                                                       self._state_dim))
        if executed_action is not None:
            self._executed_instead(self._normalised_action("executed_action", executed_action))
        if self._index >= self._num_steps:
            self._finished = True
            raise StopIteration
        if self._joint:
            self._state_input = self._feedback.state_input(self._predicted, observed)
        return self._step()

    def observe(self, measured_state) -> None:
        """Anticipatory feedback in real time: `measured_state` (robot units, (B, d_s)) is the state measured before
        the last streamed action ran (the state that step conditioned on, as the robot saw it). It sets the residual
        that the next step, computed with `send(None)`, corrects its prediction by."""
        if not isinstance(self._feedback, AnticipatoryFeedback):
            raise ValueError("observe() is for anticipatory feedback; this stream's feedback mode is "
                             f"{type(self._feedback).__name__}: send the measured state with send().")
        if not self._started:
            raise ValueError("observe() before next(): there is no streamed step whose state was measured yet.")
        observed = self._normalizer.normalize_state(self._as_batch("measured state", measured_state, self._state_dim))
        self._feedback.observe(observed, self._state_input)

    def throw(self, typ=None, value=None, traceback=None):
        self._finished = True
        raise typ if value is None else value

    def _executed_instead(self, executed: torch.Tensor) -> None:
        """The robot executed `executed` (normalised) instead of the streamed action: count it, and continue the
        trajectory from it (integrated dims: A_k + executed; absolute dims: the executed command)."""
        self._executed = self._executed - self._streamed + executed
        self._trajectory = torch.where(self._absolute, executed, self._trajectory - self._streamed + executed)
        self._last = self._streamed = executed

    @torch.no_grad()
    def _step(self) -> StreamStep:
        k = self._index
        parts = [self._trajectory] + ([self._state_input] if self._joint else [])
        x = torch.cat(parts, dim=-1)
        x = F.pad(x, (0, self._model.config.max_action_dim - x.shape[-1]))[:, None]  # (B, 1, D)
        delta = self._model.stream_velocity(self._cache, x, self._taus[k])[:, 0] / self._chunk_size  # (B, D)
        delta_action = delta[:, : self._action_dim]
        if self._tracking is not None:
            delta_action = delta_action + (self._plan - self._state_input) @ self._tracking
        self._trajectory = self._trajectory + delta_action
        streamed = torch.where(self._absolute, self._trajectory, delta_action)  # assumed executed until told
        self._executed = self._executed + streamed
        self._last = self._streamed = streamed
        self._index += 1
        action = self._normalizer.unnormalize_action(streamed)
        if not self._joint:
            return StreamStep(action, None, None, k)
        increment = delta[:, self._action_dim : self._action_dim + self._state_dim]
        self._state_increments.append(increment)
        self._predicted = self._state_input + increment
        if self._tracking is not None:  # the plan is needed only to correct toward it
            self._plan = self._plan + increment
        return StreamStep(action, self._normalizer.unnormalize_state(self._predicted),
                          self._normalizer.unnormalize_state(self._state_input), k)

    def _as_batch(self, name: str, value, dim: int) -> torch.Tensor:
        return as_batch(name, value, self._batch, dim, self._device)


def as_batch(name: str, value, batch: int, dim: int, device) -> torch.Tensor:
    """A (batch, dim) float32 tensor on `device` from a float tensor or array; (dim,) is accepted when batch = 1."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not torch.is_tensor(value) or not value.is_floating_point():
        raise ValueError(f"{name} must be a float tensor or array of shape ({batch}, {dim}), got "
                         f"{type(value).__name__}{'' if not torch.is_tensor(value) else ' of ' + str(value.dtype)}.")
    if value.ndim == 1 and batch == 1:
        value = value[None]
    if tuple(value.shape) != (batch, dim):
        raise ValueError(f"{name} must have shape ({batch}, {dim}), got {tuple(value.shape)}.")
    if value.device.type == "cpu" and not torch.isfinite(value).all():  # host data: checking costs no sync
        raise ValueError(f"{name} contains NaN or infinite values: {value}")
    return value.to(device, torch.float32, non_blocking=True)


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk's observation, encoded: the prefix cache, the observed state (robot units, (B, d_s)) and `frame`,
    the index of the episode's action that the observation precedes (t_o)."""

    cache: object
    state: torch.Tensor
    frame: int


class EpisodeStreamer:
    """Chunk after chunk over one episode, carrying the cumulative action across chunks (no jump at boundaries).

    Frames are action indices: frame t is what the robot measured before its action t ran, and `frame` is the
    index of the next action to stream. `start_chunk(**inputs)` starts the stream of an observation of the current
    frame; the actions already streamed by the previous chunk (even if it was cut short) count as executed.
    `reset()` starts a new episode.

    Under inference delay (DESIGN.md section 5, revision 2) a chunk's observation is older than its first action:
    `prepare(frame=t_o, **inputs)` encodes the observation that preceded action t_o, while the previous chunk keeps
    streaming; `start_prepared(prepared, measured_state)` starts the new stream at the boundary t_b = `frame`, from a
    consistent pair: `A_0` = what was executed before t_b and `S_in_0` = the state at t_b, estimated as the state
    measured at `measurement_frame(prepared)` plus the increments the previous stream predicted since. Which
    measurement is the freshest a mode has at the boundary:

        open_loop      t_o (the observation itself: it never uses another)
        anticipatory   max(t_o, t_b - 1) (the state measured before the previous action ran)
        synchronous    t_b (it waits for the state measured after the previous action)

    The prefix keeps the observed state s_{t_o}, the state its images show. With no delay (t_o = t_b) every mode
    starts from the observed state, as without this mechanism.
    """

    def __init__(self, model, feedback_mode=None, feedback_gain=None, n_action_steps=None):
        self._model = model
        self._options = stream_options(model.config, feedback_mode, feedback_gain, n_action_steps)
        self._stream, self._stream_start = None, 0

    def reset(self):
        self._stream, self._stream_start = None, 0

    @property
    def feedback_mode(self) -> str:
        return self._options.feedback_mode

    @property
    def frame(self) -> int:
        """The index of the next action to stream in the episode (the number streamed so far)."""
        return 0 if self._stream is None else self._stream_start + self._stream.steps_streamed

    @property
    def cumulative_action(self) -> torch.Tensor | None:
        return None if self._stream is None else self._stream.cumulative_action

    @property
    def last_action(self) -> torch.Tensor | None:
        return None if self._stream is None else self._stream.last_action

    def start_chunk(self, **inputs) -> ActionStream:
        return self.start_prepared(self.prepare(**inputs))

    def prepare(self, *, frame: int | None = None, **inputs) -> PreparedChunk:
        """The expensive part of starting a chunk: the prefix of an observation that preceded action `frame`
        (default: the next action to stream)."""
        frame = self.frame if frame is None else frame
        if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame <= self.frame:
            raise ValueError(f"frame must be an action index in [0, {self.frame}] (an observation already made), "
                             f"got {frame!r}.")
        return PreparedChunk(self._model.encode_observation(**inputs), inputs["state"], frame)

    def measurement_frame(self, prepared: PreparedChunk) -> int | None:
        """The frame whose measured state the next stream starts from, or None when it is the observation's own
        (no delay, open loop, or no state trajectory)."""
        boundary, mode = self.frame, self._options.feedback_mode
        frame = {"open_loop": prepared.frame, "anticipatory": max(prepared.frame, boundary - 1),
                 "synchronous": boundary}[mode]
        return None if frame == prepared.frame or not self._model.config.uses_state_trajectory else frame

    def start_prepared(self, prepared: PreparedChunk, measured_state=None) -> ActionStream:
        """The stream of the chunk whose first action is action `frame`; `measured_state` (robot units, (B, d_s)):
        the state measured at `measurement_frame(prepared)`, required exactly when that is not None."""
        boundary, state_input = self.frame, self._boundary_state(prepared, measured_state)
        self._stream = ActionStream(self._model, prepared.cache, prepared.state, self.cumulative_action,
                                    self._options, self.last_action, state_input)
        self._stream_start = boundary
        return self._stream

    def _boundary_state(self, prepared: PreparedChunk, measured_state) -> torch.Tensor | None:
        """S_in_0 normalised, or None when it is the observed state (no delay)."""
        delay, measured_frame = self.frame - prepared.frame, self.measurement_frame(prepared)
        if delay > 0 and (self._stream is None or delay > self._stream.steps_streamed):
            raise ValueError(f"the observation of frame {prepared.frame} precedes the current stream, which "
                             f"started at frame {self._stream_start}: an inference delay covers at most the "
                             "previous chunk.")
        if (measured_frame is None) != (measured_state is None):
            needed = "no measured_state" if measured_frame is None else \
                f"measured_state, the state measured before action {measured_frame}"
            raise ValueError(f"this {self._options.feedback_mode} chunk starts at frame {self.frame} from an "
                             f"observation of frame {prepared.frame}: pass {needed}.")
        if delay == 0 or not self._model.config.uses_state_trajectory:
            return None
        normalizer, batch = self._model.normalizer, prepared.state.shape[0]
        anchor = prepared.state if measured_state is None else \
            as_batch("measured_state", measured_state, batch, self._model.config.state_dim, prepared.state.device)
        since = (prepared.frame if measured_frame is None else measured_frame) - self._stream_start
        return self._stream.state_estimate(normalizer.normalize_state(anchor), since)


class ChunkQueue:
    """SmolVLA's `select_action`: plan a chunk, hand out its first `n_action_steps` actions one per call, re-plan
    when the queue is empty. `reset()` empties the queue (new episode)."""

    def __init__(self, model, n_action_steps=None):
        self._model = model
        self._n_action_steps = n_action_steps or model.config.n_action_steps
        self._queue = []

    def reset(self):
        self._queue = []

    @property
    def is_empty(self) -> bool:
        """True when the next `select_action` plans a new chunk (and so needs an observation)."""
        return not self._queue

    def select_action(self, **inputs) -> torch.Tensor:
        """(B, d_a) robot units; `inputs` are those of `predict_action_chunk` (including an optional `noise`)."""
        if not self._queue:
            chunk = self._model.predict_action_chunk(**inputs)  # (B, H, d_a)
            self._queue = list(chunk[:, : self._n_action_steps].unbind(dim=1))
        return self._queue.pop(0)


__all__ = ["ActionStream", "ChunkQueue", "EpisodeStreamer", "PreparedChunk", "StreamOptions", "StreamStep", "as_batch",
           "stream_options"]

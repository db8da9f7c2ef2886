"""Real-time streaming: a worker thread computes the streamed steps while the control loop acts on a fixed period.

With control period P, step time c and state latency L (a state measured on the robot reaches the policy L later),
the next step is queued on the worker when what it conditions on is known:

    open_loop     as soon as the previous step is done: an action every P while c <= P
    anticipatory  when the state measured before the previous action ran arrives, L after that action was sent
                  (`observe` then `send(None)`): on time while L + c <= P
    synchronous   when the state measured after the previous action arrives, P + L after it was sent: every
                  action is L + c late

Prefix pipelining: the next chunk's observation is the one that preceded the chunk's action R - `prefix_lead` (taken
when that action is sent) and its prefix is queued right behind the step in flight, so that the next chunk's first
action is ready at the boundary when the prefix fits in the slack of the `prefix_lead` actions still to run. The
chunk driver (fasvla/chunk_driver.py, the lockstep evaluation's schedule with inference delay D = `prefix_lead`)
starts the new stream from the state and cumulative action of its first action's frame, not of the observation's.
With `prefix_lead` 0 the observation follows the chunk and the robot halts at every boundary for a prefix and a step.

Every action records when it was due (the previous one's send time + P), when the worker had it ready and when it
was sent; an action ready after it was due is a deadline miss, counted, never hidden. Time comes from a clock
object, so tests run the same loop on a simulated clock with modelled compute (`SimulatedWorker`).
"""

import itertools
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from fasvla.chunk_driver import StreamDriver


class SystemClock:
    def now(self) -> float:
        return time.perf_counter()

    def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


class SimulatedClock:
    """Time that passes only when someone waits: tests and simulated control loops."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def sleep_until(self, t: float) -> None:
        self.t = max(self.t, t)


class Done(NamedTuple):
    """A finished job: its value and the clock times its compute started and ended."""

    value: object
    started: float
    ready: float


class ThreadWorker:
    """Jobs run one after another on one background thread (one accelerator: steps and prefixes never overlap).
    `submit` returns a future of `Done`."""

    def __init__(self, clock):
        self.clock = clock
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fasvla-stream")
        # ready means computed, not merely queued on the accelerator
        self._synchronize = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None

    def submit(self, kind: str, fn, *args) -> Future:
        return self._thread.submit(self._timed, fn, args)

    def _timed(self, fn, args) -> Done:
        started = self.clock.now()
        value = fn(*args)  # steps and prefixes run without autograd already
        self._synchronize()
        return Done(value, started, self.clock.now())

    def close(self) -> None:
        self._thread.shutdown()


class SimulatedWorker:
    """A worker on a simulated clock: a job runs at once, but is ready `costs[kind]` seconds after the worker is
    free, as one accelerator would have it. Costs are measured elsewhere (one figure, or samples charged in turn) or
    made up by a test; `costs=None` charges each job the wall time it took here (a simulator that is slower than
    real time then still sees this machine's compute)."""

    def __init__(self, clock: SimulatedClock, costs: dict[str, float | Sequence[float]] | None = None):
        self.clock = clock
        # a sequence of costs (measured samples) is charged in turn, cyclically
        self.costs = None if costs is None else {kind: itertools.cycle(np.atleast_1d(cost).tolist())
                                                 for kind, cost in costs.items()}
        self.free_at = clock.now()
        self.log: list[tuple[str, float, float]] = []  # (kind, start, ready)

    def submit(self, kind: str, fn, *args) -> Future:
        wall = time.perf_counter()
        value = fn(*args)
        cost = time.perf_counter() - wall if self.costs is None else next(self.costs[kind])
        start = max(self.clock.now(), self.free_at)
        self.free_at = start + cost
        self.log.append((kind, start, self.free_at))
        future = _WaitingFuture(self.clock, self.free_at)
        future.set_result(Done(value, start, self.free_at))
        return future

    def close(self) -> None:
        pass


class _WaitingFuture(Future):
    """Its result is there once the simulated clock reaches the time it was ready."""

    def __init__(self, clock, ready_at: float):
        super().__init__()
        self._clock, self._ready_at = clock, ready_at

    def result(self, timeout=None):
        self._clock.sleep_until(self._ready_at)
        return super().result(timeout)


class SimulatedRobot:
    """A robot in time: each action runs for one period; the state measured when action j starts (at the end of
    action j - 1) reaches the policy `latency_s` later. Dynamics: state[:d] += gain * action[:d], plus optional
    pushes {action index: (d_s,) offset applied when that action starts}."""

    done = False  # it runs as long as it is sent actions

    def __init__(self, clock, images: list[np.ndarray], state: np.ndarray, period_s: float, latency_s: float,
                 gain: float = 0.05, pushes: dict[int, np.ndarray] | None = None):
        if period_s <= 0 or latency_s < 0:
            raise ValueError(f"period_s must be > 0 and latency_s >= 0, got {period_s} and {latency_s}")
        self.clock, self.images, self.period_s, self.latency_s = clock, images, period_s, latency_s
        self.gain, self.pushes = gain, pushes or {}
        self.states = [np.asarray(state, np.float32).copy()]  # states[j]: before action j
        self.sent_at: list[float] = []
        self.started = clock.now()

    def observe(self) -> dict:
        """The images and the newest state measured by now (the observation a new chunk starts from), once it
        arrives, with `frame`, the index of the action it preceded."""
        j = max(j for j in range(len(self.states)) if self.measured_at(j) <= self.clock.now())
        return {"images": self.images, "state": self.state_before(j), "frame": j}

    def execute(self, action: np.ndarray) -> float:
        """Starts the action now and returns when it started."""
        j = len(self.sent_at)
        self.sent_at.append(self.clock.now())
        state = self.states[j].copy()
        width = min(len(action), len(state))
        state[:width] += self.gain * np.asarray(action[:width], np.float32)
        self.states.append(state + self.pushes.get(j + 1, 0.0))
        return self.sent_at[j]

    def measured_at(self, j: int) -> float:
        """When action j was due to start: the end of action j - 1's period."""
        return self.started if j == 0 else self.sent_at[j - 1] + self.period_s

    def state_before(self, j: int) -> np.ndarray:
        """The state measured at `measured_at(j)`; blocks until it arrives."""
        self.clock.sleep_until(self.measured_at(j) + self.latency_s)
        return self.states[j]


@dataclass
class ActionTiming:
    index: int  # action number in the run
    chunk: int
    step: int  # within the chunk
    due: float  # when the robot needed it: the previous action's send time + P
    ready: float  # when the worker had computed it
    sent: float  # when the robot started it
    compute: float  # seconds the worker spent on its step

    @property
    def missed(self) -> bool:
        return self.ready > self.due + 1e-9  # simulated times are sums of floats: a nanosecond is a rounding


class RealTimeRunner:
    """Streams chunks to a robot in real time (see the module docstring for the schedule).

    robot: `observe()` -> {"images", "state", "frame"} (the newest, once arrived; `frame`: the index of the action
    whose start it was measured at); `execute(action)` starts an action without waiting for it and returns the clock
    time it started (a robot with a fixed control tick starts it at its next tick), or None when the episode ended
    before it could start; `state_before(j)` -> the state measured when action j was due, at the end of action
    j - 1's period (blocks until it arrives); `done`: the episode is over.
    `prefix_lead`: how many of a chunk's actions run between the next chunk's observation and its first action
    (0: no pipelining, observe once the chunk has executed).
    """

    def __init__(self, model, processor, task: str, robot, period_s: float, feedback_mode: str | None = None,
                 n_action_steps: int | None = None, prefix_lead: int = 1, clock=None, worker=None):
        self.model, self.processor, self.task, self.robot = model, processor, task, robot
        self.mode = feedback_mode or model.config.feedback_mode
        self.steps = n_action_steps or model.config.n_action_steps
        if isinstance(prefix_lead, bool) or not isinstance(prefix_lead, int) or not 0 <= prefix_lead <= self.steps:
            raise ValueError(f"prefix_lead must be an integer in [0, {self.steps}], got {prefix_lead!r}")
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.driver = StreamDriver(model, feedback_mode, n_action_steps, inference_delay=prefix_lead)
        self.period_s = period_s
        self.clock = clock or SystemClock()
        self.worker = worker or ThreadWorker(self.clock)
        self.timings: list[ActionTiming] = []
        self.streamed: list = []  # the StreamStep of every action sent

    def run(self, num_chunks: int | None = None) -> list[ActionTiming]:
        """Every action until `num_chunks` chunks have streamed or the robot is done."""
        for _ in self.actions(num_chunks):
            pass
        return self.timings

    def actions(self, num_chunks: int | None = None):
        """The same loop, yielding the `ActionTiming` of each action once the robot has started it."""
        if num_chunks is not None and not (isinstance(num_chunks, int) and num_chunks >= 1):
            raise ValueError(f"num_chunks must be None or an integer >= 1, got {num_chunks!r}")
        prefix, due, chunk = self._queue_prefix(self.robot.observe()), None, 0
        while True:
            last_chunk = num_chunks is not None and chunk == num_chunks - 1
            stream = self._start(prefix.result().value)
            job, prefix = self.worker.submit("step", next, stream), None
            for k in range(self.steps):
                done = job.result()
                due = done.ready if due is None else due  # the first action of the run is due when it exists
                self.clock.sleep_until(due)
                timing = self._send(done, chunk, k, due)
                if timing is None:  # the episode ended before the action could start
                    return
                yield timing
                if self.robot.done:
                    return
                due = timing.sent + self.period_s
                # the next chunk's observation: the one this action's start was measured at, queued behind the step
                observes = not last_chunk and prefix is None and self.driver.schedule.observes(timing.index)
                observation = self.robot.observe() if observes else None
                if k < self.steps - 1:
                    job = self._queue_step(stream, timing.index)
                if observation is not None:
                    prefix = self._queue_prefix(observation)
            if last_chunk:
                return
            if prefix is None:  # no pipelining: the next observation follows the chunk
                self.clock.sleep_until(due)
                prefix = self._queue_prefix(self.robot.observe())
            chunk += 1

    def _start(self, prepared):
        """The next chunk's stream, from the state its driver says (waiting for that state to arrive)."""
        measured_frame = self.driver.measurement_frame(prepared)
        measured = None if measured_frame is None else _batch(self.robot.state_before(measured_frame))
        return self.driver.start(prepared, measured)

    def _send(self, done: Done, chunk: int, k: int, due: float) -> ActionTiming | None:
        step = done.value
        sent = self.robot.execute(step.action[0].float().cpu().numpy())
        if sent is None:
            return None
        timing = ActionTiming(len(self.timings), chunk, k, due, done.ready, sent, done.ready - done.started)
        self.timings.append(timing)
        self.streamed.append(step)
        return timing

    def _queue_step(self, stream, sent_index: int) -> Future:
        """The job of the next step, queued once what it conditions on has arrived."""
        if self.mode == "open_loop":
            return self.worker.submit("step", stream.send, None)
        if self.mode == "anticipatory":
            measured = _batch(self.robot.state_before(sent_index))
            return self.worker.submit("step", _observe_then_step, stream, measured)
        measured = _batch(self.robot.state_before(sent_index + 1))  # synchronous: after the action just sent
        return self.worker.submit("step", stream.send, measured)

    def _queue_prefix(self, observation: dict) -> Future:
        inputs = self.processor(images=observation["images"], text=self.task, state=observation["state"])
        inputs = {key: value.to(self.model.device) for key, value in inputs.items()}
        return self.worker.submit("prefix", self.driver.prepare, inputs, observation["frame"])

    def close(self) -> None:
        self.worker.close()


def _observe_then_step(stream, measured: torch.Tensor):
    stream.observe(measured)
    return stream.send(None)


def _batch(state) -> torch.Tensor:
    return torch.as_tensor(np.asarray(state, np.float32))[None]


def timing_summary(timings: list[ActionTiming], period_s: float, prefix_lead: int = 0) -> dict:
    """Inter-action gaps (p50/p99, ms), deadline misses, and the halt at chunk boundaries: the time the chunk's
    actions after its prefix was queued (`prefix_lead` - 1 of them) and the boundary action took beyond as many
    typical in-chunk gaps (ms, the mean over boundaries): a prefix queued early may delay the chunk's last steps
    (one worker) rather than the boundary action."""
    window = max(prefix_lead - 1, 0)
    sent = np.array([t.sent for t in timings])
    gaps = np.diff(sent) * 1000
    in_chunk = np.array([t.step > 0 for t in timings[1:]])
    typical = float(np.median(gaps[in_chunk])) if in_chunk.any() else 1000 * period_s
    boundaries = [t.index for t in timings[window + 1:] if t.step == 0]
    halts = [1000 * (sent[i] - sent[i - 1 - window]) - (window + 1) * typical for i in boundaries]
    return {"gap_p50_ms": float(np.percentile(gaps, 50)), "gap_p99_ms": float(np.percentile(gaps, 99)),
            "misses": int(sum(t.missed for t in timings[1:])), "actions": len(timings),
            "boundary_halt_ms": float(np.mean(np.maximum(halts, 0))) if halts else 0.0}

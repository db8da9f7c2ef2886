"""LIBERO episodes driven by the real-time runner (fasvla/realtime.py): the simulator as a robot in simulated time.

LIBERO's controller runs at 20 Hz: a command holds for one 50 ms tick. On a robot the policy computes and the states
travel while the arm moves. The simulator cannot run in real time here (rendering two cameras costs about 150 ms a
step on a CPU), so an episode runs on a simulated clock instead: ticks are 50 ms apart, each model job is charged its
measured compute time (or given costs), and what the simulator measures at a tick reaches the policy `latency_s`
later. A tick that starts with no new action holds the arm (no end-effector motion, the gripper as last commanded)
and still counts against the step limit: a policy that is slow in real time pays for it in the episode.
"""

import bisect
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from fasvla.libero.env import CONTROL_FREQUENCY, GRIPPER_ACTION_INDEX, WAIT_ACTION, LiberoEnv, Observation
from fasvla.libero.episode import EpisodeJob, EpisodeResult, EpisodeRun
from fasvla.libero.perturbations import Perturbation, PerturbedActions
from fasvla.libero.policy import PolicyOutput, policy_output
from fasvla.realtime import RealTimeRunner, SimulatedClock, SimulatedWorker

_EPS = 1e-9  # float slack when comparing clock times with tick times


@dataclass(frozen=True)
class RealTimeOptions:
    """latency_s: state latency. costs: {"step", "prefix"} seconds of compute, or None for the measured times.
    prefix_lead: actions of a chunk that run between the next chunk's observation and its first action (0: no
    pipelining); the lockstep episodes with `inference_delay` = `prefix_lead` are these without their holds."""

    latency_s: float = 0.0
    costs: dict | None = None
    prefix_lead: int = 1

    def __post_init__(self):
        if not self.latency_s >= 0:
            raise ValueError(f"latency_s must be >= 0, got {self.latency_s!r}")
        if self.costs is not None and (set(self.costs) != {"step", "prefix"} or min(self.costs.values()) < 0):
            raise ValueError(f"costs must be None or {{'step': s, 'prefix': s}} with times >= 0, got {self.costs!r}")


@dataclass
class Tick:
    number: int
    observation: Observation  # measured when the tick started
    action_index: int | None  # the runner's action executed in this tick; None: the arm held
    sent: np.ndarray  # (7,) what the environment executed (after perturbations)


class LiberoRobot:
    """A `LiberoEnv` behind the runner's robot interface. The simulator is stepped lazily, tick by tick, whenever
    the clock has passed a tick nobody sent an action for (a hold) or an action is executed; observation n is the
    one measured at tick n (time n * period), observation 0 the one after the reset. The episode's ticks start with
    its first action: the arm rests before it, as in lockstep, and `first_action_s` says how long it waited. The
    cameras render where a prefix observes them (`observed` ticks), or at every tick with `render_every_tick`
    (full-rate recordings)."""

    def __init__(self, env: LiberoEnv, clock, actions: PerturbedActions, latency_s: float, observation: Observation,
                 render_every_tick: bool = False):
        self.env, self.clock, self.actions, self.latency_s = env, clock, actions, latency_s
        self.render_every_tick = render_every_tick
        self.observed: set[int] = set()  # the ticks whose observation a prefix was built from
        self.period_s = 1.0 / CONTROL_FREQUENCY
        self.started = clock.now()
        self.observations = [observation]  # observations[n]: measured at tick n
        self.sent_at: list[float] = []
        self.action_ticks: list[int] = []  # the tick of each executed action
        self.pending: list[Tick] = []  # ticks run since the last `drain`
        self.success = False
        # no motion, the gripper as the wait steps left it (open), in the model's sign convention
        self.hold_action = np.zeros(7)
        self.hold_action[GRIPPER_ACTION_INDEX] = WAIT_ACTION[GRIPPER_ACTION_INDEX] * env.gripper_close_sign
        self.env_s = 0.0
        self.first_action_s = None

    @property
    def ticks(self) -> int:
        return len(self.observations) - 1

    @property
    def done(self) -> bool:
        return self.success or self.ticks >= self.env.max_steps

    def observe(self) -> dict:
        self._hold_until(self.clock.now())
        n = min(math.floor((self.clock.now() - self.started) / self.period_s + _EPS), self.ticks)
        observation = self.observations[n]
        images = observation.images  # rendered now, while the simulator holds tick n's frame
        self.observed.add(n)
        self.clock.sleep_until(self._tick_time(n) + self.latency_s)
        frame = bisect.bisect_left(self.action_ticks, n)  # the actions executed before tick n (ticks increase)
        return {"images": images, "state": observation.state, "frame": frame}

    def execute(self, action: np.ndarray) -> float | None:
        if not self.sent_at:  # the episode starts now: tick 0 is this action's
            self.first_action_s = self.clock.now() - self.started
            self.started = self.clock.now()
        self._hold_until(self.clock.now())
        if self.done:  # the step limit was reached holding: the action never runs
            return None
        tick = self.ticks
        self.clock.sleep_until(self._tick_time(tick))
        self.sent_at.append(self._tick_time(tick))
        self.action_ticks.append(tick)
        self._step(np.asarray(action, np.float64), len(self.sent_at) - 1)
        self.hold_action[GRIPPER_ACTION_INDEX] = action[GRIPPER_ACTION_INDEX]
        return self.sent_at[-1]

    def measured_at(self, j: int) -> float:
        return self.started if j == 0 else self.sent_at[j - 1] + self.period_s

    def state_before(self, j: int) -> np.ndarray:
        self.clock.sleep_until(self.measured_at(j) + self.latency_s)
        return self.observations[0 if j == 0 else self.action_ticks[j - 1] + 1].state

    def drain(self) -> list[Tick]:
        ticks, self.pending = self.pending, []
        return ticks

    def _tick_time(self, n: int) -> float:
        return self.started + n * self.period_s

    def _hold_until(self, t: float) -> None:
        """Ticks that started before `t` without an action hold the arm (none before the first action)."""
        while self.sent_at and not self.done and self._tick_time(self.ticks) < t - _EPS:
            self._step(self.hold_action, None)

    def _step(self, action: np.ndarray, action_index: int | None) -> None:
        tick, observation = self.ticks, self.observations[-1]
        sent = self.actions(action)
        wall = time.perf_counter()
        next_observation, self.success = self.env.step(sent, push_force=self.actions.force_at(tick),
                                                       render=self.render_every_tick)
        self.env_s += time.perf_counter() - wall
        self.observations.append(next_observation)
        self.pending.append(Tick(tick, observation, action_index, sent))


class RealTimeEpisodeRun(EpisodeRun):
    """An `EpisodeRun` whose policy is a streaming model under the real-time runner on the simulated clock; it
    yields every tick, holds included (their policy outputs are NaN); `robot` and `runner` (its `timings`) stay for
    inspection."""

    def __init__(self, env: LiberoEnv, model, processor, job: EpisodeJob, perturbation: Perturbation, seed: int,
                 options: RealTimeOptions, feedback_mode: str | None = None, n_action_steps: int | None = None,
                 record: bool = True):
        if model.config.objective == "chunk":
            raise ValueError("the real-time runner streams actions; a chunk model has no stream to run in real time")
        super().__init__(env, None, job, perturbation, seed, record)
        self.model, self.processor, self.options = model, processor, options
        self.feedback_mode, self.n_action_steps = feedback_mode, n_action_steps
        self.robot, self.runner, self.held_steps = None, None, 0

    def __iter__(self):
        torch.manual_seed(self.seed)
        clock = SimulatedClock()
        actions = PerturbedActions(self.perturbation, self.seed)
        observation = self.env.reset(self.init_state_id, self.placement_seed)
        every_frame = self.recorder is not None and self.recorder.video  # render each while the simulator holds it
        if every_frame:
            observation.render()
        self.robot = LiberoRobot(self.env, clock, actions, self.options.latency_s, observation, every_frame)
        self.runner = RealTimeRunner(self.model, self.processor, self.env.task_language, self.robot,
                                     self.robot.period_s, self.feedback_mode, self.n_action_steps,
                                     self.options.prefix_lead, clock, SimulatedWorker(clock, self.options.costs))
        ticks = []  # recorded at the end: a prefix may observe a tick after it was yielded
        try:
            for timing in self.runner.actions():
                output = policy_output(self.runner.streamed[-1], timing.compute)
                yield from self._ticks_run(ticks, timing.index, output)
                self.policy_s += timing.compute
            yield from self._ticks_run(ticks, None, None)  # the step limit reached holding
        finally:
            self.runner.close()
        if self.recorder is not None:
            for tick, output in ticks:
                self.recorder.add(tick.observation, output, tick.sent, observed=tick.number in self.robot.observed)

    def _ticks_run(self, ticks: list, action_index: int | None, output: PolicyOutput | None):
        """The ticks run since the last call, the one of action `action_index` with `output`, the others held."""
        for tick in self.robot.drain():
            self.held_steps += tick.action_index is None
            executed = action_index is not None and tick.action_index == action_index
            ticks.append((tick, output if executed else _HELD))
            yield tick.observation, ticks[-1][1], tick.sent
        self.success, self.steps, self.env_s = self.robot.success, self.robot.ticks, self.robot.env_s

    def result(self, feedback_mode: str) -> EpisodeResult:
        result = super().result(feedback_mode)
        timings = self.runner.timings
        result.policy_ms_per_action = 1000 * self.policy_s / max(len(timings), 1)
        result.held_steps = self.held_steps
        result.missed_deadlines = sum(t.missed for t in timings[1:])  # the first action has no deadline
        return result


_HELD = PolicyOutput(np.full(7, np.nan, np.float32), np.full(8, np.nan, np.float32), np.full(8, np.nan, np.float32),
                     float("nan"))

"""The expert's hand: closed-loop motions to target poses, the gripper, and every action it sends.

`Arm.send` is the only place an action reaches the simulator: it adds the style's noise (free motions only: the
descents, rim carries, grasps, pulls and twists near contact stay precise), clips, records the action and counts
the step. The episode ends by exception: `EpisodeEnded` when the task succeeded (and the caller asked to
stop there) or when the step limit is reached, wherever in a skill that happens.
"""

from collections.abc import Callable

import numpy as np

from fasvla.libero.expert.controller import CLOSE, OPEN, pose_action, rotation_error
from fasvla.libero.expert.diversity import Style
from fasvla.libero.expert.geometry import wrist_friendly_yaw, yaw_of
from fasvla.libero.expert.grasps import corridor_top
from fasvla.libero.expert.scene import Scene

POSITION_TOLERANCE = 0.01  # metres
ROTATION_TOLERANCE = 0.1  # radians, full orientation error
STALL_WINDOW, STALL_PROGRESS = 5, 0.0015  # under 1.5 mm of progress in 5 steps: the motion is blocked ...
STALL_TURN = 0.01  # ... unless the hand still turned by more than this (radians) towards its target orientation
GRIP_SETTLE_STEPS, GRIP_STILL = 4, 5e-4  # the fingers have closed once their opening changes by < 0.5 mm per step
GRIP_SQUEEZE_STEPS = 2  # extra closing steps that build up grip force


class EpisodeEnded(Exception):
    """The task succeeded (with `stop_at_success`) or the step limit was reached."""


class Arm:
    """Sends actions through `step(action (7,)) -> success` and records them.

    actions: every action sent, (7,) each, in LIBERO's convention (gripper -1 open, +1 close).
    success_step: the number of actions after which the task first succeeded (None: not yet).
    """

    def __init__(self, step: Callable[[np.ndarray], bool], scene: Scene, style: Style, rng: np.random.Generator,
                 max_steps: int, stop_at_success: bool = True):
        self.step, self.scene, self.style, self.rng = step, scene, style, rng
        self.max_steps, self.stop_at_success = max_steps, stop_at_success
        self.actions: list[np.ndarray] = []
        self.success_step: int | None = None

    def send(self, action: np.ndarray, noisy: bool = False) -> None:
        """Send one action, with the style's noise on its six end-effector values if `noisy`."""
        if len(self.actions) >= self.max_steps:
            raise EpisodeEnded("step limit")
        action = np.array(action, dtype=float)
        if noisy and self.style.action_noise:
            action[:6] += self.rng.normal(0.0, self.style.action_noise, 6)
        action = np.clip(action, -1.0, 1.0)
        self.actions.append(action)
        if self.step(action) and self.success_step is None:
            self.success_step = len(self.actions)
        if self.success_step is not None and self.stop_at_success:
            raise EpisodeEnded("success")

    def reachable_yaw(self, yaw: float) -> float:
        """`yaw` or its equivalent half a turn away, whichever keeps the wrist joint away from its limits."""
        _, rotation = self.scene.hand_pose()
        return wrist_friendly_yaw(yaw, yaw_of(rotation), self.scene.wrist_angle(), self.scene.wrist_middle)

    def act_towards(self, target: np.ndarray, rotation: np.ndarray, gripper: float, speed: float = 1.0,
                    noisy: bool = False) -> None:
        """One step towards the target pose at `speed` or the style's speed, whichever is slower: careful motions
        (descents, carrying by the rim) keep their own cap rather than compounding it with a slow style, which
        would make the long tasks overrun their step limits."""
        position, current = self.scene.hand_pose()
        self.send(pose_action(position, current, target, rotation, gripper, min(speed, self.style.speed)), noisy)

    def move(self, target, rotation: np.ndarray, gripper: float, tolerance: float = POSITION_TOLERANCE,
             max_steps: int = 150, speed: float = 1.0, rotation_tolerance: float = ROTATION_TOLERANCE) -> bool:
        """Drive the grip site to `target` with orientation `rotation`; False when blocked or out of time.

        `speed` caps the position action (see `act_towards`). A motion that stops making progress (a contact) gives
        up early rather than pushing until `max_steps`.
        """
        target = np.asarray(target, dtype=float)
        path, turn_errors = [], []
        for _ in range(max_steps):
            position, current = self.scene.hand_pose()
            path.append(position)
            turn_errors.append(rotation_error(current, rotation))
            if np.linalg.norm(target - position) < tolerance and turn_errors[-1] < rotation_tolerance:
                return True
            if len(path) > 2 * STALL_WINDOW and self._stalled(path, turn_errors, rotation_tolerance):
                return False
            self.act_towards(target, rotation, gripper, speed, noisy=speed >= 1.0)  # careful motions stay precise
        return False

    @staticmethod
    def _stalled(path: list[np.ndarray], turn_errors: list[float], rotation_tolerance: float) -> bool:
        """Neither moving nor still turning over the last STALL_WINDOW steps (a hand turning in place is fine)."""
        moved = np.linalg.norm(path[-1] - path[-1 - STALL_WINDOW])
        turned = turn_errors[-1 - STALL_WINDOW] - turn_errors[-1]
        return moved < STALL_PROGRESS and (turn_errors[-1] < rotation_tolerance or turned < STALL_TURN)

    def hold(self, target, rotation: np.ndarray, gripper: float, steps: int) -> None:
        for _ in range(steps):
            self.act_towards(np.asarray(target, dtype=float), rotation, gripper)

    def close_gripper(self, target, rotation: np.ndarray, max_steps: int = 15) -> float:
        """Close at `target` until the fingers stop, squeeze a little; returns the final finger opening."""
        previous = None
        for step in range(max_steps):
            self.act_towards(np.asarray(target, dtype=float), rotation, CLOSE)
            opening = self.scene.finger_opening()
            if previous is not None and step >= GRIP_SETTLE_STEPS and abs(previous - opening) < GRIP_STILL:
                break
            previous = opening
        self.hold(target, rotation, CLOSE, GRIP_SQUEEZE_STEPS)
        return self.scene.finger_opening()

    def open_gripper(self, target, rotation: np.ndarray, steps: int = 10) -> None:
        self.hold(target, rotation, OPEN, steps)

    def transit(self, xy: np.ndarray, height: float, rotation: np.ndarray, gripper: float, obstacles: np.ndarray,
                lowest_below_hand: float, half_width: float, speed: float = 1.0) -> None:
        """Up (if needed), then across to above `xy` at `height` or higher, as high as clearing the obstacles along
        the way needs.

        lowest_below_hand: how far the lowest point of the hand or of what it carries hangs below the grip site
        (negative); half_width: the corridor's half width around the straight xy path.
        """
        position, _ = self.scene.hand_pose()
        tallest = corridor_top(obstacles, position[:2], np.asarray(xy), half_width)
        travel = max(height, tallest + self.style.carry_clearance - lowest_below_hand)
        if np.linalg.norm(position[:2] - xy) < 0.03:  # already above the goal: no need to come down first
            travel = max(travel, position[2])
        if travel > position[2] + 0.01:
            self.move(np.r_[position[:2], travel], rotation, gripper, tolerance=0.02, max_steps=60, speed=speed)
        self.move(np.r_[xy, travel], rotation, gripper, tolerance=0.012, max_steps=150, speed=speed)

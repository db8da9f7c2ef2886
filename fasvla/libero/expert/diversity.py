"""Trajectory diversity: each demonstration draws its own motion style, so a task is not one rigid motion.

`Diversity` holds the ranges (the command-line options); `Diversity.sample(rng)` draws one episode's `Style`. A
style changes how the expert moves, never what it does: the speed cap of free motions, the heights it approaches
and lifts at, the clearance it carries objects with, a turn of top-down grasps about the vertical, and Gaussian
noise on the end-effector actions of free motions (the closed loop corrects it, and the recorded action is the
noisy one the simulator executed).
"""

from dataclasses import dataclass

import numpy as np

# Top-down grasps may turn away from across-the-short-side only while the object still fits between the fingers.
MAX_GRASP_WIDTH = 0.075  # metres; the fingers open to about 8 cm


@dataclass(frozen=True)
class Style:
    """One episode's motion parameters."""

    speed: float  # cap on |position action|, fraction of full speed (careful motions keep their lower caps)
    approach_height: float  # metres above the grasp point where the descent to a grasp starts
    lift_height: float  # metres the hand rises after closing, to check the grasp
    carry_clearance: float  # metres kept above obstacles while carrying
    grasp_yaw: float  # radians added to a top-down grasp's yaw (reduced for objects that would not fit)
    action_noise: float  # std of Gaussian noise added to the six end-effector actions of free motions


@dataclass(frozen=True)
class Diversity:
    """Ranges of the motion style, drawn uniformly per episode (`low == high` fixes a parameter).

    Args:
        speed: (low, high) in (0, 1]; 1 is full speed (about 1.25 cm per step).
        approach_height: (low, high) metres, >= 0.03 so the open fingers clear the object's top.
        lift_height: (low, high) metres, >= 0.03 so a failed grasp is detected by the object not rising.
        carry_clearance: (low, high) metres above the tallest obstacle under the carried object's path.
        grasp_yaw: max |turn| (radians) of top-down grasps.
        action_noise: std of the noise on the six end-effector actions (0: none).
    """

    speed: tuple[float, float] = (0.6, 1.0)
    approach_height: tuple[float, float] = (0.05, 0.10)
    lift_height: tuple[float, float] = (0.05, 0.09)
    carry_clearance: tuple[float, float] = (0.025, 0.06)
    grasp_yaw: float = 0.3
    action_noise: float = 0.05

    def __post_init__(self):
        for name, low_limit in (("speed", 1e-3), ("approach_height", 0.03), ("lift_height", 0.03),
                                ("carry_clearance", 0.0)):
            low, high = getattr(self, name)
            if not low_limit <= low <= high:
                raise ValueError(f"{name} must be a range (low, high) with {low_limit} <= low <= high, "
                                 f"got {(low, high)}")
        if self.speed[1] > 1.0:
            raise ValueError(f"speed must not exceed 1 (full speed), got {self.speed}")
        if self.grasp_yaw < 0 or self.action_noise < 0:
            raise ValueError(f"grasp_yaw and action_noise must be >= 0, got {self.grasp_yaw}, {self.action_noise}")

    @classmethod
    def none(cls) -> "Diversity":
        """The plain expert: full speed, fixed heights, no grasp turn, no noise."""
        return cls(speed=(1.0, 1.0), approach_height=(0.06, 0.06), lift_height=(0.06, 0.06),
                   carry_clearance=(0.03, 0.03), grasp_yaw=0.0, action_noise=0.0)

    def sample(self, rng: np.random.Generator) -> Style:
        draw = lambda bounds: float(rng.uniform(*bounds))  # noqa: E731
        return Style(speed=draw(self.speed), approach_height=draw(self.approach_height),
                     lift_height=draw(self.lift_height), carry_clearance=draw(self.carry_clearance),
                     grasp_yaw=draw((-self.grasp_yaw, self.grasp_yaw)), action_noise=self.action_noise)


def episode_rng(seed: int, suite_index: int, task_id: int, demo_index: int, attempt: int,
                stream: int = 0) -> np.random.Generator:
    """The random stream of one attempt (its style, noise and fixture placement; `stream` 1: its recovery
    perturbations, fasvla/libero/expert/dart.py), a function of its identity only: the same demonstrations whatever
    the number of workers or the order they run in."""
    entropy = [seed, suite_index, task_id, demo_index, attempt] + ([stream] if stream else [])
    return np.random.default_rng(np.random.SeedSequence(entropy))

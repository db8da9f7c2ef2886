"""Target poses -> LIBERO actions: a proportional law on LIBERO's delta end-effector controller.

LIBERO drives the Panda with robosuite's OSC_POSE controller in delta mode at 20 Hz: each step it moves its goal to
the current pose plus `0.05 m x a[:3]` and a world-frame rotation of `0.5 rad x a[3:6]` (goal = R(delta) R_current),
the goal being re-anchored to the measured pose every step. Measured on the simulator (the reference study's
NOTES.md, section 2): a full-scale action moves about 1.25 cm per step, and the arm coasts about 3 cm when a
full-speed action stops. Hence a closed-loop law on absolute targets rather than open-loop deltas:

    a_pos = clip(POSITION_GAIN (target - position), -speed, speed)
    a_rot = clip(rotvec(R_target R_current^T) / ROTATION_PER_UNIT, -1, 1)

With POSITION_GAIN = 1 / 0.05, once the error is under 5 cm the controller's goal lands exactly on the target.
"""

import numpy as np

from fasvla.libero.expert.geometry import rotation_vector

POSITION_PER_UNIT = 0.05  # metres of OSC goal offset per unit of position action
ROTATION_PER_UNIT = 0.5  # radians of OSC goal rotation per unit of rotation action
POSITION_GAIN = 1.0 / POSITION_PER_UNIT  # action per metre of error: the goal lands on targets nearer than 5 cm
OPEN, CLOSE = -1.0, 1.0  # LIBERO's gripper command: only its sign matters


def rotation_action(rotation: np.ndarray, target_rotation: np.ndarray) -> np.ndarray:
    """(3,) rotation action turning the (3, 3) hand orientation `rotation` towards `target_rotation`."""
    error = rotation_vector(target_rotation @ rotation.T)  # world frame, as the controller applies it
    return np.clip(error / ROTATION_PER_UNIT, -1.0, 1.0)


def pose_action(position: np.ndarray, rotation: np.ndarray, target_position: np.ndarray,
                target_rotation: np.ndarray, gripper: float, speed: float = 1.0) -> np.ndarray:
    """(7,) action moving the hand at (3,) `position` with (3, 3) `rotation` towards the target pose, the position
    part capped at `speed` (<= 1, the fraction of full speed), with gripper command `gripper`."""
    position_action = np.clip(POSITION_GAIN * (np.asarray(target_position) - position), -speed, speed)
    return np.concatenate([position_action, rotation_action(rotation, target_rotation), [gripper]])


def rotation_error(rotation: np.ndarray, target_rotation: np.ndarray) -> float:
    """Angle (radians) between two orientations: the full error, not only the yaw (a tilted hand misses a grasp
    even when its yaw is right)."""
    return float(np.linalg.norm(rotation_vector(target_rotation @ rotation.T)))

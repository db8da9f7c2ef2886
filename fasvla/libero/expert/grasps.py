"""Grasp and clearance planning on point clouds (pure: object shapes and obstacle points in, poses out).

The Panda gripper is modelled as boxes around the grip site (the point between the fingertips), in the frame of the
finger closing axis u, the axis across the fingers v and world z:

    fingers: |u| < 6 cm (open span plus finger thickness), |v| < 1.5 cm, z from -1.2 cm to +5 cm
    hand:    |u| < 11 cm, |v| < 4 cm, z from +3 cm up to +30 cm (the hand and the vertical approach column)

The hand, 22 cm long, not the fingers, is what hits basket rims, tall neighbours and drawers (NOTES.md section 6).
Objects narrower than the finger opening are grasped from the top across their short side; wider ones (bowls,
plates) by the rim, one finger inside and one outside, preferably on the side facing the robot (the far side is out
of reach on the tabletop scenes).
"""

from dataclasses import dataclass

import numpy as np

from fasvla.libero.expert.diversity import MAX_GRASP_WIDTH
from fasvla.libero.expert.geometry import ObjectShape, closing_yaw, finger_axis, wrap_half_turn

FINGER_REACH_BELOW = 0.012  # metres the fingertips reach below the grip site
HAND_STARTS_ABOVE = 0.03  # metres above the grip site where the wide hand begins
FINGER_HALF_SPAN, FINGER_HALF_THICKNESS, FINGER_TOP = 0.06, 0.015, 0.05
HAND_HALF_LENGTH, HAND_HALF_WIDTH, APPROACH_COLUMN_TOP = 0.11, 0.04, 0.30
TOP_GRASP_DEPTH = 0.025  # grip this far below an object's top ...
MIN_GRIP_ABOVE_BOTTOM = 0.012  # ... but keep the fingertips off the table under flat objects
NEAR_SQUARE = 0.07  # objects whose long side is under this may also be grasped across the long side
GRASP_OFFSETS = (0.0, 0.01, -0.01, 0.02, -0.02, 0.03, -0.03)  # metres along the long side, nearest first
RIM_GRASP_DEPTH, RIM_INSET, RIM_ANGLES = 0.018, 0.006, 16
FAILED_ANGLE_RADIUS = 0.5  # radians: rim angles this close to a failed grasp are tried last


@dataclass(frozen=True)
class Grasp:
    position: np.ndarray  # (3,) grip site
    yaw: float
    collisions: int  # obstacle points inside the gripper model
    rim_angle: float | None = None  # rim grasps: world angle of the grasped rim point seen from the centre


def _gripper_frame(points: np.ndarray, position: np.ndarray, yaw: float) -> tuple[np.ndarray, ...]:
    """(N,) coordinates of `points` along the closing axis, across the fingers and up, relative to the grip site."""
    u = finger_axis(yaw)
    v = np.array([-u[1], u[0]])
    offset = points[:, :2] - position[:2]
    return offset @ u, offset @ v, points[:, 2] - position[2]


def gripper_collisions(obstacles: np.ndarray, position: np.ndarray, yaw: float) -> int:
    """Number of (N, 3) obstacle points inside the open gripper (and its approach column) at grip site `position`."""
    du, dv, dz = _gripper_frame(obstacles, position, yaw)
    fingers = ((np.abs(du) < FINGER_HALF_SPAN) & (np.abs(dv) < FINGER_HALF_THICKNESS)
               & (dz > -FINGER_REACH_BELOW) & (dz < FINGER_TOP))
    hand = ((np.abs(du) < HAND_HALF_LENGTH) & (np.abs(dv) < HAND_HALF_WIDTH)
            & (dz >= HAND_STARTS_ABOVE - 0.005) & (dz < APPROACH_COLUMN_TOP))
    return int(fingers.sum() + hand.sum())


def fitting_turn(short: float, long: float, turn: float) -> float:
    """`turn` halved until a (short x long) rectangle turned by it still fits between the open fingers."""
    for _ in range(4):
        if short * abs(np.cos(turn)) + long * abs(np.sin(turn)) <= MAX_GRASP_WIDTH:
            return turn
        turn /= 2
    return 0.0


def top_grasps(shape: ObjectShape, turn: float = 0.0) -> list[tuple[np.ndarray, float, float]]:
    """Candidate top-down grasps (grip site, yaw, preference cost) across the short side, at offsets along the
    long side; `turn` (radians) rotates the fingers away from straight across when the object still fits."""
    box = shape.footprint
    height = max(shape.zmax - TOP_GRASP_DEPTH, shape.zmin + MIN_GRIP_ABOVE_BOTTOM)
    base_yaw = wrap_half_turn(closing_yaw(box.short_axis_angle) + fitting_turn(box.short, box.long, turn))
    yaws = [base_yaw] + ([wrap_half_turn(base_yaw + np.pi / 2)] if box.long <= NEAR_SQUARE else [])
    long_axis = np.array([-np.sin(box.short_axis_angle), np.cos(box.short_axis_angle)])
    reach = max(0.0, box.long / 2 - 0.02)
    return [(np.r_[box.center + offset * long_axis, height], yaw, abs(offset) + 0.01 * abs(yaw))
            for yaw in yaws for offset in GRASP_OFFSETS if abs(offset) <= reach]


def rim_grasps(shape: ObjectShape, avoid_angles=()) -> list[tuple[np.ndarray, float, float, float]]:
    """Candidate rim grasps (grip site, yaw, preference cost, rim angle) around a wide object, fingers closing
    radially just inside the outer rim; cheaper on the robot's side (-x) and away from `avoid_angles`."""
    center = shape.footprint.center
    top = shape.points[shape.points[:, 2] > shape.zmax - 0.01]
    radius = np.linalg.norm(top[:, :2] - center, axis=1).max()
    height = max(shape.zmax - RIM_GRASP_DEPTH, shape.zmin + MIN_GRIP_ABOVE_BOTTOM)
    candidates = []
    for angle in np.linspace(-np.pi, np.pi, RIM_ANGLES, endpoint=False):
        direction = np.array([np.cos(angle), np.sin(angle)])
        yaw = closing_yaw(angle)
        failed_nearby = sum(abs(np.angle(np.exp(1j * (angle - a)))) < FAILED_ANGLE_RADIUS for a in avoid_angles)
        cost = direction[0] + 0.05 * abs(yaw) + failed_nearby
        candidates.append((np.r_[center + (radius - RIM_INSET) * direction, height], yaw, cost, float(angle)))
    return candidates


def choose_grasp(shape: ObjectShape, obstacles: np.ndarray, turn: float = 0.0, avoid_angles=()) -> Grasp:
    """The candidate with the fewest gripper collisions, then the lowest preference cost."""
    if shape.footprint.short <= MAX_GRASP_WIDTH:
        candidates = [(position, yaw, cost, None) for position, yaw, cost in top_grasps(shape, turn)]
    else:
        candidates = rim_grasps(shape, avoid_angles)
    scored = [(gripper_collisions(obstacles, p, yaw), cost, p, yaw, angle) for p, yaw, cost, angle in candidates]
    collisions, _, position, yaw, angle = min(scored, key=lambda s: (s[0], s[1]))
    return Grasp(position, yaw, collisions, angle)


def hand_floor(obstacles: np.ndarray, xy: np.ndarray, yaw: float) -> float:
    """Lowest grip-site height at which the hand at `xy` stays above every obstacle point under it (-inf: none)."""
    du, dv, _ = _gripper_frame(obstacles, np.r_[xy, 0.0], yaw)
    under = (np.abs(du) < HAND_HALF_LENGTH) & (np.abs(dv) < HAND_HALF_WIDTH + 0.005)
    return float(obstacles[under, 2].max() - HAND_STARTS_ABOVE + 0.01) if under.any() else -np.inf


def corridor_top(obstacles: np.ndarray, start: np.ndarray, end: np.ndarray, half_width: float) -> float:
    """Height of the tallest obstacle point within `half_width` of the xy segment start -> end (-inf: none)."""
    segment = np.asarray(end) - start
    along = np.clip((obstacles[:, :2] - start) @ segment / max(segment @ segment, 1e-9), 0.0, 1.0)  # (N,)
    distance = np.linalg.norm(obstacles[:, :2] - (start + along[:, None] * segment), axis=1)
    near = distance < half_width
    return float(obstacles[near, 2].max()) if near.any() else -np.inf

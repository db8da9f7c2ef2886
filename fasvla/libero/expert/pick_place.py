"""Pick an object and place it where a goal predicate wants it.

Placing is object-centric: the expert measures where the held object's body origin and lowest point sit relative to
the hand, and moves the hand so that the body origin lands on the target xy (LIBERO's `On(a, b)` compares body
origins, within 3 cm) and the lowest point on the target height, never letting the wide hand sink below the
obstacles under it (basket rims). `In(container)` already holds while the object is carried in, before release.
"""

from dataclasses import dataclass

import numpy as np

from fasvla.libero.expert.controller import CLOSE, OPEN
from fasvla.libero.expert.geometry import downward_rotation
from fasvla.libero.expert.grasps import FINGER_REACH_BELOW, choose_grasp, hand_floor
from fasvla.libero.expert.motions import Arm
from fasvla.libero.expert.scene import Scene

PICK_ATTEMPTS = 3
LIFTED = 0.02  # metres the object's body must rise for a grasp to count (not its lowest point: rim grasps tilt)
CLOSED_ON_NOTHING = 0.002  # finger opening (metres) below which the gripper holds nothing
RIM_CARRY_SPEED = 0.6  # light bowls slip out of rim grasps at full speed
CAREFUL_SPEED = 0.6  # descents onto grasps and placements
CONTAINER_DROP = 0.045  # metres above a container's bottom where the held object's lowest point is released
ABOVE_TARGET = 0.01  # metres above a surface where the held object's lowest point is released
RELEASE_STEPS, RETREAT = 10, 0.08


@dataclass(frozen=True)
class Held:
    """How an object was grasped."""

    yaw: float
    carry_speed: float


@dataclass(frozen=True)
class PlaceTarget:
    xy: np.ndarray  # (2,) where the object's body origin goes
    bottom: float  # height for the object's lowest point


def pick(arm: Arm, name: str) -> Held | None:
    """Grasp `name` and lift it, retrying up to PICK_ATTEMPTS times (other rim angles first); None if it failed."""
    scene, style = arm.scene, arm.style
    failed_angles = []
    for _ in range(PICK_ATTEMPTS):
        shape, obstacles = scene.shape(name), scene.obstacles({name})
        grasp = choose_grasp(shape, obstacles, style.grasp_yaw, failed_angles)
        yaw = arm.reachable_yaw(grasp.yaw)
        rotation = downward_rotation(yaw)
        above = max(grasp.position[2] + style.approach_height, shape.zmax + 0.04)
        arm.transit(grasp.position[:2], above, rotation, OPEN, obstacles, -FINGER_REACH_BELOW, half_width=0.08)
        refined = choose_grasp(scene.shape(name), obstacles, style.grasp_yaw, failed_angles)  # nudged on the way?
        position = refined.position if np.linalg.norm(refined.position[:2] - grasp.position[:2]) < 0.02 \
            else grasp.position
        arm.move(np.r_[position[:2], above], rotation, OPEN, tolerance=0.008, max_steps=30)
        arm.move(position, rotation, OPEN, tolerance=0.006, max_steps=60, speed=CAREFUL_SPEED)
        arm.close_gripper(position, rotation)
        start = scene.body_position(name)[2]
        lifted_to = position + np.r_[0.0, 0.0, style.lift_height]
        arm.move(lifted_to, rotation, CLOSE, tolerance=0.008, max_steps=30)
        if scene.body_position(name)[2] - start > LIFTED and scene.finger_opening() > CLOSED_ON_NOTHING:
            return Held(yaw, 1.0 if grasp.rim_angle is None else RIM_CARRY_SPEED)
        if grasp.rim_angle is not None:
            failed_angles.append(grasp.rim_angle)
        arm.open_gripper(lifted_to, rotation, steps=8)
    return None


def _in_hand_offset(scene: Scene, name: str) -> tuple[np.ndarray, float]:
    """(2,) body origin minus grip site in xy, and the height of the object's lowest point below the grip site."""
    position, _ = scene.hand_pose()
    return scene.body_position(name)[:2] - position[:2], scene.shape(name).zmin - position[2]


def place(arm: Arm, name: str, target: PlaceTarget, held: Held) -> None:
    """Carry the held `name` over the target, lower it, release and retreat upwards."""
    scene = arm.scene
    rotation = downward_rotation(held.yaw)
    obstacles = scene.obstacles({name})
    box = scene.shape(name).footprint
    offset, hang = _in_hand_offset(scene, name)
    hand_xy = target.xy - offset
    release = max(target.bottom - hang, hand_floor(obstacles, hand_xy, held.yaw))
    arm.transit(hand_xy, release + 0.03, rotation, CLOSE, obstacles, min(hang, -FINGER_REACH_BELOW),
                half_width=max(0.5 * np.hypot(box.short, box.long) + 0.03, 0.07), speed=held.carry_speed)
    offset, hang = _in_hand_offset(scene, name)  # again: the object may have slipped in the hand
    hand_xy = target.xy - offset
    release = max(target.bottom - hang, hand_floor(obstacles, hand_xy, held.yaw))
    height = scene.hand_pose()[0][2]
    arm.move(np.r_[hand_xy, height], rotation, CLOSE, tolerance=0.008, max_steps=30, speed=held.carry_speed)
    arm.move(np.r_[hand_xy, release], rotation, CLOSE, tolerance=0.008, max_steps=60, speed=CAREFUL_SPEED)
    arm.open_gripper(np.r_[hand_xy, release], rotation, RELEASE_STEPS)
    arm.move(np.r_[hand_xy, release + RETREAT], rotation, OPEN, tolerance=0.02, max_steps=30)


def place_target(scene: Scene, relation: str, target: str) -> PlaceTarget:
    """Where `In(obj, target)` or `On(obj, target)` wants the object, for a target object or a region that is not
    a drawer (see `articulated.drawer_place_target`)."""
    if not scene.is_region(target):  # on another object: body origins within 3 cm
        return PlaceTarget(scene.body_position(target)[:2], scene.shape(target).zmax + ABOVE_TARGET)
    center, parent = scene.region_center(target), scene.region_parent(target)
    if relation == "in":
        return PlaceTarget(center[:2], scene.shape(parent).zmin + CONTAINER_DROP)
    top = center[2] + scene.region_half_extent(target)[2]
    if parent is not None and scene.has_object(parent):  # the region sits on its parent's surface
        points = scene.points(parent)
        near = np.linalg.norm(points[:, :2] - center[:2], axis=1) < 0.05
        top = max(top, points[near, 2].max()) if near.any() else top
    return PlaceTarget(center[:2], top + ABOVE_TARGET)

"""Skills on articulated fixtures: open a drawer, turn a stove knob, put an object into a drawer.

A drawer is opened with a horizontal grasp (approach into the drawer front, fingers closing vertically around the
handle bar; from above, the middle drawer's handle is hidden under the top drawer) and a pull along the slide joint,
proportional to the remaining opening because the drawer coasts. A knob is grasped across its raised lever and
twisted in small yaw increments. When an object must go into a closed drawer, a fully open top drawer would block
the hand over the object, so the expert looks ahead: it sets the drawer joint to candidate openings (kinematics
only, restored afterwards) and opens it as far as the object's grasp stays collision-free.
"""

import numpy as np

from fasvla.libero.expert.controller import CLOSE, OPEN
from fasvla.libero.expert.geometry import closing_yaw, downward_rotation, footprint, horizontal_rotation, yaw_of
from fasvla.libero.expert.grasps import choose_grasp
from fasvla.libero.expert.motions import Arm
from fasvla.libero.expert.pick_place import CAREFUL_SPEED, PlaceTarget
from fasvla.libero.expert.scene import Scene

OVER_OPEN = 0.01  # metres past the middle of the "open" range, a margin for the predicate
HANDLE_DEPTH = 0.01  # metres behind the bar's front face where the grip site closes
STANDOFF = 0.10  # metres in front of the handle where the horizontal approach starts
RETREAT = 0.08  # metres the released hand backs off the handle
PULL_STEP, PULL_DONE, PULL_STALL = 0.03, 0.003, 1e-3  # metres
TWIST_STEP, TWIST_PAST_ON = 0.25, 0.25  # radians per step; radians past the knob's "on" angle
DRAWER_FLOOR_MARGIN = 0.015  # metres above the drawer floor where the held object's lowest point is released
OPENING_STEP, MIN_OPENING = 0.01, 0.07  # metres: look-ahead openings, from fully open down to this


def open_drawer(arm: Arm, region: str, target: float | None = None) -> None:
    """Open the drawer behind `region` to joint position `target` (default: past the middle of its open range)."""
    drawer = arm.scene.drawer(region)
    if target is None:
        target = drawer.open_target + drawer.opening_sign * OVER_OPEN
    target = float(np.clip(target, drawer.joint_range[0] + 0.003, drawer.joint_range[1] - 0.003))
    rotation = horizontal_rotation(-drawer.pull)  # pointing into the drawer front
    bar = drawer.handle.mean(axis=0)
    depth = (drawer.handle @ drawer.pull).max() - bar @ drawer.pull
    grasp = bar + drawer.pull * (depth - HANDLE_DEPTH)
    standoff = grasp + drawer.pull * STANDOFF
    height = arm.scene.hand_pose()[0][2]
    arm.move(np.r_[standoff[:2], max(height, standoff[2])], rotation, OPEN, tolerance=0.02, max_steps=120,
             rotation_tolerance=0.08)
    arm.move(standoff, rotation, OPEN, tolerance=0.01, max_steps=80, rotation_tolerance=0.08)
    arm.move(grasp, rotation, OPEN, tolerance=0.006, max_steps=60, speed=0.5, rotation_tolerance=0.08)
    arm.close_gripper(grasp, rotation)
    _pull(arm, drawer, target, rotation)
    released = arm.scene.hand_pose()[0]
    arm.open_gripper(released, rotation, steps=8)
    # back off the handle, still horizontal; the next skill turns the hand down while it moves (a 90-degree turn
    # alone costs over 20 steps) and only descends once it points down
    arm.move(released + drawer.pull * RETREAT + np.r_[0.0, 0.0, 0.03], rotation, OPEN, tolerance=0.02, max_steps=40)


def _pull(arm: Arm, drawer, target: float, rotation: np.ndarray) -> None:
    """Pull the grasped handle until the joint reaches `target`, slowing down near it (the drawer coasts)."""
    history = []
    for _ in range(120):
        history.append(arm.scene.joint_position(drawer.qpos_address))
        remaining = (target - history[-1]) * drawer.opening_sign  # metres still to open
        stuck = len(history) > 10 and abs(history[-1] - history[-6]) < PULL_STALL
        if remaining < PULL_DONE or stuck:
            return
        hand = arm.scene.hand_pose()[0]
        arm.act_towards(hand + drawer.pull * float(np.clip(remaining, 0.0, PULL_STEP)), rotation, CLOSE)


def turn_on(arm: Arm, name: str) -> None:
    """Grasp the knob of `name` across its lever and twist it (positive yaw) until the stove reads on."""
    knob = arm.scene.knob(name)
    yaw = arm.reachable_yaw(closing_yaw(footprint(knob.lever[:, :2]).short_axis_angle))
    grasp = np.r_[knob.axis_point[:2], knob.lever[:, 2].max() - 0.015]
    height = arm.scene.hand_pose()[0][2]
    rotation = downward_rotation(yaw)
    arm.move(np.r_[grasp[:2], max(grasp[2] + 0.08, height - 0.1)], rotation, OPEN, tolerance=0.012, max_steps=120)
    arm.move(grasp, rotation, OPEN, tolerance=0.006, max_steps=60, speed=CAREFUL_SPEED)
    arm.close_gripper(grasp, rotation)
    for _ in range(60):
        if arm.scene.joint_position(knob.qpos_address) > knob.turned_on_from + TWIST_PAST_ON:
            break
        rotation = downward_rotation(yaw_of(arm.scene.hand_pose()[1]) + TWIST_STEP)
        arm.act_towards(grasp, rotation, CLOSE)
    arm.open_gripper(grasp, rotation, steps=8)
    arm.move(grasp + np.r_[0.0, 0.0, 0.08], rotation, OPEN, tolerance=0.02, max_steps=30)


def opening_for_grasp(scene: Scene, region: str, name: str, turn: float = 0.0) -> float:
    """Joint position of the widest drawer opening at which `name` can still be grasped without collisions."""
    drawer = scene.drawer(region)
    openings = np.arange(np.abs(drawer.joint_range).max() - 0.005, MIN_OPENING, -OPENING_STEP) * drawer.opening_sign
    for opening in openings:
        with scene.joint_set_to(drawer.qpos_address, opening):
            if choose_grasp(scene.shape(name), scene.obstacles({name}), turn).collisions == 0:
                return float(opening)
    return float(openings[-1])


def drawer_place_target(scene: Scene, region: str, name: str) -> PlaceTarget:
    """Where `name` goes into the open drawer behind `region`: just above the drawer floor, at the spot along the
    pull direction (within the region) with the most clearance between its footprint and the walls around it."""
    drawer = scene.drawer(region)
    center = scene.region_center(region)
    body = scene.drawer_body_points(region)
    under = body[(np.linalg.norm(body[:, :2] - center[:2], axis=1) < 0.03) & (body[:, 2] < center[2])]
    floor = under[:, 2].max()
    shape = scene.shape(name)
    radius = 0.5 * shape.footprint.long
    obstacles = scene.obstacles({name})
    band = obstacles[(obstacles[:, 2] > floor + 0.006) & (obstacles[:, 2] < floor + shape.zmax - shape.zmin + 0.03)]
    reach = abs(scene.region_half_extent(region)[:2] @ np.abs(drawer.pull[:2])) - 0.005
    spots = [center[:2] + drawer.pull[:2] * shift for shift in np.arange(-reach, reach + 1e-9, 0.0025)]
    clearance = [np.linalg.norm(band[:, :2] - spot, axis=1).min() - radius if len(band) else 1.0 for spot in spots]
    return PlaceTarget(spots[int(np.argmax(clearance))], floor + DRAWER_FLOOR_MARGIN)

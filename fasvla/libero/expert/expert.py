"""The scripted expert: a task's plan run skill by skill on one episode."""

from fasvla.libero.expert.articulated import drawer_place_target, open_drawer, opening_for_grasp, turn_on
from fasvla.libero.expert.controller import OPEN
from fasvla.libero.expert.motions import Arm
from fasvla.libero.expert.pick_place import pick, place, place_target
from fasvla.libero.expert.plans import OpenDrawer, PickAndPlace, Step, TurnOn, plan_task

SETTLE_STEPS = 20  # after the last skill, steps the hand holds still while a released object comes to rest


def run_step(arm: Arm, step: Step) -> bool:
    """Execute one plan step; False when it failed in a way that ends the attempt (an object not grasped)."""
    scene = arm.scene
    if isinstance(step, OpenDrawer):
        if not scene.is_open(step.region):
            target = None if step.make_room_for is None else opening_for_grasp(
                scene, step.region, step.make_room_for, arm.style.grasp_yaw)
            open_drawer(arm, step.region, target)
        return True
    if isinstance(step, TurnOn):
        turn_on(arm, step.name)
        return True
    return pick_and_place(arm, step)


def pick_and_place(arm: Arm, step: PickAndPlace) -> bool:
    held = pick(arm, step.name)
    if held is None:
        return False
    if step.relation == "in" and arm.scene.is_drawer(step.target):
        target = drawer_place_target(arm.scene, step.target, step.name)
    else:
        target = place_target(arm.scene, step.relation, step.target)
    place(arm, step.name, target, held)
    return True


def solve(arm: Arm) -> None:
    """Run the plan of the scene's goal; returns when done or failed, or raises `EpisodeEnded` from inside a skill
    (success with `stop_at_success`, or the step limit)."""
    for step in plan_task(arm.scene.goal, arm.scene.is_drawer):
        if not run_step(arm, step):
            return
    position, rotation = arm.scene.hand_pose()
    for _ in range(SETTLE_STEPS):
        if arm.success_step is not None:
            return
        arm.hold(position, rotation, OPEN, steps=1)

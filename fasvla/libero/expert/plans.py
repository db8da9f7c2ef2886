"""Task plans: a LIBERO task's BDDL goal -> a list of skill steps (pure, testable without a simulator).

Supported goal predicates (every task of libero_object, libero_spatial and libero_goal; the libero_10 tasks made of
them): `In(obj, region)`, `On(obj, object or region)`, `Open(drawer region)` and `Turnon(stove)`. An object that must
go into a drawer gets the drawer opened first (as far as its grasp allows). "Push the plate to the front of the
stove" is solved as a rim grasp and carry: it satisfies the goal, but it is not a literal push. Anything else,
e.g. libero_10's `Close`, raises a ValueError naming the predicate.
"""

from collections.abc import Callable
from dataclasses import dataclass

SUPPORTED_PREDICATES = ("in", "on", "open", "turnon")


@dataclass(frozen=True)
class PickAndPlace:
    name: str
    relation: str  # "in" or "on"
    target: str  # an object or a region


@dataclass(frozen=True)
class OpenDrawer:
    region: str
    make_room_for: str | None = None  # open only as far as this object's grasp stays clear


@dataclass(frozen=True)
class TurnOn:
    name: str


Step = PickAndPlace | OpenDrawer | TurnOn


def check_supported(goal: list[tuple]) -> None:
    """Raise a ValueError naming the goal predicates the expert cannot solve."""
    unsupported = [predicate for predicate in goal if predicate[0].lower() not in SUPPORTED_PREDICATES]
    if unsupported:
        raise ValueError(f"the scripted expert cannot solve goal predicates {unsupported}; it supports "
                         f"{list(SUPPORTED_PREDICATES)}")


def plan_task(goal: list[tuple], is_drawer: Callable[[str], bool]) -> list[Step]:
    """The skill steps for `goal` (BDDL predicates such as ("in", "akita_black_bowl_1", "wooden_cabinet_1_top_region"),
    in order); `is_drawer(name)` tells whether a region lies in a drawer."""
    check_supported(goal)
    steps = []
    for predicate in goal:
        kind = predicate[0].lower()
        if kind in ("in", "on"):
            _, name, target = predicate
            if kind == "in" and is_drawer(target):
                steps.append(OpenDrawer(target, make_room_for=name))
            steps.append(PickAndPlace(name, kind, target))
        elif kind == "open":
            steps.append(OpenDrawer(predicate[1]))
        else:
            steps.append(TurnOn(predicate[1]))
    return steps

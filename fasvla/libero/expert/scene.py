"""Privileged view of a LIBERO episode: poses, collision surfaces, regions, articulations, the BDDL goal.

Everything is read from the MuJoCo state of LIBERO's problem environment (`ControlEnv.env`, a robosuite
`SingleArmEnv` built from the task's BDDL file): `obj_body_id` names every object's root body, `object_sites_dict`
every region (a site with a parent object and, for drawers, the parent's joints), `parsed_problem["goal_state"]`
the goal predicates. A `Scene` is made after each reset: LIBERO's hard reset rebuilds the MuJoCo model.
"""

import contextlib
from dataclasses import dataclass

import mujoco
import numpy as np

from fasvla.libero.expert.geometry import ObjectShape, box_surface_points, triangle_surface_points

SURFACE_SPACING = 0.01  # metres between surface samples, fine enough for the hand's collision checks
DENSE_MESH_VERTICES = 200  # meshes with more vertices are sampled at their vertices only
ROUND_SAMPLES = 16  # points around cylinders, capsules and spheres


def is_support_surface(name: str) -> bool:
    """The floor and the tables (`main_table`, `kitchen_table`, ...) carry objects; they are never obstacles."""
    return name == "floor" or name.endswith("table")


def _round_surface_points(radius: float, half_height: float) -> np.ndarray:
    """(N, 3) points on two rings (bottom and top) of a vertical round shape."""
    angles = np.linspace(0.0, 2 * np.pi, ROUND_SAMPLES, endpoint=False)
    ring = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)  # (S, 2)
    return np.concatenate([np.c_[ring, np.full(len(ring), z)] for z in (-half_height, 0.0, half_height)])


def local_surface_points(model, geom: int) -> np.ndarray:
    """(N, 3) surface samples of one collision geom in its own frame (planes and unknown types: none)."""
    kind, size = model.geom_type[geom], model.geom_size[geom]
    if kind == mujoco.mjtGeom.mjGEOM_MESH:
        mesh = model.geom_dataid[geom]
        first, count = model.mesh_vertadr[mesh], model.mesh_vertnum[mesh]
        vertices = model.mesh_vert[first:first + count]
        if count > DENSE_MESH_VERTICES:
            return vertices.astype(float)
        faces = model.mesh_face[model.mesh_faceadr[mesh]:model.mesh_faceadr[mesh] + model.mesh_facenum[mesh]]
        return triangle_surface_points(vertices.astype(float), faces, SURFACE_SPACING)
    if kind in (mujoco.mjtGeom.mjGEOM_BOX, mujoco.mjtGeom.mjGEOM_ELLIPSOID):
        return box_surface_points(size, SURFACE_SPACING)
    if kind == mujoco.mjtGeom.mjGEOM_CYLINDER:
        return _round_surface_points(size[0], size[1])
    if kind == mujoco.mjtGeom.mjGEOM_CAPSULE:
        return _round_surface_points(size[0], size[1] + size[0])
    if kind == mujoco.mjtGeom.mjGEOM_SPHERE:
        return _round_surface_points(size[0], size[0])
    return np.zeros((0, 3))


@dataclass(frozen=True)
class Drawer:
    """A drawer behind a region: its slide joint, the world direction that opens it, its handle bar."""

    qpos_address: int
    joint_range: np.ndarray  # (2,) metres
    pull: np.ndarray  # (3,) unit world direction the drawer front moves when opening
    opening_sign: float  # +1 or -1: the sign of qpos changes that open the drawer
    open_target: float  # qpos in the middle of the object's "open" range
    handle: np.ndarray  # (N, 3) world points of the handle bar


@dataclass(frozen=True)
class Knob:
    """A stove knob: its hinge, the raised lever to grasp, the hinge angle from which the stove is on."""

    qpos_address: int
    lever: np.ndarray  # (N, 3) world points of the lever's top
    axis_point: np.ndarray  # (3,) a point on the hinge axis
    turned_on_from: float  # radians


class Scene:
    def __init__(self, problem_env):
        self.problem = problem_env  # LIBERO's BDDL problem environment
        self.model, self.data = problem_env.sim.model._model, problem_env.sim.data._data
        robot = problem_env.robots[0]
        self._grip_site = robot.eef_site_id
        self._hand_body = self.model.body(robot.robot_model.eef_name).id
        self._finger_joints = list(robot._ref_gripper_joint_pos_indexes)
        self._wrist = robot._ref_joint_pos_indexes[-1]  # the last arm joint turns the hand about its axis
        self.wrist_middle = float(self.model.jnt_range[robot._ref_joint_indexes[-1]].mean())
        self._local_points = {}  # geom id -> (N, 3) surface samples in the geom frame

    # --- the robot -------------------------------------------------------------------------------------------------

    def hand_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(3,) grip-site position and (3, 3) hand orientation (the frame of the `robot0_eef_quat` observation)."""
        position = self.data.site_xpos[self._grip_site].copy()
        return position, self.data.xmat[self._hand_body].reshape(3, 3).copy()

    def wrist_angle(self) -> float:
        return float(self.data.qpos[self._wrist])

    def finger_opening(self) -> float:
        """Metres between the two fingers' joint positions (about 0.08 fully open, under 0.002 closed on nothing)."""
        left, right = self.data.qpos[self._finger_joints]
        return float(left - right)

    # --- objects ---------------------------------------------------------------------------------------------------

    @property
    def goal(self) -> list[tuple]:
        """The BDDL goal as tuples, e.g. ("in", "alphabet_soup_1", "basket_1_contain_region")."""
        return [tuple(predicate) for predicate in self.problem.parsed_problem["goal_state"]]

    def has_object(self, name: str) -> bool:
        return name in self.problem.obj_body_id

    def body_position(self, name: str) -> np.ndarray:
        return self.data.xpos[self.problem.obj_body_id[name]].copy()

    def _collision_geoms(self, bodies: set[int]) -> list[int]:
        return [g for g in range(self.model.ngeom) if self.model.geom_bodyid[g] in bodies
                and (self.model.geom_contype[g] or self.model.geom_conaffinity[g])]

    def _subtree(self, root: int) -> set[int]:
        """Body `root` and every body below it."""
        bodies = {root}
        for body in range(root + 1, self.model.nbody):  # MuJoCo numbers children after their parents
            if self.model.body_parentid[body] in bodies:
                bodies.add(body)
        return bodies

    def geom_points(self, geoms: list[int]) -> np.ndarray:
        """(N, 3) world surface samples of `geoms`."""
        parts = [np.zeros((0, 3))]
        for geom in geoms:
            if geom not in self._local_points:
                self._local_points[geom] = local_surface_points(self.model, geom)
            rotation = self.data.geom_xmat[geom].reshape(3, 3)
            parts.append(self.data.geom_xpos[geom] + self._local_points[geom] @ rotation.T)
        return np.concatenate(parts)

    def points(self, name: str) -> np.ndarray:
        """(N, 3) world surface samples of an object (its whole body subtree)."""
        return self.geom_points(self._collision_geoms(self._subtree(self.problem.obj_body_id[name])))

    def shape(self, name: str) -> ObjectShape:
        return ObjectShape.from_points(self.points(name))

    def obstacles(self, exclude=()) -> np.ndarray:
        """(N, 3) surface samples of every object and fixture except `exclude` and the support surfaces."""
        names = [n for n in self.problem.obj_body_id if n not in exclude and not is_support_surface(n)]
        return np.concatenate([np.zeros((0, 3))] + [self.points(n) for n in names])

    # --- regions ---------------------------------------------------------------------------------------------------

    def is_region(self, name: str) -> bool:
        return name in self.problem.object_sites_dict

    def region_parent(self, name: str) -> str | None:
        return self.problem.object_sites_dict[name].parent_name

    def region_center(self, name: str) -> np.ndarray:
        return self.data.site_xpos[self.model.site(name).id].copy()

    def region_half_extent(self, name: str) -> np.ndarray:
        """(3,) half size of the region's box along the world axes."""
        rotation = self.data.site_xmat[self.model.site(name).id].reshape(3, 3)
        return np.abs(rotation) @ np.asarray(self.problem.object_sites_dict[name].size, dtype=float)

    def is_drawer(self, name: str) -> bool:
        return self.is_region(name) and bool(self.problem.object_sites_dict[name].joints)

    def is_open(self, name: str) -> bool:
        return bool(self.problem.object_states_dict[name].is_open())

    def drawer(self, region: str) -> Drawer:
        site = self.problem.object_sites_dict[region]
        joint = self.model.joint(site.joints[0])
        open_range = self.problem.get_object(site.parent_name).object_properties["articulation"]["default_open_ranges"]
        sign = -1.0 if max(open_range) < 0 else 1.0
        pull = sign * self.data.xaxis[joint.id].copy()
        geoms = self._collision_geoms({self.model.jnt_bodyid[joint.id]})
        # the handle is the geom sticking out furthest along the pull direction
        handle = max((self.geom_points([g]) for g in geoms), key=lambda points: (points @ pull).max())
        return Drawer(int(self.model.jnt_qposadr[joint.id]), self.model.jnt_range[joint.id].copy(), pull, sign,
                      float(np.mean(open_range)), handle)

    def drawer_body_points(self, region: str) -> np.ndarray:
        """(N, 3) surface samples of the sliding drawer body behind `region` (its floor and walls)."""
        joint = self.model.joint(self.problem.object_sites_dict[region].joints[0])
        return self.geom_points(self._collision_geoms({self.model.jnt_bodyid[joint.id]}))

    def knob(self, name: str) -> Knob:
        subtree = self._subtree(self.problem.obj_body_id[name])
        hinges = [j for j in range(self.model.njnt) if self.model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
                  and self.model.jnt_bodyid[j] in subtree]
        if not hinges:
            raise ValueError(f"object {name!r} has no hinge joint to turn")
        points = self.geom_points(self._collision_geoms({self.model.jnt_bodyid[hinges[0]]}))
        top = points[:, 2].max()
        on_range = self.problem.get_object(name).object_properties["articulation"]["default_turnon_ranges"]
        return Knob(int(self.model.jnt_qposadr[hinges[0]]), points[points[:, 2] > top - 0.02],
                    self.data.xanchor[hinges[0]].copy(), float(min(on_range)))

    # --- joints ----------------------------------------------------------------------------------------------------

    def joint_position(self, qpos_address: int) -> float:
        return float(self.data.qpos[qpos_address])

    @contextlib.contextmanager
    def joint_set_to(self, qpos_address: int, value: float):
        """Look-ahead: the scene with one joint moved (kinematics only), restored exactly afterwards."""
        state = self.problem.sim.get_state()
        self.data.qpos[qpos_address] = value
        mujoco.mj_forward(self.model, self.data)
        try:
            yield self
        finally:
            self.problem.sim.set_state(state)
            self.problem.sim.forward()

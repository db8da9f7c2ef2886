"""Pure geometry of the scripted expert: gripper orientations, rotation vectors, object footprints, surface samples.

Frames: world z points up. The Panda hand pointing straight down with yaw 0 has its x axis along world x, its y axis
along -world y and its z axis along -world z (`R_DOWN`); the fingers close along the hand's y axis. A "yaw" is that
downward pose turned about world z. The gripper is symmetric under a half turn, so yaws live in [-pi/2, pi/2).
"""

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

R_DOWN = np.diag([1.0, -1.0, -1.0])


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` about world z."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def downward_rotation(yaw: float) -> np.ndarray:
    """(3, 3) hand orientation pointing down, turned by `yaw` about world z."""
    return rotation_z(yaw) @ R_DOWN


def horizontal_rotation(approach, finger_axis=(0.0, 0.0, 1.0)) -> np.ndarray:
    """(3, 3) hand orientation whose z axis (the approach) is `approach` and whose y axis (the fingers' closing axis)
    is `finger_axis` made orthogonal to it: the drawer grasp, fingers closing vertically around a handle bar."""
    z = np.asarray(approach, dtype=float) / np.linalg.norm(approach)
    y = np.asarray(finger_axis, dtype=float)
    y = y - z * (y @ z)
    y /= np.linalg.norm(y)
    return np.stack([np.cross(y, z), y, z], axis=1)


def rotation_vector(rotation: np.ndarray) -> np.ndarray:
    """(3,) axis times angle (angle in [0, pi]) of a (3, 3) rotation matrix."""
    return Rotation.from_matrix(rotation).as_rotvec()


def yaw_of(rotation: np.ndarray) -> float:
    """Yaw of a roughly downward hand orientation: the world angle of its x axis."""
    return float(np.arctan2(rotation[1, 0], rotation[0, 0]))


def wrap_half_turn(yaw: float) -> float:
    """The equivalent gripper yaw in [-pi/2, pi/2) (the two fingers are interchangeable)."""
    return float((yaw + np.pi / 2) % np.pi - np.pi / 2)


def finger_axis(yaw: float) -> np.ndarray:
    """(2,) world xy direction along which the fingers close at `yaw`: the hand's y axis, Rz(yaw) (0, -1)."""
    return np.array([np.sin(yaw), -np.cos(yaw)])


def closing_yaw(across_angle: float) -> float:
    """The yaw whose fingers close along the world xy direction at angle `across_angle` (inverse of finger_axis)."""
    return wrap_half_turn(across_angle + np.pi / 2)


def wrist_friendly_yaw(yaw: float, hand_yaw: float, wrist: float, wrist_middle: float = 0.0) -> float:
    """Of the two equivalent yaws `yaw` and `yaw + pi`, the one that leaves the wrist joint nearer the middle of its
    range, expressed as `hand_yaw` plus the shortest turn to it.

    The Panda's last joint turns the downward hand about its axis, which points along -z: turning the hand by
    +d about world z moves that joint by about -d. Its range is +-2.9 rad and it starts near 0.8 rad, so half of the
    yaws are out of reach one way and easy the other (a bowl on the left of the table, say).
    """
    turns = [float(np.angle(np.exp(1j * (candidate - hand_yaw)))) for candidate in (yaw, yaw + np.pi)]
    best = min(turns, key=lambda turn: abs(wrist - turn - wrist_middle))
    return hand_yaw + best


@dataclass(frozen=True)
class Footprint:
    """The oriented rectangle around an object's xy projection."""

    center: np.ndarray  # (2,)
    short_axis_angle: float  # world angle of the rectangle's short side
    short: float  # metres
    long: float


def footprint(xy: np.ndarray, num_angles: int = 46) -> Footprint:
    """Smallest-area rectangle (searched over `num_angles` orientations in [0, pi/2]) around (N, 2) points."""
    angles = np.linspace(0.0, np.pi / 2, num_angles)  # (A,)
    u_axes = np.stack([np.cos(angles), np.sin(angles)])  # (2, A)
    w_axes = np.stack([-np.sin(angles), np.cos(angles)])
    u, w = xy @ u_axes, xy @ w_axes  # (N, A)
    du, dw = u.max(0) - u.min(0), w.max(0) - w.min(0)  # (A,)
    best = int(np.argmin(du * dw))
    mid_u, mid_w = (u.max(0)[best] + u.min(0)[best]) / 2, (w.max(0)[best] + w.min(0)[best]) / 2
    center = mid_u * u_axes[:, best] + mid_w * w_axes[:, best]
    if du[best] <= dw[best]:
        return Footprint(center, float(angles[best]), float(du[best]), float(dw[best]))
    return Footprint(center, float(angles[best] + np.pi / 2), float(dw[best]), float(du[best]))


@dataclass(frozen=True)
class ObjectShape:
    """An object's collision surface as world points, with the summaries the grasp planner uses."""

    points: np.ndarray  # (N, 3)
    footprint: Footprint
    zmin: float
    zmax: float

    @classmethod
    def from_points(cls, points: np.ndarray) -> "ObjectShape":
        return cls(points, footprint(points[:, :2]), float(points[:, 2].min()), float(points[:, 2].max()))


def box_surface_points(half_size, spacing: float) -> np.ndarray:
    """(N, 3) points on the faces of a centred box with half extents `half_size`, about `spacing` apart (the
    corners alone miss collisions with large flat faces such as a drawer wall)."""
    axes = [np.linspace(-h, h, max(2, int(np.ceil(2 * h / spacing)) + 1)) for h in half_size]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # (N, 3)
    on_face = np.isclose(np.abs(grid), np.asarray(half_size)).any(axis=1)
    return grid[on_face]


def triangle_surface_points(vertices: np.ndarray, faces: np.ndarray, spacing: float) -> np.ndarray:
    """(N, 3) points: the (V, 3) vertices plus barycentric grids over every triangle of the (F, 3) faces whose
    longest edge exceeds `spacing` (low-poly convex meshes have few vertices on large faces)."""
    corners = vertices[faces]  # (F, 3 corners, 3)
    edges = np.linalg.norm(corners - np.roll(corners, 1, axis=1), axis=2).max(axis=1)  # (F,)
    divisions = np.ceil(edges / spacing).astype(int)
    samples = [vertices]
    for n in np.unique(divisions[divisions > 1]):
        i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + j <= n
        weights = np.stack([n - i[keep] - j[keep], i[keep], j[keep]], axis=1) / n  # (K, 3) barycentric
        samples.append(np.einsum("kc,fcd->fkd", weights, corners[divisions == n]).reshape(-1, 3))
    return np.concatenate(samples)

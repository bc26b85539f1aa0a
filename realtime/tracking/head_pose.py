"""The driver's head rotation from MediaPipe's facial transform."""

import numpy as np


def view_ray_rotation(direction: np.ndarray) -> np.ndarray:
    """The rotation taking the camera's axis (0, 0, -1) onto ``direction`` (3,), the ray to an off-centre face."""
    axis = np.array([0.0, 0.0, -1.0])
    d = direction / np.linalg.norm(direction)
    v, c = np.cross(axis, d), float(axis @ d)
    if c < -0.999999:
        return np.diag([1.0, -1.0, -1.0])
    k = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + k + k @ k / (1 + c)


def head_rotation(transform: np.ndarray) -> np.ndarray:
    """The head's rotation relative to the line of sight, from MediaPipe's facial transform (4, 4), for an avatar
    that is drawn centred: a face off to the side of the camera's view is seen turned even when it faces the lens."""
    u, _, vt = np.linalg.svd(transform[:3, :3])  # nearest orthonormal matrix: drops the transform's scale
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    if np.linalg.norm(transform[:3, 3]) > 1e-6:
        rotation = view_ray_rotation(transform[:3, 3]).T @ rotation
    return rotation


def head_pitch(rotation: np.ndarray) -> float:
    """Degrees the face of a head turned by ``rotation`` (3, 3) looks up (negative: down)."""
    return float(np.degrees(np.arcsin(np.clip(rotation[1, 2], -1.0, 1.0))))

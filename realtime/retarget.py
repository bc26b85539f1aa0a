"""From the driver's tracked face to the avatar's pose: expression weights and head rotation, frame by frame."""

from dataclasses import dataclass

import numpy as np

from realtime.avatar import blendshape_matrix
from realtime.tracker import FaceObservation


@dataclass(frozen=True)
class RetargetOptions:
    head_pose: bool = True  # follow the driver's head rotation; False keeps the avatar facing the camera
    mirrored: bool = False  # swap left and right (for a driver seen in a mirror)
    hold_when_lost: bool = False  # keep the last pose while the face is lost, instead of easing to neutral
    ease_seconds: float = 0.4  # time constant of the ease to neutral when the face is lost


@dataclass(frozen=True, eq=False)
class AvatarPose:
    expression: np.ndarray  # (53,) ICT expression weights
    rotation: np.ndarray  # (3, 3) head rotation in camera space (y up, z towards the camera)
    tracked: bool  # the driver's face was found in this frame


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


def slerp_to_identity(rotation: np.ndarray, amount: float) -> np.ndarray:
    """Rotate ``rotation`` by ``amount`` in [0, 1] of the way back to the identity (about its own axis)."""
    angle = np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return np.eye(3)
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    axis /= np.linalg.norm(axis) + 1e-12
    remaining = angle * (1 - amount)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(remaining) * k + (1 - np.cos(remaining)) * (k @ k)


class Retargeter:
    """Maps each frame's `FaceObservation` (or None) to an `AvatarPose`; eases to neutral while the face is lost."""

    def __init__(self, expression_names: tuple[str, ...], options: RetargetOptions = RetargetOptions()) -> None:
        self.options = options
        self._matrix = blendshape_matrix(expression_names, mirrored=options.mirrored)
        self._pose = AvatarPose(np.zeros(len(expression_names), np.float32), np.eye(3), tracked=False)

    def update(self, face: FaceObservation | None, dt: float) -> AvatarPose:
        """The pose for this frame; ``dt`` is the time since the previous frame in seconds."""
        if face is not None:
            expression = np.clip(self._matrix @ face.blendshapes, 0.0, 1.0)
            rotation = head_rotation(face.transform) if self.options.head_pose else np.eye(3)
            if self.options.mirrored:
                flip = np.diag([-1.0, 1.0, 1.0])
                rotation = flip @ rotation @ flip
            self._pose = AvatarPose(expression.astype(np.float32), rotation, tracked=True)
        elif self.options.hold_when_lost:
            self._pose = AvatarPose(self._pose.expression, self._pose.rotation, tracked=False)
        else:
            amount = 1.0 - np.exp(-max(dt, 0.0) / self.options.ease_seconds)
            self._pose = AvatarPose(
                (self._pose.expression * (1 - amount)).astype(np.float32),
                slerp_to_identity(self._pose.rotation, amount),
                tracked=False,
            )
        return self._pose

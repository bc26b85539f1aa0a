"""What a head gives the loops, whichever family it is (ICT-FaceKit or FLAME/DECA): the `Pipeline` contract and the
plain values that pass through it, a frame's `AvatarPose` and its posed `AvatarGeometry`.

The live and offline loops know only this module; the CLI chooses the head.
"""

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from realtime.rendering.renderer import AvatarRenderer

# How far a full eyeLook* score turns an eyeball (horizontal, vertical degrees), for every head: a head's own
# eyeLook shapes move only the lids and the skin around the eyes.
GAZE_DEGREES = (30.0, 25.0)


@dataclass(frozen=True, eq=False)
class HeadOffset:
    """The driver's head relative to its resting pose: what the photo look applies to the photo's own head."""

    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) in camera space (y up, z to the camera)
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) centimetres, camera space
    scale: float = 1.0  # > 1: nearer the camera than at rest


@dataclass(frozen=True, eq=False)
class AvatarPose:
    # (E,) the head's expression (ICT: 53 shape weights' changes from the avatar's rest, in [-1, 1]; FLAME: exp, jaw
    # and eye codes)
    expression: np.ndarray
    rotation: np.ndarray  # (3, 3) head rotation in camera space (y up, z towards the camera), for the head look
    tracked: bool  # the driver's face was found in this frame
    offset: HeadOffset = field(default_factory=HeadOffset)  # relative to the driver's rest, for the photo look


@dataclass(frozen=True, eq=False)
class AvatarGeometry:
    vertices: np.ndarray  # (N, 3) model space
    normals: np.ndarray  # (N, 3)
    model_matrix: np.ndarray  # (4, 4) head rotation about the neck


class Pipeline(Protocol):
    """What the offline and live loops drive: `realtime.ict.pipeline`'s `RetargetPipeline` or
    `realtime.deca.pipeline`'s `DecaPipeline`."""

    renderer: AvatarRenderer
    identity_names: tuple[str, ...]  # the prepared identities, in the order select_identity numbers them

    def select_identity(self, index: int) -> None: ...
    def neutral_pose(self) -> AvatarPose: ...
    def calibrate_neutral(self, face: Any) -> None: ...
    def track(self, rgb: np.ndarray, timestamp: float) -> Any | None: ...
    def pose(self, face: Any | None, dt: float) -> AvatarPose: ...
    def geometry(self, pose: AvatarPose) -> AvatarGeometry: ...
    def draw(self, geometry: AvatarGeometry) -> np.ndarray: ...
    def render_pose(self, pose: AvatarPose) -> np.ndarray: ...
    def close(self) -> None: ...


def model_matrix(rotation: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    """(4, 4) rotation (3, 3) about ``pivot`` (3,)."""
    matrix = np.eye(4, dtype=np.float32)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = pivot - rotation @ pivot
    return matrix


def rotate_toward(current: np.ndarray, target: np.ndarray, amount: float) -> np.ndarray:
    """``amount`` in [0, 1] of the way from rotation ``current`` to ``target`` (3, 3), along the shortest arc."""
    delta = current.T @ target
    angle = np.arccos(np.clip((np.trace(delta) - 1) / 2, -1.0, 1.0))
    if angle < 1e-6:
        return target.copy() if amount >= 1 else current.copy()
    axis = np.array([delta[2, 1] - delta[1, 2], delta[0, 2] - delta[2, 0], delta[1, 0] - delta[0, 1]])
    axis /= np.linalg.norm(axis) + 1e-12
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    step = angle * amount
    return current @ (np.eye(3) + np.sin(step) * k + (1 - np.cos(step)) * (k @ k))


def blend(start: AvatarPose, end: AvatarPose, amount: float) -> AvatarPose:
    """``amount`` in [0, 1] of the way from ``start`` to ``end``; tracked as ``end`` is."""
    expression = (start.expression + (end.expression - start.expression) * amount).astype(np.float32)
    a, b = start.offset, end.offset
    offset = HeadOffset(rotate_toward(a.rotation, b.rotation, amount), a.translation + (b.translation - a.translation)
                        * amount, a.scale + (b.scale - a.scale) * amount)
    return AvatarPose(expression, rotate_toward(start.rotation, end.rotation, amount), end.tracked, offset)

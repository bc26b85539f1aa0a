"""The driver's head: its rotation from MediaPipe's facial transform (the head look), its motion relative to its
resting pose from the face's rigid landmarks (the photo look), and where MediaPipe's canonical face (what both move)
sits on a head model."""

import functools
from dataclasses import dataclass

import numpy as np

from realtime.geometry.fitting import fit_similarity, inter_ocular_distance
from realtime.paths import PACKAGE_DATA
from realtime.tracking.filtering import OneEuroFilter, OneEuroParameters, RotationFilter

SETTLE_FRAMES = 5  # the resting head is the mean of the first tracked frames, until the user calibrates one
CANONICAL_FACE_PATH = PACKAGE_DATA / "mediapipe_canonical_face.txt"  # tools/build_canonical_face.py


@functools.cache
def canonical_face() -> tuple[np.ndarray, np.ndarray]:
    """MediaPipe's canonical face: (468, 3) vertices in centimetres, and (468,) the weights of its pose fit."""
    table = np.loadtxt(CANONICAL_FACE_PATH)
    vertices, weights = table[:, :3], table[:, 3]
    vertices.flags.writeable = weights.flags.writeable = False
    return vertices, weights


@dataclass(frozen=True, eq=False)
class CanonicalFrame:
    """Where MediaPipe's canonical face sits on a head model. MediaPipe's transform rotates the face about the
    canonical origin and reports that origin's position in centimetres: a head that moves as the driver's turns
    about ``origin`` and moves ``scale`` model units per centimetre."""

    origin: np.ndarray  # (3,) model space
    scale: float  # model units per canonical centimetre


def canonical_frame(points: np.ndarray, indices: np.ndarray) -> CanonicalFrame:
    """The canonical face fitted onto a head: ``points`` (K, 3) model space, where the head has MediaPipe landmarks
    ``indices`` (K,); weighted as MediaPipe's own pose fit where the head has all of its landmarks, else evenly."""
    vertices, weights = canonical_face()
    indices = np.asarray(indices)
    keep = indices < len(vertices)
    chosen = weights[indices[keep]]
    if not np.isclose(chosen.sum(), weights.sum()):
        chosen = np.ones(len(chosen))
    _, scale, translation = fit_similarity(vertices[indices[keep]], np.asarray(points, np.float64)[keep], chosen)
    return CanonicalFrame(translation.astype(np.float32), scale)


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


# The points of the face that no expression moves: the eye corners, the bridge of the nose, the upper forehead and the
# temples. The head's motion is fitted to them alone: MediaPipe's own transform also weighs the cheeks and the sides
# of the nose, which a smile raises, so the photo look's head rose with every smile on top of the smile itself (1.3x
# the driver's vertical motion in self-reenactment; fitted here, the landmarks' distance to the driver's 1.7 -> 1.0).
RIGID_LANDMARKS = (33, 133, 263, 362, 168, 6, 197, 195, 10, 109, 338, 67, 297, 127, 356)


def rigid_pose(landmarks: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """MediaPipe's canonical face fitted to the `RIGID_LANDMARKS` of a face's (478, 3) ``landmarks`` (pixels, y down,
    z scaled like x): its rotation (3, 3; camera space, y up, z towards the camera), scale (pixels per canonical
    centimetre) and the canonical origin's position (3,; pixels, y up)."""
    vertices, _ = canonical_face()
    index = list(RIGID_LANDMARKS)
    points = np.asarray(landmarks, np.float64)[index] * np.array([1.0, -1.0, -1.0])  # MediaPipe's z grows away
    return fit_similarity(vertices[index], points, np.ones(len(index)))


class HeadMotion:
    """The driver's head rotation, position and size relative to its rest (the calibrated face, else the first
    tracked frames): ``rotation, translation, scale = motion(landmarks, dt)`` (the fields of a
    `realtime.head.HeadOffset`), One Euro filtered.

    Rotation and position come from the face's rigid landmarks (`rigid_pose`): the canonical origin's motion in the
    image, in canonical centimetres (at the rest's scale). The size is the inter-ocular distance in 3D (MediaPipe's
    depth estimate changes with the expression, the distance between the eyes does not).
    """

    def __init__(self, parameters: OneEuroParameters | None, mirrored: bool = False) -> None:
        self._filter = OneEuroFilter(parameters) if parameters is not None else None
        self._rotation_filter = RotationFilter(parameters) if parameters is not None else None
        self._flip = np.diag([-1.0, 1.0, 1.0]) if mirrored else np.eye(3)
        self._rest: list[tuple[np.ndarray, np.ndarray]] = []  # (rotation, (x, y, pixels per cm, face size)) each
        self._rest_pose: tuple[np.ndarray, np.ndarray] | None = None  # their mean, once per change of them
        self._calibrated = False

    def calibrate(self, landmarks: np.ndarray) -> None:
        """Take this face's head pose as the rest."""
        self._rest, self._rest_pose = [self._pose(landmarks)], None
        self._calibrated = True

    def reset_filter(self) -> None:
        if self._filter is not None:
            self._filter.reset()
            self._rotation_filter.reset()

    def _pose(self, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The head's rotation and (x, y, pixels per canonical centimetre, face size), mirrored if asked."""
        rotation, scale, origin = rigid_pose(landmarks)
        position = self._flip[:2, :2] @ origin[:2]
        return self._flip @ rotation @ self._flip, np.r_[position, scale, inter_ocular_distance(landmarks)]

    def __call__(self, landmarks: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray, float]:
        rotation, position = self._pose(landmarks)
        if not self._calibrated and len(self._rest) < SETTLE_FRAMES:
            self._rest.append((rotation, position))
            self._rest_pose = None
        if self._rest_pose is None:
            u, _, vt = np.linalg.svd(np.mean([rest[0] for rest in self._rest], axis=0))
            self._rest_pose = u @ vt, np.mean([rest[1] for rest in self._rest], axis=0)
        rest_rotation, rest_position = self._rest_pose
        turned = rotation @ rest_rotation.T
        if self._rotation_filter is not None:
            turned = self._rotation_filter(turned, dt)
        if min(rest_position[2:]) < 1e-6:
            return turned, np.zeros(3), 1.0
        moved = np.r_[(position[:2] - rest_position[:2]) / rest_position[2], position[3] / rest_position[3]]
        if self._filter is not None:
            moved = self._filter(moved, dt)
        return turned, np.r_[moved[:2], 0.0], float(moved[2])

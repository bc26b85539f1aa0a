"""Fit the ICT head to one photo's landmarks: identity coefficients, the photo's own expression, and a camera.

The camera is weak perspective (the photo's face is far from the lens compared with its depth):
``pixel = scale * [x, -y] of (rotation @ point) + translation``. The fit alternates a pose step (affine fit, then the
nearest scaled rotation) and a shape step (bounded linear least squares on identity and expression with priors), in
units of the inter-ocular distance so that the priors mean the same for every photo size.
"""

import logging
from dataclasses import dataclass

import numpy as np

from realtime.geometry.fitting import (
    bounded_least_squares,
    fit_weak_perspective,
    inter_ocular_distance,
    weak_perspective_projection,
)
from realtime.geometry.normals import VertexNormals
from realtime.ict.landmark_map import LandmarkMap
from realtime.ict.model import IctModel
from realtime.tracking.landmarks import CHIN, FACE_OVAL, FOREHEAD, IRIS, LEFT_EYE_OUTER, RIGHT_EYE_OUTER

log = logging.getLogger(__name__)

# Mean landmark error (of the inter-ocular distance) above which the avatar is visibly unlike the photo: frontal photos
# fit within 0.03, a head turned 45 degrees about 0.08 to 0.10 (the tracker guesses the hidden half of the face).
FIT_ERROR_BOUND = 0.05
TURNED_DEGREES = 25.0  # a head turned (or tilted up or down) this much is the likely reason for a bad fit


@dataclass(frozen=True)
class FitOptions:
    iterations: int = 6
    identity_prior: float = 5e-4  # weight of |identity coefficients|^2 (coefficients are in standard deviations)
    expression_prior: float = 5e-3  # weight of |expression - tracker's blendshape estimate|^2
    oval_weight: float = 0.5  # outline landmarks slide along the silhouette: trust them less


@dataclass(frozen=True, eq=False)
class IdentityFit:
    identity: np.ndarray  # (100,) ICT identity coefficients
    expression: np.ndarray  # (53,) the photo's expression weights in [0, 1]
    rotation: np.ndarray  # (3, 3) model -> camera (y up, z towards the camera)
    scale: float  # pixels per centimetre
    translation: np.ndarray  # (2,) pixels
    error: float  # mean reprojection error of the trusted landmarks / inter-ocular distance

    def photo_projection(self) -> np.ndarray:
        """(4, 4) model space -> photo pixel x, y (y down) and depth (larger = farther, in pixels)."""
        return weak_perspective_projection(self.rotation, self.scale, self.translation)

    def project(self, points: np.ndarray) -> np.ndarray:
        """(K, 3) model-space points -> (K, 2) photo pixels."""
        return (points @ self.photo_projection()[:2, :3].T) + self.translation


def fit_identity(
    model: IctModel,
    landmark_map: LandmarkMap,
    landmarks: np.ndarray,
    expression_estimate: np.ndarray,
    options: FitOptions = FitOptions(),
) -> IdentityFit:
    """Fit to (478, 2+) photo ``landmarks`` in pixels; ``expression_estimate`` (53,) is the tracker's guess."""
    pixels = np.asarray(landmarks, np.float64)[:, :2]
    used = np.setdiff1d(np.arange(len(pixels)), IRIS)
    weights = np.where(np.isin(used, FACE_OVAL), options.oval_weight, 1.0)
    pixels = pixels[used]
    iod = inter_ocular_distance(np.asarray(landmarks))

    subset = LandmarkMap(landmark_map.vertex_ids[used], landmark_map.weights[used])
    mean = subset.points(model.neutral).astype(np.float64)  # (K, 3)
    bases = np.concatenate([subset.points(model.identity_basis), subset.points(model.expression_basis)])  # (C, K, 3)
    n_identity, n_coefficients = len(model.identity_basis), len(bases)
    estimate = np.clip(expression_estimate, 0, 1)
    prior_target = np.r_[np.zeros(n_identity), estimate]
    prior_weight = np.sqrt(np.r_[np.full(n_identity, options.identity_prior),
                                 np.full(n_coefficients - n_identity, options.expression_prior)])
    # gaze barely moves the skin landmarks (the irises are not used): keep the tracker's estimate for it
    gaze = np.array([name.startswith("eyeLook") for name in model.expression_names])
    lower = np.r_[np.full(n_identity, -np.inf), np.where(gaze, estimate, 0.0)]
    upper = np.r_[np.full(n_identity, np.inf), np.where(gaze, estimate, 1.0)]
    normals = subset.points(VertexNormals(model.triangles_of("face", "head_neck"), model.n_vertices)(model.neutral))

    coefficients = prior_target.copy()
    rotation = np.eye(3)
    for _ in range(options.iterations):
        # MediaPipe guesses landmarks on the far side of a turned head: trust only what faces the camera
        facing = (normals @ rotation.T)[:, 2] / np.linalg.norm(normals, axis=1)
        visible_weights = weights * np.clip(facing / 0.3, 0.05, 1.0)
        row_weight = np.repeat(visible_weights, 2) / iod
        shape = mean + np.tensordot(coefficients, bases, axes=1)
        rotation, scale, translation = fit_weak_perspective(shape, pixels, visible_weights)
        linear = scale * np.diag([1.0, -1.0]) @ rotation[:2]  # (2, 3): model -> pixels, without translation
        design = np.einsum("ij,ckj->kic", linear, bases).reshape(-1, n_coefficients)  # (2K, C)
        target = (pixels - mean @ linear.T - translation).reshape(-1)
        a = np.vstack([design * row_weight[:, None], np.diag(prior_weight)])
        b = np.r_[target * row_weight, prior_weight * prior_target]
        coefficients = bounded_least_squares(a, b, lower, upper)

    shape = mean + np.tensordot(coefficients, bases, axes=1)
    rotation, scale, translation = fit_weak_perspective(shape, pixels, weights)
    fit = IdentityFit(
        identity=coefficients[:n_identity].astype(np.float32),
        expression=coefficients[n_identity:].astype(np.float32),
        rotation=rotation,
        scale=scale,
        translation=translation,
        error=0.0,
    )
    trusted = visible_weights >= 0.5  # the landmarks the fit relies on: not the outline, facing the camera
    error = np.linalg.norm(fit.project(shape) - pixels, axis=1)[trusted].mean() / iod
    fit = IdentityFit(fit.identity, fit.expression, rotation, scale, translation, float(error))
    if (warning := fit_warning(fit, landmarks)) is not None:
        log.warning("%s", warning)
    return fit


def fit_warning(fit: IdentityFit, landmarks: np.ndarray) -> str | None:
    """Why the fit is poor and what photo would do better, when its error is above `FIT_ERROR_BOUND`; else None."""
    if fit.error <= FIT_ERROR_BOUND:
        return None
    yaw, pitch = head_turn(fit, landmarks)
    if abs(yaw) >= TURNED_DEGREES:
        why = (f"the head is turned {abs(yaw):.0f} degrees to the side, so the landmarks of its far half are the "
               "tracker's guesses")
    elif abs(pitch) >= TURNED_DEGREES:
        why = (f"the head is tilted {abs(pitch):.0f} degrees {'up' if pitch > 0 else 'down'}, so part of the face "
               "is hidden and guessed")
    else:
        why = ("the landmarks do not fit a face shape well (something in front of the face, a strong grimace, or a "
               "blurred or very small face)")
    return (f"the head fits the photo's face with a landmark error of {fit.error:.3f} of the eye distance (above "
            f"{FIT_ERROR_BOUND}): {why}; the avatar may look unlike the photo: a sharp photo of the face looking "
            "into the camera, uncovered, fits best")


def head_turn(fit: IdentityFit, landmarks: np.ndarray) -> tuple[float, float]:
    """Degrees the photo's head is turned (yaw) and tilted up (pitch).

    From the tracker's 3D landmarks when they have depth: the line between the outer eye corners, and the forehead to
    the chin (the fit's rotation underestimates a turned head, whose shape it partly explains by identity); else from
    the fit's rotation.
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.shape[1] >= 3 and np.ptp(landmarks[:, 2]) > 0:
        eyes = landmarks[LEFT_EYE_OUTER] - landmarks[RIGHT_EYE_OUTER]
        down = landmarks[CHIN] - landmarks[FOREHEAD]
        return float(np.degrees(np.arctan2(eyes[2], eyes[0]))), float(np.degrees(np.arctan2(-down[2], down[1])))
    facing = fit.rotation[:, 2]  # where the face looks, in the camera's frame (x right, y up, z towards the camera)
    return (float(np.degrees(np.arctan2(facing[0], facing[2]))),
            float(np.degrees(np.arcsin(np.clip(facing[1], -1.0, 1.0)))))

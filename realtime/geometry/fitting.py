"""Fitting a head to landmarks, whatever the head model: the weak-perspective camera, bounded least squares, and the
similarity between two point sets.

The camera is weak perspective (a face is far from the lens compared with its depth):
``pixel = scale * [x, -y] of (rotation @ point) + translation``.
"""

import numpy as np

from realtime.tracking.landmarks import LEFT_EYE_OUTER, RIGHT_EYE_OUTER


def weak_perspective_projection(rotation: np.ndarray, scale: float, translation: np.ndarray) -> np.ndarray:
    """(4, 4) model -> photo pixels and depth for ``pixel = scale * [x, -y] of (rotation @ point) + translation``;
    depth grows away from the camera."""
    matrix = np.eye(4, dtype=np.float32)
    matrix[:3, :3] = scale * np.diag([1.0, -1.0, -1.0]) @ rotation
    matrix[:2, 3] = translation
    return matrix


def inter_ocular_distance(landmarks: np.ndarray) -> float:
    """Distance between the outer eye corners; in 3D (MediaPipe's z is scaled like x), so a turned head keeps it."""
    return float(np.linalg.norm(landmarks[RIGHT_EYE_OUTER] - landmarks[LEFT_EYE_OUTER]))


def fit_weak_perspective(
    points: np.ndarray, pixels: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation, scale and translation best mapping (K, 3) ``points`` onto (K, 2) ``pixels``.

    Solves the affine camera in closed form, then takes the nearest scaled rotation (SVD of its two rows).
    """
    design = np.c_[points, np.ones(len(points))] * weights[:, None]
    affine, *_ = np.linalg.lstsq(design, pixels * weights[:, None], rcond=None)  # (4, 2)
    rows = affine[:3].T * np.array([[1.0], [-1.0]])  # undo the y flip: rows are scale * rotation rows 0 and 1
    u, singular, vt = np.linalg.svd(rows, full_matrices=False)
    top = u @ vt
    rotation = np.vstack([top, np.cross(top[0], top[1])])
    scale = float(singular.mean())
    translation = np.average(pixels - scale * (points @ rotation[:2].T) * [1.0, -1.0], axis=0, weights=weights)
    return rotation, scale, translation


def bounded_least_squares(a: np.ndarray, b: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """argmin |a x - b|^2 with lower <= x <= upper, by an active-set iteration on the normal equations.

    Each step solves for the free variables with the others held at their bounds, clips, and frees the bound
    variables whose gradient points inside. Small dense problems (hundreds of unknowns) converge in a few steps.
    """
    hessian, rhs = a.T @ a, a.T @ b
    x = np.clip(np.linalg.solve(hessian, rhs), lower, upper)
    for _ in range(100):
        gradient = hessian @ x - rhs
        held = ((x <= lower) & (gradient > 0)) | ((x >= upper) & (gradient < 0))
        free = ~held
        updated = x.copy()
        updated[free] = np.linalg.solve(hessian[np.ix_(free, free)], rhs[free] - hessian[np.ix_(free, held)] @ x[held])
        updated = np.clip(updated, lower, upper)
        if np.allclose(updated, x, atol=1e-7):
            break
        x = updated
    return x


def fit_similarity(source: np.ndarray, target: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Rotation (3, 3), scale and translation (3,) best mapping (K, 3) ``source`` onto (K, 3) ``target`` in the
    weighted least-squares sense: ``target ~ scale * rotation @ source + translation`` (Umeyama 1991)."""
    w = np.asarray(weights, np.float64) / np.sum(weights)
    source_mean, target_mean = w @ source, w @ target
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd((b * w[:, None]).T @ a)
    flip = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ flip @ vt
    scale = float(np.sum(singular * np.diag(flip)) / (w @ np.sum(a * a, axis=1)))
    return rotation, scale, target_mean - scale * rotation @ source_mean

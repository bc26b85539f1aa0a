"""Drive FLAME from the tracker's landmarks alone: per frame, fit expression (50) and jaw rotation (3), no networks.

`FlameLandmarks` says where tracked MediaPipe landmarks sit on FLAME (a barycentric point on one triangle each), read
from FLAME's ``mediapipe_landmark_embedding.npz`` or from DECA's ``landmark_embedding.npy`` (its 51 static inner
68-scheme points, paired with MediaPipe indices by `MEDIAPIPE_FOR_68`).

`ExpressionFitter` runs, per frame:

* once per frame, a pose step: the weak-perspective camera (`realtime.ict.identity_fit.fit_weak_perspective`) that best
  maps the current FLAME landmark points onto the pixels. Head rotation lives in this camera, so FLAME's global, neck
  and eye joints stay at rest, as in DECA;
* then a few Gauss-Newton steps, each a bounded linear least squares (`realtime.ict.identity_fit.bounded_least_squares`)
  on expression, jaw and a small camera update together, with Tikhonov priors pulling expression and jaw toward zero,
  in units of the inter-ocular distance.

With only the jaw rotated, each landmark point has the closed form (precomputed per landmark, see `_LandmarkBasis`)

    p = S(ψ) + SP f + R (M(ψ) + MP f) + W J(ψ),        f = (R - I).flatten() (the jaw's pose-corrective feature)

where R is the jaw rotation, S the part skinned to the unrotated joints, M the part skinned to the jaw (relative to the
jaw joint J) and W the jaw's total skinning weight. It is linear in ψ for a fixed R; the jaw enters through R, whose
derivative comes from central differences of Rodrigues' formula. The jaw-line contour slides over the face as the
head turns, so only inner landmarks are used (no face oval, no irises).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.deca.flame import N_FACES, FlameIdentity, FlameModel, batch_rodrigues
from realtime.deca.safe_pickle import load_landmark_embedding
from realtime.errors import UserError
from realtime.geometry.fitting import bounded_least_squares, fit_weak_perspective, inter_ocular_distance
from realtime.tracking.landmarks import FACE_OVAL, IRIS

log = logging.getLogger(__name__)

N_MEDIAPIPE = 478
JAW_JOINT = 2
JAW_POSE_FEATURES = slice(9, 18)  # rows of posedirs driven by the jaw: pose_feature skips the root, then neck, jaw
EXPECTED_MEDIAPIPE_EMBEDDING = "(expected FLAME's mediapipe_landmark_embedding.npz)"

# MediaPipe face-mesh index for each static (inner) point of the 68-landmark scheme, 17..67, in the 68 scheme's own
# left-to-right image order (36 is the subject's right outer eye corner, MediaPipe 33). Chosen from the face-mesh
# topology: brows on MediaPipe's upper brow row; the nose bridge 27..30 evenly spaced from the nasion (168) to the tip
# (4, the tip as seen from the front; 1 sits lower, almost on the subnasale 2); nostril points on the alar base;
# eye and lip points at the same place along MediaPipe's eye and lip loops (e.g. 49/53 two steps from the centre like
# 59/55). Checked by drawing them on a tracked photo (skimage's astronaut).
MEDIAPIPE_FOR_68 = {
    # brows: the subject's right (17..21, outer to inner), left (22..26, inner to outer)
    17: 70, 18: 63, 19: 105, 20: 66, 21: 107, 22: 336, 23: 296, 24: 334, 25: 293, 26: 300,
    # nose bridge (27..30) and base (31..35)
    27: 168, 28: 197, 29: 195, 30: 4, 31: 98, 32: 97, 33: 2, 34: 326, 35: 327,
    # eyes: right 36..41 and left 42..47, each from the outer-left corner clockwise in the image
    36: 33, 37: 160, 38: 158, 39: 133, 40: 153, 41: 144, 42: 362, 43: 385, 44: 387, 45: 263, 46: 373, 47: 380,
    # outer lip 48..59 and inner lip 60..67, clockwise from the right mouth corner
    48: 61, 49: 39, 50: 37, 51: 0, 52: 267, 53: 269, 54: 291, 55: 405, 56: 314, 57: 17, 58: 84, 59: 181,
    60: 78, 61: 82, 62: 13, 63: 312, 64: 308, 65: 317, 66: 14, 67: 87,
}  # fmt: skip
STATIC_68 = tuple(range(17, 68))  # DECA's static_lmk_* rows, in this order


@dataclass(frozen=True, eq=False)
class FlameLandmarks:
    """Where tracker landmarks sit on FLAME: a barycentric point on a triangle and the MediaPipe landmark it matches."""

    faces: np.ndarray  # (K,) int64 FLAME triangle indices
    bary: np.ndarray  # (K, 3) float64 barycentric coordinates on those triangles
    mediapipe: np.ndarray  # (K,) int64 indices into the tracker's 478 landmarks

    @classmethod
    def from_mediapipe_embedding(cls, path: Path) -> "FlameLandmarks":
        """FLAME's ``mediapipe_landmark_embedding.npz``: lmk_face_idx (K,), lmk_b_coords (K, 3) and landmark_indices
        (K,) MediaPipe indices; read with ``allow_pickle=False``."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: file not found {EXPECTED_MEDIAPIPE_EMBEDDING}")
        try:
            with np.load(path, allow_pickle=False) as data:
                faces, bary, mediapipe = (data[key] for key in ("lmk_face_idx", "lmk_b_coords", "landmark_indices"))
        except KeyError as err:
            raise UserError(f"{path}: missing {err} {EXPECTED_MEDIAPIPE_EMBEDDING}") from err
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable .npz ({err}) {EXPECTED_MEDIAPIPE_EMBEDDING}") from err
        faces, mediapipe = faces.reshape(-1), mediapipe.reshape(-1)
        k = len(faces)
        if bary.shape != (k, 3) or mediapipe.shape != (k,) or faces.dtype.kind not in "iu":
            shapes = f"{faces.shape}, {bary.shape}, {mediapipe.shape}"
            raise UserError(f"{path}: arrays of shapes {shapes}, not (K,), (K, 3), (K,) {EXPECTED_MEDIAPIPE_EMBEDDING}")
        return cls._checked(path, faces, bary, mediapipe)

    @classmethod
    def from_deca_embedding(cls, path: Path) -> "FlameLandmarks":
        """DECA's ``landmark_embedding.npy``: its 51 static inner points (68-scheme 17..67) and `MEDIAPIPE_FOR_68`."""
        embedding = load_landmark_embedding(Path(path))
        mediapipe = np.array([MEDIAPIPE_FOR_68[i] for i in STATIC_68])
        return cls._checked(
            Path(path), embedding["static_lmk_faces_idx"], embedding["static_lmk_bary_coords"], mediapipe
        )

    @classmethod
    def _checked(cls, path: Path, faces: np.ndarray, bary: np.ndarray, mediapipe: np.ndarray) -> "FlameLandmarks":
        faces, mediapipe = faces.astype(np.int64), mediapipe.astype(np.int64)
        bary = bary.astype(np.float64)
        if faces.min() < 0 or faces.max() >= N_FACES:
            raise UserError(f"{path}: triangle indices outside FLAME's {N_FACES} triangles")
        if mediapipe.min() < 0 or mediapipe.max() >= N_MEDIAPIPE:
            raise UserError(f"{path}: MediaPipe indices outside 0..{N_MEDIAPIPE - 1}")
        if not np.isfinite(bary).all():
            raise UserError(f"{path}: barycentric coordinates are not finite")
        return cls(faces=faces, bary=bary, mediapipe=mediapipe)

    def inner(self) -> "FlameLandmarks":
        """Without the face oval (it slides along the silhouette as the head turns) and the irises."""
        keep = ~np.isin(self.mediapipe, FACE_OVAL + IRIS)
        return FlameLandmarks(self.faces[keep], self.bary[keep], self.mediapipe[keep])

    def corners(self, triangles: np.ndarray) -> np.ndarray:
        """(K, 3) FLAME vertex indices of each landmark's triangle; ``triangles`` is `FlameModel.faces`."""
        return triangles[self.faces]

    def points(self, vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """(K, 3) landmark points on posed ``vertices`` (5023, 3) of a mesh with ``triangles`` (`FlameModel.faces`)."""
        return np.einsum("kc,kcd->kd", self.bary, vertices[self.corners(triangles)])


class _LandmarkBasis:
    """The landmark points as functions of expression and jaw rotation, with the other joints at rest (module doc)."""

    def __init__(self, model: FlameModel, identity: FlameIdentity, landmarks: FlameLandmarks, n_exp: int) -> None:
        corners = landmarks.corners(model.faces)  # (K, 3)
        weights = model.lbs_weights[corners].astype(np.float64)  # (K, 3, 5)
        jaw_weight = weights[..., JAW_JOINT]
        by_jaw = landmarks.bary * jaw_weight  # barycentric weight of each corner skinned to the jaw
        by_rest = landmarks.bary * (weights.sum(axis=-1) - jaw_weight)

        v_shaped = identity.v_shaped[corners].astype(np.float64)  # (K, 3, 3)
        exprdirs = model.exprdirs[corners, :, :n_exp].astype(np.float64)  # (K, 3, 3, n)
        n_vertices = len(model.v_template)
        posedirs = model.posedirs[JAW_POSE_FEATURES].reshape(9, n_vertices, 3)[:, corners].astype(np.float64)
        posedirs = posedirs.transpose(1, 2, 3, 0)  # (K, 3 corners, 3, 9)

        self.joint = identity.joints[JAW_JOINT].astype(np.float64)  # (3,)
        self.joint_exprdirs = identity.joint_exprdirs[JAW_JOINT, :, :n_exp].astype(np.float64)  # (3, n)
        self.jaw_weight = by_jaw.sum(axis=1)  # (K,) W
        self.rest = np.einsum("kc,kcd->kd", by_rest, v_shaped)  # (K, 3) S(0)
        self.rest_exprdirs = np.einsum("kc,kcdn->kdn", by_rest, exprdirs)  # (K, 3, n)
        self.rest_posedirs = np.einsum("kc,kcdf->kdf", by_rest, posedirs)  # (K, 3, 9) SP
        self.jaw = np.einsum("kc,kcd->kd", by_jaw, v_shaped) - self.jaw_weight[:, None] * self.joint  # M(0)
        self.jaw_exprdirs = (
            np.einsum("kc,kcdn->kdn", by_jaw, exprdirs) - self.jaw_weight[:, None, None] * self.joint_exprdirs
        )
        self.jaw_posedirs = np.einsum("kc,kcdf->kdf", by_jaw, posedirs)  # (K, 3, 9) MP

    def points(self, expression: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """(K, 3) landmark points for ``expression`` (n,) and the jaw's (3, 3) ``rotation``."""
        feature = (rotation - np.eye(3)).reshape(-1)
        rest = self.rest + self.rest_exprdirs @ expression + self.rest_posedirs @ feature
        jaw = self.jaw + self.jaw_exprdirs @ expression + self.jaw_posedirs @ feature
        return rest + jaw @ rotation.T + self.jaw_weight[:, None] * (self.joint + self.joint_exprdirs @ expression)

    def expression_jacobian(self, rotation: np.ndarray) -> np.ndarray:
        """(K, 3, n) d points / d expression at the jaw ``rotation`` (exact: the points are linear in expression)."""
        return (
            self.rest_exprdirs
            + np.matmul(rotation, self.jaw_exprdirs)
            + self.jaw_weight[:, None, None] * self.joint_exprdirs
        )

    def jaw_jacobian(self, expression: np.ndarray, jaw: np.ndarray, step: float = 1e-4) -> np.ndarray:
        """(K, 3, 3) d points / d jaw axis-angle: the points are linear in R, so only dR/dθ is differenced."""
        rotation = rodrigues(jaw)
        jaw_part = self.jaw + self.jaw_exprdirs @ expression + self.jaw_posedirs @ (rotation - np.eye(3)).reshape(-1)
        shifts = np.eye(3) * step
        d_rotations = (batch_rodrigues(jaw + shifts) - batch_rodrigues(jaw - shifts)) / (2 * step)  # (3, 3, 3)
        columns = []
        for d_rotation in d_rotations:
            d_feature = d_rotation.reshape(-1)
            columns.append(
                self.rest_posedirs @ d_feature + jaw_part @ d_rotation.T + (self.jaw_posedirs @ d_feature) @ rotation.T
            )
        return np.stack(columns, axis=-1)


def rodrigues(axis_angle: np.ndarray) -> np.ndarray:
    return batch_rodrigues(np.asarray(axis_angle, np.float64).reshape(1, 3))[0]


class ExpressionFitter:
    """FLAME expression and jaw from one face's tracked landmarks, frame after frame.

    State: the previous frame's expression and jaw. Each `fit` starts from them (the pose step's first shape and the
    Gauss-Newton linearisation point), so a few iterations per frame suffice while the face moves smoothly. Call
    `reset` when the tracked face is lost or changes. One fitter per tracked face; not thread-safe.
    """

    def __init__(
        self,
        model: FlameModel,
        identity: FlameIdentity,
        landmarks: FlameLandmarks,
        n_exp: int = 50,
        expression_prior: float = 1e-4,
        jaw_prior: float = 1e-3,
        iterations: int = 3,
        expression_bound: float = 3.0,
        jaw_lower: tuple[float, float, float] = (0.0, -0.1, -0.1),
        jaw_upper: tuple[float, float, float] = (0.5, 0.1, 0.1),
    ) -> None:
        """``expression_prior``/``jaw_prior``: weights of |ψ|² and |θ|² against the squared reprojection error in
        inter-ocular distances. Jaw bounds (radians, axis-angle x/y/z): x opens the mouth, y and z move it sideways."""
        self.landmarks = landmarks.inner()
        if len(self.landmarks.faces) < 8:
            raise ValueError(f"{len(self.landmarks.faces)} inner landmarks: too few to fit expression and jaw")
        self.n_exp = n_exp
        self.iterations = iterations
        self._basis = _LandmarkBasis(model, identity, self.landmarks, n_exp)
        # unknowns of a step: expression, jaw, then the camera's update (no prior, unbounded; see `WeakPerspective`)
        self._prior = np.sqrt(np.r_[np.full(n_exp, expression_prior), np.full(3, jaw_prior), np.zeros(6)])
        self._lower = np.r_[np.full(n_exp, -expression_bound), jaw_lower, np.full(6, -np.inf)]
        self._upper = np.r_[np.full(n_exp, expression_bound), jaw_upper, np.full(6, np.inf)]
        self.reset()

    def reset(self) -> None:
        """Forget the previous frame: the next fit starts from the neutral face."""
        self._expression = np.zeros(self.n_exp)
        self._jaw = np.zeros(3)

    def points(self, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
        """(K, 3) the points of `landmarks` (the inner ones) for ``expression`` (n_exp,) and ``jaw`` (3,)."""
        return self._basis.points(np.asarray(expression, np.float64), rodrigues(jaw))

    def fit(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Expression (n_exp,), jaw axis-angle (3,) and the error (mean reprojection / inter-ocular distance) for the
        tracker's (478, 2+) landmark ``pixels`` (x right, y down)."""
        pixels = np.asarray(pixels, np.float64)
        iod = inter_ocular_distance(pixels)
        targets = pixels[self.landmarks.mediapipe, :2]
        expression, jaw = self._expression, self._jaw
        points = self._basis.points(expression, rodrigues(jaw))
        camera = WeakPerspective(*fit_weak_perspective(points, targets, np.ones(len(targets))))
        n = self.n_exp
        for _ in range(self.iterations):
            rotation = rodrigues(jaw)
            points = self._basis.points(expression, rotation)
            # Gauss-Newton on expression, jaw and the camera together: alternating the camera and the shape instead
            # converges slowly, as expression components can mimic small head rotations.
            linear = camera.linear()
            d_shape = np.concatenate(
                [self._basis.expression_jacobian(rotation), self._basis.jaw_jacobian(expression, jaw)], axis=-1
            )
            d_pixels = np.concatenate([np.matmul(linear, d_shape), camera.jacobian(points)], axis=-1)  # (K, 2, n + 9)
            design = d_pixels.reshape(-1, n + 9)
            target = (targets - camera.project(points)).reshape(-1) + design[:, : n + 3] @ np.r_[expression, jaw]
            a = np.vstack([design / iod, np.diag(self._prior)])
            b = np.r_[target / iod, np.zeros(len(self._prior))]
            solution = bounded_least_squares(a, b, self._lower, self._upper)
            expression, jaw = solution[:n], solution[n : n + 3]
            camera = camera.updated(solution[n + 3 :])

        projected = camera.project(self._basis.points(expression, rodrigues(jaw)))
        error = float(np.linalg.norm(projected - targets, axis=1).mean() / iod)
        self._expression, self._jaw = expression, jaw
        return expression.astype(np.float32), jaw.astype(np.float32), error


@dataclass(frozen=True)
class WeakPerspective:
    """``pixel = scale * [x, -y] of (rotation @ point) + translation``, as `fit_weak_perspective` returns it."""

    rotation: np.ndarray  # (3, 3) model -> camera
    scale: float  # pixels per metre
    translation: np.ndarray  # (2,) pixels

    def linear(self) -> np.ndarray:
        """(2, 3) model -> pixels without the translation."""
        return self.scale * np.diag([1.0, -1.0]) @ self.rotation[:2]

    def project(self, points: np.ndarray) -> np.ndarray:
        return points @ self.linear().T + self.translation

    def jacobian(self, points: np.ndarray) -> np.ndarray:
        """(K, 2, 6) d pixels / d (small rotation ω applied before `rotation`, log scale, translation)."""
        linear = self.linear()
        d_rotation = -np.matmul(linear, cross_matrices(points))  # R (I + [ω]x) p = R p - R [p]x ω
        d_scale = (points @ linear.T)[:, :, None]
        d_translation = np.broadcast_to(np.eye(2), (len(points), 2, 2))
        return np.concatenate([d_rotation, d_scale, d_translation], axis=-1)

    def updated(self, step: np.ndarray) -> "WeakPerspective":
        """After a Gauss-Newton ``step`` (6,) in the order of `jacobian`."""
        rotation = self.rotation @ rodrigues(step[:3])
        return WeakPerspective(rotation, self.scale * float(np.exp(step[3])), self.translation + step[4:6])


def cross_matrices(vectors: np.ndarray) -> np.ndarray:
    """(K, 3, 3) [v]x with [v]x w = v x w."""
    x, y, z = vectors.T
    zero = np.zeros_like(x)
    return np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=-1).reshape(-1, 3, 3)

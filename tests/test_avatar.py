"""The ICT head and its rendering, checked closed-loop: render a pose, track the render with MediaPipe."""

import cv2
import numpy as np
import pytest

from realtime.head import AvatarPose
from realtime.ict.avatar import blendshape_matrix, ict_shape_names
from realtime.ict.model import PART_NAMES
from realtime.tracking.head_pose import head_rotation
from realtime.tracking.tracker import BLENDSHAPE_NAMES
from tests.conftest import neutral_weights


def test_converted_model_has_the_ict_light_topology(ict_model) -> None:
    assert ict_model.neutral.shape == (26719, 3)
    assert ict_model.identity_basis.shape == (100, 26719, 3)
    assert ict_model.expression_basis.shape == (53, 26719, 3)
    assert len(ict_model.render_vertex) == 28911  # one render vertex per distinct (vertex, uv) corner
    assert set(np.unique(ict_model.triangle_part)) == set(range(len(PART_NAMES)))
    # identity modes are ordered by variance: the first moves the head far more than the last
    assert np.abs(ict_model.identity_basis[0]).mean() > 10 * np.abs(ict_model.identity_basis[-1]).mean()


def test_every_ict_expression_is_driven_by_exactly_one_mediapipe_blendshape(ict_model) -> None:
    matrix = blendshape_matrix(ict_model.expression_names)
    assert matrix.shape == (53, len(BLENDSHAPE_NAMES)) == (53, 51)
    assert (matrix.sum(axis=1) == 1).all()
    assert ict_shape_names("browInnerUp") == ("browInnerUp_L", "browInnerUp_R")
    assert ict_shape_names("cheekPuff") == ("cheekPuff_L", "cheekPuff_R")
    assert ict_shape_names("eyeBlinkLeft") == ("eyeBlink_L",)
    assert ict_shape_names("eyeBlinkLeft", mirrored=True) == ("eyeBlink_R",)
    assert ict_shape_names("jawLeft", mirrored=True) == ("jawLeft",)  # a direction, not a side


def render(pipeline, rotation=None, **weights: float) -> np.ndarray:
    pose = AvatarPose(neutral_weights(pipeline.model, **weights), np.eye(3) if rotation is None else rotation, True)
    return pipeline.render_pose(pose)


def test_jaw_open_opens_the_avatars_mouth(astronaut_pipeline, image_tracker) -> None:
    closed = image_tracker.track(render(astronaut_pipeline))
    opened = image_tracker.track(render(astronaut_pipeline, jawOpen=1.0))
    assert closed is not None and opened is not None
    assert closed.blendshape("jawOpen") < 0.1
    assert opened.blendshape("jawOpen") > 0.4
    # and in the pixels: between the inner lips (landmarks 13 and 14) the open mouth shows the dark red interior
    image = render(astronaut_pipeline, jawOpen=1.0)
    upper, lower = opened.landmarks[13, :2], opened.landmarks[14, :2]
    assert lower[1] - upper[1] > 15  # pixels between the lips
    mid = ((upper + lower) / 2).astype(int)
    r, g, b = image[mid[1], mid[0]].astype(int)
    assert r > 1.5 * max(g, b) and r < 128, f"expected mouth interior (dark red) at {mid}, got {(r, g, b)}"


def test_an_open_mouth_is_darkest_at_its_back(astronaut_pipeline, image_tracker) -> None:
    """Light reaches into a mouth through its opening only: below the upper teeth an open mouth is nearly black (its
    back, the throat), and the tongue brightens towards the lower lip. Lit evenly, it was a flat red disc (red 94-97
    there, 106-112 at the tongue's front)."""
    image = render(astronaut_pipeline, jawOpen=1.0)
    face = image_tracker.track(image)
    upper, lower = face.landmarks[13, :2], face.landmarks[14, :2]

    def red(share: float) -> int:
        x, y = (upper + share * (lower - upper)).astype(int)
        return int(image[y, x, 0])

    deep, front = max(red(0.3), red(0.4)), min(red(0.8), red(0.9))
    assert deep < 50 and deep < 0.5 * front, (deep, front)


@pytest.mark.parametrize(
    ("ict_shape", "same_side", "other_side"),
    [
        ("eyeBlink_L", "eyeBlinkLeft", "eyeBlinkRight"),
        ("eyeBlink_R", "eyeBlinkRight", "eyeBlinkLeft"),
        ("mouthSmile_L", "mouthSmileLeft", "mouthSmileRight"),
        ("mouthSmile_R", "mouthSmileRight", "mouthSmileLeft"),
        ("eyeLookOut_L", "eyeLookOutLeft", "eyeLookOutRight"),
        ("eyeLookOut_R", "eyeLookOutRight", "eyeLookOutLeft"),
        ("eyeLookIn_L", "eyeLookInLeft", "eyeLookInRight"),
    ],
)
def test_left_and_right_shapes_read_back_on_the_same_side(
    astronaut_pipeline, image_tracker, ict_shape, same_side, other_side
) -> None:
    """The name mapping is what MediaPipe itself reads off the rendered avatar, not an assumption."""
    face = image_tracker.track(render(astronaut_pipeline, **{ict_shape: 1.0}))
    assert face is not None
    assert face.blendshape(same_side) > face.blendshape(other_side) + 0.15


def rotation_y(degrees: float) -> np.ndarray:
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


@pytest.mark.parametrize("yaw", [-25.0, 25.0])
def test_head_rotation_reads_back(astronaut_pipeline, image_tracker, yaw: float) -> None:
    face = image_tracker.track(render(astronaut_pipeline, rotation=rotation_y(yaw)))
    assert face is not None
    rotation = head_rotation(face.transform)
    measured_yaw = np.degrees(np.arctan2(rotation[0, 2], rotation[2, 2]))
    assert abs(measured_yaw - yaw) < 8, measured_yaw


def partial_edge_fraction(image: np.ndarray, background: np.ndarray) -> float:
    """Of the rows' left silhouette edges, the fraction whose first avatar pixel is a blend with the background."""
    luminance = image.astype(float).mean(axis=2)
    background_luminance = background.mean()
    blended = total = 0
    for row, values in zip(image, luminance, strict=True):
        inside = np.flatnonzero((np.abs(row.astype(int) - background) > 3).any(axis=1))
        if len(inside) < 10:
            continue
        first = inside[0]
        total += 1
        blended += (values[first] - background_luminance) < 0.6 * (values[first + 4] - background_luminance)
    return blended / max(total, 1)


def test_render_is_antialiased_and_uses_the_background(astronaut_pipeline) -> None:
    image = render(astronaut_pipeline)
    background = np.round(np.array(astronaut_pipeline.renderer.options.background) * 255)
    assert (np.abs(image[0, 0].astype(int) - background) <= 1).all()
    assert partial_edge_fraction(image, background) > 0.3


def test_the_coarser_parts_keep_their_outlines(ict_model) -> None:
    """A coarsened part keeps every open edge of the full part (its outline, the lids' and lips' edges, its UV
    seams): two coarsened parts still meet edge to edge."""
    from realtime.ict.avatar import SIMPLIFIED_PARTS, simplify_part

    def open_edges(triangles: np.ndarray) -> set[tuple[int, int]]:
        edges = np.sort(np.r_[triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]], axis=1)
        unique, counts = np.unique(edges, axis=0, return_counts=True)
        return set(map(tuple, unique[counts == 1]))

    for part, reduction in SIMPLIFIED_PARTS.items():
        full = ict_model.triangles[ict_model.part_mask(part)]
        coarse = simplify_part(ict_model, part, reduction)
        assert len(coarse) < 0.8 * len(full), part
        assert open_edges(coarse) == open_edges(full), f"{part}: its outline changed"


def test_a_head_posing_only_what_is_drawn_poses_it_as_the_whole_head(ict_model) -> None:
    """The pipeline poses only the vertices it draws: those come out as the whole head's, which is the neutral plus
    the weighted shapes (the eyes rotate apart), and the rest stay at rest."""
    from realtime.ict.avatar import Avatar

    rng = np.random.default_rng(7)
    avatar = Avatar(ict_model, ict_model.identity_shape(rng.normal(0.0, 1.0, len(ict_model.identity_basis))))
    weights = rng.uniform(0.0, 1.0, len(ict_model.expression_names)).astype(np.float32)
    for name in ict_model.expression_names:
        if name.startswith(("eyeLook", "eyeBlink")):
            weights[ict_model.expression_index(name)] = 0.0
    vertices, normals = avatar.pose(weights)
    expected = avatar.identity_vertices + np.einsum("s,snc->nc", weights, ict_model.expression_basis)
    assert np.abs(vertices - expected).max() < 1e-4

    drawn = np.unique(ict_model.triangles_of("face", "teeth"))
    some_vertices, some_normals = avatar.posing_only(drawn).pose(weights)
    assert np.abs(some_vertices[drawn] - vertices[drawn]).max() < 1e-5
    assert np.abs(some_normals[drawn] - normals[drawn]).max() < 1e-5
    rest = np.setdiff1d(np.arange(ict_model.n_vertices), drawn)
    assert np.array_equal(some_vertices[rest], avatar.identity_vertices[rest])
    assert np.abs(vertices[rest] - avatar.identity_vertices[rest]).max() > 0.1  # the whole head did move them


@pytest.mark.parametrize("yaw", [0.0, 40.0, -70.0])
def test_no_crack_in_the_head_look(astronaut_pipeline, ict_model, gl_context, yaw: float) -> None:
    """Turned, the drawn head (coarser face and scalp) shows no background through it."""
    from realtime.head import model_matrix
    from realtime.ict.avatar import build_avatar_mesh
    from realtime.ict.pipeline import HEAD_PIVOT
    from realtime.rendering.renderer import AvatarRenderer, RenderOptions

    renderer = AvatarRenderer(gl_context, build_avatar_mesh(ict_model), astronaut_pipeline.identity.albedo,
                              RenderOptions(size=(800, 800), antialias="none", background=(1.0, 0.0, 1.0)))
    try:
        a = np.radians(yaw)
        rotation = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]], np.float32)
        vertices, normals = astronaut_pipeline.avatar.pose(np.zeros(len(ict_model.expression_names), np.float32))
        image = renderer.render(vertices, normals, model_matrix(rotation, np.asarray(HEAD_PIVOT, np.float32)))
    finally:
        renderer.release()
    background = ((image[..., 0] > 250) & (image[..., 1] < 5) & (image[..., 2] > 250)).astype(np.uint8)
    _, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    height, width = background.shape
    enclosed = [i for i in range(1, len(stats)) if stats[i, 0] > 0 and stats[i, 1] > 0
                and stats[i, 0] + stats[i, 2] < width and stats[i, 1] + stats[i, 3] < height]
    assert not enclosed, f"{len(enclosed)} specks of background inside the head ({stats[enclosed, 4].sum()} pixels)"


def test_the_triangles_left_out_never_show(astronaut_pipeline, ict_model, gl_context) -> None:
    """The inner parts' triangles that no view shows are not drawn: on identities, expressions and head turns that
    `tools/build_hidden_triangles.py` did not sample, the head drawn without them is the same, pixel for pixel, as the
    whole head, and they are a good share of the inner parts (else the table is stale or empty)."""
    from realtime.head import model_matrix
    from realtime.ict.avatar import Avatar, build_avatar_mesh, hidden_triangles
    from realtime.ict.pipeline import HEAD_PIVOT
    from realtime.rendering.renderer import AvatarRenderer, RenderOptions

    hidden = hidden_triangles()
    teeth = np.flatnonzero(ict_model.part_mask("teeth"))
    assert np.isin(teeth, hidden).mean() > 0.3
    options = RenderOptions(size=(720, 720), antialias="none", framing_height=24.0)
    albedo = astronaut_pipeline.identity.albedo
    whole, reduced = (AvatarRenderer(gl_context, build_avatar_mesh(ict_model, hidden=h), albedo, options)
                      for h in (None, hidden))
    rng = np.random.default_rng(2026)
    try:
        assert len(reduced.mesh.triangles) < 0.9 * len(whole.mesh.triangles)
        for _ in range(2):
            avatar = Avatar(ict_model, ict_model.identity_shape(rng.normal(0.0, 1.0, len(ict_model.identity_basis))))
            for _ in range(6):
                weights = np.zeros(len(ict_model.expression_names), np.float32)
                weights[rng.choice(len(weights), 5, replace=False)] = rng.uniform(0.3, 1.0, 5)
                weights[ict_model.expression_index("jawOpen")] = rng.uniform(0.0, 1.0)
                yaw, pitch = np.radians(rng.uniform(-50, 50)), np.radians(rng.uniform(-30, 30))
                turn = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
                nod = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
                matrix = model_matrix((turn @ nod).astype(np.float32), np.asarray(HEAD_PIVOT, np.float32))
                vertices, normals = avatar.pose(weights)
                expected = whole.render(vertices, normals, matrix)
                image = reduced.render(vertices, normals, matrix)
                assert np.array_equal(image, expected), f"{int((image != expected).any(axis=2).sum())} pixels differ"
    finally:
        whole.release()
        reduced.release()

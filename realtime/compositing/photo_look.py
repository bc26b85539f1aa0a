"""The photo look: the identity photo itself comes alive, hair, ears, clothes and background included.

Prepared once per identity and output size (`PhotoLayers`, `build_photo_layers`):

- the photo framed to the output (`realtime.compositing.framing`);
- ``layer``: the person (MediaPipe's selfie mask, hair and clothes included), drawn moving with the driver's head
  (rotation, translation, scale), the motion fading down the neck to the shoulders' line (``motion``: 1 on the head
  and hair, 0 on the body below, which stays still: measured on self-reenactment, a body that follows the head's
  translation uncovers more of the filled plate than it matches);
- ``plate``: the photo with the person removed and filled from the background around them (`realtime.compositing.fill`:
  the smoothest surface meeting the background all round), so that motion uncovers background, never a hole or a
  ghost of the head.

Per frame (`PhotoLook.draw`, called by the renderer between the plate and the face): the layer is drawn on a grid
lifted onto the fitted head's depth (hair and ears turn with the head, as on a shell around it), moved by the head's
rotation, translation and scale; the face is then the head model drawn through the photo's own camera, textured
with the photo's own pixels where the photo saw them (so at rest it lands on them), and with the model's mouth,
teeth and eyes where it did not; its edge fades into the layer (`face_attributes`). Where it fades, the layer
follows the face's expression (`FaceSkin`, `PhotoLook.follow`): an opening jaw carries the photo's own chin down
over the neck, instead of fading into a chin that stays.
"""

import logging
from dataclasses import dataclass

import cv2
import moderngl
import numpy as np

from realtime.compositing.fill import membrane_fill
from realtime.compositing.framing import Framing, frame_photo
from realtime.geometry.fitting import inter_ocular_distance
from realtime.head import HeadOffset
from realtime.rendering.photo_texture import pull_push_fill
from realtime.rendering.renderer import drawn_size, load_program, texture_from_image
from realtime.tracking.head_pose import CanonicalFrame
from realtime.tracking.landmarks import BROWS, CHIN, FACE_OVAL, FOREHEAD, LEFT_EYE_OUTER, NOSE_TIP, RIGHT_EYE_OUTER

log = logging.getLogger(__name__)

NECK_FOLLOWS = 0.05  # below the chin, in face heights: down to here the neck turns with the head
# and from here down (the top of the shoulders) the body does not move: a head that leans and rolls carries the neck
# and the shoulders' line a little. Measured on self-reenactment (head motion from the rigid landmarks), fading by
# 1.0 face heights rather than 0.5 gained 0.3 / 0.2 dB PSNR and 0.003 / 0.009 SSIM on pyfeat / carphone; 2.0, no more.
NECK_STILL = 1.0
SIDE_FOLLOWS, SIDE_STILL = 1.3, 2.2  # in face widths from the face's midline: the same, sideways (raised hands)
HALO = 0.1  # inter-ocular distances around the person whose colour is partly the person's: filled too
GRID_MARGIN = 1.2  # inter-ocular distances around the moving part that the grid covers (hair it may move into)
EDGE_FEATHER = 0.35  # inter-ocular distances: the face's rendered edge fades into the photo over this much
SHARP_FEATHER = 0.05  # and eyes and mouth, over this much
UNSEEN_SKIN_FADE = 2.0  # skin is opaque where the photo shows at least half its own colour (see `face_attributes`)
GRID_STEP = 0.2  # inter-ocular distances between the grid's vertices
# The layer follows the skin's expression inside the face and fades from it over this many inter-ocular distances
# outside: the neck under an opening jaw is pressed together by the chin's drop (a full jawOpen lowers the chin by
# about 0.3), which this spreads over twice that. Only the lower face's: from the nose tip up to the eyes it fades
# out, for above them the outline is the hairline, and hair stays on the skull when the brows move (following the
# forehead, it made raised brows read 30% lower in self-reenactment).
SKIN_FOLLOW_REACH = 0.6
SKIN_NEIGHBOURS = 6  # skin vertices whose motion a layer vertex takes, weighted by inverse squared distance
EXTENSION_SOLVE_SIDE = 100  # pixels: the fills beyond the photo's edges are blurred, a coarse membrane will do
DEPTH_BLUR = 0.3  # inter-ocular distances: the grid follows the head's depth, without its sharp steps


@dataclass(frozen=True, eq=False)
class FaceSkin:
    """The drawn skin of the head at the photo's own expression: what the layer follows next to the face."""

    vertices: np.ndarray  # (K,) int: model vertices (indices into the vertices the renderer is given)
    rest: np.ndarray  # (K, 3) their model-space positions at the photo's expression
    pixels: np.ndarray  # (K, 2) where the photo's camera sees them, frame pixels


@dataclass(frozen=True, eq=False)
class PhotoLayers:
    """The identity photo made ready for the photo look at one output size (frame pixels, y down)."""

    framing: Framing
    photo: np.ndarray  # (H, W, 3) uint8 the framed photo
    photo_size: tuple[int, int]  # the photo's own width and height (beyond them the framed photo is an extension)
    layer: np.ndarray  # (H, W) float32 in [0, 1]: the person, drawn over the plate (moving where ``motion`` says)
    motion: np.ndarray  # (H, W) float32 in [0, 1]: how much each pixel moves with the head
    plate: np.ndarray  # (H, W, 3) uint8: the photo with the person filled from the background around them
    landmarks: np.ndarray  # (478, 2) the photo's landmarks in frame pixels
    inter_ocular: float  # in frame pixels
    inside_face: np.ndarray  # (H, W) float32: each pixel's distance inside the face, pixels (see `inside_face`)


def face_skin(render_vertex: np.ndarray, triangles: np.ndarray, skin: np.ndarray, rest: np.ndarray,
              pixels: np.ndarray) -> FaceSkin:
    """The `FaceSkin` of a head whose render vertices map to model vertices by ``render_vertex`` (R,), drawn as
    ``triangles`` (T, 3 render vertices), of which ``skin`` (R,) bool are its skin; ``rest`` (N, 3) model vertices at
    the photo's expression, ``pixels`` (R, 2) the render vertices' frame pixels."""
    drawn_skin = np.zeros(len(render_vertex), bool)
    drawn_skin[triangles.ravel()] = True
    drawn_skin &= skin
    vertices, first = np.unique(render_vertex[drawn_skin], return_index=True)
    return FaceSkin(vertices, rest[vertices].astype(np.float32), pixels[np.flatnonzero(drawn_skin)[first]])


def head_motion_weight(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: 1 on the head, fading to 0 down the neck and far to the sides, from (478, 2) frame landmarks."""
    below, aside = face_coordinates(landmarks, size)
    return (_fade(below, NECK_FOLLOWS, NECK_STILL) * _fade(aside, SIDE_FOLLOWS, SIDE_STILL)).astype(np.float32)


def face_coordinates(landmarks: np.ndarray, size: tuple[int, int],
                     points: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) each, for an image of ``size`` with the face's (478, 2) ``landmarks``: how far each pixel is below the
    chin, in face heights (negative above it), and how far aside from the face's midline, in face widths. Or (K,)
    each, for the (K, 2) ``points`` instead of every pixel."""
    width, height = size
    chin, top = landmarks[CHIN, :2], landmarks[FOREHEAD, :2]
    face_height = float(np.linalg.norm(top - chin))
    down = (chin - top) / max(face_height, 1e-6)
    right = np.array([-down[1], down[0]])
    face_width = float(np.linalg.norm(landmarks[LEFT_EYE_OUTER, :2] - landmarks[RIGHT_EYE_OUTER, :2])) * 1.6
    if points is None:
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    else:
        xs, ys = points[:, 0], points[:, 1]
    below = ((xs - chin[0]) * down[0] + (ys - chin[1]) * down[1]) / face_height
    aside = np.abs((xs - (chin[0] + top[0]) / 2) * right[0] + (ys - (chin[1] + top[1]) / 2) * right[1]) / face_width
    return below, aside


def _fade(value: np.ndarray, start: float, end: float) -> np.ndarray:
    """1 below ``start``, 0 above ``end``, smooth between (the other way round if ``end`` < ``start``)."""
    t = np.clip((value - start) / ((end - start) or 1e-6), 0.0, 1.0)
    return 1.0 - t * t * (3.0 - 2.0 * t)


def photo_framing(photo_size: tuple[int, int], landmarks: np.ndarray, size: tuple[int, int]) -> Framing:
    """How a photo of ``photo_size`` (width, height) whose face has the (478, 2+) ``landmarks`` is framed for an output
    of ``size``."""
    eyes = (landmarks[LEFT_EYE_OUTER, :2] + landmarks[RIGHT_EYE_OUTER, :2]) / 2
    box = (*landmarks[:, :2].min(axis=0), *landmarks[:, :2].max(axis=0))
    return frame_photo(photo_size, eyes, inter_ocular_distance(landmarks), size, box)


def drawing_framing(framing: Framing) -> Framing:
    """The framing the photo look draws with for an output framed by ``framing``: where that enlarges the photo, the
    same crop at the photo's own resolution, its pixels copied as they are (more pixels add no detail, and the software
    rasteriser pays for every one), enlarged ``framing.scale`` times to the output once drawn; else ``framing``."""
    if framing.scale <= 1.0:
        return framing
    return Framing(size=drawn_size(framing.size, framing.scale), scale=1.0, offset=framing.offset / framing.scale)


def drawn_photo_layers(photo: np.ndarray, person: np.ndarray, landmarks: np.ndarray,
                       size: tuple[int, int]) -> tuple[PhotoLayers, float]:
    """The layers the photo look draws for an output of ``size`` (see `build_photo_layers`), framed by
    `drawing_framing`, and how many times the drawn frame is enlarged to the output (the renderer's ``draw_scale``)."""
    framing = photo_framing((photo.shape[1], photo.shape[0]), landmarks, size)
    drawing = drawing_framing(framing)
    return build_photo_layers(photo, person, landmarks, drawing), framing.scale / drawing.scale


def build_photo_layers(photo: np.ndarray, person: np.ndarray, landmarks: np.ndarray,
                       framing: Framing) -> PhotoLayers:
    """The layers of ``photo`` (H, W, 3 uint8) with its ``person`` mask (H, W) and the chosen face's (478, 2+)
    ``landmarks`` (photo pixels), framed by ``framing`` (`photo_framing`, or `drawing_framing` of it)."""
    photo_size = (photo.shape[1], photo.shape[0])
    size = framing.size
    person = person.astype(np.float32)
    if framing.reaches_beyond(photo_size):
        framed, person_framed = _extended(photo, person, landmarks, framing)
    else:
        framed, person_framed = framing.frame(photo), framing.frame(person)
    person_framed = np.clip(person_framed, 0.0, 1.0)
    person_framed = _fade(person_framed, 0.7, 0.3)  # the segmenter's soft edge, made firmer
    frame_landmarks = framing.to_frame(landmarks)
    iod = inter_ocular_distance(landmarks) * framing.scale
    motion = head_motion_weight(frame_landmarks, size)
    person = (person_framed > 0.5).astype(np.uint8)
    margin = max(2, int(round(HALO * iod)))
    filled_region = cv2.dilate(person, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2))
    fill = cv2.GaussianBlur(filled_region.astype(np.float32), (0, 0), margin / 2)
    known = (1.0 - person_framed) * (fill < 0.01)  # background that motion never uncovers: what the hole is filled from
    filled = membrane_fill(framed, known > 0.5)
    plate = np.clip(framed * (1 - fill[..., None]) + filled * fill[..., None] + 0.5, 0, 255).astype(np.uint8)
    # The layer covers the person and every filled pixel of the plate: at rest, layer and plate show the photo
    # wherever they meet.
    layer = np.maximum(person_framed, np.clip(2.0 * fill, 0.0, 1.0))
    return PhotoLayers(framing, framed, photo_size, layer.astype(np.float32), motion, plate,
                       frame_landmarks, iod, inside_face(frame_landmarks, person_framed > 0.5))


def inside_face(landmarks: np.ndarray, person: np.ndarray) -> np.ndarray:
    """(H, W) float32: each pixel's distance inside the face, in pixels (0 outside), from the (478, 2+) frame
    ``landmarks`` and the ``person`` (H, W) bool.

    The face is MediaPipe's face oval, grown to the landmarks' convex hull where the person is: on a turned face the
    oval runs along the hidden far jaw, through the cheek and the mouth, while the face seen ends at its profile
    (nose, lips, chin), where the person ends. (The oval alone cut a smile in two there.)
    """
    points = np.round(landmarks[:, :2]).astype(np.int32)
    face, oval = np.zeros(person.shape, np.uint8), np.zeros(person.shape, np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(points), 1)
    cv2.fillPoly(oval, [points[list(FACE_OVAL)]], 1)
    face = (face & person.astype(np.uint8)) | oval
    # from pixel centres to the nearest outside pixel's centre: the outline lies half a pixel nearer
    return np.maximum(cv2.distanceTransform(face, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) - 0.5, 0.0).astype(np.float32)


def _extended(photo: np.ndarray, person: np.ndarray, landmarks: np.ndarray,
              framing: Framing) -> tuple[np.ndarray, np.ndarray]:
    """``photo`` (H, W, 3) and its ``person`` mask (H, W) framed where the frame reaches beyond the photo: beside it
    the photo's background mirrored (the person filled from around them: the whole photo mirrored would put blurred
    copies of the face beside the face), under its bottom edge the photo with only the head (the person above the
    chin) filled, so that neck and body go on. The fills work at the frame's scale (they are blurred)."""
    height, width = person.shape
    scale = min(1.0, framing.scale)
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    small_person = cv2.resize(person, small, interpolation=cv2.INTER_AREA)
    small_landmarks = landmarks[:, :2] * np.array([small[0] / width, small[1] / height])
    below_chin, _ = face_coordinates(small_landmarks, small)
    head = (small_person > 0.5) & (below_chin < 0.0)
    margin = max(2, int(round(HALO * inter_ocular_distance(landmarks) * scale)))  # the person's fringe
    grow = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1,) * 2)
    small_photo = cv2.resize(photo, small, interpolation=cv2.INTER_AREA)
    person_grown = cv2.dilate((small_person > 0.5).astype(np.uint8), grow).astype(bool)
    if person_grown.all():
        log.warning("the identity photo shows no background around the person: the frame beyond it is a plain "
                    "colour; a photo with some background around the head and shoulders looks more natural")
    personless = _filled(small_photo, person_grown)
    headless = _filled(small_photo, cv2.dilate(head.astype(np.uint8), grow).astype(bool))
    framed = framing.frame(photo, outside=personless, below=headless)
    body = np.where(head, 0.0, small_person).astype(np.float32)
    person_framed = framing.frame(person, outside=np.zeros_like(body), below=body)
    return framed, person_framed


def _filled(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 ``image`` with its ``hole`` (H, W) bool filled from around it (coarsely: it is blurred)."""
    filled = np.where(hole[..., None], membrane_fill(image, ~hole, side=EXTENSION_SOLVE_SIDE), image)
    return np.clip(filled + 0.5, 0, 255).astype(np.uint8)


def ortho_camera(size: tuple[int, int], projection: np.ndarray, depth: float) -> np.ndarray:
    """(4, 4) model -> GL clip space for a (4, 4) model -> frame pixels (y down) and depth ``projection``.

    The depth range is centred on the head's ``depth`` and spans twice the frame's size either way: whatever the
    head's size in the frame, a turned head or layer (whose depths move by up to the frame's width) is never clipped.
    """
    width, height = size
    reach = 2.0 * max(width, height)
    near, far = depth - reach, depth + reach
    ortho = np.array([[2 / width, 0, 0, -1], [0, -2 / height, 0, 1], [0, 0, 2 / (far - near), -(far + near) /
                      (far - near)], [0, 0, 0, 1]], np.float64)
    return (ortho @ projection).astype(np.float32)


def photo_model_matrix(offset: HeadOffset, photo_rotation: np.ndarray, frame: CanonicalFrame) -> np.ndarray:
    """(4, 4) model-space motion that moves a head seen at ``photo_rotation`` (model -> camera) as the driver's
    ``offset`` moves in camera space: rotation and scale about the canonical origin, then the origin's translation
    (canonical centimetres, in the head's units)."""
    rotation = photo_rotation.T @ offset.rotation @ photo_rotation
    linear = offset.scale * rotation
    pivot = frame.origin.astype(np.float64)
    matrix = np.eye(4, dtype=np.float64)
    matrix[:3, :3] = linear
    matrix[:3, 3] = pivot - linear @ pivot + frame.scale * (photo_rotation.T @ offset.translation)
    return matrix.astype(np.float32)


def rest_depth(ctx: moderngl.Context, vertices: np.ndarray, triangles: np.ndarray, projection: np.ndarray,
               size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The head at rest as the photo's camera sees it: (H, W) depth (frame pixels, larger = farther) and coverage.

    ``vertices`` (N, 3) model space, ``triangles`` (T, 3) indices into them, ``projection`` (4, 4) model -> frame.
    """
    width, height = size
    depth = (np.c_[vertices, np.ones(len(vertices))] @ projection.T)[:, 2]
    near, far = float(depth.min()) - 1.0, float(depth.max()) + 1.0
    program = load_program(ctx, "depth")
    positions = ctx.buffer(np.ascontiguousarray(vertices, np.float32))
    index = ctx.buffer(np.ascontiguousarray(triangles, np.int32))
    texture = ctx.texture((width, height), 1, dtype="f4")
    fbo = ctx.framebuffer([texture], ctx.depth_renderbuffer((width, height)))
    vao = ctx.vertex_array(program, [(positions, "3f", "in_position")], index, index_element_size=4)
    try:
        program["photo_projection"].write(np.ascontiguousarray(projection, np.float32).T.tobytes())
        program["photo_size"].value = (width, height)
        program["depth_range"].value = (near, far)
        fbo.use()
        fbo.clear(far + 1.0, 0.0, 0.0, 1.0, depth=1.0)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE)
        vao.render(moderngl.TRIANGLES)
        values = np.frombuffer(fbo.read(components=1, dtype="f4"), np.float32).reshape(height, width)
    finally:
        for resource in (vao, fbo, texture, index, positions, program):
            resource.release()
    covered = values <= far
    return values, covered


def face_attributes(
    frame_pixels: np.ndarray,
    depth: np.ndarray,
    camera_normals: np.ndarray,
    depth_map: np.ndarray,
    layers: PhotoLayers,
    blended: np.ndarray,
) -> np.ndarray:
    """(R, 4) per render vertex: frame UV (2) of its rest position, how much it shows the photo, its opacity.

    ``frame_pixels`` (R, 2) and ``depth`` (R,) of the rest head through the photo's camera, ``camera_normals`` (R, 3)
    its normals in camera space (+z towards the camera); ``depth_map`` from `rest_depth`. ``blended`` (R,) bool: the
    skin, whose opacity fades to 0 at the face's outline (`inside_face`; the layer shows the photo's own edge there);
    the other drawn parts (eyes, mouth, teeth) are opaque inside the outline and fade out sharply at it: where the
    head fits the photo badly (a face turned far to the side), its far eye or mouth would float beside the face.
    """
    width, height = layers.framing.size
    iod = layers.inter_ocular
    x = np.clip(np.floor(frame_pixels[:, 0]).astype(int), 0, width - 1)
    y = np.clip(np.floor(frame_pixels[:, 1]).astype(int), 0, height - 1)
    # the depth map holds the front surface at pixel centres, a vertex lies anywhere in its pixel: on a sloping
    # surface (a cheek, the nose's side) the centre's depth misses it by up to the slope over a pixel, which on a
    # small face is more than any fixed tolerance. A vertex is visible if it is the front surface anywhere within
    # a pixel of it: the skin the photo saw takes its pixels, not the softer texture baked from them.
    nearby = cv2.dilate(depth_map, np.ones((3, 3), np.uint8))  # the farthest front surface around each pixel
    visible = depth <= nearby[y, x] + 0.02 * iod
    facing = np.clip((camera_normals[:, 2] - 0.1) / 0.25, 0.0, 1.0)
    in_photo = layers.framing.to_photo(frame_pixels)
    in_own_photo = np.all((in_photo >= 1) & (in_photo <= np.array(layers.photo_size) - 2), axis=1)  # not extended
    shows_photo = visible * facing * in_own_photo
    px, py = (np.ascontiguousarray(c[:, None] - 0.5, np.float32) for c in frame_pixels.T)  # pixel centres at .5
    into_face = cv2.remap(layers.inside_face, px, py, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[:, 0]
    opacity = np.clip(into_face / (np.where(blended, EDGE_FEATHER, SHARP_FEATHER) * iod), 0.0, 1.0)
    # skin the photo saw is opaque over the brows and fades between them and the outline, over EDGE_FEATHER where
    # there is room and SHARP_FEATHER at least: brows within EDGE_FEATHER of the outline (a brow's tail by the temple,
    # brows under a fringe) were half the photo's still brows, and raised or lowered brows showed twice
    brows = cv2.remap(outside_brows(layers.landmarks, layers.inside_face.shape), px, py, cv2.INTER_LINEAR,
                      borderMode=cv2.BORDER_REPLICATE)[:, 0]
    band = np.clip(into_face + brows, SHARP_FEATHER * iod, EDGE_FEATHER * iod)
    by_brows = np.clip(into_face / band, 0.0, 1.0) * shows_photo
    opacity = np.where(blended, np.maximum(opacity, by_brows), opacity)
    # skin near the outline that the photo did not see (the side of the face, turned away or under the hair) lets
    # the moving layer show: the photo's own pixels there, lifted on the head's depth, not a flat patch of fill
    # colour over the hair. Deeper inside (under the nose) it stays: behind it is the mouth's dark interior.
    seen = np.maximum(UNSEEN_SKIN_FADE * shows_photo, into_face / (3 * EDGE_FEATHER * iod))
    opacity = np.where(blended, np.minimum(opacity, np.clip(seen, 0.0, 1.0)), opacity)
    uv = frame_pixels / np.array([width, height])
    return np.c_[uv, shows_photo, opacity].astype(np.float32)


def outside_brows(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32: each pixel's distance in pixels outside the brows, 0 inside: the convex hull of each brow's
    `BROWS` landmarks among the (478, 2+) ``landmarks``."""
    brows = np.ones(shape, np.uint8)
    for brow in (BROWS[:10], BROWS[10:]):
        cv2.fillConvexPoly(brows, cv2.convexHull(np.round(landmarks[list(brow), :2]).astype(np.int32)), 0)
    return cv2.distanceTransform(brows, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def distance_inside(pixels: np.ndarray, outline: np.ndarray) -> np.ndarray:
    """(R,) signed distance in pixels of each of ``pixels`` (R, 2) inside the closed ``outline`` (K, 2), negative
    outside it."""
    contour = np.asarray(outline, np.float32).reshape(-1, 1, 2)
    return np.array([cv2.pointPolygonTest(contour, (float(px), float(py)), True) for px, py in pixels])


class PhotoLook:
    """The moving layer of `PhotoLayers` on a grid lifted onto the head's depth; draws with the renderer's GL state.

    ``projection`` (4, 4) model -> frame pixels and depth; ``camera`` the same into GL clip space (`ortho_camera`);
    ``skin``: the face's skin, whose expression the layer follows next to it (None: the layer moves rigidly).
    """

    def __init__(self, ctx: moderngl.Context, layers: PhotoLayers, projection: np.ndarray, camera: np.ndarray,
                 depth_map: np.ndarray, covered: np.ndarray, skin: FaceSkin | None = None) -> None:
        self.ctx = ctx
        self.layers = layers
        positions, uv, motion, triangles = self._grid(projection, depth_map, covered)
        alpha = np.round(layers.layer * 255)
        triangles = triangles[~clear_triangles(uv[triangles], alpha > 0)]
        followers, neighbours, weights = skin_following(uv * np.array(layers.framing.size), layers, skin)
        follows = np.zeros(len(positions), bool)
        follows[followers] = True
        # Still triangles first: they are drawn once, into the renderer's still frame. The moving ones opaque
        # throughout first: drawn without blending, which costs the software rasteriser a third of the layer's time.
        moves = (motion[triangles].max(axis=1) > 0.0) | follows[triangles].any(axis=1)
        solid = clear_triangles(uv[triangles], alpha < 255)
        triangles = np.r_[triangles[~moves], triangles[moves & solid], triangles[moves & ~solid]]
        self._counts = [3 * int(part.sum()) for part in (~moves, moves & solid, moves & ~solid)]
        moving = np.unique(triangles[self._counts[0] // 3:])
        self._moving = np.c_[positions[moving], np.ones(len(moving))]  # (M, 4) homogeneous model space at rest
        self._moving_weight = motion[moving][:, None]
        # the skin's motion this frame, carried to the layer vertices next to the face (`follow`): only the skin
        # vertices some layer vertex takes its motion from are read
        self._followers = followers
        used, neighbours = np.unique(neighbours, return_inverse=True)
        self._skin_vertices = skin.vertices[used] if skin is not None else used
        self._skin_rest = skin.rest[used] if skin is not None else np.zeros((0, 3), np.float32)
        self._neighbours, self._neighbour_weights = neighbours.reshape(weights.shape), weights[..., None]
        self._offsets = np.zeros((len(positions), 3), np.float32)
        self._moving_vertices = moving
        self._camera = np.asarray(camera, np.float64)
        self.program = load_program(ctx, "photo_layer")
        self.program["view_projection"].write(np.ascontiguousarray(camera, np.float32).T.tobytes())
        self.program["layer"].value = 2
        rgba = np.dstack([layers.photo, np.round(layers.layer * 255).astype(np.uint8)])
        self.texture = texture_from_image(ctx, rgba, mipmaps=False)
        self._buffers = [ctx.buffer(np.ascontiguousarray(a, np.float32)) for a in (positions, uv, motion)]
        self._offset_buffer = ctx.buffer(self._offsets, dynamic=True)
        self._buffers.append(self._offset_buffer)
        self._index = ctx.buffer(np.ascontiguousarray(triangles, np.int32))
        self.vao = ctx.vertex_array(
            self.program,
            [(self._buffers[0], "3f", "in_position"), (self._buffers[1], "2f", "in_uv"),
             (self._buffers[2], "1f", "in_motion"), (self._offset_buffer, "3f", "in_offset")],
            self._index,
            index_element_size=4,
        )

    def _grid(self, projection: np.ndarray, depth_map: np.ndarray, covered: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Vertices (model space at rest), frame UVs, motion weights and triangles of a grid over the moving layer."""
        layers = self.layers
        width, height = layers.framing.size
        iod = layers.inter_ocular
        rows, cols = np.nonzero(layers.layer > 0.01)
        if len(rows) == 0:
            rows, cols = np.array([0, height - 1]), np.array([0, width - 1])
        # The grid reaches past the frame's edges where the layer touches them: the person goes on beyond the
        # photo (the texture's edge texels, clamped, continue them), so a body that moves up or sideways never
        # uncovers the plate along the frame's edge.
        pad = GRID_MARGIN * iod
        x0, x1 = cols.min() - pad, cols.max() + 1.0 + pad
        y0, y1 = rows.min() - pad, rows.max() + 1.0 + pad
        step = max(2.0, GRID_STEP * iod)
        xs = np.linspace(x0, x1, max(2, int(np.ceil((x1 - x0) / step)) + 1))
        ys = np.linspace(y0, y1, max(2, int(np.ceil((y1 - y0) / step)) + 1))
        gx, gy = np.meshgrid(xs, ys)
        depth = smooth_depth(depth_map, covered, DEPTH_BLUR * iod)
        ix, iy = np.clip(np.round(gx).astype(int), 0, width - 1), np.clip(np.round(gy).astype(int), 0, height - 1)
        pixels = np.c_[gx.ravel(), gy.ravel(), depth[iy, ix].ravel(), np.ones(gx.size)]
        positions = pixels @ np.linalg.inv(projection.astype(np.float64)).T
        uv = np.c_[gx.ravel() / width, gy.ravel() / height]
        motion = layers.motion[iy, ix].ravel()
        n_cols = len(xs)
        corner = (np.arange(len(ys) - 1)[:, None] * n_cols + np.arange(n_cols - 1)[None, :]).ravel()
        triangles = np.r_[np.c_[corner, corner + n_cols, corner + 1], np.c_[corner + 1, corner + n_cols,
                                                                              corner + n_cols + 1]]
        return positions[:, :3], uv, motion, triangles

    def follow(self, vertices: np.ndarray) -> None:
        """This frame's posed head, (N, 3) model space before the head's motion: the layer next to the face takes
        its skin's motion from the photo's expression."""
        if len(self._followers) == 0:
            return
        moved = vertices[self._skin_vertices] - self._skin_rest
        offsets = (moved[self._neighbours] * self._neighbour_weights).sum(axis=1)
        self._offsets[self._followers] = offsets
        self._offset_buffer.write(self._offsets)

    def draw(self, model_matrix: np.ndarray, moving: bool) -> None:
        """Draw the triangles of the layer that move, moved by ``model_matrix`` (4, 4, model space), or those that
        never move, blended over what is drawn."""
        self.program["model"].write(np.ascontiguousarray(model_matrix, np.float32).T.tobytes())
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        self.texture.use(2)
        still, solid, translucent = self._counts
        if moving:
            self.vao.render(moderngl.TRIANGLES, first=still, vertices=solid)
            self.ctx.enable(moderngl.BLEND)
            self.vao.render(moderngl.TRIANGLES, first=still + solid, vertices=translucent)
        else:
            self.ctx.enable(moderngl.BLEND)
            self.vao.render(moderngl.TRIANGLES, vertices=still)
        self.ctx.disable(moderngl.BLEND)

    def moving_box(self, model_matrix: np.ndarray) -> tuple[float, float, float, float] | None:
        """Pixels (x0, y0, x1, y1, y down) covering the moving triangles at rest and moved by ``model_matrix``."""
        if len(self._moving) == 0:
            return None
        followed = self._moving.copy()
        followed[:, :3] += self._offsets[self._moving_vertices]
        moved = followed + self._moving_weight * (followed @ np.asarray(model_matrix, np.float64).T - followed)
        clip = np.r_[self._moving, moved] @ self._camera.T
        ndc = clip[:, :2] / clip[:, 3:]
        width, height = self.layers.framing.size
        pixels = np.c_[(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height]
        low, high = np.floor(pixels.min(axis=0)) - 2, np.ceil(pixels.max(axis=0)) + 2
        return float(low[0]), float(low[1]), float(high[0]), float(high[1])

    def release(self) -> None:
        for resource in (self.vao, self._index, *self._buffers, self.texture, self.program):
            resource.release()


def skin_following(pixels: np.ndarray, layers: PhotoLayers, skin: FaceSkin | None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which of the layer's vertices at ``pixels`` (G, 2, frame) follow the skin, and how: (F,) their indices,
    (F, SKIN_NEIGHBOURS) the skin vertices (indices into ``skin.vertices``) whose motion each takes, and the weights
    (summing to how much it follows: 1 inside the face, fading to 0 `SKIN_FOLLOW_REACH` outside it, and from the nose
    tip up to the eyes to 0 above them)."""
    none = np.zeros(0, np.int64), np.zeros((0, SKIN_NEIGHBOURS), np.int64), np.zeros((0, SKIN_NEIGHBOURS), np.float32)
    if skin is None or len(skin.vertices) < SKIN_NEIGHBOURS:
        return none
    from scipy.spatial import cKDTree

    width, height = layers.framing.size
    outside = (layers.inside_face <= 0).astype(np.uint8)
    distance_out = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    x = np.clip(np.round(pixels[:, 0] - 0.5).astype(int), 0, width - 1)
    y = np.clip(np.round(pixels[:, 1] - 0.5).astype(int), 0, height - 1)
    within = (pixels[:, 0] >= 0) & (pixels[:, 0] < width) & (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
    below_chin, _ = face_coordinates(layers.landmarks, (width, height), pixels)
    nose, *eyes = face_coordinates(layers.landmarks, (width, height),
                                   layers.landmarks[[NOSE_TIP, RIGHT_EYE_OUTER, LEFT_EYE_OUTER], :2])[0]
    lower_face = _fade(-below_chin, -nose, -np.mean(eyes))
    amount = np.where(within, _fade(distance_out[y, x], 0.0, SKIN_FOLLOW_REACH * layers.inter_ocular), 0.0)
    amount *= lower_face
    followers = np.flatnonzero(amount > 1e-3)
    if len(followers) == 0:
        return none
    distances, neighbours = cKDTree(skin.pixels).query(pixels[followers], k=SKIN_NEIGHBOURS)
    weights = 1.0 / np.maximum(distances, 0.5) ** 2
    weights *= (amount[followers] / weights.sum(axis=1))[:, None]
    return followers, neighbours, weights.astype(np.float32)


def clear_triangles(uv: np.ndarray, marked: np.ndarray) -> np.ndarray:
    """(T,) bool: the triangles with frame UVs ``uv`` (T, 3, 2) whose texels (and their bilinear neighbours) are all
    clear of ``marked`` (H, W) bool. With the texels that are not transparent marked: the triangles that would blend
    nothing; with those that are not opaque: the triangles opaque throughout."""
    height, width = marked.shape
    counts = np.zeros((height + 1, width + 1), np.int64)  # summed-area table of the marked texels
    counts[1:, 1:] = np.cumsum(np.cumsum(marked, axis=0), axis=1)
    pixels = uv * np.array([width, height])
    # beyond the image the texture's edge texels are sampled (clamped): a triangle there tests them
    x0 = np.clip(np.floor(pixels[..., 0].min(axis=1)).astype(int) - 1, 0, width - 1)
    y0 = np.clip(np.floor(pixels[..., 1].min(axis=1)).astype(int) - 1, 0, height - 1)
    x1 = np.clip(np.ceil(pixels[..., 0].max(axis=1)).astype(int) + 2, 1, width)
    y1 = np.clip(np.ceil(pixels[..., 1].max(axis=1)).astype(int) + 2, 1, height)
    return counts[y1, x1] - counts[y0, x1] - counts[y1, x0] + counts[y0, x0] == 0


def smooth_depth(depth_map: np.ndarray, covered: np.ndarray, blur: float) -> np.ndarray:
    """The head's depth continued smoothly beyond its outline (hair, ears), with its sharp steps softened."""
    weight = covered.astype(np.float32)
    values = np.where(covered, depth_map, 0.0).astype(np.float32)
    filled = pull_push_fill(np.repeat(values[..., None], 3, axis=2), weight)[..., 0]
    depth = np.where(covered, depth_map, filled).astype(np.float32)
    return cv2.GaussianBlur(depth, (0, 0), max(blur, 0.5))

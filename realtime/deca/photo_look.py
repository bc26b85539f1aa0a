"""The FLAME head in the photo look: its renderer, and its pose as a motion of the photo's own head.

As for the ICT head (`realtime.compositing.photo_look`): posed from the photo's own codes (at rest the output is the
photo), seen through the photo's own camera, textured with the photo's own pixels where it saw them. FLAME has no
mouth interior: the hole between the lips is closed from behind by a dark cavity, a fan from the lips' inner edge to
a point behind it, which opens with the jaw.
"""

import dataclasses
from dataclasses import dataclass

import moderngl
import numpy as np

from realtime.compositing.photo_look import (
    PhotoLook,
    drawn_photo_layers,
    face_attributes,
    face_skin,
    ortho_camera,
    photo_model_matrix,
    rest_depth,
)
from realtime.deca.flame import FlameIdentity, HeadTemplate, batch_rodrigues
from realtime.deca.landmark_fit import FlameLandmarks
from realtime.head import HeadOffset
from realtime.rendering.renderer import DISCARD_OPACITY, AvatarMesh, AvatarRenderer, RenderOptions
from realtime.tracking.head_pose import CanonicalFrame, canonical_frame

MOUTH_CAVITY_COLOR = (0.12, 0.04, 0.04)
CAVITY_DEPTH = 0.5  # of the mouth's width, behind the lips
UPPER_LIP, LOWER_LIP = 13, 14  # MediaPipe landmarks at the middle of the lips' inner edges


@dataclass(frozen=True, eq=False)
class DecaPhotoView:
    """How the identity photo shows the FLAME head: what the photo look starts from."""

    exp: np.ndarray  # (50,) the photo's expression code
    pose: np.ndarray  # (15,) the photo's FLAME pose (global rotation and jaw)
    rotation: np.ndarray  # (3, 3) posed FLAME space -> camera (identity when the pose holds the global rotation)
    projection: np.ndarray  # (4, 4) posed FLAME space -> photo pixels and depth
    landmarks: np.ndarray  # (478, 3) photo pixels
    person: np.ndarray  # (H, W) float32 in [0, 1]


@dataclass(frozen=True, eq=False)
class MouthCavity:
    """A fan closing FLAME's mouth hole from behind: ``loop`` (K,) FLAME vertices around the hole, in order."""

    loop: np.ndarray
    depth: float  # how far behind the lips the fan's centre lies, model units

    def centre(self, vertices: np.ndarray, back: np.ndarray) -> np.ndarray:
        """(3,) the fan's centre for posed ``vertices`` (N, 3); ``back`` (3,) the unit direction from the camera."""
        return vertices[self.loop].mean(axis=0) + self.depth * back


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """The holes of a triangle mesh (F, 3): each as its ordered loop of vertex indices."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    keys = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    border = edges[counts[inverse.ravel()] == 1]
    following = {int(a): int(b) for a, b in border}
    loops, seen = [], set()
    for start in following:
        if start in seen:
            continue
        loop, vertex = [], start
        while vertex not in seen and vertex in following:
            seen.add(vertex)
            loop.append(vertex)
            vertex = following[vertex]
        loops.append(np.array(loop, np.int64))
    return loops


def mouth_cavity(faces: np.ndarray, rest_pixels: np.ndarray, landmarks: np.ndarray) -> MouthCavity | None:
    """The hole of FLAME's mesh nearest the photo's mouth, as seen at rest (``rest_pixels`` (N, 2) photo pixels)."""
    mouth = (landmarks[UPPER_LIP, :2] + landmarks[LOWER_LIP, :2]) / 2
    loops = [loop for loop in boundary_loops(faces) if len(loop) >= 3]
    if not loops:
        return None
    distances = [np.linalg.norm(rest_pixels[loop].mean(axis=0) - mouth) for loop in loops]
    loop = loops[int(np.argmin(distances))]
    return MouthCavity(loop, 0.0)


def photo_look_renderer(ctx: moderngl.Context, template: HeadTemplate, faces: np.ndarray, albedo: np.ndarray,
                        view: DecaPhotoView, rest_vertices: np.ndarray, rest_normals: np.ndarray, photo: np.ndarray,
                        options: RenderOptions) -> tuple[AvatarRenderer, MouthCavity | None]:
    """A renderer drawing the FLAME head (``rest_vertices``/``rest_normals`` (N, 3) as the photo shows it) into its
    framed ``photo``, and the mouth cavity its geometry must carry (`with_cavity`)."""
    layers, enlargement = drawn_photo_layers(photo, view.person, view.landmarks, options.size)
    size = layers.framing.size  # a photo smaller than the output is drawn at its own resolution
    photo_projection = view.projection
    projection = layers.framing.projection(photo_projection)
    depth_map, covered = rest_depth(ctx, rest_vertices, faces, projection, size)

    photo_pixels = np.c_[rest_vertices, np.ones(len(rest_vertices))] @ photo_projection.T
    cavity = mouth_cavity(faces, photo_pixels[:, :2], view.landmarks)
    render_vertex = template.render_vertex.astype(np.int64)
    triangles = template.triangles.astype(np.int64)
    uv = template.render_uv.astype(np.float32)
    material = np.tile(np.array([[0.7, 0.7, 0.7, 1.0]], np.float32), (len(render_vertex), 1))
    first = len(render_vertex)
    if cavity is not None:
        width = np.ptp(rest_vertices[cavity.loop], axis=0).max()
        cavity = MouthCavity(cavity.loop, float(CAVITY_DEPTH * width))
        render_vertex = np.r_[render_vertex, cavity.loop, len(rest_vertices)]
        uv = np.r_[uv, np.zeros((len(cavity.loop) + 1, 2), np.float32)]
        cavity_material = np.tile(np.array([[*MOUTH_CAVITY_COLOR, 0.0]], np.float32), (len(cavity.loop) + 1, 1))
        material = np.r_[material, cavity_material]

    vertices = with_cavity(rest_vertices, cavity, view.rotation)
    normals = np.r_[rest_normals, [[0.0, 0.0, 1.0]]] if cavity is not None else rest_normals
    pixels = np.c_[vertices[render_vertex], np.ones(len(render_vertex))] @ projection.T
    if cavity is not None:
        ring = first + np.arange(len(cavity.loop))
        fan = np.c_[ring, np.roll(ring, -1), np.full(len(ring), len(render_vertex) - 1)]
        triangles = np.r_[triangles, facing_the_camera(fan, pixels[:, :2])]
    camera_normals = normals[render_vertex] @ view.rotation.T
    camera_normals /= np.maximum(np.linalg.norm(camera_normals, axis=1, keepdims=True), 1e-9)
    skin = np.ones(len(render_vertex), bool)
    if cavity is not None:
        skin[first:] = False
    attributes = face_attributes(pixels[:, :2], pixels[:, 2], camera_normals, depth_map, layers, skin)
    if cavity is not None:
        attributes[first:, 2] = 0.0  # the cavity is the model's own, never the photo's
    triangles = triangles[~(attributes[triangles, 3] < DISCARD_OPACITY).all(axis=1)]  # never drawn: not sent
    mesh = AvatarMesh(triangles=triangles.astype(np.int32), render_vertex=render_vertex.astype(np.int32), uv=uv,
                      material=material, photo=attributes, sharp=np.flatnonzero(~skin))  # the mouth cavity
    camera = ortho_camera(size, projection, float(np.median(pixels[:, 2])))
    skin_layer = face_skin(render_vertex, triangles, skin, vertices, pixels[:, :2])
    look = PhotoLook(ctx, layers, projection, camera, depth_map, covered, skin_layer)
    renderer = AvatarRenderer(ctx, mesh, albedo, dataclasses.replace(options, lighting="photo"), layers.plate,
                              camera=camera, photo=layers.photo, underlay=look,
                              draw_scale=enlargement)
    return renderer, cavity


def facing_the_camera(triangles: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """(T, 3) ``triangles`` wound to face the camera, by their (R, 2) ``pixels`` (y down): GL's front faces are
    counter-clockwise with y up, so clockwise here."""
    a, b, c = (pixels[triangles[:, k]] for k in range(3))
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    return triangles if cross.sum() < 0 else triangles[:, ::-1]


def with_cavity(vertices: np.ndarray, cavity: MouthCavity | None, rotation: np.ndarray) -> np.ndarray:
    """(N, 3) posed FLAME vertices, with the cavity's centre appended (N + 1, 3) when there is one."""
    if cavity is None:
        return vertices
    back = rotation.T @ np.array([0.0, 0.0, -1.0])  # away from the camera, in FLAME space
    return np.r_[vertices, [cavity.centre(vertices, back)]].astype(np.float32)


def head_frame(rest: np.ndarray, faces: np.ndarray, identity: FlameIdentity, view: DecaPhotoView,
               landmarks: FlameLandmarks | None) -> CanonicalFrame:
    """Where MediaPipe's canonical face sits on the photo's posed FLAME head ``rest`` (5023, 3; ``faces`` its
    triangles): what the driver's head motion is relative to. Without a landmark embedding: the neck joint, and
    FLAME's metres for MediaPipe's centimetres."""
    if landmarks is None:
        rotation = batch_rodrigues(view.pose[None, :3].astype(np.float64))[0]
        neck = rotation @ (identity.joints[1] - identity.joints[0]) + identity.joints[0]
        return CanonicalFrame(neck.astype(np.float32), 0.01)
    return canonical_frame(landmarks.points(rest, faces), landmarks.mediapipe)


def photo_codes(view: DecaPhotoView, exp: np.ndarray, jaw: np.ndarray, eyes: np.ndarray) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """The driver's codes (relative to rest) on top of the photo's own: FLAME expression (50,) and pose (15,)."""
    pose = view.pose.astype(np.float32).copy()
    pose[6:9] += jaw
    pose[9:15] = eyes
    return (view.exp + exp).astype(np.float32), pose


def photo_matrix(view: DecaPhotoView, offset: HeadOffset, frame: CanonicalFrame) -> np.ndarray:
    return photo_model_matrix(offset, view.rotation, frame)

"""The ICT head in the photo look: its renderer, and its pose as a motion of the photo's own head.

The head is posed from the photo's own expression (at rest the output is the photo), seen through the photo's own
camera; the skin fades into the photo at the face outline, and ICT's scalp and neck are not drawn: the photo's hair,
ears and neck are the moving layer of `realtime.compositing.photo_look`.
"""

import dataclasses

import cv2
import moderngl
import numpy as np

from realtime.compositing.photo_look import (
    SHARP_FEATHER,
    PhotoLook,
    distance_inside,
    drawn_photo_layers,
    face_attributes,
    face_skin,
    ortho_camera,
    photo_model_matrix,
    rest_depth,
)
from realtime.head import AvatarPose
from realtime.ict.avatar import (
    KEPT_WHOLE,
    PART_COLORS,
    SIMPLIFIED_PARTS,
    Avatar,
    build_avatar_mesh,
    hidden_triangles,
    mouth_shade,
    shown_triangles,
)
from realtime.ict.identity import Identity
from realtime.ict.landmark_map import LandmarkMap
from realtime.ict.model import IctModel
from realtime.rendering.renderer import DISCARD_OPACITY, AvatarRenderer, RenderOptions
from realtime.tracking.head_pose import CanonicalFrame, canonical_frame
from realtime.tracking.landmarks import FACE_OVAL, INNER_LIPS, OUTER_LIPS

SKIN_PARTS = ("face",)  # fades into the photo at its outline
HIDDEN_PARTS = ("head_neck",)  # the photo's own hair, ears and neck are shown instead
# The face is coarser than in the head look: small in the frame, textured with the photo and fading into it at its
# outline, it shows the same from fewer triangles (which the rasteriser pays for), its lips kept whole: the triangles
# that rolling the lips moves over 2 mm, whose inner contour an open mouth shows. Against the whole face at 640x480,
# four mouth poses and turns: closer to it than the head look's face but in the widest open mouth; 6% less drawing.
SIMPLIFIED = {**SIMPLIFIED_PARTS, "face": 0.85}
KEPT_WHOLE_HERE = {"face": {**KEPT_WHOLE["face"], "mouthRollLower": 0.2, "mouthRollUpper": 0.2}}
# The mouth's materials are shaded by their shape and their depth in the mouth (`mouth_shade`); a real mouth interior
# is also in the lips' shadow.
MOUTH_SHADOW = {"mouth_socket": 0.5, "gums_tongue": 0.9, "teeth": 0.9}
GUM_SHADE = 0.8  # gums against the photo's lips: inside the mouth, a little darker
# The photo's own teeth: seen in at least this many pixels, this much brighter than its lips (luma in [0, 1]); a front
# tooth shows this much of its material colour (its mouth shadow, 0.9, times its shading facing the camera, 0.95)
TEETH_MIN_PIXELS, TEETH_OVER_LIPS, FRONT_TEETH_SHOWN = 30, 0.15, 0.86
# Teeth the photo does not show take its light's colour from its skin: on the sample photos that show teeth, the teeth's
# chromaticity lies 0.4-0.7 of the way from grey to the skin's (the same light, on a whiter surface). The model's own
# ivory, the same on every photo, looked green beside a pink-lit face and yellow beside a blue-lit one.
TEETH_SKIN_CHROMA = 0.5
SKIN_LUMA_PERCENTILES = (40, 95)  # of the face's pixels: skin, not eyes, brows and nostrils, nor highlights
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def photo_look_renderer(ctx: moderngl.Context, model: IctModel, identity: Identity, avatar: Avatar,
                        photo: np.ndarray, options: RenderOptions) -> AvatarRenderer:
    """A renderer drawing ``identity``'s head into its framed ``photo`` (H, W, 3 uint8) at ``options.size``."""
    view = identity.photo_view
    layers, enlargement = drawn_photo_layers(photo, view.person, view.landmarks, options.size)
    size = layers.framing.size  # a photo smaller than the output is drawn at its own resolution
    projection = layers.framing.projection(view.projection())
    vertices, normals = avatar.pose(view.expression)
    mesh = build_avatar_mesh(model, identity.iris_color, simplified=SIMPLIFIED, kept_whole=KEPT_WHOLE_HERE)
    triangles = mesh.triangles
    depth_map, covered = rest_depth(ctx, vertices, model.render_vertex[triangles], projection, size)

    render_vertices = model.render_vertex
    pixels = np.c_[vertices[render_vertices], np.ones(len(render_vertices))] @ projection.T
    camera_normals = normals[render_vertices] @ view.rotation.T
    camera_normals /= np.maximum(np.linalg.norm(camera_normals, axis=1, keepdims=True), 1e-9)
    skin = np.zeros(len(render_vertices), bool)
    skin[_part_vertices(model, *SKIN_PARTS)] = True
    attributes = face_attributes(pixels[:, :2], pixels[:, 2], camera_normals, depth_map, layers, skin)
    # teeth the photo shows between parted lips are the photo's: per vertex, the depth test above fails on every
    # tooth's back and sides, and the triangles between them darken the photo's teeth at rest
    teeth, upper_gums = _part_vertices(model, "teeth"), _upper_gums(model)
    behind_lips = np.r_[teeth, upper_gums]
    opening = distance_inside(pixels[behind_lips, :2], layers.landmarks[list(INNER_LIPS), :2])
    opening = np.clip(opening / (SHARP_FEATHER * layers.inter_ocular), 0.0, 1.0)
    attributes[behind_lips, 2] = np.maximum(attributes[behind_lips, 2], opening)

    hidden = _vertex_mask(model, model.part_mask(*HIDDEN_PARTS))
    transparent = attributes[:, 3] < DISCARD_OPACITY  # triangles of these are never drawn: not sent
    kept = ~(hidden[triangles].all(axis=1) | transparent[triangles].all(axis=1))
    kept &= shown_triangles(model, triangles, hidden_triangles())  # (the rest depth above is the whole head's)
    # gums seen between the teeth and above them in a broad smile: the photo's own lip colour, a shade darker (the
    # model's dark gum red showed as a row of black dots between the upper teeth)
    lips = lip_color(layers.photo, layers.landmarks)
    mesh.material[upper_gums, :3] = GUM_SHADE * lips
    # teeth the photo does not show (a smile wider than the photo's, an open jaw) look like those it shows: the
    # model's ivory, shaded, looked grey beside the photo's own teeth and took none of its white balance
    shown = photo_teeth_color(layers.photo, layers.landmarks, lips)
    if shown is not None:
        mesh.material[teeth, :3] = np.clip(shown / FRONT_TEETH_SHOWN, 0.0, 1.0)
    else:
        mesh.material[teeth, :3] = unseen_teeth_color(layers.photo, layers.landmarks)
    mesh.material[teeth, :3] *= mouth_shade(model)[teeth, None]  # recoloured: in the mouth's shadow again
    for part, shade in MOUTH_SHADOW.items():
        mesh.material[_part_vertices(model, part), :3] *= shade
    drawn = triangles[kept]
    mesh = dataclasses.replace(mesh, triangles=drawn, photo=attributes,
                               sharp=np.unique(drawn[~skin[drawn].all(axis=1)]))  # mouth, teeth, eyes
    camera = ortho_camera(size, projection, float(np.median(pixels[:, 2])))
    skin_layer = face_skin(render_vertices, drawn, skin, vertices, pixels[:, :2])
    look = PhotoLook(ctx, layers, projection, camera, depth_map, covered, skin_layer)
    return AvatarRenderer(ctx, mesh, identity.albedo, dataclasses.replace(options, lighting="photo"), layers.plate,
                          camera=camera, photo=layers.photo, underlay=look,
                          draw_scale=enlargement)


def lip_color(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(3,) RGB in [0, 1]: the median colour of the lips in ``photo`` (H, W, 3 uint8), between the (478, 2+)
    ``landmarks``' outer and inner lip outlines."""
    pixels = photo[_inside(photo, landmarks, OUTER_LIPS) & ~_inside(photo, landmarks, INNER_LIPS)]
    if len(pixels) == 0:
        return np.array(PART_COLORS["gums_tongue"], np.float32)
    return (np.median(pixels, axis=0) / 255).astype(np.float32)


def photo_teeth_color(photo: np.ndarray, landmarks: np.ndarray, lips: np.ndarray) -> np.ndarray | None:
    """(3,) RGB in [0, 1] of the teeth ``photo`` shows between its parted lips (the brightest part of the opening
    between the (478, 2+) ``landmarks``' inner lip outline), or None if it shows none: a closed mouth, or an opening no
    brighter than the ``lips`` (its tongue or its dark inside)."""
    pixels = photo[_inside(photo, landmarks, INNER_LIPS)].astype(np.float32) / 255
    if len(pixels) < TEETH_MIN_PIXELS:
        return None
    luma = pixels @ LUMA
    brightest = pixels[luma >= np.percentile(luma, 70)].mean(axis=0)
    return brightest if float(brightest @ LUMA) >= float(lips @ LUMA) + TEETH_OVER_LIPS else None


def unseen_teeth_color(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(3,) RGB in [0, 1] for teeth ``photo`` (H, W, 3 uint8) does not show: the model's ivory brightness, in the
    chromaticity of the skin within the (478, 2+) ``landmarks``' face outline, `TEETH_SKIN_CHROMA` of the way from
    grey."""
    ivory = np.array(PART_COLORS["teeth"], np.float32)
    face = _inside(photo, landmarks, FACE_OVAL) & ~_inside(photo, landmarks, OUTER_LIPS)
    pixels = photo[face].astype(np.float32) / 255
    if len(pixels) == 0:
        return ivory
    luma = pixels @ LUMA
    low, high = np.percentile(luma, SKIN_LUMA_PERCENTILES)
    skin = np.median(pixels[(luma >= low) & (luma <= high)], axis=0)
    chroma = skin / max(float(skin.sum()), 1e-6)
    teeth = 1.0 / 3.0 + TEETH_SKIN_CHROMA * (chroma - 1.0 / 3.0)
    return np.clip(teeth * float(ivory @ LUMA) / float(teeth @ LUMA), 0.0, 1.0).astype(np.float32)


def _inside(image: np.ndarray, landmarks: np.ndarray, outline: tuple[int, ...]) -> np.ndarray:
    """(H, W) bool: the pixels of ``image`` inside the polygon of the ``outline`` landmarks."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[list(outline), :2]).astype(np.int32)], 1)
    return mask.astype(bool)


def _part_vertices(model: IctModel, *parts: str) -> np.ndarray:
    """Render vertices of the named parts' triangles."""
    return np.unique(model.triangles[model.part_mask(*parts)])


def _upper_gums(model: IctModel) -> np.ndarray:
    """Render vertices of the gums that stay with the skull when the jaw opens (not the tongue, nor the lower gums)."""
    gums = _part_vertices(model, "gums_tongue")
    jaw = model.expression_basis[model.expression_index("jawOpen")][model.render_vertex[gums]]
    return gums[np.linalg.norm(jaw, axis=1) < 0.05]


def _vertex_mask(model: IctModel, triangle_mask: np.ndarray) -> np.ndarray:
    """Render vertices used only by the masked triangles of ``model.triangles``."""
    used = np.zeros(len(model.render_vertex), bool)
    used[np.unique(model.triangles[triangle_mask])] = True
    used[np.unique(model.triangles[~triangle_mask])] = False
    return used


def head_frame(identity: Identity) -> CanonicalFrame:
    """Where MediaPipe's canonical face sits on the identity's head: what the driver's head motion is relative to."""
    points = LandmarkMap.load().points(identity.vertices)
    return canonical_frame(points, np.arange(len(points)))


def photo_pose(identity: Identity, pose: AvatarPose, frame: CanonicalFrame) -> tuple[np.ndarray, np.ndarray]:
    """(53,) expression weights (the photo's own plus the driver's) and the (4, 4) model matrix of ``pose``."""
    view = identity.photo_view
    expression = np.clip(view.expression + pose.expression, 0.0, 1.0).astype(np.float32)
    return expression, photo_model_matrix(pose.offset, view.rotation, frame)

"""The avatar: an identity's neutral ICT head plus this frame's expression, and what the renderer needs to draw it."""

import copy
import functools
from pathlib import Path

import numpy as np

from realtime.geometry.normals import VertexNormals
from realtime.head import GAZE_DEGREES
from realtime.ict.model import IctModel
from realtime.paths import PACKAGE_DATA
from realtime.rendering.renderer import AvatarMesh
from realtime.tracking.tracker import BLENDSHAPE_NAMES

# Parts drawn, and their material colours (linear-ish RGB in [0, 1]); the photo texture covers face and head. The mouth
# interior is dark: it is lit like the skin here, where a real one is in shadow (and MediaPipe reads a bright one as a
# less open mouth). Light reaches into a mouth through its opening only: the mouth's parts darken with their depth
# behind the front teeth, from the front teeth's and gums' own depth to this share of their colour this far back and
# beyond (`mouth_shade`). Lit evenly, an open mouth showed a flat red disc of tongue, and the gums between parted teeth
# a red zigzag.
# Lacrimal fluid, eye blend and eye occlusion are shells for a game engine's translucent eye shaders: not drawn. The
# iris caps lie inside the sclera shells, which cover them from every pose and gaze: not drawn either (3,200
# triangles the rasteriser would pay for; renders identical over 5 yaws, 3 pitches and 8 gazes).
PART_COLORS: dict[str, tuple[float, float, float]] = {
    "face": (0.80, 0.62, 0.52),
    "head_neck": (0.80, 0.62, 0.52),
    "mouth_socket": (0.10, 0.03, 0.03),
    "eye_socket_left": (0.25, 0.15, 0.13),
    "eye_socket_right": (0.25, 0.15, 0.13),
    "gums_tongue": (0.42, 0.17, 0.17),
    "teeth": (0.90, 0.87, 0.78),
    "sclera_left": (0.88, 0.86, 0.83),  # iris and pupil are painted onto the eyeball by `paint_irises`
    "sclera_right": (0.88, 0.86, 0.83),
    # "eyelashes": (0.06, 0.045, 0.04),
}
TEXTURED_PARTS = ("face", "head_neck")
MOUTH_PARTS = ("mouth_socket", "gums_tongue", "teeth")
MOUTH_LIT_CM, MOUTH_DARK_CM, MOUTH_DARK_SHADE = 1.0, 4.0, 0.2
# The parts inside the head: some of their triangles no pose or expression shows, and those are not drawn
# (`hidden_triangles`). The software rasteriser pays for every triangle: the teeth cost 10% of a frame's drawing with
# the mouth closed.
INNER_PARTS = ("mouth_socket", "eye_socket_left", "eye_socket_right", "gums_tongue", "teeth", "sclera_left",
               "sclera_right")
HIDDEN_TRIANGLES_PATH = PACKAGE_DATA / "ict_hidden_triangles.txt"
# Parts drawn from coarser copies (this fraction of their triangles removed): the software rasteriser pays per
# triangle. Those seen only through the mouth are a third of the head's triangles for a few pixels on screen; face
# and scalp at half their triangles look the same (mean difference 0.2 of 255 at 640x480, head turned 45 degrees,
# mouth open) for 15% less drawing. The teeth stay whole: coarsened, their edges show notches in a smile.
SIMPLIFIED_PARTS = {"face": 0.5, "head_neck": 0.5, "gums_tongue": 0.7, "mouth_socket": 0.7, "eye_socket_left": 0.5,
                    "eye_socket_right": 0.5}
# What stays whole when a part is coarsened: the triangles that these shapes move further than this many cm, the
# face's lids. Coarser, their chords would cut into the eyeballs they close over.
KEPT_WHOLE: dict[str, dict[str, float]] = {"face": {"eyeBlink_L": 0.05, "eyeBlink_R": 0.05}}
IRIS_RADIUS_CM = 0.58
PUPIL_RADIUS_CM = 0.22
# MediaPipe's two symmetric scores drive both halves of ICT's split shapes.
SHARED_SHAPES = {"browInnerUp": ("browInnerUp_L", "browInnerUp_R"), "cheekPuff": ("cheekPuff_L", "cheekPuff_R")}


def ict_shape_names(blendshape: str, mirrored: bool = False) -> tuple[str, ...]:
    """The ICT shapes a MediaPipe blendshape drives. ``mirrored`` swaps _L and _R (for a mirror-image driver)."""
    if blendshape in SHARED_SHAPES:
        return SHARED_SHAPES[blendshape]
    for side, (suffix, other) in {"Left": ("_L", "_R"), "Right": ("_R", "_L")}.items():
        # jawLeft/mouthRight name a direction, not a side of the face: those keep their names
        if blendshape.endswith(side) and blendshape not in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):
            return (blendshape[: -len(side)] + (other if mirrored else suffix),)
    return (blendshape,)


def blendshape_matrix(expression_names: tuple[str, ...], mirrored: bool = False) -> np.ndarray:
    """(53, 51) matrix taking MediaPipe blendshape scores to ICT expression weights."""
    matrix = np.zeros((len(expression_names), len(BLENDSHAPE_NAMES)), np.float32)
    for column, name in enumerate(BLENDSHAPE_NAMES):
        for shape in ict_shape_names(name, mirrored):
            matrix[expression_names.index(shape), column] = 1.0
    return matrix


@functools.cache
def hidden_triangles(path: Path = HIDDEN_TRIANGLES_PATH) -> np.ndarray:
    """(K,) indices of the model's triangles that no view shows (`tools/build_hidden_triangles.py`: start and end of
    each run, a line each); read once, read-only."""
    runs = np.loadtxt(path, dtype=np.int64, comments="#", ndmin=2)
    hidden = np.concatenate([np.arange(start, end) for start, end in runs]) if len(runs) else np.zeros(0, np.int64)
    hidden.setflags(write=False)
    return hidden


def simplify_part(model: IctModel, part: str, reduction: float,
                  kept_whole: dict[str, dict[str, float]] = KEPT_WHOLE) -> np.ndarray:
    """A coarser copy of a part over a subset of its own render vertices, (T', 3) render-vertex triangles.

    Quadric edge collapses (fast-simplification) are replayed as half-edge collapses: every removed vertex merges into
    the vertex that survives it, which keeps its original position, so the coarse mesh deforms with the same
    identity and expression shapes as the full one. The part's open edges are kept whole: its outline where it meets
    the other parts (no cracks between two coarsened parts), the lids' and lips' edges, and its UV seams (render
    vertices are split there), so that every triangle keeps the texture's UVs of its own side; so are the triangles
    that ``kept_whole`` names (the lids).
    """
    import fast_simplification

    part_triangles = model.triangles[model.part_mask(part)]
    moved = np.zeros(model.n_vertices, bool)
    for shape, distance in kept_whole.get(part, {}).items():
        moved |= np.linalg.norm(model.expression_basis[model.expression_index(shape)], axis=1) > distance
    whole = moved[model.render_vertex[part_triangles]].any(axis=1)
    used, local = np.unique(part_triangles[~whole], return_inverse=True)
    local = local.reshape(-1, 3).astype(np.int32)
    _, _, collapses = fast_simplification.simplify(
        model.neutral[model.render_vertex[used]].astype(np.float32), local, target_reduction=reduction,
        return_collapses=True, preserve_border=True,
    )
    survivor = np.arange(len(used))
    for kept, removed in collapses:
        survivor[removed] = kept
    while not np.array_equal(survivor[survivor], survivor):  # follow chains of collapses to their end
        survivor = survivor[survivor]
    triangles = survivor[local]
    triangles = triangles[(triangles[:, 0] != triangles[:, 1]) & (triangles[:, 1] != triangles[:, 2])
                          & (triangles[:, 0] != triangles[:, 2])]
    _, first = np.unique(np.sort(triangles, axis=1), axis=0, return_index=True)
    return np.r_[used[triangles[np.sort(first)]], part_triangles[whole]].astype(np.int32)


def drawn_triangles(model: IctModel, simplified: dict[str, float] = SIMPLIFIED_PARTS,
                    kept_whole: dict[str, dict[str, float]] = KEPT_WHOLE) -> np.ndarray:
    """(T', 3) render-vertex triangles of the drawn parts, the ``simplified`` parts reduced by their fractions (what
    ``kept_whole`` names kept whole)."""
    parts = [simplify_part(model, name, simplified[name], kept_whole) if name in simplified
             else model.triangles[model.part_mask(name)] for name in PART_COLORS]
    return np.concatenate(parts)


def shown_triangles(model: IctModel, triangles: np.ndarray, hidden: np.ndarray) -> np.ndarray:
    """(T,) bool: which of ``triangles`` (T, 3 render vertices; coarsened ones too) can show, given the ``hidden``
    model triangles: a triangle is hidden where its corners all are, on hidden triangles only."""
    shown = np.ones(len(model.triangles), bool)
    shown[hidden] = False
    on_shown = np.zeros(len(model.render_vertex), bool)
    on_shown[model.triangles[shown].ravel()] = True
    return on_shown[triangles].any(axis=1)


def paint_irises(model: IctModel, material: np.ndarray, iris_color: np.ndarray) -> None:
    """Colour the eyes per vertex: pupil, iris with a darker limbal ring, sclera outside (in place).

    The sclera shell, which is drawn, lies in front of the iris cap, which is not; the pattern is centred on the
    cap's axis (+z through its centroid), on both.
    """
    for side in ("left", "right"):
        axis = model.neutral[model.render_vertex[np.unique(model.triangles[model.part_mask(f"iris_{side}")])]]
        vertices = np.unique(model.triangles[model.part_mask(f"iris_{side}", f"sclera_{side}")])
        points = model.neutral[model.render_vertex[vertices]]
        radius = np.linalg.norm(points[:, :2] - axis[:, :2].mean(0), axis=1)
        iris = np.clip((IRIS_RADIUS_CM - radius) / 0.06, 0, 1)[:, None]
        pupil = np.clip((PUPIL_RADIUS_CM - radius) / 0.04, 0, 1)[:, None]
        limbus = np.clip(1 - np.abs(radius - IRIS_RADIUS_CM * 0.92) / 0.1, 0, 1)[:, None]
        color = iris_color * (1 - 0.45 * limbus)
        color = color * (1 - pupil) + 0.03 * pupil
        material[vertices, :3] = material[vertices, :3] * (1 - iris) + color * iris


def atlas_uv(model: IctModel) -> np.ndarray:
    """(R, 2) render-vertex UVs in the texture atlas: UV tiles 0 (face) and 1 (head and neck) side by side."""
    uv = model.render_uv.copy()
    uv[:, 0] /= 2.0  # tiles u in [0, 2) -> atlas [0, 1)
    return uv


def build_avatar_mesh(model: IctModel, iris_color: np.ndarray | None = None, hidden: np.ndarray | None = None,
                      simplified: dict[str, float] = SIMPLIFIED_PARTS,
                      kept_whole: dict[str, dict[str, float]] = KEPT_WHOLE) -> AvatarMesh:
    """The drawn triangles (the ``simplified`` parts coarsened but for what ``kept_whole`` names, less those on the
    ``hidden`` model triangles) with their materials; textured parts sample an atlas of the UV tiles 0 and 1 side by
    side."""
    triangles = drawn_triangles(model, simplified, kept_whole)
    if hidden is not None:
        triangles = triangles[shown_triangles(model, triangles, hidden)]
    material = np.zeros((len(model.render_vertex), 4), np.float32)
    part_names = list(PART_COLORS)
    for name in part_names:
        vertices = np.unique(model.triangles[model.part_mask(name)])
        material[vertices, :3] = PART_COLORS[name]
        material[vertices, 3] = 1.0 if name in TEXTURED_PARTS else 0.0
    paint_irises(model, material, np.array((0.32, 0.22, 0.14) if iris_color is None else iris_color, np.float32))
    material[:, :3] *= mouth_shade(model)[:, None]
    return AvatarMesh(
        triangles=triangles,
        render_vertex=model.render_vertex,
        uv=atlas_uv(model),
        material=material,
    )


def mouth_shade(model: IctModel) -> np.ndarray:
    """(R,) per render vertex, the share of its colour the mouth's shadow leaves: 1 outside the `MOUTH_PARTS` and up to
    `MOUTH_LIT_CM` behind the front teeth (neutral face), falling linearly to `MOUTH_DARK_SHADE` at `MOUTH_DARK_CM`."""
    shade = np.ones(len(model.render_vertex), np.float32)
    mouth = np.unique(model.triangles[model.part_mask(*MOUTH_PARTS)])
    teeth = np.unique(model.triangles[model.part_mask("teeth")])
    depth = model.neutral[model.render_vertex, 2]
    behind = (depth[teeth].max() - depth[mouth] - MOUTH_LIT_CM) / (MOUTH_DARK_CM - MOUTH_LIT_CM)
    shade[mouth] = np.clip(1.0 - (1.0 - MOUTH_DARK_SHADE) * behind, MOUTH_DARK_SHADE, 1.0)
    return shade


# ICT's upper teeth sit wholly behind the upper lip; lowered this much, they show in an open mouth and a smile as a
# person's do, and stay hidden (behind the lips, above the lower teeth) when the mouth is closed.
UPPER_TEETH_DROP_CM = 0.3
# ICT's lids meet at about this much of its eyeBlink shapes, not at 1: at 1 a slit of eyeball shows between them,
# wider on some faces. A full blink is given this much.
LIDS_CLOSED_AT = 1.2


def sphere_center(points: np.ndarray) -> np.ndarray:
    """Least-squares centre of the sphere through (K, 3) ``points``: |p|^2 = 2 p.c + (r^2 - |c|^2) is linear in c."""
    design = np.c_[2 * points, np.ones(len(points))]
    solution, *_ = np.linalg.lstsq(design, (points**2).sum(axis=1), rcond=None)
    return solution[:3]


def gaze_rotation(look_out: float, look_in: float, look_up: float, look_down: float, outward: float) -> np.ndarray:
    """(3, 3) eyeball rotation for one eye's eyeLook* weights; ``outward`` is +1 for the eye at +x, -1 otherwise."""
    yaw = np.radians(outward * (look_out - look_in) * GAZE_DEGREES[0])  # about +y: the gaze (+z) turns towards +x
    pitch = np.radians((look_up - look_down) * GAZE_DEGREES[1])  # the gaze turns towards +y
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    turn = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    lift = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    return (turn @ lift).astype(np.float32)


class Avatar:
    """An identity's head that takes expression weights: ``vertices, normals = avatar.pose(weights)``.

    Normals are blended like the positions, from exact normals of the neutral head and of each expression at full
    weight (computed once): at a fraction of a millisecond per frame instead of a few for exact per-frame normals,
    and indistinguishable under the soft lighting. The shader normalises them.
    """

    def __init__(self, model: IctModel, identity_vertices: np.ndarray) -> None:
        self.model = model
        self.identity_vertices = np.array(identity_vertices, np.float32)
        teeth = np.unique(model.triangles_of("teeth"))
        jaw_motion = np.linalg.norm(model.expression_basis[model.expression_index("jawOpen")][teeth], axis=1)
        self.identity_vertices[teeth[jaw_motion < 0.05], 1] -= UPPER_TEETH_DROP_CM  # the upper teeth: jaw-fixed
        # normals of the full surface: the coarser copies that are drawn are shaded as the full head
        self.exact_normals = VertexNormals(model.render_vertex[drawn_triangles(model, {})], model.n_vertices)
        n_shapes = len(model.expression_basis)
        self.identity_normals = self.exact_normals(self.identity_vertices)
        normal_basis = np.empty_like(model.expression_basis)
        for i in range(n_shapes):
            normal_basis[i] = self.exact_normals(self.identity_vertices + model.expression_basis[i])
        normal_basis -= self.identity_normals
        # Each basis only over the vertices it moves (no shape moves a fifth of the head's: the scalp, the neck): a
        # frame's posing reads these in full, and that is most of its time.
        self._moved, self._expression_basis = _moved_coordinates(model.expression_basis)
        self._turned, self._normal_basis = _moved_coordinates(normal_basis)
        self._eyes = []  # (vertices: indices or a slice, centre, weights of out/in/up/down, of the blink, outward)
        for side, suffix, outward in (("left", "_L", 1.0), ("right", "_R", -1.0)):
            vertices = np.unique(model.triangles_of(f"sclera_{side}", f"iris_{side}"))
            if vertices[-1] - vertices[0] + 1 == len(vertices):  # one run (as in ICT): posed through a view, no copy
                vertices = slice(int(vertices[0]), int(vertices[-1]) + 1)
            center = sphere_center(self.identity_vertices[np.unique(model.triangles_of(f"sclera_{side}"))])
            looks = [model.expression_index(f"eyeLook{d}{suffix}") for d in ("Out", "In", "Up", "Down")]
            blink = model.expression_index(f"eyeBlink{suffix}")
            self._eyes.append((vertices, center.astype(np.float32), looks, blink, outward))

    def pose(self, expression_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(53,) ICT expression weights -> (N, 3) vertices and (N, 3) approximate, unnormalised normals."""
        weights = np.asarray(expression_weights, np.float32)
        shapes = weights.copy()
        for _, _, looks, blink, _ in self._eyes:
            shapes[looks[2]] *= 1.0 - min(float(weights[blink]), 1.0)  # eyeLookUp's raised lids would not close
            shapes[blink] *= LIDS_CLOSED_AT
        vertices = self.identity_vertices.copy()
        vertices.reshape(-1)[self._moved] += shapes @ self._expression_basis  # flat indices: 4x faster than rows
        normals = self.identity_normals.copy()
        normals.reshape(-1)[self._turned] += shapes @ self._normal_basis
        for eye, center, looks, blink, outward in self._eyes:
            # closing lids bring the eyeball to centre: a cornea turned up or aside would bulge through them
            rotation = gaze_rotation(*weights[looks] * (1.0 - min(float(weights[blink]), 1.0)), outward)
            vertices[eye] = (vertices[eye] - center) @ rotation.T + center
            normals[eye] = normals[eye] @ rotation.T
        return vertices, normals

    def posing_only(self, vertices: np.ndarray) -> "Avatar":
        """This avatar, posing only ``vertices`` (indices: those drawn, say); the others stay at rest in `pose`."""
        posing = copy.copy(self)
        posing._moved, posing._expression_basis = _coordinates_among(self._moved, self._expression_basis, vertices)
        posing._turned, posing._normal_basis = _coordinates_among(self._turned, self._normal_basis, vertices)
        return posing


def _moved_coordinates(basis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, N, 3) per-shape offsets -> (M * 3,) flat coordinates of the vertices some shape moves, (S, M * 3) their
    offsets."""
    moved = np.flatnonzero(np.abs(basis).max(axis=(0, 2)) > 0.0)
    return _flat(moved), np.ascontiguousarray(basis[:, moved].reshape(len(basis), -1))


def _coordinates_among(flat: np.ndarray, basis: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (M * 3,) ``flat`` coordinates and their (S, M * 3) ``basis`` columns, kept where their vertices are among
    ``vertices``."""
    kept = np.isin(flat // 3, vertices)
    return flat[kept], np.ascontiguousarray(basis[:, kept])


def _flat(rows: np.ndarray) -> np.ndarray:
    """(M * 3,) indices of the x, y, z of vertices ``rows`` (M,) in a flattened (N, 3) array."""
    return (rows[:, None] * 3 + np.arange(3)).ravel()

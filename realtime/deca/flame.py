"""FLAME, the head model under DECA: imported once from the user's own pickle, evaluated per frame with numpy.

FLAME (Li et al., SIGGRAPH Asia 2017) is 5023 vertices, 9976 triangles and 5 joints (global/root, neck, jaw, left
eye, right eye). A head is

    v_shaped = v_template + shapedirs · β + exprdirs · ψ               identity (300) and expression (100) blendshapes
    J        = J_regressor · v_shaped                                   joint locations
    v_posed  = v_shaped + posedirs · pose_feature(R)                    pose correctives, R = Rodrigues(pose)
    vertices = Σ_j w_vj · G_j(R, J) · v_posed                            linear blend skinning

exactly as DECA's ``decalib/models/lbs.py`` (the SMPL/smplx ``lbs`` function). DECA's codes are the first 100 identity
and first 50 expression coefficients; the rest are zero. The identity part is constant for an avatar, so
`flame_identity` evaluates it once and `flame_vertices` does the per-frame rest.

The licensed ``generic_model.pkl`` (FLAME 2020: a Python 2 chumpy pickle) or a FLAME 2023 pickle is read with the
restricted unpickler of `realtime.deca.safe_pickle` and converted once into an ``.npz`` in the cache. Coordinates are
metres, +y up, the face looking down +z.
"""

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from realtime.deca.safe_pickle import refused_in_one_line, restricted_load
from realtime.errors import UserError
from realtime.geometry.mesh_files import read_obj, split_uv_seams

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
N_VERTICES = 5023
N_FACES = 9976
N_JOINTS = 5
N_SHAPE = 300
N_EXPRESSION = 100
N_POSE_FEATURES = 9 * (N_JOINTS - 1)
JOINT_NAMES = ("global", "neck", "jaw", "left_eye", "right_eye")
EXPECTED_PICKLE = "(expected FLAME 2020's generic_model.pkl or a FLAME 2023 pickle)"
EXPECTED_TEMPLATE = "(expected DECA's data/head_template.obj)"

# What the pickle must hold: key -> expected shape (None: any length on that axis, checked separately).
PICKLE_SHAPES: dict[str, tuple[int | None, ...]] = {
    "v_template": (N_VERTICES, 3),
    "shapedirs": (N_VERTICES, 3, None),
    "posedirs": (N_VERTICES, 3, N_POSE_FEATURES),
    "J_regressor": (N_JOINTS, N_VERTICES),
    "weights": (N_VERTICES, N_JOINTS),
    "kintree_table": (2, N_JOINTS),
    "f": (N_FACES, 3),
}


@dataclass(frozen=True, eq=False)
class FlameModel:
    """The FLAME arrays as DECA holds them; float32 unless stated."""

    v_template: np.ndarray  # (5023, 3)
    shapedirs: np.ndarray  # (5023, 3, 300) identity blendshapes
    exprdirs: np.ndarray  # (5023, 3, 100) expression blendshapes (the pickle's shapedirs[:, :, 300:400])
    posedirs: np.ndarray  # (36, 15069) pose correctives: (R[1:] - I).flatten() @ posedirs -> (5023 * 3,)
    J_regressor: np.ndarray  # (5, 5023) dense
    lbs_weights: np.ndarray  # (5023, 5)
    parents: np.ndarray  # (5,) int64, parents[0] = -1
    faces: np.ndarray  # (9976, 3) int64

    def save(self, path: Path) -> None:
        """Write an uncompressed ``.npz`` (read back with ``allow_pickle=False``)."""
        arrays = {field.name: getattr(self, field.name) for field in fields(self)}
        with open(path, "wb") as fp:
            np.savez(fp, format_version=np.int64(FORMAT_VERSION), **arrays)

    @classmethod
    def load(cls, path: Path) -> "FlameModel":
        with np.load(path, allow_pickle=False) as data:
            if int(data["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path}: FLAME cache format {int(data['format_version'])}, not {FORMAT_VERSION}")
            return cls(**{field.name: data[field.name] for field in fields(cls)})


@dataclass(frozen=True, eq=False)
class FlameIdentity:
    """The constant part of one person's head: evaluated once, used every frame."""

    v_shaped: np.ndarray  # (5023, 3) template + identity blendshapes
    joints: np.ndarray  # (5, 3) J_regressor @ v_shaped
    joint_exprdirs: np.ndarray  # (5, 3, 100) J_regressor applied to exprdirs: joints(ψ) = joints + joint_exprdirs @ ψ


@dataclass(frozen=True, eq=False)
class HeadTemplate:
    """DECA's ``head_template.obj`` split on UV seams for a GL vertex buffer (5118 render vertices in DECA's file)."""

    render_vertex: np.ndarray  # (R,) int32 FLAME vertex of each render vertex: positions = vertices[render_vertex]
    render_uv: np.ndarray  # (R, 2) float32 in [0, 1], OBJ convention (v up; UV images have row 0 at v = 1)
    triangles: np.ndarray  # (9976, 3) int32 render-vertex indices, in the OBJ's face order


# ---------------------------------------------------------------------------------------------------------------------
# Import of the user's pickle, cached as .npz


def import_flame(pkl: Path, cache_dir: Path | None) -> FlameModel:
    """The FLAME model in ``pkl``, converted once into ``cache_dir/flame-<sha256[:16]>.npz``.

    Later calls with an unchanged file (same size and modification time) load the ``.npz`` without reading the
    pickle. With ``cache_dir=None`` the pickle is converted every time. A missing, damaged or foreign file, or one
    that names anything but arrays, raises a `UserError` naming the file.
    """
    pkl = Path(pkl)
    if not pkl.is_file():
        raise UserError(f"{pkl}: file not found {EXPECTED_PICKLE}")
    if cache_dir is None:
        return _model_from_pickle(pkl)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = _content_digest(pkl, cache_dir)
    cache_path = cache_dir / f"flame-{digest[:16]}.npz"
    if cache_path.is_file():
        try:
            model = FlameModel.load(cache_path)
            log.debug("FLAME model from the cache %s", cache_path)
            return model
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring the unreadable FLAME cache %s (%s): converting %s again", cache_path, err, pkl)
    model = _model_from_pickle(pkl)
    _atomic_write(cache_path, model.save)
    log.info("converted %s into %s", pkl, cache_path)
    return model


def _content_digest(pkl: Path, cache_dir: Path) -> str:
    """sha256 of the file, remembered per (path, size, mtime) in ``flame-index.json`` so that it is hashed once."""
    index_path = cache_dir / "flame-index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    stat = pkl.stat()
    key = str(pkl.resolve())
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
        return str(entry["sha256"])
    sha = hashlib.sha256()
    with open(pkl, "rb") as fp:
        for block in iter(lambda: fp.read(1 << 20), b""):
            sha.update(block)
    index[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha.hexdigest()}
    _atomic_write(index_path, lambda path: path.write_text(json.dumps(index, indent=1)))
    return sha.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    """``write(temporary_path)`` beside ``path``, then rename over it: readers never see a half-written file."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _model_from_pickle(pkl: Path) -> FlameModel:
    """Restricted unpickling, then checks and conversion to DECA's layout."""
    with refused_in_one_line(pkl, "pickle", EXPECTED_PICKLE), open(pkl, "rb") as fp:
        data = restricted_load(fp)
    if not isinstance(data, dict):
        raise UserError(f"{pkl}: holds a {type(data).__name__}, not a dict of arrays {EXPECTED_PICKLE}")

    arrays = {key: _dense_array(pkl, data, key) for key in PICKLE_SHAPES}
    shapedirs = arrays["shapedirs"]
    if shapedirs.shape[2] < N_SHAPE + N_EXPRESSION:
        raise UserError(f"{pkl}: 'shapedirs' has {shapedirs.shape[2]} components, not 400 {EXPECTED_PICKLE}")
    faces = arrays["f"]
    if faces.dtype.kind not in "iu" or faces.min() < 0 or faces.max() >= N_VERTICES:
        raise UserError(f"{pkl}: 'f' is not {N_FACES} triangles of vertex indices {EXPECTED_PICKLE}")
    parents = arrays["kintree_table"][0].astype(np.int64)  # the root's parent is stored as 4294967295 or -1
    parents[0] = -1
    if any(not 0 <= parents[j] < j for j in range(1, N_JOINTS)):
        raise UserError(f"{pkl}: 'kintree_table' is not a tree of {N_JOINTS} joints {EXPECTED_PICKLE}")
    posedirs = arrays["posedirs"]
    return FlameModel(
        v_template=_float32(arrays["v_template"]),
        shapedirs=_float32(shapedirs[:, :, :N_SHAPE]),
        exprdirs=_float32(shapedirs[:, :, N_SHAPE : N_SHAPE + N_EXPRESSION]),
        posedirs=_float32(posedirs.reshape(-1, N_POSE_FEATURES).T),
        J_regressor=_float32(arrays["J_regressor"]),
        lbs_weights=_float32(arrays["weights"]),
        parents=parents,
        faces=faces.astype(np.int64),
    )


def _dense_array(pkl: Path, data: dict, key: str) -> np.ndarray:
    """``data[key]`` as a dense numeric array of the shape in `PICKLE_SHAPES`, or a `UserError`."""
    if key not in data:
        raise UserError(f"{pkl}: missing {key!r} {EXPECTED_PICKLE}")
    value = data[key]
    if hasattr(value, "toarray"):  # the scipy sparse J_regressor
        value = value.toarray()
    array = np.asarray(value)
    expected = PICKLE_SHAPES[key]
    shape_ok = array.ndim == len(expected) and all(
        e is None or e == n for e, n in zip(expected, array.shape, strict=True)
    )
    if not shape_ok:
        wanted = "x".join("N" if e is None else str(e) for e in expected)
        raise UserError(f"{pkl}: {key!r} has shape {array.shape}, not {wanted} {EXPECTED_PICKLE}")
    if array.dtype.kind not in "iuf" or (array.dtype.kind == "f" and not np.isfinite(array).all()):
        raise UserError(f"{pkl}: {key!r} is not a finite numeric array ({array.dtype}) {EXPECTED_PICKLE}")
    return array


def _float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# The head template (UV layout)


def read_head_template(obj: Path, model: FlameModel | None = None) -> HeadTemplate:
    """DECA's ``head_template.obj`` split on UV seams; with ``model``, its triangles must be FLAME's."""
    obj = Path(obj)
    if not obj.is_file():
        raise UserError(f"{obj}: file not found {EXPECTED_TEMPLATE}")
    try:
        mesh = read_obj(obj)
        render_vertex, render_uv, triangles, _ = split_uv_seams(mesh)
    except (ValueError, IndexError, UnicodeDecodeError) as err:
        message = f"{obj}: not a readable OBJ with v/vt faces ({type(err).__name__}: {err}) {EXPECTED_TEMPLATE}"
        raise UserError(" ".join(message.split())) from err
    if len(mesh.vertices) != N_VERTICES or len(mesh.faces) != N_FACES or len(triangles) != N_FACES:
        raise UserError(
            f"{obj}: {len(mesh.vertices)} vertices and {len(mesh.faces)} faces, not FLAME's {N_VERTICES} "
            f"triangles and {N_FACES} {EXPECTED_TEMPLATE}"
        )
    if render_vertex.max() >= N_VERTICES or render_vertex.min() < 0 or len(render_uv) != len(render_vertex):
        raise UserError(f"{obj}: faces index missing vertices or texture coordinates {EXPECTED_TEMPLATE}")
    if not (np.isfinite(render_uv).all() and render_uv.min() >= 0.0 and render_uv.max() <= 1.0):
        raise UserError(f"{obj}: texture coordinates outside [0, 1] {EXPECTED_TEMPLATE}")
    if model is not None and not _same_triangles(render_vertex[triangles], model.faces):
        raise UserError(f"{obj}: its triangles are not the FLAME model's {EXPECTED_TEMPLATE}")
    return HeadTemplate(render_vertex=render_vertex, render_uv=render_uv, triangles=triangles)


def _same_triangles(a: np.ndarray, b: np.ndarray) -> bool:
    """The same set of triangles, whatever the face order or the starting corner."""
    if a.shape != b.shape:
        return False
    a_sorted, b_sorted = np.sort(a, axis=1), np.sort(b, axis=1)
    return bool(np.array_equal(np.unique(a_sorted, axis=0), np.unique(b_sorted, axis=0)))


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation: identity once, then per frame


def flame_identity(model: FlameModel, shape: np.ndarray) -> FlameIdentity:
    """Template + identity blendshapes and the joints for up to 300 shape coefficients (DECA gives 100)."""
    beta = _coefficients(shape, N_SHAPE, "shape")
    n = len(beta)
    v_shaped = model.v_template + (model.shapedirs.reshape(-1, N_SHAPE)[:, :n] @ beta).reshape(N_VERTICES, 3)
    joints = model.J_regressor @ v_shaped
    joint_exprdirs = (model.J_regressor @ model.exprdirs.reshape(N_VERTICES, -1)).reshape(N_JOINTS, 3, N_EXPRESSION)
    return FlameIdentity(v_shaped=_float32(v_shaped), joints=_float32(joints), joint_exprdirs=_float32(joint_exprdirs))


def flame_vertices(model: FlameModel, identity: FlameIdentity, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Posed vertices (5023, 3) float32.

    ``expression``: up to 100 coefficients (DECA: 50). ``pose``: (15,) axis-angle, [global, neck, jaw, left eye,
    right eye] as DECA's ``full_pose`` (DECA itself keeps neck and eyes at zero).
    """
    psi = _coefficients(expression, N_EXPRESSION, "expression")
    n = len(psi)
    rot_vecs = np.asarray(pose, dtype=np.float32).reshape(N_JOINTS, 3)

    v_shaped = identity.v_shaped + (model.exprdirs.reshape(-1, N_EXPRESSION)[:, :n] @ psi).reshape(N_VERTICES, 3)
    joints = identity.joints + identity.joint_exprdirs[:, :, :n] @ psi
    rot_mats = batch_rodrigues(rot_vecs)
    v_posed = v_shaped + (pose_feature(rot_mats) @ model.posedirs).reshape(N_VERTICES, 3)
    _, transforms = rigid_transform(rot_mats, joints, model.parents)
    return skin(v_posed, model.lbs_weights, transforms)


def batch_rodrigues(rot_vecs: np.ndarray) -> np.ndarray:
    """Axis-angle (J, 3) -> rotation matrices (J, 3, 3): R = I + sin θ K + (1 - cos θ) K².

    K is the cross-product matrix of the unit axis. A zero vector gives exactly I (smplx adds 1e-8 to the vector
    instead, which moves R by ~1e-8).
    """
    angle = np.linalg.norm(rot_vecs, axis=1, keepdims=True)  # (J, 1)
    axis = rot_vecs / np.maximum(angle, np.float32(1e-12))
    x, y, z = axis[:, 0], axis[:, 1], axis[:, 2]
    zero = np.zeros_like(x)
    K = np.stack([zero, -z, y, z, zero, -x, -y, x, zero], axis=1).reshape(-1, 3, 3)
    sin, cos = np.sin(angle)[:, :, None], np.cos(angle)[:, :, None]
    return (np.eye(3, dtype=rot_vecs.dtype) + sin * K + (1 - cos) * (K @ K)).astype(rot_vecs.dtype, copy=False)


def pose_feature(rot_mats: np.ndarray) -> np.ndarray:
    """(J, 3, 3) rotations -> (9 (J - 1),) feature of the pose correctives: (R[1:] - I) flattened, root excluded."""
    return (rot_mats[1:] - np.eye(3, dtype=rot_mats.dtype)).reshape(-1)


def rigid_transform(rot_mats: np.ndarray, joints: np.ndarray, parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward kinematics, as smplx's ``batch_rigid_transform``.

    rot_mats (J, 3, 3) local rotations, joints (J, 3) rest locations, parents (J,) with parents[0] = -1 and
    parents[j] < j. Returns posed joints (J, 3) and transforms (J, 4, 4) that map a rest-pose point bound to joint j
    to its posed location (world transform of j with the rest location of j taken out).
    """
    rel_joints = joints.copy()
    rel_joints[1:] -= joints[parents[1:]]
    local = np.zeros((len(joints), 4, 4), dtype=rot_mats.dtype)
    local[:, :3, :3] = rot_mats
    local[:, :3, 3] = rel_joints
    local[:, 3, 3] = 1
    world = np.empty_like(local)
    world[0] = local[0]
    for j in range(1, len(joints)):
        world[j] = world[parents[j]] @ local[j]
    posed_joints = world[:, :3, 3].copy()
    transforms = world.copy()
    transforms[:, :3, 3] -= np.einsum("jab,jb->ja", world[:, :3, :3], joints)
    return posed_joints, transforms


def skin(v_posed: np.ndarray, lbs_weights: np.ndarray, transforms: np.ndarray) -> np.ndarray:
    """Linear blend skinning: v_posed (V, 3), lbs_weights (V, J), transforms (J, 4, 4) -> vertices (V, 3)."""
    blended = (lbs_weights @ transforms[:, :3, :].reshape(len(transforms), 12)).reshape(-1, 3, 4)  # (V, 3, 4)
    return np.einsum("vab,vb->va", blended[:, :, :3], v_posed) + blended[:, :, 3]


def _coefficients(values: np.ndarray, limit: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(array) > limit:
        raise ValueError(f"{len(array)} {what} coefficients: FLAME has {limit}")
    return array

"""Stand-ins for the user's licensed FLAME/DECA files, written in exactly the upstream formats with the real shapes.

The real files may not be shipped, so the tests write look-alikes: same containers, same pickle opcodes and module
paths, same keys, dtypes and shapes, with synthetic content (a deformed sphere of FLAME's vertex and face counts).

* `write_flame2020_pickle`: FLAME 2020 ``generic_model.pkl``, a Python 2 protocol-2 pickle: dict keys and raw array
  bytes as Python 2 ``str`` (BINSTRING), arrays through ``numpy.core.multiarray._reconstruct``, chumpy arrays as
  ``chumpy.ch.Ch`` (NEWOBJ + a state dict with the array under ``'x'``), ``J_regressor`` as
  ``scipy.sparse.csc.csc_matrix`` (NEWOBJ + state dict), ``kintree_table`` with the root's parent as 4294967295.
* `write_flame2023_pickle`: the same keys as plain arrays from today's numpy/scipy, protocol 4.
* `write_landmark_embedding`: DECA's ``landmark_embedding.npy``, a .npy of a 0-d object array holding a dict whose
  ``dynamic_*`` values are torch tensors.
* `write_head_template`: DECA's ``head_template.obj``: 5023 ``v``, 5118 ``vt``, 9976 ``f v/vt`` lines.
* `write_head_files`: all of the above a DECA data folder needs besides ``deca_model.tar``, with DECA's maps.
* `write_malicious_pickle`, `write_pickle_calling`, `write_malicious_npy`: files whose loading would run code.

The legacy streams come from `LegacyPickler`, a pure-Python pickler that writes chosen classes and functions under
their upstream module paths without importing chumpy or old numpy/scipy.
"""

import copyreg
import io
import os
import pickle
import struct
import types
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse

N_VERTICES, N_FACES, N_JOINTS = 5023, 9976, 5

# The synthetic topology: a top pole and RINGS rings of COLUMNS vertices (ring i, column j is vertex i * COLUMNS + j),
# open at the neck, with three quads left out (the mouth slit): 81 * 62 + 1 = 5023 vertices, 62 + 80 * 62 * 2 - 6
# = 9976 triangles. Column 0 is at the back of the head; the UV seam runs there (81 duplicated texture coordinates),
# and a cut along column CUT_COLUMN over the top CUT_RINGS rings adds 14 more: 5118 texture coordinates.
RINGS, COLUMNS = 81, 62
POLE = RINGS * COLUMNS
CUT_COLUMN, CUT_RINGS = 10, 14
MOUTH_RING = 50  # the upper lip; the lower lip (ring 51) follows the jaw
HOLES = ((MOUTH_RING, 30), (MOUTH_RING, 31), (MOUTH_RING, 32))  # (ring, column) of the quads left out
EYES = ((30, 36), (30, 26))  # (ring, column) of the quads whose corners place the left (+x) and right eye joints
N_TEXCOORDS = N_VERTICES + RINGS + CUT_RINGS


# ---------------------------------------------------------------------------------------------------------------------
# Writing upstream module paths without the upstream modules


class Ch:
    """Pickles like a plain ``chumpy.ch.Ch``: NEWOBJ of ``chumpy.ch.Ch``, then its ``__getstate__`` dict."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = np.asarray(x, dtype=np.float64)

    def __reduce_ex__(self, protocol: int) -> tuple:
        # chumpy's __getstate__ is __dict__ without the weak-reference caches '_parents' and '_cache'.
        state = {
            "x": self.x,
            "_dirty_vars": set(),
            "_itr": None,
            "_depends_on_deps": {},
            "_make_dense": False,
            "_make_sparse": False,
        }
        return copyreg.__newobj__, (type(self),), state


Ch.__module__ = "chumpy.ch"


class _LegacyCsc:
    """Marker for ``scipy.sparse.csc.csc_matrix``, scipy's module path before 1.8."""


def _legacy_reconstruct() -> None:
    """Marker for ``numpy.core.multiarray._reconstruct``, numpy's module path before 2.0."""


UPSTREAM_GLOBALS = {
    Ch: ("chumpy.ch", "Ch"),
    _LegacyCsc: ("scipy.sparse.csc", "csc_matrix"),
    _legacy_reconstruct: ("numpy.core.multiarray", "_reconstruct"),
}


class LegacyPickler(pickle._Pickler):
    """Writes arrays, chumpy arrays and csc matrices as numpy 1.x / chumpy / scipy 1.x did.

    With ``python2_strings`` both ``str`` and ``bytes`` are written as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING),
    as in a pickle made by Python 2.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file: io.BufferedIOBase, protocol: int, python2_strings: bool) -> None:
        super().__init__(file, protocol=protocol)
        self.python2_strings = python2_strings

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj in UPSTREAM_GLOBALS:
            module, qualname = UPSTREAM_GLOBALS[obj]
            self.write(pickle.GLOBAL + f"{module}\n{qualname}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:
            _, _, state = obj.__reduce__()
            return _legacy_reconstruct, (np.ndarray, (0,), b"b"), state
        return NotImplemented

    def save_legacy_csc(self, matrix: scipy.sparse.csc_matrix) -> None:
        state = {
            "_shape": matrix.shape,
            "maxprint": 50,
            "format": "csc",
            "indices": matrix.indices,
            "indptr": matrix.indptr,
            "data": matrix.data,
        }
        self.save_reduce(copyreg.__newobj__, (_LegacyCsc,), state, obj=None)

    def save_python2_string(self, obj: str | bytes) -> None:
        if not self.python2_strings:
            (pickle._Pickler.save_str if isinstance(obj, str) else pickle._Pickler.save_bytes)(self, obj)
            return
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[types.FunctionType] = save_global  # the base table holds pickle._Pickler.save_global itself
    dispatch[scipy.sparse.csc_matrix] = save_legacy_csc
    dispatch[str] = save_python2_string
    dispatch[bytes] = save_python2_string


def legacy_dumps(obj: Any, protocol: int = 2, python2_strings: bool = True) -> bytes:
    buffer = io.BytesIO()
    LegacyPickler(buffer, protocol=protocol, python2_strings=python2_strings).dump(obj)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------------------
# A plausible FLAME-shaped model


def flame_faces() -> np.ndarray:
    """(9976, 3) int64 triangles of the synthetic topology, outward-facing."""

    def vertex(ring: int, column: int) -> int:
        return ring * COLUMNS + column % COLUMNS

    faces = [(POLE, vertex(0, j + 1), vertex(0, j)) for j in range(COLUMNS)]
    for i in range(RINGS - 1):
        for j in range(COLUMNS):
            if (i, j) in HOLES:
                continue
            a, b, c, d = vertex(i, j), vertex(i, j + 1), vertex(i + 1, j + 1), vertex(i + 1, j)
            faces += [(a, b, c), (a, c, d)]
    assert len(faces) == N_FACES
    return np.array(faces, dtype=np.int64)


def template_vertices(rng: np.random.Generator) -> np.ndarray:
    """(5023, 3) float64: an ellipsoidal head of about FLAME's size in metres, face looking down +z."""
    theta = np.pi * (np.arange(RINGS) + 1) / (RINGS + 8)  # from the crown down to an open neck
    phi = np.pi + 2 * np.pi * np.arange(COLUMNS) / COLUMNS  # column 0 at the back
    sin_t, cos_t = np.sin(theta)[:, None], np.cos(theta)[:, None]
    x, y, z = 0.08 * sin_t * np.sin(phi), 0.11 * cos_t + 0 * phi, 0.10 * sin_t * np.cos(phi)
    rings = np.stack([x, y, z], axis=-1).reshape(-1, 3)
    vertices = np.concatenate([rings, [[0.0, 0.11, 0.0]]])
    return vertices + rng.normal(scale=1e-4, size=vertices.shape)


def joint_regressor(rng: np.random.Generator) -> np.ndarray:
    """(5, 5023) float64, rows summing to 1: root and neck from neck rings, jaw from a chin ring, eyes from quads."""
    regressor = np.zeros((N_JOINTS, N_VERTICES))
    ring = np.arange(COLUMNS)
    regressor[0, (RINGS - 1) * COLUMNS + ring] = 1
    regressor[1, 70 * COLUMNS + ring] = 1
    regressor[2, 52 * COLUMNS + ring] = 1
    for joint, (i, j) in zip((3, 4), EYES, strict=True):
        regressor[joint, [i * COLUMNS + j, i * COLUMNS + j + 1, (i + 1) * COLUMNS + j, (i + 1) * COLUMNS + j + 1]] = 1
    regressor *= 1 + 0.1 * rng.random(regressor.shape)
    return regressor / regressor.sum(axis=1, keepdims=True)


def skinning_weights(vertices: np.ndarray, joints: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(5023, 5) float64 rows summing to 1, as FLAME's: the neck and below follow the root, the skull the neck joint,
    the lower face from the lower lip down the jaw (so the mouth slit opens), the skin around the eyes the eyes."""
    ring = np.minimum(np.arange(N_VERTICES) // COLUMNS, RINGS - 1)
    ring[POLE] = 0
    weights = np.zeros((N_VERTICES, N_JOINTS))
    weights[:, 0] = np.clip((ring - 72) / 6, 0, 1)
    weights[:, 2] = (ring > MOUTH_RING) * np.clip((vertices[:, 2] + 0.02) / 0.04, 0, 1) * (1 - weights[:, 0])
    for joint in (3, 4):
        weights[:, joint] = 0.5 * np.exp(-((np.linalg.norm(vertices - joints[joint], axis=1) / 0.012) ** 2))
    weights[:, 1] = np.clip(1 - weights.sum(axis=1), 0, 1)
    weights += 0.01 * rng.random(weights.shape)
    return weights / weights.sum(axis=1, keepdims=True)


def flame_arrays(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The FLAME arrays with the real keys, shapes and (FLAME 2020) dtypes."""
    vertices = template_vertices(rng)
    regressor = joint_regressor(rng)
    joints = regressor @ vertices
    return {
        "f": flame_faces().astype(np.uint32),
        "J_regressor": regressor,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
        "J": joints,
        "weights": skinning_weights(vertices, joints, rng),
        "posedirs": rng.normal(scale=1e-3, size=(N_VERTICES, 3, 36)),
        "v_template": vertices,
        "shapedirs": rng.normal(scale=1e-3, size=(N_VERTICES, 3, 400)),
    }


def write_flame2020_pickle(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """FLAME 2020's ``generic_model.pkl`` format; returns the dense arrays written."""
    arrays = flame_arrays(rng)
    content = {
        "f": arrays["f"],
        "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
        "kintree_table": arrays["kintree_table"],
        "J": Ch(arrays["J"]),
        "weights": Ch(arrays["weights"]),
        "posedirs": Ch(arrays["posedirs"]),
        "v_template": Ch(arrays["v_template"]),
        "shapedirs": Ch(arrays["shapedirs"]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    Path(path).write_bytes(legacy_dumps(content, protocol=2, python2_strings=True))
    return arrays


def write_flame2023_pickle(path: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A FLAME 2023 pickle: the same keys as plain arrays from today's numpy, protocol 4; returns the arrays."""
    arrays = flame_arrays(rng)
    arrays["f"] = arrays["f"].astype(np.int64)
    arrays["kintree_table"] = arrays["kintree_table"].astype(np.uint32)
    content: dict[str, Any] = dict(arrays)
    content["J_regressor"] = scipy.sparse.csc_matrix(arrays["J_regressor"])
    content["bs_style"], content["bs_type"] = "lbs", "lrotmin"
    Path(path).write_bytes(pickle.dumps(content, protocol=4))
    return arrays


# ---------------------------------------------------------------------------------------------------------------------
# DECA's data files


def landmark_embedding_content(rng: np.random.Generator) -> dict[str, Any]:
    """The landmark embedding dict with the real keys, types and shapes (``dynamic_*`` are torch tensors)."""
    import torch

    def bary(*shape: int) -> np.ndarray:
        coords = rng.random((*shape, 3))
        return coords / coords.sum(axis=-1, keepdims=True)

    return {
        "static_lmk_faces_idx": rng.integers(0, N_FACES, size=51),
        "static_lmk_bary_coords": bary(51),
        "dynamic_lmk_faces_idx": torch.from_numpy(rng.integers(0, N_FACES, size=(79, 17))),
        "dynamic_lmk_bary_coords": torch.from_numpy(bary(79, 17).astype(np.float32)),
        "full_lmk_faces_idx": rng.integers(0, N_FACES, size=(1, 68)),
        "full_lmk_bary_coords": bary(1, 68),
    }


def write_landmark_embedding(path: Path, rng: np.random.Generator, legacy: bool = True) -> dict[str, np.ndarray]:
    """DECA's ``landmark_embedding.npy``; returns its content as numpy arrays.

    ``legacy``: as numpy 1.x's ``np.save`` wrote it (protocol 3, ``numpy.core`` paths); otherwise today's ``np.save``.
    """
    content = landmark_embedding_content(rng)
    array = np.empty((), dtype=object)
    array[()] = content
    if legacy:
        from numpy.lib import format as npy_format

        with open(path, "wb") as fp:
            npy_format.write_array_header_1_0(fp, npy_format.header_data_from_array_1_0(array))
            LegacyPickler(fp, protocol=3, python2_strings=False).dump(array)
    else:
        np.save(path, array, allow_pickle=True)
    return {key: np.asarray(value) for key, value in content.items()}


def texcoord_of_corner(vertex: int, face: np.ndarray) -> int:
    """The texture coordinate a face corner uses: seam and cut duplicates on the far side of the cut."""
    if vertex == POLE:
        return vertex
    ring, column = divmod(int(vertex), COLUMNS)
    columns = {int(v) % COLUMNS for v in face if v != POLE}
    if column == 0 and COLUMNS - 1 in columns:
        return N_VERTICES + ring
    if column == CUT_COLUMN and ring < CUT_RINGS and CUT_COLUMN + 1 in columns:
        return N_VERTICES + RINGS + ring
    return int(vertex)


def texcoords() -> np.ndarray:
    """(5118, 2) texture coordinates in [0, 1]: longitude and latitude, duplicates shifted to their side."""
    ring, column = np.divmod(np.arange(POLE), COLUMNS)
    uv = np.stack([column / COLUMNS, 1 - (ring + 1) / (RINGS + 1)], axis=1)
    seam = np.stack([np.ones(RINGS), 1 - (np.arange(RINGS) + 1) / (RINGS + 1)], axis=1)
    cut = uv[np.arange(CUT_RINGS) * COLUMNS + CUT_COLUMN] + [0.002, 0]
    return np.concatenate([uv, [[0.5, 1.0]], seam, cut])


def write_head_template(
    path: Path, flame_faces: np.ndarray, rng: np.random.Generator, vertices: np.ndarray | None = None
) -> None:
    """DECA's ``head_template.obj``: 5023 ``v``, 5118 ``vt``, 9976 ``f v/vt v/vt v/vt`` lines (FLAME's faces)."""
    if vertices is None:
        vertices = template_vertices(rng)
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in texcoords()]
    for face in flame_faces:
        corners = [f"{v + 1}/{texcoord_of_corner(v, face) + 1}" for v in face]
        lines.append("f " + " ".join(corners))
    Path(path).write_text("\n".join(lines) + "\n")


def write_head_files(folder: Path, rng: np.random.Generator) -> None:
    """The files of a DECA data folder besides ``deca_model.tar`` that the FLAME + DECA path reads: FLAME 2020's
    ``generic_model.pkl``, ``head_template.obj`` on its faces, ``fixed_displacement_256.npy`` (in DECA's range),
    ``uv_face_eye_mask.png`` (an ellipse, RGBA as DECA's) and ``mean_texture.jpg`` (flat)."""
    import cv2

    folder = Path(folder)
    arrays = write_flame2020_pickle(folder / "generic_model.pkl", rng)
    write_head_template(folder / "head_template.obj", arrays["f"].astype(np.int64), rng, arrays["v_template"])
    np.save(folder / "fixed_displacement_256.npy", rng.uniform(-0.0013, 0.0016, (256, 256)))
    mask = np.zeros((256, 256, 4), np.uint8)
    cv2.ellipse(mask, (128, 128), (80, 100), 0, 0, 360, (255, 255, 255, 255), -1)
    cv2.imwrite(str(folder / "uv_face_eye_mask.png"), mask)
    cv2.imwrite(str(folder / "mean_texture.jpg"), np.full((512, 512, 3), (120, 150, 200), np.uint8))


# ---------------------------------------------------------------------------------------------------------------------
# Files whose loading would run code


class _Call:
    """Pickles as a call of ``function(*args)``: what a tampered model file does."""

    def __init__(self, function: Any, args: tuple) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple:
        return self.function, self.args


def write_pickle_calling(path: Path, function: Any, args: tuple, protocol: int = 2) -> None:
    """A FLAME-looking dict whose ``v_template`` would be ``function(*args)``."""
    Path(path).write_bytes(pickle.dumps({"v_template": _Call(function, args), "f": np.zeros(3)}, protocol=protocol))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    """A pickle that, loaded with ``pickle.load``, runs ``os.system('touch <marker>')``."""
    write_pickle_calling(path, os.system, (f"touch '{marker}'",))


def write_malicious_npy(path: Path, marker: Path) -> None:
    """A ``landmark_embedding.npy`` whose ``np.load(allow_pickle=True)`` would run ``os.system('touch <marker>')``."""
    array = np.empty((), dtype=object)
    array[()] = {"static_lmk_faces_idx": _Call(os.system, (f"touch '{marker}'",))}
    np.save(path, array, allow_pickle=True)

"""The ICT-FaceKit Light head: conversion of the upstream OBJs, and evaluation of identity and expression.

The upstream model is 160 OBJ files of one topology (26,719 vertices, quads, UDIM texture tiles): the generic neutral
mesh, 100 identity meshes (PCA modes at one standard deviation) and 53 ARKit-named expression meshes. `convert_facekit`
turns them once into one ``.npz`` of deltas plus a GL-ready triangle list in which vertices are split along UV seams.

Coordinates are centimetres, +y up, the face looking down +z, the subject's left at +x.
"""

import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from realtime.errors import UserError
from realtime.geometry.mesh_files import read_obj, read_obj_vertices, split_uv_seams

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
N_IDENTITY = 100

# Sub-meshes by polygon range (ICT-FaceKit README, "Face Model Topology" and "Eyeball Details"): name, first, end.
PARTS: tuple[tuple[str, int, int], ...] = (
    ("face", 0, 9230),
    ("head_neck", 9230, 11144),
    ("mouth_socket", 11144, 13226),
    ("eye_socket_left", 13226, 13630),
    ("eye_socket_right", 13630, 14034),
    ("gums_tongue", 14034, 17006),
    ("teeth", 17006, 21496),
    ("sclera_left", 21496, 22296),
    ("iris_left", 22296, 23094),
    ("sclera_right", 23094, 23894),
    ("iris_right", 23894, 24692),
    ("lacrimal_fluid", 24692, 25018),
    ("eye_blend", 25018, 25048),
    ("eye_occlusion", 25048, 25304),
    ("eyelashes", 25304, 26384),
)
PART_NAMES = tuple(name for name, _, _ in PARTS)

# Multi-PIE 68-point landmark vertices (ICT-FaceKit README, "Facial Landmarks").
LANDMARKS_68 = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443, 268, 493,
    1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509, 978, 4527, 4942, 4857, 1140, 2075, 1147, 4269, 3360, 1507, 1542,
    1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732, 5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461,
    5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517, 5966,
)


def polygon_parts(n_polygons: int) -> np.ndarray:
    """Part index (into `PART_NAMES`) of every polygon."""
    part = np.full(n_polygons, -1, dtype=np.int16)
    for index, (_, first, end) in enumerate(PARTS):
        part[first:end] = index
    if (part < 0).any():
        raise ValueError("polygon ranges do not cover the mesh: not the ICT-FaceKit Light topology")
    return part


def convert_facekit(src_dir: Path, out_path: Path) -> None:
    """Convert an extracted ICT-FaceKit checkout (``src_dir/FaceXModel``) into the runtime ``.npz`` at ``out_path``."""
    model_dir = Path(src_dir) / "FaceXModel"
    names = json.loads((model_dir / "vertex_indices.json").read_text())["expressions"]
    neutral_mesh = read_obj(model_dir / "generic_neutral_mesh.obj")
    neutral = neutral_mesh.vertices
    render_vertex, render_uv, triangles, triangle_polygon = split_uv_seams(neutral_mesh)
    triangle_part = polygon_parts(len(neutral_mesh.faces))[triangle_polygon]

    shape_files = [f"identity{i:03d}.obj" for i in range(N_IDENTITY)] + [f"{name}.obj" for name in names]
    deltas = np.empty((len(shape_files), *neutral.shape), dtype=np.float32)
    for i, name in enumerate(tqdm(shape_files, desc="Converting ICT-FaceKit", unit="mesh", disable=None)):
        vertices = read_obj_vertices(model_dir / name)
        if vertices.shape != neutral.shape:
            raise ValueError(f"{name}: {vertices.shape[0]} vertices, expected {neutral.shape[0]}")
        deltas[i] = vertices - neutral

    tmp = out_path.with_name(f".{out_path.name}.partial")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            format_version=np.int32(FORMAT_VERSION),
            neutral=neutral,
            identity_basis=deltas[:N_IDENTITY],
            expression_basis=deltas[N_IDENTITY:],
            expression_names=np.array(names),
            render_vertex=render_vertex,
            render_uv=render_uv,
            triangles=triangles,
            triangle_part=triangle_part,
            part_names=np.array(PART_NAMES),
            landmarks_68=np.array(LANDMARKS_68, dtype=np.int32),
        )
    os.replace(tmp, out_path)
    log.info("wrote %s (%d render vertices, %d triangles)", out_path, len(render_vertex), len(triangles))


@dataclass(frozen=True, eq=False)
class IctModel:
    """The converted ICT-FaceKit Light model (see `convert_facekit`)."""

    neutral: np.ndarray  # (N, 3) float32
    identity_basis: np.ndarray  # (100, N, 3) float32, one standard deviation per mode
    expression_basis: np.ndarray  # (53, N, 3) float32
    expression_names: tuple[str, ...]
    render_vertex: np.ndarray  # (R,) int32 source vertex of each render vertex
    render_uv: np.ndarray  # (R, 2) float32, UDIM tiles: u in [0, 1) face, [1, 2) head and neck, ...
    triangles: np.ndarray  # (T, 3) int32 render-vertex indices
    triangle_part: np.ndarray  # (T,) int16 index into PART_NAMES

    @classmethod
    def load(cls, path: Path) -> "IctModel":
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format_version"]) != FORMAT_VERSION:
                    raise UserError(f"{path} is from another version: run `realtime-retarget --fetch-assets --force`")
                return cls(
                    neutral=data["neutral"],
                    identity_basis=data["identity_basis"],
                    expression_basis=data["expression_basis"],
                    expression_names=tuple(str(n) for n in data["expression_names"]),
                    render_vertex=data["render_vertex"],
                    render_uv=data["render_uv"],
                    triangles=data["triangles"],
                    triangle_part=data["triangle_part"],
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as err:  # damaged, truncated, foreign
            reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
            if "pickle" in reason:  # numpy's own advice, to load it unsafely, is not for a model file
                reason = "it holds pickled Python objects, which are never loaded"
            raise UserError(f"{path} is not a valid converted ICT model ({reason}): "
                            "run `realtime-retarget --fetch-assets --force`") from err

    @property
    def n_vertices(self) -> int:
        return self.neutral.shape[0]

    def part_mask(self, *names: str) -> np.ndarray:
        """(T,) bool: the triangles of the named parts."""
        return np.isin(self.triangle_part, [PART_NAMES.index(n) for n in names])

    def triangles_of(self, *parts: str) -> np.ndarray:
        """(T', 3) triangles of the named parts in model-vertex indices (no UV-seam splits)."""
        return self.render_vertex[self.triangles[self.part_mask(*parts)]]

    def identity_shape(self, coefficients: np.ndarray) -> np.ndarray:
        """Neutral-expression vertices (N, 3) of the identity with PCA ``coefficients`` (100,)."""
        flat = self.identity_basis.reshape(len(self.identity_basis), -1)
        return self.neutral + (np.asarray(coefficients, np.float32) @ flat).reshape(-1, 3)

    def expression_index(self, name: str) -> int:
        return self.expression_names.index(name)

"""Wavefront OBJ meshes: reading vertices, texture coordinates and polygons, and splitting them for the GPU."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)


class ObjMesh:
    vertices: np.ndarray  # (N, 3) float32
    uvs: np.ndarray  # (M, 2) float32
    faces: list[list[tuple[int, int]]]  # per polygon: (vertex index, uv index) corners


def read_obj_vertices(path: Path) -> np.ndarray:
    """Only the ``v`` lines of an OBJ, as (N, 3) float32: what the 153 shape files differ in."""
    lines = path.read_text().splitlines()
    values = " ".join(line[2:] for line in lines if line.startswith("v "))
    return np.array(values.split(), dtype=np.float32).reshape(-1, 3)


def read_obj(path: Path) -> ObjMesh:
    """Vertices, texture coordinates and polygons (0-based ``v/vt`` pairs) of an OBJ."""
    vertices, uvs, faces = [], [], []
    for line in path.read_text().splitlines():
        if line.startswith("v "):
            vertices.append(line[2:])
        elif line.startswith("vt "):
            uvs.append(line[3:])
        elif line.startswith("f "):
            corners = [c.split("/") for c in line.split()[1:]]
            faces.append([(int(c[0]) - 1, int(c[1]) - 1) for c in corners])
    return ObjMesh(
        vertices=np.array(" ".join(vertices).split(), dtype=np.float32).reshape(-1, 3),
        uvs=np.array(" ".join(uvs).split(), dtype=np.float32).reshape(-1, 2)[:, :2],
        faces=faces,
    )


def split_uv_seams(mesh: ObjMesh) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Triangulate the polygons and give every distinct (vertex, uv) corner its own render vertex.

    Returns ``render_vertex`` (R,) source vertex per render vertex, ``render_uv`` (R, 2), ``triangles`` (T, 3) in
    render-vertex indices and ``triangle_polygon`` (T,) the source polygon of each triangle.
    """
    corner_ids: dict[tuple[int, int], int] = {}
    triangles, triangle_polygon = [], []
    for polygon_index, polygon in enumerate(mesh.faces):
        ids = [corner_ids.setdefault(corner, len(corner_ids)) for corner in polygon]
        for k in range(1, len(ids) - 1):  # fan: quads become (0, 1, 2), (0, 2, 3)
            triangles.append((ids[0], ids[k], ids[k + 1]))
            triangle_polygon.append(polygon_index)
    corners = np.array(list(corner_ids), dtype=np.int64)
    return (
        corners[:, 0].astype(np.int32),
        mesh.uvs[corners[:, 1]],
        np.array(triangles, dtype=np.int32),
        np.array(triangle_polygon, dtype=np.int32),
    )

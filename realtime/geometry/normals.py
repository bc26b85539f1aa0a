"""Vertex normals of a deforming mesh, recomputed every frame."""

import numpy as np
from scipy import sparse


class VertexNormals:
    """Area-weighted vertex normals of a fixed triangle list: ``normals = VertexNormals(triangles, n)(vertices)``."""

    def __init__(self, triangles: np.ndarray, n_vertices: int) -> None:
        self.triangles = np.asarray(triangles, np.int64)
        rows = self.triangles.T.ravel()
        cols = np.tile(np.arange(len(self.triangles)), 3)
        # (N, T) incidence matrix: summing the face normals of each vertex is one sparse product
        self._incidence = sparse.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(n_vertices, len(self.triangles))
        )

    def __call__(self, vertices: np.ndarray) -> np.ndarray:
        """(N, 3) vertices -> (N, 3) unit normals (zero for vertices outside the triangle list)."""
        a, b, c = (vertices[self.triangles[:, k]] for k in range(3))
        face_normals = np.cross(b - a, c - a)  # length = twice the area: area weighting for free
        normals = np.asarray(self._incidence @ face_normals, dtype=np.float32)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        return normals / np.maximum(length, 1e-12)

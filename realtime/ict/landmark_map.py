"""Where MediaPipe's 478 face landmarks sit on the ICT head: a point on one triangle (barycentric) per landmark.

The table `realtime/data/ict_mediapipe_landmarks.txt` is built by `tools/build_landmark_map.py`, which renders the ICT
mean face, tracks it with MediaPipe and casts each landmark back onto the mesh.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.paths import PACKAGE_DATA

DEFAULT_PATH = PACKAGE_DATA / "ict_mediapipe_landmarks.txt"


@dataclass(frozen=True, eq=False)
class LandmarkMap:
    vertex_ids: np.ndarray  # (478, 3) int: ICT vertices of the triangle under each landmark
    weights: np.ndarray  # (478, 3) float32: barycentric weights, rows sum to 1

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> "LandmarkMap":
        table = np.loadtxt(path, ndmin=2)
        return cls(vertex_ids=table[:, :3].astype(np.int64), weights=table[:, 3:6].astype(np.float32))

    def save(self, path: Path) -> None:
        lines = ["# MediaPipe landmark -> ICT-FaceKit surface point: v0 v1 v2 w0 w1 w2 (tools/build_landmark_map.py)"]
        for ids, w in zip(self.vertex_ids, self.weights, strict=True):
            lines.append(f"{ids[0]} {ids[1]} {ids[2]} {w[0]:.6f} {w[1]:.6f} {w[2]:.6f}")
        path.write_text("\n".join(lines) + "\n")

    def points(self, vertices: np.ndarray) -> np.ndarray:
        """(..., N, 3) mesh vertices -> (..., 478, 3) landmark positions."""
        return np.einsum("...kjc,kj->...kc", vertices[..., self.vertex_ids, :], self.weights)

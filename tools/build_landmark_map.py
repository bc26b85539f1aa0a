"""Build `realtime/data/ict_mediapipe_landmarks.txt`: MediaPipe's 478 landmarks as points on the ICT head.

Renders the ICT mean face from the front, tracks it with MediaPipe and casts every landmark back onto the mesh
(front-most triangle under the landmark's pixel). Eye landmarks (468-477, the irises) are cast onto the eyeballs,
all others onto the skin.

    python tools/build_landmark_map.py [--out PATH]
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.assets import ict_model_path  # noqa: E402
from realtime.ict.avatar import Avatar, build_avatar_mesh  # noqa: E402
from realtime.ict.landmark_map import DEFAULT_PATH, LandmarkMap
from realtime.ict.model import IctModel  # noqa: E402
from realtime.rendering.renderer import AvatarRenderer, RenderOptions, create_context  # noqa: E402
from realtime.tracking.landmarks import IRIS  # noqa: E402
from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode  # noqa: E402

log = logging.getLogger("build_landmark_map")
SKIN_RGB = (205, 160, 135)


def cast_onto_mesh(pixels: np.ndarray, projected: np.ndarray, triangles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each pixel (K, 2), the front-most triangle containing it and its barycentric weights.

    ``projected`` (N, 3) holds each vertex's pixel x, y and its depth (larger = farther).
    """
    a, b, c = (projected[triangles[:, k]] for k in range(3))
    hits, weights = np.zeros(len(pixels), np.int64), np.zeros((len(pixels), 3))
    ab, ac = b[:, :2] - a[:, :2], c[:, :2] - a[:, :2]
    det = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]
    for i, p in enumerate(pixels):
        ap = p - a[:, :2]
        with np.errstate(divide="ignore", invalid="ignore"):
            w1 = (ap[:, 0] * ac[:, 1] - ap[:, 1] * ac[:, 0]) / det
            w2 = (ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]) / det
        w0 = 1 - w1 - w2
        inside = (w0 >= -1e-6) & (w1 >= -1e-6) & (w2 >= -1e-6) & (det != 0)
        if not inside.any():
            raise RuntimeError(f"landmark {i} at {p} is on no triangle")
        depth = np.where(inside, w0 * a[:, 2] + w1 * b[:, 2] + w2 * c[:, 2], np.inf)
        best = int(np.argmin(depth))
        hits[i], weights[i] = best, (w0[best], w1[best], w2[best])
    return hits, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--size", type=int, default=1024, help="render size in pixels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = IctModel.load(ict_model_path())
    avatar = Avatar(model, model.neutral)
    options = RenderOptions(size=(args.size, args.size), framing_height=30.0, target=(0.0, 1.0, 0.0))
    renderer = AvatarRenderer(create_context(), build_avatar_mesh(model), np.full((4, 8, 3), SKIN_RGB, np.uint8),
                              options)
    vertices, normals = avatar.pose(np.zeros(len(model.expression_names)))
    image = renderer.render(vertices, normals)
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE)) as tracker:
        face = tracker.track(image)
    if face is None:
        raise SystemExit("MediaPipe found no face in the rendered ICT mean face")

    clip = (renderer.view_projection @ np.c_[vertices, np.ones(len(vertices))].T).T
    projected = np.c_[renderer.project(vertices), clip[:, 3]]  # clip w = distance along the view axis
    skin = model.triangles_of("face", "head_neck")
    eyes = model.triangles_of("iris_left", "iris_right", "sclera_left", "sclera_right")
    is_iris = np.isin(np.arange(len(face.landmarks)), IRIS)
    vertex_ids = np.zeros((len(face.landmarks), 3), np.int64)
    weights = np.zeros((len(face.landmarks), 3))
    for triangles, mask in ((skin, ~is_iris), (eyes, is_iris)):
        hits, w = cast_onto_mesh(face.landmarks[mask, :2], projected, triangles)
        vertex_ids[mask], weights[mask] = triangles[hits], w

    landmark_map = LandmarkMap(vertex_ids, np.clip(weights, 0, 1).astype(np.float32))
    error = np.linalg.norm(renderer.project(landmark_map.points(vertices)) - face.landmarks[:, :2], axis=1)
    log.info("cast %d landmarks; reprojection error median %.3f px, max %.3f px", len(error), np.median(error),
             error.max())
    landmark_map.save(args.out)
    log.info("wrote %s", args.out)


if __name__ == "__main__":
    main()

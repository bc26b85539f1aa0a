"""Build `realtime/data/mediapipe_canonical_face.txt`: MediaPipe's canonical face, the model its facial transform is
relative to (its 468 vertices in centimetres, and the weights of the landmarks its pose fit uses).

Read from the landmarker bundle (`face_landmarker.task`, Apache-2.0), whose
`geometry_pipeline_metadata_landmarks.binarypb` holds a `FaceGeometryPipelineMetadata` message
(mediapipe/tasks/cc/vision/face_geometry/proto): field 1 the canonical mesh (field 3 of the mesh: x, y, z, u, v per
vertex as 32-bit floats), field 2 repeated `WeightedLandmarkRef` (field 1 landmark id, field 2 weight). The mediapipe
wheel has no Python class for it, so the few fields are read from the protobuf wire format here, once; the app only
reads the table.

    python tools/build_canonical_face.py [--out PATH]
"""

import argparse
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.assets import face_landmarker_path  # noqa: E402
from realtime.tracking.head_pose import CANONICAL_FACE_PATH  # noqa: E402

METADATA = "geometry_pipeline_metadata_landmarks.binarypb"
N_VERTICES = 468


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


def fields(data: bytes) -> list[tuple[int, int | float | bytes]]:
    """(field number, value) of one message: varints as int, 32-bit values as float, length-delimited as bytes."""
    out: list[tuple[int, int | float | bytes]] = []
    at = 0
    while at < len(data):
        key, at = read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(data, at)
        elif wire == 5:
            value, at = struct.unpack("<f", data[at:at + 4])[0], at + 4
        elif wire == 1:
            value, at = struct.unpack("<d", data[at:at + 8])[0], at + 8
        elif wire == 2:
            length, at = read_varint(data, at)
            value, at = data[at:at + length], at + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        out.append((number, value))
    return out


def canonical_face(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    """(468, 3) canonical vertices (cm) and (468,) pose-fit weights (zero for landmarks the fit does not use)."""
    with zipfile.ZipFile(bundle) as archive:
        metadata = archive.read(METADATA)
    top = fields(metadata)
    mesh = next(value for number, value in top if number == 1)
    buffer = [value for number, value in fields(mesh) if number == 3]
    if len(buffer) == 1 and isinstance(buffer[0], bytes):  # packed encoding
        buffer = list(np.frombuffer(buffer[0], "<f4"))
    vertices = np.asarray(buffer, np.float64).reshape(-1, 5)[:, :3]
    weights = np.zeros(len(vertices))
    for number, value in top:
        if number == 2:
            ref = dict(fields(value))
            weights[int(ref[1])] = float(ref.get(2, 0.0))
    if len(vertices) != N_VERTICES or not weights.any():
        raise ValueError(f"{bundle}: {len(vertices)} canonical vertices, {np.count_nonzero(weights)} weighted")
    return vertices, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CANONICAL_FACE_PATH)
    args = parser.parse_args()
    vertices, weights = canonical_face(face_landmarker_path())
    lines = ["# MediaPipe's canonical face (face_landmarker.task, Apache-2.0): x y z (cm) and pose-fit weight per "
             "landmark (tools/build_canonical_face.py)"]
    lines += [f"{x:.6f} {y:.6f} {z:.6f} {w:.8f}" for (x, y, z), w in zip(vertices, weights, strict=True)]
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}: {len(vertices)} vertices, {np.count_nonzero(weights)} weighted")


if __name__ == "__main__":
    main()

"""The pinned assets of the embedded default (MediaPipe Face Landmarker, ICT-FaceKit): what they are, where they are
once fetched, and the one-line fix when one is missing. `realtime.fetch` gets them.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from realtime.errors import UserError
from realtime.paths import PACKAGE_DATA, assets_dir

logger = logging.getLogger(__name__)

FETCH_COMMAND = "realtime-retarget --fetch-assets"  # also `python run.py --fetch-assets` in a checkout
FETCH_HINT = f"run `{FETCH_COMMAND}` (add `--mirror DIR_OR_URL` to use a local mirror)"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class AssetSpec:
    """One file to fetch: where it lives upstream and in a mirror, and what it must hash to.

    ``sha256`` and ``size`` are None when the downloaded bytes are not stable (GitHub's archives), in which case the
    contents are pinned instead.
    """

    name: str
    url: str
    sha256: str | None
    size: int | None
    mirror_path: str


# BlazeFace full range: finds the faces in identity photos at any size and position (the landmarker's own detector
# is short-range: faces large in the frame); `realtime.tracking.faces` runs it.
FACE_DETECTOR = AssetSpec(
    name="face_detection_full_range_sparse.tflite",
    url="https://storage.googleapis.com/mediapipe-assets/face_detection_full_range_sparse.tflite"
    "?generation=1674261618323821",
    sha256="2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1",
    size=676_746,
    mirror_path="mediapipe/face_detection_full_range_sparse.tflite",
)

FACE_LANDMARKER = AssetSpec(
    name="face_landmarker.task",
    url="https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
    sha256="64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    size=3_758_596,
    mirror_path="mediapipe/face_landmarker.task",
)

SELFIE_SEGMENTER = AssetSpec(
    name="selfie_segmentation.tflite",
    url="https://storage.googleapis.com/mediapipe-assets/selfie_segmentation.tflite?generation=1683332563830600",
    sha256="9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
    size=249_505,
    mirror_path="mediapipe/selfie_segmentation.tflite",
)

ICT_FACEKIT_COMMIT = "da5f95a607f5e6b37755b38d3385d7f2853732e5"
ICT_FACEKIT = AssetSpec(
    name="ict_facekit",
    url=f"https://github.com/ICT-VGL/ICT-FaceKit/archive/{ICT_FACEKIT_COMMIT}.tar.gz",
    sha256=None,
    size=None,
    mirror_path="ict_facekit/ICT-FaceKit-da5f95a.tar.xz",
)
# GitHub's archive puts every file under this folder; the mirror's archive has no top folder.
ICT_FACEKIT_TOP_FOLDER = f"ICT-FaceKit-{ICT_FACEKIT_COMMIT}/"
ICT_FACEKIT_MANIFEST = PACKAGE_DATA / "ict_facekit.sha256"
# The files the app uses; anything else in the archive is ignored.
ICT_FACEKIT_FILES = ("FaceXModel/*.obj", "FaceXModel/vertex_indices.json", "LICENSE")
ICT_FACEKIT_DIR = "ict_facekit"
ICT_STAMP = ".verified"
ICT_MODEL_NAME = "ict_face_model.npz"


def face_landmarker_path(assets: Path | None = None) -> Path:
    """The MediaPipe Face Landmarker bundle, or a UserError telling how to fetch it."""
    path = (assets or assets_dir()) / FACE_LANDMARKER.name
    if not path.is_file():
        raise UserError(f"MediaPipe face model missing: {path}; {FETCH_HINT}")
    if path.stat().st_size != FACE_LANDMARKER.size:
        raise UserError(f"MediaPipe face model {path} is damaged (wrong size); {FETCH_HINT} --force")
    return path


def selfie_segmenter_path(assets: Path | None = None) -> Path:
    """MediaPipe's selfie (person / background) segmentation model, or a UserError telling how to fetch it."""
    path = (assets or assets_dir()) / SELFIE_SEGMENTER.name
    if not path.is_file() or path.stat().st_size != SELFIE_SEGMENTER.size:
        raise UserError(f"MediaPipe person segmentation model missing or damaged: {path}; {FETCH_HINT}")
    return path


def ict_model_path(assets: Path | None = None) -> Path:
    """The converted ICT-FaceKit runtime model, or a UserError telling how to make it."""
    path = (assets or assets_dir()) / ICT_MODEL_NAME
    if not path.is_file():
        raise UserError(f"ICT-FaceKit head model missing: {path}; {FETCH_HINT}")
    return path


def face_detector_path(assets: Path | None = None) -> Path:
    """The full-range face detector (BlazeFace), or a UserError telling how to fetch it."""
    path = (assets or assets_dir()) / FACE_DETECTOR.name
    if not path.is_file():
        raise UserError(f"MediaPipe face detector missing: {path}; {FETCH_HINT}")
    if path.stat().st_size != FACE_DETECTOR.size:
        raise UserError(f"MediaPipe face detector {path} is damaged (wrong size); {FETCH_HINT} --force")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()



# --- internals -----------------------------------------------------------------------------------------------------



"""Face tracking with the MediaPipe Face Landmarker (Tasks API): landmarks, blendshape scores, head transform."""

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from realtime.errors import UserError

log = logging.getLogger(__name__)

N_LANDMARKS = 478
# MediaPipe's blendshape categories, without "_neutral" (its index 0), which carries no expression.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight", "cheekPuff",
    "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight", "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight", "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight", "mouthFunnel",
    "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker",
    "mouthRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool = True) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for the block: MediaPipe's C++ logs its start-up chatter straight there."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class RunningMode(Enum):
    IMAGE = "image"  # independent photos: every call detects from scratch
    VIDEO = "video"  # frames of one stream with increasing timestamps: tracks from the last frame


@dataclass(frozen=True)
class FaceTrackerOptions:
    model_path: Path | None = None  # None: the fetched face_landmarker.task
    running_mode: RunningMode = RunningMode.VIDEO
    max_faces: int = 1  # more costs detection time per frame; the largest face is reported
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5


@dataclass(frozen=True, eq=False)
class FaceObservation:
    """One tracked face in one frame.

    ``landmarks`` (478, 3) are in pixels (x right, y down); z is MediaPipe's relative depth, scaled like x.
    ``blendshapes`` (52,) are the scores in `BLENDSHAPE_NAMES` order, ``transform`` (4, 4) maps MediaPipe's canonical
    face (centimetres, y up, looking down +z) into its camera space.
    """

    landmarks: np.ndarray
    blendshapes: np.ndarray
    transform: np.ndarray
    faces_found: int

    def blendshape(self, name: str) -> float:
        return float(self.blendshapes[BLENDSHAPE_NAMES.index(name)])

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Landmark bounding box (x0, y0, x1, y1) in pixels."""
        x0, y0 = self.landmarks[:, :2].min(0)
        x1, y1 = self.landmarks[:, :2].max(0)
        return float(x0), float(y0), float(x1), float(y1)


class FaceTracker:
    """MediaPipe Face Landmarker behind a small interface: ``track(rgb, timestamp) -> FaceObservation | None``."""

    def __init__(self, options: FaceTrackerOptions, landmarker: object) -> None:
        self.options = options
        self._landmarker = landmarker
        self._last_timestamp_ms = -1

    @classmethod
    def create_from_options(cls, options: FaceTrackerOptions) -> "FaceTracker":
        from mediapipe.tasks.python import BaseOptions, vision

        model_path = options.model_path
        if model_path is None:
            from realtime import assets

            model_path = assets.face_landmarker_path()
        if not Path(model_path).is_file():
            raise UserError(f"face landmarker model {model_path} not found: run `realtime-retarget --fetch-assets`")
        mode = vision.RunningMode.VIDEO if options.running_mode is RunningMode.VIDEO else vision.RunningMode.IMAGE
        mp_options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=mode,
            num_faces=options.max_faces,
            min_face_detection_confidence=options.min_detection_confidence,
            min_face_presence_confidence=options.min_detection_confidence,
            min_tracking_confidence=options.min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        try:
            with native_stderr_silenced(not log.isEnabledFor(logging.DEBUG)):
                landmarker = vision.FaceLandmarker.create_from_options(mp_options)
        except (RuntimeError, ValueError) as err:
            raise UserError(
                f"could not load {model_path} ({err}): run `realtime-retarget --fetch-assets --force`"
            ) from err
        return cls(options, landmarker)

    def track(self, rgb: np.ndarray, timestamp: float = 0.0) -> FaceObservation | None:
        """The largest face in ``rgb`` (H, W, 3 uint8), or None. ``timestamp`` (seconds) matters in VIDEO mode."""
        faces = self.track_all(rgb, timestamp)
        if not faces:
            return None
        return max(faces, key=lambda face: np.ptp(face.landmarks[:, 0]) * np.ptp(face.landmarks[:, 1]))

    def track_all(self, rgb: np.ndarray, timestamp: float = 0.0) -> list[FaceObservation]:
        """Every face found in ``rgb`` (at most ``max_faces``), in MediaPipe's order."""
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self.options.running_mode is RunningMode.VIDEO:
            # MediaPipe requires strictly increasing timestamps; a repeated or backwards one would abort the graph.
            timestamp_ms = max(int(round(timestamp * 1000)), self._last_timestamp_ms + 1)
            self._last_timestamp_ms = timestamp_ms
            result = self._landmarker.detect_for_video(image, timestamp_ms)
        else:
            result = self._landmarker.detect(image)
        height, width = rgb.shape[:2]
        faces = []
        for index, points in enumerate(result.face_landmarks):
            scores = np.zeros(len(BLENDSHAPE_NAMES), np.float32)
            if result.face_blendshapes:
                for category in result.face_blendshapes[index]:
                    if category.category_name in BLENDSHAPE_NAMES:
                        scores[BLENDSHAPE_NAMES.index(category.category_name)] = category.score
            transform = (np.asarray(result.facial_transformation_matrixes[index], np.float32)
                         if result.facial_transformation_matrixes else np.eye(4, dtype=np.float32))
            landmarks = np.array([(p.x * width, p.y * height, p.z * width) for p in points], np.float32)
            faces.append(FaceObservation(landmarks, scores, transform, len(result.face_landmarks)))
        return faces

    def close(self) -> None:
        self._landmarker.close()

    def __enter__(self) -> "FaceTracker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

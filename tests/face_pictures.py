"""Hard identity photos made from the real sample media, in a temporary folder: a portrait pasted small into a large
scene, at the edge of the picture, rotated by EXIF, grey and sepia. Each comes with where its face truly is (the
portrait's own landmarks carried through the same transform), to check that the face is found there.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from realtime.io.images import read_image
from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode
from tests.conftest import media

RIGHT_IRIS, LEFT_IRIS = 468, 473


@dataclass(frozen=True)
class Picture:
    path: Path
    landmarks: np.ndarray  # (478, 2) where the face's landmarks are, in the upright picture's pixels
    eye_distance: float  # pixels between the iris centres
    size: tuple[int, int]  # the upright picture's width and height

    def truth(self, photo: np.ndarray) -> "Picture":
        """Where the face is in ``photo``, the picture as `read_image` gave it (reduced when it is large)."""
        factor = photo.shape[1] / self.size[0]
        return Picture(self.path, self.landmarks * factor, self.eye_distance * factor, photo.shape[1::-1])


def portrait_landmarks(rgb: np.ndarray) -> np.ndarray:
    """The landmarks of the one large face of a sample portrait (the landmarker on the whole picture)."""
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE)) as tracker:
        face = tracker.track(rgb)
    assert face is not None
    return face.landmarks[:, :2]


def scene(size: tuple[int, int]) -> np.ndarray:
    """A real picture with no person in it, ``size`` (width, height): a frame of the sample clip without a face."""
    capture = cv2.VideoCapture(str(media("pyfeat_no_face.mp4")))
    for _ in range(40):
        ok, frame = capture.read()
        assert ok
    capture.release()
    return np.ascontiguousarray(cv2.resize(frame[:, :, ::-1], size, interpolation=cv2.INTER_CUBIC))


def pasted(portrait: str, out: Path, canvas: tuple[int, int], eye_distance: float,
           at: tuple[float, float]) -> Picture:
    """``portrait`` scaled to ``eye_distance`` pixels between the eyes, its eyes' midpoint at ``at`` (pixels; may be
    near or past the edge) of a ``canvas``-sized scene, blended in through a soft oval around the head."""
    rgb = read_image(media(portrait))
    landmarks = portrait_landmarks(rgb)
    scale = eye_distance / np.linalg.norm(landmarks[RIGHT_IRIS] - landmarks[LEFT_IRIS])
    middle = (landmarks[RIGHT_IRIS] + landmarks[LEFT_IRIS]) / 2
    shift = np.asarray(at) - scale * middle
    warp = np.array([[scale, 0, shift[0]], [0, scale, shift[1]]])
    width, height = canvas
    image = cv2.warpAffine(rgb, warp, canvas, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    oval = np.zeros(rgb.shape[:2], np.float32)
    x0, y0 = landmarks.min(0)
    x1, y1 = landmarks.max(0)
    center = (int((x0 + x1) / 2), int((y0 + y1) / 2 - 0.1 * (y1 - y0)))
    cv2.ellipse(oval, center, (int(0.85 * (x1 - x0)), int(0.95 * (y1 - y0))), 0, 0, 360, 1.0, cv2.FILLED)
    oval = cv2.GaussianBlur(oval, (0, 0), 0.08 * (x1 - x0))
    alpha = cv2.warpAffine(oval, warp, canvas, flags=cv2.INTER_LINEAR)[..., None]
    picture = (image * alpha + scene((width, height)) * (1 - alpha)).round().astype(np.uint8)
    Image.fromarray(picture).save(out, quality=92)
    placed = landmarks * scale + shift
    return Picture(out, placed, float(eye_distance), canvas)


def exif_rotated(portrait: str, out: Path, orientation: int) -> Picture:
    """``portrait`` stored turned, with the EXIF orientation tag that turns it upright again (6, 3 or 8)."""
    rgb = read_image(media(portrait))
    turn = {6: Image.Transpose.ROTATE_90, 3: Image.Transpose.ROTATE_180, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).transpose(turn).save(out, quality=95, exif=exif)
    landmarks = portrait_landmarks(rgb)
    return Picture(out, landmarks, float(np.linalg.norm(landmarks[RIGHT_IRIS] - landmarks[LEFT_IRIS])),
                   rgb.shape[1::-1])


def toned(portrait: str, out: Path, tone: str, size: tuple[int, int] | None = None) -> Picture:
    """``portrait`` in grey (an 8-bit greyscale file) or sepia, optionally enlarged to ``size``."""
    rgb = read_image(media(portrait))
    landmarks = portrait_landmarks(rgb)
    if size is not None:
        factor = min(size[0] / rgb.shape[1], size[1] / rgb.shape[0])
        scaled = cv2.resize(rgb, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        rgb = np.zeros((size[1], size[0], 3), np.uint8) + scaled[:1, :1]  # the corner colour around it
        left, top = (size[0] - scaled.shape[1]) // 2, (size[1] - scaled.shape[0]) // 2
        rgb[top : top + scaled.shape[0], left : left + scaled.shape[1]] = scaled
        landmarks = landmarks * factor + (left, top)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if tone == "grey":
        Image.fromarray(grey, "L").save(out, quality=92)
    else:
        sepia = np.clip(grey[..., None].astype(np.float32) * np.array([1.07, 0.74, 0.43]) + 20, 0, 255)
        Image.fromarray(sepia.astype(np.uint8)).save(out, quality=92)
    return Picture(out, landmarks, float(np.linalg.norm(landmarks[RIGHT_IRIS] - landmarks[LEFT_IRIS])),
                   rgb.shape[1::-1])


def landmark_error(found: np.ndarray, truth: Picture) -> float:
    """Mean distance of the found face's 468 mesh landmarks from where the face truly is, over its eye distance."""
    return float(np.linalg.norm(found[:468, :2] - truth.landmarks[:468], axis=1).mean() / truth.eye_distance)

"""The faces in a photo, and the one an identity is built from: one search for both heads.

The Face Landmarker's own detector is short-range (faces close to the camera, large in the frame), but identity photos
come from the web and from albums: small faces, group photos, large pictures. So the faces are searched with the
full-range BlazeFace detector (`realtime.assets.FACE_DETECTOR`) over a pyramid of reduced copies of the photo, each cut
into overlapping tiles of the detector's 192 x 192 input. On the finest copy a face `SEARCH_FLOOR` pixels between the
eyes is `DETECTOR_EYES` pixels between the eyes in the detector's input, where BlazeFace finds faces reliably; that
copy is at most `FINE_SIDE` pixels on a side, so a large photo costs no more to search than a 1024-pixel one. Each next
copy is half the size, the last one the whole photo in a single input. The landmarker's own pass over the whole photo
adds the close-ups that the full-range detector misses; a face it landmarks away from the detector's eyes is landmarked
on its crop instead.

Each face the detector found is then landmarked on a crop around it at the resolution the landmarker expects: the
photo's own pixels for a large face, upsampled for a small one. That also confirms it: what the landmarker does not see
as a face, or sees with its eyes elsewhere than the detector's, is dropped. The landmarks come back in full-photo
pixels, as `FaceTracker.track` gives them on a whole photo. Faces are numbered from left to right (`--face N`,
`--list-faces`).
"""

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from realtime.errors import UserError
from realtime.tracking.tracker import (
    FaceObservation,
    FaceTracker,
    FaceTrackerOptions,
    RunningMode,
    native_stderr_silenced,
)

log = logging.getLogger(__name__)

DETECTOR_INPUT = 192  # BlazeFace full range's input side
DETECTOR_EYES = 6.0  # pixels between the eyes in the detector's input from which it finds faces reliably (5.5 measured)
SEARCH_FLOOR = 8.0  # the smallest eye distance searched for, in photo pixels (larger in photos over 1365 pixels)
FINE_SIDE = 1024  # the finest copy searched is at most this many pixels on a side
TILE_OVERLAP = 32  # detector-input pixels shared by neighbouring tiles: a face of its level fits whole in one
MIN_DETECTION_SCORE = 0.4  # low: the landmarker confirms every detection (a 45-degree profile scores 0.5 to 0.6)
MAX_CANDIDATES = 32  # detections confirmed by the landmarker at most, best first (a crowd costs 15 ms a face)
MAX_LANDMARKER_FACES = 8  # faces of the landmarker's own whole-photo pass

CROP_CONTEXT = 3.0  # a face's crop is this many times the detector's box: the landmarker wants it large but whole
CROP_FACE_PIXELS = 192  # a smaller face is upsampled so that its box is this many pixels in the crop
CROP_MAX_SIDE = 1024  # a larger crop is reduced (the landmarker works at 256 pixels anyway)
MAX_EYES_APART = 0.5  # detector's and landmarker's eyes (of the eye distance): faces 0.03 to 0.32, false ones 0.67 up

MIN_EYE_DISTANCE = 10.0  # pixels between the eyes: a smaller face is refused
SOFT_EYE_DISTANCE = 30.0  # below: a warning that the avatar's texture is upsampled from few pixels
RIGHT_IRIS, LEFT_IRIS = 468, 473  # iris centres among the 478 landmarks


@dataclass(frozen=True, eq=False)
class FoundFace:
    """A face in a photo: the landmarker's observation of it, in full-photo pixels."""

    observation: FaceObservation

    @property
    def box(self) -> tuple[float, float, float, float]:
        return self.observation.box

    @property
    def width(self) -> float:
        x0, _, x1, _ = self.box
        return x1 - x0

    @property
    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])

    @property
    def eye_distance(self) -> float:
        """Pixels between the iris centres, in 3D (z is scaled like x), so a turned head keeps its size."""
        landmarks = self.observation.landmarks
        return float(np.linalg.norm(landmarks[RIGHT_IRIS] - landmarks[LEFT_IRIS]))


@dataclass(frozen=True)
class Detection:
    """A BlazeFace detection in photo pixels."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1
    eyes: np.ndarray  # (2, 2) the eye centres
    score: float

    @property
    def side(self) -> float:
        x0, y0, x1, y1 = self.box
        return max(x1 - x0, y1 - y0)

    @property
    def center(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        return np.array([(x0 + x1) / 2, (y0 + y1) / 2])


class FaceFinder:
    """BlazeFace full range and the Face Landmarker (IMAGE mode): ``find(rgb) -> [FoundFace]``, left to right."""

    def __init__(self, detector: object, tracker: FaceTracker) -> None:
        self._detector = detector
        self._tracker = tracker

    @classmethod
    def create(cls) -> "FaceFinder":
        from mediapipe.tasks.python import BaseOptions, vision

        from realtime import assets

        model_path = assets.face_detector_path()
        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            running_mode=vision.RunningMode.IMAGE,
            min_detection_confidence=MIN_DETECTION_SCORE,
            min_suppression_threshold=0.3,
        )
        try:
            with native_stderr_silenced(not log.isEnabledFor(logging.DEBUG)):
                detector = vision.FaceDetector.create_from_options(options)
                # the first inference sets up the CPU delegate and says so on stderr: do it here, silenced
                detector.detect(_mp_image(np.zeros((DETECTOR_INPUT, DETECTOR_INPUT, 3), np.uint8)))
        except (RuntimeError, ValueError) as err:
            raise UserError(
                f"could not load {model_path} ({err}): run `realtime-retarget --fetch-assets --force`"
            ) from err
        try:
            tracker = FaceTracker.create_from_options(
                FaceTrackerOptions(running_mode=RunningMode.IMAGE, max_faces=MAX_LANDMARKER_FACES)
            )
        except BaseException:
            detector.close()
            raise
        return cls(detector, tracker)

    def find(self, rgb: np.ndarray) -> list[FoundFace]:
        """Every face in ``rgb`` (H, W, 3) uint8, numbered from left to right (index 0 is face 1)."""
        # LiteRT warns on stderr, now and then, that it copies an input it finds misaligned: nothing for the user
        with native_stderr_silenced(not log.isEnabledFor(logging.DEBUG)):
            return self._find(rgb)

    def _find(self, rgb: np.ndarray) -> list[FoundFace]:
        faces = [FoundFace(observation) for observation in self._tracker.track_all(rgb)]
        detections = self.detect(rgb)
        checked = 0
        for detection in detections:
            same = [face for face in faces if _same_face(face, detection.center, detection.side)]
            # a face of the whole-photo pass is kept where its eyes are the detector's as a face's are; in a group photo
            # that pass put a small face's landmarks low (eyes 0.67 of their distance off, the mouth on the chin, the
            # chin on the neck), and its crop places them
            if same and all(_eyes_apart(face, detection) < MAX_EYES_APART for face in same):
                continue
            if checked == MAX_CANDIDATES:
                log.debug("%d more detections not checked", len(detections) - checked)
                break
            checked += 1
            observation = self._landmark(rgb, detection)
            if observation is None:
                log.debug("detection %s (score %.2f) is not a face to the landmarker", detection.box, detection.score)
                continue
            face = FoundFace(observation)
            faces = [other for other in faces if not _same_face(other, face.center, face.width)] + [face]
        faces.sort(key=lambda face: (face.center[0], face.center[1]))
        return [FoundFace(dataclasses.replace(face.observation, faces_found=len(faces))) for face in faces]

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """BlazeFace over the search pyramid (module docstring), overlapping detections merged, best first."""
        height, width = rgb.shape[:2]
        found: list[Detection] = []
        scale = min(DETECTOR_EYES / SEARCH_FLOOR, FINE_SIDE / max(width, height))
        while True:
            level_size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if max(level_size) <= DETECTOR_INPUT:  # the whole photo in one input
                fit = DETECTOR_INPUT / max(width, height)
                size = (max(1, round(width * fit)), max(1, round(height * fit)))
                whole = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if fit < 1 else cv2.INTER_LINEAR)
                found += self._detect_tile(whole, (0, 0), (size[0] / width, size[1] / height))
                break
            level = cv2.resize(rgb, level_size, interpolation=cv2.INTER_AREA)
            factors = (level_size[0] / width, level_size[1] / height)
            for top in _tile_starts(level_size[1]):
                for left in _tile_starts(level_size[0]):
                    tile = level[top : top + DETECTOR_INPUT, left : left + DETECTOR_INPUT]
                    found += self._detect_tile(tile, (left, top), factors)
            scale /= 2
        return _merge(found)

    def _detect_tile(self, tile: np.ndarray, offset: tuple[int, int], factors: tuple[float, float]) -> list[Detection]:
        result = self._detector.detect(_mp_image(tile))
        height, width = tile.shape[:2]
        (left, top), (fx, fy) = offset, factors
        detections = []
        for detection in result.detections:
            b = detection.bounding_box
            box = ((b.origin_x + left) / fx, (b.origin_y + top) / fy,
                   (b.origin_x + b.width + left) / fx, (b.origin_y + b.height + top) / fy)
            eyes = np.array([((k.x * width + left) / fx, (k.y * height + top) / fy) for k in detection.keypoints[:2]])
            detections.append(Detection(box, eyes, float(detection.categories[0].score)))
        return detections

    def _landmark(self, rgb: np.ndarray, detection: Detection) -> FaceObservation | None:
        """The landmarker on a crop around ``detection``, in photo pixels; None if it sees no face there."""
        side = detection.side
        crop_side = CROP_CONTEXT * side
        scale = min(max(1.0, CROP_FACE_PIXELS / side), CROP_MAX_SIDE / crop_side)
        center = detection.center
        x0, y0 = (int(math.floor(v)) for v in center - crop_side / 2)
        x1, y1 = (int(math.ceil(v)) for v in center + crop_side / 2)
        crop = _padded_region(rgb, x0, y0, x1, y1)
        size = (max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
        sx, sy = size[0] / (x1 - x0), size[1] / (y1 - y0)
        best, best_distance = None, np.inf
        for observation in self._tracker.track_all(crop):
            landmarks = observation.landmarks.copy()
            landmarks[:, 0] = landmarks[:, 0] / sx + x0
            landmarks[:, 1] = landmarks[:, 1] / sy + y0
            landmarks[:, 2] /= sx
            face = FoundFace(dataclasses.replace(observation, landmarks=landmarks))
            distance = float(np.linalg.norm(face.center - center))
            # the face the detector saw: about where and as large as its box (not a neighbour in the crop), with
            # its eyes where the detector put them (a letter or a pattern enlarged can look like a face to either
            # alone, not to both alike: their eyes then disagree by most of the eye distance)
            if (distance < 0.5 * side and 0.5 < face.width / side < 2.0
                    and _eyes_apart(face, detection) < MAX_EYES_APART and distance < best_distance):
                best, best_distance = face.observation, distance
        return best

    def close(self) -> None:
        with native_stderr_silenced(not log.isEnabledFor(logging.DEBUG)):  # LiteRT says goodbye on stderr
            self._detector.close()
        self._tracker.close()

    def __enter__(self) -> "FaceFinder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def find_faces(rgb: np.ndarray) -> list[FoundFace]:
    """Every face in the photo ``rgb``, numbered from left to right (see the module docstring)."""
    with FaceFinder.create() as finder:
        return finder.find(rgb)


def choose_face(faces: list[FoundFace], name: str | Path, choice: int | None = None) -> FoundFace:
    """Face number ``choice`` (1 is the leftmost), or the largest usable one; a one-line UserError when there is none.

    With several faces and no choice, a warning says which was taken and how to take another.
    """
    if not faces:
        raise UserError(f"no face found in {name}: use a photo where a face is clearly visible, at least "
                        f"{MIN_EYE_DISTANCE:.0f} pixels between the eyes")
    count = len(faces)
    if choice is not None:
        if not 1 <= choice <= count and count == 1:
            raise UserError(f"--face {choice}: {name} shows 1 face: leave --face out (or give --face 1)")
        if not 1 <= choice <= count:
            raise UserError(f"--face {choice}: {name} shows {count} faces, numbered 1 to {count} from left to "
                            f"right: choose one of those (`--list-faces {name}` draws the numbers)")
        chosen = faces[choice - 1]
        if chosen.eye_distance < MIN_EYE_DISTANCE:
            raise UserError(f"face {choice} in {name} is {_size(chosen)}, too small (at least "
                            f"{MIN_EYE_DISTANCE:.0f} pixels between the eyes): choose another face or use a larger "
                            "photo of this person")
    else:
        usable = [face for face in faces if face.eye_distance >= MIN_EYE_DISTANCE]
        if not usable:
            largest = max(faces, key=lambda face: face.eye_distance)
            found = "the only face" if count == 1 else f"the largest of its {count} faces"
            raise UserError(f"{found} in {name} is {_size(largest)}, too small (at least {MIN_EYE_DISTANCE:.0f} "
                            "pixels between the eyes): use a larger photo of this person, or crop the photo around "
                            "them")
        chosen = max(usable, key=lambda face: face.eye_distance)
        choice = faces.index(chosen) + 1
        if count > 1:
            log.warning("%s shows %d faces: using the largest, face %d of %d numbered from left to right (--face N "
                        "picks another; --list-faces %s draws the numbers)", name, count, choice, count, name)
    if chosen.eye_distance < SOFT_EYE_DISTANCE:
        log.warning("face %d in %s is small (%s): the avatar's texture is upsampled from few pixels and looks soft; "
                    "a photo where the face is larger gives a sharper avatar", choice, name, _size(chosen))
    return chosen


def find_identity_face(rgb: np.ndarray, name: str | Path, choice: int | None = None) -> FaceObservation:
    """The face to build an identity from (`choose_face` of `find_faces`), in full-photo pixels.

    ``faces_found`` is the number of faces in the photo. The blendshape scores and the transform are those of the crop
    the face was landmarked on (the transform's rotation holds; its translation is the crop's, not the photo's).
    """
    return choose_face(find_faces(rgb), name, choice).observation


def draw_faces(rgb: np.ndarray, faces: list[FoundFace], chosen: FoundFace | None = None) -> np.ndarray:
    """A copy of ``rgb`` with each face's box and number (the ``chosen`` one green, too small ones red)."""
    out = np.ascontiguousarray(rgb).copy()
    thickness = max(1, round(max(rgb.shape[:2]) / 500))
    font_scale = max(0.5, max(rgb.shape[:2]) / 1200)
    for number, face in enumerate(faces, 1):
        colour = (60, 200, 60) if face is chosen else (240, 200, 40)
        if face.eye_distance < MIN_EYE_DISTANCE:
            colour = (230, 50, 50)
        x0, y0, x1, y1 = (round(v) for v in face.box)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        label = str(number)
        (text_width, text_height), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = y0 - text_height - baseline - 2 * thickness
        if top < 0:  # no room above the box: inside it
            top = y0
        cv2.rectangle(out, (x0, top), (x0 + text_width + 2 * thickness, top + text_height + baseline + 2 * thickness),
                      colour, cv2.FILLED)
        cv2.putText(out, label, (x0 + thickness, top + text_height + thickness), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0), thickness, cv2.LINE_AA)
    return out


def describe_face(face: FoundFace) -> str:
    x0, y0, x1, y1 = (round(v) for v in face.box)
    return f"{_size(face)}, box ({x0}, {y0})-({x1}, {y1})"


# --- internals -----------------------------------------------------------------------------------------------------


def _mp_image(rgb: np.ndarray):
    import mediapipe as mp

    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))


def _tile_starts(length: int) -> list[int]:
    """Where the detector's tiles start along a side of ``length`` pixels: evenly spread, overlapping."""
    if length <= DETECTOR_INPUT:
        return [0]
    count = math.ceil((length - DETECTOR_INPUT) / (DETECTOR_INPUT - TILE_OVERLAP)) + 1
    return [round(i * (length - DETECTOR_INPUT) / (count - 1)) for i in range(count)]


def _merge(detections: list[Detection]) -> list[Detection]:
    """The best-scoring of overlapping detections (the same face seen in two tiles or two levels, or part of it)."""
    kept: list[Detection] = []
    for detection in sorted(detections, key=lambda d: -d.score):
        if all(_overlap(detection.box, other.box) < 0.5 for other in kept):
            kept.append(detection)
    return kept


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over the smaller box's area."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / max(smaller, 1e-9)


def _eyes_apart(face: FoundFace, detection: Detection) -> float:
    """How far the detector's eyes are from the face's landmarked iris centres, in the face's eye distances."""
    eyes = face.observation.landmarks[[RIGHT_IRIS, LEFT_IRIS], :2]
    return float(np.linalg.norm(detection.eyes - eyes, axis=1).mean() / max(face.eye_distance, 1e-6))


def _same_face(face: FoundFace, center: np.ndarray, width: float) -> bool:
    return bool(np.linalg.norm(face.center - center) < 0.4 * max(face.width, width)
                and 0.5 < width / max(face.width, 1e-9) < 2.0)


def _padded_region(rgb: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``rgb[y0:y1, x0:x1]``, the part outside the photo filled by repeating its edge."""
    height, width = rgb.shape[:2]
    inner = rgb[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    pad = (max(-y0, 0), max(y1 - height, 0), max(-x0, 0), max(x1 - width, 0))
    if not any(pad):
        return inner
    if inner.size == 0:
        return np.zeros((y1 - y0, x1 - x0, 3), np.uint8)
    return cv2.copyMakeBorder(inner, *pad, cv2.BORDER_REPLICATE)


def _size(face: FoundFace) -> str:
    return f"{face.eye_distance:.0f} pixels between the eyes ({face.width:.0f} pixels wide)"

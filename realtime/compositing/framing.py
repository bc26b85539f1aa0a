"""Framing the identity photo to the output: head and shoulders, at the output's size and aspect.

The whole photo is used when it already frames the face as a webcam in a video call does; a small face in a big picture
gets a crop around its head and shoulders. The crop stays inside the photo wherever it can; where it cannot (a face
at the very edge, a portrait too narrow for a wide frame), the missing part is the photo mirrored at its edge and
blurred, never black bars or stretched pixels; the photo look mirrors only its background beside it (the person filled
from around them: no ghost of the face beside the face) and its body under it.
"""

from dataclasses import dataclass

import cv2
import numpy as np

CALL_FRAMING = 12.0  # a photo at most this many inter-ocular distances tall is framed as a webcam would: whole
HEAD_AND_SHOULDERS = 8.0  # a bigger picture is cropped to this many: the person's head and shoulders
CLOSEST = 3.0  # the least frame height in inter-ocular distances (a photo that is nearly all face)
EYES_ABOVE_CENTRE = 0.12  # of the frame height: the eyes sit a little above the middle, as in a portrait
EDGE_BLUR_FRACTION = 0.04  # of the frame height: the blur of a mirrored extension
FACE_ROOM = 0.15  # of the face's size: the frame keeps the face and this much around it, leaving the photo if it must


@dataclass(frozen=True)
class Framing:
    """A similarity from photo pixels to frame pixels: ``frame = scale * photo + offset``."""

    size: tuple[int, int]  # output width, height
    scale: float
    offset: np.ndarray  # (2,)

    def to_frame(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) photo pixels -> frame pixels."""
        return np.asarray(points[..., :2], np.float64) * self.scale + self.offset

    def projection(self, photo_projection: np.ndarray) -> np.ndarray:
        """A (4, 4) model -> photo pixels and depth projection, made model -> frame pixels and depth."""
        similarity = np.diag([self.scale, self.scale, self.scale, 1.0])
        similarity[:2, 3] = self.offset
        return (similarity @ photo_projection).astype(np.float32)

    def to_photo(self, points: np.ndarray) -> np.ndarray:
        """(..., 2) frame pixels -> photo pixels."""
        return (np.asarray(points[..., :2], np.float64) - self.offset) / self.scale

    def reaches_beyond(self, photo_size: tuple[int, int]) -> bool:
        """Whether the frame shows more than a photo of ``photo_size`` (width, height): an extension beyond it."""
        low, high = self.to_photo(np.array([[0.0, 0.0], self.size], np.float64))
        return bool((low < 0).any() or (high > photo_size).any())

    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0.0, self.offset[0]], [0.0, self.scale, self.offset[1]]], np.float64)

    def frame(self, image: np.ndarray, interpolation: int = cv2.INTER_AREA, outside: np.ndarray | None = None,
              below: np.ndarray | None = None) -> np.ndarray:
        """``image`` (photo-sized, any channels) warped into the frame; beyond the photo's edges, mirrored and
        blurred: the mirror image of ``outside`` (default ``image``), and under the photo's bottom edge that of
        ``below`` (default ``outside``). Those two cover the photo like ``image`` at any resolution (blurred, they
        need not have its detail)."""
        flags = interpolation if self.scale < 1 else cv2.INTER_LINEAR
        matrix = self.matrix()
        size = (image.shape[1], image.shape[0])
        if flags == cv2.INTER_AREA:  # warpAffine has no area filter: shrink first, then place
            image = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
            matrix = np.array([[self.scale * size[0] / image.shape[1], 0, self.offset[0]],
                               [0, self.scale * size[1] / image.shape[0], self.offset[1]]])
            flags = cv2.INTER_LINEAR

        def on_image_grid(source: np.ndarray) -> np.ndarray:
            if source.shape[:2] == image.shape[:2]:
                return source
            return cv2.resize(source, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)

        outside = image if outside is None else on_image_grid(outside)
        below = outside if below is None else on_image_grid(below)
        return self._place(image, outside, below, matrix=matrix, flags=flags)

    def _place(self, image: np.ndarray, outside: np.ndarray, below: np.ndarray, matrix: np.ndarray,
               flags: int) -> np.ndarray:
        width, height = self.size

        def warp(source: np.ndarray, border: int = cv2.BORDER_REFLECT_101) -> np.ndarray:
            return cv2.warpAffine(source, matrix, (width, height), flags=flags, borderMode=border, borderValue=0)

        framed = warp(image)
        inside = warp(np.ones(image.shape[:2], np.float32), cv2.BORDER_CONSTANT)
        if inside.min() > 0.999:
            return framed
        mirrored = framed if outside is image else warp(outside)
        if below is not outside:
            columns = np.ones(image.shape[:2], np.float32)
            columns[0] = columns[:, 0] = columns[:, -1] = 0.0  # replicated: 1 only under the photo, not beside it
            under = warp(columns, cv2.BORDER_REPLICATE)
            under = cv2.GaussianBlur(under, (0, 0), EDGE_BLUR_FRACTION * height / 2)
            under = under[..., None] if framed.ndim == 3 else under
            mirrored = (warp(below) * under + mirrored * (1 - under)).astype(framed.dtype)
        sigma = EDGE_BLUR_FRACTION * height
        blurred = cv2.GaussianBlur(mirrored, (0, 0), sigma)
        weight = cv2.GaussianBlur(inside, (0, 0), sigma / 2)
        if framed.ndim == 3:
            weight = weight[..., None]
        return (framed * weight + blurred * (1 - weight)).astype(framed.dtype)


def frame_photo(photo_size: tuple[int, int], eye_centre: np.ndarray, inter_ocular: float, size: tuple[int, int],
                face_box: tuple[float, float, float, float]) -> Framing:
    """The framing of a face whose eyes are centred at ``eye_centre`` (2,) photo pixels, ``inter_ocular`` pixels
    apart, within ``face_box`` (x0, y0, x1, y1), in a photo of ``photo_size`` (width, height), for an output of
    ``size`` (width, height)."""
    photo_width, photo_height = photo_size
    width, height = size
    aspect = width / height
    fits = min(photo_height, photo_width / aspect)  # the tallest crop of the output's aspect inside the photo
    crop_height = fits if fits <= CALL_FRAMING * inter_ocular else HEAD_AND_SHOULDERS * inter_ocular
    crop_height = max(crop_height, CLOSEST * inter_ocular)
    crop_width = crop_height * aspect
    x0 = eye_centre[0] - crop_width / 2
    y0 = eye_centre[1] - crop_height * (0.5 - EYES_ABOVE_CENTRE)
    bx0, by0, bx1, by1 = face_box
    room = FACE_ROOM * max(bx1 - bx0, by1 - by0)
    x0 = _place(x0, crop_width, photo_width, bx0 - room, bx1 + room)
    y0 = _place(y0, crop_height, photo_height, by0 - room, by1 + room)
    scale = height / crop_height
    if scale > 1.0:  # an enlarged photo's crop starts on a whole pixel: drawn at its own resolution, copied as it is
        x0, y0 = _whole_pixel(x0, crop_width, photo_width), _whole_pixel(y0, crop_height, photo_height)
    return Framing(size=(width, height), scale=scale, offset=np.array([-x0 * scale, -y0 * scale]))


def _whole_pixel(start: float, length: float, limit: float) -> float:
    """``start`` rounded to a whole pixel, towards the inside of [0, limit] if [start, start + length] lies in it."""
    rounded = float(np.round(start))
    if 0.0 <= start and start + length <= limit:
        rounded = float(np.clip(rounded, 0.0, np.floor(limit - length)))
    return rounded


def _place(ideal: float, length: float, limit: float, low: float, high: float) -> float:
    """Where [start, start + length] goes along a photo side of ``limit``: moved from ``ideal`` to inside the photo
    if it then still holds the face's [low, high]; else left at ``ideal`` (the face framed as usual, the photo
    extended beyond its edge)."""
    inside = _inside(ideal, length, limit)
    return inside if inside <= low and high <= inside + length else ideal


def _inside(start: float, length: float, limit: float) -> float:
    """``start`` moved so that [start, start + length] lies in [0, limit] if it can (else centred on it)."""
    if length >= limit:
        return (limit - length) / 2
    return float(np.clip(start, 0.0, limit - length))

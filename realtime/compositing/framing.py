"""Framing the identity photo to the output: head and shoulders, at the output's size and aspect.

The whole photo is used when it already frames the face as a webcam in a video call does; a small face in a big picture
gets a crop around its head and shoulders. The crop stays inside the photo wherever it can; where it cannot (a face
at the very edge, a portrait too narrow for a wide frame), the missing part is the photo mirrored at its edge and
blurred, never black bars or stretched pixels.
"""

from dataclasses import dataclass

import cv2
import numpy as np

CALL_FRAMING = 12.0  # frame height in inter-ocular distances at most: a webcam's framing in a video call
CLOSEST = 3.0  # the least frame height in inter-ocular distances (a photo that is nearly all face)
EYES_ABOVE_CENTRE = 0.12  # of the frame height: the eyes sit a little above the middle, as in a portrait
EDGE_BLUR_FRACTION = 0.04  # of the frame height: the blur of a mirrored extension


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

    def matrix(self) -> np.ndarray:
        return np.array([[self.scale, 0.0, self.offset[0]], [0.0, self.scale, self.offset[1]]], np.float64)

    def frame(self, image: np.ndarray, interpolation: int = cv2.INTER_AREA) -> np.ndarray:
        """``image`` (photo-sized, any channels) warped into the frame; outside the photo, mirrored and blurred."""
        width, height = self.size
        flags = interpolation if self.scale < 1 else cv2.INTER_LINEAR
        if flags == cv2.INTER_AREA:  # warpAffine has no area filter: shrink first, then place
            shrunk = cv2.resize(image, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
            sx = shrunk.shape[1] / image.shape[1]
            sy = shrunk.shape[0] / image.shape[0]
            matrix = np.array([[self.scale / sx, 0, self.offset[0]], [0, self.scale / sy, self.offset[1]]])
            return self._place(shrunk, matrix, cv2.INTER_LINEAR)
        return self._place(image, self.matrix(), flags)

    def _place(self, image: np.ndarray, matrix: np.ndarray, flags: int) -> np.ndarray:
        width, height = self.size
        framed = cv2.warpAffine(image, matrix, (width, height), flags=flags, borderMode=cv2.BORDER_REFLECT_101)
        inside = cv2.warpAffine(np.ones(image.shape[:2], np.float32), matrix, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if inside.min() > 0.999:
            return framed
        sigma = EDGE_BLUR_FRACTION * height
        blurred = cv2.GaussianBlur(framed, (0, 0), sigma)
        weight = cv2.GaussianBlur(inside, (0, 0), sigma / 2)
        if framed.ndim == 3:
            weight = weight[..., None]
        return (framed * weight + blurred * (1 - weight)).astype(framed.dtype)


def frame_photo(photo_size: tuple[int, int], eye_centre: np.ndarray, inter_ocular: float,
                size: tuple[int, int]) -> Framing:
    """The framing of a face whose eyes are centred at ``eye_centre`` (2,) photo pixels, ``inter_ocular`` pixels
    apart, in a photo of ``photo_size`` (width, height), for an output of ``size`` (width, height)."""
    photo_width, photo_height = photo_size
    width, height = size
    aspect = width / height
    fits = min(photo_height, photo_width / aspect)  # the tallest crop of the output's aspect inside the photo
    crop_height = max(min(CALL_FRAMING * inter_ocular, fits), CLOSEST * inter_ocular)
    crop_width = crop_height * aspect
    x0 = eye_centre[0] - crop_width / 2
    y0 = eye_centre[1] - crop_height * (0.5 - EYES_ABOVE_CENTRE)
    x0 = _inside(x0, crop_width, photo_width)
    y0 = _inside(y0, crop_height, photo_height)
    scale = height / crop_height
    return Framing(size=(width, height), scale=scale, offset=np.array([-x0 * scale, -y0 * scale]))


def _inside(start: float, length: float, limit: float) -> float:
    """``start`` moved so that [start, start + length] lies in [0, limit] if it can (else centred on it)."""
    if length >= limit:
        return (limit - length) / 2
    return float(np.clip(start, 0.0, limit - length))

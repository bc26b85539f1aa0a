"""DECA's test-time face crop (``decalib/datasets/datasets.py`` ``TestData``), driven by MediaPipe landmarks.

DECA crops around the bounding box of FAN's 68 landmarks: jaw contour (ear side to ear side, down to the chin) and
brows (top), never the forehead. MediaPipe's 478 points reach the hairline, so the box is taken over the MediaPipe
points that correspond to the 68 scheme's jaw line and brows instead (DECA_SPEC.md 1.6). The square crop has side
``int(1.1 * 1.25 * mean(box width, box height))`` around the box centre and is resampled to 224 x 224 with a
similarity transform, bilinear, black outside the image: the encoders' training distribution.

numpy and OpenCV only (no torch, no scikit-image).
"""

import cv2
import numpy as np

CROP_SIZE = 224
CROP_SCALE = 1.25  # TestData's default `scale`
KPT68_FACTOR = 1.1  # bbox2point for a 'kpt68' box

# MediaPipe Face Mesh indices standing in for the 68 scheme's jaw line (points 0-16: right ear side, chin, left ear
# side) and brows (17-26: upper brow edge, outer to inner, both sides).
JAW_LINE = (127, 234, 93, 132, 58, 172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397, 288, 361, 323,
            454, 356)
BROWS = (70, 63, 105, 66, 107, 336, 296, 334, 293, 300)
BOX_68_INDICES = JAW_LINE + BROWS


def box_68(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) in pixels of the 68-landmark-style box from MediaPipe's (478, 2+) landmarks."""
    points = np.asarray(landmarks)[BOX_68_INDICES, :2]
    (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
    return float(left), float(top), float(right), float(bottom)


def deca_crop_transform(box: tuple[float, float, float, float], crop_size: int = CROP_SIZE,
                        scale: float = CROP_SCALE) -> np.ndarray:
    """The (3, 3) similarity mapping image pixels to crop pixels, as DECA's TestData builds it from a kpt68 box.

    Upstream estimates it from three corners of the source square (TL, BL, TR) mapped onto [[0, 0], [0, 223],
    [223, 0]]; those pairs are an exact axis-aligned similarity, so in closed form it is a scale of
    (crop_size - 1) / size and the translation that takes the square's top-left corner to the origin.
    """
    left, top, right, bottom = box
    old_size = ((right - left) + (bottom - top)) / 2 * KPT68_FACTOR
    center_x, center_y = (left + right) / 2, (top + bottom) / 2
    size = int(old_size * scale)
    if size <= 0:
        raise ValueError(f"degenerate face box {box}")
    s = (crop_size - 1) / size
    x0, y0 = center_x - size / 2, center_y - size / 2
    return np.array([[s, 0.0, -s * x0], [0.0, s, -s * y0], [0.0, 0.0, 1.0]])


def deca_crop(image_rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The DECA encoder input for the face with these landmarks.

    ``image_rgb`` (H, W, 3) uint8, ``landmarks`` (478, 2+) in pixels. Returns the crop (224, 224, 3) float32 RGB in
    [0, 1] and the (3, 3) transform from image pixels to crop pixels (pixel centres at integer coordinates; invert it
    to put crop-space results back into the frame).
    """
    transform = deca_crop_transform(box_68(landmarks))
    image = image_rgb.astype(np.float32) / 255.0
    crop = cv2.warpAffine(image, transform[:2], (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0.0, 0.0, 0.0))
    return crop, transform

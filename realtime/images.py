"""Reading still images (identity photos, backgrounds) safely: one clear error for anything that is not a picture."""

from pathlib import Path

import cv2
import numpy as np

from realtime.errors import UserError

MAX_SIDE = 2048  # larger images are downscaled: nothing downstream can use more


def read_image(path: Path, what: str = "identity photo") -> np.ndarray:
    """RGB uint8 (H, W, 3) with EXIF rotation applied and at most `MAX_SIDE` pixels on a side."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found: check the path")
    data = np.fromfile(path, np.uint8)
    # IMREAD_COLOR honours EXIF orientation and turns grey, 16-bit and CMYK images into 8-bit BGR
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise UserError(f"{what} {path} could not be read as an image: use a JPEG or PNG file")
    scale = MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(image[:, :, ::-1])

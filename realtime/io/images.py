"""Reading still images (identity photos, backgrounds) safely: one clear error for anything that is not a picture.

Pillow decodes: it reads the header first, so an image that declares an absurd size is refused before any pixel memory
is allocated; it raises on a truncated file instead of filling the rest with grey; and, unlike OpenCV's decoders, it
prints nothing on stderr. Grey, palette, 16-bit, CMYK and alpha images become 8-bit RGB; EXIF rotation is applied.
"""

import io
import logging
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

from realtime.errors import UserError

log = logging.getLogger(__name__)

MAX_SIDE = 2048  # larger images are downscaled: nothing downstream can use more
MAX_MEGAPIXELS = 120  # a 108-megapixel phone photo still loads; 20000x20000 (1.2 GB as RGB) does not


def read_image(path: Path, what: str = "identity photo") -> np.ndarray:
    """RGB uint8 (H, W, 3) with EXIF rotation applied and at most `MAX_SIDE` pixels on a side."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} not found: check the path")
    data = path.read_bytes()
    if not data:
        raise UserError(f"{what} {path} could not be read as an image: it is empty (0 bytes); use a JPEG or PNG file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings (odd EXIF, large images) are not the user's business
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:  # Pillow's own limit, above ours
            raise _too_large(path, what, f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} megapixels") from err
        except Exception as err:  # UnidentifiedImageError, or a header so broken that the format plugin raised
            log.debug("%s: %s", path, err)
            raise UserError(f"{what} {path} could not be read as an image: use a JPEG or PNG file") from err
        with image:
            # JPEG only: decode at 1/2, 1/4 or 1/8 scale when that still gives MAX_SIDE pixels (no effect otherwise)
            image.draft("RGB", (MAX_SIDE, MAX_SIDE))
            width, height = image.size
            if width * height > MAX_MEGAPIXELS * 1_000_000:
                raise _too_large(path, what, f"{width}x{height}, {width * height / 1e6:.0f} megapixels")
            try:
                rgb = _decode_rgb(image)
            except Exception as err:  # truncated data, a corrupt stream: whatever the decoder found wrong
                log.debug("%s: %s", path, err, exc_info=True)
                raise UserError(
                    f"{what} {path} could not be read as an image: the {image.format} file is damaged or truncated "
                    f"({str(err).splitlines()[0] if str(err) else type(err).__name__}); use another copy of the photo"
                ) from err
    scale = MAX_SIDE / max(rgb.shape[:2])
    if scale < 1:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


def _decode_rgb(image: Image.Image) -> np.ndarray:
    image.load()
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16") or image.mode == "I":  # 16-bit grey: keep the high byte, not a clipped low one
        grey = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "P":  # palette: through RGBA, so a transparent colour index is handled without a warning
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"))


def _too_large(path: Path, what: str, size: str) -> UserError:
    return UserError(
        f"{what} {path} is too large to load safely ({size}; the limit is {MAX_MEGAPIXELS} megapixels): "
        f"scale it down (the app uses at most {MAX_SIDE} pixels on a side)"
    )

"""Person / background separation of a photo with MediaPipe Selfie Segmentation (Tasks `ImageSegmenter`).

Hair and clothes count as person. The model sees 256 x 256; its soft mask is brought back to the photo's resolution
and its edge refined with a guided filter on the photo, so that strands of hair keep their outline.
"""

import logging
from pathlib import Path

import cv2
import numpy as np

from realtime import assets
from realtime.errors import UserError
from realtime.tracking.tracker import native_stderr_silenced

log = logging.getLogger(__name__)

GUIDED_RADIUS_FRACTION = 0.01  # of the photo's longer side
GUIDED_EPSILON = 1e-3


def person_mask(rgb: np.ndarray, model_path: Path | None = None) -> np.ndarray:
    """(H, W) float32 in [0, 1]: how much each pixel of ``rgb`` (H, W, 3 uint8) belongs to a person."""
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    model_path = model_path or assets.selfie_segmenter_path()
    options = vision.ImageSegmenterOptions(
        base_options=BaseOptions(model_asset_path=str(model_path)),
        running_mode=vision.RunningMode.IMAGE,
        output_confidence_masks=True,
        output_category_mask=False,
    )
    try:
        with native_stderr_silenced(not log.isEnabledFor(logging.DEBUG)):
            segmenter = vision.ImageSegmenter.create_from_options(options)
    except (RuntimeError, ValueError) as err:
        raise UserError(f"could not load {model_path} ({err}): run `realtime-retarget --fetch-assets --force`") from err
    with segmenter:
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        masks = segmenter.segment(image).confidence_masks
    mask = np.asarray(masks[-1].numpy_view(), np.float32).reshape(rgb.shape[:2])
    return refine_edges(rgb, mask)


def refine_edges(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` (H, W) with its edges snapped to the photo's own edges (guided filter, He et al. 2010)."""
    radius = max(2, int(round(GUIDED_RADIUS_FRACTION * max(rgb.shape[:2]))))
    guide = rgb.astype(np.float32) / 255.0
    refined = cv2.ximgproc.guidedFilter(guide, mask.astype(np.float32), radius, GUIDED_EPSILON)
    return np.clip(refined, 0.0, 1.0)

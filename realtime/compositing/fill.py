"""Filling the hole a person leaves in a photo: the smoothest surface that meets the background all round the hole.

Each filled pixel is the mean of its four neighbours (Laplace's equation, a membrane stretched over the hole's rim),
the known pixels fixed, the frame's edges free. Near the rim the fill takes the colour of the background just beside
it; a weighted average over a pyramid (`realtime.rendering.photo_texture.pull_push_fill`) also pulls in colours from
far across the photo, and its flat middle shows as a ghost of the person. The membrane is smooth, so it is solved on a
small copy of the image (a sparse linear system of one unknown per hole pixel there) and scaled up.
"""

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

SOLVE_SIDE = 200  # pixels along the longer side of the copy the membrane is solved on


def membrane_fill(image: np.ndarray, known: np.ndarray, side: int = SOLVE_SIDE) -> np.ndarray:
    """(H, W, 3) float32: ``image`` (H, W, 3) with its pixels outside ``known`` (H, W) bool filled by the membrane.
    Smooth at the scale of the solve everywhere: the caller keeps its own pixels where they are known."""
    height, width = known.shape
    scale = min(1.0, side / max(height, width))
    small = (max(2, round(width * scale)), max(2, round(height * scale)))
    weight = cv2.resize(known.astype(np.float32), small, interpolation=cv2.INTER_AREA)
    colour = cv2.resize(image.astype(np.float32) * known[..., None], small, interpolation=cv2.INTER_AREA)
    values = (colour / np.maximum(weight, 1e-6)[..., None]).reshape(-1, 3)
    rows, cols = small[1], small[0]
    unknown = np.flatnonzero(weight.ravel() < 0.999)  # a small pixel partly in the hole is solved for
    if len(unknown) == 0:
        return image.astype(np.float32)
    if len(unknown) == weight.size:  # nothing around the hole (the person fills the photo): its edges' mean colour
        edges = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)
        return np.broadcast_to(edges.mean(axis=0), image.shape).astype(np.float32)
    number = -np.ones(rows * cols, np.int64)
    number[unknown] = np.arange(len(unknown))
    y, x = np.divmod(unknown, cols)
    neighbours = np.zeros(len(unknown))
    pairs_from, pairs_to = [], []
    rhs = np.zeros((len(unknown), 3))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ny, nx = y + dy, x + dx
        inside = np.flatnonzero((ny >= 0) & (ny < rows) & (nx >= 0) & (nx < cols))  # beyond the frame: no term
        other = ny[inside] * cols + nx[inside]
        neighbours[inside] += 1
        free = number[other] >= 0
        pairs_from.append(inside[free])
        pairs_to.append(number[other[free]])
        np.add.at(rhs, inside[~free], values[other[~free]])
    i = np.concatenate([np.arange(len(unknown)), *pairs_from])
    j = np.concatenate([np.arange(len(unknown)), *pairs_to])
    entries = np.r_[neighbours, -np.ones(len(i) - len(unknown))]
    laplacian = sparse.csc_matrix((entries, (i, j)), shape=(len(unknown), len(unknown)))
    values[unknown] = spsolve(laplacian, rhs, permc_spec="MMD_AT_PLUS_A")  # symmetric: 2-3x faster than the default
    return cv2.resize(values.reshape(rows, cols, 3).astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)

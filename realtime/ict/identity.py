"""An identity from one photo: load the photo, track the face, fit the ICT head, extract the texture, cache it all.

The cache entry is keyed by the photo's bytes, the converted model, the landmark map and `CACHE_VERSION`, and written
to a temporary folder that is renamed into place, so an interrupted preparation leaves no entry behind.
"""

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import moderngl
import numpy as np

from realtime.assets import sha256_file
from realtime.errors import UserError
from realtime.geometry.fitting import inter_ocular_distance
from realtime.geometry.normals import VertexNormals
from realtime.ict.avatar import atlas_uv, blendshape_matrix
from realtime.ict.identity_fit import FitOptions, fit_identity
from realtime.ict.landmark_map import DEFAULT_PATH as LANDMARK_MAP_PATH
from realtime.ict.landmark_map import LandmarkMap
from realtime.ict.model import IctModel
from realtime.io.images import read_image
from realtime.rendering.photo_texture import bake_photo, face_region_mask, fill_atlas, iris_color
from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode

log = logging.getLogger(__name__)

CACHE_VERSION = 1
STALE_TEMPORARY_S = 600


@dataclass(frozen=True, eq=False)
class Identity:
    """A prepared identity: the neutral head, its texture and what the fit measured."""

    name: str
    vertices: np.ndarray  # (N, 3) the identity's neutral head (the photo's own expression removed)
    albedo: np.ndarray  # (H, W, 3) uint8 texture atlas (UV tiles 0 and 1 side by side)
    iris_color: np.ndarray  # (3,) RGB in [0, 1]
    fit_error: float  # mean landmark reprojection error / inter-ocular distance


def cache_key(photo_path: Path, model_path: Path) -> str:
    digest = hashlib.sha256()
    for part in (sha256_file(photo_path), sha256_file(model_path), sha256_file(LANDMARK_MAP_PATH), str(CACHE_VERSION)):
        digest.update(part.encode())
    return digest.hexdigest()[:32]


def prepare_identity(
    photo_path: Path,
    model: IctModel,
    model_path: Path,
    ctx: moderngl.Context,
    cache_dir: Path | None,
    landmark_map: LandmarkMap | None = None,
) -> Identity:
    """The identity in ``photo_path``, from the cache when it was prepared before (``cache_dir=None``: no cache)."""
    photo_path = Path(photo_path)
    if not photo_path.is_file():
        raise UserError(f"identity photo {photo_path} not found: check the path")
    entry = cache_dir / cache_key(photo_path, model_path) if cache_dir is not None else None
    if entry is not None and (entry / "identity.npz").is_file():
        try:
            return load_identity(entry, photo_path.name)
        except (OSError, ValueError, KeyError) as err:
            log.warning("replacing a damaged identity cache entry %s (%s)", entry, err)
            shutil.rmtree(entry, ignore_errors=True)  # else the new entry could not be renamed into its place
    identity = build_identity(photo_path, model, ctx, landmark_map or LandmarkMap.load())
    if entry is not None:
        save_identity(identity, entry)
    return identity


def build_identity(photo_path: Path, model: IctModel, ctx: moderngl.Context, landmark_map: LandmarkMap) -> Identity:
    photo = read_image(photo_path, "identity photo")
    options = FaceTrackerOptions(running_mode=RunningMode.IMAGE, max_faces=8)
    with FaceTracker.create_from_options(options) as tracker:
        face = tracker.track(photo)
    if face is None:
        raise UserError(f"no face found in {photo_path}: use a photo with one clearly visible, roughly frontal face")
    if face.faces_found > 1:
        log.warning("%s shows %d faces: using the largest", photo_path, face.faces_found)

    estimate = blendshape_matrix(model.expression_names) @ face.blendshapes
    fit = fit_identity(model, landmark_map, face.landmarks, estimate, FitOptions())
    log.info("fitted %s: landmark error %.3f of the inter-ocular distance", photo_path.name, fit.error)

    neutral = model.identity_shape(fit.identity)
    # the head as the photo shows it, so texels land where they belong; only the skin is baked
    posed = neutral + np.tensordot(fit.expression, model.expression_basis, axes=1)
    textured = model.triangles[model.part_mask("face", "head_neck")]
    normals = VertexNormals(model.render_vertex[textured], model.n_vertices)(posed)
    feather = 0.04 * inter_ocular_distance(face.landmarks)
    atlas = bake_photo(
        ctx,
        posed[model.render_vertex],
        normals[model.render_vertex],
        textured,
        atlas_uv(model),
        photo,
        face_region_mask(face.landmarks, photo.shape, feather),
        fit.photo_projection(),
    )
    return Identity(
        name=photo_path.name,
        vertices=neutral,
        albedo=fill_atlas(atlas),
        iris_color=iris_color(photo, face.landmarks),
        fit_error=fit.error,
    )


def save_identity(identity: Identity, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    for stale in entry.parent.glob(f".{entry.name}.*"):  # left by a crash: nothing writes one for this long
        if time.time() - stale.stat().st_mtime > STALE_TEMPORARY_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.savez(tmp / "identity.npz", vertices=identity.vertices, iris_color=identity.iris_color)
        # encoded in memory: cv2.imwrite cannot open a non-ASCII path on Windows (a user folder like C:\Users\José)
        encoded, png = cv2.imencode(".png", identity.albedo[:, :, ::-1])
        if not encoded:
            raise OSError("could not encode albedo.png")
        (tmp / "albedo.png").write_bytes(png.tobytes())
        (tmp / "meta.json").write_text(json.dumps({"name": identity.name, "fit_error": identity.fit_error}))
        os.replace(tmp, entry)
    except OSError as err:
        log.warning("could not cache the identity in %s (%s)", entry, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_identity(entry: Path, name: str) -> Identity:
    with np.load(entry / "identity.npz", allow_pickle=False) as data:
        vertices, iris = data["vertices"], data["iris_color"]
    png = np.fromfile(entry / "albedo.png", np.uint8)
    albedo = cv2.imdecode(png, cv2.IMREAD_COLOR) if png.size else None
    if albedo is None:
        raise ValueError("albedo.png unreadable")
    meta = json.loads((entry / "meta.json").read_text())
    log.info("using the prepared identity from %s", entry)
    return Identity(name, vertices, albedo[:, :, ::-1].copy(), iris, float(meta["fit_error"]))

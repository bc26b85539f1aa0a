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
from realtime.compositing.segmentation import person_mask
from realtime.errors import UserError
from realtime.geometry.fitting import inter_ocular_distance, weak_perspective_projection
from realtime.geometry.normals import VertexNormals
from realtime.ict.avatar import atlas_uv, blendshape_matrix
from realtime.ict.identity_fit import FitOptions, fit_identity
from realtime.ict.landmark_map import DEFAULT_PATH as LANDMARK_MAP_PATH
from realtime.ict.landmark_map import LandmarkMap
from realtime.ict.model import IctModel
from realtime.io.images import read_image
from realtime.rendering.photo_texture import bake_photo, face_region_mask, fill_atlas, iris_color
from realtime.tracking.faces import find_identity_face

log = logging.getLogger(__name__)

# 2: the photo look (the fit's camera and expression, landmarks, person mask); 3: landmarks from the crop where the
# whole-photo pass misplaced them
CACHE_VERSION = 3
STALE_TEMPORARY_S = 600


@dataclass(frozen=True, eq=False)
class PhotoView:
    """The identity's photo as the fit explains it: the photo look re-renders the head from here."""

    expression: np.ndarray  # (53,) the photo's own expression weights
    rotation: np.ndarray  # (3, 3) model -> camera
    scale: float  # photo pixels per centimetre
    translation: np.ndarray  # (2,) photo pixels
    landmarks: np.ndarray  # (478, 3) the face's landmarks in photo pixels
    person: np.ndarray  # (H, W) float32 in [0, 1]: the person (hair and clothes included) against the background

    def projection(self) -> np.ndarray:
        """(4, 4) model -> photo pixels and depth."""
        return weak_perspective_projection(self.rotation, self.scale, self.translation)


@dataclass(frozen=True, eq=False)
class Identity:
    """A prepared identity: the neutral head, its texture and what the fit measured."""

    name: str
    vertices: np.ndarray  # (N, 3) the identity's neutral head (the photo's own expression removed)
    albedo: np.ndarray  # (H, W, 3) uint8 texture atlas (UV tiles 0 and 1 side by side)
    iris_color: np.ndarray  # (3,) RGB in [0, 1]
    fit_error: float  # mean landmark reprojection error / inter-ocular distance
    photo_view: PhotoView  # how the photo shows the head: what the photo look starts from


def cache_key(photo_path: Path, model_path: Path, face: int | None = None) -> str:
    digest = hashlib.sha256()
    for part in (sha256_file(photo_path), sha256_file(model_path), sha256_file(LANDMARK_MAP_PATH), str(CACHE_VERSION),
                 f"face {face or 'largest'}"):  # --face N: another face of the photo is another identity
        digest.update(part.encode())
    return digest.hexdigest()[:32]


def prepare_identity(
    photo_path: Path,
    model: IctModel,
    model_path: Path,
    ctx: moderngl.Context,
    cache_dir: Path | None,
    landmark_map: LandmarkMap | None = None,
    face: int | None = None,
) -> Identity:
    """The identity in ``photo_path``, from the cache when it was prepared before (``cache_dir=None``: no cache).

    ``face``: which face of the photo (1 is the leftmost, see `realtime.tracking.faces`); None: the largest."""
    photo_path = Path(photo_path)
    if not photo_path.is_file():
        raise UserError(f"identity photo {photo_path} not found: check the path")
    entry = cache_dir / cache_key(photo_path, model_path, face) if cache_dir is not None else None
    if entry is not None and (entry / "identity.npz").is_file():
        try:
            return load_identity(entry, photo_path.name)
        except (OSError, ValueError, KeyError) as err:
            log.warning("replacing a damaged identity cache entry %s (%s)", entry, err)
            shutil.rmtree(entry, ignore_errors=True)  # else the new entry could not be renamed into its place
    identity = build_identity(photo_path, model, ctx, landmark_map or LandmarkMap.load(), face)
    if entry is not None:
        save_identity(identity, entry)
    return identity


def build_identity(photo_path: Path, model: IctModel, ctx: moderngl.Context, landmark_map: LandmarkMap,
                   choice: int | None = None) -> Identity:
    photo = read_image(photo_path, "identity photo")
    face = find_identity_face(photo, photo_path, choice)

    estimate = blendshape_matrix(model.expression_names) @ face.blendshapes
    fit = fit_identity(model, landmark_map, face.landmarks, estimate, FitOptions())
    person = person_mask(photo)
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
        photo_view=PhotoView(fit.expression, fit.rotation, fit.scale, fit.translation, face.landmarks, person),
    )


def save_identity(identity: Identity, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    for stale in entry.parent.glob(f".{entry.name}.*"):  # left by a crash: nothing writes one for this long
        if time.time() - stale.stat().st_mtime > STALE_TEMPORARY_S:
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        view = identity.photo_view
        np.savez(tmp / "identity.npz", vertices=identity.vertices, iris_color=identity.iris_color,
                 photo_expression=view.expression, photo_rotation=view.rotation, photo_scale=view.scale,
                 photo_translation=view.translation, photo_landmarks=view.landmarks)
        write_png(tmp / "person.png", np.round(view.person * 255).astype(np.uint8))
        write_png(tmp / "albedo.png", identity.albedo[:, :, ::-1])
        (tmp / "meta.json").write_text(json.dumps({"name": identity.name, "fit_error": identity.fit_error}))
        os.replace(tmp, entry)
    except OSError as err:
        log.warning("could not cache the identity in %s (%s)", entry, err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_png(path: Path, image: np.ndarray) -> None:
    """Encoded in memory: cv2.imwrite cannot open a non-ASCII path on Windows (a user folder like C:/Users/José)."""
    encoded, png = cv2.imencode(".png", image)
    if not encoded:
        raise OSError(f"could not encode {path.name}")
    path.write_bytes(png.tobytes())


def read_png(path: Path, flags: int) -> np.ndarray:
    png = np.fromfile(path, np.uint8) if path.is_file() else np.zeros(0, np.uint8)
    image = cv2.imdecode(png, flags) if png.size else None
    if image is None:
        raise ValueError(f"{path.name} unreadable")
    return image


def load_identity(entry: Path, name: str) -> Identity:
    with np.load(entry / "identity.npz", allow_pickle=False) as data:
        vertices, iris = data["vertices"], data["iris_color"]
        view = [data["photo_expression"], data["photo_rotation"], float(data["photo_scale"]),
                data["photo_translation"], data["photo_landmarks"]]
    person = read_png(entry / "person.png", cv2.IMREAD_GRAYSCALE)
    albedo = read_png(entry / "albedo.png", cv2.IMREAD_COLOR)
    meta = json.loads((entry / "meta.json").read_text())
    log.info("using the prepared identity from %s", entry)
    photo_view = PhotoView(*view, person.astype(np.float32) / 255.0)
    return Identity(name, vertices, albedo[:, :, ::-1].copy(), iris, float(meta["fit_error"]), photo_view)

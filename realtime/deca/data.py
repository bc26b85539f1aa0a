"""The user's DECA `data/` folder: which files it must hold, and reading the plain ones (masks, textures, maps).

The licensed files (FLAME, DECA's networks and data) are never shipped: the user points `--deca-data` at their own
DECA checkout's `data/` folder. UV images there have row 0 at the top (v = 1). The maps that feed DECA's own maths
(masks, fixed displacement) are returned in those rows, as `realtime.deca.detail_normals` expects; textures that are
sampled with the mesh's UVs (mean texture, BFM albedo) are flipped to GL rows (row 0 = v = 0).
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from realtime.errors import UserError

REQUIRED = {
    "deca_model.tar": "DECA's trained networks (fetch_data.sh of the DECA repository)",
    "generic_model.pkl": "the FLAME 2020 model (flame.is.tue.mpg.de)",
    "head_template.obj": "FLAME's UV layout (DECA's data folder)",
    "fixed_displacement_256.npy": "DECA's fixed displacement map",
    "uv_face_eye_mask.png": "DECA's face and eye UV mask",
    "mean_texture.jpg": "DECA's mean face texture",
}
OPTIONAL = ("FLAME_albedo_from_BFM.npz", "landmark_embedding.npy", "mediapipe_landmark_embedding.npz")
NETWORKS = "deca_model.tar"
EMBEDDINGS = ("mediapipe_landmark_embedding.npz", "landmark_embedding.npy")  # FLAME's own first, then DECA's
UV_SIZE = 256


@dataclass(frozen=True)
class DecaData:
    folder: Path

    @classmethod
    def open(cls, folder: Path) -> "DecaData":
        """Check that ``folder`` holds the DECA files; one error listing every missing file and where it comes from.

        Without ``deca_model.tar`` the FLAME head is driven by the tracker's landmarks instead of DECA's encoder:
        then a landmark embedding (FLAME's MediaPipe one, or DECA's) is required instead.
        """
        folder = Path(folder)
        if not folder.is_dir():
            raise UserError(f"DECA data folder {folder} not found: point --deca-data at your DECA checkout's data/")
        required = dict(REQUIRED)
        if not (folder / NETWORKS).is_file() and any((folder / name).is_file() for name in EMBEDDINGS):
            del required[NETWORKS]  # FLAME only, driven through the landmark embedding
        missing = [f"{name} ({source})" for name, source in required.items() if not (folder / name).is_file()]
        if missing:
            raise UserError(f"{folder} lacks " + "; ".join(missing) + ": copy them from your DECA and FLAME downloads")
        return cls(folder)

    @property
    def has_networks(self) -> bool:
        return self.has(NETWORKS)

    def embedding(self) -> Path | None:
        """The landmark embedding to drive FLAME by the tracker's landmarks, or None."""
        return next((self.path(name) for name in EMBEDDINGS if self.has(name)), None)
    def path(self, name: str) -> Path:
        return self.folder / name

    def has(self, name: str) -> bool:
        return (self.folder / name).is_file()

    def uv_mask(self, name: str = "uv_face_eye_mask.png") -> np.ndarray:
        """(256, 256) float32 in [0, 1] from the mask's first channel, bilinearly resized as DECA does; DECA rows."""
        image = cv2.imread(str(self.path(name)), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise UserError(f"{self.path(name)} could not be read as an image: copy it again from DECA's data/")
        channel = image if image.ndim == 2 else image[..., 2 if image.shape[2] >= 3 else 0]  # OpenCV is BGR(A)
        return cv2.resize(channel.astype(np.float32) / 255.0, (UV_SIZE, UV_SIZE), interpolation=cv2.INTER_LINEAR)

    def fixed_displacement(self) -> np.ndarray:
        """(256, 256) float32, DECA's fixed displacement (metres); DECA rows."""
        path = self.path("fixed_displacement_256.npy")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not a numpy array file ({err}): copy it again from DECA's data/") from err
        if array.shape != (UV_SIZE, UV_SIZE):
            raise UserError(f"{path} holds a {array.shape} array, expected (256, 256): copy it again from DECA's data/")
        return array.astype(np.float32)

    def mean_texture(self) -> np.ndarray:
        """RGB uint8 mean texture in the head template's UV layout."""
        image = cv2.imread(str(self.path("mean_texture.jpg")), cv2.IMREAD_COLOR)
        if image is None:
            raise UserError(f"{self.path('mean_texture.jpg')} could not be read as an image: copy it again")
        return np.ascontiguousarray(image[::-1, :, ::-1])

    def bfm_albedo(self, tex: np.ndarray) -> np.ndarray | None:
        """RGB uint8 albedo from FLAME_albedo_from_BFM.npz and DECA's 50 albedo coefficients, or None if absent.

        As DECA's FLAMETex: mean + the first 50 components, 512 x 512 x 3, stored BGR.
        """
        if not self.has("FLAME_albedo_from_BFM.npz"):
            return None
        path = self.path("FLAME_albedo_from_BFM.npz")
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, basis = data["MU"].reshape(1, -1), data["PC"].reshape(-1, data["PC"].shape[-1])
        except (OSError, ValueError, KeyError) as err:
            raise UserError(f"{path} is not the BFM albedo model ({err}): remove it or download it again") from err
        coefficients = np.zeros(basis.shape[1], np.float32)
        coefficients[: min(50, len(tex))] = np.asarray(tex, np.float32)[:50]
        texture = (mean + basis @ coefficients).reshape(512, 512, 3)
        return np.ascontiguousarray(np.clip(texture[::-1, :, ::-1] * 255, 0, 255).astype(np.uint8))

"""`--list-faces PHOTO`: the faces of a photo, numbered as `--face N` counts them, drawn into a copy of the photo."""

import os
import tempfile
from pathlib import Path

import cv2

from realtime.errors import UserError
from realtime.io.clips import next_free_path
from realtime.io.images import read_image
from realtime.tracking.faces import MIN_EYE_DISTANCE, describe_face, draw_faces, find_faces

JPEG_QUALITY = 90


def list_faces(photo_path: Path, folder: Path | None = None) -> str:
    """Find the faces in ``photo_path``, write the photo with their numbered boxes into ``folder`` (default: the
    current folder) as ``<name>-faces.jpg`` (``-1``, ``-2``, ... when taken), and return what to print.

    A photo with no face is a UserError, and nothing is written.
    """
    photo_path = Path(photo_path)
    photo = read_image(photo_path, "photo")
    faces = find_faces(photo)
    if not faces:
        raise UserError(f"no face found in {photo_path}: nothing to number (faces need at least "
                        f"{MIN_EYE_DISTANCE:.0f} pixels between the eyes)")
    usable = [face for face in faces if face.eye_distance >= MIN_EYE_DISTANCE]
    default = max(usable, key=lambda face: face.eye_distance) if usable else None
    folder = Path.cwd() if folder is None else Path(folder)
    if not folder.is_dir():
        raise UserError(f"folder {folder} does not exist: run from a folder you can write to")
    out = next_free_path(folder / f"{photo_path.stem}-faces.jpg")
    _write_jpeg(out, draw_faces(photo, faces, default))

    count = f"1 face in {photo_path}" if len(faces) == 1 else f"{len(faces)} faces in {photo_path}"
    lines = [f"{count}, numbered from left to right as --face N counts them:"]
    for number, face in enumerate(faces, 1):
        note = ""
        if face is default:
            note = " (the largest: used without --face)"
        elif face.eye_distance < MIN_EYE_DISTANCE:
            note = f" (too small: at least {MIN_EYE_DISTANCE:.0f} pixels between the eyes)"
        lines.append(f"  {number}: {describe_face(face)}{note}")
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def _write_jpeg(path: Path, rgb) -> None:
    """Write atomically: a temporary file beside ``path``, renamed into place once complete."""
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise UserError(f"could not encode the picture for {path}")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data.tobytes())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise UserError(f"could not write {path} ({err.strerror}): run from a folder you can write to") from None

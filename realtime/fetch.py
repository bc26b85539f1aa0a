"""Fetching the embedded default's assets: download (or copy from a mirror), verify, extract, convert.

Everything that comes from outside is verified against hashes pinned in `realtime.assets` or in ``realtime/data/``
before it is put in place, and it is put in place atomically: a download or an extraction goes into a temporary file
or folder inside the destination and is renamed over the final name only once it is verified. A failure of any kind
leaves nothing half-written behind and raises a :class:`UserError` that says what went wrong and what to do.
``realtime-retarget --fetch-assets`` (and ``tools/fetch_assets.py``, a thin wrapper) run :func:`main`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import logging
import lzma
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from realtime.assets import (
    _CHUNK,
    FACE_DETECTOR,
    FACE_LANDMARKER,
    FETCH_COMMAND,
    FETCH_HINT,
    ICT_FACEKIT,
    ICT_FACEKIT_COMMIT,
    ICT_FACEKIT_DIR,
    ICT_FACEKIT_FILES,
    ICT_FACEKIT_MANIFEST,
    ICT_FACEKIT_TOP_FOLDER,
    ICT_MODEL_NAME,
    ICT_STAMP,
    SELFIE_SEGMENTER,
    AssetSpec,
    sha256_file,
)
from realtime.errors import UserError
from realtime.ict.model import convert_facekit
from realtime.io.clips import interrupt_on_sigterm
from realtime.paths import assets_dir

logger = logging.getLogger(__name__)


MIRROR_ENV = "RETARGET_ASSET_MIRROR"


DOWNLOAD_TIMEOUT_S = 60.0


def fetch_all(dest: Path | None = None, mirror: str | Path | None = None, force: bool = False) -> None:
    """Fetch and verify every asset of the embedded default into ``dest``, then build the runtime ICT model.

    ``mirror`` is a directory or an http(s) base URL laid out like ``../shared/assets``; None means
    ``$RETARGET_ASSET_MIRROR`` if set, else the official upstream URLs. Already present, valid assets are skipped
    unless ``force``. SIGTERM, like Ctrl-C, raises ``KeyboardInterrupt``, so that no temporary file is left behind.
    """
    dest = dest or assets_dir()
    with interrupt_on_sigterm():
        fetch_face_landmarker(dest, mirror, force)
        fetch_pinned_file(SELFIE_SEGMENTER, dest, mirror, force)
        fresh_source = fetch_ict_facekit(dest, mirror, force)
        convert_ict_model(dest, force=force or fresh_source)
        fetch_pinned_file(FACE_DETECTOR, dest, mirror, force)


def fetch_face_landmarker(
    dest: Path, mirror: str | Path | None = None, force: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Download ``face_landmarker.task`` into ``dest`` (checked by size and sha256) and return its path."""
    return fetch_pinned_file(FACE_LANDMARKER, dest, mirror, force, timeout)


def fetch_pinned_file(
    spec: AssetSpec, dest: Path, mirror: str | Path | None = None, force: bool = False,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Download the one file of ``spec`` into ``dest`` (checked by size and sha256) and return its path."""
    final = dest / spec.name
    if not force and final.is_file():
        if final.stat().st_size == spec.size and sha256_file(final) == spec.sha256:
            logger.info("%s: already present and verified", spec.name)
            return final
        logger.warning("%s: present but not the pinned file, fetching it again", spec.name)

    dest.mkdir(parents=True, exist_ok=True)
    source, advice = _source(spec, mirror)
    with _download(source, dest, spec.name, advice, timeout) as part:
        if part.stat().st_size != spec.size:
            raise UserError(
                f"{spec.name} from {source} has {part.stat().st_size} bytes, expected {spec.size} "
                f"(truncated or wrong file); {advice}"
            )
        actual = sha256_file(part)
        if actual != spec.sha256:
            raise UserError(
                f"{spec.name} from {source} failed its checksum (sha256 {actual}, expected {spec.sha256}): "
                f"the download is corrupt or the mirror holds a different file; {advice}"
            )
        os.replace(part, final)
    logger.info("%s: verified and saved to %s", spec.name, final)
    return final


def fetch_ict_facekit(
    dest: Path, mirror: str | Path | None = None, force: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S
) -> bool:
    """Download the pinned ICT-FaceKit archive and extract the verified files the app needs into ``dest/ict_facekit``.

    Returns True if the files were (re)extracted, False if a verified copy was already there.
    """
    final = dest / ICT_FACEKIT_DIR
    if not force and _ict_facekit_complete(final):
        logger.info("%s: already present and verified (commit %s)", ICT_FACEKIT_DIR, ICT_FACEKIT_COMMIT[:7])
        return False

    expected = ict_facekit_expected_files()
    dest.mkdir(parents=True, exist_ok=True)
    source, advice = _source(ICT_FACEKIT, mirror)
    with _download(source, dest, ICT_FACEKIT.name + ".tar", advice, timeout) as archive:
        staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{ICT_FACEKIT_DIR}.", suffix=".part"))
        try:
            extract_verified_tar(archive, staging, expected, strip_prefix=ICT_FACEKIT_TOP_FOLDER, source=source)
            (staging / ICT_STAMP).write_text(ICT_FACEKIT_COMMIT + "\n")
            os.chmod(staging, 0o755)
            _replace_dir(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    logger.info("%s: %d files verified and saved to %s", ICT_FACEKIT_DIR, len(expected), final)
    return True


def convert_ict_model(dest: Path, force: bool = False) -> Path:
    """Build ``dest/ict_face_model.npz`` from the extracted ICT-FaceKit files (skipped if present unless ``force``)."""
    final = dest / ICT_MODEL_NAME
    if not force and final.is_file():
        logger.info("%s: already present", ICT_MODEL_NAME)
        return final
    src = dest / ICT_FACEKIT_DIR
    if not _ict_facekit_complete(src):
        raise UserError(f"ICT-FaceKit files missing or unverified in {src}; {FETCH_HINT}")


    # The temporary name must end in .npz: numpy's savez appends the suffix to any path that lacks it.
    fd, tmp_name = tempfile.mkstemp(dir=dest, prefix=".ict_face_model.", suffix=".part.npz")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        logger.info("%s: converting ICT-FaceKit (takes a few seconds)", ICT_MODEL_NAME)
        try:
            convert_facekit(src, tmp)
        except UserError:
            raise
        except Exception as err:
            logger.debug("conversion failed", exc_info=True)
            raise UserError(
                f"converting ICT-FaceKit into {final} failed ({type(err).__name__}: {err}); "
                f"re-fetch with `{FETCH_COMMAND} --force`"
            ) from err
        os.chmod(tmp, 0o644)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    logger.info("%s: saved to %s", ICT_MODEL_NAME, final)
    return final


def ict_facekit_expected_files(manifest: Path = ICT_FACEKIT_MANIFEST) -> dict[str, str]:
    """The files the app needs from ICT-FaceKit, mapped to their pinned sha256 (from the committed manifest)."""
    expected = {}
    for line in manifest.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split(maxsplit=1)
        name = name.lstrip("*")  # sha256sum's binary-mode marker
        parts = PurePosixPath(name).parts
        if any(fnmatchcase(name, p) and len(parts) == len(PurePosixPath(p).parts) for p in ICT_FACEKIT_FILES):
            expected[name] = digest.lower()
    return expected


def extract_verified_tar(
    archive: Path, out_dir: Path, expected: Mapping[str, str], strip_prefix: str = "", source: str = ""
) -> None:
    """Extract exactly the ``expected`` files (relative path -> sha256) of a tar archive into ``out_dir``.

    Every member is checked, wanted or not: the archive is refused if any member has an absolute path, a ``..``
    component, or is anything but a regular file or a directory (symlinks, hard links, devices, fifos). Members under
    ``strip_prefix`` are taken relative to it. Raises UserError on a bad member, a hash mismatch, a missing file or a
    corrupt archive; ``out_dir`` may then hold some files, the caller removes it.
    """
    source = source or str(archive)
    found: set[str] = set()
    try:
        # Stream mode: one sequential pass, so an .xz archive is decompressed once.
        with (
            tarfile.open(archive, mode="r|*") as tar,
            tqdm(total=len(expected), unit="file", desc="extract", disable=None) as progress,
        ):
            for member in tar:
                name = _checked_member_name(member, source)
                if name.startswith(strip_prefix):
                    name = name[len(strip_prefix) :]
                if name not in expected or not member.isfile():
                    continue
                if name in found:
                    raise UserError(f"archive from {source} holds {name} twice; refusing it as tampered")
                target = out_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                actual = _copy_hashing(tar.extractfile(member), target)
                if actual != expected[name]:
                    raise UserError(
                        f"{name} in the archive from {source} failed its checksum (sha256 {actual}, expected "
                        f"{expected[name]}): the archive is corrupt or not the pinned version"
                    )
                found.add(name)
                progress.update()
    except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as err:
        raise UserError(
            f"the archive from {source} is corrupt or truncated ({type(err).__name__}: {err}); fetch it again"
        ) from err
    except OSError as err:
        raise UserError(f"could not extract the archive from {source} into {out_dir}: {err}") from err
    missing = sorted(set(expected) - found)
    if missing:
        raise UserError(
            f"the archive from {source} lacks {len(missing)} of the {len(expected)} pinned files "
            f"(first: {missing[0]}): it is not the pinned version"
        )


def _source(spec: AssetSpec, mirror: str | Path | None) -> tuple[str, str]:
    """Where to fetch ``spec`` from (URL or local path), and the advice to give if that fails."""
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    if mirror is None:
        return spec.url, f"check your internet connection, or use a mirror with --mirror or ${MIRROR_ENV}"
    mirror = str(mirror)
    advice = f"check that the mirror {mirror} holds {spec.mirror_path}"
    if _is_url(mirror):
        return mirror.rstrip("/") + "/" + urllib.parse.quote(spec.mirror_path), advice
    return str(Path(mirror) / spec.mirror_path), advice


def _is_url(location: str) -> bool:
    return urllib.parse.urlsplit(location).scheme in ("http", "https", "file")


@contextlib.contextmanager


def _download(source: str, dest: Path, name: str, advice: str, timeout: float) -> Iterator[Path]:
    """Stream ``source`` into a temporary file in ``dest`` and yield its path; the file is deleted on exit.

    The caller verifies it and moves it into place with ``os.replace`` (after which the deletion is a no-op).
    """
    fd, part_name = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
    part = Path(part_name)
    try:
        logger.info("%s: fetching %s", name, source)
        try:
            with os.fdopen(fd, "wb") as out, _open_source(source, timeout) as (stream, total):
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=None) as bar:
                    while chunk := stream.read(_CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            os.chmod(part, 0o644)  # mkstemp makes it private; the asset is an ordinary readable file
            if total is not None and received != total:
                raise UserError(f"download of {name} from {source} stopped after {received} of {total} bytes; {advice}")
        except urllib.error.HTTPError as err:
            err.close()
            raise UserError(f"could not fetch {name} from {source}: HTTP {err.code} {err.reason}; {advice}") from err
        except urllib.error.URLError as err:
            raise UserError(
                f"could not fetch {name} from {source}: {_describe(err.reason, timeout)}; {advice}"
            ) from err
        except FileNotFoundError as err:
            raise UserError(f"could not fetch {name}: {source} does not exist; {advice}") from err
        except (OSError, http.client.HTTPException) as err:
            raise UserError(f"could not fetch {name} from {source}: {_describe(err, timeout)}; {advice}") from err
        yield part
    finally:
        part.unlink(missing_ok=True)


@contextlib.contextmanager


def _open_source(source: str, timeout: float) -> Iterator[tuple[BinaryIO, int | None]]:
    """Open a URL or a local file for reading; yields the stream and its length if known."""
    if not _is_url(source):
        with open(source, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
        return
    request = urllib.request.Request(source, headers={"User-Agent": "realtime-retarget-fetch-assets"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        yield response, int(length) if length and length.isdigit() else None


def _describe(err: object, timeout: float) -> str:
    if isinstance(err, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(err, http.client.IncompleteRead):
        return "the connection closed mid-download"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _copy_hashing(src: BinaryIO | None, target: Path) -> str:
    if src is None:
        raise UserError(f"cannot read {target.name} from the archive")
    digest = hashlib.sha256()
    with src, open(target, "wb") as out:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def _checked_member_name(member: tarfile.TarInfo, source: str) -> str:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or ".." in path.parts or ".." in name.split("\\"):
        raise UserError(f"archive from {source} has an unsafe member path {name!r}; refusing it as tampered")
    if not (member.isfile() or member.isdir()):
        raise UserError(f"archive from {source} has a link or special file {name!r}; refusing it as tampered")
    return name


def _ict_facekit_complete(folder: Path) -> bool:
    stamp = folder / ICT_STAMP
    if not stamp.is_file() or stamp.read_text().strip() != ICT_FACEKIT_COMMIT:
        return False
    return all((folder / name).is_file() for name in ict_facekit_expected_files())


def _replace_dir(new: Path, final: Path) -> None:
    """Move the verified folder ``new`` to ``final``, replacing any older copy.

    Two renames, not one: a folder cannot be renamed over a non-empty one. In between, ``final`` is briefly absent,
    never half-written; the stamp file inside marks a complete copy either way.
    """
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".old"))
        os.replace(final, old / final.name)
    try:
        os.replace(new, final)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# --- the command: `realtime-retarget --fetch-assets` and tools/fetch_assets.py ---------------------------------------


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Fetch, verify and convert the assets; 0 when everything is in place, 2 with a one-line message on stderr when
    something could not be fetched or verified (nothing partial is left behind), 130 when interrupted."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Fetch, verify and convert the assets of the embedded default (MediaPipe Face Landmarker, "
        "ICT-FaceKit head).",
    )
    parser.add_argument(
        "--mirror",
        metavar="DIR|URL",
        help=f"local directory or http(s) base URL with the mirror's layout (default: ${MIRROR_ENV}, else upstream)",
    )
    parser.add_argument("--dest", type=Path, default=None, help=f"where to put the assets (default: {assets_dir()})")
    parser.add_argument("--force", action="store_true", help="fetch again even what is already present and valid")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    args = parser.parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)

    dest = args.dest or assets_dir()
    try:
        fetch_all(dest, args.mirror, args.force)
    except UserError as err:
        logger.error("error: %s", " ".join(str(err).split()))
        return UserError.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted: nothing half-written was left in %s; run the command again to finish", dest)
        return 130
    logger.info("assets ready in %s", dest)
    return 0


def _configure_logging(level: int) -> None:
    """Progress on stdout, warnings and the final error on stderr, so a failure is a single line there."""
    to_stdout = logging.StreamHandler(sys.stdout)
    to_stdout.addFilter(lambda record: record.levelno < logging.WARNING)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", handlers=[to_stdout, to_stderr])

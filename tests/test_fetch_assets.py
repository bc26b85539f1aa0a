"""tools/fetch_assets.py and realtime/assets.py against real files served by a real local HTTP server."""

import contextlib
import functools
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from realtime.assets import (
    FACE_DETECTOR,
    FACE_LANDMARKER,
    ICT_FACEKIT,
    ICT_FACEKIT_COMMIT,
    ICT_FACEKIT_DIR,
    ICT_MODEL_NAME,
    ICT_STAMP,
    SELFIE_SEGMENTER,
    face_landmarker_path,
    ict_model_path,
    sha256_file,
)
from realtime.errors import UserError
from realtime.fetch import (
    convert_ict_model,
    extract_verified_tar,
    fetch_all,
    fetch_face_landmarker,
    fetch_ict_facekit,
    fetch_pinned_file,
    ict_facekit_expected_files,
)
from tests.conftest import HANG_S

PROJECT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = PROJECT.parent / "shared" / "assets"
TOOL = PROJECT / "tools" / "fetch_assets.py"


def _require_shared_assets() -> Path:
    if not (SHARED_ASSETS / FACE_LANDMARKER.mirror_path).is_file():
        pytest.skip(f"the local asset mirror {SHARED_ASSETS} is absent (it sits beside the project checkout)")
    return SHARED_ASSETS


class _Handler(SimpleHTTPRequestHandler):
    """Serves a directory; paths listed in ``server.misbehave`` get a broken answer instead."""

    def log_message(self, format: str, *args: object) -> None:  # keep the test output quiet
        pass

    def do_GET(self) -> None:
        how = self.server.misbehave.get(self.path)  # type: ignore[attr-defined]
        if how is None:
            return super().do_GET()
        if how == "stall":  # accept the request, never answer (until the test is over)
            self.server.over.wait(HANG_S)  # type: ignore[attr-defined]
            return None
        # "drop" / "slow": promise the whole file, send half of it, then hang up / hang on
        data = Path(self.translate_path(self.path)).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        if how == "slow":
            self.server.over.wait(HANG_S)  # type: ignore[attr-defined]
        self.close_connection = True
        return None


@contextlib.contextmanager
def _serve(root: Path, misbehave: dict[str, str] | None = None) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(root)))
    server.daemon_threads = True
    server.misbehave = misbehave or {}  # type: ignore[attr-defined]
    server.over = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.over.set()  # type: ignore[attr-defined]
        server.shutdown()
        server.server_close()
        thread.join()


def _mirror_with_task(root: Path, data: bytes | None = None) -> Path:
    """A mirror folder holding face_landmarker.task (the real one, or ``data``)."""
    target = root / FACE_LANDMARKER.mirror_path
    target.parent.mkdir(parents=True)
    if data is None:
        shutil.copyfile(_require_shared_assets() / FACE_LANDMARKER.mirror_path, target)
    else:
        target.write_bytes(data)
    return root


def _mirror_with_tar(root: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A mirror folder whose ICT-FaceKit archive is a tiny hand-made tar.xz."""
    target = root / ICT_FACEKIT.mirror_path
    target.parent.mkdir(parents=True)
    with tarfile.open(target, "w:xz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return root


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir()) if dest.exists() else []


# --- the real mirror, fetched once per session ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fetched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mirror served over HTTP, fetched and extracted once (~5 s)."""
    mirror = _require_shared_assets()
    dest = tmp_path_factory.mktemp("fetched") / "assets"
    with _serve(mirror) as url:
        fetch_face_landmarker(dest, url)
        fetch_pinned_file(SELFIE_SEGMENTER, dest, url)
        assert fetch_ict_facekit(dest, url) is True
        fetch_pinned_file(FACE_DETECTOR, dest, url)
    return dest


@pytest.fixture(scope="module")
def converted(fetched: Path) -> Path:
    pytest.importorskip("realtime.ict.model", reason="realtime/ict/model.py (the converter) is not written yet")
    convert_ict_model(fetched)
    return fetched


def test_http_mirror_fetch_verifies_every_file(fetched: Path) -> None:
    task = face_landmarker_path(fetched)
    assert task.stat().st_size == FACE_LANDMARKER.size
    assert sha256_file(task) == FACE_LANDMARKER.sha256
    detector = fetched / FACE_DETECTOR.name
    assert detector.stat().st_size == FACE_DETECTOR.size and sha256_file(detector) == FACE_DETECTOR.sha256

    ict = fetched / ICT_FACEKIT_DIR
    expected = ict_facekit_expected_files()
    assert "LICENSE" in expected and "FaceXModel/vertex_indices.json" in expected
    assert "FaceXModel/generic_neutral_mesh.obj" in expected and "README.md" not in expected
    assert {str(p.relative_to(ict)) for p in ict.rglob("*") if p.is_file()} == set(expected) | {ICT_STAMP}
    for name, digest in expected.items():
        assert sha256_file(ict / name) == digest, name
    assert (ict / ICT_STAMP).read_text().strip() == ICT_FACEKIT_COMMIT
    assert not [name for name in _leftovers(fetched) if name.startswith(".")], "temporary files left behind"


def test_conversion_and_a_second_run_needs_no_network(converted: Path) -> None:
    model = ict_model_path(converted)
    assert model.stat().st_size > 0
    before = {p: p.stat().st_mtime_ns for p in (model, converted / FACE_LANDMARKER.name, converted / ICT_FACEKIT_DIR)}
    fetch_all(converted, mirror=f"http://127.0.0.1:{_free_port()}/")  # nothing listens there: all must be skipped
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert not [name for name in _leftovers(converted) if name.startswith(".")]


def test_tool_fetches_from_a_mirror_directory(converted: Path, tmp_path: Path) -> None:
    # Seed the destination with the already verified ICT files (hard links: instant) so that this run downloads the
    # .task from the mirror directory and skips the 400 MB extraction.
    dest = tmp_path / "assets"
    shutil.copytree(converted / ICT_FACEKIT_DIR, dest / ICT_FACEKIT_DIR, copy_function=os.link)
    os.link(converted / ICT_MODEL_NAME, dest / ICT_MODEL_NAME)

    result = subprocess.run(
        [sys.executable, str(TOOL), "--mirror", str(SHARED_ASSETS), "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert result.returncode == 0, result.stderr
    assert sha256_file(face_landmarker_path(dest)) == FACE_LANDMARKER.sha256
    assert "already present and verified" in result.stdout
    assert sha256_file(dest / SELFIE_SEGMENTER.name) == SELFIE_SEGMENTER.sha256
    assert sha256_file(dest / FACE_DETECTOR.name) == FACE_DETECTOR.sha256
    assert _leftovers(dest) == sorted([FACE_DETECTOR.name, FACE_LANDMARKER.name, ICT_FACEKIT_DIR, ICT_MODEL_NAME,
                                       SELFIE_SEGMENTER.name])


# --- failures leave nothing behind ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[str(TOOL)], [str(PROJECT / "run.py"), "--fetch-assets"]],
                         ids=["tools/fetch_assets.py", "realtime-retarget --fetch-assets"])
def test_tool_with_a_bad_mirror_exits_2_with_one_line(tmp_path: Path, command: list[str]) -> None:
    empty_mirror = tmp_path / "mirror"
    empty_mirror.mkdir()
    dest = tmp_path / "assets"
    result = subprocess.run(
        [sys.executable, *command, "--mirror", str(empty_mirror), "--dest", str(dest)],
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:") and "face_landmarker.task" in lines[0] and "does not exist" in lines[0]
    assert _leftovers(dest) == []


def test_corrupted_task_fails_its_checksum(tmp_path: Path) -> None:
    data = bytearray((_require_shared_assets() / FACE_LANDMARKER.mirror_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    mirror = _mirror_with_task(tmp_path / "mirror", bytes(data))
    dest = tmp_path / "assets"
    with _serve(mirror) as url, pytest.raises(UserError, match="checksum") as err:
        fetch_face_landmarker(dest, url)
    assert FACE_LANDMARKER.sha256 in str(err.value)
    assert _leftovers(dest) == []


def test_truncated_file_on_the_mirror(tmp_path: Path) -> None:
    data = (_require_shared_assets() / FACE_LANDMARKER.mirror_path).read_bytes()
    mirror = _mirror_with_task(tmp_path / "mirror", data[:100_000])
    dest = tmp_path / "assets"
    with _serve(mirror) as url, pytest.raises(UserError, match=f"100000 bytes, expected {FACE_LANDMARKER.size}"):
        fetch_face_landmarker(dest, url)
    assert _leftovers(dest) == []


def test_connection_dropped_mid_download(tmp_path: Path) -> None:
    mirror = _mirror_with_task(tmp_path / "mirror")
    dest = tmp_path / "assets"
    with _serve(mirror, {"/" + FACE_LANDMARKER.mirror_path: "drop"}) as url:
        with pytest.raises(UserError, match="stopped after|closed mid-download"):
            fetch_face_landmarker(dest, url)
    assert _leftovers(dest) == []


def test_http_404(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    dest = tmp_path / "assets"
    with _serve(mirror) as url, pytest.raises(UserError, match="HTTP 404.*check that the mirror"):
        fetch_face_landmarker(dest, url)
    assert _leftovers(dest) == []


def test_connection_refused(tmp_path: Path) -> None:
    dest = tmp_path / "assets"
    with pytest.raises(UserError, match="could not fetch face_landmarker.task.*refused"):
        fetch_face_landmarker(dest, f"http://127.0.0.1:{_free_port()}/")
    assert _leftovers(dest) == []


def test_timeout(tmp_path: Path) -> None:
    mirror = _mirror_with_task(tmp_path / "mirror", b"x")
    dest = tmp_path / "assets"
    with _serve(mirror, {"/" + FACE_LANDMARKER.mirror_path: "stall"}) as url:
        with pytest.raises(UserError, match="no answer within 0.5 s"):
            fetch_face_landmarker(dest, url, timeout=0.5)
    assert _leftovers(dest) == []


@pytest.mark.faults
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_download_leaves_nothing(tmp_path: Path, stop: signal.Signals) -> None:
    mirror = _mirror_with_task(tmp_path / "mirror")
    dest = tmp_path / "assets"
    with _serve(mirror, {"/" + FACE_LANDMARKER.mirror_path: "slow"}) as url:
        tool = subprocess.Popen(
            [sys.executable, str(TOOL), "--mirror", url, "--dest", str(dest)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + HANG_S
        while not [p for p in _leftovers(dest) if p.endswith(".part")] and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # let it receive the first half
        tool.send_signal(stop)
        _, stderr = tool.communicate(timeout=HANG_S)
    assert tool.returncode == 130
    assert stderr.strip().startswith("interrupted") and len(stderr.strip().splitlines()) == 1, stderr
    assert _leftovers(dest) == []


@pytest.mark.faults
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_conversion_leaves_no_model(fetched: Path, tmp_path: Path, stop: signal.Signals) -> None:
    dest = tmp_path / "assets"
    shutil.copytree(fetched, dest, ignore=shutil.ignore_patterns(ICT_MODEL_NAME))
    before = _leftovers(dest)
    tool = subprocess.Popen([sys.executable, str(TOOL), "--mirror", str(tmp_path / "no-mirror"), "--dest", str(dest)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + HANG_S
    while not [p for p in _leftovers(dest) if p.endswith(".part.npz")] and time.monotonic() < deadline:
        time.sleep(0.02)
    tool.send_signal(stop)
    _, stderr = tool.communicate(timeout=HANG_S)
    assert tool.returncode == 130, stderr
    assert stderr.strip().startswith("interrupted") and len(stderr.strip().splitlines()) == 1, stderr
    assert _leftovers(dest) == before  # no model, no temporary file


def test_an_invalid_task_in_place_is_fetched_again(tmp_path: Path) -> None:
    mirror = _mirror_with_task(tmp_path / "mirror")
    dest = tmp_path / "assets"
    dest.mkdir()
    (dest / FACE_LANDMARKER.name).write_bytes(b"not a model")
    with pytest.raises(UserError, match="damaged"):
        face_landmarker_path(dest)
    fetch_face_landmarker(dest, mirror)
    assert sha256_file(dest / FACE_LANDMARKER.name) == FACE_LANDMARKER.sha256


def test_mirror_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = _mirror_with_task(tmp_path / "mirror")
    monkeypatch.setenv("RETARGET_ASSET_MIRROR", str(mirror))
    fetch_face_landmarker(tmp_path / "assets")
    assert sha256_file(tmp_path / "assets" / FACE_LANDMARKER.name) == FACE_LANDMARKER.sha256


def test_missing_assets_tell_the_user_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.*realtime-retarget --fetch-assets"):
        face_landmarker_path(tmp_path)
    with pytest.raises(UserError, match="missing.*realtime-retarget --fetch-assets"):
        ict_model_path(tmp_path)


# --- the face detector, fetched and checked like the landmarker ----------------------------------------------------


def _mirror_with_detector(root: Path, data: bytes | None = None) -> Path:
    target = root / FACE_DETECTOR.mirror_path
    target.parent.mkdir(parents=True)
    real = (_require_shared_assets() / FACE_DETECTOR.mirror_path).read_bytes()
    target.write_bytes(real if data is None else data)
    return root


def test_a_corrupted_detector_fails_its_checksum(tmp_path: Path) -> None:
    data = bytearray((_require_shared_assets() / FACE_DETECTOR.mirror_path).read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest = tmp_path / "assets"
    with _serve(_mirror_with_detector(tmp_path / "mirror", bytes(data))) as url:
        with pytest.raises(UserError, match="face_detection_full_range_sparse.tflite .*checksum") as err:
            fetch_pinned_file(FACE_DETECTOR, dest, url)
    assert FACE_DETECTOR.sha256 in str(err.value) and "\n" not in str(err.value)
    assert _leftovers(dest) == []


def test_a_truncated_detector_is_refused(tmp_path: Path) -> None:
    data = (_require_shared_assets() / FACE_DETECTOR.mirror_path).read_bytes()
    dest = tmp_path / "assets"
    with _serve(_mirror_with_detector(tmp_path / "mirror", data[:50_000])) as url:
        with pytest.raises(UserError, match=f"50000 bytes, expected {FACE_DETECTOR.size}"):
            fetch_pinned_file(FACE_DETECTOR, dest, url)
    assert _leftovers(dest) == []


def test_a_missing_or_damaged_detector_says_what_to_run_and_is_fetched_again(tmp_path: Path) -> None:
    from realtime.assets import face_detector_path

    dest = tmp_path / "assets"
    dest.mkdir()
    with pytest.raises(UserError, match="face detector missing.*realtime-retarget --fetch-assets"):
        face_detector_path(dest)
    (dest / FACE_DETECTOR.name).write_bytes(b"not a model")
    with pytest.raises(UserError, match="damaged.*--force"):
        face_detector_path(dest)
    fetch_pinned_file(FACE_DETECTOR, dest, _mirror_with_detector(tmp_path / "mirror"))
    assert sha256_file(face_detector_path(dest)) == FACE_DETECTOR.sha256


# --- tampered and broken archives ----------------------------------------------------------------------------------


def test_path_traversal_member_is_refused(tmp_path: Path) -> None:
    mirror = _mirror_with_tar(tmp_path / "mirror", [_file("README.md", b"hi"), _file("../evil", b"owned")])
    dest = tmp_path / "work" / "assets"
    with _serve(mirror) as url, pytest.raises(UserError, match="unsafe member path '../evil'"):
        fetch_ict_facekit(dest, url)
    assert _leftovers(dest) == []
    assert not list(tmp_path.rglob("evil"))


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (_file("/etc/evil", b"owned"), "unsafe member path"),
        (_file("FaceXModel/../../evil", b"owned"), "unsafe member path"),
        (_special("LICENSE", tarfile.SYMTYPE, "/etc/passwd"), "link or special file"),
        (_special("FaceXModel/x.obj", tarfile.LNKTYPE, "LICENSE"), "link or special file"),
        (_special("dev", tarfile.CHRTYPE), "link or special file"),
        (_special("fifo", tarfile.FIFOTYPE), "link or special file"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, member: tuple[tarfile.TarInfo, bytes | None], message: str) -> None:
    mirror = _mirror_with_tar(tmp_path / "mirror", [member])
    dest = tmp_path / "assets"
    with pytest.raises(UserError, match=message):
        fetch_ict_facekit(dest, mirror)
    assert _leftovers(dest) == []


def test_archive_with_a_wrong_file_fails_its_checksum(tmp_path: Path) -> None:
    mirror = _mirror_with_tar(tmp_path / "mirror", [_file("LICENSE", b"not the MIT licence")])
    dest = tmp_path / "assets"
    with pytest.raises(UserError, match="LICENSE in the archive .* failed its checksum"):
        fetch_ict_facekit(dest, mirror)
    assert _leftovers(dest) == []


def test_archive_missing_files_is_refused(tmp_path: Path) -> None:
    mirror = _mirror_with_tar(tmp_path / "mirror", [_file("README.md", b"hello")])
    dest = tmp_path / "assets"
    with pytest.raises(UserError, match="lacks 160 of the 160 pinned files"):
        fetch_ict_facekit(dest, mirror)
    assert _leftovers(dest) == []


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_archive_is_refused(tmp_path: Path, damage: str) -> None:
    mirror = _mirror_with_tar(tmp_path / "mirror", [_file("LICENSE", os.urandom(200_000))])
    archive = mirror / ICT_FACEKIT.mirror_path
    data = archive.read_bytes()
    archive.write_bytes(os.urandom(5000) if damage == "garbage" else data[: len(data) // 2])
    dest = tmp_path / "assets"
    with pytest.raises(UserError, match="corrupt or truncated"):
        fetch_ict_facekit(dest, mirror)
    assert _leftovers(dest) == []


def test_upstream_layout_is_unwrapped_and_extras_ignored(tmp_path: Path) -> None:
    # GitHub's archive of a commit puts everything under ICT-FaceKit-<commit>/.
    top = f"ICT-FaceKit-{ICT_FACEKIT_COMMIT}/"
    files = {"LICENSE": b"MIT", "FaceXModel/a.obj": b"v 0 0 0\n"}
    archive = tmp_path / "upstream.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in {**files, "README.md": b"extra", "Scripts/x.py": b"extra"}.items():
            info = tarfile.TarInfo(top + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    expected = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    out = tmp_path / "out"
    extract_verified_tar(archive, out, expected, strip_prefix=top)
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == set(files)
    assert (out / "FaceXModel/a.obj").read_bytes() == files["FaceXModel/a.obj"]

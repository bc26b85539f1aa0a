"""Fault injection: hostile and broken files, failing devices, a full disk, a crash mid-preparation, a missing OpenGL,
and what the app must never do (reach the network, hand a shell a string, interpret a path).

Every case asserts what a user sees: the one-line message, the exit code, and the files left afterwards. The other
fault cases live beside the code they exercise and carry the same marker: `python -m pytest -m faults` runs them all.
"""

import ast
import contextlib
import io
import logging
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from realtime.cli import main
from realtime.errors import UserError
from realtime.ict.identity import prepare_identity
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
from realtime.io.capture import Capture, CaptureOptions
from realtime.io.clips import probe_video
from realtime.io.images import MAX_SIDE, read_image
from realtime.io.virtual_camera import VirtualCamera
from realtime.loops.live import LiveLoop, LiveOptions
from tests.conftest import HANG_S, PROJECT, audio_only_clip, media, remux, small_tmpfs
from tests.virtual_camera_backend import FailingBackend, RecordingBackend, registered_backend

pytestmark = pytest.mark.faults

PHOTO = "skimage_astronaut.png"
CLIP = "pyfeat_single_face.mp4"  # 72 frames, 30 fps


def astronaut() -> Image.Image:
    return Image.open(media(PHOTO)).convert("RGB")


def jpeg_bytes(image: Image.Image, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92, **save)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 100-byte PNG whose header declares ``width`` x ``height`` RGB pixels (1.2 GB once decoded)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def huge_jpeg() -> bytes:
    """A real small JPEG whose frame header was rewritten to declare 20000 x 20000 pixels."""
    data = bytearray(jpeg_bytes(astronaut()))
    start = data.find(b"\xff\xc0")  # baseline start-of-frame: length, precision, height, width
    struct.pack_into(">HH", data, start + 5, 20_000, 20_000)
    return bytes(data)


# ---------------------------------------------------------------------------------------------------------------------
# Identity photos: refused with one line, or read as the user meant


BROKEN_PHOTOS = {
    "zero bytes": (lambda: b"", "could not be read as an image: it is empty"),
    "not an image": (lambda: b"%PDF-1.4 a document, not a photo\n" * 20, "could not be read as an image: use a JPEG"),
    "truncated jpeg": (lambda: jpeg_bytes(astronaut())[:20_000], "the JPEG file is damaged or truncated"),
    "truncated png": (lambda: (lambda b: b[: len(b) // 2])(png_bytes(astronaut())), "the PNG file is damaged or"),
    "huge png": (huge_png, "too large to load safely"),
    "huge jpeg": (huge_jpeg, "too large to load safely"),
    "121 megapixels declared": (lambda: huge_png(11_000, 11_000), "(11000x11000, 121 megapixels; the limit is 120"),
}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# read_image in a process that may not grow by more than 256 MB: a photo declaring 20000 x 20000 pixels (1.2 GB as RGB)
# or 121 megapixels (363 MB) is only refused with the right message if it is refused from its header, before any pixel
# memory is allocated (a decoder that allocates first gets a MemoryError, whatever the machine's speed)
READ_IN_LITTLE_MEMORY = """
import resource, sys
from pathlib import Path
from realtime.errors import UserError
from realtime.io.images import read_image
status = open("/proc/self/status").read().split("VmSize:")[1]
in_use = int(status.split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (in_use + 256 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    read_image(Path(sys.argv[1]))
except UserError as err:
    print(err)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="limits the address space with RLIMIT_AS (Linux)")
@pytest.mark.parametrize("case", BROKEN_PHOTOS)
def test_a_broken_photo_is_one_line_and_allocates_nothing_big(case: str, tmp_path: Path) -> None:
    make, message = BROKEN_PHOTOS[case]
    path = tmp_path / "photo.jpg"
    path.write_bytes(make())
    with pytest.raises(UserError) as error:
        read_image(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert "\n" not in str(error.value)
    limited = subprocess.run([sys.executable, "-c", READ_IN_LITTLE_MEMORY, str(path)], capture_output=True, text=True,
                             cwd=PROJECT, timeout=HANG_S)
    assert limited.returncode == 0, limited.stderr
    assert limited.stdout.strip() == str(error.value), "refused from the header, allocating nothing big"


def photo_variants(tmp_path: Path) -> dict[str, Path]:
    image = astronaut()
    paths = {}

    def save(name: str, picture: Image.Image, **options: object) -> None:
        paths[name] = tmp_path / name
        picture.save(paths[name], **options)

    save("grey.png", image.convert("L"))
    save("cmyk.jpg", image.convert("CMYK"), quality=95)
    save("palette.png", image.convert("P", palette=Image.Palette.ADAPTIVE), transparency=0)
    save("rgba.png", image.convert("RGBA"))
    rgb16 = np.asarray(image).astype(np.uint16) * 257
    paths["rgb16.png"] = tmp_path / "rgb16.png"
    cv2.imwrite(str(paths["rgb16.png"]), rgb16[:, :, ::-1].copy())
    grey16 = np.asarray(image.convert("L")).astype(np.uint16) * 257
    paths["grey16.png"] = tmp_path / "grey16.png"
    cv2.imwrite(str(paths["grey16.png"]), grey16)
    return paths


def test_grey_cmyk_palette_alpha_and_16_bit_photos_just_work(tmp_path: Path) -> None:
    reference = np.asarray(astronaut()).astype(int)
    grey = np.asarray(astronaut().convert("L")).astype(int)
    for name, path in photo_variants(tmp_path).items():
        rgb = read_image(path)
        assert rgb.shape == reference.shape and rgb.dtype == np.uint8, name
        expected = grey[:, :, None] if "grey" in name else reference
        # CMYK goes through JPEG, a palette has 256 colours: close, not exact; the others are exact
        tolerance = {"cmyk.jpg": 6, "palette.png": 16}.get(name, 0.5)
        assert np.abs(rgb - expected).mean() < tolerance, name


def test_exif_rotation_is_honoured(tmp_path: Path) -> None:
    upright = astronaut()
    # stored on its side, with EXIF orientation 6 ("rotate 90 degrees clockwise to display")
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    path.write_bytes(jpeg_bytes(upright.transpose(Image.Transpose.ROTATE_90), exif=exif))
    rgb = read_image(path).astype(int)
    assert rgb.shape == (upright.height, upright.width, 3)
    assert np.abs(rgb - np.asarray(upright).astype(int)).mean() < 4


def test_a_large_photo_is_downscaled(tmp_path: Path) -> None:
    path = tmp_path / "large.jpg"
    path.write_bytes(jpeg_bytes(astronaut().resize((6000, 6000))))
    assert max(read_image(path).shape[:2]) == MAX_SIDE


# ---------------------------------------------------------------------------------------------------------------------
# Through the app: the exit code, the one line on stderr (native libraries included), and no file written


def run_main(capfd: pytest.CaptureFixture, *args: str) -> tuple[int, list[str]]:
    capfd.readouterr()
    code = main(list(args))
    return code, capfd.readouterr().err.strip().splitlines()


def offline_args(photo: Path, clip: Path, out: Path) -> list[str]:
    return ["--identity", str(photo), "--source", str(clip), "--record", str(out), "--no-window", "--no-vcam"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("RETARGET_CACHE", str(folder))
    return folder


def entries(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


@pytest.mark.parametrize("case", ["truncated jpeg", "huge png", "zero bytes"])
def test_the_app_refuses_a_broken_photo(case: str, assets: Path, cache: Path, tmp_path: Path, capfd) -> None:
    photo, out = tmp_path / "me.jpg", tmp_path / "out.mp4"
    photo.write_bytes(BROKEN_PHOTOS[case][0]())
    code, lines = run_main(capfd, *offline_args(photo, media(CLIP), out))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: identity photo {photo}"), lines
    assert BROKEN_PHOTOS[case][1] in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.jpg"], "no clip, no partial clip"
    assert not [e for e in entries(cache) if "identities/" in e], "no cache entry"


def audio_only(path: Path) -> Path:
    return audio_only_clip(path, seconds=1.0)


def truncated_clip(path: Path) -> Path:
    # a recording cut short: its index (the moov box, written last without faststart) is missing
    whole = remux(media(CLIP), path.with_name("whole.mp4"))
    data = whole.read_bytes()
    whole.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make", [audio_only, truncated_clip], ids=["no video stream", "truncated"])
def test_the_app_refuses_a_clip_it_cannot_decode(make, assets: Path, tmp_path: Path) -> None:
    # in a process of its own: FFmpeg's log level is fixed when OpenCV first uses it, as the app sets it at start-up
    clip, out = make(tmp_path / "clip.mp4"), tmp_path / "out.mp4"
    result = subprocess.run([sys.executable, str(PROJECT / "run.py"), *offline_args(media(PHOTO), clip, out)],
                            capture_output=True, text=True, cwd=PROJECT, timeout=300)
    code, lines = result.returncode, result.stderr.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: Video {clip} could not be read as a video"), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"], "no clip, no cache"


def damaged_assets(tmp_path: Path, assets: Path, name: str, data: bytes) -> Path:
    folder = tmp_path / "assets"
    folder.mkdir()
    for item in ("face_landmarker.task", "ict_face_model.npz"):
        os.symlink(assets / item, folder / item)
    (folder / name).unlink()
    (folder / name).write_bytes(data)
    return folder


class RunsOnLoad:
    """Pickled, it makes ``pickle.load`` run ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch '{self.marker}'",)


def npz_with_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.array([RunsOnLoad(marker)], dtype=object))
    return buffer.getvalue()


MODEL_FILES = {
    "truncated ICT model": ("ict_face_model.npz", lambda a, m: (a / "ict_face_model.npz").read_bytes()[:100_000],
                            "is not a valid converted ICT model (File is not a zip file)"),
    "ICT model running code": ("ict_face_model.npz", lambda a, m: npz_with_pickle(m),
                               "it holds pickled Python objects, which are never loaded"),
    "truncated face model": ("face_landmarker.task", lambda a, m: (a / "face_landmarker.task").read_bytes()[:5000],
                             "is damaged (wrong size)"),
    "photo as face model": ("face_landmarker.task", lambda a, m: media(PHOTO).read_bytes(), "is damaged (wrong size)"),
}


@pytest.mark.parametrize("case", MODEL_FILES)
def test_the_app_refuses_a_broken_model_file(case: str, assets: Path, cache: Path, tmp_path: Path, capfd,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    name, make, message = MODEL_FILES[case]
    marker = tmp_path / "marker"
    monkeypatch.setenv("RETARGET_ASSETS", str(damaged_assets(tmp_path, assets, name, make(assets, marker))))
    out = tmp_path / "out.mp4"
    code, lines = run_main(capfd, *offline_args(media(PHOTO), media(CLIP), out))
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert "realtime-retarget --fetch-assets" in lines[0], "says how to get a good copy"
    assert not out.exists() and entries(cache) == []
    assert not marker.exists(), "nothing in the file ran"


# ---------------------------------------------------------------------------------------------------------------------
# The identity cache is never left with a partial entry


def test_a_full_disk_while_caching_an_identity_leaves_no_entry(ict_model, gl_context, assets: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    with small_tmpfs(tmp_path / "disk", "64k") as disk, caplog.at_level(logging.WARNING):
        identity = prepare_identity(media(PHOTO), ict_model, assets / "ict_face_model.npz", gl_context,
                                    disk / "identities")
        assert identity.albedo.size > 0, "the app goes on without the cache"
        assert "could not cache the identity" in caplog.text and "No space left on device" in caplog.text
        assert list((disk / "identities").iterdir()) == [], "no entry and no temporary folder"


PREPARE = """
import sys
from pathlib import Path
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
RetargetPipeline.create(PipelineOptions(identity=Path(sys.argv[1]))).close()
"""


# PREPARE, stopped (as if frozen) when it opens the entry's last file, meta.json, for writing: the parent kills it
# there, however fast or slow the machine got there
PREPARE_UNTIL_META = """
import sys, threading
def hook(event, args):
    if event == "open" and str(args[0]).endswith("meta.json") and "w" in str(args[1]):
        print("writing meta.json", flush=True)
        threading.Event().wait()
sys.addaudithook(hook)
""" + PREPARE


def test_a_crash_while_caching_an_identity_leaves_no_entry(assets: Path, tmp_path: Path) -> None:
    cache, photo = tmp_path / "cache", tmp_path / "me.png"
    photo.write_bytes(media("pyfeat_single_face.jpg").read_bytes())
    env = {**os.environ, "RETARGET_CACHE": str(cache)}
    child = subprocess.Popen([sys.executable, "-c", PREPARE_UNTIL_META, str(photo)], cwd=PROJECT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    identities = cache / "identities"
    try:  # killed (SIGKILL: nothing can clean up) while the entry is being written
        assert child.stdout is not None and child.stdout.readline().strip() == "writing meta.json"
        child.kill()
    finally:
        child.kill()
        child.wait(timeout=HANG_S)
    assert child.returncode == -signal.SIGKILL, "killed before the entry was complete"
    assert [p.name for p in identities.iterdir() if not p.name.startswith(".")] == [], "no partial entry"
    # the next run prepares it again and caches it whole
    subprocess.run([sys.executable, "-c", PREPARE, str(photo)], cwd=PROJECT, env=env, check=True, capture_output=True)
    complete = [p for p in identities.iterdir() if not p.name.startswith(".")]
    assert len(complete) == 1
    assert sorted(p.name for p in complete[0].iterdir()) == ["albedo.png", "identity.npz", "meta.json", "person.png"]


# ---------------------------------------------------------------------------------------------------------------------
# Failing devices in the live loop


@pytest.fixture(scope="module")
def pipeline(assets, gl_context) -> Iterator[RetargetPipeline]:
    pipeline = RetargetPipeline.create(PipelineOptions(identity=media("pyfeat_single_face.jpg")), gl_context)
    yield pipeline
    pipeline.close()


def test_a_virtual_camera_failing_mid_stream_leaves_the_other_outputs_running(
    pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "call.mp4"
    monkeypatch.setattr(FailingBackend, "fail_on", 10)
    with (registered_backend("failing", FailingBackend), caplog.at_level(logging.WARNING),
          Capture.create_from_options(CaptureOptions(source=str(media(CLIP)), loop=True)) as capture):
        camera = VirtualCamera.open((640, 480), capture.fps, backend="failing")
        stats = LiveLoop(pipeline, capture, camera, None, LiveOptions(record=out, max_frames=60)).run()
        device = RecordingBackend.last()
    assert len(device.frames) == 9 and device.send_calls == 10, "the device was dropped after its first failure"
    reports = [r.getMessage() for r in caplog.records if r.name == "realtime.io.virtual_camera"]
    assert len(reports) == 1 and "failed after 9 frames and is closed: device disconnected" in reports[0], reports
    assert stats.frames_out == 60 and probe_video(out).frame_count == 60, "the recording got every frame"


def fill_up_while_recording(disk: Path) -> threading.Thread:
    """Another program filling the disk once the recording has its first whole fragment (a 'moof' box) on it."""

    def fill() -> None:
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline and not any(b"moof" in p.read_bytes() for p in disk.glob(".call.*")):
            time.sleep(0.05)
        time.sleep(0.5)
        with contextlib.suppress(OSError), open(disk / "filler", "wb", buffering=0) as filler:
            while True:  # until "No space left on device"
                filler.write(bytes(4096))

    thread = threading.Thread(target=fill, name="filler")
    thread.start()
    return thread


def test_a_full_disk_stops_the_recording_keeps_its_playable_part_and_the_call_goes_on(
    pipeline, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RecordingBackend, "keep_images", False)
    with (small_tmpfs(tmp_path / "disk", "2m") as disk, registered_backend("recording", RecordingBackend),
          caplog.at_level(logging.INFO), Capture.create_from_options(CaptureOptions(source=str(media(CLIP)),
                                                                                    loop=True)) as capture):
        camera = VirtualCamera.open((640, 480), capture.fps, backend="recording")
        filler = fill_up_while_recording(disk)
        stats = LiveLoop(pipeline, capture, camera, None, LiveOptions(record=disk / "call.mp4", max_frames=180)).run()
        filler.join()
        device = RecordingBackend.last()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        # whichever sees it first: the recorder watching the free space, or the encoder failing a write
        assert len(errors) == 1 and re.fullmatch(
            r"recording stopped: the disk holding \S+ is full.* free some "
            rf"space.*; the part recorded before it is kept in {re.escape(str(disk / 'call.mp4'))}", errors[0]), errors
        assert sorted(os.listdir(disk)) == ["call.mp4", "filler"], "the part written so far, no temporary file"
        kept = probe_video(disk / "call.mp4").frame_count
    assert 0 < kept < 180, "the whole fragments written before the disk filled up play"
    assert stats.frames_out == 180 and len(device.frames) == 180, "the virtual camera got every frame"


# ---------------------------------------------------------------------------------------------------------------------
# No OpenGL


def test_no_opengl_names_the_packages_to_install(assets: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    env = {**os.environ, "__EGL_VENDOR_LIBRARY_FILENAMES": str(tmp_path / "no-such-vendor.json")}  # no EGL driver
    result = subprocess.run([sys.executable, str(PROJECT / "run.py"), *offline_args(media(PHOTO), media(CLIP), out)],
                            capture_output=True, text=True, env=env, cwd=PROJECT, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: could not create an OpenGL 3.3 context"), lines
    assert "apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1" in lines[0]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------------------------
# No surprises: no shell, no network, paths as given


def calls_in(*places: Path) -> Iterator[tuple[Path, ast.Call]]:
    for place in places:
        for path in sorted(place.rglob("*.py")) if place.is_dir() else [place]:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call):
                    yield path, node


def test_no_shell_strings_anywhere() -> None:
    offences = []
    for path, call in calls_in(PROJECT / "realtime", PROJECT / "tools", PROJECT / "run.py"):
        name = ast.unparse(call.func)
        if name in ("os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput"):
            offences.append(f"{path.name}:{call.lineno} {name}")
        for keyword in call.keywords:
            if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and not keyword.value.value):
                offences.append(f"{path.name}:{call.lineno} shell=")
        if name.startswith("subprocess.") and call.args and isinstance(call.args[0], ast.Constant | ast.JoinedStr):
            offences.append(f"{path.name}:{call.lineno} a command string")
    assert offences == []


# The app, run with an audit hook that notes every socket opened or name looked up, on paths meant to be misread.
AUDITED = """
import sys
events = []
def hook(event, args):
    if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
        events.append(event)
sys.addaudithook(hook)
from realtime.cli import main
code = main(sys.argv[1:])
print("NETWORK", sorted(set(events)))
sys.exit(code)
"""


@pytest.mark.slow
def test_weird_paths_are_used_as_given_and_nothing_touches_the_network(assets: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a:b $(touch pwned) ; `touch pwned2`"
    folder.mkdir()
    photo = folder / "-me; rm -rf x.png"
    photo.write_bytes(media(PHOTO).read_bytes())
    clip = folder / "clip %d|cat.mp4"
    clip.write_bytes(media(CLIP).read_bytes())
    out = "-out %d;echo.mp4"  # relative, in the working folder: an option or a frame pattern if misread
    result = subprocess.run([sys.executable, "-c", AUDITED, "--identity", str(photo.relative_to(tmp_path)),
                             "--source", str(clip.relative_to(tmp_path)), f"--record={out}", "--no-window",
                             "--no-vcam"], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert result.returncode == 0, result.stderr
    assert "NETWORK []" in result.stdout, "no socket, no name lookup"
    assert probe_video(tmp_path / out).frame_count == 72
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([folder.name, out])
    assert not list(tmp_path.rglob("pwned*"))

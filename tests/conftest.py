"""Shared fixtures: the real assets (fetched from the local mirror when missing), real media, one GL context."""

import contextlib
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

PROJECT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = PROJECT.parent / "shared" / "assets"
MEDIA = SHARED_ASSETS / "media"

# How long a test waits for something that must happen (a subprocess to finish, a file to appear, a thread to end)
# before it gives up. It guards against hangs, never against slowness: no test may depend on the machine's speed
# (tools/bench.py measures speed). pytest-timeout's limit per test (pyproject.toml) is the last resort.
HANG_S = 300.0


def wait_until(condition: Callable[[], object], what: str, limit: float = HANG_S, poll: float = 0.01) -> None:
    """Poll ``condition`` until it is true; fail the test, saying ``what`` did not happen, after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {limit:g} s waiting for {what}")
        time.sleep(poll)


def media(name: str) -> Path:
    path = MEDIA / name
    if not path.is_file():
        pytest.skip(f"sample media {path} is absent (the shared asset mirror sits beside the checkout)")
    return path


def hide_ffmpeg(folder: Path) -> str:
    """A PATH on which the only ffmpeg and ffprobe are stand-ins that fail and leave a mark in ``folder``: the app
    must need neither (see `ffmpeg_ran`)."""
    stubs = folder / "ffmpeg-stubs"
    stubs.mkdir(exist_ok=True)
    for name in ("ffmpeg", "ffprobe"):
        (stubs / name).write_text(f"#!/bin/sh\ntouch '{folder / ('ran-' + name)}'\nexit 1\n")
        (stubs / name).chmod(0o755)
    return str(stubs)


def ffmpeg_ran(folder: Path) -> list[str]:
    """The stand-ins of `hide_ffmpeg` that something ran."""
    return sorted(path.name.removeprefix("ran-") for path in folder.glob("ran-*"))


def audio_only_clip(path: Path, seconds: float = 0.3) -> Path:
    """An MP4 with a sine tone and no video stream, encoded with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100, layout="mono")
        t = np.arange(int(44100 * seconds)) / 44100
        frame = av.AudioFrame.from_ndarray(np.sin(2 * np.pi * 440 * t).astype(np.float32)[None], format="fltp",
                                           layout="mono")
        frame.sample_rate = 44100
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def remux(source: Path, out: Path) -> Path:
    """``source``'s video stream copied into ``out`` as it is (no re-encoding), the index (moov) written last."""
    import av

    with av.open(str(source)) as reading, av.open(str(out), "w") as writing:
        stream = writing.add_stream_from_template(reading.streams.video[0])
        for packet in reading.demux(reading.streams.video[0]):
            if packet.dts is not None:  # the flush packet at the end
                packet.stream = stream
                writing.mux(packet)
    return out


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory) -> Path:
    """Prepared identities go to a temporary folder, not the checkout's cache (subprocesses inherit it)."""
    import os

    folder = tmp_path_factory.mktemp("cache")
    os.environ["RETARGET_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def isolated_settings(tmp_path_factory) -> Path:
    """No user settings file (~/.config/realtime-retarget/config.toml) reaches the app under test."""
    import os

    folder = tmp_path_factory.mktemp("config")
    os.environ["XDG_CONFIG_HOME"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def assets() -> Path:
    """The assets folder with the face detector and landmarker and the converted ICT model, fetched from the mirror if
    needed."""
    from realtime.assets import FACE_DETECTOR, ICT_MODEL_NAME
    from realtime.fetch import fetch_all
    from realtime.paths import assets_dir

    folder = assets_dir()
    needed = (ICT_MODEL_NAME, "face_landmarker.task", "selfie_segmentation.tflite", FACE_DETECTOR.name)
    if not all((folder / name).is_file() for name in needed):
        if not SHARED_ASSETS.is_dir():
            pytest.skip("assets are not fetched and the shared mirror is absent: run `python run.py --fetch-assets`")
        logging.getLogger(__name__).info("fetching assets from %s", SHARED_ASSETS)
        fetch_all(folder, SHARED_ASSETS)
    return folder


@pytest.fixture(scope="session")
def ict_model(assets: Path):
    from realtime.ict.model import IctModel

    return IctModel.load(assets / "ict_face_model.npz")


_SESSION_CONTEXTS: list = []


@pytest.fixture(scope="session")
def gl_context():
    from realtime.rendering.renderer import create_context

    ctx = create_context()
    _SESSION_CONTEXTS.append(ctx)
    yield ctx
    _SESSION_CONTEXTS.clear()
    ctx.release()


@pytest.fixture(autouse=True)
def gl_context_current():
    """The shared context is current when each test starts and ends (so also when the next module's fixtures are
    made): an app run in-process (`main(...)`) or a window makes its own context current, and releasing it leaves
    none. (One process, one context is the app's rule; the tests share one context between many pipelines.)"""
    if _SESSION_CONTEXTS:
        _SESSION_CONTEXTS[0].__enter__()
    yield
    if _SESSION_CONTEXTS:
        _SESSION_CONTEXTS[0].__enter__()


@pytest.fixture(scope="session")
def image_tracker(assets: Path):
    """MediaPipe in IMAGE mode, for re-tracking rendered avatars."""
    from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode

    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE, max_faces=8)) as tracker:
        yield tracker


@pytest.fixture(scope="session")
def astronaut_pipeline(assets: Path, gl_context):
    """The whole embedded-default pipeline for the astronaut photo."""
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline

    pipeline = RetargetPipeline.create(PipelineOptions(identity=media("skimage_astronaut.png")), gl_context)
    yield pipeline
    pipeline.close()


def neutral_weights(model, **weights: float) -> np.ndarray:
    """ICT expression weights: zero except the named shapes."""
    w = np.zeros(len(model.expression_names), np.float32)
    for name, value in weights.items():
        w[model.expression_index(name)] = value
    return w


# Where a head turns on the neck, from MediaPipe's canonical origin (cm, head upright): below and behind it
NECK_FROM_CANONICAL_ORIGIN = np.array([0.0, -3.0, -6.5])


def yaw(degrees: float) -> np.ndarray:
    """(3, 3) a turn about the vertical axis (camera space: y up, z to the camera)."""
    a = np.radians(degrees)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


def turn_on_the_neck(degrees: float) -> dict:
    """A head turn as MediaPipe reports it (`realtime.head.HeadOffset` fields): the rotation, and the canonical
    origin carried round the neck with it."""
    rotation = yaw(degrees)
    return dict(rotation=rotation, translation=(np.eye(3) - rotation) @ NECK_FROM_CANONICAL_ORIGIN)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``path`` (root only): a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)

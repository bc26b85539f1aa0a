"""Shared fixtures: the real assets (fetched from the local mirror when missing), real media, one GL context."""

import logging
import time
from collections.abc import Callable
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
    """The assets folder with the face landmarker and the converted ICT model, fetched from the mirror if needed."""
    from realtime.assets import ICT_MODEL_NAME, fetch_all
    from realtime.paths import assets_dir

    folder = assets_dir()
    if not (folder / ICT_MODEL_NAME).is_file() or not (folder / "face_landmarker.task").is_file():
        if not SHARED_ASSETS.is_dir():
            pytest.skip("assets are not fetched and the shared mirror is absent: run tools/fetch_assets.py")
        logging.getLogger(__name__).info("fetching assets from %s", SHARED_ASSETS)
        fetch_all(folder, SHARED_ASSETS)
    return folder


@pytest.fixture(scope="session")
def ict_model(assets: Path):
    from realtime.ict_model import IctModel

    return IctModel.load(assets / "ict_face_model.npz")


_SESSION_CONTEXTS: list = []


@pytest.fixture(scope="session")
def gl_context():
    from realtime.renderer import create_context

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
    from realtime.tracker import FaceTracker, FaceTrackerOptions, RunningMode

    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE, max_faces=8)) as tracker:
        yield tracker


@pytest.fixture(scope="session")
def astronaut_pipeline(assets: Path, gl_context):
    """The whole embedded-default pipeline for the astronaut photo."""
    from realtime.pipeline import PipelineOptions, RetargetPipeline

    pipeline = RetargetPipeline.create(PipelineOptions(identity=media("skimage_astronaut.png")), gl_context)
    yield pipeline
    pipeline.close()


def neutral_weights(model, **weights: float) -> np.ndarray:
    """ICT expression weights: zero except the named shapes."""
    w = np.zeros(len(model.expression_names), np.float32)
    for name, value in weights.items():
        w[model.expression_index(name)] = value
    return w

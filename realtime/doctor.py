"""`run.py --doctor`: what this machine has for the app, each problem with its fix. Checks only; changes nothing."""

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from realtime.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # what was found, or what to do about it

    def line(self) -> str:
        return f"{'ok ' if self.ok else 'FIX'}  {self.name:<16} {self.detail}"


def check(name: str, probe: Callable[[], str]) -> Check:
    """Run ``probe``: its return value is what was found; a UserError (or any failure) is the fix to show."""
    try:
        return Check(name, True, probe())
    except UserError as err:
        return Check(name, False, str(err))
    except Exception as err:  # a probe must never crash the report
        return Check(name, False, f"{type(err).__name__}: {err}")


def probe_assets() -> str:
    from realtime import assets

    return f"{assets.face_landmarker_path()}, {assets.face_detector_path()} and {assets.ict_model_path()}"


def probe_gl() -> str:
    from realtime.rendering.renderer import create_context

    ctx = create_context()
    try:
        return f"{ctx.info['GL_RENDERER']} (OpenGL {ctx.info['GL_VERSION']}), headless EGL"
    finally:
        ctx.release()


def probe_ffmpeg() -> str:
    path = shutil.which("ffmpeg")
    if path is None:
        raise UserError("ffmpeg not found: recordings fall back to mp4v; install it (apt-get install ffmpeg) for H.264")
    return path


def probe_cameras() -> str:
    from realtime.io.capture import list_cameras

    cameras = list_cameras()
    if not cameras:
        raise UserError("no camera devices found: connect a webcam, or drive the avatar with --source CLIP.mp4")
    return "; ".join(cameras)


def probe_virtual_camera() -> str:
    import pyvirtualcam

    from realtime.io.virtual_camera import install_advice

    try:
        with pyvirtualcam.Camera(640, 480, 30) as camera:
            return f"{camera.device} ({camera.backend})"
    except RuntimeError as err:
        raise UserError(f"no virtual camera ({err}). {install_advice()}") from err


def probe_deca(folder: Path | None) -> Callable[[], str]:
    def probe() -> str:
        if folder is None:
            return "not configured (optional: --deca-data DIR with your DECA data/ folder)"
        from realtime.deca.data import DecaData

        data = DecaData.open(folder)
        mode = "DECA networks" if data.has_networks else f"FLAME driven by {data.embedding().name}"
        return f"{folder}: {mode}"

    return probe


def probe_engines(folder: Path | None) -> Callable[[], str]:
    def probe() -> str:
        from realtime.deca.engines import read_manifest
        from realtime.paths import PROJECT_ROOT

        entries = read_manifest(PROJECT_ROOT / "engines")
        if not entries:
            hint = f" --deca-data {folder}" if folder else " --deca-data DIR"
            return f"none built (optional: `python tools/build_engine.py{hint}` makes the DECA path faster)"
        return f"{len(entries)} in engines/manifest.json"

    return probe


def run_doctor(deca_data: Path | None = None) -> list[Check]:
    """Every check, in the order a new user needs them."""
    return [
        check("assets", probe_assets),
        check("OpenGL", probe_gl),
        check("ffmpeg", probe_ffmpeg),
        check("cameras", probe_cameras),
        check("virtual camera", probe_virtual_camera),
        check("DECA files", probe_deca(deca_data)),
        check("DECA engines", probe_engines(deca_data)),
    ]

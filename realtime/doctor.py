"""`run.py --doctor`: what this machine has for the app, each problem with its fix. Checks only; changes nothing."""

import logging
import sys
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

    paths = [assets.face_landmarker_path(), assets.face_detector_path(), assets.selfie_segmenter_path(),
             assets.ict_model_path()]  # the photo look, the default, needs the segmenter too
    return ", ".join(str(path) for path in paths[:-1]) + f" and {paths[-1]}"


OFFSCREEN_CONTEXTS = {"win32": "standalone WGL", "darwin": "standalone CGL"}  # elsewhere: headless EGL


def probe_gl() -> str:
    from realtime.rendering.renderer import create_context

    ctx = create_context()
    try:
        kind = OFFSCREEN_CONTEXTS.get(sys.platform, "headless EGL")
        return f"{ctx.info['GL_RENDERER']} (OpenGL {ctx.info['GL_VERSION']}), {kind}"
    finally:
        ctx.release()


def probe_h264() -> str:
    import av

    if "libx264" not in av.codecs_available:
        raise UserError(f"PyAV {av.__version__} has no libx264 encoder: reinstall it from PyPI with "
                        "`pip install --force-reinstall av` (its wheels bundle FFmpeg with libx264)")
    return f"libx264 in PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info}): no ffmpeg program needed"


def probe_cameras() -> str:
    from realtime.io.capture import camera_advice, list_cameras

    cameras = list_cameras()
    if not cameras:
        raise UserError(f"no camera devices found: {camera_advice()}")
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
        from realtime.paths import engines_dir

        entries = read_manifest(engines_dir())
        if not entries:
            hint = f" --deca-data {folder}" if folder else " --deca-data DIR"
            return f"none built (optional: `python tools/build_engine.py{hint}` makes the DECA path faster)"
        return f"{len(entries)} in {engines_dir() / 'manifest.json'}"

    return probe


def run_doctor(deca_data: Path | None = None) -> list[Check]:
    """Every check, in the order a new user needs them."""
    return [
        check("assets", probe_assets),
        check("OpenGL", probe_gl),
        check("H.264", probe_h264),
        check("cameras", probe_cameras),
        check("virtual camera", probe_virtual_camera),
        check("DECA files", probe_deca(deca_data)),
        check("DECA engines", probe_engines(deca_data)),
    ]

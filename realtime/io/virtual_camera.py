"""The virtual camera sink: avatar frames to a camera device that Zoom / Meet / Teams / OBS can select.

- ``VirtualCamera.open``: pyvirtualcam behind a small interface. It returns ``None`` (with one warning that says how to
  get a virtual camera) when the machine has none, so the app keeps running its other sinks.
- ``VirtualCamera.send``: one RGB frame; a device that fails mid-stream is closed and reported once, never raised.
- ``install_advice``: how to get a virtual camera on this operating system, one paragraph.

pyvirtualcam needs a v4l2loopback device on Linux and OBS Studio's Virtual Camera (or Unity Capture) on Windows/macOS.
Tests plug a recording backend in with ``pyvirtualcam.register_backend`` (see ``tests/virtual_camera_backend.py``).
"""

from __future__ import annotations

import logging
import math
import sys
import threading
from types import TracebackType

import numpy as np
import pyvirtualcam
from pyvirtualcam.camera import BACKENDS

log = logging.getLogger(__name__)

CARD_LABEL = "Retarget Camera"
MODPROBE_LINE = f'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="{CARD_LABEL}" exclusive_caps=1'
NO_VCAM_FLAG = "--no-vcam"
SYSTEMS = {"win32": "Windows", "darwin": "Darwin"}  # sys.platform -> platform.system()


def install_advice(system: str | None = None) -> str:
    """How to get a virtual camera on ``system`` ("Linux", "Windows", "Darwin"; this one by default), one paragraph."""
    system = system or SYSTEMS.get(sys.platform, "Linux" if sys.platform.startswith("linux") else sys.platform)
    if system == "Linux":
        how = (
            "To stream the avatar to Zoom/Meet/OBS on Linux, create a v4l2loopback virtual camera: "
            f"`sudo apt install v4l2loopback-dkms`, then `{MODPROBE_LINE}` (exclusive_caps=1 is what Chrome and Zoom "
            f'need to list the device; it appears as /dev/video10), then select "{CARD_LABEL}" as the camera in the '
            "call. To keep it across reboots, put `v4l2loopback` in /etc/modules-load.d/ and the options in "
            "/etc/modprobe.d/"
        )
    elif system == "Windows":
        how = (
            "To stream the avatar to Zoom/Meet/Teams on Windows, install OBS Studio 26 or newer, click "
            '"Start Virtual Camera" once (you can stop it again; OBS itself need not run), then select '
            '"OBS Virtual Camera" in the call; alternatively install Unity Capture and select "Unity Video Capture"'
        )
    elif system == "Darwin":
        how = (
            "To stream the avatar to Zoom/Meet/Teams on macOS, install OBS Studio 26 or newer, click "
            '"Start Virtual Camera" once (allow the camera system extension if macOS asks, then stop it again), '
            'then select "OBS Virtual Camera" in the call'
        )
    else:
        how = f"pyvirtualcam has no virtual camera backend for {system or 'this system'}"
    return f"{how}; or run with {NO_VCAM_FLAG}."


class VirtualCamera:
    """pyvirtualcam behind a small interface; RGB frames of a fixed size at a fixed rate.

    Open with ``VirtualCamera.open(size, fps)`` (``None`` when the machine has no virtual camera), ``send`` HxWx3 uint8
    RGB frames of exactly that size, ``close`` (or use it as a context manager).

    Pacing is the caller's job: the live loop calls ``send`` once per output frame at the output rate itself, and
    ``send`` returns as soon as the device has the frame. It never calls pyvirtualcam's ``sleep_until_next_frame``,
    which would add up to one frame period of latency to every frame. ``fps`` is only what the device advertises.

    A device error mid-stream (the backend raises) is logged once as a warning; the device is closed and ``send``
    returns ``False`` from then on, so the app keeps running its other sinks. ``send`` and ``close`` may be called
    from different threads.
    """

    def __init__(self, camera: pyvirtualcam.Camera) -> None:
        """Wrap an open pyvirtualcam camera (RGB format). Use ``VirtualCamera.open``."""
        self._camera: pyvirtualcam.Camera | None = camera
        self._lock = threading.Lock()
        self.width: int = camera.width
        self.height: int = camera.height
        self.fps: float = camera.fps
        self.device: str = camera.device
        self.backend: str = camera.backend
        self.frames_sent: int = 0

    @classmethod
    def open(
        cls, size: tuple[int, int], fps: float, device: str | None = None, backend: str | None = None
    ) -> VirtualCamera | None:
        """Open a virtual camera for ``size`` = (width, height) RGB frames at ``fps``.

        ``device`` and ``backend`` select a particular device / pyvirtualcam backend (``None``: the first that works).
        Returns ``None`` and logs one warning with pyvirtualcam's reason and ``install_advice()`` when no virtual camera
        is available. Raises ``ValueError`` for a size or rate no camera could have.
        """
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0 or (width, height) != tuple(size):
            raise ValueError(f"virtual camera size must be two positive integers (width, height), got {size!r}")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"virtual camera fps must be positive, got {fps!r}")

        if backend is not None and backend not in BACKENDS:
            reason = f"unknown backend {backend!r} (available here: {', '.join(BACKENDS) or 'none'})"
            log.warning("no virtual camera: %s. %s", reason, install_advice())
            return None
        try:
            camera = pyvirtualcam.Camera(
                width, height, fps, fmt=pyvirtualcam.PixelFormat.RGB, device=device, backend=backend
            )
        except RuntimeError as err:  # pyvirtualcam's summary of every backend's failure, one line per backend
            reason = "; ".join(line.strip() for line in str(err).splitlines() if line.strip()).rstrip(".")
            log.warning("no virtual camera: %s. %s", reason or "no backend could open a device", install_advice())
            return None

        vcam = cls(camera)
        log.info("virtual camera: %s (%s) %dx%d @ %g fps", vcam.device, vcam.backend, width, height, fps)
        return vcam

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames ``send`` accepts."""
        return self.width, self.height

    @property
    def is_open(self) -> bool:
        """False once closed, by ``close`` or after a device error."""
        return self._camera is not None

    def send(self, rgb: np.ndarray) -> bool:
        """Hand one HxWx3 uint8 RGB frame to the device; True when sent, False once closed or after a device error.

        The frame must have the camera's size (no resizing here): anything else is a ``ValueError``, closed or not.
        """
        expected = (self.height, self.width, 3)
        if rgb.shape != expected or rgb.dtype != np.uint8:
            raise ValueError(
                f"virtual camera frames must be {expected} uint8 RGB, got {rgb.shape} {rgb.dtype} (resize before send)"
            )
        with self._lock:
            if self._camera is None:
                return False
            try:
                self._camera.send(rgb)
            except Exception as err:  # the device went away (camera unplugged, module unloaded, OBS quit, ...)
                log.warning(
                    "virtual camera %s (%s) failed after %d frames and is closed: %s",
                    self.device,
                    self.backend,
                    self.frames_sent,
                    err or type(err).__name__,
                )
                self._close_locked()
                return False
            self.frames_sent += 1
            return True

    def close(self) -> None:
        """Release the device. Idempotent."""
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.close()
        except Exception as err:  # a device that already failed may fail to close too; nothing more to do
            log.debug("closing virtual camera %s: %s", self.device, err)

    def __enter__(self) -> VirtualCamera:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return (
            f"VirtualCamera({self.device!r}, backend={self.backend!r}, {self.width}x{self.height} @ {self.fps:g} fps, "
            f"{self.frames_sent} frames sent, {state})"
        )

"""The live app's capture thread: a webcam, a stream URL or a video file, delivered as the latest frame only.

``Capture.create_from_options(CaptureOptions(source="0"))`` opens the source (or raises ``UserError``) and starts a
thread that keeps one slot filled with the newest RGB frame; ``latest(after=i)`` hands out the newest frame with an
index above ``i``. Frames the consumer was too slow to take are overwritten, never queued, so it always works on the
present and the index gaps say how many it missed.

- A camera or stream that stops delivering is released and reopened with back-off (state ``"reconnecting"``); the
  consumer just gets ``None`` meanwhile. Nothing raises into the consumer after start-up.
- A video file stands in for a webcam: it is paced at its own frame rate in real time, and ends (state ``"ended"``)
  or starts again (``loop=True``) at its end.
- ``open_device`` is injectable: it turns a camera index or a path/URL into an object with OpenCV's
  ``isOpened/read/release/set/get``. Tests pass a stand-in for camera hardware that can be unplugged.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import re
import sys
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from realtime.errors import UserError

log = logging.getLogger(__name__)

LIVE = "live"
RECONNECTING = "reconnecting"
ENDED = "ended"

DEFAULT_FPS = 30.0
_MAX_FPS = 240.0  # above this a reported rate is a container time base (RTSP often says 90000), not a frame rate
_STREAM_TIMEOUT_MS = 5000  # bounds FFmpeg's open and read on a dead stream, and so how long close() can wait
_MAX_LAG_S = 0.5  # a file this far behind its schedule (machine busy, process suspended) restarts its clock
_SLICE_S = 0.25  # longest uninterrupted sleep, so an unclosed capture still notices interpreter shutdown
_JOIN_TIMEOUT_S = 10.0
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
FILE_PROTOCOL = "file:"


@dataclass(frozen=True)
class CapturedFrame:
    index: int  # 0, 1, 2 ... in capture order (gaps = frames the consumer never saw)
    timestamp: float  # time.monotonic() when the frame was captured (for latency figures)
    image: np.ndarray  # HxWx3 uint8 RGB


@dataclass(frozen=True)
class CaptureOptions:
    source: str = "0"  # webcam index ("0", "1"), a video file path, or a stream URL (rtsp://, http(s)://, udp://)
    size: tuple[int, int] | None = None  # requested camera mode (width, height); None = the device default
    fps: float | None = None  # requested camera rate
    loop: bool = False  # files only: start again at the end instead of ending
    reconnect_delays: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # back-off between reopen attempts; the last repeats


class Device(Protocol):
    """What ``cv2.VideoCapture`` offers and the capture thread uses."""

    def isOpened(self) -> bool: ...
    def read(self) -> tuple[bool, np.ndarray | None]: ...
    def release(self) -> None: ...
    def set(self, prop: int, value: float) -> bool: ...
    def get(self, prop: int) -> float: ...


DeviceOpener = Callable[[int | str], Device]


@contextlib.contextmanager
def opencv_quiet() -> Iterator[None]:
    # OpenCV warns on stderr for every camera index it cannot open; we report failures ourselves, in one line.
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(previous)


def camera_api() -> int:
    """OpenCV's capture API for webcams on this platform: V4L2 on Linux (CAP_ANY would also try FFmpeg and Orbbec
    sensors, each with its own error message), AVFoundation on macOS, DirectShow on Windows (opens at once, and lists
    OBS Virtual Camera too; Media Foundation can take seconds per device)."""
    if sys.platform.startswith("linux"):
        return cv2.CAP_V4L2
    return {"darwin": cv2.CAP_AVFOUNDATION, "win32": cv2.CAP_DSHOW}.get(sys.platform, cv2.CAP_ANY)


def camera_advice() -> str:
    """What to do when no camera can be opened, for this platform."""
    if sys.platform == "darwin":
        where = ("connect a webcam and allow camera access for this terminal (System Settings > Privacy & Security > "
                 "Camera)")
    elif sys.platform == "win32":
        where = ("connect a webcam, let desktop apps use it (Settings > Privacy & security > Camera) and close other "
                 "apps using it")
    else:
        where = "connect a webcam (it appears as /dev/videoN; your user needs the 'video' group)"
    return f"{where}, or drive the avatar with --source CLIP.mp4"


def open_device(source: int | str) -> cv2.VideoCapture:
    """The real device: ``cv2.VideoCapture`` with a backend suited to the source and timeouts on streams."""
    with opencv_quiet():
        if isinstance(source, int):
            return cv2.VideoCapture(source, camera_api())
        timeouts = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            _STREAM_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            _STREAM_TIMEOUT_MS,
        ]
        return cv2.VideoCapture(source, cv2.CAP_FFMPEG, timeouts)


def list_cameras(max_index: int = 10) -> list[str]:
    """Human-readable lines, one per camera device, e.g. ``"0: /dev/video0 HD Webcam 640x480"``.

    Linux: every ``/dev/videoN`` (UVC cameras also create metadata nodes, listed as not capturing). Windows and macOS
    have no device files: indices 0, 1, ... probed with OpenCV (`camera_api`) up to the first that does not open, at
    most ``max_index``.
    """
    if sys.platform.startswith("linux"):
        nodes = sorted(
            (int(match.group(1)), path)
            for path in Path("/dev").glob("video*")
            if (match := re.fullmatch(r"video(\d+)", path.name))
        )
        return [_describe_v4l2(index, path) for index, path in nodes]
    lines = []
    for index in range(max_index):
        device = open_device(index)
        try:
            if not device.isOpened():
                break
            lines.append(f"{index}: camera {index} {_mode(device)}")
        finally:
            device.release()
    return lines


def _describe_v4l2(index: int, path: Path) -> str:
    name = ""
    with contextlib.suppress(OSError):
        name = Path(f"/sys/class/video4linux/video{index}/name").read_text().strip()
    label = " ".join(part for part in (f"{index}: {path}", name) if part)
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{label} (no permission: add your user to the 'video' group)"
    device = open_device(index)
    try:
        if not device.isOpened():
            return f"{label} (cannot be opened: in use, or not a capture node)"
        return f"{label} {_mode(device)}"
    finally:
        device.release()


def _mode(device: Device) -> str:
    return f"{int(device.get(cv2.CAP_PROP_FRAME_WIDTH))}x{int(device.get(cv2.CAP_PROP_FRAME_HEIGHT))}"


# ---------------------------------------------------------------------------------------------------------------------
# Sources


@dataclass(frozen=True)
class _Source:
    kind: str  # "camera", "stream" or "file"
    target: int | str  # what open_device is given
    name: str  # for messages: "camera 0", "stream rtsp://cam/live", "video file clip.mp4"

    @property
    def live(self) -> bool:
        return self.kind != "file"


def _parse_source(source: str) -> _Source:
    stripped = source.strip()
    if stripped.isdigit():
        return _Source("camera", int(stripped), f"camera {int(stripped)}")
    if _URL.match(stripped):
        return _Source("stream", stripped, f"stream {_without_password(stripped)}")
    # a path as given; "file:" keeps FFmpeg from reading a protocol into it ("a:b/clip.mp4")
    return _Source("file", FILE_PROTOCOL + source, f"video file {source}")


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _rate(device: Device) -> float | None:
    fps = device.get(cv2.CAP_PROP_FPS)
    return float(fps) if math.isfinite(fps) and 0 < fps <= _MAX_FPS else None


def _try_open(open_dev: DeviceOpener, source: _Source, options: CaptureOptions) -> tuple[Device, np.ndarray] | str:
    """Open the source and decode one frame; if either fails, release the device and say what failed."""
    device = None
    try:
        device = open_dev(source.target)
        if not device.isOpened():
            device.release()
            return "could not be opened"
        if source.live:
            device.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # ignored by some backends; the one-slot buffer still applies
        if source.kind == "camera":
            if options.size is not None:
                device.set(cv2.CAP_PROP_FRAME_WIDTH, options.size[0])
                device.set(cv2.CAP_PROP_FRAME_HEIGHT, options.size[1])
            if options.fps is not None:
                device.set(cv2.CAP_PROP_FPS, options.fps)
        ok, image = device.read()
        if not ok or image is None:
            device.release()
            return "was opened but delivered no frame"
        return device, image
    except Exception as err:  # cv2.error and whatever a driver raises: a failed attempt, not a crash
        if device is not None:
            with contextlib.suppress(Exception):
                device.release()
        return f"could not be opened ({err})".replace("\n", " ")


def _open_or_explain(open_dev: DeviceOpener, source: _Source, options: CaptureOptions) -> tuple[Device, np.ndarray]:
    """``_try_open``, turning a failure into a ``UserError`` that says what to do."""
    if source.kind == "file":
        path = Path(str(source.target).removeprefix(FILE_PROTOCOL))
        if not path.exists():
            raise UserError(f"{source.name} not found: check the path, or give a webcam index like --source 0")
        if not path.is_file():
            raise UserError(f"{source.name} is not a file: pass a clip like --source CLIP.mp4")
    opened = _try_open(open_dev, source, options)
    if not isinstance(opened, str):
        return opened
    if source.kind == "camera":
        devices = "; ".join(list_cameras()) or "none found"
        raise UserError(
            f"{source.name} {opened} (devices: {devices}): connect a webcam, check its permissions or close other "
            "apps using it, pass --source N (see --list-cameras), or --source CLIP.mp4"
        )
    if source.kind == "stream":
        raise UserError(f"{source.name} {opened}: check the URL, the network and that the stream is running")
    raise UserError(f"{source.name} {opened}: not a video OpenCV can decode (damaged, unsupported or no video stream)")


# ---------------------------------------------------------------------------------------------------------------------
# The one-frame slot and the thread that fills it


class _Slot:
    """The buffer between the capture thread and the consumer: the newest frame only, plus the counters."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.frame: CapturedFrame | None = None
        self.taken = -1  # the newest index handed out
        self.state = LIVE
        self.captured = 0
        self.dropped = 0

    def put(self, image: np.ndarray, timestamp: float) -> None:
        with self.cond:
            if self.frame is not None and self.frame.index > self.taken:
                self.dropped += 1
            self.frame = CapturedFrame(self.captured, timestamp, image)
            self.captured += 1
            self.state = LIVE
            self.cond.notify_all()

    def set_state(self, state: str) -> None:
        with self.cond:
            self.state = state
            self.cond.notify_all()

    def take(self, after: int, timeout: float) -> CapturedFrame | None:
        def newer() -> bool:
            return self.frame is not None and self.frame.index > after

        with self.cond:
            self.cond.wait_for(lambda: newer() or self.state == ENDED, timeout)
            if not newer():
                return None
            assert self.frame is not None
            self.taken = max(self.taken, self.frame.index)
            return self.frame


class _Reader:
    """The capture thread's body. Holds no reference to the ``Capture``, so a forgotten one can be collected."""

    def __init__(
        self,
        open_dev: DeviceOpener,
        source: _Source,
        options: CaptureOptions,
        device: Device,
        fps: float,
        slot: _Slot,
    ) -> None:
        self.open_dev = open_dev
        self.source = source
        self.options = options
        self.device: Device | None = device
        self.fps = fps
        self.slot = slot
        self.stop = threading.Event()

    def run(self, first: np.ndarray, first_timestamp: float) -> None:
        try:
            if self.source.live:
                self._run_live(first, first_timestamp)
            else:
                self._run_file(first)
        except Exception:
            log.exception("%s: capture stopped by an unexpected error", self.source.name)
        finally:
            self._release()
            self.slot.set_state(ENDED)

    def _running(self) -> bool:
        # Also stop when the main thread has gone: interpreter shutdown joins this non-daemon thread before it runs
        # the weakref finalizers, so an unclosed capture must notice on its own.
        return not self.stop.is_set() and threading.main_thread().is_alive()

    def _sleep(self, seconds: float) -> bool:
        """Wait, waking at once on close(); False if the capture is stopping."""
        deadline = time.monotonic() + seconds
        while self._running():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True
            self.stop.wait(min(remaining, _SLICE_S))
        return False

    def _read(self) -> np.ndarray | None:
        assert self.device is not None
        try:
            ok, image = self.device.read()
        except Exception as err:  # a driver error mid-session is a lost device, not a crash
            log.debug("%s: read raised %s", self.source.name, err)
            return None
        return image if ok and image is not None else None

    def _release(self) -> None:
        device, self.device = self.device, None
        if device is not None:
            with contextlib.suppress(Exception):
                device.release()

    def _run_live(self, image: np.ndarray, timestamp: float) -> None:
        while self._running():
            self.slot.put(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), timestamp)
            next_image = self._read()
            timestamp = time.monotonic()
            if next_image is None:
                reopened = self._reconnect()
                if reopened is None:
                    return
                next_image, timestamp = reopened
            image = next_image

    def _reconnect(self) -> tuple[np.ndarray, float] | None:
        """Release and reopen with back-off until a frame comes, or the capture is closed (None)."""
        lost_at = time.monotonic()
        log.warning("%s stopped delivering frames: reconnecting", self.source.name)
        self.slot.set_state(RECONNECTING)
        self._release()
        delays = self.options.reconnect_delays
        for attempt in itertools.count():
            if not self._sleep(delays[min(attempt, len(delays) - 1)]):
                return None
            opened = _try_open(self.open_dev, self.source, self.options)
            if isinstance(opened, str):
                log.debug("%s: reopen attempt %d: %s", self.source.name, attempt + 1, opened)
                continue
            if not self._running():  # closed while the device was opening
                opened[0].release()
                return None
            self.device, image = opened
            log.info("%s is back after %.1f s", self.source.name, time.monotonic() - lost_at)
            return image, time.monotonic()
        return None  # unreachable: itertools.count() does not end

    def _run_file(self, image: np.ndarray) -> None:
        # Frame n is due at start + n / fps on the monotonic clock: sleeping towards absolute due times does not let
        # decode time or sleep overshoot accumulate into drift.
        period = 1.0 / self.fps
        start, n = time.monotonic(), 0
        while self._running():
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            lag = time.monotonic() - (start + n * period)
            if lag > _MAX_LAG_S:
                log.debug("%s: %.2f s behind its frame rate, restarting the clock", self.source.name, lag)
                start, n = time.monotonic(), 0
            elif lag < 0 and not self._sleep(-lag):
                return
            self.slot.put(rgb, time.monotonic())
            n += 1
            next_image = self._read()
            if next_image is None:
                if not self.options.loop:
                    log.info("%s: end of the clip", self.source.name)
                    return
                self._release()
                opened = _try_open(self.open_dev, self.source, self.options)
                if isinstance(opened, str):
                    log.warning("%s %s when reopened to loop it: capture ended", self.source.name, opened)
                    return
                self.device, next_image = opened
            image = next_image


# ---------------------------------------------------------------------------------------------------------------------
# The public object


class Capture:
    """Frames from a camera, a stream or a paced video file, newest only. Create with ``create_from_options``."""

    def __init__(
        self, options: CaptureOptions, source: _Source, reader: _Reader, first: np.ndarray, first_timestamp: float
    ) -> None:
        self.options = options
        self.name = source.name
        self.fps: float = reader.fps
        self.size: tuple[int, int] = (first.shape[1], first.shape[0])
        self._slot = reader.slot
        self._stop = reader.stop
        self._thread = threading.Thread(
            target=reader.run, args=(first, first_timestamp), name=f"capture:{source.name}", daemon=False
        )
        self._thread.start()
        # Dropped without close(): the thread sees the stop event and ends by itself (it cannot be joined from here).
        weakref.finalize(self, self._stop.set)

    @classmethod
    def create_from_options(cls, options: CaptureOptions, open_device: DeviceOpener = open_device) -> Capture:
        """Open the source and start the capture thread; ``UserError`` if the source cannot deliver a frame."""
        if not options.reconnect_delays or any(d < 0 or not math.isfinite(d) for d in options.reconnect_delays):
            raise ValueError(f"reconnect_delays must be non-empty and >= 0, got {options.reconnect_delays!r}")
        source = _parse_source(options.source)
        if not source.live and (options.size is not None or options.fps is not None):
            log.info("%s: --size and --fps apply to cameras; the clip plays at its own size and rate", source.name)
        device, first = _open_or_explain(open_device, source, options)
        first_timestamp = time.monotonic()
        fps = _rate(device) or DEFAULT_FPS
        if source.kind == "camera":
            _log_mode(source, options, first, _rate(device))
        slot = _Slot()
        return cls(options, source, _Reader(open_device, source, options, device, fps, slot), first, first_timestamp)

    def latest(self, after: int = -1, timeout: float = 0.1) -> CapturedFrame | None:
        """The newest frame with ``index > after``, waiting up to ``timeout`` s; None if nothing newer arrived."""
        return self._slot.take(after, timeout)

    @property
    def state(self) -> str:
        """``"live"``, ``"reconnecting"`` (device lost, retrying) or ``"ended"`` (file finished, closed, gave up)."""
        return self._slot.state

    @property
    def frames_captured(self) -> int:
        return self._slot.captured

    @property
    def frames_dropped(self) -> int:
        """Frames captured but replaced by a newer one before anyone took them."""
        return self._slot.dropped

    def close(self) -> None:
        """Stop and join the capture thread. Safe to call more than once.

        A back-off or pacing sleep is interrupted at once; a device read in progress cannot be, so this waits for it
        (streams time out after 5 s).
        """
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(_JOIN_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning(
                    "%s: the capture thread is still blocked in the device driver; it ends when that returns", self.name
                )
        self._slot.set_state(ENDED)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_mode(source: _Source, options: CaptureOptions, first: np.ndarray, fps: float | None) -> None:
    got_size = (first.shape[1], first.shape[0])
    got = f"{got_size[0]}x{got_size[1]} at {fps or 'unknown'} fps"
    size_differs = options.size is not None and tuple(options.size) != got_size
    fps_differs = options.fps is not None and (fps is None or abs(fps - options.fps) > 0.5)
    if size_differs or fps_differs:
        wanted = "x".join(map(str, options.size)) if options.size else "default size"
        wanted += f" at {options.fps} fps" if options.fps else ""
        log.info("%s: asked for %s, the device gives %s", source.name, wanted, got)
    else:
        log.info("%s: %s", source.name, got)

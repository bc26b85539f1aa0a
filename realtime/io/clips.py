"""Reading driver clips and writing retargeted clips.

- ``open_video`` / ``VideoFileSource``: decode a file with OpenCV on a background thread, yield RGB ``Frame`` values.
- ``ClipWriter``: encode RGB frames to H.264 through an ``ffmpeg`` subprocess (``cv2.VideoWriter`` mp4v when ffmpeg is
  missing), atomically: the clip appears under its name only once it is finalised.
- ``probe_video``: what ``ffprobe`` says about a file, with an exact decoded frame count.
- ``next_free_path`` and ``interrupt_on_sigterm``: small helpers for the live app's recorder.

A ``ClipWriter`` used as a context manager finalises on any exception, Ctrl-C included: someone who interrupts a
recording wants the part already recorded. It discards the clip only on ``abort()``, an encoder failure, a second
Ctrl-C while finalising, a clip with no frames, or when it is garbage-collected without being closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO

import cv2
import numpy as np

from realtime.errors import UserError
from realtime.io.capture import FILE_PROTOCOL, opencv_quiet

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0
_QUEUE_FRAMES = 8  # enough to smooth out decode jitter, small enough to bound memory (8 x 1080p RGB = 50 MB)
_PUT_POLL_S = 0.1
_SPACE_CHECK_FRAMES = 15  # how often a clip being written looks at the free disk space
_MIN_FREE_BYTES = 64 << 20  # below this (or 1% of a small disk) a clip stops, before a write fails half-way


@dataclass(frozen=True)
class Frame:
    index: int
    timestamp: float  # seconds from the start of the clip
    image: np.ndarray  # HxWx3 uint8 RGB


# ---------------------------------------------------------------------------------------------------------------------
# Reading


class _EndOfStream:
    """Queue item after the last frame; carries the decoder thread's exception, if it had one."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _decode_loop(
    capture: cv2.VideoCapture,
    first: np.ndarray,
    frames: queue.Queue[np.ndarray | _EndOfStream],
    stop: threading.Event,
) -> None:
    """Decoder thread body. Takes no reference to the source object, so a forgotten source can still be collected."""

    def put(item: np.ndarray | _EndOfStream) -> bool:
        # Poll so that close(), a garbage-collected source or interpreter shutdown (the main thread is no longer alive
        # then, and non-daemon threads are joined) can always stop us while the consumer is not reading.
        while not stop.is_set() and threading.main_thread().is_alive():
            try:
                frames.put(item, timeout=_PUT_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    error: BaseException | None = None
    try:
        image: np.ndarray | None = first
        while image is not None:
            if not put(cv2.cvtColor(image, cv2.COLOR_BGR2RGB)):
                return
            ok, image = capture.read()
            if not ok:
                image = None
    except BaseException as exc:  # handed to the consumer, who re-raises it
        error = exc
    finally:
        capture.release()
    put(_EndOfStream(error))


class VideoFileSource:
    """Frames of a video file, decoded ahead on a background thread. Use ``open_video`` to create one.

    Iterate once: the frames are a stream. Leaving the loop early (``break``, an exception) or calling ``close()``
    stops and joins the decoder thread.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"Video {self.path} not found: check the path")
        if not self.path.is_file():
            raise UserError(f"Video {self.path} could not be read as a video: it is not a file")
        with opencv_quiet():  # our one-line error says it; OpenCV's warning on stderr would be a second line
            capture = cv2.VideoCapture(f"{FILE_PROTOCOL}{self.path}", cv2.CAP_FFMPEG)  # never a protocol
        try:
            if not capture.isOpened():
                raise UserError(
                    f"Video {self.path} could not be read as a video: not a video file OpenCV can open "
                    "(damaged, unsupported or no video stream)"
                )
            ok, first = capture.read()  # decode one frame now so an undecodable file fails here, not mid-loop
            if not ok or first is None:
                raise UserError(f"Video {self.path} could not be read as a video: no frame could be decoded")
        except BaseException:
            capture.release()
            raise

        fps = capture.get(cv2.CAP_PROP_FPS)
        self.fps: float = float(fps) if math.isfinite(fps) and fps > 0 else DEFAULT_FPS
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count: int | None = int(count) if math.isfinite(count) and count > 0 else None
        self.size: tuple[int, int] = (first.shape[1], first.shape[0])

        self._frames: queue.Queue[np.ndarray | _EndOfStream] = queue.Queue(maxsize=_QUEUE_FRAMES)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_decode_loop,
            args=(capture, first, self._frames, self._stop),
            name=f"decode:{self.path.name}",
            daemon=False,
        )
        self._iterated = False
        self._thread.start()
        # If the source is dropped without close(), let the thread notice and end by itself.
        weakref.finalize(self, self._stop.set)

    def __iter__(self) -> Iterator[Frame]:
        if self._iterated:
            raise RuntimeError("a VideoFileSource can be iterated only once; open the file again")
        self._iterated = True
        return self._iter_frames()

    def _iter_frames(self) -> Iterator[Frame]:
        index = 0
        try:
            while True:
                if self._stop.is_set():
                    return
                try:
                    item = self._frames.get(timeout=_PUT_POLL_S)
                except queue.Empty:
                    if self._thread.is_alive() or not self._frames.empty():
                        continue
                    return  # the decoder was stopped from outside and ended without an end marker
                if isinstance(item, _EndOfStream):
                    if item.error is not None:
                        raise item.error
                    break
                yield Frame(index=index, timestamp=index / self.fps, image=item)
                index += 1
            if self.frame_count is not None and index < self.frame_count:
                log.warning(
                    "%s: decoding stopped after %d of the %d frames the container announces "
                    "(truncated or damaged file?)",
                    self.path,
                    index,
                    self.frame_count,
                )
        finally:
            self.close()

    def close(self) -> None:
        """Stop decoding and join the decoder thread. Safe to call more than once, from the consuming thread."""
        self._stop.set()
        # Drain so a producer blocked on a full queue wakes up at once rather than at its next poll.
        with contextlib.suppress(queue.Empty):
            while True:
                self._frames.get_nowait()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> VideoFileSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_video(path: Path) -> VideoFileSource:
    """Open a video file for reading; raises ``UserError`` if it is missing or cannot be decoded."""
    return VideoFileSource(path)


# ---------------------------------------------------------------------------------------------------------------------
# Writing

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


def next_free_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``<stem>-1<suffix>``, ``<stem>-2<suffix>``, ..."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _rational(fps: float | Fraction) -> Fraction:
    # 29.97002997... -> 30000/1001: ffmpeg then stamps exact NTSC timestamps instead of a rounded float rate.
    return Fraction(fps).limit_denominator(1001)


class _FfmpegEncoder:
    """H.264 via an ffmpeg child fed raw RGB on stdin."""

    def __init__(
        self, ffmpeg: str, out: Path, fps: float | Fraction, size: tuple[int, int], container: str, fragmented: bool
    ) -> None:
        width, height = size
        rate = _rational(fps)
        cmd = [
            ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}",
            "-framerate", f"{rate.numerator}/{rate.denominator}", "-i", "pipe:0",
            "-an",
            # yuv420p needs even dimensions; tag BT.709 so players do not guess the colour matrix.
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2,scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
            "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
            "-fps_mode", "passthrough",  # one output frame per input frame: no drops, no duplicates
        ]  # fmt: skip
        if container in ("mp4", "mov") and fragmented:
            # a self-contained fragment per second (one key frame each): a clip cut short by a full disk or a crash
            # still plays up to its last complete fragment
            cmd += ["-g", str(max(1, round(rate))), "-movflags", "+frag_keyframe+empty_moov+default_base_moof",
                    "-flush_packets", "1"]  # each fragment reaches the disk when it is complete, not 32 kB later
        elif container in ("mp4", "mov"):
            cmd += ["-movflags", "+faststart"]
        # "file:" keeps ffmpeg from reading a protocol ("a:b/clip.mp4") or an option ("-clip.mp4") into the name
        cmd += ["-f", container, f"{FILE_PROTOCOL}{out}"]
        # stderr goes to a file: a pipe nobody reads could fill up and deadlock ffmpeg and us.
        self.frames = 0
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        log.debug("starting %s", cmd)
        # A new session keeps the terminal's Ctrl-C away from ffmpeg, so we can still close stdin and finalise.
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            bufsize=0,  # frames go straight to the pipe, nothing lingers in a Python buffer
            start_new_session=True,
        )

    def write(self, image: np.ndarray) -> None:
        assert self._proc.stdin is not None
        data = memoryview(image).cast("B")
        try:
            sent = 0
            while sent < len(data):
                sent += os.write(self._proc.stdin.fileno(), data[sent:])
        except (BrokenPipeError, ValueError) as exc:  # ValueError: stdin already closed
            message = self._last_error()
            self.kill()
            if "No space left on device" in message:
                message = f"the disk is full, free some space ({message})"
            raise UserError(f"ffmpeg stopped while writing the clip: {message}") from exc
        self.frames += 1

    def finish(self) -> None:
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()
        code = self._proc.wait()
        if code != 0:
            message = self._last_error()
            self._stderr.close()
            raise UserError(f"ffmpeg could not finish the clip (exit code {code}): {message}")
        self._stderr.close()

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(BrokenPipeError, OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        self._proc.wait()
        self._stderr.close()

    def _last_error(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._proc.wait(timeout=5)
            self._stderr.seek(0)
            lines = [line.strip() for line in self._stderr.read().decode(errors="replace").splitlines()]
            lines = [line for line in lines if line]
            if lines:
                return lines[-1]
        return "no error message (check disk space and the output path)"


class _OpenCVEncoder:
    """mp4v via cv2.VideoWriter: larger files and less compatible than H.264, but needs no ffmpeg."""

    def __init__(self, out: Path, fps: float | Fraction, size: tuple[int, int]) -> None:
        width, height = size
        self._pad = (height % 2, width % 2)  # same even padding as the ffmpeg path, so sizes match either way
        even = (width + self._pad[1], height + self._pad[0])
        self.frames = 0
        self._writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), even)
        if not self._writer.isOpened():
            raise UserError(f"OpenCV could not open {out} for writing: install ffmpeg or choose another folder")

    def write(self, image: np.ndarray) -> None:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        if any(self._pad):
            bgr = cv2.copyMakeBorder(bgr, 0, self._pad[0], 0, self._pad[1], cv2.BORDER_CONSTANT, value=(0, 0, 0))
        self._writer.write(bgr)
        self.frames += 1

    def finish(self) -> None:
        self._writer.release()

    def kill(self) -> None:
        self._writer.release()


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends; a second one gets through at once.

    Ctrl-C mostly lands while we are blocked writing to a full pipe. Raised there, it would leave half a frame in
    ffmpeg's input and an unknown count of bytes sent, so the frame is completed first and the signal delivered after.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers on the main thread only: nothing can interrupt this thread
        return
    pending: list[int] = []

    def hold(signum: int, frame: object) -> None:
        if pending:  # asked twice: the user does not want to wait for this frame
            pending.clear()
            raise KeyboardInterrupt
        pending.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        for sig in pending:
            signal.raise_signal(sig)  # to the handler that was in place: KeyboardInterrupt, or the default action


def _reserve_partial(path: Path) -> Path:
    # Not tempfile.mkstemp: its 0600 mode would survive the final rename; O_EXCL with 0666 honours the umask.
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.partial{path.suffix}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


class ClipWriter:
    """Write RGB uint8 frames of one size to a video file, atomically.

    Frames go to a hidden ``.<stem>.<random>.partial<suffix>`` file beside ``path``, renamed to ``path`` by
    ``close()``. ``abort()``, an encoder failure or a clip with no frames leave no file behind. As a context manager
    the clip is finalised on exit whatever happened, Ctrl-C included; a second Ctrl-C while finalising gives up and
    discards the clip.

    ``fragmented=True`` (the live recorder) writes an MP4/MOV in one-second fragments, MKV as it is: when the encoder
    fails mid-clip (the disk is full), the part written so far plays, so it is moved into place instead of deleted,
    and the ``UserError`` says where it is (``salvaged`` holds its path).
    """

    def __init__(
        self, path: Path, fps: float, size: tuple[int, int], overwrite: bool = False, fragmented: bool = False
    ) -> None:
        self.path = Path(path)
        self.fps = fps
        self.size = (int(size[0]), int(size[1]))
        self.overwrite = overwrite
        self.fragmented = fragmented
        self.frames_written = 0
        self.salvaged: Path | None = None
        if self.path.exists() and not overwrite:
            raise UserError(f"Output {self.path} exists: choose another name or pass --overwrite")
        if not self.path.parent.is_dir():
            raise UserError(f"Output folder {self.path.parent} does not exist: create it or choose another path")
        container = _CONTAINERS.get(self.path.suffix.lower())
        if container is None:
            raise UserError(f"Output {self.path} has an unsupported extension: use .mp4, .mov or .mkv")
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if self.size[0] <= 0 or self.size[1] <= 0:
            raise ValueError(f"size must be positive (width, height), got {size!r}")

        self._tmp = _reserve_partial(self.path)
        self._encoder: _FfmpegEncoder | _OpenCVEncoder | None = None
        try:
            ffmpeg = shutil.which("ffmpeg")
            if ffmpeg is not None:
                self._encoder = _FfmpegEncoder(ffmpeg, self._tmp, fps, self.size, container, fragmented)
            else:
                log.warning(
                    "ffmpeg not found on PATH: writing %s as mp4v with OpenCV (install ffmpeg for H.264)", self.path
                )
                self._encoder = _OpenCVEncoder(self._tmp, fps, self.size)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise

    @property
    def closed(self) -> bool:
        return self._encoder is None

    def write(self, image: np.ndarray) -> None:
        """Append one HxWx3 uint8 RGB frame of the writer's size."""
        if self._encoder is None:
            raise RuntimeError(f"ClipWriter for {self.path} is already closed")
        width, height = self.size
        if image.shape != (height, width, 3) or image.dtype != np.uint8:
            raise ValueError(
                f"expected a {height}x{width}x3 uint8 RGB frame, got shape {image.shape} dtype {image.dtype}"
            )
        encoder = self._encoder
        try:
            if encoder.frames % _SPACE_CHECK_FRAMES == 0:
                self._check_free_space()
            with _signals_deferred():
                encoder.write(np.ascontiguousarray(image))
        except UserError as err:
            self._salvage_or_discard(err)
        finally:
            self.frames_written = encoder.frames

    def _check_free_space(self) -> None:
        # ffmpeg does not always fail when its writes do (buffered output on a full disk can end with exit code 0
        # and a cut file), so the disk is watched here: stop while what was written is still whole.
        with contextlib.suppress(OSError):
            disk = os.statvfs(self._tmp.parent)
            free, total = disk.f_bavail * disk.f_frsize, disk.f_blocks * disk.f_frsize
            if free < min(_MIN_FREE_BYTES, total // 100 + 1):
                raise UserError(
                    f"the disk holding {self.path.parent} is full ({free // 1024} kB left): free some space"
                )

    def close(self) -> Path | None:
        """Finalise the clip and move it into place; returns its path, or None if no frame was written."""
        encoder = self._encoder
        if encoder is None:
            return None
        if self.frames_written == 0:
            log.warning("no frames were written: %s not created", self.path)
            self._discard()
            return None
        try:
            encoder.finish()
        except UserError as err:  # ffmpeg failed at the end (the disk filled up while it flushed)
            self._salvage_or_discard(err)
        except BaseException:  # a second Ctrl-C while waiting for ffmpeg
            self._discard()
            raise
        self._encoder = None
        target = self._move_into_place()
        log.info("wrote %d frames to %s", self.frames_written, target)
        return target

    def _move_into_place(self) -> Path:
        target = self.path
        if target.exists() and not self.overwrite:
            target = next_free_path(self.path)
            log.warning("%s appeared while recording: saving the clip as %s instead", self.path, target)
        os.replace(self._tmp, target)
        return target

    def _salvage_or_discard(self, err: UserError) -> None:
        """After an encoder failure: keep a fragmented clip's playable part, or delete the clip; raise either way."""
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            encoder.kill()
        if not (self.fragmented and self.frames_written > 0 and self._tmp.stat().st_size > 0):
            self._discard()
            raise err
        self.salvaged = self._move_into_place()
        raise UserError(f"{err}; the part recorded before it is kept in {self.salvaged}") from err

    def abort(self) -> None:
        """Stop encoding and delete what was written. Safe to call more than once."""
        self._discard()

    def _discard(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            encoder.kill()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> ClipWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()  # also on exceptions and Ctrl-C: keep what was recorded

    def __del__(self) -> None:
        if getattr(self, "_encoder", None) is not None:
            log.warning("ClipWriter for %s was never closed: discarding the clip", self.path)
            with contextlib.suppress(Exception):
                self._discard()


# ---------------------------------------------------------------------------------------------------------------------
# Probing and signals


@dataclass(frozen=True)
class VideoInfo:
    codec: str
    width: int
    height: int
    frame_rate: Fraction
    frame_count: int  # frames actually decoded by ffprobe, not the container's claim

    @property
    def fps(self) -> float:
        return float(self.frame_rate)


def probe_video(path: Path) -> VideoInfo:
    """Describe the first video stream of ``path`` with ``ffprobe`` (decodes the whole stream to count frames)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"Video {path} not found: check the path")
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        raise UserError("ffprobe not found on PATH: install ffmpeg (e.g. apt-get install ffmpeg)")
    cmd = [
        ffprobe, "-v", "error", "-select_streams", "v:0", "-count_frames",
        "-show_entries", "stream=codec_name,width,height,r_frame_rate,avg_frame_rate,nb_read_frames",
        "-of", "json", f"{FILE_PROTOCOL}{path}",
    ]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    streams = json.loads(result.stdout or "{}").get("streams") if result.returncode == 0 else None
    if not streams:
        reason = (result.stderr.strip().splitlines() or ["no video stream"])[-1]
        raise UserError(f"Video {path} could not be read as a video: {reason}")
    stream = streams[0]
    rate = Fraction(0)
    for key in ("avg_frame_rate", "r_frame_rate"):
        with contextlib.suppress(ValueError, ZeroDivisionError):
            rate = Fraction(stream.get(key, "0/0"))
        if rate > 0:
            break
    return VideoInfo(
        codec=stream.get("codec_name", "unknown"),
        width=int(stream.get("width", 0)),
        height=int(stream.get("height", 0)),
        frame_rate=rate,
        frame_count=int(stream.get("nb_read_frames", 0) or 0),
    )


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` like Ctrl-C does, so ``with`` blocks finalise.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        log.debug("interrupt_on_sigterm: not on the main thread, SIGTERM handling unchanged")
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

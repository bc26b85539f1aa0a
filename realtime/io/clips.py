"""Reading driver clips and writing retargeted clips.

- ``open_video`` / ``VideoFileSource``: decode a file with OpenCV on a background thread, yield RGB ``Frame`` values.
- ``ClipWriter``: encode RGB frames to H.264 with PyAV (FFmpeg's libraries and libx264, bundled in the ``av`` wheels:
  no ffmpeg program needed) on a writer thread, atomically: the clip appears under its name only once it is finalised.
- ``probe_video``: codec, size, rate and an exact decoded frame count, with PyAV.
- ``next_free_path`` and ``interrupt_on_sigterm``: small helpers for the live app's recorder.

A ``ClipWriter`` used as a context manager finalises on any exception, Ctrl-C included: someone who interrupts a
recording wants the part already recorded. It discards the clip only on ``abort()``, an encoder failure, a second
Ctrl-C while finalising, a clip with no frames, or when it is garbage-collected without being closed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import queue
import secrets
import shutil
import signal
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np
from av.video.reformatter import ColorPrimaries, ColorRange, Colorspace, ColorTrc

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
            # never a protocol; one decoding thread: beside the tracker and the renderer on two cores, FFmpeg's
            # second thread cost more CPU than it saved (1280x720 H.264: 1.2 against 1.5 ms a frame, no faster)
            capture = cv2.VideoCapture(f"{FILE_PROTOCOL}{self.path}", cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
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
_ENCODER = "libx264"  # in PyAV's wheels on every platform: H.264 needs no ffmpeg program
# Real time beside the tracker and the renderer on two cores: x264's CPU per frame on a 2-core EPYC (bench, real
# clip frames) is 9 / 30 ms at 640x480 / 1280x720 with veryfast, 3.7 / 9.7 ms with ultrafast, whose files are 3x larger
# at the same CRF (about 4 Mbit/s at 720p, 30 fps): the encoder must not take the second core from the renderer.
_ENCODER_OPTIONS = {"preset": "ultrafast", "crf": "18"}
_ENCODE_QUEUE_FRAMES = 8  # frames waiting for the writer thread; a slower encoder makes write() wait (8 x 1080p: 50 MB)


def next_free_path(path: Path) -> Path:
    """``path`` if nothing is there yet, else the first free ``<stem>-1<suffix>``, ``<stem>-2<suffix>``, ..."""
    path = Path(path)
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def _rational(fps: float | Fraction) -> Fraction:
    # 29.97002997... -> 30000/1001: exact NTSC timestamps instead of a rounded float rate.
    return Fraction(fps).limit_denominator(1001)


def _encoder_error(err: BaseException, path: Path) -> UserError:
    """The one-line message for an encoder or muxer failure while writing ``path``."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"the disk holding {path.parent} is full: free some space ({err.strerror})")
    reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return UserError(f"the video encoder stopped while writing {path}: {reason}")


class _Encoder:
    """H.264 with PyAV on a writer thread of its own.

    ``write`` hands over a copy of the frame (padded to even dimensions, as yuv420p needs) and returns; the thread
    converts it to yuv420p (BT.601, limited range), encodes and muxes it. OpenCV and PyAV release the GIL in the
    conversion and in the encoder, so the caller's thread pays only for the copy. A failure on the thread is kept
    and raised, as a ``UserError``, by the next ``write`` or by ``finish``.
    """

    def __init__(
        self, out: Path, label: Path, fps: float | Fraction, size: tuple[int, int], container: str, fragmented: bool
    ) -> None:
        width, height = size
        self._pad = ((0, height % 2), (0, width % 2), (0, 0))
        self._label = label
        rate = _rational(fps)
        options = {}
        if container in ("mp4", "mov"):
            # fragmented: a self-contained fragment per second (one key frame each), flushed to the disk when it is
            # complete, so a clip cut short by a full disk or a crash still plays up to its last whole fragment
            options = ({"movflags": "+frag_keyframe+empty_moov+default_base_moof", "flush_packets": "1"}
                       if fragmented else {"movflags": "+faststart"})
        if _ENCODER not in av.codecs_available:
            raise UserError(f"this PyAV build has no {_ENCODER} (H.264) encoder: reinstall it from PyPI with "
                            "`pip install --force-reinstall av`")
        try:
            # "file:" keeps FFmpeg from reading a protocol ("a:b/clip.mp4") into the name
            self._container = av.open(f"{FILE_PROTOCOL}{out}", mode="w", format=container, options=options)
        except av.error.FFmpegError as err:
            raise _encoder_error(err, label) from err
        try:
            stream = self._container.add_stream(_ENCODER, rate=rate, options=_ENCODER_OPTIONS)
            stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
            codec = stream.codec_context
            # tagged so that players do not guess the colour matrix: BT.601's, as OpenCV converts (in a tenth of
            # swscale's time: 0.26 against 3.96 ms CPU a 640x480 frame, 2-core EPYC), in sRGB's (BT.709) primaries
            codec.colorspace, codec.color_range = Colorspace.ITU601, ColorRange.MPEG
            codec.color_primaries, codec.color_trc = ColorPrimaries.BT709, ColorTrc.BT709
            # one thread (the writer's own): beside the tracker and the renderer every thread costs, and x264's own
            # threads took 10-35% more CPU per frame for the same file (ultrafast, 2-core EPYC: 2.6 against 3.0-3.7 ms
            # at 640x480, 8.0 against 8.1-9.6 ms at 1280x720); one thread still encodes 720p at over 100 frames/s
            codec.thread_type, codec.thread_count = "FRAME", 1
            if fragmented:
                codec.gop_size = max(1, round(rate))
        except BaseException:
            self._container.close()  # Windows cannot delete a file that is still open
            raise
        self._stream = stream
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=_ENCODE_QUEUE_FRAMES)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self.frames = 0  # frames handed over
        self.encoded = 0  # frames encoded: the count that matters once finish() returned
        self._thread = threading.Thread(target=self._run, name=f"encode:{label.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        container, stream = self._container, self._stream
        try:
            while (image := self._queue.get()) is not None and not self._stop.is_set():
                frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
                frame.pts = self.encoded
                container.mux(stream.encode(frame))
                self.encoded += 1
            if not self._stop.is_set():
                container.mux(stream.encode(None))  # the frames libx264 still holds
        except BaseException as err:  # kept for the caller's thread, which raises it
            self._error = err
        finally:
            try:
                container.close()  # writes the index (or the last fragment) unless a write failed before
            except BaseException as err:
                self._error = self._error or err
            self._stop.set()
            with contextlib.suppress(queue.Empty):  # a write() waiting for room gives up at its next look
                while True:
                    self._queue.get_nowait()

    def raise_failure(self) -> None:
        if self._error is not None:
            raise _encoder_error(self._error, self._label) from self._error

    def _put(self, item: np.ndarray | None) -> None:
        while True:
            self.raise_failure()
            if self._stop.is_set():
                raise UserError(f"the video encoder for {self._label} has stopped")
            try:
                self._queue.put(item, timeout=_PUT_POLL_S)
                return
            except queue.Full:
                continue

    def write(self, image: np.ndarray) -> None:
        self._put(np.pad(image, self._pad) if any(self._pad[0] + self._pad[1]) else image.copy())
        self.frames += 1

    def finish(self) -> None:
        """Encode what is queued, write the index and close the file; a UserError if anything failed."""
        self._put(None)
        self._thread.join()
        self.raise_failure()

    def kill(self) -> None:
        """Stop at once and close the file (its content is not wanted). Safe to call more than once."""
        self._stop.set()
        with contextlib.suppress(queue.Empty, queue.Full):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wakes a thread waiting for a frame
        if self._thread is not threading.current_thread():
            self._thread.join()


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
    """Write RGB uint8 frames of one size to an H.264 video file (PyAV), atomically.

    Frames go to a hidden ``.<stem>.<random>.partial<suffix>`` file beside ``path``, renamed to ``path`` by
    ``close()``. ``abort()``, an encoder failure or a clip with no frames leave no file behind. As a context manager
    the clip is finalised on exit whatever happened, Ctrl-C included; a second Ctrl-C while finalising gives up and
    discards the clip. Encoding runs on a writer thread, so ``write`` returns once the frame is handed over.

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
        self._encoder: _Encoder | None = None
        try:
            self._encoder = _Encoder(self._tmp, self.path, fps, self.size, container, fragmented)
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
                encoder.raise_failure()  # the encoder's own error, if it has met one, says more than the free space
                self._check_free_space()
            encoder.write(image)
        except UserError as err:
            self._salvage_or_discard(err)
        finally:
            self.frames_written = encoder.frames

    def _check_free_space(self) -> None:
        # A write that fails half-way can cut a fragment, so the disk is watched here: stop while what was written is
        # still whole. shutil.disk_usage works on every platform (os.statvfs is POSIX only).
        with contextlib.suppress(OSError):
            usage = shutil.disk_usage(self._tmp.parent)
            if usage.free < min(_MIN_FREE_BYTES, usage.total // 100 + 1):
                raise UserError(
                    f"the disk holding {self.path.parent} is full ({usage.free // 1024} kB left): free some space"
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
            # exact even when Ctrl-C landed between handing a frame over and counting it
            self.frames_written = encoder.encoded
        except UserError as err:  # the encoder failed at the end (the disk filled up while it flushed)
            self._salvage_or_discard(err)
        except BaseException:  # a second Ctrl-C while waiting for the encoder
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
    frame_count: int  # frames actually decoded, not the container's claim

    @property
    def fps(self) -> float:
        return float(self.frame_rate)


def probe_video(path: Path) -> VideoInfo:
    """Describe the first video stream of ``path`` (PyAV; decodes the whole stream to count its frames).

    Damaged packets (the cut end of a recording) are skipped, as ffprobe does; they are not counted.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"Video {path} not found: check the path")
    try:
        container = av.open(f"{FILE_PROTOCOL}{path}")
    except av.error.FFmpegError as err:
        raise UserError(f"Video {path} could not be read as a video: {err.strerror or err}") from err
    with container:
        if not container.streams.video:
            raise UserError(f"Video {path} could not be read as a video: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = 0
        with contextlib.suppress(av.error.FFmpegError):  # a read error ends the stream where it is
            for packet in container.demux(stream):
                with contextlib.suppress(av.error.InvalidDataError):
                    frames += len(packet.decode())
        return VideoInfo(
            codec=stream.codec_context.name,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            frame_rate=Fraction(stream.average_rate or stream.guessed_rate or 0),
            frame_count=frames,
        )


def _termination_signals() -> tuple[int, ...]:
    """The signals that ask this process to end besides Ctrl-C: SIGTERM where the platform delivers it (POSIX; Windows
    defines it but never sends it to another process), and SIGBREAK (Ctrl-Break) on Windows."""
    return tuple(getattr(signal, name) for name in ("SIGTERM", "SIGBREAK") if hasattr(signal, name))


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM (and Ctrl-Break on Windows) raise ``KeyboardInterrupt`` like Ctrl-C does, so ``with``
    blocks finalise.

    Only the main thread can install signal handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        log.debug("interrupt_on_sigterm: not on the main thread, SIGTERM handling unchanged")
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in _termination_signals()}
    try:
        yield
    finally:
        for sig, handler_before in previous.items():
            signal.signal(sig, handler_before)

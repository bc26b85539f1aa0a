"""The live loop: camera frames in; avatar frames out to the virtual camera, the preview window and the recorder.

By default everything but capture runs on this thread, which owns the GL context: a new camera frame is tracked,
retargeted, drawn and handed to the outputs at once (lowest latency). With `LiveOptions.worker` (the DECA path, whose
networks take most of a frame), tracking and posing run on a `TrackingWorker` thread that keeps only its newest
result, and this thread only draws: the two overlap on the two cores. When the camera stalls or is reconnecting, or
the user pauses, the last avatar frame is sent again at the output rate, so a video call never freezes. The number
keys switch between the pipeline's prepared identities at once: the last pose is drawn again with the new one.
"""

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from realtime.errors import UserError
from realtime.head import AvatarGeometry, AvatarPose, Pipeline
from realtime.io.capture import Capture, CapturedFrame
from realtime.io.clips import ClipWriter, interrupt_on_sigterm, next_free_path
from realtime.io.virtual_camera import VirtualCamera
from realtime.io.window import Key, Overlay, PreviewWindow

log = logging.getLogger(__name__)


HISTORY = 108_000


@dataclass(frozen=True)
class LiveOptions:
    fps: float | None = None  # output rate; None: the camera's
    record: Path | None = None  # record from the start into this file
    record_path: Path = Path("retarget.mp4")  # where the record key saves (next free name: retarget-1.mp4, ...)
    overwrite: bool = False
    max_frames: int | None = None  # stop after this many output frames (tests, benchmarks)
    stall_periods: float = 1.5  # no camera frame for this many frame periods: send the last avatar frame again
    worker: bool = False  # track and pose on a worker thread (see the module docstring)


@dataclass
class LiveStats:
    frames_out: int = 0  # frames handed to the outputs
    frames_rendered: int = 0  # camera frames retargeted
    frames_held: int = 0  # repeats of the last avatar frame (camera stalled, reconnecting or paused)
    frames_with_face: int = 0
    # capture -> handed to the virtual camera, per new frame; and time.monotonic() of each output frame. Bounded (an
    # hour at 30 fps) so that a whole meeting does not grow memory.
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    output_times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    recordings: list[Path] = field(default_factory=list)


class Recorder:
    """The record key's clip: start, write, stop; a failing disk stops the recording, not the app."""

    def __init__(self, fps: float, size: tuple[int, int], overwrite: bool) -> None:
        self.fps, self.size, self.overwrite = fps, size, overwrite
        self._writer: ClipWriter | None = None
        self._started = 0.0

    @property
    def active(self) -> bool:
        return self._writer is not None

    @property
    def name(self) -> str | None:
        return self._writer.path.name if self._writer is not None else None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started if self._writer is not None else 0.0

    def start(self, path: Path) -> Path:
        self._writer = ClipWriter(path, self.fps, self.size, overwrite=self.overwrite, fragmented=True)
        self._started = time.monotonic()
        log.info("recording to %s", path)
        return path

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            return
        try:
            self._writer.write(image)
        except (UserError, OSError) as err:
            log.error("recording stopped: %s", err)
            self.stop()

    def stop(self) -> Path | None:
        writer, self._writer = self._writer, None
        if writer is None:
            return None
        try:
            path = writer.close()
        except (UserError, OSError) as err:
            log.error("the recording could not be finalised: %s", err)
            return None
        if path is not None:
            log.info("saved %s (%d frames)", path, writer.frames_written)
        return path


@dataclass(frozen=True, eq=False)
class Prepared:
    """A camera frame, tracked and posed: all that is left is to draw it."""

    frame: CapturedFrame
    face: object | None
    pose: AvatarPose
    geometry: AvatarGeometry


class _Newest:
    """A one-slot box holding the newest result of a stage (anything with ``.frame.index``), to wait on."""

    def __init__(self) -> None:
        self._item: Any = None
        self._error: BaseException | None = None
        self._changed = threading.Condition()

    def put(self, item: Any) -> None:
        with self._changed:
            self._item = item
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._changed:
            self._error = error
            self._changed.notify_all()

    def get(self, after: int, timeout: float) -> Any:
        """The newest item for a frame with index > ``after``, waiting up to ``timeout``; None if none came."""
        def ready() -> bool:
            return self._error is not None or (self._item is not None and self._item.frame.index > after)

        with self._changed:
            self._changed.wait_for(ready, timeout=timeout)
            if self._error is not None:
                raise self._error
            return self._item if self._item is not None and self._item.frame.index > after else None


@dataclass(frozen=True, eq=False)
class Tracked:
    frame: CapturedFrame
    face: object | None


class TrackingWorker:
    """Tracks the newest camera frame on one thread and poses the newest tracked frame on another (as the offline
    path, so that DECA's encoder and detail decoder overlap); each stage keeps only its newest result."""

    def __init__(self, pipeline: Pipeline, capture: Capture, fps: float) -> None:
        self.pipeline, self.capture, self.fps = pipeline, capture, fps
        self._tracked, self._prepared = _Newest(), _Newest()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._guard, args=(self._track, self._tracked), name="track:live"),
                         threading.Thread(target=self._guard, args=(self._pose, self._prepared), name="track:pose")]
        for thread in self._threads:
            thread.start()

    def _guard(self, stage: Any, output: _Newest) -> None:
        try:
            stage()
        except BaseException as err:  # handed to the GL thread, which decides
            output.fail(err)
            self._prepared.fail(err)

    def _track(self) -> None:
        last_index = -1
        while not self._stop.is_set():
            frame = self.capture.latest(after=last_index, timeout=0.1)
            if frame is not None:
                last_index = frame.index
                self._tracked.put(Tracked(frame, self.pipeline.track(frame.image, frame.timestamp)))

    def _pose(self) -> None:
        last_index, last_time = -1, None
        while not self._stop.is_set():
            tracked = self._tracked.get(last_index, timeout=0.1)
            if tracked is None:
                continue
            frame = tracked.frame
            dt = 1.0 / self.fps if last_time is None else frame.timestamp - last_time
            last_index, last_time = frame.index, frame.timestamp
            pose = self.pipeline.pose(tracked.face, dt)
            self._prepared.put(Prepared(frame, tracked.face, pose, self.pipeline.geometry(pose)))

    def latest(self, after: int, timeout: float) -> Prepared | None:
        """The newest prepared frame with index > ``after``, waiting up to ``timeout``; None if none came."""
        return self._prepared.get(after, timeout)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


class LiveLoop:
    def __init__(
        self,
        pipeline: Pipeline,
        capture: Capture,
        virtual_camera: VirtualCamera | None,
        window: PreviewWindow | None,
        options: LiveOptions = LiveOptions(),
    ) -> None:
        self.pipeline = pipeline
        self.capture = capture
        self.virtual_camera = virtual_camera
        self.window = window
        self.options = options
        self.fps = options.fps or capture.fps
        self.recorder = Recorder(self.fps, pipeline.renderer.options.size, options.overwrite)
        self.stats = LiveStats()
        self.paused = False
        self.show_help = False
        self._message: tuple[str, float] | None = None
        self._last_face: object | None = None  # what pipeline.track returned last
        self._camera_image: np.ndarray | None = None
        self._thumbnails = identity_thumbnails(pipeline)
        self._identity = 0  # the selected identity
        self._pose = pipeline.neutral_pose()  # the last pose drawn: redrawn at once when the identity changes
        self._avatar = pipeline.render_pose(self._pose)
        self._tracking = False

    def run(self) -> LiveStats:
        """Until the quit key, the end of a clip, max_frames, Ctrl-C or SIGTERM; the recording is always finalised."""
        if self.options.record is not None:
            self.stats.recordings.append(self.recorder.start(self.options.record))
        try:
            with interrupt_on_sigterm():
                self._loop()
        except KeyboardInterrupt:
            log.info("interrupted: stopping")
        finally:
            self.recorder.stop()
        return self.stats

    def _loop(self) -> None:
        worker = TrackingWorker(self.pipeline, self.capture, self.fps) if self.options.worker else None
        try:
            self._run_outputs(worker)
        finally:
            if worker is not None:
                worker.close()

    def _run_outputs(self, worker: TrackingWorker | None) -> None:
        period = 1.0 / self.fps
        last_index, last_capture_time = -1, None
        last_output = time.monotonic()
        while not self._finished():
            if self.window is not None and not self._handle_keys(self.window.poll()):
                return
            wait = min(max(0.0, last_output + self.options.stall_periods * period - time.monotonic()), period)
            if worker is not None:
                prepared = worker.latest(last_index, wait)
                frame = prepared.frame if prepared is not None else None
            else:
                prepared, frame = None, self.capture.latest(after=last_index, timeout=wait)
            if frame is not None:
                last_index = frame.index
                self._camera_image = frame.image
                if self.paused:
                    self._emit(held=True)
                else:
                    if prepared is None:
                        dt = period if last_capture_time is None else frame.timestamp - last_capture_time
                        face = self.pipeline.track(frame.image, frame.timestamp)
                        pose = self.pipeline.pose(face, dt)
                        prepared = Prepared(frame, face, pose, self.pipeline.geometry(pose))
                    self._draw(prepared)
                    self._emit(captured_at=frame.timestamp)
                last_capture_time = frame.timestamp
                last_output = time.monotonic()
            elif self.capture.state == "ended":
                log.info("the source ended")
                return
            elif time.monotonic() - last_output >= self.options.stall_periods * period:
                self._emit(held=True)
                last_output += period  # keep the output rate while the camera is away

    def _finished(self) -> bool:
        return self.options.max_frames is not None and self.stats.frames_out >= self.options.max_frames

    def _draw(self, prepared: Prepared) -> None:
        self._avatar = self.pipeline.draw(prepared.geometry)
        self._pose = prepared.pose
        self._last_face, self._tracking = prepared.face, prepared.face is not None
        self.stats.frames_rendered += 1
        self.stats.frames_with_face += prepared.face is not None

    def _emit(self, captured_at: float | None = None, held: bool = False) -> None:
        """Hand the current avatar frame to every output: the virtual camera first (it is the latency that counts)."""
        if self.virtual_camera is not None and not self.virtual_camera.send(self._avatar):
            self.virtual_camera = None  # it logged why; the other outputs go on
        now = time.monotonic()
        if captured_at is not None:
            self.stats.latencies_ms.append((now - captured_at) * 1000)
        self.stats.output_times.append(now)
        self.stats.frames_out += 1
        self.stats.frames_held += held
        self.recorder.write(self._avatar)
        if self.window is not None:
            self.window.show(self._camera_image, self._avatar, self._overlay())

    def _overlay(self) -> Overlay:
        message = None
        if self._message is not None and time.monotonic() - self._message[1] < 3.0:
            message = self._message[0]
        times = self.stats.output_times
        recent = [times[i] for i in range(max(0, len(times) - 30), len(times))]
        fps = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 1 and recent[-1] > recent[0] else 0.0
        return Overlay(
            fps=fps,
            latency_ms=self.stats.latencies_ms[-1] if self.stats.latencies_ms else None,
            tracking=self._tracking,
            camera_state=self.capture.state,
            recording=self.recorder.name,
            recording_seconds=self.recorder.seconds,
            paused=self.paused,
            show_help=self.show_help,
            message=message,
            thumbnails=self._thumbnails,
            identity=self._identity,
        )

    def _say(self, message: str) -> None:
        log.info("%s", message)
        self._message = (message, time.monotonic())

    def _handle_keys(self, keys: list[Key]) -> bool:
        """Act on the keys pressed since the last frame; False to quit."""
        for key in keys:
            if key is Key.QUIT:
                return False
            if key is Key.RECORD:
                if self.recorder.active:
                    path = self.recorder.stop()
                    self._say(f"saved {path.name}" if path else "nothing recorded")
                else:
                    path = self.recorder.start(next_free_path(self.options.record_path))
                    self.stats.recordings.append(path)
                    self._say(f"recording {path.name}")
            elif key is Key.NEUTRAL:
                if self._last_face is not None and self._tracking:
                    self.pipeline.calibrate_neutral(self._last_face)
                    self._say("neutral face calibrated")
                else:
                    self._say("no face to calibrate: look at the camera and press n again")
            elif key.identity_index is not None:
                self._select_identity(key.identity_index)
            elif key is Key.HELP:
                self.show_help = not self.show_help
            elif key is Key.PAUSE:
                self.paused = not self.paused
                self._say("paused" if self.paused else "resumed")
        return True

    def _select_identity(self, index: int) -> None:
        """Switch to a prepared identity and redraw the current pose with it (the outputs show it at once)."""
        names = self.pipeline.identity_names
        if index >= len(names):
            keys = "key 1" if len(names) == 1 else f"keys 1-{len(names)}"
            self._say(f"no identity {index + 1}: {len(names)} prepared ({keys}); give more with --identity")
            return
        self.pipeline.select_identity(index)
        self._identity = index
        self._avatar = self.pipeline.render_pose(self._pose)
        self._say(f"identity {index + 1}: {names[index]}")


def identity_thumbnails(pipeline: Pipeline) -> tuple[np.ndarray, ...]:
    """Each prepared identity's neutral face, a square around the head; none for a single identity (GL thread)."""
    if len(pipeline.identity_names) < 2:
        return ()
    thumbnails = []
    for index in range(len(pipeline.identity_names)):
        pipeline.select_identity(index)
        image = pipeline.render_pose(pipeline.neutral_pose())
        height, width = image.shape[:2]
        side = round(0.7 * height)  # the head fills the middle of the frame (RenderOptions.framing_height)
        top, left = (height - side) // 2, (width - side) // 2
        thumbnails.append(cv2.resize(image[top : top + side, left : left + side], (128, 128),
                                     interpolation=cv2.INTER_AREA))
    pipeline.select_identity(0)
    return tuple(thumbnails)

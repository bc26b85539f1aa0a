"""The live loop: camera frames in; avatar frames out to the virtual camera, the recorder and the preview window.

Its threads, each keeping only the newest of what it hands on (nothing queues, so latency stays bounded):

- capture (``Capture``): the newest camera frame, in a one-frame slot.
- the GL thread, the one that calls ``run`` (it owns the GL context, and the preview window, which macOS wants on the
  main thread): takes the newest camera frame, tracks, poses and draws it as fast as it can, and hands the finished
  avatar frame to the output thread, replacing one the output thread has not sent yet. It also reads the keys and
  shows the preview after every frame, or every output period while no camera frame comes.
- output (``OutputClock``): once per output period on a steady clock (the camera's rate, or ``LiveOptions.fps``), the
  newest finished avatar frame to the virtual camera, then the recorder: a new one when the GL thread finished one
  since the last tick, else the last one again. So the outputs keep their rate whatever the GL thread does: when the
  machine draws slower than the camera, while one frame takes long, while the camera stalls or reconnects, while the
  user pauses. A new frame waits for its tick: while the machine keeps up, the ticks lock onto the frames (a quarter
  period after each one is drawn, ``OutputClock._nudge``); when it does not, up to a period.
- with ``LiveOptions.worker`` (what the app runs): tracking and posing run on a ``TrackingWorker`` (two threads), and
  the GL thread only draws; the stages overlap on the two cores. On the 2-core EPYC (bench --live, 640x480) the
  photo look's latency p95 went from 59 to 42 ms; at 1280x720 it drew 548 of 600 camera frames instead of 430.

When the GL thread draws fewer frames than the outputs need, the loop says so once, in the log and the overlay, with
the rate and what to try (``PaceWatch``, ``too_slow_message``). The number keys switch between the pipeline's prepared
identities at once: the last pose is drawn again with the new one.
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
    worker: bool = False  # track and pose on a worker thread (see the module docstring)


@dataclass
class LiveStats:
    frames_out: int = 0  # frames handed to the outputs, one per output period
    frames_rendered: int = 0  # camera frames retargeted and drawn
    # output frames that show no newly drawn camera frame: the last avatar frame again (the GL thread had not finished
    # a newer one by the output tick: machine too slow, camera stalled or reconnecting, paused), or redrawn with
    # another identity. Drawn frames that a newer one replaced before a tick (or not sent yet when the loop stopped):
    # frames_rendered - (frames_out - frames_held).
    frames_held: int = 0
    frames_with_face: int = 0  # of frames_rendered
    # capture -> handed to the virtual camera, per new output frame; and time.monotonic() of each output frame. Bounded
    # (an hour at 30 fps) so that a whole meeting does not grow memory.
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    output_times: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    recordings: list[Path] = field(default_factory=list)


class Recorder:
    """The record key's clip: start, write, stop; a failing disk stops the recording, not the app. The output thread
    writes while the GL thread starts and stops it (keys); finalising a clip does not hold up the writes."""

    def __init__(self, fps: float, size: tuple[int, int], overwrite: bool) -> None:
        self.fps, self.size, self.overwrite = fps, size, overwrite
        self._writer: ClipWriter | None = None
        self._started = 0.0
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self._writer is not None

    @property
    def name(self) -> str | None:
        writer = self._writer
        return writer.path.name if writer is not None else None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self._started if self._writer is not None else 0.0

    def start(self, path: Path) -> Path:
        writer = ClipWriter(path, self.fps, self.size, overwrite=self.overwrite, fragmented=True)
        with self._lock:
            self._writer, self._started = writer, time.monotonic()
        log.info("recording to %s", path)
        return path

    def write(self, image: np.ndarray) -> None:
        with self._lock:
            writer = self._writer
            if writer is None:
                return
            try:
                writer.write(image)
                return
            except (UserError, OSError) as err:
                log.error("recording stopped: %s", err)
                self._writer = None
        self._close(writer)

    def stop(self) -> Path | None:
        with self._lock:
            writer, self._writer = self._writer, None
        return self._close(writer) if writer is not None else None

    @staticmethod
    def _close(writer: ClipWriter) -> Path | None:
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
    identity: int = 0  # the identity selected when it was posed


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
        self.identity = 0  # the selected identity, set by the GL thread: each prepared frame notes it
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
            identity = self.identity  # read before posing: a switch meanwhile makes the GL thread pose it again
            self._prepared.put(Prepared(frame, tracked.face, pose, self.pipeline.geometry(pose), identity))

    def latest(self, after: int, timeout: float) -> Prepared | None:
        """The newest prepared frame with index > ``after``, waiting up to ``timeout``; None if none came."""
        return self._prepared.get(after, timeout)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@dataclass(frozen=True, eq=False)
class AvatarFrame:
    """A finished avatar frame, handed from the GL thread to the output thread."""

    image: np.ndarray  # HxWx3 uint8 RGB
    captured_at: float | None = None  # its camera frame's capture time; None: the last pose redrawn (start, identity)


PHASE_MARGIN, PHASE_STEP = 0.25, 0.05  # in output periods: see OutputClock._nudge


class OutputClock:
    """The output thread: every output period on a steady clock, the newest finished avatar frame to the virtual camera
    (first: its latency is the one that counts), then the recorder. ``put`` (GL thread) replaces the newest frame; a
    tick sends it as new once, and again as a held frame until a newer one comes. A tick that comes late (a slow device
    or disk, a busy machine) is made up at once, so the recorder keeps the wall clock's time; ticks missed by more than
    a period are skipped, not made up in a burst. Stops after ``max_frames``, on ``stop``, or on an error, which it
    keeps in ``error`` for the GL thread; ``stopped`` is set in every case."""

    def __init__(self, virtual_camera: VirtualCamera | None, recorder: Recorder, stats: LiveStats, fps: float,
                 max_frames: int | None, first: AvatarFrame, stopped: threading.Event) -> None:
        self.virtual_camera, self.recorder, self.stats = virtual_camera, recorder, stats
        self.period, self.max_frames, self.stopped = 1.0 / fps, max_frames, stopped
        self.error: BaseException | None = None
        self._newest, self._sent, self._put_at = first, True, 0.0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="live:output")

    def start(self) -> None:
        """Start the ticks, if not started yet."""
        if self._thread.ident is None:
            self._thread.start()

    def put(self, frame: AvatarFrame) -> None:
        with self._lock:
            self._newest, self._sent, self._put_at = frame, False, time.monotonic()

    def stop(self) -> None:
        self.stopped.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        steady = time.monotonic()  # the tick before the phase offset: exactly one period apart
        offset, last_waited = 0.0, None
        try:
            while not self.stopped.wait(max(0.0, steady + offset - time.monotonic())):
                waited = self._send()
                if self.max_frames is not None and self.stats.frames_out >= self.max_frames:
                    break
                if waited is not None and last_waited is not None:
                    offset = self._nudge(offset, waited)
                last_waited = waited
                steady += self.period
                behind = time.monotonic() - (steady + offset)
                if behind > self.period:
                    steady += self.period * int(behind / self.period)
        except BaseException as err:  # handed to the GL thread, which raises it
            self.error = err
        finally:
            self.stopped.set()

    def _nudge(self, offset: float, waited: float) -> float:
        """The phase lock, while every tick has a new frame (the machine keeps up with the camera): the ticks move a
        little (``PHASE_STEP`` of a period per frame) towards ``PHASE_MARGIN`` of a period after the frames are
        finished, so that a frame goes out soon after it is drawn instead of up to a period later, yet one a little
        late still makes its tick (else it is repeated, then skipped). A frame that waited most of a period most
        likely just missed the tick before: the ticks move later. The offset stays within half a period of the steady
        clock, so the rate stays the same."""
        error = waited - PHASE_MARGIN * self.period
        if error > self.period / 2:
            error -= self.period
        step = PHASE_STEP * self.period
        return min(max(offset - min(max(error, -step), step), -self.period / 2), self.period / 2)

    def _send(self) -> float | None:
        """Send the newest frame; how long it waited for this tick if it is a new one, else None."""
        with self._lock:
            frame, new, put_at = self._newest, not self._sent and self._newest.captured_at is not None, self._put_at
            self._sent = True
        # counted before the outputs get the frame, so that a device watching the stats knows what it receives
        self.stats.frames_out += 1
        self.stats.frames_held += not new
        waited = time.monotonic() - put_at
        if self.virtual_camera is not None and not self.virtual_camera.send(frame.image):
            self.virtual_camera = None  # it logged why; the other outputs go on
        now = time.monotonic()
        if new:
            self.stats.latencies_ms.append((now - frame.captured_at) * 1000)
        self.stats.output_times.append(now)
        self.recorder.write(frame.image)
        return waited if new else None


SMALL_SIZE = (640, 480)  # the default output size: below it, a smaller picture saves little and looks worse
CAMERA_RATES = (25, 20, 15, 10, 5)  # rates webcams offer, to suggest a --fps the camera can give


def too_slow_message(rate: float, size: tuple[int, int]) -> str:
    """What the loop says once when it draws frames at ``rate`` per second, fewer than its outputs need: the rate, and
    what makes each frame cheaper: the default size when the output is larger (fewer pixels to draw, read back, send
    and encode); else a lower output rate that the machine keeps up with (``--fps``, also asked of the camera): every
    output frame is then a new one, and there are fewer frames to send and encode each second. No look is advised:
    neither is cheaper everywhere (the photo look draws a 640x480 frame in 0.7x the head look's time on a 2-core EPYC,
    tools/bench.py)."""
    if size[0] * size[1] > SMALL_SIZE[0] * SMALL_SIZE[1]:
        return f"rendering at {round(rate)} fps: try --size {SMALL_SIZE[0]}x{SMALL_SIZE[1]}"
    fps = next((r for r in CAMERA_RATES if r <= rate), max(1, int(rate)))
    return f"rendering at {round(rate)} fps: try --fps {fps}"


WARMUP_S = 1.0  # the first second of drawing is slow on any machine (first inferences, shaders, caches)
WINDOW_S = 2.0  # long enough that one slow frame (a 150 ms hiccup costs 4 frames of 60) is not a slow machine
KEEP_UP = 0.85  # drawing fewer than this share of the frames the outputs need is too slow


class PaceWatch:
    """Whether the GL thread draws as many frames as the outputs need, judged on its draws over ``WINDOW_S`` windows
    after ``WARMUP_S``: too slow when it draws fewer than ``KEEP_UP`` of the camera frames that came meanwhile (the
    frame indices count them, skipped ones included) or of the output rate, whichever is lower. A camera that
    delivers fewer frames (a dark room, a stall) is not the machine's fault, nor a pause (``restart``)."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.reported = False
        self._first_draw: float | None = None
        self._window: tuple[float, int, int] | None = None  # when it started, its first camera frame index, draws

    def restart(self) -> None:
        self._window = None

    def drawn(self, index: int, now: float) -> float | None:
        """Note a drawn camera frame (its index, time.monotonic()); the rate of drawing the first time that it is too
        slow, else None."""
        if self.reported:
            return None
        if self._first_draw is None:
            self._first_draw = now
        if now - self._first_draw < WARMUP_S:
            return None
        if self._window is None:
            self._window = (now, index, 0)
            return None
        started, first_index, draws = self._window
        seconds = now - started
        if seconds < WINDOW_S:
            self._window = (started, first_index, draws + 1)
            return None
        self._window = (now, index, 0)
        rate = (draws + 1) / seconds
        if rate < KEEP_UP * min((index - first_index) / seconds, self.fps):
            self.reported = True
            return rate
        return None


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
        self._stopped = threading.Event()
        self._outputs: OutputClock | None = None
        self._worker: TrackingWorker | None = None
        self._pace = PaceWatch(self.fps)
        self._drawn_at: deque[float] = deque(maxlen=30)  # when the last frames were drawn: the overlay's rate
        self._message: tuple[str, float] | None = None  # and until when it shows
        self._last_face: object | None = None  # what pipeline.track returned last
        self._camera_image: np.ndarray | None = None
        self._thumbnails = identity_thumbnails(pipeline)
        self._identity = 0  # the selected identity
        self._pose = pipeline.neutral_pose()  # the last pose drawn: redrawn at once when the identity changes
        self._avatar = pipeline.render_pose(self._pose)
        self._tracking = False

    def run(self) -> LiveStats:
        """Until the quit key, the end of a clip, max_frames, ``stop``, Ctrl-C or SIGTERM; the recording is always
        finalised."""
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

    def stop(self) -> None:
        """Ask ``run`` to return, from any thread: the output thread sends no frame after the one it may be sending."""
        self._stopped.set()

    def _loop(self) -> None:
        outputs = OutputClock(self.virtual_camera, self.recorder, self.stats, self.fps, self.options.max_frames,
                              AvatarFrame(self._avatar), self._stopped)
        worker = TrackingWorker(self.pipeline, self.capture, self.fps) if self.options.worker else None
        self._outputs, self._worker = outputs, worker
        try:
            self._draw_newest(outputs, worker)
        finally:
            outputs.stop()
            if worker is not None:
                worker.close()
        if outputs.error is not None:
            raise outputs.error

    def _draw_newest(self, outputs: OutputClock, worker: TrackingWorker | None) -> None:
        """The GL thread: the newest camera frame (or the worker's newest prepared one) drawn as soon as it comes."""
        period = 1.0 / self.fps
        last_index, last_capture_time = -1, None
        while not self._stopped.is_set():
            if self.window is not None and not self._handle_keys(self.window.poll()):
                return
            if worker is not None:
                prepared = worker.latest(last_index, period)
                frame = prepared.frame if prepared is not None else None
            else:
                prepared, frame = None, self.capture.latest(after=last_index, timeout=period)
            if frame is not None:
                last_index = frame.index
                self._camera_image = frame.image
                if not self.paused:
                    if prepared is None:
                        dt = period if last_capture_time is None else frame.timestamp - last_capture_time
                        face = self.pipeline.track(frame.image, frame.timestamp)
                        pose = self.pipeline.pose(face, dt)
                        prepared = Prepared(frame, face, pose, self.pipeline.geometry(pose), self._identity)
                    self._draw(prepared)
                last_capture_time = frame.timestamp
            elif self.capture.state == "ended":
                log.info("the source ended")
                return
            # from the first frame drawn, or a period without one: the neutral avatar until the camera comes
            outputs.start()
            if self.window is not None:
                self.window.show(self._camera_image, self._avatar, self._overlay())

    def _draw(self, prepared: Prepared) -> None:
        geometry = prepared.geometry
        if prepared.identity != self._identity:  # posed on the worker before the identity key: not the old face again
            geometry = self.pipeline.geometry(prepared.pose)
        self._avatar = self.pipeline.draw(geometry)
        self._pose = prepared.pose
        self._last_face, self._tracking = prepared.face, prepared.face is not None
        self.stats.frames_rendered += 1
        self.stats.frames_with_face += prepared.face is not None
        if self._outputs is not None:
            self._outputs.put(AvatarFrame(self._avatar, prepared.frame.timestamp))
        now = time.monotonic()
        self._drawn_at.append(now)
        rate = self._pace.drawn(prepared.frame.index, now)
        if rate is not None:
            size = self.pipeline.renderer.options.size
            self._say(too_slow_message(rate, size), logging.WARNING, seconds=10.0)

    def _overlay(self) -> Overlay:
        now = time.monotonic()
        message = self._message[0] if self._message is not None and now < self._message[1] else None
        drawn = self._drawn_at
        fps = 0.0
        if len(drawn) > 1 and drawn[-1] > drawn[0] and now - drawn[-1] < 1.0:  # nothing drawn for a second: 0 fps
            fps = (len(drawn) - 1) / (drawn[-1] - drawn[0])
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

    def _say(self, message: str, level: int = logging.INFO, seconds: float = 3.0) -> None:
        """In the log, and in the overlay for ``seconds``."""
        log.log(level, "%s", message)
        self._message = (message, time.monotonic() + seconds)

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
                self._pace.restart()
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
        if self._worker is not None:
            self._worker.identity = index
        self._avatar = self.pipeline.render_pose(self._pose)
        if self._outputs is not None:
            self._outputs.put(AvatarFrame(self._avatar))
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

"""Driving the live loop without depending on the machine's speed.

``SteppedCamera`` is camera hardware (an ``open_device`` for ``Capture``, like ``tests.test_capture.CameraRig``) that
delivers the next frame of a real clip only when the test releases it. Stepped from a ``LoopWatchingBackend``'s
``on_send`` (``step_after_each_new_frame``), it waits for the consumer: the next camera frame is captured and in the
capture's slot before the loop's GL thread can ask for it, so which frames the loop draws is the same on a fast, slow
or busy machine (how many times the output thread sends each one again while the next is drawn is not). Stepped from
the GL thread instead (``HookedDrawing``), the camera delivers frames while the loop is busy drawing.

Where what the loop computes depends on the time between frames (smoothing, easing), ``camera_clock`` also gives the
capture the camera's own clock, which runs one frame period per frame delivered: a paced fake clock, so that every
frame is drawn ``1 / fps`` after the one before, whatever the machine's speed.

``live_outputs`` lines up what the loop recorded (``LiveStats``) with what the virtual camera received,
``assert_newest_frame_wins`` checks the latency of every new output against the loop's own pace in the same run, and
``assert_paced`` that the outputs never come faster than their rate.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import HANG_S, wait_until


class SteppedCamera:
    """A camera that delivers frame k of ``clip`` (BGR, as OpenCV reads it) only once ``release`` has allowed k + 1
    frames; until then a read waits, as a real camera's read waits for the next exposure. The first frame is allowed:
    the capture reads it when it opens the device. While unplugged, reads and opens fail and the capture reconnects.
    Enter it after the capture (``with Capture... as capture, camera:``): leaving it wakes a read still waiting, so
    that the capture can be closed. It reports ``fps`` (default: the clip's own rate) as the camera's rate."""

    def __init__(self, clip: Path, fps: float | None = None) -> None:
        video = cv2.VideoCapture(str(clip))
        fps = fps or video.get(cv2.CAP_PROP_FPS) or 30.0
        self.frames: list[np.ndarray] = []
        while True:
            ok, image = video.read()
            if not ok:
                break
            self.frames.append(image)
        video.release()
        assert self.frames, f"no frames in {clip}"
        self.fps = fps
        self.start = time.monotonic()
        self.released = 1
        self.delivered = 0
        self.plugged = True
        self.opens = 0
        self._closed = False
        self._changed = threading.Condition()

    def open(self, source: int | str) -> _SteppedDevice:
        assert source == 0
        with self._changed:
            self.opens += 1
            return _SteppedDevice(self, self.plugged)

    def release(self, count: int = 1) -> int:
        """Allow ``count`` more frames (fewer at the end of the clip); the number of frames allowed in all."""
        with self._changed:
            self.released = min(self.released + count, len(self.frames))
            self._changed.notify_all()
            return self.released

    def clock(self) -> float:
        """The camera's own clock: when its latest frame was exposed, one frame period after the one before."""
        return self.start + max(self.delivered - 1, 0) / self.fps

    def unplug(self) -> None:
        with self._changed:
            self.plugged = False
            self._changed.notify_all()

    def plug_in(self) -> None:
        with self._changed:
            self.plugged = True
            self._changed.notify_all()

    def __enter__(self) -> SteppedCamera:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def read(self, device: _SteppedDevice) -> tuple[bool, np.ndarray | None]:
        with self._changed:
            self._changed.wait_for(
                lambda: self._closed or not self.plugged or self.delivered < self.released, timeout=HANG_S
            )
            if self._closed or not self.plugged or not device.opened or self.delivered >= self.released:
                return False, None
            image = self.frames[self.delivered]
            self.delivered += 1
            return True, image.copy()


class _SteppedDevice:
    """What ``cv2.VideoCapture`` offers, for one open of a ``SteppedCamera``."""

    def __init__(self, camera: SteppedCamera, plugged: bool) -> None:
        self.camera = camera
        self.opened = plugged

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        return self.camera.read(self) if self.opened else (False, None)

    def release(self) -> None:
        self.opened = False

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return self.camera.fps if prop == cv2.CAP_PROP_FPS else 0.0


class CameraTime:
    """The ``time`` module as ``realtime.io.capture`` sees it under ``camera_clock``: ``monotonic()`` is the camera's
    clock, so each frame is stamped with its exposure time on it; everything else is the real ``time``."""

    def __init__(self, camera: SteppedCamera) -> None:
        self._camera = camera

    def monotonic(self) -> float:
        return self._camera.clock()

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def camera_clock(monkeypatch, camera: SteppedCamera) -> None:
    """Until the test ends, the capture stamps frames with ``camera``'s clock (a paced fake clock) instead of the wall
    clock: the time between two camera frames is one frame period however long the machine took for them. The live
    loop keeps the wall clock (its latencies are then against the camera's clock, and mean nothing)."""
    import realtime.io.capture

    monkeypatch.setattr(realtime.io.capture, "time", CameraTime(camera))


def step(camera: SteppedCamera, capture, count: int = 1) -> None:
    """Let the camera deliver ``count`` more frames and wait until the capture has them all in its slot."""
    allowed = camera.release(count)
    wait_until(lambda: capture.frames_captured >= allowed, f"the capture to get camera frame {allowed}")


def step_after_each_new_frame(loop, camera: SteppedCamera, capture, new_frames: int, count: int = 1):
    """An ``on_send`` for ``LoopWatchingBackend``: after each new output, ``count`` more camera frames, captured before
    the GL thread asks for the next one (so it never waits for the camera, and draws every frame it gets once); after
    the ``new_frames``-th new output, none: the loop is stopped."""

    def on_send(device, new: bool) -> None:
        if not new:
            return
        if device.new.count(True) >= new_frames:
            loop.stop()
        else:
            step(camera, capture, count)

    return on_send


class HookedDrawing:
    """A real pipeline whose ``draw`` then runs ``after(n)``, on the GL thread, once it has drawn its n-th camera frame
    (1-based) and before the loop hands that frame on: a test steps a camera, or makes drawing slow, from there.
    Everything else, the redraws of a pose included (``render_pose``), is the pipeline's own."""

    def __init__(self, pipeline, after) -> None:
        self._pipeline, self._after = pipeline, after
        self.draws = 0

    def draw(self, geometry) -> np.ndarray:
        image = self._pipeline.draw(geometry)
        self.draws += 1
        self._after(self.draws)
        return image

    def __getattr__(self, name: str) -> object:
        return getattr(self._pipeline, name)


class OverlayWindow:
    """Stands in for the preview window (which needs a display): no keys; keeps every overlay the loop shows."""

    def __init__(self) -> None:
        self.overlays: list = []

    def poll(self) -> list:
        return []

    def show(self, camera: np.ndarray | None, avatar: np.ndarray, overlay) -> None:
        self.overlays.append(overlay)


@dataclass(frozen=True)
class Output:
    """One frame the virtual camera received."""

    time: float  # LiveStats.output_times: time.monotonic() once the loop had handed it to the virtual camera
    new: bool  # a camera frame the loop had just drawn; False: the last avatar frame sent again
    age: float | None  # new frames: seconds from the camera frame's capture to ``time`` (LiveStats.latencies_ms)
    checksum: str


def live_outputs(stats, device) -> list[Output]:
    """Every output frame, in order, from the loop's stats and a ``LoopWatchingBackend`` that watched them; checks
    that the two agree: every output frame reached the virtual camera, and each held frame is the one before again."""
    frames = device.frames
    assert len(frames) == stats.frames_out == len(stats.output_times) == len(device.new), "every frame reached it"
    assert sum(device.new) == stats.frames_out - stats.frames_held == len(stats.latencies_ms) <= stats.frames_rendered
    ages = iter(stats.latencies_ms)
    outputs = [
        Output(time, new, next(ages) / 1000 if new else None, frame.checksum)
        for time, new, frame in zip(stats.output_times, device.new, frames, strict=True)
    ]
    for index in range(1, len(outputs)):
        if not outputs[index].new:
            assert outputs[index].checksum == outputs[index - 1].checksum, f"held frame {index} is the last one again"
    return outputs


def assert_newest_frame_wins(outputs: list[Output], depth: int) -> None:
    """Each new frame's camera frame is younger than the last ``depth`` new output frames took, on the loop's own
    pace in this run, however fast or loaded the machine.

    Why: each stage takes the newest of what the stage before holds, and the capture stamps a frame after it has put
    the one before. So the frame the GL thread draws was not yet in the capture's slot two takes before, and the
    output thread sends the newest drawn frame, which may wait for its tick while the next one is drawn. Hence
    ``depth``: 3 with the camera stepped from the output thread (the frame is captured while the one before is sent);
    4 stepped from the GL thread (captured while the one before is drawn); 5 with the camera at its own pace (two
    takes, one frame waiting for its tick, one being sent); 9 with the worker, whose tracking and posing stages each
    hold one frame more. A queue of stale frames breaks it as soon as it is a few frames long."""
    new = [output for output in outputs if output.new]
    for j in range(depth, len(new)):
        age, span = new[j].age, new[j].time - new[j - depth].time
        assert age is not None and age <= span, (
            f"new output {j}: its camera frame is {age * 1000:.0f} ms old, older than the last {depth} new output "
            f"frames took ({span * 1000:.0f} ms): a stale frame, not the newest (ages: "
            f"{[round(o.age * 1000) for o in new]} ms)"
        )


def assert_paced(arrivals: list[float], period: float) -> None:
    """Output frames that arrived at these times (``time.monotonic()``) never came faster than one per ``period``: the
    output thread's ticks are ``period`` apart, each sent when due or late (made up at once), never early, and its
    phase lock moves them by half a period either way at most; so ``n`` frames span at least ``n - 1`` periods, less
    that (a period) and how late the first one was (a period, generously)."""
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 3) * period, (
        f"{len(arrivals)} frames in {arrivals[-1] - arrivals[0]:.3f} s, faster than one per {period * 1000:.1f} ms: "
        f"intervals {np.round(np.diff(arrivals) * 1000).tolist()} ms")

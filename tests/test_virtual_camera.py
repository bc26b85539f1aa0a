"""The virtual camera sink: the real VirtualCamera and pyvirtualcam code, with a recording backend as the device."""

import logging
import platform
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from pyvirtualcam.camera import BACKENDS

from realtime.io.virtual_camera import MODPROBE_LINE, VirtualCamera, install_advice
from tests.conftest import media
from tests.virtual_camera_backend import (
    RGB_FOURCC,
    FailingBackend,
    RecordingBackend,
    UnavailableBackend,
    frame_checksum,
    registered_backend,
)

SIZE = (640, 480)  # width, height
LOGGER = "realtime.io.virtual_camera"


@pytest.fixture
def recording() -> Iterator[type[RecordingBackend]]:
    with registered_backend("recording", RecordingBackend):
        yield RecordingBackend


@pytest.fixture
def failing() -> Iterator[type[FailingBackend]]:
    with registered_backend("failing", FailingBackend):
        yield FailingBackend


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """A real photo as the app's renderer hands it over: 480x640x3 uint8 RGB."""
    bgr = cv2.imread(str(media("skimage_astronaut.png")), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(cv2.resize(bgr, SIZE, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def warnings_from(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# ---------------------------------------------------------------------------------------------------------------------
# Frames reach the device


def test_frames_arrive_unchanged_in_order(recording, astronaut: np.ndarray) -> None:
    sent = [astronaut, astronaut[:, ::-1], np.roll(astronaut, 37, axis=0), 255 - astronaut]  # views, not just copies
    with VirtualCamera.open(SIZE, 30, backend="recording") as vcam:
        assert all(vcam.send(frame) for frame in sent)
        assert vcam.frames_sent == len(sent)

    device = recording.last()
    assert [f.index for f in device.frames] == list(range(len(sent)))
    for frame, received in zip(sent, device.frames, strict=True):
        assert received.shape == (480, 640, 3)
        assert received.image is not None and received.image.dtype == np.uint8
        np.testing.assert_array_equal(received.image, frame)
        assert received.checksum == frame_checksum(frame)
        assert received.samples[(240, 320)] == tuple(frame[240, 320])
    arrivals = [f.arrived for f in device.frames]
    assert arrivals == sorted(arrivals)
    assert astronaut.flags.writeable and astronaut.shape == (480, 640, 3)  # the caller's frame is left alone


def test_device_gets_size_format_rate_and_name(recording, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    vcam = VirtualCamera.open(SIZE, 25.0, device="Retarget Camera", backend="recording")
    assert vcam is not None
    device = recording.last()
    assert (device.width, device.height, device.fps) == (640, 480, 25.0)
    assert device.fourcc == RGB_FOURCC
    assert device.requested_device == "Retarget Camera"
    assert (vcam.device, vcam.backend, vcam.size, vcam.fps) == ("Retarget Camera", "recording", SIZE, 25.0)
    assert "virtual camera: Retarget Camera (recording) 640x480 @ 25 fps" in caplog.messages
    vcam.close()


def test_send_does_not_pace(recording) -> None:
    """The live loop paces itself: 10 frames to a camera advertising one frame an hour go out at once. Were send to
    wait for the camera's rate, this would hang for nine hours (and pytest-timeout fail it), on any machine."""
    frame = np.zeros((480, 640, 3), np.uint8)
    with VirtualCamera.open(SIZE, 1 / 3600, backend="recording") as vcam:
        for _ in range(10):
            assert vcam.send(frame)
    assert len(recording.last().frames) == 10


def test_wrong_frames_are_value_errors(recording) -> None:
    with VirtualCamera.open(SIZE, 30, backend="recording") as vcam:
        for bad in (
            np.zeros((640, 480, 3), np.uint8),  # transposed size
            np.zeros((480, 640, 4), np.uint8),  # RGBA
            np.zeros((480, 640), np.uint8),  # grey
            np.zeros((480, 640, 3), np.float32),  # not uint8
        ):
            with pytest.raises(ValueError, match="640"):
                vcam.send(bad)
        assert vcam.frames_sent == 0 and recording.last().send_calls == 0
        assert vcam.send(np.zeros((480, 640, 3), np.uint8))  # still working


def test_bad_size_or_rate_is_a_value_error(recording) -> None:
    for size, fps in (((0, 480), 30), ((640.5, 480), 30), (SIZE, 0), (SIZE, float("nan"))):
        with pytest.raises(ValueError):
            VirtualCamera.open(size, fps, backend="recording")
    assert recording.instances == []


# ---------------------------------------------------------------------------------------------------------------------
# No device, a device that fails, closing


@pytest.mark.faults
@pytest.mark.skipif(platform.system() != "Linux", reason="the v4l2loopback backend is Linux only")
def test_no_v4l2loopback_device_gives_none_and_advice(caplog: pytest.LogCaptureFixture, monkeypatch) -> None:
    if list(Path("/dev").glob("video*")):
        pytest.skip("this machine has video devices; the no-device path cannot be shown with the default backend")
    for name, cls in list(BACKENDS.items()):  # only pyvirtualcam's own backends, whatever other tests left behind
        if isinstance(cls, type) and issubclass(cls, (RecordingBackend, UnavailableBackend)):
            monkeypatch.delitem(BACKENDS, name)

    assert VirtualCamera.open(SIZE, 30) is None
    [warning] = warnings_from(caplog)
    message = warning.getMessage()
    assert message.startswith("no virtual camera: 'v4l2loopback' backend: No v4l2 loopback device found")
    assert MODPROBE_LINE in message and "exclusive_caps=1" in message
    assert message.endswith("or run with --no-vcam.")


@pytest.mark.faults
def test_unavailable_or_unknown_backend_gives_none(caplog: pytest.LogCaptureFixture) -> None:
    with registered_backend("unavailable", UnavailableBackend):
        assert VirtualCamera.open(SIZE, 30, backend="unavailable") is None
    assert VirtualCamera.open(SIZE, 30, backend="no-such-backend") is None
    first, second = (w.getMessage() for w in warnings_from(caplog))
    assert "'unavailable' backend: no such device (simulated)" in first and "--no-vcam" in first
    assert "unknown backend 'no-such-backend'" in second


@pytest.mark.faults
def test_device_failing_mid_stream_is_closed_and_reported_once(failing, caplog: pytest.LogCaptureFixture) -> None:
    frames = [np.full((480, 640, 3), i, np.uint8) for i in range(10)]
    vcam = VirtualCamera.open(SIZE, 30, backend="failing")
    assert vcam is not None

    results = [vcam.send(frame) for frame in frames]  # no exception reaches the caller

    assert results == [True] * 4 + [False] * 6
    assert vcam.frames_sent == 4 and not vcam.is_open
    [warning] = warnings_from(caplog)
    assert "failed after 4 frames" in warning.getMessage() and "device disconnected (simulated)" in warning.getMessage()
    device = failing.last()
    assert [f.samples[(0, 0)] for f in device.frames] == [(i, i, i) for i in range(4)]
    assert device.send_calls == 5  # nothing was sent to the failed device after the error
    assert device.close_calls == 1
    vcam.close()
    assert device.close_calls == 1


def test_close_is_idempotent(recording) -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    vcam = VirtualCamera.open(SIZE, 30, backend="recording")
    assert vcam is not None and vcam.is_open
    assert vcam.send(frame)
    vcam.close()
    vcam.close()
    with vcam:
        pass
    assert recording.last().close_calls == 1
    assert not vcam.is_open and vcam.send(frame) is False and vcam.frames_sent == 1
    with pytest.raises(ValueError):
        vcam.send(frame[:10])  # a wrong frame is still a caller bug, closed or not


def test_context_manager_closes_on_error(recording) -> None:
    with pytest.raises(KeyboardInterrupt), VirtualCamera.open(SIZE, 30, backend="recording"):
        raise KeyboardInterrupt
    assert recording.last().closed


# ---------------------------------------------------------------------------------------------------------------------
# Advice


def test_install_advice_per_os() -> None:
    linux = install_advice("Linux")
    assert "sudo apt install v4l2loopback-dkms" in linux
    assert 'sudo modprobe v4l2loopback devices=1 video_nr=10 card_label="Retarget Camera" exclusive_caps=1' in linux
    assert '"Retarget Camera"' in linux
    windows = install_advice("Windows")
    assert "OBS Studio" in windows and "Virtual Camera" in windows and "Unity Capture" in windows
    assert "OBS Studio" in install_advice("Darwin")
    for system in ("Linux", "Windows", "Darwin", "FreeBSD", None):
        advice = install_advice(system)
        assert advice.endswith("or run with --no-vcam.") and "\n" not in advice

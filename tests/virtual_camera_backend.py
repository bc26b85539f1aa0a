"""pyvirtualcam backends for tests: the real ``VirtualCamera`` / pyvirtualcam code with a device that records.

Register one for the duration of a test (pyvirtualcam's registry is global, and ``backend=None`` tries every
registered backend, so a backend left registered would be picked up by later tests)::

    @pytest.fixture
    def recording_backend():
        with registered_backend("recording", RecordingBackend):
            yield RecordingBackend

    def test_something(recording_backend):
        vcam = VirtualCamera.open((640, 480), 30, backend="recording")
        ...
        device = RecordingBackend.last()
        device.frames[0].image, device.frames[0].arrived, device.width, device.fps, device.closed, ...

``RecordingBackend`` implements pyvirtualcam's Backend protocol (pyvirtualcam/camera.py) for RGB frames only. For each
frame it records a ``ReceivedFrame``: the pixels (a copy, HxWx3) unless ``keep_images`` is False, a sha1 checksum,
the pixels at the four corners and the centre (H // 2, W // 2), the shape and ``time.monotonic()`` at arrival.
``FailingBackend`` raises on its ``fail_on``-th send and on every send after it (a device that went away);
``UnavailableBackend`` has no device at all. ``LoopWatchingBackend`` also notes, for each frame, whether the live loop
drew a new camera frame for it or sent its last avatar frame again, and can step a camera from the loop's output
thread.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyvirtualcam
from pyvirtualcam.camera import BACKENDS
from pyvirtualcam.util import encode_fourcc

RGB_FOURCC = encode_fourcc(pyvirtualcam.PixelFormat.RGB.value)
DEFAULT_DEVICE = "Recording Camera"


@dataclass(frozen=True)
class ReceivedFrame:
    index: int  # 0-based, in order of arrival
    arrived: float  # time.monotonic() when the backend got it
    shape: tuple[int, int, int]  # (height, width, 3)
    checksum: str  # sha1 of the RGB bytes
    samples: dict[tuple[int, int], tuple[int, int, int]]  # (y, x) -> RGB at the corners and (H // 2, W // 2)
    image: np.ndarray | None  # HxWx3 uint8 copy, or None when the backend's keep_images is False


class RecordingBackend:
    """A virtual camera device that records what it receives. Every instance is appended to ``instances``."""

    instances: ClassVar[list[RecordingBackend]] = []  # shared by subclasses: ``last()`` is the last device opened
    keep_images: ClassVar[bool] = True  # False: keep only checksum + samples (long runs, big frames)

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        if fourcc != RGB_FOURCC:
            raise ValueError(f"{type(self).__name__} records RGB frames only (fourcc {fourcc:#x})")
        if width <= 0 or height <= 0:
            raise ValueError(f"unsupported size {width}x{height}")
        self.width = width
        self.height = height
        self.fps = fps
        self.fourcc = fourcc
        self.requested_device = device
        self.device_name = device if device is not None else DEFAULT_DEVICE
        self.kw = kw
        self.frames: list[ReceivedFrame] = []
        self.send_calls = 0  # including sends that raised
        self.close_calls = 0
        RecordingBackend.instances.append(self)

    @classmethod
    def last(cls) -> RecordingBackend:
        assert RecordingBackend.instances, "no recording virtual camera was opened"
        return RecordingBackend.instances[-1]

    @classmethod
    def reset(cls) -> None:
        RecordingBackend.instances.clear()

    @property
    def closed(self) -> bool:
        return self.close_calls > 0

    # -- the Backend protocol ------------------------------------------------------------------------------------

    def send(self, frame: np.ndarray) -> None:
        self.send_calls += 1
        assert self.close_calls == 0, "send after close"
        if frame.ndim != 1 or frame.dtype != np.uint8 or frame.size != self.height * self.width * 3:
            raise ValueError(f"expected a flat uint8 RGB frame of {self.width}x{self.height}, got {frame.shape}")
        image = frame.reshape(self.height, self.width, 3)
        h, w = self.height - 1, self.width - 1
        points = [(0, 0), (0, w), (h, 0), (h, w), (self.height // 2, self.width // 2)]
        self.frames.append(
            ReceivedFrame(
                index=len(self.frames),
                arrived=time.monotonic(),
                shape=image.shape,
                checksum=hashlib.sha1(image.tobytes()).hexdigest(),
                samples={p: tuple(int(c) for c in image[p]) for p in points},
                image=image.copy() if self.keep_images else None,
            )
        )

    def close(self) -> None:
        self.close_calls += 1

    def device(self) -> str:
        return self.device_name

    def native_fourcc(self) -> int | None:
        return RGB_FOURCC


class FailingBackend(RecordingBackend):
    """Records frames until its ``fail_on``-th send (1-based), which raises, as does every send after it."""

    fail_on: ClassVar[int] = 5
    error_message: ClassVar[str] = "device disconnected (simulated)"

    def send(self, frame: np.ndarray) -> None:
        if self.send_calls + 1 >= self.fail_on:
            self.send_calls += 1
            raise OSError(self.error_message)
        super().send(frame)


class LoopWatchingBackend(RecordingBackend):
    """A recording device that watches the live loop feeding it. Give it the loop's stats before the loop runs
    (``RecordingBackend.last().watch(loop.stats)``); then ``new[i]`` says whether frame ``i`` showed a camera frame the
    loop had newly drawn or was a held frame, the last avatar frame sent again (its ``frames_held`` went up: the loop
    counts a held frame before it hands it to the outputs). ``on_send(device, new)``, when set, runs after each frame
    is recorded, on the loop's output thread, before it sends the next: a test steps a camera from there, in time with
    the consumer instead of the wall clock."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.new: list[bool] = []
        self.on_send: Callable[[LoopWatchingBackend, bool], None] | None = None
        self._stats: Any = None
        self._held = 0

    def watch(self, stats: Any, on_send: Callable[[LoopWatchingBackend, bool], None] | None = None) -> None:
        self._stats, self.on_send = stats, on_send

    def send(self, frame: np.ndarray) -> None:
        super().send(frame)
        assert self._stats is not None, "watch(loop.stats) before the loop runs"
        held = self._stats.frames_held
        new, self._held = held == self._held, held
        self.new.append(new)
        if self.on_send is not None:
            self.on_send(self, new)


class UnavailableBackend:
    """A backend whose device never opens, as on a machine without one."""

    error_message: ClassVar[str] = "no such device (simulated)"

    def __init__(self, **kw: Any) -> None:
        raise RuntimeError(self.error_message)


def frame_checksum(rgb: np.ndarray) -> str:
    """The checksum ``RecordingBackend`` records for an HxWx3 uint8 frame."""
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


@contextmanager
def registered_backend(name: str, cls: type) -> Iterator[type]:
    """Register ``cls`` as pyvirtualcam backend ``name`` (with fresh ``RecordingBackend.instances``), then restore."""
    previous = BACKENDS.get(name)
    RecordingBackend.reset()
    pyvirtualcam.register_backend(name, cls)
    try:
        yield cls
    finally:
        if previous is None:
            BACKENDS.pop(name, None)
        else:
            BACKENDS[name] = previous
        RecordingBackend.reset()

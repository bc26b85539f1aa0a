"""The Windows, macOS and Linux branches, run here with the platform patched (``sys.platform``, which the app reads at
each call): which OpenGL context is asked for, where the assets, the cache and the settings go, the disk check, the
signals, the camera API and the advice the app gives. What needs the real operating system (a WGL or CGL context, a
DirectShow camera, OBS Virtual Camera) cannot run here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import sys
from pathlib import Path, PureWindowsPath

import cv2
import moderngl
import numpy as np
import pytest

from realtime import paths
from realtime.config import default_config_path
from realtime.doctor import run_doctor
from realtime.errors import UserError
from realtime.ict.pipeline import PipelineOptions
from realtime.io import capture
from realtime.io.clips import ClipWriter, interrupt_on_sigterm, probe_video
from realtime.io.virtual_camera import VirtualCamera, install_advice
from realtime.rendering import renderer
from realtime.rendering.renderer import create_context
from tests.conftest import PROJECT

PLATFORMS = ["linux", "win32", "darwin"]
LOCAL_APPDATA = r"C:\Users\me\AppData\Local"
ROAMING_APPDATA = r"C:\Users\me\AppData\Roaming"
POSIX_ONLY = ("statvfs", "fstatvfs", "killpg", "getpgid", "setsid", "fork", "getuid", "geteuid")


@pytest.fixture
def platform(request, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(sys, "platform", request.param)
    return request.param


def on(*names: str):
    return pytest.mark.parametrize("platform", names, indirect=True)


# --- OpenGL ------------------------------------------------------------------------------------------------------


class ContextRequests:
    """Stands in for moderngl.create_standalone_context: notes what was asked for, and fails like a missing driver."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, **kwargs) -> moderngl.Context:
        self.calls.append(kwargs)
        raise Exception("no OpenGL driver here")  # as glcontext raises it


@on(*PLATFORMS)
def test_the_off_screen_context_is_the_platforms_own(platform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = ContextRequests()
    monkeypatch.setattr(moderngl, "create_standalone_context", requests)
    with pytest.raises(UserError) as raised:
        create_context(PipelineOptions(identity=Path("me.jpg")).gl_backend)  # what the offline pipeline asks for
    # EGL on Linux; Windows and macOS have none: glcontext's own standalone context there (WGL, CGL)
    assert requests.calls == [{"require": 330, "backend": "egl"}] if platform == "linux" else [{"require": 330}]
    message = str(raised.value)
    assert "\n" not in message
    if platform == "linux":
        assert "apt-get install libegl1" in message
    else:
        assert "apt-get" not in message and "graphics driver" in message


def test_the_linux_context_is_a_real_headless_one() -> None:
    ctx = create_context()
    try:
        assert ctx.version_code >= 330
    finally:
        ctx.release()


@on(*PLATFORMS)
def test_the_wait_for_a_frame_lets_other_threads_run(platform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """glFinish is looked up in the platform's own OpenGL library (loaded through ctypes, which lets go of the GIL
    while it waits); where that library is missing, reads wait as before instead of failing."""
    loaded: list[str] = []
    real_library = ctypes.CDLL

    class Library:
        def __init__(self, name: str) -> None:
            loaded.append(name)
            if platform != "linux":
                raise OSError(f"{name}: cannot open shared object file")  # not on this machine
            self.glFinish = real_library(name).glFinish

    monkeypatch.setattr(renderer.ctypes, "CDLL", Library)
    finish = renderer.native_gl_finish()
    if platform == "linux":
        assert loaded == ["libGL.so.1"] and finish is not None
    else:
        assert loaded == (["opengl32"] if platform == "win32" else
                          ["/System/Library/Frameworks/OpenGL.framework/OpenGL"])
        assert finish is None


# --- where files go ----------------------------------------------------------------------------------------------


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """As for a wheel in site-packages: no checkout, no overrides, a home of our own (and Windows' known folders)."""
    monkeypatch.setattr(paths, "CHECKOUT", None)
    for name in ("RETARGET_ASSETS", "RETARGET_CACHE", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    # platformdirs' own overrides of the folders Windows' shell API would give
    monkeypatch.setenv("WIN_PD_OVERRIDE_LOCAL_APPDATA", LOCAL_APPDATA)
    monkeypatch.setenv("WIN_PD_OVERRIDE_APPDATA", ROAMING_APPDATA)
    return tmp_path / "home"


@on("linux")
def test_an_installed_package_uses_the_xdg_folders_on_linux(platform: str, installed: Path) -> None:
    assert paths.assets_dir() == installed / ".local/share/realtime-retarget/assets"
    assert paths.engines_dir() == installed / ".local/share/realtime-retarget/engines"
    assert paths.cache_dir() == installed / ".cache/realtime-retarget"
    assert default_config_path() == installed / ".config/realtime-retarget/config.toml"


@on("darwin")
def test_an_installed_package_uses_the_library_folders_on_macos(platform: str, installed: Path) -> None:
    support = installed / "Library/Application Support/realtime-retarget"
    assert paths.assets_dir() == support / "assets"
    assert paths.engines_dir() == support / "engines"
    assert paths.cache_dir() == installed / "Library/Caches/realtime-retarget"
    assert default_config_path() == support / "config.toml"


@on("win32")
def test_an_installed_package_uses_the_appdata_folders_on_windows(platform: str, installed: Path) -> None:
    def windows(path: Path) -> PureWindowsPath:
        return PureWindowsPath(str(path))

    local = PureWindowsPath(LOCAL_APPDATA, "realtime-retarget")
    assert windows(paths.assets_dir()) == local / "assets"
    assert windows(paths.engines_dir()) == local / "engines"
    assert windows(paths.cache_dir()) == local / "Cache"
    # the settings roam with the user; the large assets stay on the machine
    assert windows(default_config_path()) == PureWindowsPath(ROAMING_APPDATA, "realtime-retarget", "config.toml")


@on(*PLATFORMS)
def test_the_overrides_win_everywhere(platform: str, installed: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETARGET_ASSETS", str(tmp_path / "a"))
    monkeypatch.setenv("RETARGET_CACHE", str(tmp_path / "c"))
    assert (paths.assets_dir(), paths.cache_dir()) == (tmp_path / "a", tmp_path / "c")


@on(*PLATFORMS)
def test_a_checkout_keeps_its_own_folders(platform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETARGET_ASSETS", raising=False)
    monkeypatch.delenv("RETARGET_CACHE", raising=False)
    assert paths.CHECKOUT == PROJECT, "this test suite runs from a checkout"
    assert paths.assets_dir() == PROJECT / "assets"
    assert paths.cache_dir() == PROJECT / "cache"
    assert paths.engines_dir() == PROJECT / "engines"
    assert paths.shaders_dir() == PROJECT / "shaders"


def test_a_checkout_is_told_apart_from_an_installed_package(tmp_path: Path) -> None:
    assert paths.find_checkout() == PROJECT
    site_packages = tmp_path / "site-packages"
    (site_packages / "realtime").mkdir(parents=True)
    assert paths.find_checkout(site_packages / "realtime") is None


# --- the disk check and the signals ------------------------------------------------------------------------------


@pytest.fixture
def no_posix_calls(monkeypatch: pytest.MonkeyPatch):
    """Windows as far as the os module goes: its POSIX-only functions are gone. shutil.disk_usage, which calls
    os.statvfs on POSIX, gets an implementation that does not (Windows' own calls nt._getdiskusage)."""
    statvfs = os.statvfs

    def disk_usage(path: str | os.PathLike) -> shutil._ntuple_diskusage:
        st = statvfs(path)
        total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        return shutil._ntuple_diskusage(total, total - st.f_bfree * st.f_frsize, free)

    monkeypatch.setattr(shutil, "disk_usage", disk_usage)
    for name in POSIX_ONLY:
        monkeypatch.delattr(os, name, raising=False)


def gradient(index: int, width: int = 96, height: int = 64) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (np.arange(width) * 2 + 8 * index) % 256
    image[..., 1] = np.arange(height)[:, None] * 3
    return image


@on("win32")
@pytest.mark.parametrize("fragmented", [False, True], ids=["offline", "live"])
def test_a_clip_is_recorded_without_any_posix_only_call(platform: str, no_posix_calls, tmp_path: Path,
                                                         fragmented: bool) -> None:
    out = tmp_path / "clip.mp4"
    with interrupt_on_sigterm(), ClipWriter(out, 30.0, (96, 64), fragmented=fragmented) as writer:
        for index in range(40):  # the free space is looked at every 15 frames
            writer.write(gradient(index))
    info = probe_video(out)
    assert (info.codec, info.frame_count, info.fps) == ("h264", 40, 30.0)


@on(*PLATFORMS)
def test_the_disk_check_stops_a_clip_on_a_full_disk(platform: str, no_posix_calls, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 << 30, (10 << 30) - 4096, 4096))
    out = tmp_path / "clip.mp4"
    writer = ClipWriter(out, 30.0, (96, 64))
    with pytest.raises(UserError, match=rf"^the disk holding {tmp_path} is full \(4 kB left\): free some space$"):
        writer.write(gradient(0))
    assert list(tmp_path.iterdir()) == [], "nothing half-written"


@pytest.fixture
def windows_signals(monkeypatch: pytest.MonkeyPatch) -> int:
    """Signals as Windows has them: no SIGTERM from other processes, Ctrl-Break as SIGBREAK (played by SIGUSR1)."""
    monkeypatch.delattr(signal, "SIGTERM")
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    return signal.SIGUSR1


def test_without_sigterm_ctrl_break_interrupts_and_the_clip_is_finalised(windows_signals: int, tmp_path: Path) -> None:
    before = signal.getsignal(windows_signals)
    out = tmp_path / "clip.mp4"
    with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm(), ClipWriter(out, 30.0, (96, 64)) as writer:
        for index in range(100):
            writer.write(gradient(index))
            if index == 9:
                signal.raise_signal(windows_signals)
    assert signal.getsignal(windows_signals) is before, "the handler in place before is restored"
    assert probe_video(out).frame_count == 10


# --- cameras, the virtual camera and --doctor --------------------------------------------------------------------


class CameraRequests:
    """Stands in for cv2.VideoCapture: notes which API was asked for; no camera opens."""

    calls: list[tuple] = []

    def __init__(self, *args) -> None:
        CameraRequests.calls.append(args)

    def isOpened(self) -> bool:
        return False

    def release(self) -> None:
        pass


@on(*PLATFORMS)
def test_cameras_are_opened_with_the_platforms_api(platform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cv2, "VideoCapture", CameraRequests)
    CameraRequests.calls = []
    expected = {"linux": cv2.CAP_V4L2, "win32": cv2.CAP_DSHOW, "darwin": cv2.CAP_AVFOUNDATION}[platform]
    capture.open_device(1)
    assert CameraRequests.calls == [(1, expected)]
    if platform != "linux":  # no device files: indices are probed, up to the first that does not open
        CameraRequests.calls = []
        assert capture.list_cameras() == []
        assert CameraRequests.calls == [(0, expected)]


ADVICE = {  # (words the advice has, words it must not have)
    "linux": (("v4l2loopback", "modprobe", "on Linux"), ("OBS Virtual Camera", "Windows", "macOS")),
    "win32": (("OBS Virtual Camera", "Start Virtual Camera", "on Windows"), ("v4l2loopback", "macOS")),
    "darwin": (("OBS Virtual Camera", "system extension", "on macOS"), ("v4l2loopback", "Windows")),
}
CAMERA_ADVICE = {"linux": "/dev/videoN", "win32": "Settings > Privacy & security > Camera",
                 "darwin": "System Settings > Privacy & Security > Camera"}


@on(*PLATFORMS)
def test_the_virtual_camera_advice_fits_the_platform(platform: str, caplog: pytest.LogCaptureFixture) -> None:
    advice = install_advice()
    has, has_not = ADVICE[platform]
    assert all(words in advice for words in has) and not any(words in advice for words in has_not), advice
    with caplog.at_level(logging.WARNING):  # the real pyvirtualcam, asked for a backend it does not have
        assert VirtualCamera.open((640, 480), 30, backend="no-such-backend") is None
    assert advice in caplog.text


@on(*PLATFORMS)
def test_doctor_gives_each_platform_its_own_fixes(platform: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the real checks, on this Linux machine that has no webcam and no virtual camera device
    monkeypatch.setattr(capture, "list_cameras", lambda: [])
    report = {check.name: check for check in run_doctor()}
    assert report["H.264"].ok and "libx264" in report["H.264"].detail
    assert not report["cameras"].ok and CAMERA_ADVICE[platform] in report["cameras"].detail
    if not report["virtual camera"].ok:
        assert install_advice() in report["virtual camera"].detail
    opengl = report["OpenGL"]
    if platform == "linux":
        assert opengl.ok and opengl.detail.endswith("headless EGL")
    else:  # glcontext's WGL or CGL cannot load on Linux: the fix shown is the one a Windows or Mac user would get
        assert not opengl.ok and "graphics driver" in opengl.detail and "apt-get" not in opengl.detail

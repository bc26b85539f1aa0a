"""Offline retargeting: every frame of a driver clip becomes a frame of the output clip, as fast as the machine allows.

Four stages overlap: decoding (the video source's thread), tracking (a worker thread; MediaPipe, and DECA's encoder on
that path, release the GIL), retargeting and posing the mesh (another worker, in frame order; numpy, and DECA's
detail decoder) and drawing on this thread, which owns the GL context; the clip writer encodes on its own thread
(PyAV and libx264's threads).
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from realtime.head import AvatarGeometry, Pipeline
from realtime.io.clips import ClipWriter, Frame, interrupt_on_sigterm, open_video
from realtime.loops.threads import map_ahead

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClipResult:
    path: Path | None  # None when interrupted before the first frame
    frames: int
    frames_with_face: int
    interrupted: bool


def render_clip(
    pipeline: Pipeline, source: Path, out: Path, overwrite: bool = False, progress: bool = True
) -> ClipResult:
    """Retarget every frame of ``source`` into ``out`` at the source's frame rate. Ctrl-C or SIGTERM stops early and
    still finalises the frames done so far into a playable clip."""
    size = pipeline.renderer.options.size
    frames = found = 0
    interrupted = False
    with interrupt_on_sigterm(), open_video(source) as video:
        dt = 1.0 / video.fps

        def track(frame: Frame) -> Any:
            return pipeline.track(frame.image, frame.timestamp)

        def prepare(face: Any) -> tuple[bool, AvatarGeometry]:
            return face is not None, pipeline.geometry(pipeline.pose(face, dt))

        writer = ClipWriter(out, video.fps, size, overwrite=overwrite)
        bar = tqdm(total=video.frame_count, desc=f"Retargeting {Path(source).name}", unit="frame", disable=not progress)
        try:
            faces = map_ahead(track, video, depth=4, name="track")
            for tracked, geometry in map_ahead(prepare, faces, depth=4, name="pose"):
                writer.write(pipeline.draw(geometry))
                frames += 1
                found += tracked
                bar.update()
        except KeyboardInterrupt:
            interrupted = True
            log.warning("interrupted: finalising the %d frames rendered so far", frames)
        finally:
            bar.close()
            path = writer.close()  # on any exit: the frames already rendered stay a playable clip
    return ClipResult(path=path, frames=frames, frames_with_face=found, interrupted=interrupted)

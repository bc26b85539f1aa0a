"""Self-reenactment, the field's standard measure of a reenactment method: frame K of a talking clip becomes the
identity photo, the whole clip drives it at the clip's own size, and every output frame is compared with the clip's
own frame. The unchanged photo shown on every frame is the baseline a method must beat.

Figures per frame, averaged: PSNR (RGB), SSIM (grey, Gaussian window 11, sigma 1.5; Wang et al. 2004), landmark
distance (MediaPipe's 478 points, mean pixels with the frame scaled so that its longer side is 256), and the mean
absolute difference of the 52 blendshape scores. Frames where either face is not found are left out of the last two;
frame K itself is left out of all (the photo would score infinitely well on it). Used by
``tools/evaluate.py --self-reenact``.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import moderngl
import numpy as np
from tqdm import tqdm

from realtime.errors import UserError
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
from realtime.ict.retarget import RetargetOptions
from realtime.io.clips import open_video
from realtime.rendering.renderer import RenderOptions
from realtime.tracking.tracker import FaceObservation, FaceTracker, FaceTrackerOptions, RunningMode

LANDMARK_SCALE_SIDE = 256


@dataclass(frozen=True)
class FrameScores:
    psnr: float
    ssim: float
    landmarks: float  # NaN where a face is missing
    blendshapes: float


@dataclass(frozen=True)
class ReenactmentScores:
    frames: int
    psnr: float
    ssim: float
    landmarks: float
    blendshapes: float
    faces_found: int  # output frames in which MediaPipe finds a face

    @classmethod
    def mean(cls, rows: list[FrameScores], faces_found: int) -> "ReenactmentScores":
        table = np.array([[r.psnr, r.ssim, r.landmarks, r.blendshapes] for r in rows], np.float64)
        psnr, ssim, landmarks, blendshapes = (float(np.nanmean(column)) for column in table.T)
        return cls(len(rows), psnr, ssim, landmarks, blendshapes, faces_found)


@dataclass(frozen=True)
class Reenactment:
    clip: str
    size: tuple[int, int]
    frame: int
    look: str
    output: ReenactmentScores
    photo: ReenactmentScores  # the unchanged photo on every frame

    def table(self) -> str:
        width, height = self.size
        lines = [f"self-reenactment: {self.clip} ({width}x{height}), frame {self.frame} as the identity",
                 "| output | PSNR dB | SSIM | landmark dist. (px at 256) | blendshape dist. | faces found |",
                 "|---|---|---|---|---|---|"]
        for name, s in ((f"{self.look} look", self.output), ("unchanged photo", self.photo)):
            lines.append(f"| {name} | {s.psnr:.1f} | {s.ssim:.3f} | {s.landmarks:.1f} | {s.blendshapes:.3f} | "
                         f"{s.faces_found}/{s.frames} |")
        return "\n".join(lines)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two RGB uint8 images, on grey, Gaussian window 11 with sigma 1.5."""
    x = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY).astype(np.float64)
    y = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY).astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), 1.5)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(index.mean())


def compare(output: np.ndarray, target: np.ndarray, output_face: FaceObservation | None,
            target_face: FaceObservation | None) -> FrameScores:
    landmarks = blendshapes = float("nan")
    if output_face is not None and target_face is not None:
        scale = LANDMARK_SCALE_SIDE / max(target.shape[:2])
        distance = np.linalg.norm(output_face.landmarks[:, :2] - target_face.landmarks[:, :2], axis=1)
        landmarks = float(distance.mean() * scale)
        blendshapes = float(np.abs(output_face.blendshapes - target_face.blendshapes).mean())
    return FrameScores(psnr(output, target), ssim(output, target), landmarks, blendshapes)


def self_reenact(clip: Path, frame: int = 0, look: str = "photo", smoothing: float = 1.0,
                 ctx: moderngl.Context | None = None, progress: bool = True) -> Reenactment:
    """Self-reenactment of ``clip`` with its frame ``frame`` as the identity (see the module's docstring)."""
    frames = [f.image for f in open_video(clip)]
    if not 0 <= frame < len(frames):
        raise UserError(f"--frame {frame}: {clip} has {len(frames)} frames (0 to {len(frames) - 1})")
    photo = frames[frame]
    height, width = photo.shape[:2]
    dt = 1.0 / open_video(clip).fps
    with tempfile.TemporaryDirectory(prefix="reenact-") as folder:
        identity = Path(folder) / f"{clip.stem}-frame{frame}.png"
        cv2.imwrite(str(identity), photo[:, :, ::-1])
        options = PipelineOptions(identity=identity, look=look, use_cache=False,
                                  render=RenderOptions(size=(width, height)),
                                  retarget=RetargetOptions(smoothing=smoothing))
        pipeline = RetargetPipeline.create(options, ctx)
        try:
            outputs = _drive(pipeline, frames, frame, dt, progress)
        finally:
            pipeline.close()
    image_options = FaceTrackerOptions(running_mode=RunningMode.IMAGE)
    rows, baseline = [], []
    found = found_photo = 0
    with FaceTracker.create_from_options(image_options) as tracker:
        photo_face = tracker.track(photo)
        for index, (target, output) in enumerate(zip(frames, outputs, strict=True)):
            if index == frame:
                continue  # the identity frame itself: the photo would score infinitely well
            target_face, output_face = tracker.track(target), tracker.track(output)
            found += output_face is not None
            found_photo += photo_face is not None
            rows.append(compare(output, target, output_face, target_face))
            baseline.append(compare(photo, target, photo_face, target_face))
    return Reenactment(clip.name, (width, height), frame, look, ReenactmentScores.mean(rows, found),
                       ReenactmentScores.mean(baseline, found_photo))


def _drive(pipeline: RetargetPipeline, frames: list[np.ndarray], frame: int, dt: float,
           progress: bool) -> list[np.ndarray]:
    """The clip retargeted onto its own frame: the identity frame's face is the driver's rest."""
    rest = pipeline.track(frames[frame], 0.0)
    if rest is None:
        raise UserError(f"no face found in frame {frame} of the clip: choose another --frame")
    pipeline.calibrate_neutral(rest)
    pipeline.tracker.close()
    pipeline.tracker = FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.VIDEO))
    outputs = []
    for index, rgb in enumerate(tqdm(frames, desc="Self-reenactment", unit="frame", disable=not progress or None)):
        face = pipeline.track(rgb, index * dt)
        outputs.append(pipeline.render_pose(pipeline.pose(face, dt)))
    return outputs

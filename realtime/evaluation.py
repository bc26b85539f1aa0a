"""How faithfully and steadily the avatar performs the driver: the clip is retargeted, the avatar re-tracked with the
same tracker, and the two series of blendshape scores compared (correlation, gain, lag, blinks); the avatar's own
landmarks (exact, from its mesh) give the jitter, with and without the temporal filter.

Used by ``tools/evaluate.py`` and the fidelity tests.
"""

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import moderngl
import numpy as np
from tqdm import tqdm

from realtime.ict.avatar import ict_shape_names
from realtime.ict.landmark_map import LandmarkMap
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
from realtime.ict.retarget import Retargeter, RetargetOptions
from realtime.io.clips import ClipWriter, open_video
from realtime.tracking.landmarks import LEFT_EYE_OUTER, RIGHT_EYE_OUTER
from realtime.tracking.tracker import BLENDSHAPE_NAMES, FaceTracker, FaceTrackerOptions, RunningMode

# The blendshapes the report covers: what a viewer notices first.
REPORTED = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "mouthFunnel", "mouthPucker", "eyeBlinkLeft",
            "eyeBlinkRight", "browInnerUp", "browDownLeft", "browDownRight", "eyeLookInLeft", "eyeLookOutLeft",
            "eyeLookInRight", "eyeLookOutRight")
MOVING = 0.02  # a weight whose standard deviation is below this hardly moves: no lag to measure


@dataclass(frozen=True, eq=False)
class Recording:
    """Per-frame series of one retargeted clip; NaN rows where no face was found."""

    fps: float
    driver: np.ndarray  # (F, 51) the driver's blendshape scores
    avatar: np.ndarray  # (F, 51) the rendered avatar's scores, re-tracked
    driver_points: np.ndarray  # (F, 478, 2) the driver's landmarks, in inter-ocular distances
    avatar_points: np.ndarray  # (F, 478, 3) the avatar's landmarks from its mesh, filtered, in inter-ocular distances
    raw_points: np.ndarray  # (F, 478, 3) the same without the temporal filter
    weights: np.ndarray  # (F, 53) the avatar's expression weights, filtered
    raw_weights: np.ndarray  # (F, 53) the same without the temporal filter

    def score(self, who: str, name: str) -> np.ndarray:
        return getattr(self, who)[:, BLENDSHAPE_NAMES.index(name)]


def record(pipeline: RetargetPipeline, clip: Path, out: Path | None = None, progress: bool = True) -> Recording:
    """Retarget ``clip`` frame by frame with ``pipeline`` (filtered as its options say, and unfiltered beside it),
    render, re-track; ``out`` also writes the avatar clip."""
    unfiltered = Retargeter(pipeline.model.expression_names,
                            dataclasses.replace(pipeline.options.retarget, smoothing=0.0))
    landmarks = LandmarkMap.load()
    rows: dict[str, list[np.ndarray]] = {key: [] for key in ("driver", "avatar", "driver_points", "avatar_points",
                                                              "raw_points", "weights", "raw_weights")}
    nan_scores = np.full(len(BLENDSHAPE_NAMES), np.nan, np.float32)
    video = open_video(clip)
    fps = video.fps
    options = FaceTrackerOptions(running_mode=RunningMode.VIDEO)
    with contextlib.ExitStack() as stack:
        stack.enter_context(video)
        avatar_tracker = stack.enter_context(FaceTracker.create_from_options(options))
        writer = stack.enter_context(ClipWriter(out, fps, pipeline.options.render.size, overwrite=True)) \
            if out is not None else None
        previous = None
        for frame in tqdm(video, total=video.frame_count or None, unit="frame", disable=not progress,
                          desc="evaluate"):
            dt = 0.0 if previous is None else frame.timestamp - previous
            previous = frame.timestamp
            face = pipeline.track(frame.image, frame.timestamp)
            pose, raw_pose = pipeline.pose(face, dt), unfiltered.update(face, dt)
            geometry = pipeline.geometry(pose)
            image = pipeline.draw(geometry)
            if writer is not None:
                writer.write(image)
            seen = avatar_tracker.track(image, frame.timestamp)
            rows["driver"].append(face.blendshapes if face is not None else nan_scores)
            rows["avatar"].append(seen.blendshapes if seen is not None else nan_scores)
            rows["driver_points"].append(normalised(face.landmarks[:, :2]) if face is not None
                                         else np.full((478, 2), np.nan))
            rows["avatar_points"].append(normalised(mesh_landmarks(landmarks, geometry.vertices,
                                                                   geometry.model_matrix)))
            raw_geometry = pipeline.geometry(raw_pose)
            rows["raw_points"].append(normalised(mesh_landmarks(landmarks, raw_geometry.vertices,
                                                                raw_geometry.model_matrix)))
            rows["weights"].append(pose.expression)
            rows["raw_weights"].append(raw_pose.expression)
    return Recording(fps=fps, **{key: np.array(value, np.float64) for key, value in rows.items()})


def mesh_landmarks(landmarks: LandmarkMap, vertices: np.ndarray, model_matrix: np.ndarray) -> np.ndarray:
    """(478, 3) MediaPipe landmark positions on the posed avatar mesh (N, 3), in the avatar's camera space."""
    points = landmarks.points(vertices)
    return points @ model_matrix[:3, :3].T + model_matrix[:3, 3]


def normalised(points: np.ndarray) -> np.ndarray:
    """(478, D) landmarks in units of their inter-ocular (outer eye corner) distance."""
    return points / np.linalg.norm(points[LEFT_EYE_OUTER, :2] - points[RIGHT_EYE_OUTER, :2])


# ---------------------------------------------------------------------------------------------------------------------
# Measures


def both_seen(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def correlation(driver: np.ndarray, avatar: np.ndarray) -> float:
    """Pearson correlation of two (F,) series over the frames where both have a face."""
    a, b = both_seen(driver, avatar)
    if len(a) < 3 or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def gain(driver: np.ndarray, avatar: np.ndarray) -> float:
    """How far the avatar's series swings for the driver's: the ratio of their standard deviations (the slope of
    the symmetric, reduced-major-axis regression), over the frames where both have a face."""
    a, b = both_seen(driver, avatar)
    return float(b.std() / a.std()) if len(a) >= 3 and a.std() > 1e-9 else float("nan")


def lag(reference: np.ndarray, delayed: np.ndarray, max_frames: int = 5) -> float:
    """Frames by which ``delayed`` trails ``reference`` (F,): the peak of their cross-correlation, refined to a
    fraction of a frame by a parabola through the peak and its neighbours."""
    a, b = both_seen(reference, delayed)
    a, b = a - a.mean(), b - b.mean()
    if len(a) <= 2 * max_frames or a.std() < 1e-9 or b.std() < 1e-9:
        return float("nan")
    shifts = np.arange(-max_frames, max_frames + 1)
    scores = np.array([np.dot(a[max(0, -s): len(a) - max(0, s)], b[max(0, s): len(b) - max(0, -s)]) for s in shifts])
    peak = int(np.argmax(scores))
    if 0 < peak < len(shifts) - 1:
        left, centre, right = scores[peak - 1: peak + 2]
        denominator = left - 2 * centre + right
        offset = 0.5 * (left - right) / denominator if denominator < 0 else 0.0
        return float(shifts[peak] + offset)
    return float(shifts[peak])


def still_frames(driver_points: np.ndarray, fraction: float = 0.3) -> np.ndarray:
    """(F,) bool: the frames where the driver's face moves least, the driver's tracking noise being what the filter
    has to keep off the avatar there. A frame's motion is the 90th percentile of its landmarks' speeds (so that a
    blink, which moves only the lids, counts as motion) and of the next frame's (the jitter measure spans both)."""
    speed = np.full(len(driver_points) + 1, np.inf)
    step = np.linalg.norm(np.diff(driver_points, axis=0), axis=-1)
    speed[1:-1] = np.nan_to_num(np.percentile(step, 90, axis=-1), nan=np.inf)
    motion = np.maximum(speed[:-1], speed[1:])
    return motion <= np.quantile(motion[np.isfinite(motion)], fraction)


def jitter(points: np.ndarray, frames: np.ndarray) -> float:
    """High-frequency motion of (F, 478, D) landmarks: the mean magnitude of their second difference (acceleration
    per frame squared, in inter-ocular distances) over ``frames`` (F,) bool."""
    second = np.zeros(points.shape[:2])
    second[1:-1] = np.linalg.norm(points[2:] - 2 * points[1:-1] + points[:-2], axis=-1)
    keep = frames.copy()
    keep[[0, -1]] = False
    return float(second[keep].mean()) if keep.any() else float("nan")


def blinks(series: np.ndarray, rise: float = 0.2, window: int = 15) -> list[int]:
    """Frames where a blink peaks in an eyeBlink (F,) series: a local maximum at least ``rise`` above the median
    of the surrounding ``window`` frames either side (the open-eye level differs from face to face)."""
    s = np.nan_to_num(series, nan=0.0)
    peaks = []
    for t in range(1, len(s) - 1):
        around = s[max(0, t - window): t + window + 1]
        if s[t] >= s[t - 1] and s[t] > s[t + 1] and s[t] - np.median(around) >= rise:
            if not peaks or t - peaks[-1] > 2:
                peaks.append(t)
    return peaks


def matched_blinks(driver: list[int], avatar: list[int], tolerance: int = 2) -> int:
    """How many of the driver's blinks have an avatar blink within ``tolerance`` frames."""
    return sum(any(abs(d - a) <= tolerance for a in avatar) for d in driver)


@dataclass(frozen=True)
class ChannelReport:
    name: str
    correlation: float
    gain: float
    lag: float  # frames the avatar's re-tracked series trails the driver's
    filter_lag: float  # frames the filtered weights trail the unfiltered ones (NaN where the weight hardly moves)
    driver_range: float  # the spread of the driver's scores (5th to 95th percentile): near 0, the rest is noise


@dataclass(frozen=True)
class Report:
    channels: list[ChannelReport]
    jitter_filtered: float
    jitter_unfiltered: float
    driver_blinks: dict[str, int]
    avatar_blinks: dict[str, int]
    matched_blinks: dict[str, int]
    frames: int
    frames_with_face: int

    def table(self) -> str:
        lines = [f"{'blendshape':18s} {'range':>6s} {'corr':>6s} {'gain':>6s} {'lag':>6s} {'filter lag':>10s}"]
        for c in self.channels:
            lines.append(f"{c.name:18s} {c.driver_range:6.2f} {c.correlation:6.2f} {c.gain:6.2f} {c.lag:6.2f} "
                         f"{c.filter_lag:10.2f}")
        ratio = self.jitter_unfiltered / max(self.jitter_filtered, 1e-12)
        lines.append(f"jitter on still frames: {self.jitter_filtered:.2e} filtered, {self.jitter_unfiltered:.2e} "
                     f"unfiltered ({ratio:.1f}x less)")
        for side in self.driver_blinks:
            lines.append(f"blinks {side}: driver {self.driver_blinks[side]}, avatar {self.avatar_blinks[side]}, "
                         f"matched {self.matched_blinks[side]}")
        lines.append(f"frames: {self.frames}, face found in {self.frames_with_face}")
        return "\n".join(lines)


def report(recording: Recording, names: tuple[str, ...] = REPORTED,
           expression_names: tuple[str, ...] | None = None) -> Report:
    """The measures for ``recording``; ``expression_names`` (the avatar's) give the filter lag per blendshape."""
    channels = []
    for name in names:
        driver, avatar = recording.score("driver", name), recording.score("avatar", name)
        filter_lag = float("nan")
        if expression_names is not None:
            index = expression_names.index(ict_shape_names(name)[0])
            if recording.raw_weights[:, index].std() >= MOVING:
                filter_lag = lag(recording.raw_weights[:, index], recording.weights[:, index])
        spread = np.subtract(*np.nanpercentile(driver, [95, 5])) if np.isfinite(driver).any() else float("nan")
        channels.append(ChannelReport(name, correlation(driver, avatar), gain(driver, avatar), lag(driver, avatar),
                                      filter_lag, float(spread)))
    still = still_frames(recording.driver_points)
    driver_blinks, avatar_blinks, matched = {}, {}, {}
    for side in ("Left", "Right"):
        in_driver = blinks(recording.score("driver", f"eyeBlink{side}"))
        in_avatar = blinks(recording.score("avatar", f"eyeBlink{side}"))
        driver_blinks[side], avatar_blinks[side] = len(in_driver), len(in_avatar)
        matched[side] = matched_blinks(in_driver, in_avatar)
    return Report(channels=channels, jitter_filtered=jitter(recording.avatar_points, still),
                  jitter_unfiltered=jitter(recording.raw_points, still), driver_blinks=driver_blinks,
                  avatar_blinks=avatar_blinks, matched_blinks=matched, frames=len(recording.driver),
                  frames_with_face=int(np.isfinite(recording.driver[:, 0]).sum()))


def create_pipeline(identity: Path, smoothing: float, ctx: moderngl.Context | None = None,
                    look: str = "head") -> RetargetPipeline:
    options = PipelineOptions(identity=identity, retarget=RetargetOptions(smoothing=smoothing), look=look)
    return RetargetPipeline.create(options, ctx)

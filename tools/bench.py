"""Benchmark the retargeting pipeline: the whole offline pipeline against the tracker alone, and per-stage times.

The only place where the project measures speed (tests never time anything). The issue's targets are ratios measured
in one run on one machine: the whole offline pipeline (`render_clip`, decoding and H.264 encoding included) reaches a
share of the frame rate of the tracker alone on the same decoded frames (RATIO_TARGETS: 0.8 up to 640x480, 0.6
above), in both looks. A missed target is logged as a warning; the run never fails for it. Steps:

1. Prepare: the machine's facts (CPU, vector extensions, GL renderer, library versions, thread settings) and the
   identity (timed on its own; cached on disk after the first run). Then per --size (default 640x480 and 1280x720):
   a driver clip is made from a real clip: every frame resized to the size (a resized real clip, not a camera at that
   size), looped ping-pong up to --frames so the motion stays continuous, written as H.264 into a temp folder.
2. Stages, per look (--look, default photo and head) and size, one at a time on this thread, each call timed alone:
   decode (OpenCV read + BGR->RGB, what the app's decoder thread does), track (pipeline.track: MediaPipe, VIDEO mode),
   retarget (pipeline.pose), geometry (pipeline.geometry: blendshapes, normals, head matrix) and render
   (pipeline.draw: upload, draw, anti-aliasing, read-back). The pipeline's own methods, so that both looks are timed
   the same way. Per stage: median and p95 wall milliseconds, and the cores it really uses (the process's CPU time
   over that stage's calls, every thread counted: MediaPipe's and llvmpipe's, divided by their wall time). The first
   WARMUP frames are left out. Nothing is encoded in this loop (the encoder's thread would run during, and be counted
   in, the other stages); encode is measured apart: ClipWriter, the app's encoder, on the rendered frames as fast as
   it takes them: frames per second and CPU milliseconds per frame, all threads.
3. Tracker alone and whole pipeline, per size, --repeat rounds interleaved (so that a change in the machine's load
   hits both alike), medians taken:
   - tracker alone: every frame of the driver clip decoded into memory first (not timed), then a fresh FaceTracker
     (VIDEO mode, increasing timestamps) tracks them all; the first WARMUP frames are left out: frames per second,
     milliseconds per frame and the cores used (process CPU seconds over wall seconds);
   - whole pipeline, per look: `realtime.loops.offline.render_clip` on the driver clip, as one `run.py --source
     clip.mp4` run does, with a fresh pipeline (its creation not timed): frames per second over the call, cores used,
     and its CPU per frame by thread (Linux): drawing, rasterising, MediaPipe, tracking, posing, decoding, encoding.
   The ratio whole / tracker alone is compared with its target.
4. Report: the summary table (size, look, tracker alone, whole pipeline, ratio, target, met), then per look and size
   the stage table, the encoder line and the whole pipeline's CPU by thread, and the other processes' load during
   each measurement (near 0 for figures worth quoting). --json writes every figure.

    python tools/bench.py [--identity PHOTO] [--clip CLIP] [--size WxH ...] [--look photo|head ...] [--frames 300]
                          [--repeat 3] [--json OUT]
    python tools/bench.py --live [--size WxH] [--look photo|head] [--record] [--frames 1200]   (one size, one look)
    python tools/bench.py --deca-data DIR [--live] [--size WxH]                                (one size)

--size and --look may each be given several times; --live and --deca-data measure one size (default 640x480), and
--live one look (default photo, the app's default): run them once per size or look.
"""

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import realtime  # noqa: E402, F401, I001  (first: it sets the thread environment before numpy loads, as in the app)
import av  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from realtime import assets  # noqa: E402
from realtime.config import LOOKS, parse_size  # noqa: E402
from realtime.errors import UserError  # noqa: E402
from realtime.ict.model import IctModel  # noqa: E402
from realtime.ict.identity import cache_key, prepare_identity  # noqa: E402
from realtime.loops.offline import render_clip  # noqa: E402
from realtime.paths import cache_dir  # noqa: E402
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline  # noqa: E402
from realtime.rendering.renderer import RenderOptions, create_context  # noqa: E402
from realtime.io.clips import ClipWriter, Frame, open_video, probe_video  # noqa: E402
from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode  # noqa: E402

log = logging.getLogger("bench")

MEDIA = PROJECT_ROOT.parent / "shared" / "assets" / "media"
DEFAULT_IDENTITY = MEDIA / "skimage_astronaut.png"
DEFAULT_CLIP = MEDIA / "pyfeat_single_face.mp4"
IDENTITY_CACHE = "identities"  # the sub-folder of cache_dir() that RetargetPipeline.create uses
DEFAULT_SIZES = ((640, 480), (1280, 720))
LIVE_SIZE = (640, 480)  # --live and --deca-data without --size
LIVE_LOOK = "photo"  # --live without --look: the app's default look
# The targets: whole-pipeline frames/s over the tracker's alone on the same frames. A size gets the target of
# the first entry (by pixel area) at least as large as it, or the last entry's above them all: 0.8 up to 640x480's
# area, 0.6 above.
RATIO_TARGETS: dict[tuple[int, int], float] = {(640, 480): 0.8, (1280, 720): 0.6}
WARMUP = 10  # frames run but left out of the stage and tracker-alone figures
STAGES = ("decode", "track", "retarget", "geometry", "render")
SLOW_STAGE_MS = 30.0  # a stage above this alone cannot keep 30 frames/s: flagged in the report
BUSY_CORES = 0.2  # other processes' load above which the report warns that the figures are disturbed
# environment variables that set the libraries' threads
THREAD_SETTINGS = ("OPENBLAS_NUM_THREADS", "OPENCV_FOR_THREADS_NUM", "LP_NUM_THREADS")

T = TypeVar("T")


@dataclass(frozen=True)
class StageStats:
    median_ms: float
    p95_ms: float
    mean_ms: float
    samples: int
    cores: float  # the process's CPU time over these calls (all threads) / their wall time


@dataclass(frozen=True)
class ClipFacts:
    source: str
    source_size: tuple[int, int]
    source_frames: int
    size: tuple[int, int]
    frames: int
    fps: float
    codec: str
    looped: bool


def size_name(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def ratio_target(size: tuple[int, int]) -> float:
    """The whole-pipeline / tracker-alone target at ``size`` (see RATIO_TARGETS)."""
    by_area = sorted(RATIO_TARGETS.items(), key=lambda item: item[0][0] * item[0][1])
    for (width, height), target in by_area:
        if size[0] * size[1] <= width * height:
            return target
    return by_area[-1][1]


# ---------------------------------------------------------------------------------------------------------------------
# 1. Prepare


def machine_facts(ctx: Any, antialias: str) -> dict[str, Any]:
    import mediapipe
    import moderngl

    flags = cpu_flags()
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "vector": {flag: flag in flags for flag in ("avx2", "avx512f", "fma")} if flags else None,
        "gl_renderer": ctx.info["GL_RENDERER"],
        "gl_version": ctx.info["GL_VERSION"],
        "antialias": antialias,
        "threads": {name: os.environ.get(name, "default") for name in THREAD_SETTINGS},
        "python": platform.python_version(),
        "mediapipe": mediapipe.__version__,
        "moderngl": moderngl.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "av": av.__version__,
        "ffmpeg_libraries": av.ffmpeg_version_info,
    }


def cpu_model() -> str:
    for line in cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    """The first CPU's feature flags (Linux /proc/cpuinfo); empty elsewhere."""
    for line in cpuinfo_lines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def prepare_identity_timed(identity: Path, ctx: Any) -> dict[str, Any]:
    """The identity prepared (or read from the cache) once, timed, so that no pipeline creation pays for it."""
    model_path = assets.ict_model_path()
    entry = cache_dir() / IDENTITY_CACHE / cache_key(identity, model_path)
    from_cache = (entry / "identity.npz").is_file()
    start = time.perf_counter()
    prepare_identity(identity, IctModel.load(model_path), model_path, ctx, cache_dir() / IDENTITY_CACHE)
    seconds = time.perf_counter() - start
    log.info("identity %s: %.2f s (%s)", identity.name, seconds, "from cache" if from_cache else "built, now cached")
    return {"seconds": seconds, "from_cache": from_cache}


def create_pipeline(identity: Path, size: tuple[int, int], look: str, ctx: Any) -> RetargetPipeline:
    options = PipelineOptions(identity=identity, render=RenderOptions(size=size), look=look)
    return RetargetPipeline.create(options, ctx=ctx)


def ping_pong(count: int, length: int) -> Iterator[int]:
    """``length`` indices walking 0..count-1 forwards, then back, and so on: 0 1 2 1 0 1 2 ... for count 3."""
    period = max(2 * count - 2, 1)
    for i in range(length):
        step = i % period
        yield step if step < count else period - step


def make_driver_clip(source: Path, out: Path, size: tuple[int, int], frames: int) -> ClipFacts:
    """``source`` resized to ``size`` and cut or looped (ping-pong) to exactly ``frames`` frames, as H.264."""
    resized: list[np.ndarray] = []
    with open_video(source) as video:
        fps, source_size = video.fps, video.size
        shrink = size[0] * size[1] < source_size[0] * source_size[1]
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        for frame in video:
            resized.append(cv2.resize(frame.image, size, interpolation=interpolation))
            if len(resized) == frames:
                break
    source_frames = len(resized)
    with ClipWriter(out, fps, size, overwrite=True) as writer:
        for index in tqdm(ping_pong(source_frames, frames), total=frames, desc=f"Driver clip {size_name(size)}",
                          unit="frame"):
            writer.write(resized[index])
    info = probe_video(out)
    if info.frame_count != frames:
        log.warning("the driver clip has %d frames, %d were written", info.frame_count, frames)
    return ClipFacts(
        source=source.name,
        source_size=source_size,
        source_frames=source_frames,  # only as many as were needed
        size=(info.width, info.height),
        frames=info.frame_count,
        fps=fps,
        codec=info.codec,
        looped=source_frames < frames,
    )


def decode_all(clip: Path) -> list[Frame]:
    """Every frame of ``clip``, decoded into memory by the app's decoder (not timed)."""
    with open_video(clip) as video:
        return list(video)


# ---------------------------------------------------------------------------------------------------------------------
# Measuring: wall and CPU time, and the other processes' load


@dataclass
class StageClock:
    """Wall and CPU seconds of each call of one stage."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def summary(self) -> StageStats:
        wall, cpu = np.asarray(self.wall[WARMUP:]), np.asarray(self.cpu[WARMUP:])
        return StageStats(
            median_ms=float(np.median(wall)) * 1000,
            p95_ms=float(np.percentile(wall, 95)) * 1000,
            mean_ms=float(wall.mean()) * 1000,
            samples=len(wall),
            cores=float(cpu.sum() / wall.sum()) if wall.sum() > 0 else 0.0,
        )


def timed(clock: StageClock, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, its wall time and the process's CPU time over it (all threads) noted in ``clock``."""
    cpu, start = time.process_time(), time.perf_counter()
    result = fn(*args)
    clock.wall.append(time.perf_counter() - start)
    clock.cpu.append(time.process_time() - cpu)
    return result


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """The cores this process kept busy between ``start()`` and ``stop()`` (CPU time of all its threads over wall
    time), and how busy the rest of the machine was meanwhile.

    Other processes (someone's test run) take cores from the stages and make the figures meaningless: the report
    shows their share so a disturbed run is recognised.
    """

    def start(self) -> None:
        self._wall, self._machine, self._own = time.perf_counter(), machine_busy_seconds(), time.process_time()

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self._wall
        own = (time.process_time() - self._own) / wall
        machine = machine_busy_seconds()
        if machine is None or self._machine is None:
            return {"own_cores": own, "other_cores": None}
        return {"own_cores": own, "other_cores": max((machine - self._machine) / wall - own, 0.0)}


# Where a whole-pipeline run's CPU goes, by thread: a thread's Python name, else the name its library gave it (Linux
# /proc comm), matched by prefix. Each thread is counted once, whichever stage it serves; the stage table above times
# each call alone, with every thread's CPU during it.
THREAD_ROLES = (
    ("MainThread", "draw"),  # GL calls: llvmpipe shades vertices and sets up triangles on the calling thread
    ("llvmpipe-", "rasterise"),  # llvmpipe's rasteriser threads
    ("drishti", "MediaPipe"),  # MediaPipe's graph (the landmark and blendshape models)
    ("ThreadPoolExecutor", "MediaPipe"),  # the one thread MediaPipe's Python API calls its C library on
    ("track", "track"),  # the tracker's Python side: image in, results out
    ("pose", "pose"),  # retargeting and the mesh's geometry
    ("decode:", "decode"),
    ("av:", "FFmpeg threads"),  # the decoder's frame threads
    ("encode:", "encode"),  # PyAV and libx264, on the clip writer's thread
)
ENDED = "ended unseen"  # CPU of threads that ended without telling: the process's CPU time less every thread seen


def thread_cpu_seconds() -> dict[int, tuple[str, float]] | None:
    """Each live thread of this process: (name, CPU seconds so far), by native id; None without Linux /proc."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    python_names = {thread.native_id: thread.name for thread in threading.enumerate()}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    threads = {}
    for tid in tids:
        try:
            comm = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        threads[int(tid)] = (python_names.get(int(tid), comm), (int(fields[11]) + int(fields[12])) / tick)
    return threads


def thread_role(name: str) -> str:
    return next((role for prefix, role in THREAD_ROLES if name.startswith(prefix)), "other")


class ThreadMeter:
    """CPU seconds each role's threads (`THREAD_ROLES`) used between ``start()`` and ``stop()``; None where
    threads cannot be read (no Linux /proc).

    Threads alive at ``stop()`` are read from /proc; Python threads that end before it note their own CPU time as
    they end (``threading.Thread.run`` is wrapped meanwhile: sampling them instead would need the GIL, which the
    pipeline's threads hold, and would miss their last part). What neither accounts for (native threads that ended,
    such as the decoder's) is `ENDED`.
    """

    def start(self) -> None:
        self._first = thread_cpu_seconds()
        self._ended: dict[int, tuple[str, float]] = {}
        self._run = threading.Thread.run
        self._cpu = time.process_time()
        ended, run = self._ended, self._run

        def noting_its_cpu(thread: threading.Thread) -> None:
            try:
                run(thread)
            finally:
                ended[threading.get_native_id()] = (thread.name, time.thread_time())

        if self._first is not None:
            threading.Thread.run = noting_its_cpu

    def stop(self) -> dict[str, float] | None:
        cpu = time.process_time() - self._cpu
        if self._first is None:
            return None
        threading.Thread.run = self._run
        # a thread that ended may linger in /proc under its library name for a moment: its own note comes first
        threads = {**(thread_cpu_seconds() or {}), **self._ended}
        roles: dict[str, float] = {}
        for tid, (name, seconds) in threads.items():
            used = seconds - self._first.get(tid, (name, 0.0))[1]
            roles[thread_role(name)] = roles.get(thread_role(name), 0.0) + used
        roles[ENDED] = max(cpu - sum(roles.values()), 0.0)
        return roles


# ---------------------------------------------------------------------------------------------------------------------
# 2. Stages, one at a time, and the encoder alone


def time_stages(pipeline: RetargetPipeline, clip: Path, fps: float) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Every frame of ``clip`` through the stages in turn, each call timed on its own; the rendered frames too."""
    clocks = {stage: StageClock() for stage in STAGES}
    dt = 1.0 / fps
    faces = 0
    rendered: list[np.ndarray] = []
    capture = cv2.VideoCapture(str(clip), cv2.CAP_FFMPEG)
    if not capture.isOpened():
        raise UserError(f"OpenCV could not open the driver clip {clip}")

    def decode() -> np.ndarray | None:
        ok, bgr = capture.read()
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if ok else None

    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    load = LoadMeter()
    load.start()
    bar = tqdm(total=total, desc=f"Stages {pipeline.options.look} {size_name(pipeline.renderer.options.size)}",
               unit="frame")
    try:
        for index in itertools.count():
            rgb = timed(clocks["decode"], decode)
            if rgb is None:  # the end of the clip
                clocks["decode"].wall.pop()
                clocks["decode"].cpu.pop()
                break
            face = timed(clocks["track"], pipeline.track, rgb, index * dt)
            pose = timed(clocks["retarget"], pipeline.pose, face, dt)
            geometry = timed(clocks["geometry"], pipeline.geometry, pose)
            image = timed(clocks["render"], pipeline.draw, geometry)
            rendered.append(image.copy())
            faces += face is not None
            bar.update()
    finally:
        bar.close()
        capture.release()
    run = {"frames": len(rendered), "frames_with_face": faces, **load.stop()}
    return {"stages": {stage: asdict(clock.summary()) for stage, clock in clocks.items()}, "stage_run": run}, rendered


def time_encoder(frames: list[np.ndarray], fps: float, out: Path) -> dict[str, Any]:
    """``frames`` through ClipWriter (the app's encoder) as fast as it takes them, until the clip is finalised."""
    size = (frames[0].shape[1], frames[0].shape[0])
    load = LoadMeter()
    load.start()
    cpu, start = time.process_time(), time.perf_counter()
    writer = ClipWriter(out, fps, size, overwrite=True)
    for image in tqdm(frames, desc=f"Encoder {size_name(size)}", unit="frame"):
        writer.write(image)
    writer.close()
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "frames": writer.frames_written,
        "seconds": seconds,
        "fps": len(frames) / seconds,
        "cpu_ms_per_frame": cpu * 1000 / len(frames),
        "bytes": out.stat().st_size,
        **load.stop(),
    }


# ---------------------------------------------------------------------------------------------------------------------
# 3. Tracker alone and whole pipeline


def time_tracker_alone(frames: list[Frame]) -> dict[str, Any]:
    """A fresh tracker (VIDEO mode) on the decoded ``frames``; the first WARMUP are left out of the figures."""
    clock = StageClock()
    faces = 0
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.VIDEO)) as tracker:
        for frame in frames[:WARMUP]:
            tracker.track(frame.image, frame.timestamp)
        load = LoadMeter()
        load.start()
        start = time.perf_counter()
        for frame in frames[WARMUP:]:
            faces += timed(clock, tracker.track, frame.image, frame.timestamp) is not None
        seconds = time.perf_counter() - start
        cores = load.stop()
    measured = len(frames) - WARMUP
    return {
        "frames": measured,
        "frames_with_face": faces,
        "seconds": seconds,
        "fps": measured / seconds,
        "ms_per_frame": seconds * 1000 / measured,
        "median_ms": float(np.median(clock.wall)) * 1000,
        **cores,
    }


def time_whole(identity: Path, size: tuple[int, int], look: str, ctx: Any, clip: Path, out: Path) -> dict[str, Any]:
    """``render_clip`` on ``clip`` once, with a fresh pipeline (fresh tracker and filters) whose creation is not
    timed."""
    pipeline = create_pipeline(identity, size, look, ctx)
    load, threads = LoadMeter(), ThreadMeter()
    try:
        load.start()
        threads.start()
        start = time.perf_counter()
        result = render_clip(pipeline, clip, out, overwrite=True, progress=False)
        seconds = time.perf_counter() - start
        roles = threads.stop()  # before close(): MediaPipe's threads end with the tracker
        cores = load.stop()  # the clip writer's thread has been joined: its CPU time is counted
    finally:
        pipeline.close()
    log.info("whole pipeline, %s %s: %d frames in %.2f s, %.1f frames/s, %.2f cores busy", look, size_name(size),
             result.frames, seconds, result.frames / seconds, cores["own_cores"])
    per_frame = None if roles is None else {role: used * 1000 / result.frames for role, used in roles.items()}
    return {"frames": result.frames, "frames_with_face": result.frames_with_face, "seconds": seconds,
            "fps": result.frames / seconds, "cpu_ms_per_frame": cores["own_cores"] * seconds * 1000 / result.frames,
            "thread_cpu_ms_per_frame": per_frame, **cores}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(np.median([run[key] for run in runs]))


def median_thread_cpu(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Per thread role, the median over ``runs`` of its CPU milliseconds per frame, largest first."""
    if any(run["thread_cpu_ms_per_frame"] is None for run in runs):
        return None
    roles = {role for run in runs for role in run["thread_cpu_ms_per_frame"]}
    medians = {role: float(np.median([run["thread_cpu_ms_per_frame"].get(role, 0.0) for run in runs]))
               for role in roles}
    return dict(sorted(medians.items(), key=lambda item: -item[1]))


# ---------------------------------------------------------------------------------------------------------------------
# The run: every size, every look


def bench_size(args: argparse.Namespace, ctx: Any, size: tuple[int, int], folder: Path) -> dict[str, Any]:
    """Everything measured at ``size``: the driver clip, each look's stages and encoder, then --repeat rounds of
    the tracker alone and each look's whole pipeline, interleaved."""
    driver = folder / f"driver-{size_name(size)}.mp4"
    clip = make_driver_clip(args.clip, driver, size, args.frames)
    log.info("driver clip: %s, %dx%d, %d frames", driver, *clip.size, clip.frames)
    looks: dict[str, dict[str, Any]] = {}
    for look in args.look:
        start = time.perf_counter()
        pipeline = create_pipeline(args.identity, size, look, ctx)
        create_s = time.perf_counter() - start
        drawn = list(pipeline.renderer.size)  # the photo look draws a smaller photo at its own resolution
        try:
            stages, rendered = time_stages(pipeline, driver, clip.fps)
        finally:
            pipeline.close()
        encode = time_encoder(rendered, clip.fps, folder / f"encoder-{look}.mp4")
        del rendered  # up to a few hundred megabytes at 720p
        sequential_ms = sum(stats["median_ms"] for stats in stages["stages"].values())
        looks[look] = {"pipeline_create_s": create_s, "drawn_size": drawn, **stages, "encode": encode,
                       "sequential_estimate": {"ms_per_frame": sequential_ms, "fps": 1000 / sequential_ms}}

    frames = decode_all(driver)
    tracker_runs: list[dict[str, Any]] = []
    whole_runs: dict[str, list[dict[str, Any]]] = {look: [] for look in args.look}
    for round_ in range(args.repeat):
        log.info("round %d of %d at %s: tracker alone, then the whole pipeline per look", round_ + 1, args.repeat,
                 size_name(size))
        tracker_runs.append(time_tracker_alone(frames))
        for look, runs in whole_runs.items():
            runs.append(time_whole(args.identity, size, look, ctx, driver, folder / f"whole-{look}.mp4"))
    del frames

    tracker = {"fps_median": median_of(tracker_runs, "fps"), "ms_per_frame_median": median_of(tracker_runs,
               "ms_per_frame"), "cores_median": median_of(tracker_runs, "own_cores"), "runs": tracker_runs}
    target = ratio_target(size)
    for look, runs in whole_runs.items():
        whole = {"fps_median": median_of(runs, "fps"), "cores_median": median_of(runs, "own_cores"),
                 "cpu_ms_per_frame_median": median_of(runs, "cpu_ms_per_frame"),
                 "thread_cpu_ms_per_frame_median": median_thread_cpu(runs), "runs": runs}
        ratio = whole["fps_median"] / tracker["fps_median"]
        looks[look].update(whole=whole, ratio=ratio, target=target, met=ratio >= target,
                           whole_over_sequential=whole["fps_median"] / looks[look]["sequential_estimate"]["fps"])
    return {"clip": asdict(clip), "target": target, "tracker_alone": tracker, "looks": looks}


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = create_context()
    machine = machine_facts(ctx, RenderOptions().antialias)
    prepare = prepare_identity_timed(args.identity, ctx)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sizes = {size_name(size): bench_size(args, ctx, size, Path(tmp)) for size in args.size}
    summary = [
        {"size": name, "look": look, "tracker_alone_fps": result["tracker_alone"]["fps_median"],
         "whole_fps": figures["whole"]["fps_median"], "ratio": figures["ratio"], "target": figures["target"],
         "met": figures["met"]}
        for name, result in sizes.items() for look, figures in result["looks"].items()
    ]
    return {
        "machine": machine,
        "identity": args.identity.name,
        "identity_prepare": prepare,
        "frames": args.frames,
        "repeat": args.repeat,
        "warmup_frames": WARMUP,
        "targets": {size_name(size): target for size, target in RATIO_TARGETS.items()},
        "summary": summary,
        "sizes": sizes,
    }


# ---------------------------------------------------------------------------------------------------------------------
# 4. Report


def format_machine(machine: dict[str, Any]) -> list[str]:
    vector = machine["vector"]
    if vector is None:
        extensions = "unknown (no /proc/cpuinfo)"
    else:
        extensions = ", ".join([f"avx2 {'yes' if vector['avx2'] else 'no'}", f"fma {'yes' if vector['fma'] else 'no'}",
                                "avx512f yes" if vector["avx512f"] else "no AVX-512"])
    return [
        f"CPU        {machine['cpu_model']}, {machine['cpu_available']} cores available ({machine['cpu_count']} in "
        f"the machine); {extensions}",
        f"GL         {machine['gl_renderer']} | {machine['gl_version']} | anti-aliasing {machine['antialias']}",
        "threads    " + ", ".join(f"{name}={value}" for name, value in machine["threads"].items()),
        f"versions   python {machine['python']}, mediapipe {machine['mediapipe']}, moderngl {machine['moderngl']}, "
        f"numpy {machine['numpy']}, opencv {machine['opencv']}, av {machine['av']} "
        f"(FFmpeg {machine['ffmpeg_libraries']})",
    ]


def format_summary(report: dict[str, Any]) -> list[str]:
    lines = [f"{'size':<11}{'look':<7}{'tracker alone':<24}{'whole pipeline':<24}{'ratio':<7}target"]
    for row in report["summary"]:
        result = report["sizes"][row["size"]]
        tracker, whole = result["tracker_alone"], result["looks"][row["look"]]["whole"]
        lines.append(
            f"{row['size']:<11}{row['look']:<7}"
            + f"{row['tracker_alone_fps']:.1f} fps, {tracker['cores_median']:.2f} cores".ljust(24)
            + f"{row['whole_fps']:.1f} fps, {whole['cores_median']:.2f} cores".ljust(24)
            + f"{row['ratio']:<7.2f}{row['target']:.2f}  {'met' if row['met'] else 'MISSED'}"
        )
    return lines


def format_look(name: str, look: str, result: dict[str, Any]) -> list[str]:
    figures = result["looks"][look]
    run, encode, whole = figures["stage_run"], figures["encode"], figures["whole"]
    lines = [
        "",
        f"{name} {look}: stages one at a time over {run['frames'] - WARMUP} frames after {WARMUP} warm-up, face "
        f"found in {run['frames_with_face']}/{run['frames']}; pipeline set-up {figures['pipeline_create_s']:.2f} s; "
        f"drawn at {size_name(tuple(figures['drawn_size']))}",
        f"{'stage':<16}{'median ms':>10}{'p95 ms':>9}{'cores':>7}",
    ]
    for stage, stats in figures["stages"].items():
        flag = "  <-- slow" if stats["median_ms"] > SLOW_STAGE_MS else ""
        lines.append(f"{stage:<16}{stats['median_ms']:>10.2f}{stats['p95_ms']:>9.2f}{stats['cores']:>7.2f}{flag}")
    sequential = figures["sequential_estimate"]
    lines += [
        f"{'sum of medians':<16}{sequential['ms_per_frame']:>10.2f}{'':>16}  = {sequential['fps']:.1f} frames/s "
        "(sequential estimate, encoding apart)",
        f"encode (ClipWriter alone, as fast as it takes them): {encode['fps']:.1f} frames/s, "
        f"{encode['cpu_ms_per_frame']:.2f} ms CPU per frame (all threads), {encode['own_cores']:.2f} cores",
        f"whole pipeline: {whole['fps_median']:.1f} frames/s (median of {len(whole['runs'])}: "
        + ", ".join(f"{r['fps']:.1f}" for r in whole["runs"])
        + f"), {whole['cores_median']:.2f} cores; {figures['whole_over_sequential']:.2f}x the sequential estimate",
    ]
    roles = whole["thread_cpu_ms_per_frame_median"]
    if roles is not None:
        lines.append(f"whole pipeline's CPU per frame by thread: {whole['cpu_ms_per_frame_median']:.2f} ms = "
                     + ", ".join(f"{role} {ms:.2f}" for role, ms in roles.items()))
    return lines


def format_report(report: dict[str, Any]) -> str:
    prepare = report["identity_prepare"]
    lines = format_machine(report["machine"])
    lines += [
        f"identity   {report['identity']}: {prepare['seconds']:.2f} s "
        f"({'from cache' if prepare['from_cache'] else 'built, now cached'})",
    ]
    for name, result in report["sizes"].items():
        clip = result["clip"]
        lines.append(
            f"clip       {clip['source']} {clip['source_size'][0]}x{clip['source_size'][1]} resized to {name}, "
            f"{clip['frames']} frames at {clip['fps']:.2f} fps "
            f"({'looped ping-pong from ' + str(clip['source_frames']) + ' frames' if clip['looped'] else 'not looped'}"
            f"), {clip['codec']}")
    lines += ["", f"whole pipeline (render_clip: decode, track, pose, draw, encode) against the tracker alone on the "
              f"same decoded frames (median of {report['repeat']} interleaved runs each)", *format_summary(report)]
    for name, result in report["sizes"].items():
        tracker = result["tracker_alone"]
        lines += ["", f"{name} tracker alone: {tracker['fps_median']:.1f} frames/s, "
                  f"{tracker['ms_per_frame_median']:.2f} ms per frame, {tracker['cores_median']:.2f} cores (runs: "
                  + ", ".join(f"{r['fps']:.1f}" for r in tracker["runs"]) + ")"]
        for look in result["looks"]:
            lines += format_look(name, look, result)
    lines += ["", "other processes: " + ", ".join(
        f"{name} {format_cores(low)} to {format_cores(high)}" for name, (low, high) in other_load(report).items())
        + " during the measurements (should be near 0 for trustworthy figures)"]
    return "\n".join(lines)


def other_load(report: dict[str, Any]) -> dict[str, tuple[float | None, float | None]]:
    """Per size, the least and the most the other processes kept busy during any measurement."""
    load = {}
    for name, result in report["sizes"].items():
        cores = [run["other_cores"] for run in result["tracker_alone"]["runs"]]
        for figures in result["looks"].values():
            cores += [figures["stage_run"]["other_cores"], figures["encode"]["other_cores"]]
            cores += [run["other_cores"] for run in figures["whole"]["runs"]]
        known = [c for c in cores if c is not None]
        load[name] = (min(known), max(known)) if known else (None, None)
    return load


def format_cores(cores: float | None) -> str:
    return "unknown" if cores is None else f"{cores:.2f} cores"


def warn(report: dict[str, Any]) -> None:
    """A warning per missed target, slow stage, poorly tracked clip and disturbed measurement; never an error."""
    for row in report["summary"]:
        if not row["met"]:
            log.warning("target missed at %s, %s look: the whole pipeline runs %.1f frames/s, %.2fx the tracker alone "
                        "(%.1f frames/s); the target is %.2fx", row["size"], row["look"], row["whole_fps"],
                        row["ratio"], row["tracker_alone_fps"], row["target"])
    for name, result in report["sizes"].items():
        for look, figures in result["looks"].items():
            for stage, stats in figures["stages"].items():
                if stats["median_ms"] > SLOW_STAGE_MS:
                    log.warning("%s %s: stage %s takes %.1f ms per frame (median): above %.0f ms", name, look, stage,
                                stats["median_ms"], SLOW_STAGE_MS)
            run = figures["stage_run"]
            if run["frames_with_face"] < 0.9 * run["frames"]:
                log.warning("%s %s: the tracker found a face in only %d of %d frames: the figures understate "
                            "tracking work", name, look, run["frames_with_face"], run["frames"])
    busiest = max((high for _, high in other_load(report).values() if high is not None), default=0.0)
    if busiest > BUSY_CORES:
        log.warning("other processes kept up to %.2f cores busy during the benchmark: the figures are disturbed, "
                    "run it again on a quiet machine", busiest)


# ---------------------------------------------------------------------------------------------------------------------
# Live mode: the driver clip played as a 30 fps webcam through the live loop into a virtual camera (one size, one look)


class TimingCamera:
    """A pyvirtualcam backend standing in for the v4l2loopback device: it only notes when each frame arrives."""

    arrivals: ClassVar[list[float]] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        self.name = device or "bench"
        TimingCamera.arrivals = []

    def send(self, frame: np.ndarray) -> None:
        TimingCamera.arrivals.append(time.perf_counter())

    def close(self) -> None:
        pass

    def device(self) -> str:
        return self.name

    def native_fourcc(self) -> int | None:
        return None


def run_live(args: argparse.Namespace) -> dict[str, Any]:
    """Capture-to-virtual-camera latency and sustained output rate over --frames output frames, at one size and look;
    --record records with ClipWriter, as the app's r key does."""
    import pyvirtualcam

    from realtime.io.capture import Capture, CaptureOptions
    from realtime.io.virtual_camera import VirtualCamera
    from realtime.loops.live import LiveLoop, LiveOptions

    size, look = args.size[0], args.look[0]
    ctx = create_context()
    prepare: dict[str, Any] = {}
    started = time.perf_counter()
    if args.deca_data is not None:
        from realtime.deca.pipeline import DecaOptions, DecaPipeline

        look = "deca"
        pipeline = DecaPipeline.create(DecaOptions(identity=args.identity, deca_data=args.deca_data, size=size), ctx)
    else:
        prepare["identity"] = prepare_identity_timed(args.identity, ctx)
        started = time.perf_counter()
        pipeline = create_pipeline(args.identity, size, look, ctx)
    prepare["pipeline_create_s"] = time.perf_counter() - started
    pyvirtualcam.register_backend("bench", TimingCamera)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        driver = Path(tmp) / "driver.mp4"
        clip = make_driver_clip(args.clip, driver, size, min(args.frames, 300))
        record = Path(tmp) / "live.mp4" if args.record else None
        with Capture.create_from_options(CaptureOptions(source=str(driver), loop=True)) as capture:
            camera = VirtualCamera.open(size, capture.fps, backend="bench")
            started = time.perf_counter()
            options = LiveOptions(max_frames=args.frames, worker=True, record=record)
            stats = LiveLoop(pipeline, capture, camera, None, options).run()
            seconds = time.perf_counter() - started
            camera.close()
            dropped_input = capture.frames_dropped
        recorded = probe_video(record).frame_count if record is not None else None
        machine = machine_facts(ctx, pipeline.renderer.options.antialias)
        pipeline.close()
    arrivals = np.array(TimingCamera.arrivals[WARMUP:])
    intervals_ms = np.diff(arrivals) * 1000
    latencies = np.array(list(stats.latencies_ms)[WARMUP:])
    expected = (arrivals[-1] - arrivals[0]) * clip.fps + 1
    return {
        "machine": machine,
        "clip": asdict(clip),
        "size": size_name(size),
        "look": look,
        "identity": args.identity.name,
        "prepare": prepare,
        "recording": {"frames": recorded} if args.record else None,
        "seconds": seconds,
        "frames_out": stats.frames_out,
        "frames_retargeted": stats.frames_rendered,
        "frames_held": stats.frames_held,
        "camera_frames_dropped": dropped_input,
        "output_fps": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]),
        "output_frames_missing": max(0, round(expected - len(arrivals))),
        "interval_ms": {"median": float(np.median(intervals_ms)), "p95": float(np.percentile(intervals_ms, 95)),
                        "max": float(intervals_ms.max())},
        "latency_ms": {"median": float(np.median(latencies)), "p95": float(np.percentile(latencies, 95)),
                       "max": float(latencies.max())},
    }


def format_live_report(report: dict[str, Any]) -> str:
    clip, recording = report["clip"], report["recording"]
    return "\n".join([
        *format_machine(report["machine"]),
        f"measured   size {report['size']}, look {report['look']}",
        f"source     {clip['source']} resized to {clip['size'][0]}x{clip['size'][1]}, played as a "
        f"{clip['fps']:.0f} fps webcam (looped)",
        "",
        f"output     {report['frames_out']} frames in {report['seconds']:.1f} s: {report['output_fps']:.1f} fps "
        f"(first {WARMUP} left out); {report['output_frames_missing']} output frames missing against the camera rate",
        f"interval   median {report['interval_ms']['median']:.1f} ms, p95 {report['interval_ms']['p95']:.1f} ms, "
        f"max {report['interval_ms']['max']:.1f} ms",
        f"latency    capture -> virtual camera: median {report['latency_ms']['median']:.1f} ms, "
        f"p95 {report['latency_ms']['p95']:.1f} ms, max {report['latency_ms']['max']:.1f} ms",
        f"camera     {report['frames_retargeted']} frames retargeted, {report['camera_frames_dropped']} skipped "
        f"(newer ones came first), {report['frames_held']} output frames repeated",
        f"recording  {recording['frames']} frames (ClipWriter)" if recording else "recording  off",
    ])


# ---------------------------------------------------------------------------------------------------------------------
# DECA mode: the FLAME + DECA path per stage, torch on the CPU (one size)


DECA_STAGES = ("track", "crop", "E_flame", "FLAME", "D_detail", "detail normals", "render")


def run_deca(args: argparse.Namespace) -> dict[str, Any]:
    from realtime.deca.crop import deca_crop
    from realtime.deca.flame import flame_vertices
    from realtime.deca.pipeline import DecaOptions, DecaPipeline, full_pose

    size = args.size[0]
    ctx = create_context()
    pipeline = DecaPipeline.create(DecaOptions(identity=args.identity, deca_data=args.deca_data, size=size), ctx)
    model, identity = pipeline.model, pipeline.identity
    clocks = {stage: StageClock() for stage in DECA_STAGES}
    index = model.template.render_vertex

    def detail_normals(vertices: np.ndarray, normals: np.ndarray, displacement: np.ndarray) -> None:
        pipeline._detail.run(vertices[index], normals[index], displacement)
        ctx.finish()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        driver = Path(tmp) / "driver.mp4"
        clip = make_driver_clip(args.clip, driver, size, min(args.frames, 150))
        with open_video(driver) as video:
            for frame in tqdm(video, total=clip.frames, desc="DECA stages", unit="frame"):
                face = timed(clocks["track"], pipeline.tracker.track, frame.image, frame.timestamp)
                if face is None:
                    continue
                crop, _ = timed(clocks["crop"], deca_crop, frame.image, face.landmarks)
                code = timed(clocks["E_flame"], model.encoder.encode, crop)
                exp, jaw = code["exp"], code["pose"][3:6]
                pose = full_pose(np.zeros(3), jaw)
                vertices = timed(clocks["FLAME"], flame_vertices, model.flame, identity.flame, exp, pose)
                normals = pipeline._normals(vertices)
                displacement = timed(clocks["D_detail"], model.encoder.decode_detail, jaw, exp, identity.detail)
                timed(clocks["detail normals"], detail_normals, vertices, normals, displacement)
                timed(clocks["render"], pipeline.renderer.render, vertices, normals, None)
        machine = machine_facts(ctx, pipeline.renderer.options.antialias)
        started = time.perf_counter()
        result = render_clip(pipeline, driver, Path(tmp) / "whole.mp4", overwrite=True, progress=False)
        whole_fps = result.frames / (time.perf_counter() - started)
        pipeline.close()
    stages = {stage: asdict(clock.summary()) for stage, clock in clocks.items()}
    networks = model.encoder.describe() if hasattr(model.encoder, "describe") else "torch fp32"
    return {"machine": machine, "clip": asdict(clip), "networks": networks, "stages": stages, "whole_fps": whole_fps}


def format_deca_report(report: dict[str, Any]) -> str:
    clip = report["clip"]
    lines = [*format_machine(report["machine"]), f"networks   {report['networks']}",
             f"clip       {clip['source']} resized to {clip['size'][0]}x{clip['size'][1]}, {clip['frames']} frames", "",
             f"{'stage':<20}{'median ms':>12}{'p95 ms':>10}{'cores':>7}"]
    for stage, stats in report["stages"].items():
        lines.append(f"{stage:<20}{stats['median_ms']:>12.2f}{stats['p95_ms']:>10.2f}{stats['cores']:>7.2f}")
    lines += ["", f"whole pipeline (offline, threads overlapping): {report['whole_fps']:.1f} frames/s"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Main


def unique(values: list[T]) -> list[T]:
    return list(dict.fromkeys(values))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identity", type=Path, default=DEFAULT_IDENTITY, metavar="PHOTO",
                        help=f"identity photo (default {DEFAULT_IDENTITY})")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help=f"driver clip (default {DEFAULT_CLIP})")
    parser.add_argument("--size", type=parse_size, action="append", metavar="WxH",
                        help="a benchmark size, repeatable: driver frames are resized to it and the avatar rendered at "
                             f"it (default {' and '.join(size_name(s) for s in DEFAULT_SIZES)}; --live and "
                             f"--deca-data: one, default {size_name(LIVE_SIZE)})")
    parser.add_argument("--look", choices=LOOKS, action="append",
                        help=f"a look to measure, repeatable (default {' and '.join(LOOKS)}; --live: one, default "
                             f"{LIVE_LOOK})")
    parser.add_argument("--frames", type=int, default=300, help="frames in the driver clip (default 300)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of tracker-alone and whole-pipeline runs, interleaved (default 3)")
    parser.add_argument("--live", action="store_true",
                        help="live mode: the clip as a webcam through the live loop into a virtual camera; --frames "
                             "output frames (use 1000 or more)")
    parser.add_argument("--record", action="store_true", help="live mode: record the output, as the app's r key does")
    parser.add_argument("--deca-data", type=Path, metavar="DIR",
                        help="DECA mode: time the FLAME + DECA path per stage on this DECA data folder")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write every figure here")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.frames <= WARMUP:
        parser.error(f"--frames must be more than the {WARMUP} warm-up frames")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    for name, path in (("--identity", args.identity), ("--clip", args.clip)):
        if not path.is_file():
            parser.error(f"{name} {path} not found: pass {name} PATH (the default lives in ../shared/assets/media)")
    if args.deca_data is not None and args.look:
        parser.error("--look does not apply to the DECA path")
    single = args.live or args.deca_data is not None
    args.size = unique(args.size or ([LIVE_SIZE] if single else list(DEFAULT_SIZES)))
    args.look = unique(args.look or ([LIVE_LOOK] if args.live else list(LOOKS)))
    if single and len(args.size) > 1:
        parser.error(f"{'--live' if args.live else '--deca-data'} measures one size: give --size once and run it "
                     "again for another")
    if args.live and len(args.look) > 1:
        parser.error("--live measures one look: give --look once and run it again for the other")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        # --live with --deca-data is the live figure of the DECA path
        report = run_live(args) if args.live else run_deca(args) if args.deca_data else run(args)
    except UserError as err:
        log.error("%s", err)
        return err.exit_code
    if not (args.live or args.deca_data):
        warn(report)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", args.json)
    print(format_live_report(report) if args.live else format_deca_report(report) if args.deca_data
          else format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark the retargeting pipeline: per-stage times and whole-pipeline frames per second.

The only place where the project measures speed (tests never time anything). Three steps:

1. Prepare: the identity (timed on its own; cached on disk after the first run) and the pipeline. A driver clip at the
   benchmark size is made from a real clip: every frame resized to --size (a resized real clip, not a camera at that
   size), looped ping-pong up to --frames so the motion stays continuous, written as H.264 into a temp folder.
2. Stages, one at a time on this thread, each call timed alone with time.perf_counter; the first WARMUP frames are
   left out of the figures: decode (cv2 read + BGR->RGB, what the decoder thread does), track (MediaPipe, VIDEO mode),
   retarget (pipeline.pose), geometry (avatar.pose: blendshapes + normals), render (upload, draw, anti-aliasing,
   read-back) and encode (ClipWriter.write: the hand-over to the writer thread; PyAV converts and encodes there, at
   the same time as the other stages).
3. Whole pipeline: realtime.loops.offline.render_clip on the driver clip --repeat times, each with a fresh pipeline,
   like one `run.py --source clip.mp4` run (the pipeline's creation is not timed). Compared with the sum of the stage
   medians (the "sequential estimate"), the ratio shows what the overlapping threads buy. When an ffmpeg program is on
   the PATH, the same runs again with the encoder the app had before PyAV (raw RGB piped to an ffmpeg process, kept
   here as `FfmpegProcessWriter`) in place of ClipWriter.
4. Encoders: the rendered frames of step 2 written by each encoder alone, as fast as it takes them: the caller's time
   per write (what the pipeline's thread pays), the time to finish, and the CPU time per frame of all threads and
   child processes.

    python tools/bench.py [--identity PHOTO] [--clip CLIP] [--size 640x480] [--frames 300] [--repeat 3] [--json OUT]
    python tools/bench.py --live [--record] [--encoder pyav|ffmpeg] [--frames 1200]
"""

import argparse
import contextlib
import itertools
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
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
from realtime.cli import parse_size  # noqa: E402
from realtime.errors import UserError  # noqa: E402
from realtime.ict.model import IctModel  # noqa: E402
from realtime.ict.identity import cache_key, prepare_identity  # noqa: E402
from realtime.loops.offline import render_clip  # noqa: E402
from realtime.paths import cache_dir  # noqa: E402
from realtime.ict.pipeline import HEAD_PIVOT, PipelineOptions, RetargetPipeline  # noqa: E402
from realtime.head import model_matrix  # noqa: E402
from realtime.rendering.renderer import RenderOptions, create_context  # noqa: E402
from realtime.io.clips import open_video  # noqa: E402
from realtime.io.clips import ClipWriter, probe_video  # noqa: E402
from realtime.io.capture import FILE_PROTOCOL  # noqa: E402

log = logging.getLogger("bench")

MEDIA = PROJECT_ROOT.parent / "shared" / "assets" / "media"
DEFAULT_IDENTITY = MEDIA / "skimage_astronaut.png"
DEFAULT_CLIP = MEDIA / "pyfeat_single_face.mp4"
IDENTITY_CACHE = "identities"  # the sub-folder of cache_dir() that RetargetPipeline.create uses
WARMUP = 10  # frames run but left out of the stage figures
STAGES = ("decode", "track", "retarget", "geometry", "render", "encode")
SLOW_STAGE_MS = 30.0  # a stage above this alone cannot keep 30 frames/s: flagged in the report
BUSY_CORES = 0.2  # other processes' load above which the report warns that the figures are disturbed

T = TypeVar("T")


@dataclass(frozen=True)
class StageStats:
    median_ms: float
    p95_ms: float
    mean_ms: float
    samples: int


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


# ---------------------------------------------------------------------------------------------------------------------
# 1. Prepare


def prepare_pipeline(identity: Path, size: tuple[int, int], ctx: Any) -> tuple[RetargetPipeline, dict[str, Any]]:
    """The pipeline, with the identity's preparation timed apart from the rest of the set-up."""
    model_path = assets.ict_model_path()
    entry = cache_dir() / IDENTITY_CACHE / cache_key(identity, model_path)
    from_cache = (entry / "identity.npz").is_file()
    start = time.perf_counter()
    prepare_identity(identity, IctModel.load(model_path), model_path, ctx, cache_dir() / IDENTITY_CACHE)
    identity_s = time.perf_counter() - start
    log.info("identity %s: %.2f s (%s)", identity.name, identity_s, "from cache" if from_cache else "built, now cached")

    start = time.perf_counter()
    pipeline = create_pipeline(identity, size, ctx)
    create_s = time.perf_counter() - start
    log.info("pipeline created in %.2f s (model, renderer, tracker; identity from cache)", create_s)
    return pipeline, {"identity_s": identity_s, "identity_from_cache": from_cache, "pipeline_create_s": create_s}


def create_pipeline(identity: Path, size: tuple[int, int], ctx: Any) -> RetargetPipeline:
    return RetargetPipeline.create(PipelineOptions(identity=identity, render=RenderOptions(size=size)), ctx=ctx)


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
        for index in tqdm(ping_pong(source_frames, frames), total=frames, desc="Driver clip", unit="frame"):
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


# ---------------------------------------------------------------------------------------------------------------------
# The reference encoder: how the app encoded before PyAV


class FfmpegProcessWriter:
    """H.264 through an ffmpeg process fed raw RGB on a pipe, with the command line ``realtime/io/clips.py`` used before
    it moved to PyAV (libx264 veryfast, CRF 18, BT.709 yuv420p, one output frame per input frame). The benchmark's
    reference only: it has ClipWriter's ``write``/``close`` but none of its atomicity or error handling."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int], overwrite: bool = False,
                 fragmented: bool = False) -> None:
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise UserError("the reference encoder needs an ffmpeg program on the PATH")
        width, height = size
        self.path, self.frames_written = Path(path), 0
        cmd = [
            ffmpeg, "-hide_banner", "-nostats", "-loglevel", "error", "-y",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-framerate", f"{fps}", "-i", "pipe:0",
            "-an", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2,scale=out_color_matrix=bt709:out_range=tv,format=yuv420p",
            "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
            "-colorspace", "bt709", "-color_primaries", "bt709", "-color_trc", "bt709", "-color_range", "tv",
            "-fps_mode", "passthrough",
        ]  # fmt: skip
        if fragmented:
            cmd += ["-g", str(max(1, round(fps))), "-movflags", "+frag_keyframe+empty_moov+default_base_moof",
                    "-flush_packets", "1"]
        else:
            cmd += ["-movflags", "+faststart"]
        cmd += ["-f", "mp4", f"{FILE_PROTOCOL}{self.path}"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, bufsize=0)

    def write(self, image: np.ndarray) -> None:
        assert self._proc.stdin is not None
        data = memoryview(np.ascontiguousarray(image)).cast("B")
        sent = 0
        while sent < len(data):
            sent += os.write(self._proc.stdin.fileno(), data[sent:])
        self.frames_written += 1

    def close(self) -> Path:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        if self._proc.wait() != 0:
            raise UserError(f"ffmpeg failed with exit code {self._proc.returncode}")
        return self.path


ENCODERS: dict[str, type] = {"pyav": ClipWriter, "ffmpeg": FfmpegProcessWriter}


def available_encoders() -> list[str]:
    return ["pyav"] + (["ffmpeg"] if shutil.which("ffmpeg") else [])


@contextlib.contextmanager
def app_encoder(name: str) -> Iterator[None]:
    """The app's loops write with ENCODERS[name] within the block (ClipWriter itself for "pyav")."""
    import realtime.loops.live
    import realtime.loops.offline

    modules = (realtime.loops.offline, realtime.loops.live)
    before = [module.ClipWriter for module in modules]
    for module in modules:
        module.ClipWriter = ENCODERS[name]
    try:
        yield
    finally:
        for module, writer in zip(modules, before, strict=True):
            module.ClipWriter = writer


def encode_once(name: str, frames: list[np.ndarray], fps: float, out: Path, paced: bool) -> dict[str, Any]:
    """``frames`` through ENCODERS[name]: as fast as it takes them, or ``paced`` at ``fps`` like a camera."""
    size = (frames[0].shape[1], frames[0].shape[0])
    samples: list[float] = []
    own_before, children_before = cpu_seconds()
    start = time.perf_counter()
    writer = ENCODERS[name](out, fps, size, overwrite=True)
    for index, image in enumerate(tqdm(frames, desc=f"Encoder {name}{' paced' if paced else ''}", unit="frame")):
        if paced:
            time.sleep(max(0.0, start + index / fps - time.perf_counter()))
        timed(samples, writer.write, image)
    close_start = time.perf_counter()
    writer.close()
    end = time.perf_counter()
    own, children = cpu_seconds()
    return {
        "write_ms": asdict(summarise(samples)),
        "finish_ms": (end - close_start) * 1000,
        "fps": len(frames) / (end - start),
        "cpu_ms_per_frame": ((own - own_before) + (children - children_before)) * 1000 / len(frames),
        "frames": probe_video(out).frame_count,
        "bytes": out.stat().st_size,
    }


def time_encoders(frames: list[np.ndarray], fps: float, folder: Path, rounds: int) -> dict[str, dict[str, Any]]:
    """Each available encoder alone on ``frames``, ``rounds`` times interleaved: paced at ``fps`` (what the caller's
    thread pays per write while the encoder keeps up) and as fast as it takes them (throughput, CPU per frame). Per
    encoder the round of median throughput, with every round's frames per second and the median paced write."""
    runs: dict[str, list[tuple[dict, dict]]] = {name: [] for name in available_encoders()}
    for _ in range(rounds):
        for name, done in runs.items():
            out = folder / f"encoder-{name}.mp4"
            done.append((encode_once(name, frames, fps, out, paced=True),
                         encode_once(name, frames, fps, out, paced=False)))
    summary = {}
    for name, done in runs.items():
        fast = sorted((free for _, free in done), key=lambda r: r["fps"])[len(done) // 2]
        paced = sorted((paced for paced, _ in done), key=lambda r: r["write_ms"]["median_ms"])[len(done) // 2]
        summary[name] = {**fast, "fps_rounds": [free["fps"] for _, free in done], "paced": paced}
    return summary


# ---------------------------------------------------------------------------------------------------------------------
# 2. Stages, one at a time


def timed(samples: list[float], fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, its wall time in milliseconds appended to ``samples``."""
    start = time.perf_counter()
    result = fn(*args)
    samples.append((time.perf_counter() - start) * 1000)
    return result


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process and by its finished (waited-for) children, such as ffmpeg."""
    times = os.times()
    return times.user + times.system, times.children_user + times.children_system


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine have used since boot (Linux /proc/stat), None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class LoadMeter:
    """How busy the machine was, apart from this benchmark, between ``start()`` and ``stop()``.

    Other processes (someone's test run) take cores from the stages and make the figures meaningless: the report
    shows their share so a disturbed run is recognised. Call ``stop()`` after ffmpeg children have been waited for.
    """

    def start(self) -> None:
        self._wall, self._machine, self._own = time.perf_counter(), machine_busy_seconds(), sum(cpu_seconds())

    def stop(self) -> dict[str, float | None]:
        wall = time.perf_counter() - self._wall
        own = (sum(cpu_seconds()) - self._own) / wall
        machine = machine_busy_seconds()
        if machine is None or self._machine is None:
            return {"own_cores": own, "other_cores": None}
        return {"own_cores": own, "other_cores": max((machine - self._machine) / wall - own, 0.0)}


def time_stages(
    pipeline: RetargetPipeline, clip: Path, fps: float, out: Path
) -> tuple[dict[str, list[float]], dict, list[np.ndarray]]:
    """Every frame of ``clip`` through the stages in turn, each call timed on its own; the rendered frames too."""
    samples: dict[str, list[float]] = {stage: [] for stage in STAGES}
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
    writer = ClipWriter(out, fps, pipeline.renderer.options.size, overwrite=True)
    bar = tqdm(total=total, desc="Stages", unit="frame")
    try:
        for index in itertools.count():
            rgb = timed(samples["decode"], decode)
            if rgb is None:  # the end of the clip
                samples["decode"].pop()
                break
            face = timed(samples["track"], pipeline.track, rgb, index * dt)
            pose = timed(samples["retarget"], pipeline.pose, face, dt)
            vertices, normals = timed(samples["geometry"], pipeline.avatar.pose, pose.expression)
            matrix = model_matrix(pose.rotation, HEAD_PIVOT)
            image = timed(samples["render"], pipeline.renderer.render, vertices, normals, matrix)
            timed(samples["encode"], writer.write, image)
            rendered.append(image.copy())
            faces += face is not None
            bar.update()
    finally:
        bar.close()
        capture.release()
        writer.close()  # waits for the writer thread, so its CPU time is counted in own_cores
    cores = load.stop()
    frames = len(samples["decode"])
    return samples, {"frames": frames, "frames_with_face": faces, **cores}, rendered


def summarise(samples: list[float]) -> StageStats:
    measured = np.asarray(samples[WARMUP:])
    return StageStats(
        median_ms=float(np.median(measured)),
        p95_ms=float(np.percentile(measured, 95)),
        mean_ms=float(measured.mean()),
        samples=len(measured),
    )


# ---------------------------------------------------------------------------------------------------------------------
# 3. Whole pipeline


def time_whole(identity: Path, size: tuple[int, int], ctx: Any, clip: Path, out: Path, repeat: int,
               encoder: str = "pyav") -> list[dict]:
    """``render_clip`` on ``clip`` ``repeat`` times, each with a fresh pipeline (fresh tracker and filters), writing
    with ``encoder`` (see ENCODERS)."""
    runs = []
    for run in tqdm(range(repeat), desc=f"Whole pipeline ({encoder})", unit="run"):
        pipeline = create_pipeline(identity, size, ctx)
        load = LoadMeter()
        try:
            load.start()
            start = time.perf_counter()
            with app_encoder(encoder):
                result = render_clip(pipeline, clip, out, overwrite=True, progress=False)
            seconds = time.perf_counter() - start
            cores = load.stop()  # own_cores: CPU seconds per wall second of this process and its children
        finally:
            pipeline.close()
        runs.append({
            "frames": result.frames,
            "frames_with_face": result.frames_with_face,
            "seconds": seconds,
            "fps": result.frames / seconds,
            **cores,
        })
        log.info("run %d (%s): %d frames in %.2f s, %.1f frames/s, %.2f cores busy", run + 1, encoder, result.frames,
                 seconds, result.frames / seconds, cores["own_cores"])
    return runs


# ---------------------------------------------------------------------------------------------------------------------
# Report


def machine_facts(ctx: Any, antialias: str) -> dict[str, Any]:
    import mediapipe
    import moderngl

    return {
        "cpu_count": os.cpu_count(),
        "cpu_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "gl_renderer": ctx.info["GL_RENDERER"],
        "gl_version": ctx.info["GL_VERSION"],
        "antialias": antialias,
        "mediapipe": mediapipe.__version__,
        "moderngl": moderngl.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "av": av.__version__,
        "ffmpeg_libraries": av.ffmpeg_version_info,
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_report(report: dict[str, Any]) -> str:
    machine, clip, prep = report["machine"], report["clip"], report["prepare"]
    stages, whole = report["stages"], report["whole"]
    lines = [
        f"CPU        {machine['cpu_count']} cores ({machine['cpu_available']} available), {machine['cpu_model']}",
        f"GL         {machine['gl_renderer']} | {machine['gl_version']} | anti-aliasing {machine['antialias']}",
        f"versions   python {machine['python']}, mediapipe {machine['mediapipe']}, moderngl {machine['moderngl']}, "
        f"numpy {machine['numpy']}, opencv {machine['opencv']}, av {machine['av']} "
        f"(FFmpeg {machine['ffmpeg_libraries']})",
        f"clip       {clip['source']} {clip['source_size'][0]}x{clip['source_size'][1]} resized to "
        f"{clip['size'][0]}x{clip['size'][1]}, {clip['frames']} frames at {clip['fps']:.2f} fps "
        f"({'looped ping-pong from ' + str(clip['source_frames']) + ' frames' if clip['looped'] else 'not looped'}), "
        f"{clip['codec']}",
        f"identity   {report['identity']}: {prep['identity_s']:.2f} s "
        f"({'from cache' if prep['identity_from_cache'] else 'built, now cached'}); "
        f"pipeline set-up {prep['pipeline_create_s']:.2f} s",
        "",
        f"{'stage':<22}{'median ms':>10}{'p95 ms':>10}",
    ]
    for stage in STAGES:
        stats = stages[stage]
        flag = "  <-- slow" if stats["median_ms"] > SLOW_STAGE_MS else ""
        lines.append(f"{stage:<22}{stats['median_ms']:>10.2f}{stats['p95_ms']:>10.2f}{flag}")
    sequential = report["sequential_estimate"]
    lines += [
        f"{'sum of medians':<22}{sequential['ms_per_frame']:>10.2f}{'':>10}  = {sequential['fps']:.1f} frames/s "
        "(sequential estimate)",
        "",
        f"stage timing over {report['stage_run']['frames'] - WARMUP} frames after {WARMUP} warm-up, face found in "
        f"{report['stage_run']['frames_with_face']}/{report['stage_run']['frames']}",
        format_whole("whole pipeline", whole),
    ]
    if report.get("whole_reference"):
        lines.append(format_whole("  with ffmpeg process", report["whole_reference"]))
    lines += [
        f"whole / sequential: {report['whole_over_sequential']:.2f}x",
        f"other processes: {format_cores(report['stage_run']['other_cores'])} during the stages, "
        + ", ".join(format_cores(run["other_cores"])
                    for run in whole["runs"] + (report.get("whole_reference") or {}).get("runs", []))
        + " during the whole runs (should be near 0 for trustworthy figures)",
    ]
    return "\n".join(lines + format_encoders(report["encoders"]))


def format_whole(label: str, whole: dict[str, Any]) -> str:
    return (f"{label}: {whole['fps_median']:.1f} frames/s (median of {len(whole['runs'])}: "
            + ", ".join(f"{run['fps']:.1f}" for run in whole["runs"])
            + f"), {np.median([run['own_cores'] for run in whole['runs']]):.2f} cores busy ({whole['encoder']})")


def format_encoders(encoders: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["", "encoders alone on the rendered frames: paced at the clip's rate (the caller's cost per write), "
             "then as fast as they take them",
             f"{'encoder':<16}{'paced write':>12}{'p95 ms':>8}{'frames/s':>10}{'CPU ms/frame':>14}{'finish ms':>11}"
             f"{'kB':>7}  rounds frames/s"]
    for name, stats in encoders.items():
        label = {"pyav": "PyAV (thread)", "ffmpeg": "ffmpeg process"}[name]
        paced = stats["paced"]["write_ms"]
        lines.append(f"{label:<16}{paced['median_ms']:>12.2f}{paced['p95_ms']:>8.2f}{stats['fps']:>10.1f}"
                     f"{stats['cpu_ms_per_frame']:>14.2f}{stats['finish_ms']:>11.0f}{stats['bytes'] // 1024:>7}  "
                     + ", ".join(f"{fps:.0f}" for fps in stats["fps_rounds"]))
    return lines


def format_cores(cores: float | None) -> str:
    return "unknown" if cores is None else f"{cores:.2f} cores"


# ---------------------------------------------------------------------------------------------------------------------
# Live mode: the driver clip played as a 30 fps webcam through the live loop into a virtual camera


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
    """Capture-to-virtual-camera latency and sustained output rate over --frames output frames."""
    import pyvirtualcam

    from realtime.io.capture import Capture, CaptureOptions
    from realtime.io.virtual_camera import VirtualCamera
    from realtime.loops.live import LiveLoop, LiveOptions

    ctx = create_context()
    if args.deca_data is not None:  # the DECA path: tracking and posing on the worker thread, as the app does
        from realtime.deca.pipeline import DecaOptions, DecaPipeline

        started = time.perf_counter()
        pipeline = DecaPipeline.create(DecaOptions(identity=args.identity, deca_data=args.deca_data, size=args.size),
                                       ctx)
        prepare = {"seconds": time.perf_counter() - started, "from_cache": False}
    else:
        pipeline, prepare = prepare_pipeline(args.identity, args.size, ctx)
    pyvirtualcam.register_backend("bench", TimingCamera)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        driver = Path(tmp) / "driver.mp4"
        clip = make_driver_clip(args.clip, driver, args.size, min(args.frames, 300))
        record = Path(tmp) / "live.mp4" if args.record else None
        with (Capture.create_from_options(CaptureOptions(source=str(driver), loop=True)) as capture,
              app_encoder(args.encoder)):
            camera = VirtualCamera.open(args.size, capture.fps, backend="bench")
            started = time.perf_counter()
            options = LiveOptions(max_frames=args.frames, worker=args.deca_data is not None, record=record)
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
        "identity": args.identity.name,
        "prepare": prepare,
        "recording": {"encoder": args.encoder, "frames": recorded} if args.record else None,
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
    machine, clip, recording = report["machine"], report["clip"], report["recording"]
    return "\n".join([
        f"CPU        {machine['cpu_count']} cores, {machine['cpu_model']}",
        f"GL         {machine['gl_renderer']} | anti-aliasing {machine['antialias']}",
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
        f"recording  {recording['frames']} frames, {recording['encoder']} encoder" if recording else "recording  off",
    ])


# ---------------------------------------------------------------------------------------------------------------------
# DECA mode: the FLAME + DECA path per stage, torch on the CPU


DECA_STAGES = ("track", "crop", "E_flame", "FLAME", "D_detail", "detail normals", "render")


def run_deca(args: argparse.Namespace) -> dict[str, Any]:
    from realtime.deca.crop import deca_crop
    from realtime.deca.flame import flame_vertices
    from realtime.deca.pipeline import DecaOptions, DecaPipeline, full_pose

    ctx = create_context()
    pipeline = DecaPipeline.create(DecaOptions(identity=args.identity, deca_data=args.deca_data, size=args.size), ctx)
    model, identity = pipeline.model, pipeline.identity
    samples: dict[str, list[float]] = {stage: [] for stage in DECA_STAGES}
    index = model.template.render_vertex

    def detail_normals(vertices: np.ndarray, normals: np.ndarray, displacement: np.ndarray) -> None:
        pipeline._detail.run(vertices[index], normals[index], displacement)
        ctx.finish()

    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        driver = Path(tmp) / "driver.mp4"
        clip = make_driver_clip(args.clip, driver, args.size, min(args.frames, 150))
        with open_video(driver) as video:
            for frame in tqdm(video, total=clip.frames, desc="DECA stages", unit="frame"):
                face = timed(samples["track"], pipeline.tracker.track, frame.image, frame.timestamp)
                if face is None:
                    continue
                crop, _ = timed(samples["crop"], deca_crop, frame.image, face.landmarks)
                code = timed(samples["E_flame"], model.encoder.encode, crop)
                exp, jaw = code["exp"], code["pose"][3:6]
                pose = full_pose(np.zeros(3), jaw)
                vertices = timed(samples["FLAME"], flame_vertices, model.flame, identity.flame, exp, pose)
                normals = pipeline._normals(vertices)
                displacement = timed(samples["D_detail"], model.encoder.decode_detail, jaw, exp, identity.detail)
                timed(samples["detail normals"], detail_normals, vertices, normals, displacement)
                timed(samples["render"], pipeline.renderer.render, vertices, normals, None)
        machine = machine_facts(ctx, pipeline.renderer.options.antialias)
        started = time.perf_counter()
        result = render_clip(pipeline, driver, Path(tmp) / "whole.mp4", overwrite=True, progress=False)
        whole_fps = result.frames / (time.perf_counter() - started)
        pipeline.close()
    stages = {stage: asdict(summarise(values)) for stage, values in samples.items()}
    networks = model.encoder.describe() if hasattr(model.encoder, "describe") else "torch fp32"
    return {"machine": machine, "clip": asdict(clip), "networks": networks, "stages": stages, "whole_fps": whole_fps}


def format_deca_report(report: dict[str, Any]) -> str:
    machine, clip = report["machine"], report["clip"]
    lines = [f"CPU        {machine['cpu_count']} cores, {machine['cpu_model']}; networks: {report['networks']}",
             f"clip       {clip['source']} resized to {clip['size'][0]}x{clip['size'][1]}, {clip['frames']} frames", "",
             f"{'stage':<20}{'median ms':>12}{'p95 ms':>10}"]
    for stage, stats in report["stages"].items():
        lines.append(f"{stage:<20}{stats['median_ms']:>12.2f}{stats['p95_ms']:>10.2f}")
    lines += ["", f"whole pipeline (offline, threads overlapping): {report['whole_fps']:.1f} frames/s"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identity", type=Path, default=DEFAULT_IDENTITY, metavar="PHOTO",
                        help=f"identity photo (default {DEFAULT_IDENTITY})")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help=f"driver clip (default {DEFAULT_CLIP})")
    parser.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH",
                        help="benchmark size: driver frames are resized to it and the avatar rendered at it")
    parser.add_argument("--frames", type=int, default=300, help="frames in the driver clip (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="whole-pipeline runs (default 3)")
    parser.add_argument("--live", action="store_true",
                        help="live mode: the clip as a webcam through the live loop into a virtual camera; --frames "
                             "output frames (use 1000 or more)")
    parser.add_argument("--record", action="store_true", help="live mode: record the output, as the app's r key does")
    parser.add_argument("--encoder", choices=tuple(ENCODERS), default="pyav",
                        help="live mode: the recorder's encoder; ffmpeg is the ffmpeg process the app used before PyAV")
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
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    ctx = create_context()
    pipeline, prepare = prepare_pipeline(args.identity, args.size, ctx)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        driver = Path(tmp) / "driver.mp4"
        clip = make_driver_clip(args.clip, driver, args.size, args.frames)
        log.info("driver clip: %s, %dx%d, %d frames", driver, *clip.size, clip.frames)
        try:
            samples, stage_run, rendered = time_stages(pipeline, driver, clip.fps, Path(tmp) / "stages.mp4")
            machine = machine_facts(ctx, pipeline.renderer.options.antialias)
        finally:
            pipeline.close()
        runs: dict[str, list[dict]] = {encoder: [] for encoder in available_encoders()}
        for _ in range(args.repeat):  # interleaved, so that a change in the machine's load hits both encoders alike
            for encoder, done in runs.items():
                done += time_whole(args.identity, args.size, ctx, driver, Path(tmp) / "whole.mp4", 1, encoder)
        whole = {encoder: {"encoder": encoder, "fps_median": float(np.median([r["fps"] for r in done])), "runs": done}
                 for encoder, done in runs.items()}
        encoders = time_encoders(rendered, clip.fps, Path(tmp), args.repeat)

    stages = {stage: asdict(summarise(values)) for stage, values in samples.items()}
    sequential_ms = sum(stats["median_ms"] for stats in stages.values())
    whole_fps = whole["pyav"]["fps_median"]
    return {
        "machine": machine,
        "clip": asdict(clip),
        "identity": args.identity.name,
        "prepare": prepare,
        "warmup_frames": WARMUP,
        "stage_run": stage_run,
        "stages": stages,
        "sequential_estimate": {"ms_per_frame": sequential_ms, "fps": 1000 / sequential_ms},
        "whole": whole["pyav"],
        "whole_reference": whole.get("ffmpeg"),  # the same runs with the ffmpeg process, when there is an ffmpeg
        "whole_over_sequential": whole_fps / (1000 / sequential_ms),
        "encoders": encoders,
    }


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
    if args.live or args.deca_data:
        if args.json is not None:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(format_live_report(report) if args.live else format_deca_report(report))
        return 0
    for stage in STAGES:
        if report["stages"][stage]["median_ms"] > SLOW_STAGE_MS:
            log.warning("stage %s takes %.1f ms per frame (median): above %.0f ms", stage,
                        report["stages"][stage]["median_ms"], SLOW_STAGE_MS)
    if report["stage_run"]["frames_with_face"] < 0.9 * report["stage_run"]["frames"]:
        log.warning("the tracker found a face in only %d of %d frames: the figures understate tracking work",
                    report["stage_run"]["frames_with_face"], report["stage_run"]["frames"])
    busy = [report["stage_run"]["other_cores"]] + [run["other_cores"] for run in report["whole"]["runs"]]
    busy += [run["other_cores"] for run in (report["whole_reference"] or {}).get("runs", [])]
    if max((c for c in busy if c is not None), default=0.0) > BUSY_CORES:
        log.warning("other processes kept up to %.2f cores busy during the benchmark: the figures are disturbed, "
                    "run it again on a quiet machine", max(c for c in busy if c is not None))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        log.info("wrote %s", args.json)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak test: many frames through the live loop, watching memory, file descriptors, threads and output stalls.

A real clip is played as a webcam (looped at its own frame rate, so the capture is reopened at every loop) through the
live loop of the embedded default pipeline into the real virtual camera code (a pyvirtualcam backend that notes when
each frame arrives) and, unless --no-record, the real recorder (PyAV). Five times a second a sampler notes the resident
memory, the open file descriptors and the threads of this process (Linux /proc). At the end it prints, after the
warm-up frames: the growth of each, the longest gap between two output frames and how many gaps exceeded the stall
limit, and the recording's decoded frame count; then whether each figure is within its limit (exit 0) or not (exit 1).

    python tools/soak.py [--frames 50000] [--identity PHOTO] [--clip CLIP] [--size 640x480] [--look photo|head]
                          [--no-record] [--json OUT]
"""

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import realtime  # noqa: E402, F401, I001  (first: it sets the thread environment before numpy loads, as in the app)
import numpy as np  # noqa: E402
import pyvirtualcam  # noqa: E402
from tqdm import tqdm  # noqa: E402

from realtime.io.capture import Capture, CaptureOptions  # noqa: E402
from realtime.cli import parse_size  # noqa: E402
from realtime.errors import UserError  # noqa: E402
from realtime.loops.live import LiveLoop, LiveOptions  # noqa: E402
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline  # noqa: E402
from realtime.rendering.renderer import RenderOptions, create_context  # noqa: E402
from realtime.io.clips import probe_video  # noqa: E402
from realtime.io.virtual_camera import VirtualCamera  # noqa: E402

log = logging.getLogger("soak")

MEDIA = PROJECT_ROOT.parent / "shared" / "assets" / "media"
DEFAULT_IDENTITY = MEDIA / "skimage_astronaut.png"
DEFAULT_CLIP = MEDIA / "pyfeat_single_face.mp4"
BACKEND = "soak"
SAMPLE_PERIOD_S = 0.2  # often enough that a window of samples outvotes the moment of a clip reopening
STEADY_WINDOW = 10  # samples at least in each of the windows compared
MAX_MEMORY_GROWTH_MB = 50.0
MAX_STALL_MS = 100.0


class ArrivalCamera:
    """A pyvirtualcam backend standing in for the v4l2loopback device: it notes when each frame arrives."""

    arrivals: ClassVar[list[float]] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        ArrivalCamera.arrivals = []

    def send(self, frame: np.ndarray) -> None:
        ArrivalCamera.arrivals.append(time.monotonic())

    def close(self) -> None:
        pass

    def device(self) -> str:
        return BACKEND

    def native_fourcc(self) -> int | None:
        return None


@dataclass(frozen=True)
class Sample:
    seconds: float  # since the loop started
    frames: int  # output frames so far
    rss_mb: float
    fds: int
    threads: int  # OS threads of this process (Python's and native ones: MediaPipe, llvmpipe, ...)


def process_sample(started: float) -> Sample:
    rss_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith("VmRSS:"))
    return Sample(seconds=time.monotonic() - started, frames=len(ArrivalCamera.arrivals), rss_mb=rss_kb / 1024,
                  fds=len(os.listdir("/proc/self/fd")), threads=len(os.listdir("/proc/self/task")))


class Sampler:
    """Samples the process every SAMPLE_PERIOD_S on its own thread, and draws the progress bar."""

    def __init__(self, total: int) -> None:
        self.samples: list[Sample] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._bar = tqdm(total=total, unit="frame", desc="soak", disable=None)
        self._thread = threading.Thread(target=self._run, name="soak-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_PERIOD_S):
            sample = process_sample(self._started)
            self.samples.append(sample)
            self._bar.update(sample.frames - self._bar.n)
            self._bar.set_postfix(rss=f"{sample.rss_mb:.0f}MB", fds=sample.fds, threads=sample.threads)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._bar.close()


def soak(args: argparse.Namespace) -> dict[str, Any]:
    ctx = create_context()
    pipeline = RetargetPipeline.create(PipelineOptions(identity=args.identity, render=RenderOptions(size=args.size),
                                                       look=args.look), ctx)
    pyvirtualcam.register_backend(BACKEND, ArrivalCamera)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        record = None if args.no_record else Path(tmp) / "soak.mp4"
        with Capture.create_from_options(CaptureOptions(source=str(args.clip), loop=True)) as capture:
            camera = VirtualCamera.open(args.size, capture.fps, backend=BACKEND)
            if camera is None:
                raise UserError("the soak's virtual camera backend did not open")
            sampler = Sampler(args.frames)
            try:
                options = LiveOptions(max_frames=args.frames, record=record, worker=True)  # as the app
                stats = LiveLoop(pipeline, capture, camera, None, options).run()
            finally:
                sampler.stop()
                camera.close()
            fps = capture.fps
        pipeline.close()
        recorded = probe_video(record).frame_count if record is not None and record.is_file() else None
    return summarise(args, sampler.samples, stats.frames_out, stats.frames_held, recorded, fps)


def steady(counts: Iterable[int]) -> int:
    """The count most samples saw (the smaller on a tie): native libraries' threads come and go every moment."""
    values, seen = np.unique(list(counts), return_counts=True)
    return int(values[np.argmax(seen)])


def summarise(args: argparse.Namespace, samples: list[Sample], frames_out: int, frames_held: int,
              recorded: int | None, fps: float) -> dict[str, Any]:
    after = [s for s in samples if s.frames >= args.warmup] or samples[-1:]
    first, last = after[0], after[-1]
    # descriptors and threads come and go for a moment (the capture reopening the looped clip, the libraries' own
    # worker threads): compare the steady count, the one most often seen, of the first and the last tenth of the
    # samples after the warm-up (at least STEADY_WINDOW samples each, so that a short run's moments are outvoted)
    window = max(STEADY_WINDOW, len(after) // 10)
    early, late = after[:window], after[-window:]
    arrivals = np.array(ArrivalCamera.arrivals[args.warmup:])
    gaps_ms = np.diff(arrivals) * 1000 if len(arrivals) > 1 else np.zeros(1)
    report = {
        "frames": frames_out,
        "frames_held": frames_held,
        "warmup_frames": args.warmup,
        "seconds": samples[-1].seconds if samples else 0.0,
        "camera_fps": fps,
        "output_fps": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0,
        "rss_mb": {"after_warmup": first.rss_mb, "end": last.rss_mb, "max": max(s.rss_mb for s in after),
                   "growth": max(s.rss_mb for s in after) - first.rss_mb},
        "fds": {"after_warmup": steady(s.fds for s in early), "end": steady(s.fds for s in late),
                "max": max(s.fds for s in after)},
        "threads": {"after_warmup": steady(s.threads for s in early), "end": steady(s.threads for s in late),
                    "max": max(s.threads for s in after)},
        "gap_ms": {"median": float(np.median(gaps_ms)), "p99": float(np.percentile(gaps_ms, 99)),
                   "max": float(gaps_ms.max()), "over_limit": int((gaps_ms > MAX_STALL_MS).sum())},
        "recorded_frames": recorded,
        "record": not args.no_record,
        "samples": [asdict(s) for s in samples],
    }
    report["checks"] = {
        f"memory growth under {MAX_MEMORY_GROWTH_MB:.0f} MB": report["rss_mb"]["growth"] < MAX_MEMORY_GROWTH_MB,
        "no file-descriptor growth": report["fds"]["end"] <= report["fds"]["after_warmup"],
        "no thread growth": report["threads"]["end"] <= report["threads"]["after_warmup"],
        f"no output stall over {MAX_STALL_MS:.0f} ms": report["gap_ms"]["over_limit"] == 0,
        "every frame reached the virtual camera": len(ArrivalCamera.arrivals) == frames_out,
    }
    if report["record"]:
        report["checks"]["every frame recorded"] = recorded == frames_out
    return report


def format_report(report: dict[str, Any]) -> str:
    rss, fds, threads, gaps = report["rss_mb"], report["fds"], report["threads"], report["gap_ms"]
    recorded = report["recorded_frames"]
    lines = [
        f"frames     {report['frames']} through the live loop in {report['seconds']:.0f} s "
        f"({report['output_fps']:.1f} fps out, camera {report['camera_fps']:.0f} fps; {report['frames_held']} "
        f"repeated: no newer frame drawn in time, or the camera away); "
        f"figures after the first {report['warmup_frames']}",
        f"memory     resident {rss['after_warmup']:.1f} MB after warm-up, {rss['end']:.1f} MB at the end, "
        f"max {rss['max']:.1f} MB: growth {rss['growth']:.1f} MB",
        f"files      {fds['after_warmup']} descriptors after warm-up, {fds['end']} at the end (max {fds['max']})",
        f"threads    {threads['after_warmup']} after warm-up, {threads['end']} at the end (max {threads['max']})",
        f"output     gap between frames: median {gaps['median']:.1f} ms, p99 {gaps['p99']:.1f} ms, "
        f"max {gaps['max']:.1f} ms; {gaps['over_limit']} over {MAX_STALL_MS:.0f} ms",
        "recording  " + (f"{recorded} frames decoded from the clip" if report["record"] else "off (--no-record)"),
        "",
    ]
    lines += [f"{'ok  ' if ok else 'FAIL'}  {name}" for name, ok in report["checks"].items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=50_000, help="output frames (default 50000, ~28 min at 30 fps)")
    parser.add_argument("--warmup", type=int, help="frames left out of the figures (default: 10%%, at most 1000)")
    parser.add_argument("--identity", type=Path, default=DEFAULT_IDENTITY, metavar="PHOTO",
                        help=f"identity photo (default {DEFAULT_IDENTITY})")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP,
                        help=f"driver clip, looped as a webcam (default {DEFAULT_CLIP})")
    parser.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH", help="output size")
    parser.add_argument("--look", choices=("photo", "head"), default="photo", help="the look (default photo)")
    parser.add_argument("--no-record", action="store_true", help="do not record the output")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write every figure and sample here")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(args.frames // 10, 1000)
    if args.frames < 2 or not 0 <= args.warmup < args.frames:
        parser.error("--frames must be at least 2 and --warmup below it")
    for name, path in (("--identity", args.identity), ("--clip", args.clip)):
        if not path.is_file():
            parser.error(f"{name} {path} not found: pass {name} PATH (the default lives in ../shared/assets/media)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        report = soak(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())

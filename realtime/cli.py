"""Command line: parse, build the pipeline, run. `run.py` and the `realtime-retarget` entry point call `main`.

Two modes: live (a webcam, a stream, or a clip played in real time; preview window, virtual camera, recording key)
and offline (a clip with --no-window: every frame rendered as fast as the machine allows into --record).
"""

import argparse
import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

from realtime.errors import UserError

log = logging.getLogger("realtime")

EXAMPLES = """\
examples:
  python run.py --identity photo.jpg                     webcam 0 -> preview window + virtual camera
  python run.py --identity photo.jpg --source 1 --record call.mp4 --no-window
                                                         webcam 1 -> virtual camera, recorded from the start
  python run.py --identity photo.jpg --source clip.mp4 --record out.mp4 --no-window --no-vcam
                                                         retarget every frame of a clip, offline
  python run.py --list-cameras
  python run.py --doctor                                 what is missing on this machine, and how to fix it

keys in the preview window: q/Esc quit, r start/stop recording, n take the current face as neutral,
space pause, h help
"""


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match or not (16 <= int(match[1]) <= 7680 and 16 <= int(match[2]) <= 4320):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 640x480 (16 to 7680 x 4320)")
    return int(match[1]), int(match[2])


def parse_fps(text: str) -> float:
    try:
        fps = float(text)
    except ValueError:
        fps = 0.0
    if not 1 <= fps <= 240:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame rate from 1 to 240")
    return fps


def parse_color(text: str) -> tuple[float, float, float] | None:
    """An RGB colour in [0, 1] from '#rrggbb', or None if ``text`` is not one (then it names an image)."""
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text.strip())
    if not match:
        return None
    return tuple(int(match[1][i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-retarget",
        description="Make a 3D avatar built from one photo perform the expressions of a face on a webcam or in a clip.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--identity", type=Path, metavar="PHOTO",
                        help="photo of the face to animate (JPEG/PNG, one roughly frontal face)")
    parser.add_argument("--source", default="0", metavar="CAMERA|CLIP|URL",
                        help="webcam index (default 0), a video file, or a stream URL that drives the avatar")
    parser.add_argument("--record", type=Path, metavar="OUT.mp4",
                        help="record the avatar from the start into this file (H.264 via ffmpeg); the r key records "
                             "to the next free name beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    parser.add_argument("--no-window", action="store_true",
                        help="no preview window; with a clip source: render every frame offline")
    parser.add_argument("--no-vcam", action="store_true", help="do not send frames to a virtual camera")
    parser.add_argument("--live", action="store_true",
                        help="play a clip source in real time through the live loop even with --no-window")
    parser.add_argument("--loop", action="store_true", help="live mode: start a clip source again at its end")
    parser.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH",
                        help="output size, also requested from the camera (default 640x480)")
    parser.add_argument("--fps", type=parse_fps, metavar="FPS",
                        help="output rate, also requested from the camera (default: the camera's rate)")
    parser.add_argument("--no-head-pose", action="store_true", help="keep the avatar facing the camera")
    parser.add_argument("--mirror", action="store_true", help="swap left and right (a mirrored driver)")
    parser.add_argument("--hold-when-lost", action="store_true",
                        help="keep the last expression while the face is lost (default: ease to neutral)")
    parser.add_argument("--background", default="#16181d", metavar="COLOR|IMAGE",
                        help="background colour (#rrggbb) or image file (default #16181d)")
    parser.add_argument("--no-cache", action="store_true", help="prepare the identity again instead of reusing it")
    parser.add_argument("--deca-data", type=Path, metavar="DIR",
                        help="your DECA data/ folder (deca_model.tar, generic_model.pkl, head_template.obj, ...): "
                             "animate the identity's FLAME head with DECA's detail instead of the ICT head")
    parser.add_argument("--style", choices=("textured", "shape"), default="textured",
                        help="with --deca-data: the photo texture under the identity's light, or DECA's grey shape")
    parser.add_argument("--no-detail", action="store_true", help="with --deca-data: no per-frame DECA detail")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch"), default="auto",
                        help="with --deca-data: run DECA's networks on compiled engines (tools/build_engine.py) or "
                             "torch; auto picks the best valid engine, else torch")
    parser.add_argument("--list-cameras", action="store_true", help="list the camera devices and exit")
    parser.add_argument("--doctor", action="store_true",
                        help="check assets, OpenGL, ffmpeg, cameras, virtual camera, DECA files and engines; "
                             "print the fix for each problem, and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def setup_logging(verbose: bool) -> None:
    if not verbose:  # native libraries' own stderr chatter; our errors say what matters in one line
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def is_clip(source: str) -> bool:
    return not source.isdigit() and "://" not in source


def build_pipeline(args: argparse.Namespace, ctx=None):  # -> RetargetPipeline | DecaPipeline (imported lazily)
    """The embedded default, or the FLAME + DECA avatar with --deca-data."""
    color = parse_color(args.background)
    if args.deca_data is not None:
        from realtime.deca.pipeline import DecaOptions, DecaPipeline

        if color is None:
            raise UserError("--background IMAGE is not available with --deca-data yet: give a colour like #223344")
        return DecaPipeline.create(DecaOptions(identity=args.identity, deca_data=args.deca_data, size=args.size,
                                               style=args.style, detail=not args.no_detail, backend=args.backend,
                                               head_pose=not args.no_head_pose, background=color), ctx)
    from realtime.pipeline import PipelineOptions, RetargetPipeline
    from realtime.renderer import RenderOptions
    from realtime.retarget import RetargetOptions

    options = PipelineOptions(
        identity=args.identity,
        render=RenderOptions(size=args.size, **({"background": color} if color else {})),
        retarget=RetargetOptions(head_pose=not args.no_head_pose, mirrored=args.mirror,
                                 hold_when_lost=args.hold_when_lost),
        background_image=None if color else Path(args.background),
        use_cache=not args.no_cache,
    )
    return RetargetPipeline.create(options, ctx)


def check_record_path(args: argparse.Namespace) -> None:
    if args.record is None:
        return
    if args.record.exists() and not args.overwrite:
        raise UserError(f"output {args.record} exists: choose another name or pass --overwrite")
    if not args.record.parent.is_dir():
        raise UserError(f"output folder {args.record.parent} does not exist: create it or choose another path")


def run_offline(args: argparse.Namespace) -> int:
    from realtime.offline import render_clip
    from realtime.video_io import open_video

    source = Path(args.source)
    if not source.is_file():
        raise UserError(f"driver clip {source} not found: check the path, or give a webcam index like --source 0")
    open_video(source).close()  # a clip that cannot be decoded fails now, before the identity is prepared
    if args.record is None:
        raise UserError("nothing to write: add --record OUT.mp4 to retarget a clip offline")
    check_record_path(args)

    started = time.perf_counter()
    pipeline = build_pipeline(args)
    try:
        prepared = time.perf_counter()
        result = render_clip(pipeline, source, args.record, overwrite=args.overwrite)
    finally:
        pipeline.close()
    seconds = time.perf_counter() - prepared
    log.info("identity ready in %.1f s; %d frames in %.1f s (%.1f fps), face found in %d", prepared - started,
             result.frames, seconds, result.frames / max(seconds, 1e-9), result.frames_with_face)
    if result.path is not None:
        log.info("wrote %s", result.path)
    return 130 if result.interrupted else 0


def run_live(args: argparse.Namespace) -> int:
    from realtime.capture import Capture, CaptureOptions
    from realtime.live import LiveLoop, LiveOptions
    from realtime.virtual_camera import VirtualCamera
    from realtime.window import PreviewWindow

    check_record_path(args)
    if is_clip(args.source) and not Path(args.source).is_file():
        raise UserError(f"driver clip {args.source} not found: check the path, or give a webcam index like --source 0")
    width, height = args.size
    # the GL context is the window's when there is one; the capture starts once the identity is ready, so that a
    # clip played in real time does not run ahead while the photo is prepared
    with contextlib.ExitStack() as stack:
        window = None if args.no_window else stack.enter_context(PreviewWindow.create((2 * width, height)))
        pipeline = build_pipeline(args, ctx=window.ctx if window else None)
        stack.callback(pipeline.close)
        capture = stack.enter_context(Capture.create_from_options(
            CaptureOptions(source=args.source, size=args.size, fps=args.fps, loop=args.loop)))
        fps = args.fps or capture.fps
        camera = None if args.no_vcam else VirtualCamera.open(args.size, fps)
        if camera is not None:
            stack.callback(camera.close)
        if camera is None and window is None and args.record is None:
            raise UserError("nothing to output: no virtual camera and --no-window; set up a virtual camera, "
                            "drop --no-window, or add --record OUT.mp4")
        options = LiveOptions(fps=fps, record=args.record, overwrite=args.overwrite,
                              record_path=args.record or Path("retarget.mp4"), worker=args.deca_data is not None)
        stats = LiveLoop(pipeline, capture, camera, window, options).run()
    latencies = np.array(stats.latencies_ms) if stats.latencies_ms else np.zeros(1)
    log.info("%d frames out (%d retargeted, %d repeated while the camera was away or paused); latency median %.0f ms, "
             "p95 %.0f ms", stats.frames_out, stats.frames_rendered, stats.frames_held, np.median(latencies),
             np.percentile(latencies, 95))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if args.doctor:
            from realtime.doctor import run_doctor

            print("\n".join(check.line() for check in run_doctor(args.deca_data)))
            return 0
        if args.list_cameras:
            from realtime.capture import list_cameras

            print("\n".join(list_cameras()) or "no camera devices found")
            return 0
        if args.identity is None:
            raise UserError("which face? pass --identity PHOTO (a JPEG or PNG of one face)")
        if is_clip(args.source) and args.no_window and not args.live:
            return run_offline(args)
        return run_live(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

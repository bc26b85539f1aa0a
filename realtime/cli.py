"""Command line: parse, build the pipeline, run. `run.py` and the `realtime-retarget` entry point call `main`."""

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path

from realtime.errors import UserError

log = logging.getLogger("realtime")

EXAMPLES = """\
examples:
  python run.py --identity photo.jpg                                  webcam 0 -> window + virtual camera
  python run.py --identity photo.jpg --source clip.mp4 --record out.mp4 --no-window --no-vcam
                                                                      retarget every frame of a clip, offline
  python run.py --identity photo.jpg --source clip.mp4 --record out.mp4 --no-window --size 1280x720 \\
                --background beach.jpg --no-head-pose
"""


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match or not (16 <= int(match[1]) <= 7680 and 16 <= int(match[2]) <= 4320):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 640x480 (16 to 7680 x 4320)")
    return int(match[1]), int(match[2])


def parse_color(text: str) -> tuple[float, float, float]:
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a colour like #1a1c22")
    value = match[1]
    return tuple(int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-retarget",
        description="Make a 3D avatar built from one photo perform the expressions of a face on a webcam or in a clip.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--identity", type=Path, required=True, metavar="PHOTO",
                        help="photo of the face to animate (JPEG/PNG, one roughly frontal face)")
    parser.add_argument("--source", default="0", metavar="CAMERA|CLIP",
                        help="webcam index (default 0) or a video file that drives the avatar")
    parser.add_argument("--record", type=Path, metavar="OUT.mp4", help="write the avatar clip here (H.264 via ffmpeg)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    parser.add_argument("--no-window", action="store_true", help="no preview window (with a clip: render offline)")
    parser.add_argument("--no-vcam", action="store_true", help="do not send frames to a virtual camera")
    parser.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH",
                        help="output size (default 640x480)")
    parser.add_argument("--no-head-pose", action="store_true", help="keep the avatar facing the camera")
    parser.add_argument("--mirror", action="store_true", help="swap left and right (a mirrored driver)")
    parser.add_argument("--background", default="#16181d", metavar="COLOR|IMAGE",
                        help="background colour (#rrggbb) or image file (default #16181d)")
    parser.add_argument("--no-cache", action="store_true", help="prepare the identity again instead of reusing it")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def setup_logging(verbose: bool) -> None:
    if not verbose:  # native libraries' own stderr chatter; our errors say what matters in one line
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("OPENCV_LOG_LEVEL", "OFF")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def run_offline(args: argparse.Namespace) -> int:
    from realtime.offline import render_clip
    from realtime.pipeline import PipelineOptions, RetargetPipeline
    from realtime.renderer import RenderOptions
    from realtime.retarget import RetargetOptions
    from realtime.video_io import open_video

    source = Path(args.source)
    if not source.is_file():
        raise UserError(f"driver clip {source} not found: check the path, or give a webcam index like --source 0")
    open_video(source).close()  # a clip that cannot be decoded fails now, before the identity is prepared
    if args.record is None:
        raise UserError("nothing to write: add --record OUT.mp4 to retarget a clip offline")
    if args.record.exists() and not args.overwrite:
        raise UserError(f"output {args.record} exists: choose another name or pass --overwrite")
    if not args.record.parent.is_dir():
        raise UserError(f"output folder {args.record.parent} does not exist: create it or choose another path")

    background_image = None
    background_color = (0.086, 0.094, 0.114)
    try:
        background_color = parse_color(args.background)
    except argparse.ArgumentTypeError:
        background_image = Path(args.background)
    options = PipelineOptions(
        identity=args.identity,
        render=RenderOptions(size=args.size, background=background_color),
        retarget=RetargetOptions(head_pose=not args.no_head_pose, mirrored=args.mirror),
        background_image=background_image,
        use_cache=not args.no_cache,
    )
    started = time.perf_counter()
    pipeline = RetargetPipeline.create(options)
    try:
        prepared = time.perf_counter()
        result = render_clip(pipeline, source, args.record, overwrite=args.overwrite)
    finally:
        pipeline.close()
    seconds = time.perf_counter() - prepared
    log.info("identity ready in %.1f s (fit error %.3f IOD); %d frames in %.1f s (%.1f fps), face found in %d",
             prepared - started, pipeline.identity.fit_error, result.frames, seconds,
             result.frames / max(seconds, 1e-9), result.frames_with_face)
    if result.path is not None:
        log.info("wrote %s", result.path)
    return 130 if result.interrupted else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        if not args.source.isdigit() and args.no_window:
            return run_offline(args)
        raise UserError(
            "the live mode (webcam, preview window, virtual camera) is not available yet: "
            "retarget a clip with --source CLIP --record OUT.mp4 --no-window"
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

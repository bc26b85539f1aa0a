"""Command line: parse, build the pipeline, run. `run.py` and the `realtime-retarget` entry point call `main`.

Two modes: live (a webcam, a stream, or a clip played in real time; preview window, virtual camera, recording key)
and offline (a clip with --no-window: every frame rendered as fast as the machine allows into --record).
"""

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

from realtime.config import (
    LOOKS,
    STYLES,
    default_config_path,
    load_config,
    parse_color,
    parse_face,
    parse_fps,
    parse_size,
    parse_smoothing,
    write_config,
)
from realtime.errors import UserError

log = logging.getLogger("realtime")

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MAX_IDENTITIES = 9  # one per number key

EXAMPLES = """\
examples:
  realtime-retarget --identity photo.jpg                 webcam 0 -> preview window + virtual camera
  realtime-retarget --identity me.jpg --identity faces/  several identities: keys 1-9 switch between them live
  realtime-retarget --identity photo.jpg --source 1 --size 1280x720 --fps 30 --mirror
                                                         webcam 1 at 1280x720, 30 fps, seen as in a mirror
  realtime-retarget --identity photo.jpg --source 1 --record call.mp4 --no-window
                                                         webcam 1 -> virtual camera, recorded from the start
  realtime-retarget --identity photo.jpg --source clip.mp4 --record out.mp4 --no-window --no-vcam
                                                         retarget every frame of a clip, offline
  realtime-retarget --identity photo.jpg --source clip.mp4 --record out.mp4 --overwrite --no-window -v
                                                         the same, replacing out.mp4, with debug logging
  realtime-retarget --identity photo.jpg --source clip.mp4 --live --loop --no-vcam
                                                         play a clip as if it were a webcam, again and again
  realtime-retarget --identity photo.jpg --look head --background beach.jpg --smoothing 2 --no-head-pose
                                                         the head alone (not the photo come alive) on an image,
                                                         calmer motion, facing ahead
  realtime-retarget --identity photo.jpg --hold-when-lost --no-cache
                                                         keep the last expression when the face is lost; prepare
                                                         the photo again instead of using the cache
  realtime-retarget --identity photo.jpg --deca-data DECA/data --style shape --backend onnxruntime
                                                         the FLAME + DECA avatar (your own DECA files), grey
  realtime-retarget --identity photo.jpg --deca-data DECA/data --no-detail
                                                         FLAME + DECA without the per-frame detail
  realtime-retarget --identity photo.jpg --source 1 --size 1280x720 --write-config
                                                         save these settings; later runs start from them
  realtime-retarget --config work.toml                   use another settings file
  realtime-retarget --identity group.jpg --face 2        the second face from the left in a photo of several
  realtime-retarget --list-faces group.jpg               draw the numbered faces of a photo into group-faces.jpg
  realtime-retarget --list-cameras
  realtime-retarget --doctor                             what is missing on this machine, and how to fix it
  realtime-retarget --fetch-assets                       get the assets once after installing (--mirror DIR|URL:
                                                         from a local copy; --force: again)
(python run.py works the same as realtime-retarget)

settings file (TOML; the command line overrides it): %(config)s
  keys: identity, source, size, fps, look, background, style, smoothing, virtual_camera, mirror, head_pose,
  hold_when_lost, deca_data
  and face (a number: which face of a photo of several, as --face)

keys in the preview window: q/Esc quit, r start/stop recording, n take the current face as neutral,
1-9 switch identity, space pause, h help
"""


def build_parser(config_path: Path | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realtime-retarget",
        description="Make a 3D avatar built from one photo perform the expressions of a face on a webcam or in a clip.",
        epilog=EXAMPLES % {"config": config_path or default_config_path()},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--identity", type=Path, action="append", metavar="PHOTO|FOLDER",
                        help="photo of the face to animate (JPEG/PNG; the largest face, or --face N); give it several "
                             f"times or name a folder of photos for up to {MAX_IDENTITIES} identities, switched "
                             "live with the number keys")
    parser.add_argument("--face", type=parse_face, metavar="N",
                        help="which face of the identity photo to use, numbered from 1 left to right (default: the "
                             "largest; --list-faces PHOTO draws the numbers); with several photos, face N of each")
    parser.add_argument("--list-faces", type=Path, metavar="PHOTO",
                        help="find the faces in PHOTO, write a copy with their numbered boxes (PHOTO-faces.jpg in "
                             "the current folder), print where, and exit")
    parser.add_argument("--source", default="0", metavar="CAMERA|CLIP|URL",
                        help="webcam index (default 0), a video file, or a stream URL that drives the avatar")
    parser.add_argument("--record", type=Path, metavar="OUT.mp4",
                        help="record the avatar from the start into this file (H.264); the r key records "
                             "to the next free name beside it")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --record file")
    parser.add_argument("--no-window", action="store_true",
                        help="no preview window; with a clip source: render every frame offline")
    parser.add_argument("--vcam", action=argparse.BooleanOptionalAction, default=True,
                        help="send frames to a virtual camera (--no-vcam: do not)")
    parser.add_argument("--live", action="store_true",
                        help="play a clip source in real time through the live loop even with --no-window")
    parser.add_argument("--loop", action="store_true", help="live mode: start a clip source again at its end")
    parser.add_argument("--size", type=parse_size, default=(640, 480), metavar="WxH",
                        help="output size, also requested from the camera (default 640x480)")
    parser.add_argument("--fps", type=parse_fps, metavar="FPS",
                        help="output rate, also requested from the camera (default: the camera's rate)")
    parser.add_argument("--head-pose", action=argparse.BooleanOptionalAction, default=True,
                        help="follow the driver's head rotation (--no-head-pose: keep the avatar facing the camera)")
    parser.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=False,
                        help="swap left and right (a mirrored driver)")
    parser.add_argument("--hold-when-lost", action=argparse.BooleanOptionalAction, default=False,
                        help="keep the last expression while the face is lost (default: ease to neutral)")
    parser.add_argument("--smoothing", type=parse_smoothing, default=1.0, metavar="S",
                        help="strength of the temporal filter on expression and head motion: 0 off, 1 the tuned "
                             "default, 2 or more calmer but slower to follow")
    parser.add_argument("--look", choices=LOOKS, default="photo",
                        help="photo (default): the identity photo comes alive, hair, clothes and background included; "
                             "head: the fitted head alone on a background")
    parser.add_argument("--background", default="#16181d", metavar="COLOR|IMAGE",
                        help="the head look's background colour (#rrggbb) or image file (default #16181d)")
    parser.add_argument("--no-cache", action="store_true", help="prepare the identity again instead of reusing it")
    parser.add_argument("--deca-data", type=Path, metavar="DIR",
                        help="your DECA data/ folder (deca_model.tar, generic_model.pkl, head_template.obj, ...): "
                             "animate the identity's FLAME head with DECA's detail instead of the ICT head")
    parser.add_argument("--style", choices=STYLES, default="textured",
                        help="with --deca-data: the photo texture under the identity's light, or DECA's grey shape")
    parser.add_argument("--no-detail", action="store_true", help="with --deca-data: no per-frame DECA detail")
    parser.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch"), default="auto",
                        help="with --deca-data: run DECA's networks on compiled engines (tools/build_engine.py) or "
                             "torch; auto picks the best valid engine, else torch")
    parser.add_argument("--config", type=Path, metavar="PATH",
                        help=f"settings file (TOML) to start from (default {config_path or default_config_path()}, "
                             "if it exists); the command line overrides it")
    parser.add_argument("--write-config", action="store_true",
                        help="save this command line's settings (identity, source, size, fps, background, style, "
                             "smoothing, virtual camera, mirror, head pose, ...) to the settings file, and exit")
    parser.add_argument("--list-cameras", action="store_true", help="list the camera devices and exit")
    parser.add_argument("--doctor", action="store_true",
                        help="check assets, OpenGL, H.264, cameras, virtual camera, DECA files and engines; "
                             "print the fix for each problem, and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    # getting the assets, from an installed package too: a mode of its own, with its own options (see main)
    parser.add_argument("--fetch-assets", action="store_true",
                        help="download (or copy from a mirror), verify and convert the assets, and exit: "
                             "`realtime-retarget --fetch-assets [--mirror DIR|URL] [--force]` (--help lists them)")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options: built-in defaults, overridden by the settings file, overridden by the command line.

    ``args.config`` is the settings file read (or to write, with --write-config), None if there is none;
    ``args.identity`` is a list of the identity paths given (empty if none).
    """
    argv = sys.argv[1:] if argv is None else argv
    locate = argparse.ArgumentParser(add_help=False)
    locate.add_argument("--config", type=Path)
    locate.add_argument("--write-config", action="store_true")
    locate.add_argument("-h", "--help", action="store_true")
    early = locate.parse_known_args(argv)[0]
    path = early.config if early.config is not None else default_config_path()
    parser = build_parser(path)
    read = not early.help and (path.is_file() or (early.config is not None and not early.write_config))
    settings = load_config(path) if read else {}
    identities = settings.pop("identity", [])
    parser.set_defaults(**settings)
    args = parser.parse_args(argv)
    args.config = path if read or args.write_config else None
    if not args.identity:  # the command line's identities replace the file's, not add to them
        args.identity = identities
    return args


def identity_photos(paths: list[Path]) -> list[Path]:
    """The photos in ``paths``, a folder standing for its photos (sorted by name); at most `MAX_IDENTITIES`."""
    photos = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"identity folder {path} holds no photos ({', '.join(PHOTO_SUFFIXES)}): add some "
                                "or name a photo")
            photos += found
        elif path.is_file():
            photos.append(path)
        else:
            raise UserError(f"identity photo {path} not found: check the path")
    if len(photos) > MAX_IDENTITIES:
        raise UserError(f"{len(photos)} identity photos: at most {MAX_IDENTITIES} (one per number key); "
                        "name fewer photos or a smaller folder")
    return photos


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
    """The embedded default, or the FLAME + DECA avatar with --deca-data, for ``args.identity`` (the first shown)."""
    color = parse_color(args.background)
    first, *more = args.identity
    if args.deca_data is not None:
        from realtime.deca.pipeline import DecaOptions, DecaPipeline

        if color is None:
            raise UserError("--background IMAGE is not available with --deca-data yet: give a colour like #223344")
        if more:
            raise UserError(f"--deca-data animates one identity, {len(args.identity)} were given: name one photo "
                            "(switching identities works on the default path)")
        return DecaPipeline.create(DecaOptions(identity=first, face=args.face, deca_data=args.deca_data, size=args.size,
                                               style=args.style, detail=not args.no_detail, backend=args.backend,
                                               head_pose=args.head_pose, background=color,
                                               smoothing=args.smoothing, look=args.look), ctx)
    from realtime.ict.pipeline import PipelineOptions, RetargetPipeline
    from realtime.ict.retarget import RetargetOptions
    from realtime.rendering.renderer import RenderOptions

    options = PipelineOptions(
        identity=first,
        more_identities=tuple(more),
        face=args.face,
        render=RenderOptions(size=args.size, **({"background": color} if color else {})),
        retarget=RetargetOptions(head_pose=args.head_pose, mirrored=args.mirror, hold_when_lost=args.hold_when_lost,
                                 smoothing=args.smoothing),
        background_image=None if color else Path(args.background),
        use_cache=not args.no_cache,
        look=args.look,
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
    from realtime.io.clips import open_video
    from realtime.loops.offline import render_clip

    source = Path(args.source)
    if not source.is_file():
        raise UserError(f"driver clip {source} not found: check the path, or give a webcam index like --source 0")
    open_video(source).close()  # a clip that cannot be decoded fails now, before the identity is prepared
    if args.record is None:
        raise UserError("nothing to write: add --record OUT.mp4 to retarget a clip offline")
    check_record_path(args)

    if len(args.identity) > 1:
        log.warning("offline, one identity is rendered: %s (the number keys switch identities in the live preview)",
                    args.identity[0])
        args.identity = args.identity[:1]
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
    from realtime.io.capture import Capture, CaptureOptions
    from realtime.io.virtual_camera import VirtualCamera
    from realtime.io.window import PreviewWindow
    from realtime.loops.live import LiveLoop, LiveOptions

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
        camera = VirtualCamera.open(args.size, fps) if args.vcam else None
        if camera is not None:
            stack.callback(camera.close)
        if camera is None and window is None and args.record is None:
            raise UserError("nothing to output: no virtual camera and --no-window; set up a virtual camera, "
                            "drop --no-window, or add --record OUT.mp4")
        options = LiveOptions(fps=fps, record=args.record, overwrite=args.overwrite,
                              record_path=args.record or Path("retarget.mp4"), worker=True)
        stats = LiveLoop(pipeline, capture, camera, window, options).run()
    latencies = np.array(stats.latencies_ms) if stats.latencies_ms else np.zeros(1)
    log.info("%d frames out (%d retargeted; %d repeated: no newer frame drawn in time, camera away or paused); "
             "latency median %.0f ms, p95 %.0f ms", stats.frames_out, stats.frames_rendered, stats.frames_held,
             np.median(latencies), np.percentile(latencies, 95))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--fetch-assets" in argv:  # its --mirror is a folder or URL, not the app's --mirror (swap left and right)
        from realtime.fetch import main as fetch_assets

        return fetch_assets([arg for arg in argv if arg != "--fetch-assets"], prog="realtime-retarget --fetch-assets")
    try:
        args = parse_args(argv)
        setup_logging(args.verbose)
        if args.write_config:
            write_config(args.config, args)
            print(f"wrote {args.config}")
            return 0
        if args.config is not None:
            log.info("settings from %s", args.config)
        if args.doctor:
            from realtime.doctor import run_doctor

            print("\n".join(check.line() for check in run_doctor(args.deca_data)))
            return 0
        if args.list_cameras:
            from realtime.io.capture import camera_advice, list_cameras

            print("\n".join(list_cameras()) or f"no camera devices found: {camera_advice()}")
            return 0
        if args.list_faces is not None:
            from realtime.io.face_list import list_faces

            print(list_faces(args.list_faces))
            return 0
        if not args.identity:
            raise UserError("which face? pass --identity PHOTO (a JPEG or PNG of one face), or set identity in "
                            f"{default_config_path()}")
        args.identity = identity_photos(args.identity)
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

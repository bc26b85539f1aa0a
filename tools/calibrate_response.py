"""Build `realtime/data/ict_response.txt`: the score MediaPipe gives the rendered ICT avatar for each blendshape
alone at a few weights, averaged over several identities, as a straight line (see `realtime.ict.response`).

    python tools/calibrate_response.py PHOTO [PHOTO ...] [--out PATH]
"""

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.head import AvatarPose
from realtime.ict.avatar import blendshape_matrix  # noqa: E402
from realtime.ict.pipeline import PipelineOptions, RetargetPipeline  # noqa: E402
from realtime.ict.response import DEFAULT_PATH, ResponseModel  # noqa: E402
from realtime.ict.retarget import RetargetOptions  # noqa: E402
from realtime.rendering.renderer import create_context  # noqa: E402
from realtime.tracking.tracker import BLENDSHAPE_NAMES, FaceTracker, FaceTrackerOptions, RunningMode  # noqa: E402

LEVELS = np.array([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
PITCHES = np.array([-20.0, -10.0, 0.0, 10.0, 20.0])  # degrees, up positive: the head's range in a video call


def measure(pipeline: RetargetPipeline, tracker: FaceTracker) -> np.ndarray:
    """(51, P, L) the score read for each blendshape driven alone at each of `LEVELS`, the head at `PITCHES`."""
    matrix = blendshape_matrix(pipeline.model.expression_names)
    scores = np.full((len(BLENDSHAPE_NAMES), len(PITCHES), len(LEVELS)), np.nan)
    for channel in tqdm(range(len(BLENDSHAPE_NAMES)), desc=pipeline.options.identity.name, unit="shape"):
        for p, pitch in enumerate(PITCHES):
            for level, weight in enumerate(LEVELS):
                expression = (matrix[:, channel] * weight).astype(np.float32)
                seen = tracker.track(pipeline.render_pose(AvatarPose(expression, pitch_rotation(pitch), True)))
                if seen is not None:
                    scores[channel, p, level] = seen.blendshapes[channel]
    return scores


def pitch_rotation(degrees: float) -> np.ndarray:
    """(3, 3) the head turned ``degrees`` up (negative: down), about the x axis."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, s], [0.0, -s, c]])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, nargs="+", help="identity photos to average over")
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    ctx = create_context()
    measured = []
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE)) as tracker:
        for photo in args.photos:
            options = PipelineOptions(identity=photo, retarget=RetargetOptions(response=False))
            pipeline = RetargetPipeline.create(options, ctx)
            try:
                measured.append(measure(pipeline, tracker))
            finally:
                pipeline.close()
    scores = np.nanmean(np.array(measured), axis=0)
    if np.isnan(scores).any():
        raise SystemExit("the avatar was not tracked at some weights: try other photos")
    ResponseModel.fit(LEVELS, PITCHES, scores).save(args.out)
    logging.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

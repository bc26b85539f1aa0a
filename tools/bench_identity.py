"""How long preparing an identity takes for a small and for a large photo (never measured in a test).

Three real photos: the 512x512 sample portrait, and two 4000x3000 JPEGs made from the sample media in a temporary
folder: a phone-style portrait (the sample portrait enlarged to fill the picture, its face about 1000 pixels wide)
and a far-away face (the portrait pasted 24 pixels between the eyes into a 4000x3000 scene without people). Each is
prepared from scratch (`realtime.ict.identity.build_identity`: read, find the faces, fit, bake, fill; no cache)
--repeat times in one process after one warm-up run; the median wall time and process CPU time are printed, with the
ratio of each large photo to the small one.

    python tools/bench_identity.py [--repeat 5] [--json OUT]
"""

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import realtime  # noqa: E402, F401, I001  (first: it sets the thread environment before numpy loads, as in the app)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from realtime import assets  # noqa: E402
from realtime.ict.identity import build_identity  # noqa: E402
from realtime.ict.landmark_map import LandmarkMap  # noqa: E402
from realtime.ict.model import IctModel  # noqa: E402
from realtime.io.images import read_image  # noqa: E402
from realtime.rendering.renderer import create_context  # noqa: E402
from realtime.tracking.faces import find_faces  # noqa: E402

MEDIA = PROJECT_ROOT.parent / "shared" / "assets" / "media"
PORTRAIT = MEDIA / "skimage_astronaut.png"
SCENE_CLIP = MEDIA / "pyfeat_no_face.mp4"
LARGE = (4000, 3000)


def scene(size: tuple[int, int]) -> np.ndarray:
    """A frame of the sample clip without a person, enlarged to ``size``."""
    capture = cv2.VideoCapture(str(SCENE_CLIP))
    for _ in range(40):
        ok, frame = capture.read()
        if not ok:
            raise SystemExit(f"could not read {SCENE_CLIP}")
    capture.release()
    return cv2.resize(frame[:, :, ::-1], size, interpolation=cv2.INTER_CUBIC)


def large_photos(folder: Path) -> dict[str, Path]:
    portrait = read_image(PORTRAIT)
    (face,) = [f for f in find_faces(portrait)]
    phone = folder / "portrait_4000x3000.jpg"
    height = LARGE[1]
    enlarged = cv2.resize(portrait, (height, height), interpolation=cv2.INTER_CUBIC)
    canvas = scene(LARGE)
    left = (LARGE[0] - height) // 2
    canvas[:, left : left + height] = enlarged
    Image.fromarray(canvas).save(phone, quality=92)

    far = folder / "far_face_4000x3000.jpg"
    scale = 24 / face.eye_distance
    small = cv2.resize(portrait, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = scene(LARGE)
    top, left = 1200, 2600
    canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
    Image.fromarray(canvas).save(far, quality=92)
    return {"portrait 4000x3000": phone, "far face 4000x3000": far}


def measure(photo: Path, model, ctx, landmark_map, repeat: int) -> dict:
    build_identity(photo, model, ctx, landmark_map)  # warm-up: shaders, caches
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        identity = build_identity(photo, model, ctx, landmark_map)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"photo": str(photo), "wall_s": walls, "cpu_s": cpus, "median_wall_s": statistics.median(walls),
            "median_cpu_s": statistics.median(cpus), "fit_error": identity.fit_error}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per photo (median reported)")
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    model = IctModel.load(assets.ict_model_path())
    landmark_map = LandmarkMap.load()
    ctx = create_context()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        photos = {"portrait 512x512": PORTRAIT, **large_photos(Path(folder))}
        results = {name: measure(path, model, ctx, landmark_map, args.repeat) for name, path in photos.items()}
    load_after = os.getloadavg()
    print(f"CPU        {os.cpu_count()} cores, {cpu_model()}; load average {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after (other processes: should be near 0 for figures worth quoting)")
    print(f"{'photo':22s} {'median s':>9s} {'cpu s':>7s} {'x 512':>6s}   runs (s)")
    small = results["portrait 512x512"]
    for name, result in results.items():
        ratio = result["median_wall_s"] / small["median_wall_s"]
        runs = " ".join(f"{t:.2f}" for t in result["wall_s"])
        print(f"{name:22s} {result['median_wall_s']:9.2f} {result['median_cpu_s']:7.2f} {ratio:6.2f}   {runs}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "load": [load_before, load_after], **results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

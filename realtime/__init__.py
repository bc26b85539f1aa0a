"""Real-time expression retargeting: a face video drives a 3D avatar built from one photo."""

import os

__version__ = "0.1.0"

# The per-frame numpy work is small matrix products; OpenBLAS's own threads would only fight the renderer and the
# tracker for the two cores (the benchmark: 36 -> 48 frames/s). Set before numpy loads; an explicit value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# OpenCV's per-frame calls (the enlargement of the drawn frame, the encoder's colour conversion) are short: its worker
# thread spent more time waiting for work than doing it (0.7 ms of CPU a 1280x720 frame, nothing gained), and preparing
# an identity is no slower on one thread. Set before cv2 loads.
os.environ.setdefault("OPENCV_FOR_THREADS_NUM", "1")

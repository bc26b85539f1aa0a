"""Real-time expression retargeting: a face video drives a 3D avatar built from one photo."""

import os

__version__ = "0.1.0"

# The per-frame numpy work is small matrix products; OpenBLAS's own threads would only fight the renderer and the
# tracker for the two cores (the benchmark: 36 -> 48 frames/s). Set before numpy loads; an explicit value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

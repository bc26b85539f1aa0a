"""Fetch, verify and convert the assets of the embedded default (MediaPipe Face Landmarker, ICT-FaceKit head).

    python tools/fetch_assets.py [--mirror DIR_OR_URL] [--dest DIR] [--force]

The same as ``realtime-retarget --fetch-assets``: the code is `realtime.fetch.main`. Without a mirror the files come
from their official upstream URLs; ``--mirror`` (or ``$RETARGET_ASSET_MIRROR``) points at a local directory or an
http(s) base URL laid out like ``../shared/assets``. Exits 0 when everything is in place, 2 with a one-line message on
stderr when something could not be fetched or verified (nothing partial is left behind).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `python tools/fetch_assets.py` works

from realtime.fetch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

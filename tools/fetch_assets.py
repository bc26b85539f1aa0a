"""Fetch, verify and convert the assets of the embedded default (MediaPipe Face Landmarker, ICT-FaceKit head).

    python tools/fetch_assets.py [--mirror DIR_OR_URL] [--dest DIR] [--force]

Without a mirror the files come from their official upstream URLs; ``--mirror`` (or ``$RETARGET_ASSET_MIRROR``) points
at a local directory or an http(s) base URL laid out like ``../shared/assets``. Exits 0 when everything is in place,
2 with a one-line message on stderr when something could not be fetched or verified (nothing partial is left behind).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # so that `python tools/fetch_assets.py` works

import argparse  # noqa: E402
import logging  # noqa: E402

from realtime.errors import UserError  # noqa: E402
from realtime.fetch import MIRROR_ENV, fetch_all  # noqa: E402
from realtime.paths import assets_dir  # noqa: E402

logger = logging.getLogger("fetch_assets")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mirror",
        help=f"local directory or http(s) base URL with the mirror's layout (default: ${MIRROR_ENV}, else upstream)",
    )
    parser.add_argument("--dest", type=Path, default=None, help=f"where to put the assets (default: {assets_dir()})")
    parser.add_argument("--force", action="store_true", help="fetch again even what is already present and valid")
    parser.add_argument("-v", "--verbose", action="store_true", help="log diagnostics")
    args = parser.parse_args(argv)
    _configure_logging(logging.DEBUG if args.verbose else logging.INFO)

    dest = args.dest or assets_dir()
    try:
        fetch_all(dest, args.mirror, args.force)
    except UserError as err:
        logger.error("error: %s", " ".join(str(err).split()))
        return UserError.exit_code
    except KeyboardInterrupt:
        logger.error("interrupted: nothing half-written was left in %s; run the command again to finish", dest)
        return 130
    logger.info("assets ready in %s", dest)
    return 0


def _configure_logging(level: int) -> None:
    """Progress on stdout, warnings and the final error on stderr, so a failure is a single line there."""
    to_stdout = logging.StreamHandler(sys.stdout)
    to_stdout.addFilter(lambda record: record.levelno < logging.WARNING)
    to_stderr = logging.StreamHandler(sys.stderr)
    to_stderr.setLevel(logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s", handlers=[to_stdout, to_stderr])


if __name__ == "__main__":
    sys.exit(main())

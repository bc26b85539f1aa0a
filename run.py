"""Entry point: `python run.py --identity photo.jpg [options]` (see `--help`)."""

import sys

from realtime.cli import main

if __name__ == "__main__":
    sys.exit(main())

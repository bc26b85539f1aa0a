"""Where the project's files are.

- Shipped with the package: the shaders (``realtime/shaders`` in a wheel, the top-level ``shaders/`` in a checkout)
  and the small tables in ``realtime/data``.
- Made on this machine: downloaded assets, converted models, DECA engines, the identity cache. In a source checkout
  (run.py, an editable install) they stay beside it, in ``<checkout>/assets``, ``<checkout>/engines`` and
  ``<checkout>/cache``; an installed package uses the per-user folders of the platform (platformdirs): on Linux
  ``~/.local/share/realtime-retarget`` and ``~/.cache/realtime-retarget``, on macOS ``~/Library/Application
  Support/realtime-retarget`` and ``~/Library/Caches/realtime-retarget``, on Windows
  ``%LOCALAPPDATA%\\realtime-retarget`` and its ``Cache`` folder. ``RETARGET_ASSETS`` and ``RETARGET_CACHE`` override.
- The settings file: the user's configuration folder in either case (``~/.config/realtime-retarget`` or
  ``$XDG_CONFIG_HOME`` on Linux, ``~/Library/Application Support/realtime-retarget`` on macOS,
  ``%APPDATA%\\realtime-retarget`` on Windows).

The platform is read from ``sys.platform`` at each call, so tests can run every branch by patching it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from platformdirs.api import PlatformDirsABC

APP_NAME = "realtime-retarget"
PACKAGE_ROOT = Path(__file__).resolve().parent
PACKAGE_DATA = PACKAGE_ROOT / "data"  # small tables that ship with the package


def find_checkout(package_root: Path = PACKAGE_ROOT) -> Path | None:
    """The source checkout the package runs from, or None when it is installed (a wheel in site-packages)."""
    root = package_root.parent
    return root if (root / "pyproject.toml").is_file() and (root / "shaders").is_dir() else None


CHECKOUT: Path | None = find_checkout()
# Kept for older callers: the checkout when there is one. An installed package has none; use the functions below.
PROJECT_ROOT = CHECKOUT or PACKAGE_ROOT.parent


def user_dirs(roaming: bool = False) -> PlatformDirsABC:
    """platformdirs' folders for this app on the platform named by ``sys.platform``."""
    if sys.platform == "win32":
        from platformdirs.windows import Windows as Dirs
    elif sys.platform == "darwin":
        from platformdirs.macos import MacOS as Dirs
    else:
        from platformdirs.unix import Unix as Dirs
    return Dirs(APP_NAME, appauthor=False, roaming=roaming)


def assets_dir() -> Path:
    """Downloaded and converted assets: ``RETARGET_ASSETS``, else ``<checkout>/assets``, else the user data folder."""
    if override := os.environ.get("RETARGET_ASSETS"):
        return Path(override)
    return CHECKOUT / "assets" if CHECKOUT else user_dirs().user_data_path / "assets"


def cache_dir() -> Path:
    """Prepared identities and other derived data: ``RETARGET_CACHE``, else ``<checkout>/cache``, else the user
    cache folder."""
    if override := os.environ.get("RETARGET_CACHE"):
        return Path(override)
    return CHECKOUT / "cache" if CHECKOUT else user_dirs().user_cache_path


def engines_dir() -> Path:
    """Compiled DECA engines (tools/build_engine.py): ``<checkout>/engines``, else beside the assets."""
    return CHECKOUT / "engines" if CHECKOUT else user_dirs().user_data_path / "engines"


def config_dir() -> Path:
    """The folder of the settings file (roaming on Windows: settings follow the user, the large assets do not)."""
    return user_dirs(roaming=True).user_config_path


def shaders_dir() -> Path:
    """GLSL sources: inside the package when installed, the checkout's top-level ``shaders/`` otherwise."""
    packaged = PACKAGE_ROOT / "shaders"
    return packaged if packaged.is_dir() or CHECKOUT is None else CHECKOUT / "shaders"

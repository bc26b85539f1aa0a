"""Where the project keeps generated files: downloaded assets, converted models, the identity cache."""

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = Path(__file__).resolve().parent / "data"  # small tables that ship with the package


def assets_dir() -> Path:
    """Downloaded and converted assets (``RETARGET_ASSETS`` overrides ``<project>/assets``)."""
    return Path(os.environ.get("RETARGET_ASSETS", PROJECT_ROOT / "assets"))


def cache_dir() -> Path:
    """Prepared identities and other derived data (``RETARGET_CACHE`` overrides ``<project>/cache``)."""
    return Path(os.environ.get("RETARGET_CACHE", PROJECT_ROOT / "cache"))


def shaders_dir() -> Path:
    return PROJECT_ROOT / "shaders"

"""The code base stays ruff clean (the rules are in pyproject.toml)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT


def test_ruff_is_clean() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_import_contracts_hold() -> None:
    """The layers and independence contracts in pyproject.toml: heads apart, loops on the shared contract only."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    if not lint_imports.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run([lint_imports, "--no-cache"], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

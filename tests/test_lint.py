"""The code base stays ruff clean (the rules are in pyproject.toml)."""

import importlib.util
import subprocess
import sys

import pytest

from tests.conftest import PROJECT


def test_ruff_is_clean() -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=PROJECT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout

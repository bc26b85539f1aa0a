"""The command line: every option parsed, --help's examples, identity photos and folders, options reaching the
pipeline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from realtime.cli import EXAMPLES, MAX_IDENTITIES, build_parser, build_pipeline, identity_photos, main, parse_args
from realtime.errors import UserError
from tests.conftest import HANG_S, PROJECT, media


@pytest.fixture(autouse=True)
def no_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))


def test_every_option_is_parsed() -> None:
    args = parse_args([
        "--identity", "a.jpg", "--identity", "faces", "--source", "2", "--record", "out.mp4", "--overwrite",
        "--no-window", "--no-vcam", "--live", "--loop", "--size", "1280x720", "--fps", "24", "--no-head-pose",
        "--mirror", "--hold-when-lost", "--smoothing", "3", "--background", "bg.png", "--no-cache",
        "--deca-data", "DECA/data", "--style", "shape", "--no-detail", "--backend", "onnxruntime",
        "--list-cameras", "--doctor", "-v",
    ])
    assert args.identity == [Path("a.jpg"), Path("faces")]
    assert (args.source, args.record, args.overwrite, args.no_window, args.vcam, args.live, args.loop) == (
        "2", Path("out.mp4"), True, True, False, True, True)
    assert (args.size, args.fps, args.head_pose, args.mirror, args.hold_when_lost, args.smoothing) == (
        (1280, 720), 24.0, False, True, True, 3.0)
    assert (args.background, args.no_cache, args.deca_data, args.style, args.no_detail, args.backend) == (
        "bg.png", True, Path("DECA/data"), "shape", True, "onnxruntime")
    assert args.list_cameras and args.doctor and args.verbose and not args.write_config and args.config is None


@pytest.mark.parametrize(("option", "value", "words"), [
    ("--size", "640", "is not a size like 640x480"),
    ("--size", "10x10", "is not a size like 640x480"),
    ("--fps", "0", "is not a frame rate from 1 to 240"),
    ("--fps", "fast", "is not a frame rate from 1 to 240"),
    ("--smoothing", "-1", "is not a filter strength from 0 (off) to 10"),
    ("--smoothing", "11", "is not a filter strength from 0 (off) to 10"),
    ("--style", "cartoon", "invalid choice: 'cartoon'"),
    ("--backend", "cuda", "invalid choice: 'cuda'"),
])
def test_bad_values_are_refused_with_the_rule(option: str, value: str, words: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--identity", "a.jpg", option, value])
    assert exit_.value.code == 2
    assert words in capsys.readouterr().err


def test_help_shows_an_example_for_every_option() -> None:
    parser = build_parser()
    options = [action.option_strings for action in parser._actions if action.dest != "help"]
    examples = EXAMPLES.split("keys in the preview window")[0]
    missing = [strings for strings in options if not any(f"{name} " in examples or examples.endswith(name)
                                                         or f"{name}\n" in examples for name in strings)]
    assert not missing, f"options without an example in --help: {missing}"
    text = parser.format_help()
    assert "1-9 switch identity" in text and "config.toml" in text and "realtime-retarget --doctor" in text


def test_the_console_entry_point_runs(tmp_path: Path) -> None:
    """`realtime-retarget` as installed (pip install -e .), or the module it names when not installed here."""
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    scripts = Path(sys.executable).parent / "realtime-retarget"
    command = [str(scripts)] if scripts.is_file() else [sys.executable, "-m", "realtime.cli"]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=HANG_S, cwd=PROJECT, env=env)
    assert result.returncode == 0 and result.stdout.startswith("usage: realtime-retarget")


def test_identity_folders_expand_to_their_photos(tmp_path: Path) -> None:
    folder = tmp_path / "faces"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "notes.txt", "c.jpeg"):
        (folder / name).write_bytes(b"")
    single = tmp_path / "me.png"
    single.write_bytes(b"")
    assert identity_photos([single, folder]) == [single, folder / "a.JPG", folder / "b.png", folder / "c.jpeg"]

    (tmp_path / "empty").mkdir()
    for paths, words in (([tmp_path / "empty"], "holds no photos"), ([tmp_path / "gone.jpg"], "not found"),
                         ([single] * (MAX_IDENTITIES + 1), r"at most 9 \(one per number key\)")):
        with pytest.raises(UserError, match=words) as error:
            identity_photos(paths)
        assert "\n" not in str(error.value)


def test_no_identity_says_how_to_give_one(capsys) -> None:
    assert main(["--source", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: which face? pass --identity PHOTO") and "config.toml" in err


def test_deca_takes_one_identity(tmp_path: Path) -> None:
    args = parse_args(["--identity", "a.jpg", "--identity", "b.jpg", "--deca-data", str(tmp_path)])
    with pytest.raises(UserError, match="--deca-data animates one identity, 2 were given"):
        build_pipeline(args)


def test_options_reach_the_pipeline(assets, gl_context) -> None:
    args = parse_args(["--identity", str(media("pyfeat_single_face.jpg")), "--identity",
                       str(media("skimage_astronaut.png")), "--size", "320x240", "--smoothing", "0", "--mirror",
                       "--no-head-pose", "--hold-when-lost", "--look", "head", "--background", "#ff0000"])
    pipeline = build_pipeline(args, gl_context)
    try:
        assert pipeline.identity_names == ("pyfeat_single_face.jpg", "skimage_astronaut.png")
        retarget = pipeline.retargeter.options
        assert (retarget.smoothing, retarget.mirrored, retarget.head_pose, retarget.hold_when_lost) == (
            0.0, True, False, True)
        image = pipeline.render_pose(pipeline.neutral_pose())
        assert image.shape == (240, 320, 3) and image[2, 2].tolist() == [255, 0, 0]
    finally:
        pipeline.close()

"""The settings file: where it is, what it may hold, and that the command line overrides it."""

from pathlib import Path

import pytest

from realtime.cli import main, parse_args
from realtime.config import default_config_path, load_config
from realtime.errors import UserError


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private HOME with no settings file, and no XDG_CONFIG_HOME."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return tmp_path / "home"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_location_follows_xdg_config_home(home: Path, tmp_path: Path, monkeypatch) -> None:
    assert default_config_path() == home / ".config" / "realtime-retarget" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_config_path() == tmp_path / "xdg" / "realtime-retarget" / "config.toml"


def test_no_settings_file_means_the_built_in_defaults() -> None:
    args = parse_args([])
    assert args.config is None and args.identity == []
    assert (args.source, args.size, args.fps, args.smoothing, args.vcam, args.mirror, args.head_pose) == (
        "0", (640, 480), None, 1.0, True, False, True)


SETTINGS = """\
identity = ["me.jpg", "faces"]
source = 1
size = "320x240"
fps = 25
background = "#112233"
style = "shape"
smoothing = 2.5
virtual_camera = false
mirror = true
head_pose = false
hold_when_lost = true
deca_data = "DECA/data"
"""


def test_the_file_overrides_the_defaults_and_the_command_line_overrides_the_file(home: Path) -> None:
    config = write(default_config_path(), SETTINGS)
    args = parse_args([])
    folder = config.parent
    assert args.config == config
    assert args.identity == [folder / "me.jpg", folder / "faces"], "relative to the settings file's folder"
    assert (args.source, args.size, args.fps, args.background, args.style, args.smoothing) == (
        "1", (320, 240), 25.0, "#112233", "shape", 2.5)
    assert (args.vcam, args.mirror, args.head_pose, args.hold_when_lost) == (False, True, False, True)
    assert args.deca_data == folder / "DECA" / "data"

    args = parse_args(["--identity", "other.jpg", "--source", "clip.mp4", "--size", "800x600", "--fps", "30",
                       "--background", "#000000", "--style", "textured", "--smoothing", "0", "--vcam",
                       "--no-mirror", "--head-pose", "--no-hold-when-lost", "--deca-data", "elsewhere"])
    assert args.identity == [Path("other.jpg")], "the command line's identities replace the file's"
    assert (args.source, args.size, args.fps, args.background, args.style, args.smoothing) == (
        "clip.mp4", (800, 600), 30.0, "#000000", "textured", 0.0)
    assert (args.vcam, args.mirror, args.head_pose, args.hold_when_lost) == (True, False, True, False)
    assert args.deca_data == Path("elsewhere")


def test_config_option_names_another_file(home: Path, tmp_path: Path) -> None:
    write(default_config_path(), 'size = "320x240"\n')
    other = write(tmp_path / "work.toml", 'size = "1280x720"\nidentity = "/faces/boss.png"\n')
    args = parse_args(["--config", str(other)])
    assert args.config == other and args.size == (1280, 720) and args.identity == [Path("/faces/boss.png")]


@pytest.mark.parametrize(("text", "words"), [
    ('camera = 1\n', ["unknown key 'camera'", "known: identity, source"]),
    ('size = "big"\n', ["size = 'big'", "640x480"]),
    ('size = 640\n', ["size = 640"]),
    ('fps = 0\n', ["fps = 0", "1 to 240"]),
    ('smoothing = -1\n', ["smoothing = -1", "0 (off) to 10"]),
    ('smoothing = "high"\n', ["smoothing = 'high'"]),
    ('virtual_camera = "yes"\n', ["virtual_camera = 'yes'", "true or false"]),
    ('style = "cartoon"\n', ["style = 'cartoon'", "'textured', 'shape'"]),
    ('identity = 3\n', ["identity = 3"]),
    ('identity = []\n', ["identity = []"]),
    ('source = -1\n', ["source = -1"]),
    ('[camera]\nindex = 1\n', ["unknown key 'camera'"]),
    ('size = "640x480\n', ["not valid TOML"]),
])
def test_bad_settings_are_one_line_errors_naming_the_key_and_file(tmp_path: Path, capsys, text, words) -> None:
    config = write(tmp_path / "bad.toml", text)
    with pytest.raises(UserError) as error:
        load_config(config)
    message = str(error.value)
    assert "\n" not in message and str(config) in message
    for word in words:
        assert word in message
    # the app itself: one line on stderr, exit 2, even for --doctor
    assert main(["--config", str(config), "--doctor"]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_default_file_is_read_when_present(home: Path, capsys) -> None:
    write(default_config_path(), "colour = 1\n")
    assert main(["--list-cameras"]) == 2
    assert "unknown key 'colour'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # help still works, whatever the file holds
        main(["--help"])
    assert exit_.value.code == 0


def test_a_missing_named_file_is_an_error(tmp_path: Path, capsys) -> None:
    assert main(["--config", str(tmp_path / "nope.toml"), "--list-cameras"]) == 2
    assert "nope.toml not found" in capsys.readouterr().err


def test_write_config_saves_the_options_and_later_runs_start_from_them(home: Path, tmp_path: Path, capsys) -> None:
    photo = write(tmp_path / "faces" / "me.jpg", "")
    assert main(["--identity", str(photo), "--source", "1", "--size", "1280x720", "--fps", "30", "--no-vcam",
                 "--mirror", "--smoothing", "1.5", "--background", "#223344", "--write-config"]) == 0
    config = default_config_path()
    assert capsys.readouterr().out == f"wrote {config}\n"
    assert [p.name for p in config.parent.iterdir()] == ["config.toml"], "written atomically, no temporary left"
    args = parse_args([])
    assert args.identity == [photo.resolve()]
    assert (args.source, args.size, args.fps, args.vcam, args.mirror, args.smoothing, args.background) == (
        "1", (1280, 720), 30.0, False, True, 1.5, "#223344")

    # updating one setting keeps the others; a named file that does not exist yet is created
    assert main(["--size", "320x240", "--write-config"]) == 0
    args = parse_args([])
    assert args.size == (320, 240) and args.source == "1" and args.identity == [photo.resolve()]
    work = tmp_path / "new" / "work.toml"
    assert main(["--config", str(work), "--fps", "15", "--write-config"]) == 0
    assert load_config(work)["fps"] == 15.0


def test_saved_paths_are_absolute_and_survive_the_round_trip(home: Path, tmp_path: Path, monkeypatch) -> None:
    odd = write(tmp_path / 'a "quoted" \\ folder' / "ünïcode.png", "")
    write(tmp_path / "clips" / "talk.mp4", "")
    write(tmp_path / "beach.jpg", "")
    monkeypatch.chdir(tmp_path)  # the command line's relative paths are relative to here, not to the settings file
    assert main(["--identity", str(odd), "--source", "clips/talk.mp4", "--background", "beach.jpg",
                 "--write-config"]) == 0
    args = parse_args([])
    assert args.identity == [odd.resolve()]
    assert args.source == str(tmp_path.resolve() / "clips" / "talk.mp4")
    assert args.background == str(tmp_path.resolve() / "beach.jpg")

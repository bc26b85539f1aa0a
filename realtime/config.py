"""Settings a user would otherwise type every time, in a TOML file; the command line overrides them.

    # ~/.config/realtime-retarget/config.toml (or $XDG_CONFIG_HOME/realtime-retarget/config.toml, or --config PATH)
    identity = ["~/faces/me.jpg", "~/faces"]   # photos or folders of photos; keys 1-9 switch between them
    source = 1                                 # webcam index, clip or stream URL
    size = "1280x720"
    fps = 30
    look = "photo"                             # the photo comes alive; "head": the head alone on a background
    background = "#223344"                     # or an image file (the head look's)
    smoothing = 1.5                            # temporal filter strength: 0 off, 1 the tuned default
    virtual_camera = true
    mirror = false
    head_pose = true
    face = 2                                   # in a photo of several people, the second face from the left

Precedence: the built-in defaults, then this file, then the command line. Relative paths in the file are relative to
the file's folder. An unknown key or a bad value is a one-line error naming the key and the file.
"""

import argparse
import json
import os
import re
import tempfile
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from realtime.errors import UserError
from realtime.paths import config_dir

APP_NAME = "realtime-retarget"
STYLES = ("textured", "shape")
LOOKS = ("photo", "head")  # the identity photo come alive; the head alone on a background


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[xX](\d+)", text.strip())
    if not match or not (16 <= int(match[1]) <= 7680 and 16 <= int(match[2]) <= 4320):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 640x480 (16 to 7680 x 4320)")
    return int(match[1]), int(match[2])


def parse_fps(text: str) -> float:
    try:
        fps = float(text)
    except ValueError:
        fps = 0.0
    if not 1 <= fps <= 240:
        raise argparse.ArgumentTypeError(f"{text!r} is not a frame rate from 1 to 240")
    return fps


def parse_smoothing(text: str) -> float:
    try:
        strength = float(text)
    except ValueError:
        strength = -1.0
    if not 0 <= strength <= 10:
        raise argparse.ArgumentTypeError(f"{text!r} is not a filter strength from 0 (off) to 10 (1 is the default)")
    return strength


def parse_face(text: str) -> int:
    """A face number: 1 is the leftmost face of the identity photo (`--list-faces` draws the numbers)."""
    try:
        number = int(text)
    except ValueError:
        number = 0
    if not 1 <= number <= 99:
        raise argparse.ArgumentTypeError(f"{text!r} is not a face number from 1 (the leftmost face) to 99")
    return number


def parse_color(text: str) -> tuple[float, float, float] | None:
    """An RGB colour in [0, 1] from '#rrggbb', or None if ``text`` is not one (then it names an image)."""
    match = re.fullmatch(r"#?([0-9a-fA-F]{6})", text.strip())
    if not match:
        return None
    return tuple(int(match[1][i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def default_config_path() -> Path:
    """``config.toml`` in the user's settings folder (`realtime.paths.config_dir`: ``$XDG_CONFIG_HOME`` or
    ``~/.config`` on Linux, ``~/Library/Application Support`` on macOS, ``%APPDATA%`` on Windows)."""
    return config_dir() / "config.toml"


@dataclass(frozen=True)
class Setting:
    """One key of the file: the command-line option it stands for and how its TOML value becomes that option's."""

    dest: str  # the argparse destination
    convert: Callable[[Any, Path], Any]  # (TOML value, the file's folder) -> option value; TypeError/ValueError: bad
    describe: str  # what a good value looks like, for the error message
    to_toml: Callable[[Any], Any] = lambda value: value  # option value -> TOML value (--write-config; paths absolute)


def _bool(value: Any, folder: Path) -> bool:
    if not isinstance(value, bool):
        raise TypeError
    return value


def _string(value: Any, folder: Path) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError
    return value


def _path(value: Any, folder: Path) -> Path:
    return folder / Path(_string(value, folder)).expanduser()


def _source(value: Any, folder: Path) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    text = _string(value, folder)
    if text.isdigit() or "://" in text:
        return text
    return str(_path(text, folder))


def _identities(value: Any, folder: Path) -> list[Path]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise TypeError
    return [_path(item, folder) for item in values]


def _number(parse: Callable[[str], float]) -> Callable[[Any, Path], float]:
    def convert(value: Any, folder: Path) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError
        try:
            return parse(str(value))
        except argparse.ArgumentTypeError as err:
            raise ValueError from err

    return convert


def _size(value: Any, folder: Path) -> tuple[int, int]:
    try:
        return parse_size(_string(value, folder))
    except argparse.ArgumentTypeError as err:
        raise ValueError from err


def _background(value: Any, folder: Path) -> str:
    text = _string(value, folder)
    return text if parse_color(text) is not None else str(_path(text, folder))


def _look(value: Any, folder: Path) -> str:
    if _string(value, folder) not in LOOKS:
        raise ValueError
    return value


def _style(value: Any, folder: Path) -> str:
    if _string(value, folder) not in STYLES:
        raise ValueError
    return value


def _face(value: Any, folder: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError
    try:
        return parse_face(str(value))
    except argparse.ArgumentTypeError as err:
        raise ValueError from err


def _absolute(path: Path | str) -> str:
    return str(Path(path).expanduser().resolve())


SETTINGS: dict[str, Setting] = {
    "identity": Setting("identity", _identities, "a photo or folder path, or a list of them",
                        lambda paths: [_absolute(path) for path in paths]),
    "source": Setting("source", _source, "a webcam index like 0, a video file or a stream URL",
                      lambda source: source if source.isdigit() or "://" in source else _absolute(source)),
    "size": Setting("size", _size, 'a size like "640x480"', lambda size: f"{size[0]}x{size[1]}"),
    "fps": Setting("fps", _number(parse_fps), "a frame rate from 1 to 240"),
    "background": Setting("background", _background, 'a colour like "#223344" or an image file',
                          lambda text: text if parse_color(text) is not None else _absolute(text)),
    "look": Setting("look", _look, f"one of {', '.join(repr(look) for look in LOOKS)}"),
    "style": Setting("style", _style, f"one of {', '.join(repr(style) for style in STYLES)}"),
    "smoothing": Setting("smoothing", _number(parse_smoothing), "a number from 0 (off) to 10; 1 is the default"),
    "virtual_camera": Setting("vcam", _bool, "true or false"),
    "mirror": Setting("mirror", _bool, "true or false"),
    "head_pose": Setting("head_pose", _bool, "true or false"),
    "hold_when_lost": Setting("hold_when_lost", _bool, "true or false"),
    "deca_data": Setting("deca_data", _path, "the path of your DECA data/ folder", _absolute),
    "face": Setting("face", _face, "a face number from 1 (the leftmost face; --list-faces PHOTO draws them)"),
}


def load_config(path: Path) -> dict[str, Any]:
    """The file's settings as {argparse destination: value}; a UserError naming the file (and key) if it is bad."""
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except FileNotFoundError:
        raise UserError(f"settings file {path} not found: check the path, or create it with --write-config") from None
    except OSError as err:
        raise UserError(f"settings file {path} could not be read ({err.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"settings file {path} is not valid TOML ({err}): fix or delete it") from None
    folder = path.resolve().parent
    values = {}
    for key, value in table.items():
        setting = SETTINGS.get(key)
        if setting is None:
            raise UserError(f"settings file {path}: unknown key {key!r} (known: {', '.join(SETTINGS)})")
        try:
            values[setting.dest] = setting.convert(value, folder)
        except (TypeError, ValueError):
            raise UserError(f"settings file {path}: {key} = {value!r} is not {setting.describe}") from None
    return values


def config_text(options: argparse.Namespace) -> str:
    """A settings file holding ``options``' values for every key (those without a value are left out)."""
    lines = [f"# {APP_NAME} settings: the command line overrides them (see `{APP_NAME} --help`)"]
    for key, setting in SETTINGS.items():
        value = getattr(options, setting.dest, None)
        if value is None or value == []:
            continue
        lines.append(f"{key} = {_toml_value(setting.to_toml(value))}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))  # JSON's string escapes are valid in TOML basic strings


def write_config(path: Path, options: argparse.Namespace) -> None:
    """Save ``options`` to ``path`` atomically (a temporary file renamed into place); the folder is created."""
    text = config_text(options)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(text)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as err:
        raise UserError(f"could not write the settings file {path} ({err.strerror}): choose another --config") from None

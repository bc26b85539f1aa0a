"""The preview window, for real: a glfw window on a private Xvfb server, read back from the screen."""

import shutil
import subprocess

import cv2
import glfw
import numpy as np
import pytest

from realtime.errors import UserError
from realtime.io.window import Key, Overlay, PreviewWindow
from tests.conftest import HANG_S, media, wait_until
from tests.xvfb import xvfb_display

AVATAR_COLOUR = (40, 200, 90)
PURE_RED = (255, 0, 0)


@pytest.fixture(scope="session")
def x_server() -> str:
    with xvfb_display() as display:
        yield display


@pytest.fixture
def display(x_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("DISPLAY", x_server)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    return x_server


@pytest.fixture
def window(display: str):
    with PreviewWindow.create((1280, 480)) as window:
        yield window


def astronaut() -> np.ndarray:
    return cv2.imread(str(media("skimage_astronaut.png")), cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def flat_avatar(width: int = 320, height: int = 400) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = AVATAR_COLOUR
    return image


def read_screen(window: PreviewWindow) -> np.ndarray:
    """The window's default framebuffer as an RGB image, row 0 at the top."""
    width, height = glfw.get_framebuffer_size(window.handle)
    pixels = window.ctx.screen.read(viewport=(0, 0, width, height), components=3, alignment=1)
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 3)[::-1]


def count_pure_red(image: np.ndarray) -> int:
    return int(np.all(image == PURE_RED, axis=2).sum())


def test_shows_camera_and_avatar_on_screen(window: PreviewWindow) -> None:
    renderer = window.ctx.info["GL_RENDERER"]
    assert isinstance(renderer, str) and renderer.strip() and "unknown" not in renderer.lower()

    photo = astronaut()  # 512 x 512: letterboxed to 480 x 480 in the 640 x 480 left half
    window.show(photo, flat_avatar(), Overlay(fps=29.7, latency_ms=41))
    window.poll()
    screen = read_screen(window)
    assert screen.shape == (480, 1280, 3)
    # what is on screen is exactly the composite, texel for texel
    composite = window.composite(photo, flat_avatar(), Overlay(fps=29.7, latency_ms=41))
    np.testing.assert_array_equal(screen, composite)

    # left half: the photo, between the letterbox bars, away from the overlay text
    expected = cv2.resize(photo, (480, 480), interpolation=cv2.INTER_AREA)
    shown = screen[120:420, 80:560].astype(int)
    assert np.abs(shown - expected[120:420]).mean() < 2.0
    assert screen[240, 40].tolist() == screen[240, 600].tolist()  # the bars either side share one colour
    # right half: the avatar colour fills its letterboxed area (320 x 400 scaled to 384 x 480)
    avatar_area = screen[120:420, 640 + 128 : 640 + 512]
    assert (np.abs(avatar_area.astype(int) - AVATAR_COLOUR).max(axis=2) <= 1).all()

    # the red "FACE LOST" warning is drawn onto the composite (the photo has some red of its own: compare)
    tracking = window.composite(photo, flat_avatar(), Overlay(tracking=True))
    lost = window.composite(photo, flat_avatar(), Overlay(tracking=False))
    added_red = count_pure_red(lost[:, :640]) - count_pure_red(tracking[:, :640])
    assert added_red > 100
    rows, columns = np.nonzero(np.all(lost == PURE_RED, axis=2) & ~np.all(tracking == PURE_RED, axis=2))
    assert rows.max() < 120 and columns.max() < 320  # top left, over the camera image


def test_what_is_shown_reaches_the_x_server(window: PreviewWindow, display: str) -> None:
    """A screenshot taken from the X server itself, not from GL, shows the frame."""
    image_grab = pytest.importorskip("PIL.ImageGrab")
    from PIL import features

    if not features.check("xcb"):
        pytest.skip("Pillow is built without XCB: cannot take an X screenshot")
    window.show(astronaut(), flat_avatar(), Overlay())
    window.poll()
    x, y = glfw.get_window_pos(window.handle)
    grab = np.asarray(image_grab.grab(xdisplay=display))[y : y + 480, x : x + 1280, :3]
    np.testing.assert_array_equal(grab, read_screen(window))


def test_overlay_states_render(window: PreviewWindow) -> None:
    """Every overlay element draws without error and changes the picture; a missing camera frame is allowed."""
    plain = window.composite(astronaut(), flat_avatar(), Overlay())
    for overlay in (
        Overlay(recording="out-1.mp4", recording_seconds=72.4),
        Overlay(paused=True),
        Overlay(show_help=True),
        Overlay(message="neutral calibrated"),
        Overlay(camera_state="reconnecting"),
        Overlay(camera_state="ended"),
    ):
        image = window.composite(astronaut(), flat_avatar(), overlay)
        assert image.shape == plain.shape and not np.array_equal(image, plain), overlay
    recording = window.composite(astronaut(), flat_avatar(), Overlay(recording="out-1.mp4", recording_seconds=12))
    assert count_pure_red(recording[:, 640:]) > 50  # the red dot and "REC 00:12" over the avatar
    window.show(None, flat_avatar(), Overlay(camera_state="reconnecting"))


THUMBNAIL_COLOURS = ((230, 30, 30), (30, 30, 230), (30, 200, 200))


def test_identity_thumbnails_along_the_bottom_of_the_avatar(window: PreviewWindow) -> None:
    """One numbered picture per identity at the bottom right of the avatar half; the active one outlined in amber."""
    thumbnails = tuple(np.full((128, 128, 3), colour, np.uint8) for colour in THUMBNAIL_COLOURS)
    plain = window.composite(astronaut(), flat_avatar(), Overlay())
    image = window.composite(astronaut(), flat_avatar(), Overlay(thumbnails=thumbnails, identity=1))
    changed = np.any(image != plain, axis=2)
    rows, columns = np.nonzero(changed)
    assert rows.min() > 360 and columns.min() > 640 + 320, "bottom right of the avatar half only"
    centres = []
    for colour in THUMBNAIL_COLOURS:
        ys, xs = np.nonzero(np.all(image == colour, axis=2))
        assert len(xs) > 40 * 40, f"thumbnail {colour} is shown"
        centres.append(xs.mean())
    assert centres == sorted(centres), "in key order, left to right"
    amber = np.all(image == (255, 190, 40), axis=2)
    ys, xs = np.nonzero(amber)
    assert len(xs) > 200 and centres[0] < xs.mean() < centres[2], "the second (active) one is outlined"
    window.show(astronaut(), flat_avatar(), Overlay(thumbnails=thumbnails, identity=2))
    np.testing.assert_array_equal(read_screen(window), window.composite(
        astronaut(), flat_avatar(), Overlay(thumbnails=thumbnails, identity=2)))
    single = window.composite(astronaut(), flat_avatar(), Overlay(thumbnails=thumbnails[:1]))
    np.testing.assert_array_equal(single, plain)  # one identity: nothing to switch, no thumbnails


def press(window: PreviewWindow, *keys: str) -> str:
    """Send key presses to the window with xdotool, or call its glfw key callback when xdotool is missing. Then
    ``keys_arriving`` polls them: when X delivers them depends on the machine's load, not a fixed pause."""
    if shutil.which("xdotool"):
        window_id = glfw.get_x11_window(window.handle)
        subprocess.run(["xdotool", "key", "--window", str(window_id), *keys], check=True, timeout=HANG_S)
        return "xdotool"
    codes = {"r": glfw.KEY_R, "n": glfw.KEY_N, "h": glfw.KEY_H, "q": glfw.KEY_Q, "space": glfw.KEY_SPACE,
             "Escape": glfw.KEY_ESCAPE, "x": glfw.KEY_X, "1": glfw.KEY_1, "2": glfw.KEY_2, "9": glfw.KEY_9,
             "0": glfw.KEY_0, "KP_3": glfw.KEY_KP_3}
    callback = glfw.set_key_callback(window.handle, None)
    glfw.set_key_callback(window.handle, callback)
    for key in keys:
        callback(window.handle, codes[key], 0, glfw.PRESS, 0)
        callback(window.handle, codes[key], 0, glfw.RELEASE, 0)
    return "callback"


def keys_arriving(window: PreviewWindow, count: int) -> list[Key]:
    """The keys ``poll`` returns until ``count`` have come (the last key pressed arrives last)."""
    keys: list[Key] = []

    def enough() -> bool:
        keys.extend(window.poll())
        return len(keys) >= count

    wait_until(enough, f"{count} key presses")
    return keys


def test_keys_and_close(window: PreviewWindow) -> None:
    window.show(None, flat_avatar(), Overlay())
    assert window.poll() == []
    how = press(window, "r")
    assert keys_arriving(window, 1) == [Key.RECORD], how
    assert window.poll() == []  # drained
    press(window, "n", "x", "space", "h", "Escape", "q")  # x means nothing
    assert keys_arriving(window, 5) == [Key.NEUTRAL, Key.PAUSE, Key.HELP, Key.QUIT, Key.QUIT]
    press(window, "1", "2", "0", "9", "KP_3")  # 0 means nothing
    keys = keys_arriving(window, 4)
    assert keys == [Key.IDENTITY_1, Key.IDENTITY_2, Key.IDENTITY_9, Key.IDENTITY_3]
    assert [key.identity_index for key in keys] == [0, 1, 8, 2] and Key.RECORD.identity_index is None

    glfw.set_window_should_close(window.handle, True)
    assert window.poll() == [Key.QUIT]


def test_resize_follows_the_framebuffer(window: PreviewWindow) -> None:
    window.show(astronaut(), flat_avatar(), Overlay())
    glfw.set_window_size(window.handle, 800, 300)

    def resized() -> bool:
        window.poll()  # the framebuffer size callback arrives with the events
        return window.composite(None, flat_avatar(), Overlay()).shape == (300, 800, 3)

    wait_until(resized, "the framebuffer to follow the window's size")
    window.show(astronaut(), flat_avatar(), Overlay())
    composite = window.composite(astronaut(), flat_avatar(), Overlay())
    assert composite.shape == (300, 800, 3)
    np.testing.assert_array_equal(read_screen(window), composite)


def test_close_is_idempotent(display: str) -> None:
    window = PreviewWindow.create((320, 240))
    window.close()
    window.close()
    with pytest.raises(RuntimeError, match="closed"):
        window.poll()


def test_no_display_is_a_one_line_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(UserError) as error:
        PreviewWindow.create()
    message = str(error.value)
    assert "--no-window" in message and "DISPLAY is not set" in message
    assert "\n" not in message


def test_avatar_renderer_shares_the_window_context(window: PreviewWindow) -> None:
    """The one-context design: the renderer draws into its own framebuffer on window.ctx; the window shows it."""
    from realtime.rendering.renderer import AvatarMesh, AvatarRenderer, RenderOptions

    # a square (two triangles) facing the camera, in front of the point the camera looks at (model units are cm)
    vertices = np.array([[-8, -9.5, 0], [8, -9.5, 0], [8, 6.5, 0], [-8, 6.5, 0]], np.float32)
    normals = np.tile(np.array([0, 0, 1], np.float32), (4, 1))
    mesh = AvatarMesh(
        triangles=np.array([[0, 1, 2], [0, 2, 3]], np.int32),
        render_vertex=np.arange(4, dtype=np.int32),
        uv=np.zeros((4, 2), np.float32),
        material=np.tile(np.array([0.9, 0.2, 0.2, 0.0], np.float32), (4, 1)),  # alpha 0: the colour, no texture
    )
    options = RenderOptions(size=(320, 240), antialias="none")
    renderer = AvatarRenderer(window.ctx, mesh, np.full((4, 4, 3), 128, np.uint8), options)
    try:
        avatar = renderer.render(vertices, normals)
        assert avatar.shape == (240, 320, 3)
        background = np.round(np.array(options.background) * 255)
        assert np.abs(avatar[5, 5].astype(int) - background).max() <= 1
        centre = avatar[120, 160].astype(int)
        assert centre[0] > 2 * centre[1] and centre[0] > 100  # the lit reddish square

        window.show(astronaut(), avatar, Overlay())
        screen = read_screen(window)
        np.testing.assert_array_equal(screen, window.composite(astronaut(), avatar, Overlay()))
        assert np.abs(screen[240, 960].astype(int) - centre).max() <= 2  # the avatar, on screen

        again = renderer.render(vertices, normals)  # the window's drawing does not disturb the renderer
        np.testing.assert_array_equal(again, avatar)
    finally:
        renderer.release()

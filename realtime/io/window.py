"""The live preview window: camera and avatar side by side with a status overlay, on the app's one GL context.

The window owns a glfw window with an OpenGL 3.3 core context and exposes it as ``window.ctx`` so that the avatar
renderer is created on that same context (it draws into its own framebuffer). Each frame is composited on the CPU
(`compose`: letterboxed images, overlay text drawn with OpenCV, identity thumbnails), uploaded to a texture and drawn
with one full-screen quad.
Everything here, as every GL call of the app, runs on the thread that created the window.
"""

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass, field
from enum import Enum

import cv2
import glfw
import moderngl
import numpy as np

from realtime.errors import UserError
from realtime.rendering.renderer import load_program

log = logging.getLogger(__name__)

NO_WINDOW_ADVICE = "run with --no-window, or start an X server"
BACKGROUND = (16, 17, 20)  # RGB of the letterbox bars
WHITE, RED, GREEN, AMBER, GREY = (255, 255, 255), (255, 0, 0), (90, 220, 110), (255, 190, 40), (170, 170, 170)
FONT = cv2.FONT_HERSHEY_SIMPLEX  # Hershey fonts are ASCII only: "..." rather than an ellipsis
HELP_LINES = (  # key, what it does
    ("q / Esc", "quit"),
    ("r", "start / stop recording"),
    ("n", "calibrate neutral (look ahead, relax)"),
    ("1 - 9", "switch identity"),
    ("space", "pause / resume"),
    ("h", "show / hide this help"),
)


@dataclass(frozen=True)
class Overlay:
    """What the overlay shows this frame."""

    fps: float = 0.0
    latency_ms: float | None = None
    tracking: bool = True
    camera_state: str = "live"  # "live" | "reconnecting" | "ended"
    recording: str | None = None  # file name while recording
    recording_seconds: float = 0.0
    paused: bool = False
    show_help: bool = False
    message: str | None = None  # a transient line, e.g. "neutral calibrated" or "saved out-1.mp4"
    # one small picture per identity along the bottom of the avatar half (none for a single identity), numbered as
    # their keys; the active one is outlined
    thumbnails: tuple[np.ndarray, ...] = field(default=(), compare=False)
    identity: int = 0  # the active identity, 0-based


class Key(Enum):
    QUIT = "quit"  # q or Esc, or closing the window
    RECORD = "record"  # r
    NEUTRAL = "neutral"  # n
    HELP = "help"  # h
    PAUSE = "pause"  # space
    IDENTITY_1 = "1"  # number keys (also on the keypad): switch to that identity
    IDENTITY_2 = "2"
    IDENTITY_3 = "3"
    IDENTITY_4 = "4"
    IDENTITY_5 = "5"
    IDENTITY_6 = "6"
    IDENTITY_7 = "7"
    IDENTITY_8 = "8"
    IDENTITY_9 = "9"

    @property
    def identity_index(self) -> int | None:
        """The 0-based identity a number key selects; None for the other keys."""
        return int(self.value) - 1 if self.value.isdigit() else None


KEYMAP = {
    glfw.KEY_Q: Key.QUIT,
    glfw.KEY_ESCAPE: Key.QUIT,
    glfw.KEY_R: Key.RECORD,
    glfw.KEY_N: Key.NEUTRAL,
    glfw.KEY_H: Key.HELP,
    glfw.KEY_SPACE: Key.PAUSE,
    **{getattr(glfw, f"KEY_{n}"): Key(str(n)) for n in range(1, 10)},
    **{getattr(glfw, f"KEY_KP_{n}"): Key(str(n)) for n in range(1, 10)},
}


class PreviewWindow:
    """A glfw window showing composited frames; ``ctx`` is its OpenGL context, shared with the avatar renderer."""

    def __init__(self, window, ctx: moderngl.Context) -> None:
        self._window = window
        self.ctx = ctx
        self._thread = threading.get_ident()
        self._keys: list[Key] = []
        self._size = glfw.get_framebuffer_size(window)  # composition size = framebuffer size
        glfw.set_key_callback(window, self._on_key)
        glfw.set_framebuffer_size_callback(window, self._on_framebuffer_size)
        self._program = load_program(ctx, "window")
        self._quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], np.float32).tobytes())
        self._vao = ctx.vertex_array(self._program, [(self._quad, "2f", "in_position")])
        self._texture: moderngl.Texture | None = None

    @classmethod
    def create(cls, size: tuple[int, int] = (1280, 480), title: str = "realtime-retarget") -> "PreviewWindow":
        """Open the window (``size`` is width, height) and make its context current on the calling thread."""
        errors: list[str] = []  # glfw reports why a call failed through its error callback
        glfw.set_error_callback(lambda code, description: errors.append(_one_line(description)))
        try:
            window = cls._open(size, title, errors)
        finally:
            glfw.set_error_callback(lambda code, description: log.warning("glfw: %s", _one_line(description)))
        glfw.make_context_current(window)
        glfw.swap_interval(0)  # the app paces itself
        try:
            moderngl.init_context()  # wraps the current context (EGL or GLX), loading functions through its API
            ctx = moderngl.get_context()
            if ctx.version_code < 330:
                raise RuntimeError(f"OpenGL {ctx.version_code} is older than 3.3")
        except Exception as err:  # moderngl raises plain Exceptions for a missing or too old GL
            glfw.destroy_window(window)
            glfw.terminate()
            raise UserError(f"could not use the preview window's OpenGL context ({err}): {NO_WINDOW_ADVICE}") from err
        log.info("preview window %dx%d on %s", *glfw.get_framebuffer_size(window), ctx.info["GL_RENDERER"])
        return cls(window, ctx)

    @staticmethod
    def _open(size: tuple[int, int], title: str, errors: list[str]):
        """Start glfw and open an OpenGL 3.3 core window, or raise a UserError saying why not and what to do."""
        if not glfw.init():
            no_display = sys.platform.startswith("linux") and not (
                os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
            )
            reason = "DISPLAY is not set" if no_display else (errors[-1] if errors else "glfw could not start")
            raise UserError(f"no display for the preview window ({reason}): {NO_WINDOW_ADVICE}")
        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
        glfw.window_hint(glfw.RESIZABLE, True)
        if sys.platform.startswith("linux"):
            # EGL, like the off-screen renderer: once a process has used EGL, glXMakeCurrent fails (BadAccess) and
            # Xlib exits the process, so a GLX window could not live beside an off-screen context
            glfw.window_hint(glfw.CONTEXT_CREATION_API, glfw.EGL_CONTEXT_API)
        window = glfw.create_window(size[0], size[1], title, None, None)
        if not window:
            glfw.terminate()
            reason = errors[-1] if errors else "no OpenGL 3.3 core context"
            raise UserError(f"could not open the preview window ({reason}): {NO_WINDOW_ADVICE}")
        return window

    def show(self, camera: np.ndarray | None, avatar: np.ndarray, overlay: Overlay) -> None:
        """Composite ``camera`` (None: no frame) and ``avatar`` (RGB uint8, any size) with ``overlay``; display it."""
        self._check_thread()
        width, height = self._size
        if width == 0 or height == 0:  # minimised
            return
        image = self.composite(camera, avatar, overlay)
        if not _same_window(glfw.get_current_context(), self._window):
            glfw.make_context_current(self._window)
        if self._texture is None or self._texture.size != (width, height):  # first frame, or resized
            if self._texture is not None:
                self._texture.release()
            self._texture = self.ctx.texture((width, height), 3, alignment=1)
            self._texture.filter = (moderngl.NEAREST, moderngl.NEAREST)  # texel for pixel
            self._texture.repeat_x = self._texture.repeat_y = False
        self._texture.write(image.tobytes(), alignment=1)

        # the avatar renderer shares this context: undo the state it leaves behind
        self.ctx.screen.viewport = (0, 0, width, height)
        self.ctx.screen.use()
        self.ctx.scissor = None
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE | moderngl.BLEND)
        self._texture.use(0)
        self._program["image"].value = 0
        self._vao.render(moderngl.TRIANGLE_STRIP)
        glfw.swap_buffers(self._window)

    def poll(self) -> list[Key]:
        """Process window events; the keys pressed since the last poll, in order (closing the window is Key.QUIT)."""
        self._check_thread()
        glfw.poll_events()
        keys, self._keys = self._keys, []
        if glfw.window_should_close(self._window) and Key.QUIT not in keys:
            keys.append(Key.QUIT)
        return keys

    def composite(self, camera: np.ndarray | None, avatar: np.ndarray, overlay: Overlay) -> np.ndarray:
        """The (H, W, 3) RGB image `show` displays: `compose` at the window's framebuffer size."""
        return compose((max(self._size[0], 2), max(self._size[1], 1)), camera, avatar, overlay)

    def close(self) -> None:
        """Destroy the window and its context (release the avatar renderer first); safe to call twice."""
        if self._window is None:
            return
        for resource in (self._texture, self._vao, self._quad, self._program):
            if resource is not None:
                resource.release()
        self.ctx.release()
        glfw.destroy_window(self._window)
        self._window = None
        glfw.terminate()
        log.info("preview window closed")

    def __enter__(self) -> "PreviewWindow":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def handle(self):
        """The glfw window handle (for tests and platform-specific code)."""
        return self._window

    def _on_key(self, window, key: int, scancode: int, action: int, mods: int) -> None:
        if action == glfw.PRESS and key in KEYMAP:
            self._keys.append(KEYMAP[key])

    def _on_framebuffer_size(self, window, width: int, height: int) -> None:
        self._size = (width, height)

    def _check_thread(self) -> None:
        if self._window is None:
            raise RuntimeError("the preview window is closed")
        if threading.get_ident() != self._thread:
            raise RuntimeError("the preview window is used from another thread than the one that created it")


def compose(size: tuple[int, int], camera: np.ndarray | None, avatar: np.ndarray, overlay: Overlay) -> np.ndarray:
    """The preview picture, ``size`` (width, height): camera left, avatar right, each letterboxed, and the overlay."""
    width, height = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = BACKGROUND
    half = width // 2
    left, right = image[:, :half], image[:, half:]
    if camera is not None:
        _letterbox(camera, left)
    else:
        state = "camera reconnecting..." if overlay.camera_state == "reconnecting" else "no camera image"
        _text(left, state, (left.shape[1] // 2, height // 2), GREY, scale=_scale(height), centred=True)
    _letterbox(avatar, right)
    if len(overlay.thumbnails) > 1:
        _draw_thumbnails(right, overlay.thumbnails, overlay.identity, _scale(height))
    _draw_overlay(image, overlay)
    return image


def _letterbox(source: np.ndarray, target: np.ndarray) -> None:
    """Scale ``source`` to fit ``target`` (a view into the composite) keeping its aspect, centred."""
    height, width = target.shape[:2]
    source_height, source_width = source.shape[:2]
    scale = min(width / source_width, height / source_height)
    fit_width, fit_height = max(1, round(source_width * scale)), max(1, round(source_height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    x, y = (width - fit_width) // 2, (height - fit_height) // 2
    target[y : y + fit_height, x : x + fit_width] = cv2.resize(
        np.ascontiguousarray(source[:, :, :3]), (fit_width, fit_height), interpolation=interpolation
    )


def _draw_overlay(image: np.ndarray, overlay: Overlay) -> None:
    """Status text on the camera half (top left), recording on the avatar half (top right), messages at the bottom."""
    height, width = image.shape[:2]
    scale = _scale(height)
    line = round(34 * scale)
    margin = round(14 * scale)

    speed = f"{overlay.fps:.1f} fps"
    if overlay.latency_ms is not None:
        speed += f"   {overlay.latency_ms:.0f} ms"
    _text(image, speed, (margin, margin + line - 8), WHITE, scale)
    if overlay.camera_state == "reconnecting":
        status, colour = "camera reconnecting...", AMBER
    elif overlay.camera_state == "ended":
        status, colour = "camera ended", GREY
    elif overlay.tracking:
        status, colour = "tracking", GREEN
    else:
        status, colour = "FACE LOST", RED
    _text(image, status, (margin, margin + 2 * line), colour, scale)

    if overlay.recording is not None:
        minutes, seconds = divmod(int(overlay.recording_seconds), 60)
        label = f"REC {minutes:02d}:{seconds:02d}"
        label_width = _text_width(label, scale)
        x = width - margin - label_width
        radius = max(4, round(9 * scale))
        cv2.circle(image, (x - 2 * radius, margin + line - 8 - radius), radius, RED, -1, cv2.LINE_AA)
        _text(image, label, (x, margin + line - 8), RED, scale)
        name_scale = 0.6 * scale
        name_width = _text_width(overlay.recording, name_scale)
        _text(image, overlay.recording, (width - margin - name_width, margin + 2 * line), WHITE, name_scale)

    if overlay.paused:
        _text(image, "PAUSED", (width // 2, height // 2), WHITE, 2 * scale, centred=True)
    if overlay.message:
        _text(image, overlay.message, (width // 2, height - margin - line), WHITE, scale, centred=True)
    if overlay.show_help:
        _draw_help(image, scale)
    else:
        _text(image, "h: help", (margin, height - margin), GREY, 0.6 * scale)


def _draw_thumbnails(panel: np.ndarray, thumbnails: tuple[np.ndarray, ...], active: int, scale: float) -> None:
    """A row of square pictures at the bottom right of ``panel``, numbered from 1, the ``active`` one outlined."""
    height, width = panel.shape[:2]
    margin, gap = round(14 * scale), max(2, round(6 * scale))
    side = min(round(0.17 * height), (width - 2 * margin) // len(thumbnails) - gap)
    if side < 8:
        return
    x = width - margin - len(thumbnails) * (side + gap) + gap
    y = height - margin - side
    for index, thumbnail in enumerate(thumbnails):
        crop = min(thumbnail.shape[:2])
        top, left = (thumbnail.shape[0] - crop) // 2, (thumbnail.shape[1] - crop) // 2
        square = np.ascontiguousarray(thumbnail[top : top + crop, left : left + crop, :3])
        panel[y : y + side, x : x + side] = cv2.resize(square, (side, side), interpolation=cv2.INTER_AREA)
        if index == active:
            thickness = max(2, round(3 * scale))
            cv2.rectangle(panel, (x - thickness, y - thickness), (x + side + thickness - 1, y + side + thickness - 1),
                          AMBER, thickness)
        else:
            cv2.rectangle(panel, (x, y), (x + side - 1, y + side - 1), GREY, 1)
        _text(panel, str(index + 1), (x + round(5 * scale), y + round(20 * scale)),
              AMBER if index == active else WHITE, 0.6 * scale)
        x += side + gap


def _draw_help(image: np.ndarray, scale: float) -> None:
    """A darkened panel listing the keys, in the middle of the window."""
    height, width = image.shape[:2]
    line = round(32 * scale)
    keys, actions = zip(*HELP_LINES, strict=True)
    key_width, action_width = (max(_text_width(text, scale) for text in column) for column in (keys, actions))
    panel_width, panel_height = key_width + action_width + 3 * line, (len(HELP_LINES) + 1) * line
    x0, y0 = max(0, (width - panel_width) // 2), max(0, (height - panel_height) // 2)
    x1, y1 = min(width, x0 + panel_width), min(height, y0 + panel_height)
    image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] * 0.25).astype(np.uint8)
    cv2.rectangle(image, (x0, y0), (x1 - 1, y1 - 1), GREY, 1, cv2.LINE_AA)
    for row, (key, action) in enumerate(HELP_LINES):
        baseline = y0 + (row + 1) * line + line // 4
        _text(image, key, (x0 + line, baseline), AMBER, scale)
        _text(image, action, (x0 + 2 * line + key_width, baseline), WHITE, scale)


def _text(
    image: np.ndarray, text: str, origin: tuple[int, int], colour: tuple[int, int, int], scale: float,
    centred: bool = False,
) -> None:
    """``text`` with its baseline at ``origin`` (or centred on it), over a dark shadow so it reads on any picture."""
    thickness = _thickness(scale)
    x, y = origin
    if centred:
        (text_width, text_height), _ = cv2.getTextSize(text, FONT, scale, thickness)
        x, y = x - text_width // 2, y + text_height // 2
    # the same thickness for the shadow (some OpenCV builds space glyphs by thickness), offset a little each way
    shadow = max(1, thickness)
    for dx, dy in ((shadow, shadow), (0, shadow), (shadow, 0), (-1, -1)):
        cv2.putText(image, text, (x + dx, y + dy), FONT, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    cv2.putText(image, text, (x, y), FONT, scale, colour, thickness, cv2.LINE_AA)


def _text_width(text: str, scale: float) -> int:
    return cv2.getTextSize(text, FONT, scale, _thickness(scale))[0][0]


def _scale(height: int) -> float:
    """Font scale for a composite ``height`` pixels high (0.7 at 480 pixels)."""
    return max(0.4, 0.7 * height / 480)


def _thickness(scale: float) -> int:
    return max(1, round(2 * scale))


def _same_window(a, b) -> bool:
    """glfw window handles are ctypes pointers, which compare by object identity: compare the addresses."""
    return ctypes.cast(a, ctypes.c_void_p).value == ctypes.cast(b, ctypes.c_void_p).value


def _one_line(description: bytes | str) -> str:
    text = description.decode(errors="replace") if isinstance(description, bytes) else str(description)
    return " ".join(text.split())

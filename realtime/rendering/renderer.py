"""ModernGL rendering of the avatar: an off-screen (EGL) or window context, anti-aliased, depth-tested, softly lit."""

import ctypes
import functools
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import moderngl
import numpy as np

from realtime.errors import UserError
from realtime.paths import shaders_dir

log = logging.getLogger(__name__)

GL_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1"
ANTIALIAS_MODES = ("fxaa", "msaa", "none")
LIGHTING_MODES = ("soft", "sh", "shape", "photo")
OFFSCREEN = "offscreen"  # create_context's default: the platform's own off-screen context, see offscreen_backend


def offscreen_backend() -> str | None:
    """The glcontext backend for an off-screen context here: EGL on Linux (headless, no X server needed), None
    elsewhere: glcontext's standalone context of the platform (WGL on Windows, CGL on macOS; they have no EGL)."""
    return "egl" if sys.platform.startswith("linux") else None


# The system OpenGL library, which exports glFinish (OpenGL 1.0) and runs it on the calling thread's current context
GL_LIBRARIES = {
    "linux": ("libGL.so.1", "libOpenGL.so.0"),
    "darwin": ("/System/Library/Frameworks/OpenGL.framework/OpenGL",),
    "win32": ("opengl32",),
}


@functools.cache
def gl_finish() -> Callable[[], None] | None:
    """glFinish called through ctypes, which lets go of Python's GIL while the GL works, unlike moderngl's calls: a
    software GL (llvmpipe) rasterises a frame for tens of milliseconds, during which the live loop's output thread must
    still run. None where no system GL library is found (then reading the pixels waits, holding the GIL)."""
    platform = "linux" if sys.platform.startswith("linux") else sys.platform
    for name in GL_LIBRARIES.get(platform, ()):
        try:
            finish = ctypes.CDLL(name).glFinish
        except (OSError, AttributeError):
            continue
        finish.argtypes, finish.restype = [], None
        return finish
    log.debug("no system OpenGL library for glFinish: reading pixels holds the GIL")
    return None


def create_context(backend: str | None = OFFSCREEN) -> moderngl.Context:
    """A standalone OpenGL 3.3+ context (the platform's off-screen one by default); a clear error saying what to do."""
    if backend == OFFSCREEN:
        backend = offscreen_backend()
    try:
        if backend is None:
            return moderngl.create_standalone_context(require=330)
        return moderngl.create_standalone_context(require=330, backend=backend)
    except Exception as err:  # glcontext raises plain Exceptions for a missing libEGL or driver
        reason = " ".join(str(err).split()) or type(err).__name__
        if sys.platform.startswith("linux"):
            fix = (f"the OpenGL/EGL system libraries are missing or unusable; on Debian/Ubuntu install them with "
                   f"`apt-get install {GL_PACKAGES}`")
        else:
            fix = "the graphics driver offers no OpenGL 3.3: update it (on Windows, from the GPU maker's site)"
        raise UserError(f"could not create an OpenGL 3.3 context ({backend or 'default'}: {reason}): {fix}") from err


def load_program(ctx: moderngl.Context, name: str) -> moderngl.Program:
    """Compile ``shaders/<name>.vert`` and ``shaders/<name>.frag``."""
    directory = shaders_dir()
    return ctx.program(
        vertex_shader=(directory / f"{name}.vert").read_text(),
        fragment_shader=(directory / f"{name}.frag").read_text(),
    )


def perspective(fov_y_degrees: float, aspect: float, near: float, far: float) -> np.ndarray:
    f = 1.0 / np.tan(np.radians(fov_y_degrees) / 2)
    return np.array(
        [
            [f / aspect, 0, 0, 0],
            [0, f, 0, 0],
            [0, 0, (far + near) / (near - far), 2 * far * near / (near - far)],
            [0, 0, -1, 0],
        ],
        np.float32,
    )


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(4, 4) view matrix of a camera at ``eye`` looking at ``target``, +y up."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right = right / np.linalg.norm(right)
    true_up = np.cross(right, forward)
    view = np.eye(4, dtype=np.float32)
    view[0, :3], view[1, :3], view[2, :3] = right, true_up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


@dataclass(frozen=True, eq=False)
class AvatarMesh:
    """What the renderer draws: the triangles of the visible parts and per render vertex UVs and materials.

    ``material`` (R, 4): rgb colour in [0, 1], alpha 1 where the albedo texture replaces the colour.
    ``render_vertex`` (R,) maps render vertices to model vertices (vertices are split along UV seams).
    """

    triangles: np.ndarray  # (T, 3) int32 render-vertex indices
    render_vertex: np.ndarray  # (R,) int32
    uv: np.ndarray  # (R, 2) float32 in the albedo texture
    material: np.ndarray  # (R, 4) float32
    photo: np.ndarray | None = None  # (R, 4) float32, photo look: frame uv at rest, photo weight, opacity


@dataclass(frozen=True)
class RenderOptions:
    size: tuple[int, int] = (640, 480)  # width, height
    antialias: str = "fxaa"  # "fxaa" (a post pass), "msaa" (4 samples; slow on a software rasteriser) or "none"
    background: tuple[float, float, float] = (0.08, 0.09, 0.11)  # RGB in [0, 1], when no background image
    fov_y_degrees: float = 20.0
    framing_height: float = 34.0  # centimetres of the head's plane that fill the frame height
    target: tuple[float, float, float] = (0.0, -1.5, 0.0)  # what the camera looks at, model space
    light_direction: tuple[float, float, float] = (0.25, 0.35, 1.0)
    ambient: float = 0.72
    specular: float = 0.04
    lighting: str = "soft"  # "soft" (photo avatars), "sh" (spherical-harmonics light), "shape" (DECA's grey preview),
    # "photo" (the photo look: unlit, the photo's own pixels, blended into what is drawn before)


class Underlay(Protocol):
    """Something drawn after the background and before the avatar, moved by the avatar's model matrix."""

    def draw(self, model_matrix: np.ndarray) -> None: ...
    def release(self) -> None: ...


class AvatarRenderer:
    """Draws an `AvatarMesh` with per-frame vertex positions into an off-screen multisampled framebuffer.

    The camera is a perspective one framing the head (`RenderOptions`), or ``camera``, a (4, 4) model -> clip
    matrix (the photo look's view through the photo's own camera, with ``photo`` its framed photo and ``underlay``
    its moving layer).
    """

    def __init__(
        self,
        ctx: moderngl.Context,
        mesh: AvatarMesh,
        albedo: np.ndarray,
        options: RenderOptions = RenderOptions(),
        background_image: np.ndarray | None = None,
        camera: np.ndarray | None = None,
        photo: np.ndarray | None = None,
        underlay: Underlay | None = None,
    ) -> None:
        self.ctx = ctx
        self.mesh = mesh
        self.options = options
        width, height = options.size
        self.program = load_program(ctx, "avatar")
        self._positions = ctx.buffer(reserve=len(mesh.render_vertex) * 12, dynamic=True)
        self._normals = ctx.buffer(reserve=len(mesh.render_vertex) * 12, dynamic=True)
        uv = ctx.buffer(np.ascontiguousarray(mesh.uv, np.float32).tobytes())
        material = ctx.buffer(np.ascontiguousarray(mesh.material, np.float32).tobytes())
        index = ctx.buffer(np.ascontiguousarray(mesh.triangles, np.int32).tobytes())
        attributes = [
            (self._positions, "3f", "in_position"),
            (self._normals, "3f", "in_normal"),
            (uv, "2f", "in_uv"),
            (material, "4f", "in_material"),
        ]
        self._buffers = [uv, material, index]
        if mesh.photo is not None:
            self._buffers.append(ctx.buffer(np.ascontiguousarray(mesh.photo, np.float32).tobytes()))
            attributes.append((self._buffers[-1], "4f", "in_photo"))
        self.vao = ctx.vertex_array(self.program, attributes, index_buffer=index, index_element_size=4)
        self.albedo = texture_from_image(ctx, albedo, mipmaps=True)
        self._photo = texture_from_image(ctx, photo, mipmaps=False) if photo is not None else None
        self._underlay = underlay
        self._background_vao = None
        if background_image is not None:
            self._background = texture_from_image(ctx, background_image, mipmaps=False)
            program = load_program(ctx, "background")
            quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], np.float32).tobytes())
            self._background_vao = ctx.vertex_array(program, [(quad, "2f", "in_position")])

        if options.antialias not in ANTIALIAS_MODES:
            raise ValueError(f"antialias must be one of {ANTIALIAS_MODES}, got {options.antialias!r}")
        samples = min(4, ctx.max_samples) if options.antialias == "msaa" else 0
        self._scene_color = ctx.texture((width, height), 4)
        self._scene_color.repeat_x = self._scene_color.repeat_y = False
        self._scene = ctx.framebuffer([self._scene_color], ctx.depth_renderbuffer((width, height)))
        self._output = ctx.framebuffer([ctx.renderbuffer((width, height), 4)])  # what is read back
        self._resources = [self._scene_color, self._scene, self._output]
        self._draw_target = self._scene
        if samples:
            self._draw_target = ctx.framebuffer(
                [ctx.renderbuffer((width, height), 4, samples=samples)],
                ctx.depth_renderbuffer((width, height), samples=samples),
            )
            self._resources.append(self._draw_target)
        self._fxaa = None
        if options.antialias == "fxaa":
            program = load_program(ctx, "fxaa")
            program["texel"].value = (1.0 / width, 1.0 / height)
            quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], np.float32).tobytes())
            self._fxaa = ctx.vertex_array(program, [(quad, "2f", "in_position")])
            self._resources += [self._fxaa, program, quad]

        target = np.array(options.target, np.float32)
        distance = options.framing_height / 2 / np.tan(np.radians(options.fov_y_degrees) / 2)
        self.eye_position = target + np.array([0, 0, distance], np.float32)
        view = look_at(self.eye_position, target)
        projection = perspective(options.fov_y_degrees, width / height, distance / 4, distance * 4)
        self.view_projection = projection @ view if camera is None else np.asarray(camera, np.float32)
        self.program["view_projection"].write(self.view_projection.T.astype(np.float32).tobytes())
        light = np.array(options.light_direction, np.float32)
        self.program["light_dir"].value = tuple(light / np.linalg.norm(light))
        self.program["eye_position"].value = tuple(self.eye_position)
        self.program["ambient"].value = options.ambient
        self.program["specular"].value = options.specular
        if options.lighting not in LIGHTING_MODES:
            raise ValueError(f"lighting must be one of {LIGHTING_MODES}, got {options.lighting!r}")
        self.program["lighting"].value = LIGHTING_MODES.index(options.lighting)
        self.program["albedo"].value = 0
        self.program["normal_map"].value = 1
        self.program["photo"].value = 3
        self.program["use_normal_map"].value = False
        self._normal_map: moderngl.Texture | None = None

    def set_sh_light(self, light: np.ndarray) -> None:
        """The (9, 3) spherical-harmonics light of ``lighting="sh"`` (DECA's light code, coefficient-major)."""
        self.program["sh"].write(np.ascontiguousarray(light, np.float32).tobytes())

    def set_normal_map(self, texture: moderngl.Texture | None) -> None:
        """A model-space normal map in the mesh's UV space (xyz normal, w coverage), or None for vertex normals."""
        self._normal_map = texture
        self.program["use_normal_map"].value = texture is not None

    def render(self, vertices: np.ndarray, normals: np.ndarray, model_matrix: np.ndarray | None = None) -> np.ndarray:
        """Model-space ``vertices`` and ``normals`` (N, 3), a (4, 4) model matrix -> (H, W, 3) uint8 RGB image."""
        index = self.mesh.render_vertex
        self._positions.write(np.ascontiguousarray(vertices[index], np.float32))
        self._normals.write(np.ascontiguousarray(normals[index], np.float32))
        model = np.eye(4, dtype=np.float32) if model_matrix is None else np.asarray(model_matrix, np.float32)
        self.program["model"].write(model.T.tobytes())

        self._draw_target.use()
        self.ctx.clear(*self.options.background, 1.0)
        if self._background_vao is not None:
            self.ctx.disable(moderngl.DEPTH_TEST)
            self._background.use(0)
            self._background_vao.render(moderngl.TRIANGLE_STRIP)
        if self._underlay is not None:
            self._underlay.draw(model)
        self.ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        self.albedo.use(0)
        if self._normal_map is not None:
            self._normal_map.use(1)
        if self._photo is not None:
            self._photo.use(3)
            self.ctx.enable(moderngl.BLEND)
        self.vao.render(moderngl.TRIANGLES)
        self.ctx.disable(moderngl.BLEND)
        finish = gl_finish()
        if finish is not None:
            finish()  # the GL draws without the GIL (copying a framebuffer waits for it, holding the GIL)
        if self._fxaa is not None:
            # the pass costs per pixel: run it only around the avatar, copy the rest
            self.ctx.copy_framebuffer(self._output, self._scene)
            self._output.use()
            self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
            self.ctx.scissor = self._screen_box(vertices, model)
            self._scene_color.use(0)
            self._fxaa.render(moderngl.TRIANGLE_STRIP)
            self.ctx.scissor = None
        else:
            self.ctx.copy_framebuffer(self._output, self._draw_target)  # resolves MSAA, or copies
        width, height = self.options.size
        if finish is not None:
            finish()  # and the anti-aliasing pass too: the read below only copies
        pixels = self._output.read(components=3, alignment=1)
        return np.frombuffer(pixels, np.uint8).reshape(height, width, 3)[::-1]

    def _screen_box(self, vertices: np.ndarray, model: np.ndarray) -> tuple[int, int, int, int]:
        """GL scissor box (x, y from the bottom, width, height) around the projected bounding box of ``vertices``."""
        low, high = vertices.min(axis=0), vertices.max(axis=0)
        corners = np.array(np.meshgrid(*zip(low, high, strict=True))).reshape(3, -1).T
        pixels = self.project(corners, model)
        width, height = self.options.size
        x0, y0 = np.clip(np.floor(pixels.min(axis=0)) - 2, 0, [width, height]).astype(int)
        x1, y1 = np.clip(np.ceil(pixels.max(axis=0)) + 2, 0, [width, height]).astype(int)
        return int(x0), int(height - y1), int(x1 - x0), int(y1 - y0)

    def project(self, points: np.ndarray, model_matrix: np.ndarray | None = None) -> np.ndarray:
        """Pixel coordinates (x right, y down) of model-space ``points`` (K, 3) in the rendered image."""
        model = np.eye(4, dtype=np.float32) if model_matrix is None else model_matrix
        homogeneous = np.c_[points, np.ones(len(points))] @ (self.view_projection @ model).T
        ndc = homogeneous[:, :2] / homogeneous[:, 3:]
        width, height = self.options.size
        return np.c_[(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height]

    def release(self) -> None:
        resources = [self.vao, self._positions, self._normals, *self._buffers, self.albedo, self.program,
                     *self._resources]
        if self._background_vao is not None:
            resources += [self._background_vao, self._background]
        if self._photo is not None:
            resources.append(self._photo)
        if self._underlay is not None:
            resources.append(self._underlay)
        for resource in resources:
            resource.release()


def texture_from_image(ctx: moderngl.Context, image: np.ndarray, mipmaps: bool) -> moderngl.Texture:
    """An RGB uint8 (H, W, 3) or float (H, W, C) image as a texture; row 0 is v = 0."""
    image = np.ascontiguousarray(image)
    height, width, components = image.shape
    dtype = "f1" if image.dtype == np.uint8 else "f4"
    texture = ctx.texture((width, height), components, image.astype(np.float32 if dtype == "f4" else np.uint8),
                          dtype=dtype, alignment=1)
    if mipmaps:
        texture.build_mipmaps()
        texture.filter = (moderngl.LINEAR_MIPMAP_NEAREST, moderngl.LINEAR)  # trilinear costs ~10% more in software
    else:
        texture.filter = (moderngl.LINEAR, moderngl.LINEAR)
    texture.repeat_x = texture.repeat_y = False
    return texture

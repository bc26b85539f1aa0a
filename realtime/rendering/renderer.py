"""ModernGL rendering of the avatar: an off-screen (EGL) or window context, anti-aliased, depth-tested, softly lit."""

import ctypes
import dataclasses
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import moderngl
import numpy as np

from realtime.errors import UserError
from realtime.paths import shaders_dir

log = logging.getLogger(__name__)

GL_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libgl1"
ANTIALIAS_MODES = ("fxaa", "msaa", "none")
LIGHTING_MODES = ("soft", "sh", "shape", "photo")
DISCARD_OPACITY = 0.004  # the photo look draws no fragment less opaque than this (under 1/255)
MODEL_SHOWN = 0.5  # the photo look anti-aliases pixels next to one showing more of the model's own colour than this
GL_SRC1_ALPHA, GL_ONE_MINUS_SRC1_ALPHA = 0x8589, 0x88FB  # dual-source blend factors (OpenGL 3.3 core)
OFFSCREEN = "offscreen"  # create_context's default: the platform's own off-screen context, see offscreen_backend


def offscreen_backend() -> str | None:
    """The glcontext backend for an off-screen context here: EGL on Linux (headless, no X server needed), None
    elsewhere: glcontext's standalone context of the platform (WGL on Windows, CGL on macOS; they have no EGL)."""
    return "egl" if sys.platform.startswith("linux") else None


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


def load_program(ctx: moderngl.Context, name: str, defines: dict[str, int] | None = None) -> moderngl.Program:
    """Compile ``shaders/<name>.vert`` and ``shaders/<name>.frag``, with ``#define NAME value`` for each of
    ``defines`` after the ``#version`` line."""
    directory = shaders_dir()
    macros = "".join(f"#define {key} {value}\n" for key, value in (defines or {}).items())

    def source(path: Path) -> str:
        version, _, rest = path.read_text().partition("\n")
        return f"{version}\n{macros}{rest}"

    return ctx.program(vertex_shader=source(directory / f"{name}.vert"),
                       fragment_shader=source(directory / f"{name}.frag"))


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
    # (S,) render vertices of the parts whose edges can be hard: anti-aliasing runs around these only (the photo
    # look's mouth and eyes; its skin fades into the photo without an edge); None: every vertex
    sharp: np.ndarray | None = None


def _drawn_only(mesh: AvatarMesh) -> AvatarMesh:
    """``mesh`` with only the render vertices its triangles use: the rest would be uploaded and vertex-shaded every
    frame for nothing (a coarser copy of a part uses a fraction of its vertices; hidden parts none)."""
    used, triangles = np.unique(mesh.triangles, return_inverse=True)
    new_index = np.full(len(mesh.render_vertex), -1, np.int64)
    new_index[used] = np.arange(len(used))
    sharp = None if mesh.sharp is None else new_index[mesh.sharp][new_index[mesh.sharp] >= 0]
    return dataclasses.replace(mesh, triangles=triangles.reshape(-1, 3).astype(np.int32),
                               render_vertex=mesh.render_vertex[used], uv=mesh.uv[used], material=mesh.material[used],
                               photo=None if mesh.photo is None else mesh.photo[used], sharp=sharp)


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
    """Something drawn after the background and before the avatar, moved by the avatar's model matrix; parts of it
    may stay still whatever the matrix (drawn once into the still frame: ``moving=False``). Each frame it is first
    given the avatar's posed vertices (`follow`), which parts of it may follow."""

    def follow(self, vertices: np.ndarray) -> None: ...
    def draw(self, model_matrix: np.ndarray, moving: bool) -> None: ...
    def moving_box(self, model_matrix: np.ndarray) -> tuple[float, float, float, float] | None:
        """Pixels (x0, y0, x1, y1, y down) covering the moving parts both at rest and moved by ``model_matrix``."""
    def release(self) -> None: ...


Box = tuple[int, int, int, int]  # pixels x0, y0, x1, y1 (exclusive), y down
FXAA_REACH = 10  # pixels around a pixel that the anti-aliasing pass may read (its span, 8, and the 3x3 corners)


class AvatarRenderer:
    """Draws an `AvatarMesh` with per-frame vertex positions into an off-screen multisampled framebuffer.

    The camera is a perspective one framing the head (`RenderOptions`), or ``camera``, a (4, 4) model -> clip
    matrix (the photo look's view through the photo's own camera, with ``photo`` its framed photo and ``underlay``
    its moving layer). ``draw_scale`` > 1 draws that many times fewer pixels across than the output has
    (`drawn_size`) and enlarges them to ``options.size`` (the photo look draws a small photo at its own resolution).
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
        draw_scale: float = 1.0,
    ) -> None:
        self.ctx = ctx
        self.mesh = mesh = _drawn_only(mesh)
        self.options = options
        self.size = drawn_size(options.size, draw_scale)  # what is drawn; options.size: the output
        self._enlargement = np.array([[draw_scale, 0.0, 0.0], [0.0, draw_scale, 0.0]])
        width, height = self.size
        if options.lighting not in LIGHTING_MODES:
            raise ValueError(f"lighting must be one of {LIGHTING_MODES}, got {options.lighting!r}")
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
        self._attributes, self._index = attributes, index
        self._uniforms: dict[str, object] = {}
        self.program: moderngl.Program | None = None
        self.vao: moderngl.VertexArray | None = None
        self._link(normal_map=False)
        self.albedo = texture_from_image(ctx, albedo, mipmaps=True)
        self._photo = texture_from_image(ctx, photo, mipmaps=False) if photo is not None else None
        self._underlay = underlay
        # the full-frame passes (background, anti-aliasing) draw this triangle strip
        quad = ctx.buffer(np.array([-1, -1, 1, -1, -1, 1, 1, 1], np.float32).tobytes())
        self._resources: list = [quad]

        if options.antialias not in ANTIALIAS_MODES:
            raise ValueError(f"antialias must be one of {ANTIALIAS_MODES}, got {options.antialias!r}")
        samples = min(4, ctx.max_samples) if options.antialias == "msaa" else 0
        self._scene_color = ctx.texture((width, height), 4)
        self._scene_color.repeat_x = self._scene_color.repeat_y = False
        self._scene = ctx.framebuffer([self._scene_color], ctx.depth_renderbuffer((width, height)))
        # what is read back; anti-aliasing marks its edges in the depth buffer
        edge_marks = ctx.depth_renderbuffer((width, height)) if options.antialias == "fxaa" else None
        self._output = ctx.framebuffer([ctx.renderbuffer((width, height), 4)], edge_marks)
        self._resources += [self._scene_color, self._scene, self._output]
        self._samples = samples
        self._draw_target = self._like_draw_target() if samples else self._scene
        if samples:
            self._resources.append(self._draw_target)
        self._fxaa: tuple[moderngl.VertexArray, moderngl.VertexArray] | None = None  # edges marked, then smoothed
        if options.antialias == "fxaa":
            model_edges_only = int(options.lighting == "photo")
            mark, smooth = (load_program(ctx, "fxaa", {"MARK_EDGES": flag, "MODEL_EDGES_ONLY": model_edges_only,
                                                       "MODEL_SHOWN": MODEL_SHOWN}) for flag in (1, 0))
            smooth["texel"].value = (1.0 / width, 1.0 / height)
            self._fxaa = tuple(ctx.vertex_array(program, [(quad, "2f", "in_position")]) for program in (mark, smooth))
            self._resources += [*self._fxaa, mark, smooth]

        target = np.array(options.target, np.float32)
        distance = options.framing_height / 2 / np.tan(np.radians(options.fov_y_degrees) / 2)
        self.eye_position = target + np.array([0, 0, distance], np.float32)
        view = look_at(self.eye_position, target)
        projection = perspective(options.fov_y_degrees, width / height, distance / 4, distance * 4)
        self.view_projection = projection @ view if camera is None else np.asarray(camera, np.float32)
        light = np.array(options.light_direction, np.float32)
        for name, value in (("view_projection", self.view_projection.T), ("model", np.eye(4)),
                            ("light_dir", light / np.linalg.norm(light)), ("eye_position", self.eye_position),
                            ("ambient", options.ambient), ("specular", options.specular), ("sh", np.zeros((9, 3))),
                            ("albedo", 0), ("normal_map", 1), ("photo", 3)):
            self._set_uniform(name, value)
        self._normal_map: moderngl.Texture | None = None
        self.drawn_vertices = np.unique(mesh.render_vertex)  # (D,) the model vertices drawn
        self._sharp = None if mesh.sharp is None else np.unique(mesh.render_vertex[mesh.sharp])
        # The still frame (background and the underlay's still parts), kept on the CPU, pasted around the box each
        # frame, and in a framebuffer shaped like the draw target: each frame starts as a copy of it (a memory copy
        # in the software rasteriser, 4 to 6 times cheaper than drawing the still frame's texture over the box).
        self._still_target = self._like_draw_target()
        self._resources.append(self._still_target)
        self._still = self._render_still(background_image, quad)

    def _link(self, normal_map: bool) -> None:
        """(Re)build the avatar program and its vertex array, with the uniforms set so far.

        Look and normal map are constants, not uniforms: llvmpipe runs every branch of a uniform `if` under a mask,
        so one look would pay for all four (the mesh pass 30% slower) and every look for the normal map's fetch.
        """
        program = load_program(self.ctx, "avatar", {"LIGHTING": LIGHTING_MODES.index(self.options.lighting),
                                                    "DISCARD_OPACITY": DISCARD_OPACITY, "NORMAL_MAP": int(normal_map)})
        attributes = [attribute for attribute in self._attributes if program.get(attribute[2], None) is not None]
        vao = self.ctx.vertex_array(program, attributes, index_buffer=self._index, index_element_size=4)
        if self.program is not None:
            self.vao.release()
            self.program.release()
        self.program, self.vao = program, vao
        for name, value in self._uniforms.items():
            self._set_uniform(name, value)

    def _set_uniform(self, name: str, value: object) -> None:
        """Set a uniform of the avatar program; a look's program lacks those its look does not use."""
        self._uniforms[name] = value
        uniform = self.program.get(name, None)
        if uniform is None:
            return
        if isinstance(value, np.ndarray):
            uniform.write(np.ascontiguousarray(value, np.float32).tobytes())
        else:
            uniform.value = value

    def set_sh_light(self, light: np.ndarray) -> None:
        """The (9, 3) spherical-harmonics light of ``lighting="sh"`` (DECA's light code, coefficient-major)."""
        self._set_uniform("sh", light)

    def set_normal_map(self, texture: moderngl.Texture | None) -> None:
        """A model-space normal map in the mesh's UV space (xyz normal, w coverage), or None for vertex normals."""
        if (texture is None) != (self._normal_map is None):
            self._link(normal_map=texture is not None)
        self._normal_map = texture

    def render(self, vertices: np.ndarray, normals: np.ndarray, model_matrix: np.ndarray | None = None) -> np.ndarray:
        """Model-space ``vertices`` and ``normals`` (N, 3), a (4, 4) model matrix -> (H, W, 3) uint8 RGB image of the
        output's size.

        Only the region that can differ from the still frame (the background and the underlay's still parts,
        composed once) is drawn, anti-aliased and read back: the avatar's box and the underlay's moving parts.
        """
        frame = self._render_drawn(vertices, normals, model_matrix)
        if self.size == tuple(self.options.size):
            return frame
        # output pixel X shows drawn pixel X / scale, as `realtime.compositing.framing` maps the photo to the frame
        return cv2.warpAffine(frame, self._enlargement, tuple(self.options.size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def _render_drawn(self, vertices: np.ndarray, normals: np.ndarray, model_matrix: np.ndarray | None) -> np.ndarray:
        """`render` at the drawn size."""
        index = self.mesh.render_vertex
        self._positions.write(np.take(vertices, index, axis=0).astype(np.float32, copy=False))  # take: 4x [index]
        self._normals.write(np.take(normals, index, axis=0).astype(np.float32, copy=False))
        model = np.eye(4, dtype=np.float32) if model_matrix is None else np.asarray(model_matrix, np.float32)
        self._set_uniform("model", model.T)

        avatar = self._pixel_box(np.take(vertices, self.drawn_vertices, axis=0), model)
        sharp = avatar if self._sharp is None else (self._pixel_box(np.take(vertices, self._sharp, axis=0), model)
                                                    if len(self._sharp) else None)
        changed = avatar
        if self._underlay is not None:
            self._underlay.follow(vertices)
            changed = union_box(changed, self._underlay.moving_box(model))
        if self._fxaa is not None:
            changed = union_box(changed, grow_box(sharp, FXAA_REACH))  # the pass reads around what it smooths
        changed = clip_box(np.array(changed).reshape(2, 2), self.size, margin=0) if changed else None
        frame = self._still.copy()
        if changed is None:
            return frame
        self._draw_scene(model, scissor=self._gl_box(changed))
        _finish_without_gil()
        if self._fxaa is not None and sharp is not None:  # smooth around the hard edges, copy the rest as drawn
            self._antialias(sharp)
            _finish_without_gil()
            self._paste(frame, self._output, sharp)
            for box in subtract_box(changed, sharp):
                self._paste(frame, self._scene, box)
            return frame
        source = self._scene
        if self._draw_target is not self._scene:
            self.ctx.copy_framebuffer(self._output, self._draw_target)  # resolves MSAA
            source = self._output
        self._paste(frame, source, changed)
        return frame

    def _like_draw_target(self) -> moderngl.Framebuffer:
        """A framebuffer of the draw target's size, samples and formats: one can be copied into the other."""
        size = self.size
        if not self._samples:
            return self.ctx.framebuffer([self.ctx.texture(size, 4)], self.ctx.depth_renderbuffer(size))
        return self.ctx.framebuffer([self.ctx.renderbuffer(size, 4, samples=self._samples)],
                                    self.ctx.depth_renderbuffer(size, samples=self._samples))

    def _draw_scene(self, model: np.ndarray, scissor: tuple[int, int, int, int] | None) -> None:
        """The still frame, then within ``scissor`` (GL box) the underlay's moving parts and the mesh, into the draw
        target."""
        self.ctx.scissor = None  # a copy obeys the scissor box, and a scissored one is drawn (10x slower in llvmpipe)
        self.ctx.copy_framebuffer(self._draw_target, self._still_target)
        self._draw_target.use()
        self.ctx.scissor = scissor
        if self._underlay is not None:
            self._draw_underlay(self._draw_target, model, moving=True)
        self.ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        self.albedo.use(0)
        if self._normal_map is not None:
            self._normal_map.use(1)
        if self._photo is not None:  # blended by the shader's second output (see avatar.frag)
            self._photo.use(3)
            self.ctx.enable(moderngl.BLEND)
            self.ctx.blend_func = (GL_SRC1_ALPHA, GL_ONE_MINUS_SRC1_ALPHA, GL_SRC1_ALPHA, GL_ONE_MINUS_SRC1_ALPHA)
        self.vao.render(moderngl.TRIANGLES)
        self.ctx.blend_func = moderngl.DEFAULT_BLENDING
        self.ctx.disable(moderngl.BLEND)
        self.ctx.scissor = None

    def _draw_underlay(self, target: moderngl.Framebuffer, model: np.ndarray, moving: bool) -> None:
        """The underlay's moving or still parts into ``target``: the photo's own colours, so alpha (the model's
        colours shown) stays 0."""
        target.color_mask = (True, True, True, False)
        target.use()  # moderngl applies a framebuffer's colour mask when it is bound
        self._underlay.draw(model, moving=moving)
        target.color_mask = (True, True, True, True)
        target.use()

    def _antialias(self, box: Box) -> None:
        """FXAA from the scene into the output within ``box``: every pixel copied and its edges marked, then only the
        marked pixels smoothed (their depth test rejects the others before they are shaded)."""
        mark, smooth = self._fxaa
        self._output.use()
        self.ctx.disable(moderngl.CULL_FACE)
        self.ctx.enable(moderngl.DEPTH_TEST)
        self.ctx.scissor = self._gl_box(box)
        self._scene_color.use(0)
        self.ctx.depth_func = "1"  # always: every pixel is copied and marked
        mark.render(moderngl.TRIANGLE_STRIP)
        self.ctx.depth_func = "<"  # the quad lies at depth 0.5: in front of the edges' marks (1), behind the rest (0)
        smooth.render(moderngl.TRIANGLE_STRIP)
        self.ctx.disable(moderngl.DEPTH_TEST)
        self.ctx.scissor = None

    def _render_still(self, background_image: np.ndarray | None, quad: moderngl.Buffer) -> np.ndarray:
        """Draw the still frame into the still target: ``background_image`` (any size, else the background colour)
        and the underlay's still parts. Returns it, (H, W, 3) uint8: what every frame shows outside the box."""
        width, height = self.size
        target = self._still_target
        target.use()
        self.ctx.clear(*self.options.background, 1.0)
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
        if background_image is not None:
            texture = texture_from_image(self.ctx, _resized(background_image, self.size), mipmaps=False)
            program = load_program(self.ctx, "background")
            vao = self.ctx.vertex_array(program, [(quad, "2f", "in_position")])
            texture.use(0)
            vao.render(moderngl.TRIANGLE_STRIP)
            for resource in (vao, program, texture):
                resource.release()
        if self._underlay is not None:
            self._draw_underlay(target, np.eye(4, dtype=np.float32), moving=False)
        source = target
        if self._samples:
            self.ctx.copy_framebuffer(self._output, target)  # resolves MSAA
            source = self._output
        still = np.empty((height, width, 3), np.uint8)
        self._paste(still, source, (0, 0, width, height))
        return still

    def _paste(self, frame: np.ndarray, source: moderngl.Framebuffer, box: tuple[int, int, int, int]) -> None:
        """Read ``box`` (pixels x0, y0, x1, y1, y down) of ``source`` into the same place of ``frame``."""
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            return
        height = self.size[1]
        # RGBA, the framebuffer's own format, is a plain copy for the software rasteriser, which converts to RGB pixel
        # by pixel (3x slower); OpenCV flips the rows and drops alpha into the frame in SIMD, without the GIL
        rgba = np.empty((y1 - y0, x1 - x0, 4), np.uint8)
        source.read_into(rgba, viewport=(x0, height - y1, x1 - x0, y1 - y0), components=4, alignment=1)
        cv2.cvtColor(cv2.flip(rgba, 0), cv2.COLOR_RGBA2RGB, dst=frame[y0:y1, x0:x1])

    def _pixel_box(self, vertices: np.ndarray, model: np.ndarray) -> tuple[int, int, int, int] | None:
        """Pixels (x0, y0, x1, y1, y down, within the frame) around the projected bounding box of ``vertices``."""
        columns = np.ascontiguousarray(vertices.T)  # numpy reduces (N, 3) along axis 0 forty times slower
        low, high = columns.min(axis=1), columns.max(axis=1)
        corners = np.array(np.meshgrid(*zip(low, high, strict=True))).reshape(3, -1).T
        return clip_box(self._project(corners, model), self.size, margin=2)

    def _gl_box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """GL scissor box (x, y from the bottom, width, height) of a pixel box."""
        x0, y0, x1, y1 = box
        return x0, self.size[1] - y1, x1 - x0, y1 - y0

    def project(self, points: np.ndarray, model_matrix: np.ndarray | None = None) -> np.ndarray:
        """Pixel coordinates (x right, y down) of model-space ``points`` (K, 3) in the output image."""
        scale = self._enlargement[0, 0]  # pixel centres (i + 0.5) map as the enlargement maps pixels i
        return (self._project(points, model_matrix) - 0.5) * scale + 0.5

    def _project(self, points: np.ndarray, model_matrix: np.ndarray | None = None) -> np.ndarray:
        """`project` into the drawn image."""
        model = np.eye(4, dtype=np.float32) if model_matrix is None else model_matrix
        homogeneous = np.c_[points, np.ones(len(points))] @ (self.view_projection @ model).T
        ndc = homogeneous[:, :2] / homogeneous[:, 3:]
        width, height = self.size
        return np.c_[(ndc[:, 0] + 1) / 2 * width, (1 - ndc[:, 1]) / 2 * height]

    def release(self) -> None:
        resources = [self.vao, self._positions, self._normals, *self._buffers, self.albedo, self.program,
                     *self._resources]
        if self._photo is not None:
            resources.append(self._photo)
        if self._underlay is not None:
            resources.append(self._underlay)
        for resource in resources:
            resource.release()


def native_gl_finish() -> Callable[[], None] | None:
    """The platform OpenGL library's glFinish through ctypes, or None where it cannot be loaded.

    moderngl holds the GIL in every call, and glReadPixels on a software rasteriser waits there for the frame to be
    rasterised: the tracker's and the posing thread's Python would stop for as long (other Python threads ran at 20-34%
    of their rate during draws). ctypes lets go of the GIL while glFinish waits; the read that follows only copies.
    """
    names = {"win32": ("opengl32",), "darwin": ("/System/Library/Frameworks/OpenGL.framework/OpenGL",)}.get(
        sys.platform, ("libGL.so.1", "libOpenGL.so.0"))
    for name in names:
        try:
            finish = ctypes.CDLL(name).glFinish
        except (OSError, AttributeError):
            continue
        finish.argtypes, finish.restype = [], None
        return finish
    log.debug("no OpenGL library for glFinish through ctypes: reads wait holding the GIL")
    return None


_NATIVE_GL_FINISH = native_gl_finish()


def _finish_without_gil() -> None:
    if _NATIVE_GL_FINISH is not None:
        _NATIVE_GL_FINISH()


def drawn_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The size drawn for an output of ``size`` (width, height) enlarged ``scale`` times from it: enough to cover it."""
    return tuple(int(np.ceil(length / scale - 1e-6)) for length in size)


def clip_box(points: np.ndarray, size: tuple[int, int], margin: int) -> Box | None:
    """The pixel box around ``points`` (K, 2), grown by ``margin`` and clipped to the frame; None if outside it."""
    width, height = size
    x0, y0 = np.clip(np.floor(points.min(axis=0)) - margin, 0, [width, height]).astype(int)
    x1, y1 = np.clip(np.ceil(points.max(axis=0)) + margin, 0, [width, height]).astype(int)
    return (int(x0), int(y0), int(x1), int(y1)) if x1 > x0 and y1 > y0 else None


def union_box(a: Box | None, b: Box | None) -> Box | None:
    if a is None or b is None:
        return a or b
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def grow_box(box: Box | None, margin: int) -> Box | None:
    return None if box is None else (box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)


def subtract_box(outer: Box, inner: Box) -> list[Box]:
    """Up to four boxes covering ``outer`` outside ``inner`` (which lies within it)."""
    x0, y0, x1, y1 = outer
    a0, b0, a1, b1 = inner
    boxes = [(x0, y0, x1, b0), (x0, b1, x1, y1), (x0, b0, a0, b1), (a1, b0, x1, b1)]
    return [box for box in boxes if box[2] > box[0] and box[3] > box[1]]


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (H, W, C) scaled to ``size`` (width, height), by area when it shrinks."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    shrinks = image.shape[1] > size[0] or image.shape[0] > size[1]
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrinks else cv2.INTER_LINEAR)


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

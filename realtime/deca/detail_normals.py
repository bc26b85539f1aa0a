"""DECA's detail normal map on the GPU: world2uv of the coarse mesh, then displacement2normal in one full-screen pass.

DECA (deca.py ``displacement2normal``) turns the 256x256 D_detail displacement into a UV-space normal map:

    uv_V  = world2uv(coarse vertices);  uv_N = world2uv(coarse vertex normals)
    uv_Vd = uv_V + (uv_z * uv_face_eye_mask) * uv_N + fixed_uv_dis * uv_N
    dense = area-weighted vertex normals of the 256x256 grid mesh of uv_Vd (util.generate_triangles, margins 2 and 5)
    uv_detail_normals = dense * mask + uv_N * (1 - mask)

Here that is two draws: `UvRasterizer` rasterises positions and normals into two RGBA32F maps at once, and
`DetailNormalPass` evaluates the rest per texel (``shaders/detail_normals.frag``).

Row conventions (DECA images have row 0 at v ~ 1, GL textures row 0 at v ~ 0):

* DECA images given to this module (displacement, mask, fixed displacement) are (size, size) arrays in DECA's rows,
  uploaded as they are; the shader addresses them in DECA rows.
* Textures this module renders (position, normal and detail-normal maps) are in GL's convention: texel row y holds
  v = (y + 0.5) / size, column x holds u = (x + 0.5) / size, so a shader samples them with the mesh's own UVs,
  ``texture(detail_normals, uv)``.
* ``read`` methods return numpy arrays in DECA's rows (row 0 = v ~ 1), directly comparable with DECA's tensors.
"""

import logging

import moderngl
import numpy as np

from realtime.rendering.renderer import load_program

log = logging.getLogger(__name__)

UV_SIZE = 256
GRID_MARGIN = (2, 5)  # util.generate_triangles(h, w, margin_x=2, margin_y=5)


def read_texture(texture: moderngl.Texture) -> np.ndarray:
    """A float texture as a (size, size, components) float32 array in DECA's rows (row 0 = v ~ 1)."""
    width, height = texture.size
    data = np.frombuffer(texture.read(), np.float32).reshape(height, width, texture.components)
    return data[::-1].copy()


def _float_texture(
    ctx: moderngl.Context, size: int, components: int, data: np.ndarray | None = None
) -> moderngl.Texture:
    """A (size, size) float32 texture, unfiltered: the passes read it with texelFetch."""
    texture = ctx.texture((size, size), components, None if data is None else data.tobytes(), dtype="f4")
    texture.filter = (moderngl.NEAREST, moderngl.NEAREST)
    texture.repeat_x = texture.repeat_y = False
    return texture


def _check_uv_image(name: str, image: np.ndarray, size: int) -> np.ndarray:
    image = np.ascontiguousarray(image, np.float32)
    if image.shape != (size, size):
        raise ValueError(f"{name} must be ({size}, {size}), got {image.shape}")
    return image


class UvRasterizer:
    """DECA's ``world2uv`` for two per-vertex attributes at once: the mesh rasterised in its UV layout.

    Each covered texel gets the attributes interpolated (linearly, in UV) at its centre; uncovered texels are 0,
    alpha is 1 on covered texels. The maps are RGBA32F textures owned by the rasterizer and rewritten by each call.
    """

    def __init__(self, ctx: moderngl.Context, uv: np.ndarray, triangles: np.ndarray, size: int = UV_SIZE) -> None:
        """``uv`` (R, 2) per render vertex in [0, 1] (v up), ``triangles`` (T, 3) render-vertex indices."""
        uv = np.ascontiguousarray(uv, np.float32)
        triangles = np.ascontiguousarray(triangles, np.int32)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise ValueError(f"uv must be (R, 2), got {uv.shape}")
        if triangles.ndim != 2 or triangles.shape[1] != 3 or triangles.min() < 0 or triangles.max() >= len(uv):
            raise ValueError(f"triangles must be (T, 3) indices into the {len(uv)} uv rows")
        self.ctx = ctx
        self.size = size
        self.n_vertices = len(uv)
        self.program = load_program(ctx, "uv_attributes")
        self._uv = ctx.buffer(uv.tobytes())
        self._first = ctx.buffer(reserve=self.n_vertices * 12, dynamic=True)
        self._second = ctx.buffer(reserve=self.n_vertices * 12, dynamic=True)
        self._index = ctx.buffer(triangles.tobytes())
        self.vao = ctx.vertex_array(
            self.program,
            [(self._uv, "2f", "in_uv"), (self._first, "3f", "in_first"), (self._second, "3f", "in_second")],
            index_buffer=self._index,
            index_element_size=4,
        )
        self.maps = (_float_texture(ctx, size, 4), _float_texture(ctx, size, 4))
        self.framebuffer = ctx.framebuffer(list(self.maps))

    def rasterize(self, first: np.ndarray, second: np.ndarray) -> tuple[moderngl.Texture, moderngl.Texture]:
        """(R, 3) attributes per render vertex -> their two UV maps (e.g. world2uv(vertices), world2uv(normals))."""
        for name, attribute in (("first", first), ("second", second)):
            if np.shape(attribute) != (self.n_vertices, 3):
                raise ValueError(f"{name} attribute must be ({self.n_vertices}, 3), got {np.shape(attribute)}")
        self._first.write(np.ascontiguousarray(first, np.float32))
        self._second.write(np.ascontiguousarray(second, np.float32))
        self.framebuffer.use()
        self.framebuffer.clear(0.0, 0.0, 0.0, 0.0)
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE | moderngl.BLEND)
        self.vao.render(moderngl.TRIANGLES)
        return self.maps

    @staticmethod
    def read(texture: moderngl.Texture) -> np.ndarray:
        """(size, size, 4) float32 in DECA's rows: xyz the attribute, w the coverage."""
        return read_texture(texture)

    def release(self) -> None:
        for resource in (self.framebuffer, *self.maps, self.vao, self._uv, self._first, self._second, self._index,
                         self.program):
            resource.release()


class DetailNormalPass:
    """Per frame: coarse vertices, normals and the D_detail displacement -> DECA's ``uv_detail_normals`` texture.

    The output is an RGBA32F (size, size) texture in GL rows (sample it with the mesh UVs), linearly filtered:
    xyz is DECA's detail normal in the space of the given vertices (unit where the mask is 1; elsewhere the
    mask-blended, interpolated coarse normal, which is not exactly unit: normalise after sampling), alpha the coverage.
    """

    def __init__(
        self,
        ctx: moderngl.Context,
        uv: np.ndarray,
        triangles: np.ndarray,
        face_eye_mask: np.ndarray,
        fixed_displacement: np.ndarray,
        size: int = UV_SIZE,
    ) -> None:
        """``face_eye_mask`` and ``fixed_displacement``: (size, size) float images in DECA's rows (row 0 = v ~ 1)."""
        self.ctx = ctx
        self.size = size
        self.rasterizer = UvRasterizer(ctx, uv, triangles, size)
        mask = _check_uv_image("face_eye_mask", face_eye_mask, size)
        fixed = _check_uv_image("fixed_displacement", fixed_displacement, size)
        self._mask_fixed = _float_texture(ctx, size, 2, np.stack([mask, fixed], axis=-1))
        self._displacement = _float_texture(ctx, size, 1)
        self.texture = _float_texture(ctx, size, 4)
        self.texture.filter = (moderngl.LINEAR, moderngl.LINEAR)  # for the avatar shader; this pass uses texelFetch
        self.framebuffer = ctx.framebuffer([self.texture])

        self.program = load_program(ctx, "detail_normals")
        self.program["size"].value = size
        self.program["margin"].value = GRID_MARGIN
        for unit, name in enumerate(("positions", "normals", "displacement", "mask_fixed")):
            self.program[name].value = unit
        self.vao = ctx.vertex_array(self.program, [])

    def run(self, vertices: np.ndarray, normals: np.ndarray, displacement: np.ndarray) -> moderngl.Texture:
        """(R, 3) coarse vertices and vertex normals per render vertex, (size, size) displacement in DECA's rows."""
        displacement = _check_uv_image("displacement", displacement, self.size)
        positions_map, normals_map = self.rasterizer.rasterize(vertices, normals)
        self._displacement.write(displacement)

        self.framebuffer.use()
        self.ctx.disable(moderngl.DEPTH_TEST | moderngl.CULL_FACE | moderngl.BLEND)
        for unit, texture in enumerate((positions_map, normals_map, self._displacement, self._mask_fixed)):
            texture.use(unit)
        self.vao.render(moderngl.TRIANGLE_STRIP, vertices=4)
        return self.texture

    def read(self) -> np.ndarray:
        """The last result's xyz as (size, size, 3) float32 in DECA's rows: DECA's ``uv_detail_normals``."""
        return read_texture(self.texture)[..., :3]

    def release(self) -> None:
        for resource in (self.vao, self.program, self.framebuffer, self.texture, self._displacement,
                         self._mask_fixed):
            resource.release()
        self.rasterizer.release()

"""The GPU detail-normal pass against an independent numpy implementation of DECA's displacement2normal.

The reference follows DECA (deca.py displacement2normal, util.generate_triangles, util.vertex_normals) on numpy
arrays in DECA's layout: (256, 256) UV images whose row 0 is v ~ 1. world2uv is a brute-force CPU rasteriser whose
pixel-centre convention is the one DECA's rasteriser and GL share: texel (row i, column j) is sampled at
u = (j + 0.5) / 256, v = 1 - (i + 0.5) / 256 (GL draws it as window pixel (j, 255 - i)).

The test mesh has two UV islands: a bumpy ellipsoid patch reaching into the top-left corner of the UV square (inside
generate_triangles' margins) and a flat rectangle, with triangles a few texels large.
"""

import logging

import numpy as np
import pytest
from scipy import ndimage

from realtime.deca.detail_normals import DetailNormalPass, UvRasterizer

log = logging.getLogger(__name__)

SIZE = 256
FLAT_SCALE = 0.25  # world units per UV unit on the flat island: x = FLAT_SCALE * u, y = FLAT_SCALE * v
FLAT_Z = 0.05
FLAT_U = (0.76, 0.98)
FLAT_V = (0.04, 0.34)


# ---------------------------------------------------------------- the reference: DECA's displacement2normal in numpy


def generate_triangles(h: int, w: int, margin_x: int = 2, margin_y: int = 5) -> np.ndarray:
    """DECA's dense grid faces: quads (x, y) inside the margins, split along (x+1, y)-(x, y+1), order [0, 2, 1]."""
    x, y = np.meshgrid(np.arange(margin_x, w - 1 - margin_x), np.arange(margin_y, h - 1 - margin_y), indexing="ij")
    x, y = x.ravel(), y.ravel()
    triangle0 = np.stack([y * w + x, y * w + x + 1, (y + 1) * w + x], axis=1)
    triangle1 = np.stack([y * w + x + 1, (y + 1) * w + x + 1, (y + 1) * w + x], axis=1)
    triangles = np.stack([triangle0, triangle1], axis=1).reshape(-1, 3)
    return triangles[:, [0, 2, 1]]


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """util.vertex_normals: at each corner the cross product of its two edges, summed, then F.normalize(eps=1e-6)."""
    v0, v1, v2 = (vertices[faces[:, k]] for k in range(3))
    normals = np.zeros_like(vertices)
    np.add.at(normals, faces[:, 1], np.cross(v2 - v1, v0 - v1))
    np.add.at(normals, faces[:, 2], np.cross(v0 - v2, v1 - v2))
    np.add.at(normals, faces[:, 0], np.cross(v1 - v0, v2 - v0))
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-6)


def uv_raster_table(uv: np.ndarray, triangles: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per texel (DECA rows) the covering triangle (-1: none) and the barycentrics of the texel centre."""
    face = np.full((size, size), -1, np.int64)
    bary = np.zeros((size, size, 3))
    points = np.c_[uv[:, 0] * size - 0.5, (1 - uv[:, 1]) * size - 0.5]  # (column, row) where centres are integers
    for index, triangle in enumerate(triangles):
        a, b, c = points[triangle]
        low = np.maximum(np.ceil(np.minimum(np.minimum(a, b), c)), 0).astype(int)
        high = np.minimum(np.floor(np.maximum(np.maximum(a, b), c)), size - 1).astype(int)
        cols, rows = np.meshgrid(np.arange(low[0], high[0] + 1), np.arange(low[1], high[1] + 1))
        p = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)

        def edge(p0: np.ndarray, p1: np.ndarray, q: np.ndarray) -> np.ndarray:
            return (p1[0] - p0[0]) * (q[:, 1] - p0[1]) - (p1[1] - p0[1]) * (q[:, 0] - p0[0])

        area = edge(a, b, c[None])[0]
        weights = np.stack([edge(b, c, p), edge(c, a, p), edge(a, b, p)], axis=1) / area
        inside = np.all(weights >= 0, axis=1)
        r, k = p[inside, 1].astype(int), p[inside, 0].astype(int)
        face[r, k] = index
        bary[r, k] = weights[inside]
    return face, bary


def world2uv(table: tuple[np.ndarray, np.ndarray], triangles: np.ndarray, attribute: np.ndarray) -> np.ndarray:
    face, bary = table
    corners = attribute[triangles[np.maximum(face, 0)]]  # (S, S, 3 corners, 3)
    values = np.einsum("ijk,ijkc->ijc", bary, corners)
    values[face < 0] = 0
    return values


def displacement2normal(table, triangles, vertices, normals, displacement, mask, fixed) -> dict[str, np.ndarray]:
    """DECA's displacement2normal (2023, with the mask blend) in float64, DECA rows."""
    uv_vertices = world2uv(table, triangles, vertices)
    uv_normals = world2uv(table, triangles, normals)
    uv_z = displacement * mask
    detail_vertices = uv_vertices + uv_z[..., None] * uv_normals + fixed[..., None] * uv_normals
    dense = vertex_normals(detail_vertices.reshape(-1, 3), generate_triangles(SIZE, SIZE)).reshape(SIZE, SIZE, 3)
    detail = dense * mask[..., None] + uv_normals * (1 - mask[..., None])
    return {"positions": uv_vertices, "normals": uv_normals, "detail": detail, "covered": table[0] >= 0}


# ---------------------------------------------------------------- the test scene


def grid_triangles(n: int, offset: int) -> np.ndarray:
    """Two triangles per quad of an (n+1)^2 vertex grid, counter-clockwise in (u, v) and seen from +z."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    v00 = (j * (n + 1) + i).ravel() + offset
    v10, v01 = v00 + 1, v00 + n + 1
    v11 = v01 + 1
    return np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])


def make_mesh() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vertices, uv, triangles) of the two islands."""
    n = 48
    t, s = np.meshgrid(np.linspace(0, 1, n + 1), np.linspace(0, 1, n + 1), indexing="ij")  # vertex j*(n+1)+i
    theta, phi = (s - 0.5) * 2.0, (t - 0.5) * 1.6
    bump = 0.004 * np.sin(3 * theta) * np.sin(2 * phi)
    ellipsoid = np.stack([0.09 * np.sin(theta) * np.cos(phi), 0.12 * np.sin(phi),
                          0.1 * np.cos(theta) * np.cos(phi) + bump], -1).reshape(-1, 3)
    ellipsoid_uv = np.stack([0.004 + 0.69 * (s + 0.05 * np.sin(np.pi * s) * np.sin(np.pi * t)),
                             0.25 + 0.745 * (t + 0.04 * np.sin(np.pi * t) * np.sin(2 * np.pi * s))], -1).reshape(-1, 2)

    m = 12
    t, s = np.meshgrid(np.linspace(0, 1, m + 1), np.linspace(0, 1, m + 1), indexing="ij")
    flat_uv = np.stack([FLAT_U[0] + (FLAT_U[1] - FLAT_U[0]) * s, FLAT_V[0] + (FLAT_V[1] - FLAT_V[0]) * t], -1)
    flat_uv = flat_uv.reshape(-1, 2)
    flat = np.c_[FLAT_SCALE * flat_uv, np.full(len(flat_uv), FLAT_Z)]

    vertices = np.concatenate([ellipsoid, flat])
    uv = np.concatenate([ellipsoid_uv, flat_uv])
    triangles = np.concatenate([grid_triangles(n, 0), grid_triangles(m, len(ellipsoid))])
    return vertices, uv, triangles


def texel_uv() -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of every texel centre, DECA rows."""
    centres = (np.arange(SIZE) + 0.5) / SIZE
    u, v = np.meshgrid(centres, 1 - centres)
    return u, v


def make_mask() -> np.ndarray:
    """A soft ellipse over the ellipsoid island, bands along the top and left edges (outside generate_triangles'
    margins) and the flat island; DECA rows."""
    u, v = texel_uv()
    ellipse = np.clip((0.3 - np.hypot((u - 0.35) / 1.0, (v - 0.62) / 1.2)) / 0.06, 0, 1)
    edges = (u < 0.03) | (v > 0.97)
    flat = (u > FLAT_U[0] - 0.01) & (u < FLAT_U[1] + 0.01) & (v > FLAT_V[0] - 0.01) & (v < FLAT_V[1] + 0.01)
    return np.maximum(ellipse, edges | flat).astype(np.float32)


def smooth_field(seed: int) -> np.ndarray:
    """A sum of random sines in [-1, 1], periods of ~20 to 130 texels; DECA rows."""
    rng = np.random.default_rng(seed)
    u, v = texel_uv()
    field = np.zeros_like(u)
    for _ in range(8):
        frequency = rng.uniform(2, 12, 2) * rng.choice([-1, 1], 2)
        field += rng.uniform(0.3, 1) * np.sin(2 * np.pi * (frequency[0] * u + frequency[1] * v) + rng.uniform(0, 6.3))
    return field / np.abs(field).max()


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    vertices, uv, triangles = make_mesh()
    normals = vertex_normals(vertices, triangles)
    fixed = -0.0013 + (smooth_field(1) + 1) / 2 * (0.0016 + 0.0013)  # DECA's fixed_displacement_256 range
    return {
        "vertices": vertices, "normals": normals, "uv": uv, "triangles": triangles,
        "mask": make_mask(), "fixed": fixed.astype(np.float32),
        "displacement": (0.01 * np.tanh(1.5 * smooth_field(2))).astype(np.float32),  # D_detail: tanh * 0.01
        "table": uv_raster_table(uv, triangles, SIZE),
    }


@pytest.fixture(scope="module")
def detail_pass(gl_context, scene):
    gpu = DetailNormalPass(gl_context, scene["uv"], scene["triangles"], scene["mask"], scene["fixed"])
    yield gpu
    gpu.release()


def interior(*coverages: np.ndarray) -> np.ndarray:
    """Texels whose 3x3 neighbourhood (inside the image) is covered in every map: rasterisation rules can differ
    only on island edges."""
    covered = np.logical_and.reduce(coverages)
    return ndimage.binary_erosion(covered, np.ones((3, 3), bool), border_value=1)


def angles_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angles between vectors, in float64 and by atan2 (arccos loses small angles)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, -1)))


def read_coverage(detail_pass: DetailNormalPass) -> np.ndarray:
    """The alpha of the last detail-normal map, DECA rows."""
    return np.frombuffer(detail_pass.texture.read(), np.float32).reshape(SIZE, SIZE, 4)[::-1, :, 3]


def flat_interior(mask: np.ndarray) -> np.ndarray:
    """Texels well inside the flat island (and inside the mask)."""
    u, v = texel_uv()
    inside = (u > FLAT_U[0] + 0.02) & (u < FLAT_U[1] - 0.02) & (v > FLAT_V[0] + 0.02) & (v < FLAT_V[1] - 0.02)
    return inside & (mask == 1)


# ---------------------------------------------------------------- tests


def test_uv_maps_match_world2uv(gl_context, scene):
    rasterizer = UvRasterizer(gl_context, scene["uv"], scene["triangles"])
    try:
        positions, normals = (rasterizer.read(t) for t in rasterizer.rasterize(scene["vertices"], scene["normals"]))
    finally:
        rasterizer.release()
    table, triangles = scene["table"], scene["triangles"]
    covered = table[0] >= 0
    assert np.array_equal(positions[..., 3] > 0, normals[..., 3] > 0)
    assert np.mean((positions[..., 3] > 0) != covered) < 0.002  # GL's tie rules differ only on edges

    check = interior(positions[..., 3] > 0, covered)
    assert check.sum() > 20000
    extent = np.ptp(scene["vertices"], axis=0).max()
    position_error = np.abs(positions[..., :3] - world2uv(table, triangles, scene["vertices"]))[check].max()
    normal_error = np.abs(normals[..., :3] - world2uv(table, triangles, scene["normals"]))[check].max()
    log.info("world2uv: max position error %.2e of the extent, max normal error %.2e", position_error / extent,
             normal_error)
    assert position_error / extent < 1e-5
    assert normal_error < 1e-5
    assert np.all(positions[~covered & ~ndimage.binary_dilation(covered)] == 0)  # 0 where no triangle is near


def test_gl_row_convention(detail_pass, scene):
    """Rendered textures use GL rows (row y at v = (y + 0.5) / 256); read() returns DECA rows (row 0 at v ~ 1)."""
    detail_pass.run(scene["vertices"], scene["normals"], scene["displacement"])
    positions_texture = detail_pass.rasterizer.maps[0]
    raw = np.frombuffer(positions_texture.read(), np.float32).reshape(SIZE, SIZE, 4)
    centres = (np.arange(SIZE) + 0.5) / SIZE
    columns = np.flatnonzero((centres > FLAT_U[0] + 0.01) & (centres < FLAT_U[1] - 0.01))
    gl_rows = np.flatnonzero((centres > FLAT_V[0] + 0.01) & (centres < FLAT_V[1] - 0.01))
    flat = raw[np.ix_(gl_rows, columns)]
    u, v = np.meshgrid(centres[columns], centres[gl_rows])
    np.testing.assert_allclose(flat[..., 0], FLAT_SCALE * u, atol=1e-6)
    np.testing.assert_allclose(flat[..., 1], FLAT_SCALE * v, atol=1e-6)
    np.testing.assert_array_equal(detail_pass.rasterizer.read(positions_texture), raw[::-1])


def test_detail_normals_match_reference(detail_pass, scene):
    detail_pass.run(scene["vertices"], scene["normals"], scene["displacement"])
    gpu = detail_pass.read()
    coverage = read_coverage(detail_pass)
    reference = displacement2normal(scene["table"], scene["triangles"], scene["vertices"], scene["normals"],
                                    scene["displacement"], scene["mask"].astype(float), scene["fixed"].astype(float))

    check = interior(coverage > 0, reference["covered"])
    nonzero = check & (np.linalg.norm(reference["detail"], axis=-1) > 1e-3)
    errors = angles_degrees(gpu[nonzero], reference["detail"][nonzero])
    masked = scene["mask"][nonzero] > 0
    log.info("detail normals: %d texels (%d in the mask); angular error median %.2e, 99.9%% %.2e, max %.2e degrees",
             nonzero.sum(), masked.sum(), np.median(errors), np.quantile(errors, 0.999), errors.max())
    assert nonzero.sum() > 20000 and masked.sum() > 10000
    assert np.quantile(errors, 0.999) < 0.1
    assert np.abs(gpu[check] - reference["detail"][check]).max() < 1e-4  # by value too (the blend is not unit)

    # the detail really differs from the coarse normal inside the mask: the test is not vacuous
    inside = nonzero & (scene["mask"] == 1)
    assert np.median(angles_degrees(reference["detail"][inside], reference["normals"][inside])) > 2

    # texels outside generate_triangles' margins have no dense normal: only the (1 - mask) coarse part remains
    rows, columns = np.indices((SIZE, SIZE))
    outside_margins = (rows < 5) | (rows > 250) | (columns < 2) | (columns > 253)
    margin_check = outside_margins & (coverage > 0) & reference["covered"]
    assert margin_check.sum() > 100 and np.all(scene["mask"][margin_check] == 1)
    np.testing.assert_allclose(gpu[margin_check], reference["detail"][margin_check], atol=1e-5)
    assert np.all(gpu[margin_check & (scene["mask"] == 1)] == 0)


def run_without_fixed_displacement(detail_pass, scene, displacement: np.ndarray) -> np.ndarray:
    """The detail normals of ``displacement`` alone, from a pass whose fixed displacement is zero."""
    zero = np.zeros((SIZE, SIZE), np.float32)
    gpu_pass = DetailNormalPass(detail_pass.ctx, scene["uv"], scene["triangles"], scene["mask"], zero)
    try:
        gpu_pass.run(scene["vertices"], scene["normals"], displacement)
        return gpu_pass.read()
    finally:
        gpu_pass.release()


def test_flat_region_without_displacement_keeps_the_coarse_normal(detail_pass, scene):
    gpu = run_without_fixed_displacement(detail_pass, scene, np.zeros((SIZE, SIZE), np.float32))
    inside = flat_interior(scene["mask"])
    assert inside.sum() > 1000
    np.testing.assert_allclose(gpu[inside], np.broadcast_to([0, 0, 1], gpu[inside].shape), atol=1e-6)


def test_a_slope_along_u_tilts_the_normal_towards_minus_u(detail_pass, scene):
    """Height rising with u (world x on the flat island) tilts the normal towards -x, as DECA's face order implies."""
    u, _ = texel_uv()
    slope = 0.2  # height per world unit along x
    ramp = (slope * FLAT_SCALE * u).astype(np.float32)  # displacement rising along +u
    gpu = run_without_fixed_displacement(detail_pass, scene, ramp)
    reference = displacement2normal(scene["table"], scene["triangles"], scene["vertices"], scene["normals"],
                                    ramp.astype(float), scene["mask"].astype(float), np.zeros((SIZE, SIZE)))["detail"]
    inside = flat_interior(scene["mask"])
    expected = np.array([-slope, 0, 1]) / np.hypot(slope, 1)
    np.testing.assert_allclose(reference[inside], np.broadcast_to(expected, reference[inside].shape), atol=1e-5)
    np.testing.assert_allclose(gpu[inside], np.broadcast_to(expected, gpu[inside].shape), atol=1e-5)

"""The renderer's looks on a flat square facing the camera, against the closed-form shading."""

import numpy as np
import pytest

from realtime.rendering.renderer import AvatarMesh, AvatarRenderer, RenderOptions, texture_from_image

SQUARE = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float32) * 10
NORMALS = np.tile(np.array([[0, 0, 1]], np.float32), (4, 1))


def square_renderer(ctx, lighting: str, albedo_rgb=(200, 100, 50)) -> AvatarRenderer:
    mesh = AvatarMesh(
        triangles=np.array([[0, 1, 2], [0, 2, 3]], np.int32),
        render_vertex=np.arange(4, dtype=np.int32),
        uv=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], np.float32),
        material=np.tile(np.array([[0, 0, 0, 1]], np.float32), (4, 1)),
    )
    albedo = np.full((4, 4, 3), albedo_rgb, np.uint8)
    options = RenderOptions(size=(64, 64), lighting=lighting, antialias="none", target=(0, 0, 0))
    return AvatarRenderer(ctx, mesh, albedo, options)


def centre(image: np.ndarray) -> np.ndarray:
    return image[32, 32].astype(float)


def test_shape_look_is_decas_five_light_grey(gl_context) -> None:
    renderer = square_renderer(gl_context, "shape")
    diagonal = 1 / np.sqrt(3)
    expected = 180 / 255 * (4 * diagonal + 1) / 5 * 1.7 * 255
    assert centre(renderer.render(SQUARE, NORMALS)) == pytest.approx([expected] * 3, abs=1.5)


def test_spherical_harmonics_light(gl_context) -> None:
    renderer = square_renderer(gl_context, "sh")
    light = np.zeros((9, 3), np.float32)
    light[0] = 0.5 / 0.282095  # constant band: shade 0.5 everywhere
    light[3] = [0.2 / 1.023327, 0, 0]  # z band, red only: + 0.2 for a normal facing the camera
    renderer.set_sh_light(light)
    assert centre(renderer.render(SQUARE, NORMALS)) == pytest.approx([200 * 0.7, 100 * 0.5, 50 * 0.5], abs=1.5)


def test_normal_map_replaces_the_vertex_normals(gl_context) -> None:
    renderer = square_renderer(gl_context, "shape")
    flat = centre(renderer.render(SQUARE, NORMALS))
    tilted = np.zeros((8, 8, 4), np.float32)
    tilted[..., :3] = np.array([0.6, 0.0, 0.8])  # turned towards +x: two lights lose, two gain less
    tilted[..., 3] = 1
    renderer.set_normal_map(texture_from_image(gl_context, tilted, mipmaps=False))
    n = np.array([0.6, 0.0, 0.8])
    lights = np.array([[-1, 1, 1], [1, 1, 1], [-1, -1, 1], [1, -1, 1], [0, 0, 1]], float)
    lights /= np.linalg.norm(lights, axis=1, keepdims=True)
    expected = 180 / 255 * np.clip(lights @ n, 0, 1).mean() * 1.7 * 255
    shaded = centre(renderer.render(SQUARE, NORMALS))
    assert shaded == pytest.approx([expected] * 3, abs=1.5)
    assert not np.allclose(shaded, flat)

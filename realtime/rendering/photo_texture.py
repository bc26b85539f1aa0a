"""The identity's skin texture: the photo projected into the ICT UV atlas, with what the photo does not show filled.

Extraction runs on the GPU (`shaders/depth.*` renders the photo-view depth, `shaders/bake.*` rasterises the mesh in
UV space and samples the photo where the surface is visible, faces the camera and lies inside the tracked face).
Filling runs on the CPU: the face's UV layout is left-right symmetric, so a hidden cheek borrows its mirror image, and
what is still missing is filled by a pull-push pyramid that spreads the nearest skin colours smoothly.
"""

import cv2
import moderngl
import numpy as np

from realtime.rendering.renderer import load_program, texture_from_image
from realtime.tracking.landmarks import FACE_OVAL, IRIS

ATLAS_SIZE = (2048, 1024)  # UV tiles 0 (face) and 1 (head and neck), 1024 x 1024 each


def face_region_mask(landmarks: np.ndarray, photo_shape: tuple[int, ...], feather: float) -> np.ndarray:
    """(H, W) float32 in [0, 1]: inside the tracked face outline, pulled in and feathered by ``feather`` pixels."""
    mask = np.zeros(photo_shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(landmarks[list(FACE_OVAL), :2]).astype(np.int32)], 255)
    radius = max(int(feather), 1)
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), radius / 2 + 0.5)


def iris_color(photo: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Median RGB in [0, 1] of the two irises (landmarks 468-477), without the pupil and glints."""
    samples = []
    for center, ring in ((IRIS[0], IRIS[1:5]), (IRIS[5], IRIS[6:10])):
        c = landmarks[center, :2]
        radius = np.linalg.norm(landmarks[list(ring), :2] - c, axis=1).mean()
        # only the pixels around the iris: a large photo has millions of others
        x0, y0 = (max(int(np.floor(v - radius)) - 1, 0) for v in c)
        x1 = min(max(int(np.ceil(c[0] + radius)) + 2, 0), photo.shape[1])
        y1 = min(max(int(np.ceil(c[1] + radius)) + 2, 0), photo.shape[0])
        ys, xs = np.mgrid[y0:y1, x0:x1]
        distance = np.hypot(xs - c[0], ys - c[1])
        samples.append(photo[y0:y1, x0:x1][(distance > radius * 0.4) & (distance < radius * 0.9)])
    pixels = np.concatenate(samples).astype(np.float32) / 255
    if len(pixels) < 4:
        return np.array((0.32, 0.22, 0.14), np.float32)
    brightness = pixels.mean(1)
    keep = (brightness > np.percentile(brightness, 15)) & (brightness < np.percentile(brightness, 85))
    return np.median(pixels[keep] if keep.sum() >= 4 else pixels, axis=0)


def bake_photo(
    ctx: moderngl.Context,
    vertices: np.ndarray,
    normals: np.ndarray,
    triangles: np.ndarray,
    uv: np.ndarray,
    photo: np.ndarray,
    face_region: np.ndarray,
    photo_projection: np.ndarray,
    atlas_size: tuple[int, int] = ATLAS_SIZE,
) -> np.ndarray:
    """(H, W, 4) float32 atlas: photo RGB in [0, 1] and the confidence that the texel was seen.

    ``vertices``/``normals`` (R, 3) per render vertex as posed in the photo, ``triangles`` (T, 3) the textured
    triangles, ``uv`` (R, 2) atlas coordinates, ``photo_projection`` (4, 4) model -> photo pixels and depth.
    """
    height, width = photo.shape[:2]
    positions = ctx.buffer(np.ascontiguousarray(vertices, np.float32))
    normal_buffer = ctx.buffer(np.ascontiguousarray(normals, np.float32))
    uv_buffer = ctx.buffer(np.ascontiguousarray(uv, np.float32))
    index = ctx.buffer(np.ascontiguousarray(triangles, np.int32))
    projection = np.ascontiguousarray(photo_projection, np.float32).T.tobytes()
    depth = (np.c_[vertices, np.ones(len(vertices))] @ photo_projection.T)[:, 2]
    near, far = float(depth.min()) - 1.0, float(depth.max()) + 1.0
    resources: list = [positions, normal_buffer, uv_buffer, index]
    try:
        depth_program = load_program(ctx, "depth")
        depth_program["photo_projection"].write(projection)
        depth_program["photo_size"].value = (width, height)
        depth_program["depth_range"].value = (near, far)
        depth_texture = ctx.texture((width, height), 1, dtype="f4")
        depth_fbo = ctx.framebuffer([depth_texture], ctx.depth_renderbuffer((width, height)))
        depth_vao = ctx.vertex_array(depth_program, [(positions, "3f", "in_position")], index, index_element_size=4)
        resources += [depth_program, depth_texture, depth_fbo, depth_vao]
        depth_fbo.use()
        depth_fbo.clear(far, far, far, 1.0, depth=1.0)
        ctx.enable(moderngl.DEPTH_TEST)
        ctx.disable(moderngl.CULL_FACE)
        depth_vao.render(moderngl.TRIANGLES)

        bake_program = load_program(ctx, "bake")
        bake_program["photo_projection"].write(projection)
        bake_program["photo_size"].value = (width, height)
        bake_program["depth_tolerance"].value = 0.01 * (far - near)
        photo_texture = texture_from_image(ctx, photo, mipmaps=False)
        region_texture = texture_from_image(ctx, face_region[:, :, None].astype(np.float32), mipmaps=False)
        atlas = ctx.texture(atlas_size, 4, dtype="f4")
        atlas_fbo = ctx.framebuffer([atlas])
        bake_vao = ctx.vertex_array(
            bake_program,
            [(positions, "3f", "in_position"), (normal_buffer, "3f", "in_normal"), (uv_buffer, "2f", "in_uv")],
            index,
            index_element_size=4,
        )
        resources += [bake_program, photo_texture, region_texture, atlas, atlas_fbo, bake_vao]
        bake_program["photo"].value = 0
        bake_program["photo_depth"].value = 1
        bake_program["face_region"].value = 2
        photo_texture.use(0)
        depth_texture.use(1)
        region_texture.use(2)
        atlas_fbo.use()
        atlas_fbo.clear(0.0, 0.0, 0.0, 0.0)
        ctx.disable(moderngl.DEPTH_TEST)
        bake_vao.render(moderngl.TRIANGLES)
        return np.frombuffer(atlas_fbo.read(components=4, dtype="f4"), np.float32).reshape(
            atlas_size[1], atlas_size[0], 4
        )
    finally:
        for resource in reversed(resources):
            resource.release()


def mirror_fill(atlas: np.ndarray) -> np.ndarray:
    """Blend each face-tile texel with its mirror image where it was seen less well (the face UVs are symmetric)."""
    out = atlas.copy()
    tile = atlas.shape[1] // 2
    face = atlas[:, :tile]
    mirrored = face[:, ::-1]
    own, other = face[..., 3:], mirrored[..., 3:]
    borrowed = (1 - own) * other
    total = own + borrowed
    blended = (face[..., :3] * own + mirrored[..., :3] * borrowed) / np.maximum(total, 1e-6)
    out[:, :tile, :3] = np.where(total > 0, blended, face[..., :3])
    out[:, :tile, 3:] = total
    return out


def pull_push_fill(rgb: np.ndarray, weight: np.ndarray, levels: int = 10) -> np.ndarray:
    """Fill low-``weight`` texels of ``rgb`` (H, W, 3) from their surroundings: weighted averages from a pyramid.

    Pull: downsample colour * weight and weight together. Push: from the coarsest level up, each level takes
    the coarser estimate where its own weight is low.
    """
    pyramid = [(rgb * weight[..., None], weight)]
    for _ in range(levels):
        colour, w = pyramid[-1]
        if min(w.shape) < 2:
            break
        pyramid.append((cv2.pyrDown(colour), cv2.pyrDown(w)))
    colour, w = pyramid[-1]
    filled = colour / np.maximum(w, 1e-6)[..., None]
    for colour, w in reversed(pyramid[:-1]):
        coarse = cv2.resize(filled, (w.shape[1], w.shape[0]), interpolation=cv2.INTER_LINEAR)
        own = colour / np.maximum(w, 1e-6)[..., None]
        alpha = np.clip(w, 0, 1)[..., None]
        filled = own * alpha + coarse * (1 - alpha)
    return filled


def fill_atlas(atlas: np.ndarray) -> np.ndarray:
    """(H, W, 4) baked atlas -> (H, W, 3) uint8 texture with every texel filled."""
    mirrored = mirror_fill(atlas)
    confidence = np.clip(mirrored[..., 3], 0, 1)
    filled = pull_push_fill(mirrored[..., :3], confidence)
    rgb = mirrored[..., :3] * confidence[..., None] + filled * (1 - confidence[..., None])
    return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)

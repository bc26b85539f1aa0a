"""Build `realtime/data/ict_hidden_triangles.txt`: the triangles of the ICT head's inner parts that nothing shows.

The software rasteriser pays for every triangle it is sent, seen or not: the teeth cost 10% of a frame's drawing with
the mouth closed. Teeth, gums and tongue, the mouth and eye sockets and the eyeballs are drawn from every head pose
the app uses (yaw to +-75 degrees: the photo's own turn plus the driver's; pitch to +-40), every mouth and eye
extreme, on the mean identity and on random ones, with a triangle-ID shader; a triangle that no view shows, nor any
triangle sharing a vertex with it, is hidden and not drawn. `tests/test_avatar.py` checks the result on poses,
expressions and identities that are not among these.

    python tools/build_hidden_triangles.py [--out PATH] [--size 1024]
"""

import argparse
import logging
import sys
from pathlib import Path

import moderngl
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from realtime.assets import ict_model_path  # noqa: E402
from realtime.head import model_matrix  # noqa: E402
from realtime.ict.avatar import HIDDEN_TRIANGLES_PATH, INNER_PARTS, PART_COLORS, Avatar  # noqa: E402
from realtime.ict.model import IctModel  # noqa: E402
from realtime.ict.pipeline import HEAD_PIVOT  # noqa: E402
from realtime.rendering.renderer import create_context, look_at, perspective  # noqa: E402

log = logging.getLogger("build_hidden_triangles")
YAWS = np.linspace(-75, 75, 11)
PITCHES = np.linspace(-40, 40, 5)
EXPRESSIONS: list[dict[str, float]] = [
    {},
    {"jawOpen": 1.0},
    {"jawOpen": 0.5},
    {"jawOpen": 0.25},
    {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0},
    {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0, "jawOpen": 0.4},
    {"mouthUpperUp_L": 1.0, "mouthUpperUp_R": 1.0, "mouthLowerDown_L": 1.0, "mouthLowerDown_R": 1.0},
    {"mouthStretch_L": 1.0, "mouthStretch_R": 1.0, "jawOpen": 0.5},
    {"mouthFunnel": 1.0, "jawOpen": 0.4},
    {"mouthPucker": 1.0},
    {"jawOpen": 1.0, "jawLeft": 1.0},
    {"jawOpen": 1.0, "jawRight": 1.0},
    {"jawOpen": 0.6, "jawForward": 1.0},
    {"jawOpen": 0.6, "mouthLeft": 1.0},
    {"jawOpen": 0.6, "mouthRight": 1.0},
    {"mouthRollLower": 1.0, "mouthRollUpper": 1.0, "jawOpen": 0.3},
    {"eyeWide_L": 1.0, "eyeWide_R": 1.0},
    {"eyeWide_L": 1.0, "eyeWide_R": 1.0, "eyeLookUp_L": 1.0, "eyeLookUp_R": 1.0},
    {"eyeWide_L": 1.0, "eyeWide_R": 1.0, "eyeLookDown_L": 1.0, "eyeLookDown_R": 1.0},
    {"eyeWide_L": 1.0, "eyeWide_R": 1.0, "eyeLookOut_L": 1.0, "eyeLookIn_R": 1.0},
    {"eyeWide_L": 1.0, "eyeWide_R": 1.0, "eyeLookIn_L": 1.0, "eyeLookOut_R": 1.0},
]
IDENTITY_SEEDS = (1, 2)  # besides the mean identity: random ones, coefficients of 1.5 standard deviations' spread
IDENTITY_SPREAD = 1.5
FRAMED_CM = 26.0  # of the head's plane across the render: the face fills it, larger than the app ever draws it
ID_SHADERS = {
    "vertex_shader": """#version 330 core
        uniform mat4 transform;
        in vec3 in_position;
        void main() { gl_Position = transform * vec4(in_position, 1.0); }""",
    "fragment_shader": """#version 330 core
        out vec4 color;
        void main() {
            int id = gl_PrimitiveID + 1;  // 0: nothing
            color = vec4(id & 255, (id >> 8) & 255, (id >> 16) & 255, 255) / 255.0;
        }""",
}


def rotation(yaw: float, pitch: float) -> np.ndarray:
    """(3, 3) head turn: ``yaw`` degrees about +y, then ``pitch`` about +x."""
    (cy, cp), (sy, sp) = np.cos(np.radians([yaw, pitch])), np.sin(np.radians([yaw, pitch]))
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])


def visible_triangles(ctx: moderngl.Context, model: IctModel, vertices: np.ndarray,
                      views: list[tuple[float, float]], size: int) -> np.ndarray:
    """Indices of the model's triangles of the drawn parts that show in at least one of ``views`` (yaw, pitch in
    degrees) of the head posed as ``vertices`` (N, 3), drawn as the renderer draws it (depth test, back faces
    culled)."""
    drawn = np.flatnonzero(model.part_mask(*PART_COLORS))
    program = ctx.program(**ID_SHADERS)
    positions = ctx.buffer(np.ascontiguousarray(vertices, np.float32))
    index = ctx.buffer(np.ascontiguousarray(model.triangles_of(*PART_COLORS), np.int32))
    vao = ctx.vertex_array(program, [(positions, "3f", "in_position")], index, index_element_size=4)
    framebuffer = ctx.framebuffer([ctx.renderbuffer((size, size), 4)], ctx.depth_renderbuffer((size, size)))
    target = np.array([0.0, -1.5, 0.0])
    distance = FRAMED_CM / 2 / np.tan(np.radians(10.0))
    camera = perspective(20.0, 1.0, distance / 4, distance * 4) @ look_at(target + [0, 0, distance], target)
    seen = np.zeros(len(model.triangles), bool)
    framebuffer.use()
    ctx.enable(moderngl.DEPTH_TEST | moderngl.CULL_FACE)
    for yaw, pitch in views:
        transform = camera @ model_matrix(rotation(yaw, pitch), HEAD_PIVOT)
        program["transform"].write(np.ascontiguousarray(transform.T, np.float32))
        ctx.clear(0.0, 0.0, 0.0, 0.0)
        vao.render(moderngl.TRIANGLES)
        pixels = np.frombuffer(framebuffer.read(components=4), np.uint8).reshape(-1, 4).astype(np.int64)
        ids = np.unique(pixels[:, 0] | pixels[:, 1] << 8 | pixels[:, 2] << 16)
        seen[drawn[ids[ids > 0] - 1]] = True
    for resource in (vao, index, positions, program, framebuffer):
        resource.release()
    return np.flatnonzero(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HIDDEN_TRIANGLES_PATH)
    parser.add_argument("--size", type=int, default=1024, help="render size in pixels")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = IctModel.load(ict_model_path())
    ctx = create_context()
    identities = [np.zeros(len(model.identity_basis))] + [
        np.random.default_rng(seed).normal(0.0, IDENTITY_SPREAD, len(model.identity_basis)) for seed in IDENTITY_SEEDS]
    seen = np.zeros(len(model.triangles), bool)
    views = [(yaw, pitch) for yaw in YAWS for pitch in PITCHES]
    with tqdm(total=len(identities) * len(EXPRESSIONS) * len(views), desc="Views", unit="view") as progress:
        for coefficients in identities:
            avatar = Avatar(model, model.identity_shape(coefficients))
            for expression in EXPRESSIONS:
                weights = np.zeros(len(model.expression_names), np.float32)
                for name, value in expression.items():
                    weights[model.expression_index(name)] = value
                vertices, _ = avatar.pose(weights)
                seen[visible_triangles(ctx, model, vertices, views, args.size)] = True
                progress.update(len(views))
    inner = model.part_mask(*INNER_PARTS)
    # a triangle sharing a vertex with a seen one is kept: a sliver of it may show at another size or pose
    seen_vertices = np.zeros(model.n_vertices, bool)
    seen_vertices[model.triangles_of(*PART_COLORS)[seen[model.part_mask(*PART_COLORS)]].ravel()] = True
    near_seen = seen_vertices[model.render_vertex[model.triangles]].any(axis=1)
    hidden = np.flatnonzero(inner & ~seen & ~near_seen)
    starts = hidden[np.r_[True, np.diff(hidden) > 1]]
    ends = hidden[np.r_[np.diff(hidden) > 1, True]] + 1
    lines = [f"# ICT-FaceKit triangles (indices into the converted model's triangles) that no view shows: start end "
             f"(exclusive) per run; tools/build_hidden_triangles.py, {len(views)} views x {len(EXPRESSIONS)} "
             f"expressions x {len(identities)} identities at {args.size}x{args.size}"]
    lines += [f"{start} {end}" for start, end in zip(starts, ends, strict=True)]
    args.out.write_text("\n".join(lines) + "\n")
    for part in INNER_PARTS:
        mask = model.part_mask(part)
        log.info("%-18s %5d of %5d triangles hidden", part, int(np.isin(np.flatnonzero(mask), hidden).sum()),
                 int(mask.sum()))
    log.info("wrote %s (%d triangles in %d runs)", args.out, len(hidden), len(starts))


if __name__ == "__main__":
    main()

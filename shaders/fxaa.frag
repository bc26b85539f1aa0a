#version 330 core
// Fast approximate anti-aliasing (after T. Lottes' FXAA): blend along the local edge direction where the luminance
// contrast says there is an edge: far cheaper than multisampling on a software rasteriser, whose cost per triangle
// multiplies with the sample count. Two passes: MARK_EDGES 1 reads five texels, copies every pixel and marks in the
// depth buffer those with an edge; MARK_EDGES 0 smooths (four more filtered reads), drawn behind a depth test that
// only the marked pixels pass. llvmpipe shades a whole block of pixels through every branch unless its depth test
// rejects the block: in one pass, the edge path cost every pixel as much as an edge's.
uniform sampler2D image;
uniform vec2 texel;  // 1 / size

in vec2 v_uv;
out vec4 frag_color;

const float REDUCE_MIN = 1.0 / 128.0;
const float REDUCE_MUL = 1.0 / 8.0;
const float SPAN_MAX = 8.0;
const float EDGE_MIN = 1.0 / 24.0;  // luminance range below which a pixel is left alone (most of the frame)

float luma(vec3 c) { return dot(c, vec3(0.299, 0.587, 0.114)); }

void main() {
    // the 3x3 neighbourhood's corners, unfiltered (texelFetch is much cheaper than filtered reads in software)
    ivec2 p = ivec2(gl_FragCoord.xy);
    ivec2 last = textureSize(image, 0) - 1;
    vec4 center = texelFetch(image, p, 0);
    vec4 nw4 = texelFetch(image, clamp(p + ivec2(-1, -1), ivec2(0), last), 0);
    vec4 ne4 = texelFetch(image, clamp(p + ivec2(1, -1), ivec2(0), last), 0);
    vec4 sw4 = texelFetch(image, clamp(p + ivec2(-1, 1), ivec2(0), last), 0);
    vec4 se4 = texelFetch(image, clamp(p + ivec2(1, 1), ivec2(0), last), 0);
    float nw = luma(nw4.rgb), ne = luma(ne4.rgb), sw = luma(sw4.rgb), se = luma(se4.rgb);
    float m = luma(center.rgb);
    float lo = min(m, min(min(nw, ne), min(sw, se)));
    float hi = max(m, max(max(nw, ne), max(sw, se)));
#if MARK_EDGES
    frag_color = vec4(center.rgb, 1.0);
    bool edge = hi - lo >= EDGE_MIN;
#if MODEL_EDGES_ONLY
    // the photo look: alpha is how much a pixel shows the model's own colours (teeth, eyes, mouth); the photo's own
    // pixels came anti-aliased from its camera, and smoothing their detail softens a small face
    edge = edge && max(center.a, max(max(nw4.a, ne4.a), max(sw4.a, se4.a))) > MODEL_SHOWN;
#endif
    gl_FragDepth = edge ? 1.0 : 0.0;
#else
    vec2 direction = vec2(-((nw + ne) - (sw + se)), (nw + sw) - (ne + se));
    float reduce = max((nw + ne + sw + se) * 0.25 * REDUCE_MUL, REDUCE_MIN);
    float scale = 1.0 / (min(abs(direction.x), abs(direction.y)) + reduce);
    direction = clamp(direction * scale, vec2(-SPAN_MAX), vec2(SPAN_MAX)) * texel;

    vec3 near = 0.5 * (texture(image, v_uv + direction * (1.0 / 3.0 - 0.5)).rgb +
                       texture(image, v_uv + direction * (2.0 / 3.0 - 0.5)).rgb);
    vec3 wide = near * 0.5 + 0.25 * (texture(image, v_uv - direction * 0.5).rgb +
                                     texture(image, v_uv + direction * 0.5).rgb);
    float wide_luma = luma(wide);
    frag_color = vec4((wide_luma < lo || wide_luma > hi) ? near : wide, 1.0);
#endif
}

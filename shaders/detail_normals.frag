#version 330 core
// DECA's displacement2normal, one texel per fragment (deca.py displacement2normal, util.generate_triangles,
// util.vertex_normals):
//   Vd = V + (z * mask) * N + fixed * N        at every texel of the UV grid
//   dense normal = normalize(sum of the face normals of the grid triangles that use this texel)
//   detail normal = dense * mask + N * (1 - mask)
// The grid mesh: texel (col x, row y) is vertex y * size + x, rows counted DECA's way (row 0 at v ~ 1). Quad
// (qx, qy), for margin.x <= qx <= size - 2 - margin.x and margin.y <= qy <= size - 2 - margin.y, holds two triangles
// split along the diagonal (qx + 1, qy)-(qx, qy + 1), in DECA's vertex order [0, 2, 1]:
//   t0 = [P(qx, qy), P(qx, qy + 1), P(qx + 1, qy)]
//   t1 = [P(qx + 1, qy), P(qx, qy + 1), P(qx + 1, qy + 1)]
// with face normal cross(b - a, c - a) (length = twice the area: the sum is area weighted).
uniform sampler2D positions;     // RGBA32F, GL rows: world2uv(vertices), alpha = coverage
uniform sampler2D normals;       // RGBA32F, GL rows: world2uv(vertex normals)
uniform sampler2D displacement;  // R32F, DECA rows: D_detail output
uniform sampler2D mask_fixed;    // RG32F, DECA rows: r = uv_face_eye_mask, g = fixed displacement
uniform int size;
uniform ivec2 margin;            // generate_triangles' (margin_x, margin_y)

out vec4 frag_normal;            // xyz: detail normal (world space), a: coverage

ivec2 stored_texel(ivec2 texel) {
    return ivec2(texel.x, size - 1 - texel.y);
}

// Vd at a texel given in DECA's (col, row)
vec3 displaced(ivec2 texel) {
    ivec2 stored = stored_texel(texel);
    vec3 position = texelFetch(positions, stored, 0).xyz;
    vec3 normal = texelFetch(normals, stored, 0).xyz;
    vec2 mf = texelFetch(mask_fixed, texel, 0).rg;
    float z = texelFetch(displacement, texel, 0).r * mf.r;
    return position + z * normal + mf.g * normal;
}

bool quad_exists(int qx, int qy) {
    return qx >= margin.x && qx <= size - 2 - margin.x && qy >= margin.y && qy <= size - 2 - margin.y;
}

vec3 face_normal(vec3 a, vec3 b, vec3 c) {
    return cross(b - a, c - a);
}

void main() {
    ivec2 stored = ivec2(gl_FragCoord.xy);
    ivec2 texel = ivec2(stored.x, size - 1 - stored.y);
    int x = texel.x;
    int y = texel.y;

    vec3 sum = vec3(0.0);
    // the six grid triangles around (x, y): quads (x, y), (x - 1, y), (x, y - 1), (x - 1, y - 1)
    bool here = quad_exists(x, y);
    bool left = quad_exists(x - 1, y);
    bool above = quad_exists(x, y - 1);
    bool above_left = quad_exists(x - 1, y - 1);
    if (here || left || above || above_left) {
        vec3 c = displaced(texel);
        vec3 p_right = displaced(texel + ivec2(1, 0));
        vec3 p_left = displaced(texel + ivec2(-1, 0));
        vec3 p_down = displaced(texel + ivec2(0, 1));
        vec3 p_up = displaced(texel + ivec2(0, -1));
        vec3 p_down_left = displaced(texel + ivec2(-1, 1));
        vec3 p_up_right = displaced(texel + ivec2(1, -1));
        if (here) {         // this texel is the quad's (qx, qy): t0 only
            sum += face_normal(c, p_down, p_right);
        }
        if (left) {         // (qx + 1, qy): t0 and t1
            sum += face_normal(p_left, p_down_left, c);
            sum += face_normal(c, p_down_left, p_down);
        }
        if (above) {        // (qx, qy + 1): t0 and t1
            sum += face_normal(p_up, c, p_up_right);
            sum += face_normal(p_up_right, c, p_right);
        }
        if (above_left) {   // (qx + 1, qy + 1): t1 only
            sum += face_normal(p_up, p_left, c);
        }
    }
    vec3 dense = sum / max(length(sum), 1e-6);  // F.normalize(eps=1e-6): zero stays zero

    vec4 coarse = texelFetch(normals, stored, 0);
    float mask = texelFetch(mask_fixed, texel, 0).r;
    float coverage = texelFetch(positions, stored, 0).a;
    frag_normal = vec4(dense * mask + coarse.xyz * (1.0 - mask), coverage);
}

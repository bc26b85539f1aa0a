#version 330 core
// world2uv: the mesh drawn in its UV layout, so that every covered texel receives the per-vertex attributes
// interpolated at its centre. GL convention: texel row y holds v = (y + 0.5) / size (row 0 at v ~ 0).
in vec2 in_uv;
in vec3 in_first;    // e.g. the coarse vertex position
in vec3 in_second;   // e.g. the coarse vertex normal

noperspective out vec3 v_first;
noperspective out vec3 v_second;

void main() {
    v_first = in_first;
    v_second = in_second;
    gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
}

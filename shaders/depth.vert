#version 330 core
// Depth of the mesh as the photo's camera sees it (for the visibility test of texture extraction).
uniform mat4 photo_projection;
uniform vec2 photo_size;
uniform vec2 depth_range;  // near, far

in vec3 in_position;

out float v_depth;

void main() {
    vec4 p = photo_projection * vec4(in_position, 1.0);
    v_depth = p.z;
    vec2 ndc = p.xy / photo_size * 2.0 - 1.0;
    gl_Position = vec4(ndc.x, ndc.y, (p.z - depth_range.x) / (depth_range.y - depth_range.x) * 2.0 - 1.0, 1.0);
}

#version 330 core
// A full-screen quad from gl_VertexID (drawn as a 4-vertex triangle strip, no vertex buffer).
void main() {
    vec2 corner = vec2(gl_VertexID & 1, gl_VertexID >> 1);
    gl_Position = vec4(corner * 2.0 - 1.0, 0.0, 1.0);
}

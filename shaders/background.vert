#version 330 core
// A full-screen triangle pair showing the background image.
in vec2 in_position;
out vec2 v_uv;

void main() {
    v_uv = vec2(in_position.x * 0.5 + 0.5, 0.5 - in_position.y * 0.5);
    gl_Position = vec4(in_position, 0.0, 1.0);
}

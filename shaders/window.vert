#version 330 core
// The preview window: one full-screen quad showing the composited frame (image row 0 at the top of the window).
in vec2 in_position;
out vec2 v_uv;

void main() {
    v_uv = vec2(in_position.x * 0.5 + 0.5, 0.5 - in_position.y * 0.5);
    gl_Position = vec4(in_position, 0.0, 1.0);
}

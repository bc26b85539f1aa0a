#version 330 core
// A full-screen triangle pair showing the background image, on the far plane: drawn with the depth test always
// passing, it also resets the depth buffer, which saves the renderer a clear.
in vec2 in_position;

void main() {
    gl_Position = vec4(in_position, 1.0, 1.0);
}

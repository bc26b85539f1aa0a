#version 330 core
// A full-screen triangle pair showing the background image, drawn once into the still frame.
in vec2 in_position;

void main() {
    gl_Position = vec4(in_position, 1.0, 1.0);
}

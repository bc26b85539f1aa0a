#version 330 core
// The composited frame, texel for texel (the texture has the window's framebuffer size).
uniform sampler2D image;
in vec2 v_uv;
out vec4 frag_color;

void main() {
    frag_color = vec4(texture(image, v_uv).rgb, 1.0);
}

#version 330 core
uniform sampler2D layer;  // rgb: the framed photo; a: how much of it moves with the head
in vec2 v_uv;
out vec4 frag_color;

void main() {
    frag_color = texture(layer, v_uv);
}

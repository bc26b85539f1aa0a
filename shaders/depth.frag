#version 330 core
in float v_depth;
out float frag_depth;

void main() {
    frag_depth = v_depth;
}

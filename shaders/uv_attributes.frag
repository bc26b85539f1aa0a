#version 330 core
// Two float attribute maps in one draw; alpha 1 marks covered texels (the target is cleared to 0).
noperspective in vec3 v_first;
noperspective in vec3 v_second;

layout(location = 0) out vec4 out_first;
layout(location = 1) out vec4 out_second;

void main() {
    out_first = vec4(v_first, 1.0);
    out_second = vec4(v_second, 1.0);
}

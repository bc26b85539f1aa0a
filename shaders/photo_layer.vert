#version 330 core
// The photo look's moving layer: a grid over the photo's person, lifted onto the head's depth (model space at rest);
// each vertex follows the head's motion by its weight (1 on the head and hair, 0 on the still shoulders), and next
// to the face the skin's expression (its offset from the photo's own).
uniform mat4 model;            // the head's motion this frame
uniform mat4 view_projection;  // model -> clip through the photo's own camera

in vec3 in_position;
in vec2 in_uv;       // where the vertex is in the framed photo at rest
in float in_motion;
in vec3 in_offset;   // model space

out vec2 v_uv;

void main() {
    vec4 rest = vec4(in_position + in_offset, 1.0);
    gl_Position = view_projection * mix(rest, model * rest, in_motion);
    v_uv = in_uv;
}

#version 330 core
// The avatar mesh: per-frame positions and normals in model space (centimetres), static atlas UVs and materials.
uniform mat4 model;       // head rotation about the pivot, then placement
uniform mat4 view_projection;

in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;
in vec4 in_material;      // rgb: material colour; a: 1 where the photo texture is used instead
in vec4 in_photo;         // photo look: frame uv at rest, how much the photo shows here, opacity

out vec3 v_normal;
out vec3 v_world;
out vec2 v_uv;
out vec4 v_material;
out vec4 v_photo;

void main() {
    vec4 world = model * vec4(in_position, 1.0);
    v_world = world.xyz;
    v_normal = mat3(model) * in_normal;
    v_uv = in_uv;
    v_material = in_material;
    v_photo = in_photo;
    gl_Position = view_projection * world;
}

#version 330 core
// Texture extraction: rasterise the mesh in UV space, carrying each point's position in the photo.
uniform mat4 photo_projection;  // model space -> photo pixels (x right, y down) and depth (larger = farther)
uniform vec2 photo_size;

in vec3 in_position;
in vec3 in_normal;
in vec2 in_uv;

out vec3 v_photo;       // photo uv in [0, 1] (y down) and depth
out float v_facing;     // cosine between the surface normal and the direction to the photo's camera

void main() {
    vec4 p = photo_projection * vec4(in_position, 1.0);
    v_photo = vec3(p.xy / photo_size, p.z);
    // photo_projection's linear part is a scaled rotation, so it maps normals as it maps directions
    v_facing = -normalize(mat3(photo_projection) * in_normal).z;
    gl_Position = vec4(in_uv * 2.0 - 1.0, 0.0, 1.0);
}

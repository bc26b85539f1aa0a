#version 330 core
// Photo colour where the photo sees this surface point: in front (depth test against the photo-view depth map),
// facing the camera, and inside the tracked face region. Alpha is the confidence in [0, 1].
uniform sampler2D photo;
uniform sampler2D photo_depth;  // nearest depth per photo pixel, same units as v_photo.z
uniform sampler2D face_region;  // 1 inside the tracked face outline (feathered), 0 outside
uniform float depth_tolerance;

in vec3 v_photo;
in float v_facing;

out vec4 frag_color;

void main() {
    vec2 uv = v_photo.xy;
    bool inside = all(greaterThanEqual(uv, vec2(0.0))) && all(lessThanEqual(uv, vec2(1.0)));
    float visible = float(inside && v_photo.z <= texture(photo_depth, uv).r + depth_tolerance);
    float facing = smoothstep(0.25, 0.6, v_facing);
    float confidence = visible * facing * texture(face_region, uv).r;
    frag_color = vec4(texture(photo, uv).rgb, confidence);
}

#version 330 core
// Soft lighting: the photo texture already carries the photo's own shading, so a frontal face should come out
// close to the photo (shade ~1) and rotation should only add gentle shape cues and a faint highlight.
uniform sampler2D albedo;
uniform vec3 light_dir;    // towards the light, world space
uniform vec3 eye_position;
uniform float ambient;     // shade at grazing light
uniform float specular;

in vec3 v_normal;
in vec3 v_world;
in vec2 v_uv;
in vec4 v_material;

out vec4 frag_color;

void main() {
    vec3 n = normalize(v_normal);
    if (!gl_FrontFacing) n = -n;
    vec3 base = mix(v_material.rgb, texture(albedo, v_uv).rgb, v_material.a);
    float diffuse = max(dot(n, light_dir), 0.0);
    vec3 view = normalize(eye_position - v_world);
    float highlight = pow(max(dot(n, normalize(light_dir + view)), 0.0), 24.0);
    vec3 color = base * (ambient + (1.0 - ambient) * diffuse) + specular * highlight;
    frag_color = vec4(color, 1.0);
}

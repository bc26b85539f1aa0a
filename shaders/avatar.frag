#version 330 core
// Three looks:
//  0 "soft" (ICT photo avatar): the photo texture already carries the photo's own shading, so a frontal face should
//    come out close to the photo and rotation should only add gentle shape cues and a faint highlight;
//  1 "sh" (DECA textured): albedo times the identity's 9x3 spherical-harmonics light, as DECA's add_SHlight;
//  2 "shape" (DECA's grey detail-shape preview): albedo 180/255, five directional lights of intensity 1.7, averaged;
//  3 "photo" (the photo look): the photo's own pixels where it saw this point at rest, the texture or a material
//    shaded by its shape elsewhere (mouth, teeth, eyes under the lids), and the per-vertex opacity that fades the
//    face into the photo;
//    a detail normal map changes the shading by its ratio to the smooth surface's.
// An optional model-space normal map in UV space (DECA's detail normals) replaces the interpolated normal.
uniform sampler2D albedo;
uniform sampler2D photo;       // photo look: the framed identity photo
uniform sampler2D normal_map;  // xyz: model-space unit normal, w: 1 where the map is defined
uniform mat4 model;
uniform vec3 light_dir;    // towards the light, world space (soft)
uniform vec3 eye_position;
uniform float ambient;     // shade at grazing light (soft)
uniform float specular;
uniform vec3 sh[9];        // spherical-harmonics light, DECA's order (sh)

in vec3 v_normal;
in vec3 v_world;
in vec2 v_uv;
in vec4 v_material;
in vec4 v_photo;

layout(location = 0, index = 0) out vec4 frag_color;
#if LIGHTING == 3
// the photo look blends by this output's alpha (dual-source blending), so that frag_color's alpha can say how much
// of the model's own colour shows: anti-aliasing smooths only there
layout(location = 0, index = 1) out vec4 frag_opacity;
#endif

const int lighting = LIGHTING;  // defined by the renderer, one program per look
const bool normal_mapped = NORMAL_MAP == 1;  // and with or without a normal map
const float MATERIAL_AMBIENT = 0.45;  // photo look: the shade of a material facing away from the light

const float SH_C[9] = float[9](0.282095, 1.023327, 1.023327, 1.023327, 0.858086, 0.858086, 0.858086, 0.429043,
                               0.247708);
const vec3 SHAPE_LIGHTS[5] = vec3[5](vec3(-1.0, 1.0, 1.0), vec3(1.0, 1.0, 1.0), vec3(-1.0, -1.0, 1.0),
                                     vec3(1.0, -1.0, 1.0), vec3(0.0, 0.0, 1.0));

vec3 sh_shading(vec3 n) {
    float y[9] = float[9](1.0, n.x, n.y, n.z, n.x * n.y, n.x * n.z, n.y * n.z, n.x * n.x - n.y * n.y,
                          3.0 * n.z * n.z - 1.0);
    vec3 shade = vec3(0.0);
    for (int k = 0; k < 9; ++k) shade += sh[k] * (y[k] * SH_C[k]);
    return shade;
}

void main() {
    vec3 n = normalize(v_normal);
    if (normal_mapped) {
        vec4 detail = texture(normal_map, v_uv);
        if (detail.w > 0.5) n = normalize(mat3(model) * detail.xyz);
    }
    if (!gl_FrontFacing) n = -n;
    vec3 base = mix(v_material.rgb, texture(albedo, v_uv).rgb, v_material.a);
    vec3 color;
    if (lighting == 3) {
        if (v_photo.w < DISCARD_OPACITY) discard;
        // the model's own materials (teeth, tongue, eyeballs) are shaded by their shape, the way the photo's
        // pixels carry theirs: unshaded, a row of teeth is a flat cut-out
        float shaped = MATERIAL_AMBIENT + (1.0 - MATERIAL_AMBIENT) * max(dot(n, light_dir), 0.0);
        base *= mix(shaped, 1.0, v_material.a);
        vec3 shown = mix(base, texture(photo, v_photo.xy).rgb, clamp(v_photo.z, 0.0, 1.0));
        if (normal_mapped) {  // DECA's detail: the change of shading it makes, on the photo's own shading
            vec3 smooth_n = gl_FrontFacing ? normalize(v_normal) : -normalize(v_normal);
            float detailed = ambient + (1.0 - ambient) * max(dot(n, light_dir), 0.0);
            float smooth_shade = ambient + (1.0 - ambient) * max(dot(smooth_n, light_dir), 0.0);
            shown *= detailed / max(smooth_shade, 0.05);
        }
        frag_color = vec4(clamp(shown, 0.0, 1.0), 1.0 - clamp(v_photo.z, 0.0, 1.0));
#if LIGHTING == 3
        frag_opacity = vec4(v_photo.w);
#endif
        return;
    }
    if (lighting == 1) {
        color = base * sh_shading(n);
    } else if (lighting == 2) {
        float shade = 0.0;
        for (int i = 0; i < 5; ++i) shade += clamp(dot(n, normalize(SHAPE_LIGHTS[i])), 0.0, 1.0);
        color = vec3(180.0 / 255.0) * shade / 5.0 * 1.7;
    } else {
        float diffuse = max(dot(n, light_dir), 0.0);
        vec3 view = normalize(eye_position - v_world);
        float h = max(dot(n, normalize(light_dir + view)), 0.0);
        float h2 = h * h, h4 = h2 * h2, h8 = h4 * h4;
        float highlight = h8 * h8 * h8;  // h^24: multiplications cost the software rasteriser less than pow()
        color = base * (ambient + (1.0 - ambient) * diffuse) + specular * highlight;
    }
    frag_color = vec4(clamp(color, 0.0, 1.0), 1.0);
}

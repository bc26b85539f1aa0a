#version 330 core
// The background image, as large as the frame (row 0 at the top): read pixel for pixel, unfiltered (texelFetch costs
// the software rasteriser a third less than a filtered read).
uniform sampler2D image;
out vec4 frag_color;

void main() {
    ivec2 pixel = ivec2(gl_FragCoord.xy);
    // alpha 0: none of the model's own colours here (what the photo look's anti-aliasing looks for)
    frag_color = vec4(texelFetch(image, ivec2(pixel.x, textureSize(image, 0).y - 1 - pixel.y), 0).rgb, 0.0);
}

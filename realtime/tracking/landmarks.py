"""Named groups of MediaPipe Face Landmarker's 478 landmark indices."""

# The face-mesh outline: landmarks that slide along the silhouette as the head turns (less reliable for fitting).
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150,
    136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
# The lips' inner edge, round the mouth's opening in order (the upper lip's from the right corner, then the lower's).
INNER_LIPS = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
# The lips' outer edge, in order from the right corner along the upper lip, then back along the lower.
OUTER_LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
IRIS = tuple(range(468, 478))
# The brows' upper and lower edges, the subject's right brow first.
BROWS = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55, 300, 293, 334, 296, 336, 276, 283, 282, 295, 285)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263  # the subject's right and left eye corners
FOREHEAD, CHIN = 10, 152  # the top and the bottom of the face's midline
NOSE_TIP = 1

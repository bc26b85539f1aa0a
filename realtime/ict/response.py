"""How the tracker reads the avatar, inverted: per-blendshape gains so that the avatar shows what the driver shows.

MediaPipe reads the ICT head's shapes at their own strengths: the avatar's full jawOpen scores about 0.8, its full
blink about 0.5, its full smile about 0.6, while a person's full blink scores about 0.55 and full smile about 0.9. A
one-to-one copy of the scores comes out muted. `tools/calibrate_response.py` renders the avatar with each blendshape
alone at a few weights (several identities) and fits the straight line of its score against its weight; saved to
`realtime/data/ict_response.txt`. Each frame the weight is then

    weight = clip((score - rest) / slope, -1, 1)

where ``rest`` is the user's resting score once calibrated (the avatar's own neutral reading until then), so that
the driver's resting face gives the avatar's rest and a driver's full expression its full shape. A change below the
rest (the driver relaxing a shape their rest holds) is copied as it is: the slopes are measured adding each shape to
the avatar's neutral face, while relaxing takes away a shape the rest holds, in the photo look the photo's own
expression, fitted to its own landmarks and read by MediaPipe about one for one (with the gain, pyfeat's
self-reenactment lowered the identity frame's raised brows twice as far as its driver did). The weight is a
change from the avatar's rest: the head look's rest is its neutral face (the weight is clipped at 0 after the
temporal filter: clipped before, the filter would turn the noise around the rest into a constant expression); the
photo look's is the photo's own expression, which a driver relaxing below their rest relaxes too.

Only the `CORRECTED` blendshapes get a gain: the others, a plain copy. (A full linear model with the cross-talk
between scores, solved by bounded least squares, was tried: it explains a driver's open jaw by other shapes' side
effects and gives worse, stranger faces.)
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.paths import PACKAGE_DATA
from realtime.tracking.tracker import BLENDSHAPE_NAMES

DEFAULT_PATH = PACKAGE_DATA / "ict_response.txt"
# What a viewer judges first, and what MediaPipe reads clearly on the avatar. The gaze, for one, is not here:
# MediaPipe scores a person's lowered gaze far higher than the avatar's turned eyeballs, and a gain would roll the
# avatar's eyes.
CORRECTED = ("jawOpen", "mouthSmileLeft", "mouthSmileRight", "eyeBlinkLeft", "eyeBlinkRight", "mouthFunnel",
             "mouthPucker", "browInnerUp", "browOuterUpLeft", "browOuterUpRight")
MAX_GAIN = 3.0
_CORRECTED = np.isin(BLENDSHAPE_NAMES, CORRECTED)  # (51,) bool


@dataclass(frozen=True, eq=False)
class ResponseModel:
    neutral: np.ndarray  # (51,) the scores read on the avatar's neutral face, facing the camera
    pitches: np.ndarray  # (P,) head pitches measured, degrees (up positive), increasing
    slope: np.ndarray  # (51, P) the change of each score per unit of its own weight, at each pitch

    @classmethod
    def plain(cls) -> "ResponseModel":
        """No correction: the weights copy the scores."""
        n = len(BLENDSHAPE_NAMES)
        return cls(np.zeros(n), np.zeros(1), np.ones((n, 1)))

    @classmethod
    def load(cls, path: Path = DEFAULT_PATH) -> "ResponseModel":
        rows = {}
        for line in path.read_text().splitlines():
            if line and not line.startswith("#"):
                name, *values = line.split()
                rows[name] = np.array([float(v) for v in values])
        table = np.array([rows[name] for name in BLENDSHAPE_NAMES])
        return cls(table[:, 0], rows["pitch"], table[:, 1:])

    @classmethod
    def fit(cls, levels: np.ndarray, pitches: np.ndarray, scores: np.ndarray) -> "ResponseModel":
        """From (51, P, L) scores, each blendshape's own, read with it alone at ``levels`` (L,) and head ``pitches``
        (P,) in degrees, one of them 0."""
        centred = levels - levels.mean()
        slope = (scores - scores.mean(axis=2, keepdims=True)) @ centred / (centred @ centred)
        return cls(scores[:, list(pitches).index(0.0), 0], np.asarray(pitches, np.float64), slope)

    def save(self, path: Path) -> None:
        lines = ["# blendshape, the avatar's neutral score facing the camera, then its score per unit weight at each "
                 "head pitch (tools/calibrate_response.py)",
                 "pitch " + " ".join(f"{p:g}" for p in self.pitches)]
        lines += [f"{name} {n:.4f} " + " ".join(f"{v:.4f}" for v in row)
                  for name, n, row in zip(BLENDSHAPE_NAMES, self.neutral, self.slope, strict=True)]
        path.write_text("\n".join(lines) + "\n")

    def gains(self, pitch: float = 0.0) -> np.ndarray:
        """(51,) the factor from the driver's departure from rest to the weight, per blendshape, for an avatar whose
        head is pitched ``pitch`` degrees (up positive): MediaPipe reads an open jaw on a lowered head as less open."""
        position = np.interp(pitch, self.pitches, np.arange(len(self.pitches)))
        low = int(np.floor(position))
        high = min(low + 1, len(self.pitches) - 1)
        slope = self.slope[:, low] + (position - low) * (self.slope[:, high] - self.slope[:, low])
        corrected = _CORRECTED & (slope > 1.0 / MAX_GAIN)
        return np.where(corrected, 1.0 / np.where(corrected, slope, 1.0), 1.0)

    def weights(self, departure: np.ndarray, pitch: float = 0.0) -> np.ndarray:
        """(51,) the driver's scores minus their rest -> (51,) changes of the blendshape weights from the avatar's
        rest, in [-1, 1] (below 0: the driver relaxes a shape their rest holds, copied as it is)."""
        return np.clip(np.where(departure > 0, departure * self.gains(pitch), departure), -1.0, 1.0)

"""From the driver's tracked face to the avatar's pose: expression weights and head rotation, frame by frame."""

from dataclasses import dataclass

import numpy as np

from realtime.head import AvatarPose, HeadOffset, blend
from realtime.ict.avatar import blendshape_matrix
from realtime.ict.response import ResponseModel
from realtime.tracking.filtering import OneEuroParameters, PoseFilter, head_filter_parameters
from realtime.tracking.head_pose import HeadMotion, head_pitch, head_rotation
from realtime.tracking.tracker import FaceObservation

# One Euro parameters at smoothing 1 (min cutoff Hz, beta, derivative cutoff Hz) by expression family (name prefix):
# lids must stay fast (a blink lasts 3-5 frames), the gaze jumps, the mouth and brows move at speech rate, the head is
# heavy and can be smoothest. Tuned with tools/evaluate.py on the sample clips (jitter against lag). The lids' speed
# estimate passes 2 Hz, not 1: a blink's speed, low-passed at 1 Hz, has not risen when the lid starts to reopen after
# a closed plateau, and the reopening lid lagged a frame (weight 0.75 where the driver asked for 0.62); jitter on
# still frames unchanged on both clips.
EXPRESSION_FILTER_TUNING: dict[str, tuple[float, float, float]] = {
    "eyeBlink": (3.0, 40.0, 2.0), "eyeSquint": (2.0, 20.0, 1.0), "eyeWide": (2.0, 20.0, 1.0),
    "eyeLook": (2.0, 30.0, 1.0), "brow": (1.5, 10.0, 1.0), "": (1.5, 10.0, 1.0),  # "": mouth, jaw, cheeks, nose
}


@dataclass(frozen=True)
class RetargetOptions:
    head_pose: bool = True  # follow the driver's head rotation; False keeps the avatar facing the camera
    mirrored: bool = False  # swap left and right (for a driver seen in a mirror)
    hold_when_lost: bool = False  # keep the last pose while the face is lost, instead of easing to neutral
    ease_seconds: float = 0.4  # time constant of the ease to neutral when the face is lost
    pickup_seconds: float = 0.12  # time constant of the blend back to the tracked pose when the face returns
    confirm_frames: int = 3  # a face found after a loss counts once seen this many frames in a row (no blips)
    smoothing: float = 1.0  # strength of the temporal filter on expression and head pose: 0 off, 1 tuned, 2 smoother
    response: bool = True  # give each blendshape the weight at which the avatar reads the driver's score


def expression_filter_parameters(names: tuple[str, ...], smoothing: float) -> OneEuroParameters:
    """One Euro parameters for expression weights called ``names`` at strength ``smoothing`` (> 0; higher: smoother)."""
    tuning = [next(v for prefix, v in EXPRESSION_FILTER_TUNING.items() if name.startswith(prefix)) for name in names]
    min_cutoff, beta, derivative_cutoff = np.array(tuning).T
    return OneEuroParameters(min_cutoff / smoothing, beta / smoothing, derivative_cutoff)


class Retargeter:
    """Maps each frame's `FaceObservation` (or None) to an `AvatarPose`.

    While the face is lost the avatar eases to neutral (or holds, by option); when it returns, the avatar blends back
    to the tracked pose instead of jumping. `calibrate_neutral` takes the user's resting face as the zero point.
    """

    def __init__(self, expression_names: tuple[str, ...], options: RetargetOptions = RetargetOptions()) -> None:
        self.options = options
        self._matrix = blendshape_matrix(expression_names, mirrored=options.mirrored)
        self._response = ResponseModel.load() if options.response else ResponseModel.plain()
        self._pose = AvatarPose(np.zeros(len(expression_names), np.float32), np.eye(3), tracked=False)
        self._rest = self._response.neutral  # the user's resting scores; until calibrated, the avatar's neutral
        self._recovering = False  # blending back to the tracked pose after the face was lost
        self._seen_in_a_row = 0  # frames with a face since the last frame without
        self._filter = None
        if options.smoothing > 0:
            self._filter = PoseFilter(expression_filter_parameters(expression_names, options.smoothing),
                                      head_filter_parameters(options.smoothing))
        self._motion = HeadMotion(head_filter_parameters(options.smoothing) if options.smoothing > 0 else None,
                                  mirrored=options.mirrored)

    def calibrate_neutral(self, face: FaceObservation) -> None:
        """From now on, ``face``'s blendshape scores count as the neutral face (its resting smile, brows, ...)."""
        self._rest = np.asarray(face.blendshapes, np.float64).copy()
        if self.options.head_pose:
            self._motion.calibrate(face.landmarks)

    def reset_neutral(self) -> None:
        self._rest = self._response.neutral

    def target(self, face: FaceObservation) -> AvatarPose:
        """The pose ``face`` asks for, before any blending over time."""
        rotation = head_rotation(face.transform) if self.options.head_pose else np.eye(3)
        if self.options.mirrored:
            flip = np.diag([-1.0, 1.0, 1.0])
            rotation = flip @ rotation @ flip
        weights = self._response.weights(face.blendshapes - self._rest, head_pitch(rotation))
        expression = np.clip(self._matrix @ weights, -1.0, 1.0).astype(np.float32)  # from the avatar's rest
        return AvatarPose(expression, rotation, tracked=True)

    def filtered(self, pose: AvatarPose, dt: float) -> AvatarPose:
        """``pose`` after the temporal filters (unchanged with smoothing 0)."""
        if self._filter is None:
            return pose
        return AvatarPose(*self._filter(pose.expression, pose.rotation, dt), pose.tracked)

    def update(self, face: FaceObservation | None, dt: float) -> AvatarPose:
        """The pose for this frame; ``dt`` is the time since the previous frame in seconds."""
        previous, dt = self._pose, max(dt, 0.0)
        self._seen_in_a_row = self._seen_in_a_row + 1 if face is not None else 0
        if face is not None and self._recovering and self._seen_in_a_row < self.options.confirm_frames:
            face = None  # not yet: a face that flickers in for a frame or two is more likely a false detection
        if face is not None:
            wanted = self.filtered(self.target(face), dt)
            if self.options.head_pose:
                offset = HeadOffset(*self._motion(face.landmarks, dt))
                wanted = AvatarPose(wanted.expression, wanted.rotation, wanted.tracked, offset)
            if self._recovering:
                self._pose = blend(previous, wanted, 1.0 - np.exp(-dt / self.options.pickup_seconds))
                self._recovering = np.abs(self._pose.expression - wanted.expression).max() > 0.02
            else:
                self._pose = wanted
            return self._pose
        if self._filter is not None:
            self._filter.reset()  # the pose eases or holds now; when the face returns, the filters start afresh
        self._motion.reset_filter()
        if self.options.hold_when_lost:
            self._recovering = True
            self._pose = AvatarPose(previous.expression, previous.rotation, False, previous.offset)
        else:
            self._recovering = True  # blend back when the face returns
            amount = 1.0 - np.exp(-dt / self.options.ease_seconds)
            neutral = AvatarPose(np.zeros_like(previous.expression), np.eye(3), tracked=False)
            self._pose = blend(previous, neutral, amount)
        return self._pose



"""Temporal filters for the driver's signals: the One Euro filter (Casiez, Roussel and Vogel, CHI 2012) per channel,
and its counterpart for a rotation.

A One Euro filter is a low-pass filter whose cutoff rises with the signal's speed: still stretches are smoothed hard
(no jitter), fast moves pass with little lag (blinks stay blinks). Per channel,

    cutoff = min_cutoff + beta * |speed|,   alpha = 1 / (1 + 1 / (2 pi cutoff dt)),   y += alpha (x - y)

where the speed is itself low-passed at ``derivative_cutoff``.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OneEuroParameters:
    min_cutoff: float | np.ndarray  # Hz: the cutoff when the signal is still (lower: smoother, more lag when slow)
    beta: float | np.ndarray  # s / unit: how fast the cutoff rises with speed (higher: less lag when fast)
    derivative_cutoff: float | np.ndarray = 1.0  # Hz: the low-pass on the speed estimate


def smoothing_factor(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    """The exponential smoothing factor alpha in (0, 1] of a first-order low-pass at ``cutoff`` Hz over ``dt`` s."""
    return 1.0 / (1.0 + 1.0 / (2.0 * np.pi * np.asarray(cutoff, np.float64) * dt))


class OneEuroFilter:
    """One Euro filter over a vector of channels, each with its own parameters: ``y = f(x, dt)``."""

    def __init__(self, parameters: OneEuroParameters) -> None:
        self.parameters = parameters
        self._value: np.ndarray | None = None
        self._speed: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the past: the next sample passes unchanged."""
        self._value = self._speed = None

    def __call__(self, x: np.ndarray, dt: float) -> np.ndarray:
        """(C,) sample -> (C,) filtered sample; ``dt`` is the time since the previous sample in seconds."""
        x = np.asarray(x, np.float64)
        if self._value is None or dt <= 0:
            self._value, self._speed = x.copy(), np.zeros_like(x)
            return x.copy()
        p = self.parameters
        speed = (x - self._value) / dt
        self._speed = self._speed + smoothing_factor(p.derivative_cutoff, dt) * (speed - self._speed)
        cutoff = np.asarray(p.min_cutoff) + np.asarray(p.beta) * np.abs(self._speed)
        self._value = self._value + smoothing_factor(cutoff, dt) * (x - self._value)
        return self._value.copy()


def rotation_log(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation -> (3,) axis * angle."""
    angle = np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    if angle < 1e-7:
        return axis / 2.0  # small angles: the skew part is the rotation vector
    if np.pi - angle < 1e-4:  # half turn: the skew part vanishes; take the axis from the symmetric part
        axis = np.sqrt(np.clip((np.diag(rotation) + 1.0) / 2.0, 0.0, None))
        return axis * angle
    return axis / (2.0 * np.sin(angle)) * angle


def rotation_exp(vector: np.ndarray) -> np.ndarray:
    """(3,) axis * angle -> (3, 3) rotation (Rodrigues)."""
    angle = float(np.linalg.norm(vector))
    if angle < 1e-12:
        return np.eye(3)
    k = np.array([[0, -vector[2], vector[1]], [vector[2], 0, -vector[0]], [-vector[1], vector[0], 0]]) / angle
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


class RotationFilter:
    """One Euro filter on a rotation: each frame moves the filtered rotation a fraction alpha of the way to the new
    one along the shortest arc, with the cutoff driven by the angular speed (rad/s)."""

    def __init__(self, parameters: OneEuroParameters) -> None:
        self.parameters = parameters
        self._rotation: np.ndarray | None = None
        self._speed = 0.0

    def reset(self) -> None:
        self._rotation = None

    def __call__(self, rotation: np.ndarray, dt: float) -> np.ndarray:
        """(3, 3) rotation -> (3, 3) filtered rotation."""
        if self._rotation is None or dt <= 0:
            self._rotation, self._speed = np.array(rotation, np.float64), 0.0
            return self._rotation.copy()
        p = self.parameters
        step = rotation_log(self._rotation.T @ rotation)  # in the filtered rotation's frame
        speed = float(np.linalg.norm(step)) / dt
        self._speed += float(smoothing_factor(float(p.derivative_cutoff), dt)) * (speed - self._speed)
        alpha = float(smoothing_factor(float(p.min_cutoff) + float(p.beta) * self._speed, dt))
        self._rotation = self._rotation @ rotation_exp(alpha * step)
        return self._rotation.copy()


class PoseFilter:
    """An avatar pose's filters: One Euro on its expression weights, `RotationFilter` on its head, reset together."""

    def __init__(self, expression: OneEuroParameters, head: OneEuroParameters) -> None:
        self._expression = OneEuroFilter(expression)
        self._head = RotationFilter(head)

    def reset(self) -> None:
        self._expression.reset()
        self._head.reset()

    def __call__(self, expression: np.ndarray, rotation: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """(C,) weights and a (3, 3) rotation -> the filtered (C,) float32 weights and rotation."""
        return self._expression(expression, dt).astype(np.float32), self._head(rotation, dt)


HEAD_FILTER_TUNING = (0.5, 0.5, 1.0)  # One Euro min cutoff (Hz), beta (s/rad), derivative cutoff (Hz) at smoothing 1


def head_filter_parameters(smoothing: float) -> OneEuroParameters:
    """One Euro parameters for the head rotation at strength ``smoothing`` (> 0; higher: smoother)."""
    min_cutoff, beta, derivative_cutoff = HEAD_FILTER_TUNING
    return OneEuroParameters(min_cutoff / smoothing, beta / smoothing, derivative_cutoff)

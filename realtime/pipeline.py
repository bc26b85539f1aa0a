"""The embedded-default pipeline in one object: driver frame in, avatar image out.

    pipeline = RetargetPipeline.create(PipelineOptions(identity=Path("trump.jpg")))
    face = pipeline.track(rgb, timestamp)                  # MediaPipe       } may run on a worker thread,
    geometry = pipeline.geometry(pipeline.pose(face, dt))  # retarget, mesh  } in frame order
    image = pipeline.draw(geometry)                        # ModernGL, on the GL thread
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import moderngl
import numpy as np

from realtime import assets
from realtime.avatar import Avatar, build_avatar_mesh
from realtime.ict_model import IctModel
from realtime.identity import Identity, prepare_identity
from realtime.images import read_image
from realtime.paths import cache_dir
from realtime.renderer import AvatarRenderer, RenderOptions, create_context
from realtime.retarget import AvatarPose, Retargeter, RetargetOptions
from realtime.tracker import FaceObservation, FaceTracker, FaceTrackerOptions, RunningMode

log = logging.getLogger(__name__)

HEAD_PIVOT = np.array([0.0, -2.0, -1.0], np.float32)  # roughly where the head turns on the neck, model space (cm)


@dataclass(frozen=True)
class PipelineOptions:
    identity: Path
    render: RenderOptions = field(default_factory=RenderOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    background_image: Path | None = None
    use_cache: bool = True
    gl_backend: str | None = "egl"


class Pipeline(Protocol):
    """What the offline and live loops drive: this module's `RetargetPipeline` or `realtime.deca.pipeline`'s."""

    renderer: AvatarRenderer

    def neutral_pose(self) -> AvatarPose: ...
    def calibrate_neutral(self, face: Any) -> None: ...
    def track(self, rgb: np.ndarray, timestamp: float) -> Any | None: ...
    def pose(self, face: Any | None, dt: float) -> AvatarPose: ...
    def geometry(self, pose: AvatarPose) -> "AvatarGeometry": ...
    def draw(self, geometry: "AvatarGeometry") -> np.ndarray: ...
    def render_pose(self, pose: AvatarPose) -> np.ndarray: ...
    def close(self) -> None: ...


@dataclass(frozen=True, eq=False)
class AvatarGeometry:
    vertices: np.ndarray  # (N, 3) model space
    normals: np.ndarray  # (N, 3)
    model_matrix: np.ndarray  # (4, 4) head rotation about the neck


def model_matrix(rotation: np.ndarray, pivot: np.ndarray = HEAD_PIVOT) -> np.ndarray:
    """(4, 4) rotation about ``pivot``."""
    matrix = np.eye(4, dtype=np.float32)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = pivot - rotation @ pivot
    return matrix


class RetargetPipeline:
    """Tracker, retargeter, avatar and renderer for one identity. Create and use it on the GL thread."""

    def __init__(
        self,
        ctx: moderngl.Context,
        model: IctModel,
        identity: Identity,
        tracker: FaceTracker,
        renderer: AvatarRenderer,
        options: PipelineOptions,
    ) -> None:
        self.ctx = ctx
        self.model = model
        self.identity = identity
        self.tracker = tracker
        self.renderer = renderer
        self.options = options
        self.avatar = Avatar(model, identity.vertices)
        self.retargeter = Retargeter(model.expression_names, options.retarget)

    @classmethod
    def create(cls, options: PipelineOptions, ctx: moderngl.Context | None = None) -> "RetargetPipeline":
        model_path = assets.ict_model_path()
        assets.face_landmarker_path()  # fail early, with the fix, if the tracker model is missing
        model = IctModel.load(model_path)
        ctx = ctx or create_context(options.gl_backend)
        identity = prepare_identity(
            options.identity, model, model_path, ctx, cache_dir() / "identities" if options.use_cache else None
        )
        background = None
        if options.background_image is not None:
            background = read_image(options.background_image, "background image")
        renderer = AvatarRenderer(ctx, build_avatar_mesh(model, identity.iris_color), identity.albedo,
                                  options.render, background)
        tracker = FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.VIDEO))
        return cls(ctx, model, identity, tracker, renderer, options)

    def neutral_pose(self) -> AvatarPose:
        return AvatarPose(np.zeros(len(self.model.expression_names), np.float32), np.eye(3), tracked=False)

    def calibrate_neutral(self, face: FaceObservation) -> None:
        """Take ``face`` as the user's resting face (see `Retargeter.calibrate_neutral`)."""
        self.retargeter.calibrate_neutral(face)

    def track(self, rgb: np.ndarray, timestamp: float) -> FaceObservation | None:
        return self.tracker.track(rgb, timestamp)

    def pose(self, face: FaceObservation | None, dt: float) -> AvatarPose:
        return self.retargeter.update(face, dt)

    def geometry(self, pose: AvatarPose) -> AvatarGeometry:
        """The posed mesh (numpy only: may run on a worker thread)."""
        vertices, normals = self.avatar.pose(pose.expression)
        return AvatarGeometry(vertices, normals, model_matrix(pose.rotation))

    def draw(self, geometry: AvatarGeometry) -> np.ndarray:
        """The avatar image (H, W, 3) uint8 RGB (on the GL thread)."""
        return self.renderer.render(geometry.vertices, geometry.normals, geometry.model_matrix)

    def render_pose(self, pose: AvatarPose) -> np.ndarray:
        return self.draw(self.geometry(pose))

    def render(self, face: FaceObservation | None, dt: float) -> np.ndarray:
        """The avatar image for this frame's tracked face (None: face lost), ``dt`` seconds after the last."""
        return self.render_pose(self.pose(face, dt))

    def close(self) -> None:
        self.tracker.close()
        self.renderer.release()

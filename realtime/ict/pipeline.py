"""The embedded-default pipeline in one object: driver frame in, avatar image out.

    pipeline = RetargetPipeline.create(PipelineOptions(identity=Path("trump.jpg")))
    face = pipeline.track(rgb, timestamp)                  # MediaPipe       } may run on a worker thread,
    geometry = pipeline.geometry(pipeline.pose(face, dt))  # retarget, mesh  } in frame order
    image = pipeline.draw(geometry)                        # ModernGL, on the GL thread

With ``more_identities``, every identity is prepared at the start (each with its own renderer holding its texture and
eye colours on the GPU), and `select_identity` switches between them at once, from any thread: the next geometry is
posed on the selected head, and each geometry is drawn with the identity it was posed for.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import moderngl
import numpy as np
from tqdm import tqdm

from realtime import assets
from realtime.head import AvatarGeometry, AvatarPose, model_matrix
from realtime.ict.avatar import Avatar, build_avatar_mesh, hidden_triangles
from realtime.ict.identity import Identity, prepare_identity
from realtime.ict.landmark_map import LandmarkMap
from realtime.ict.model import IctModel
from realtime.ict.photo_look import head_frame, photo_look_renderer, photo_pose
from realtime.ict.retarget import Retargeter, RetargetOptions
from realtime.io.images import read_image
from realtime.paths import cache_dir
from realtime.rendering.renderer import OFFSCREEN, AvatarRenderer, RenderOptions, create_context
from realtime.tracking.head_pose import CanonicalFrame
from realtime.tracking.tracker import FaceObservation, FaceTracker, FaceTrackerOptions, RunningMode

log = logging.getLogger(__name__)

HEAD_PIVOT = np.array([0.0, -2.0, -1.0], np.float32)  # roughly where the head turns on the neck, model space (cm)


@dataclass(frozen=True)
class PipelineOptions:
    identity: Path  # the identity shown first
    more_identities: tuple[Path, ...] = ()  # prepared at the start too; `RetargetPipeline.select_identity` switches
    face: int | None = None  # which face of each identity photo (1 is the leftmost); None: the largest
    render: RenderOptions = field(default_factory=RenderOptions)
    retarget: RetargetOptions = field(default_factory=RetargetOptions)
    background_image: Path | None = None
    use_cache: bool = True
    gl_backend: str | None = OFFSCREEN  # the platform's off-screen context (EGL on Linux), or a glcontext backend
    look: str = "head"  # "photo": the identity photo comes alive; "head": the head alone on a background


@dataclass(frozen=True, eq=False)
class IdentityGeometry(AvatarGeometry):
    identity: int = 0  # the prepared identity it was posed for, and is drawn with


@dataclass(frozen=True, eq=False)
class PreparedIdentity:
    """An identity ready to be shown: its head to pose, and a renderer holding its texture and materials."""

    identity: Identity
    avatar: Avatar
    renderer: AvatarRenderer
    frame: CanonicalFrame | None = None  # the photo look's: what the driver's head motion moves


class RetargetPipeline:
    """Tracker, retargeter, and the avatars and renderers of one or more identities. Create it on the GL thread."""

    def __init__(
        self,
        ctx: moderngl.Context,
        model: IctModel,
        identities: list[PreparedIdentity],
        tracker: FaceTracker,
        options: PipelineOptions,
    ) -> None:
        self.ctx = ctx
        self.model = model
        self.identities = identities
        self.tracker = tracker
        self.options = options
        self.retargeter = Retargeter(model.expression_names, options.retarget)
        self.selected = 0

    @classmethod
    def create(cls, options: PipelineOptions, ctx: moderngl.Context | None = None) -> "RetargetPipeline":
        model_path = assets.ict_model_path()
        assets.face_landmarker_path()  # fail early, with the fix, if the tracker model is missing
        model = IctModel.load(model_path)
        background = None
        if options.background_image is not None:
            background = read_image(options.background_image, "background image")
        own_context = ctx is None
        ctx = ctx or create_context(options.gl_backend)
        photos = (options.identity, *options.more_identities)
        landmark_vertices = LandmarkMap.load().vertex_ids  # what evaluation reads on a posed head
        identities: list[PreparedIdentity] = []
        try:
            for photo in tqdm(photos, desc="Preparing identities", unit="identity", disable=None):
                identity = prepare_identity(
                    photo, model, model_path, ctx, cache_dir() / "identities" if options.use_cache else None,
                    face=options.face,
                )
                avatar = Avatar(model, identity.vertices)
                if options.look == "photo":
                    renderer = photo_look_renderer(ctx, model, identity, avatar, read_image(photo, "identity photo"),
                                                   options.render)
                else:
                    mesh = build_avatar_mesh(model, identity.iris_color, hidden_triangles())
                    renderer = AvatarRenderer(ctx, mesh, identity.albedo, options.render, background)
                frame = head_frame(identity) if options.look == "photo" else None
                # a frame's posing moves only what is drawn, and what evaluation reads (MediaPipe's landmarks on it)
                avatar = avatar.posing_only(np.union1d(renderer.drawn_vertices, landmark_vertices))
                identities.append(PreparedIdentity(identity, avatar, renderer, frame))
            tracker = FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.VIDEO))
        except BaseException:
            for prepared in identities:
                prepared.renderer.release()
            if own_context:
                ctx.release()
            raise
        return cls(ctx, model, identities, tracker, options)

    @property
    def identity_names(self) -> tuple[str, ...]:
        return tuple(prepared.identity.name for prepared in self.identities)

    def select_identity(self, index: int) -> None:
        """Show prepared identity ``index`` (0-based) from the next posed frame on; any thread."""
        if not 0 <= index < len(self.identities):
            raise IndexError(f"identity {index} of {len(self.identities)}")
        self.selected = index

    @property
    def identity(self) -> Identity:
        return self.identities[self.selected].identity

    @property
    def avatar(self) -> Avatar:
        return self.identities[self.selected].avatar

    @property
    def renderer(self) -> AvatarRenderer:
        return self.identities[self.selected].renderer

    def neutral_pose(self) -> AvatarPose:
        return AvatarPose(np.zeros(len(self.model.expression_names), np.float32), np.eye(3), tracked=False)

    def calibrate_neutral(self, face: FaceObservation) -> None:
        """Take ``face`` as the user's resting face (see `Retargeter.calibrate_neutral`)."""
        self.retargeter.calibrate_neutral(face)

    def track(self, rgb: np.ndarray, timestamp: float) -> FaceObservation | None:
        return self.tracker.track(rgb, timestamp)

    def pose(self, face: FaceObservation | None, dt: float) -> AvatarPose:
        return self.retargeter.update(face, dt)

    def geometry(self, pose: AvatarPose) -> IdentityGeometry:
        """The selected identity's posed mesh (numpy only: may run on a worker thread)."""
        selected = self.selected
        prepared = self.identities[selected]
        if prepared.frame is not None:
            expression, matrix = photo_pose(prepared.identity, pose, prepared.frame)
        else:
            expression, matrix = np.clip(pose.expression, 0.0, 1.0), model_matrix(pose.rotation, HEAD_PIVOT)
        vertices, normals = prepared.avatar.pose(expression)
        return IdentityGeometry(vertices, normals, matrix, identity=selected)

    def draw(self, geometry: AvatarGeometry) -> np.ndarray:
        """The avatar image (H, W, 3) uint8 RGB (on the GL thread), with the identity the geometry was posed for."""
        index = geometry.identity if isinstance(geometry, IdentityGeometry) else self.selected
        return self.identities[index].renderer.render(geometry.vertices, geometry.normals, geometry.model_matrix)

    def render_pose(self, pose: AvatarPose) -> np.ndarray:
        return self.draw(self.geometry(pose))

    def render(self, face: FaceObservation | None, dt: float) -> np.ndarray:
        """The avatar image for this frame's tracked face (None: face lost), ``dt`` seconds after the last."""
        return self.render_pose(self.pose(face, dt))

    def close(self) -> None:
        self.tracker.close()
        for prepared in self.identities:
            prepared.renderer.release()

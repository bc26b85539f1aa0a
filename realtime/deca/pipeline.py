"""The FLAME + DECA avatar: the identity's FLAME head with DECA's per-frame detail, driven by DECA's codes.

    pipeline = DecaPipeline.create(DecaOptions(identity=Path("trump.jpg"), deca_data=Path("DECA/data")))

Without `deca_model.tar` (FLAME and a landmark embedding only), `track` fits FLAME's expression and jaw to the
tracker's landmarks instead (`realtime.deca.landmark_fit`), the identity is FLAME's mean head with the photo's
texture, and there is no per-frame detail.

It has the same four steps as the embedded default (`realtime.ict.pipeline.RetargetPipeline`), so the offline and live
loops drive either: `track` (MediaPipe, then DECA's crop and E_flame: the driver's 50 expression and 3 jaw values),
`pose` (ease to neutral while the face is lost), `geometry` (FLAME with the identity's shape, D_detail on the driver's
jaw and expression with the identity's detail code; numpy and torch, any thread), `draw` (the detail normal map on
the GPU, then the render; the GL thread). As DECA's `demo_transfer`, the identity keeps its shape, albedo, light and
detail code; the head rotation comes from the tracker, as on the default path.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import moderngl
import numpy as np

from realtime.compositing.segmentation import person_mask
from realtime.deca.crop import deca_crop
from realtime.deca.data import DecaData
from realtime.deca.detail_normals import DetailNormalPass
from realtime.deca.flame import (
    FlameIdentity,
    FlameModel,
    HeadTemplate,
    flame_identity,
    flame_vertices,
    import_flame,
    read_head_template,
)
from realtime.deca.landmark_fit import ExpressionFitter, FlameLandmarks
from realtime.deca.photo_look import (
    DecaPhotoView,
    head_frame,
    photo_codes,
    photo_look_renderer,
    photo_matrix,
    with_cavity,
)
from realtime.errors import UserError
from realtime.geometry.fitting import fit_weak_perspective, weak_perspective_projection
from realtime.geometry.normals import VertexNormals
from realtime.head import GAZE_DEGREES, AvatarGeometry, AvatarPose, HeadOffset, blend, model_matrix
from realtime.io.images import read_image
from realtime.paths import cache_dir, engines_dir
from realtime.rendering.photo_texture import bake_photo, face_region_mask
from realtime.rendering.renderer import AvatarMesh, AvatarRenderer, RenderOptions, create_context
from realtime.tracking.faces import find_identity_face
from realtime.tracking.filtering import OneEuroParameters, PoseFilter, head_filter_parameters
from realtime.tracking.head_pose import HeadMotion, head_rotation
from realtime.tracking.tracker import FaceObservation, FaceTracker, FaceTrackerOptions, RunningMode

log = logging.getLogger(__name__)

N_EXP, N_JAW, N_EYES = 50, 3, 6  # a DECA pose: expression code, jaw rotation, both eyes' rotations (FLAME's order)
CODE_FILTER_TUNING = (2.0, 20.0)  # One Euro min cutoff (Hz) and beta at smoothing 1, for the codes and eyes
ATLAS_SIZE = (1024, 1024)  # the identity texture, from the full-resolution photo


@dataclass(frozen=True)
class DecaOptions:
    identity: Path
    deca_data: Path
    face: int | None = None  # which face of the identity photo (1 is the leftmost); None: the largest
    size: tuple[int, int] = (640, 480)
    style: str = "textured"  # "textured" (photo texture, the identity's SH light) or "shape" (DECA's grey look)
    backend: str = "auto"  # DECA's networks: compiled engines when valid ones exist, else torch (see DecaModel.load)
    detail: bool = True
    head_pose: bool = True
    background: tuple[float, float, float] = (0.086, 0.094, 0.114)
    ease_seconds: float = 0.4
    smoothing: float = 1.0  # strength of the temporal filter on the codes and head pose (see RetargetOptions)
    look: str = "head"  # "photo": the identity photo comes alive (textured style only); "head": the head alone


@dataclass(frozen=True, eq=False)
class DecaModel:
    """Everything loaded once from the user's DECA data folder."""

    data: DecaData
    flame: FlameModel
    template: HeadTemplate
    encoder: object | None  # realtime.deca.networks.DecaEncoder (torch, imported lazily); None: FLAME only
    landmarks: FlameLandmarks | None  # how tracker landmarks sit on FLAME (drives it without the networks)
    face_eye_mask: np.ndarray  # (256, 256) DECA rows
    fixed_displacement: np.ndarray  # (256, 256) DECA rows

    @classmethod
    def load(cls, folder: Path, backend: str = "auto") -> "DecaModel":
        """``backend``: "auto" (the best valid compiled engine in engines/, else torch), "onnxruntime",
        "tensorrt" (compiled engines only; see tools/build_engine.py) or "torch"."""
        data = DecaData.open(folder)
        flame = import_flame(data.path("generic_model.pkl"), cache_dir() / "deca")
        template = read_head_template(data.path("head_template.obj"), flame)
        encoder, landmarks = None, None
        if data.has_networks:
            from realtime.deca.networks import DecaEncoder, load_deca_checkpoint

            if backend != "torch":
                from realtime.deca.engines import load_engines

                encoder = load_engines(data.folder, engines_dir(), backend)
                if encoder is None and backend != "auto":
                    raise UserError(f"no valid {backend} engines for {data.path('deca_model.tar')}: build them with "
                                    f"`python tools/build_engine.py --deca-data {data.folder}` or use --backend auto")
                if encoder is not None:
                    log.info("DECA networks on compiled engines: %s", encoder.describe())
            if encoder is None:
                encoder = DecaEncoder(load_deca_checkpoint(data.path("deca_model.tar")))
        embedding = data.embedding()
        if embedding is not None:
            landmarks = (FlameLandmarks.from_mediapipe_embedding(embedding) if embedding.suffix == ".npz"
                         else FlameLandmarks.from_deca_embedding(embedding))
        if encoder is None:
            log.info("no deca_model.tar: FLAME is driven by the tracker's landmarks through %s", embedding.name)
        return cls(data, flame, template, encoder, landmarks, data.uv_mask(), data.fixed_displacement())


@dataclass(frozen=True, eq=False)
class DecaFace:
    """A tracked driver face with DECA's codes for it."""

    observation: FaceObservation
    exp: np.ndarray  # (50,)
    jaw: np.ndarray  # (3,) axis-angle


@dataclass(frozen=True, eq=False)
class DecaIdentity:
    name: str
    flame: FlameIdentity
    detail: np.ndarray  # (128,) DECA's detail code
    light: np.ndarray  # (9, 3) spherical-harmonics light
    albedo: np.ndarray  # (H, W, 3) uint8, GL rows, the head template's UV layout
    photo_view: DecaPhotoView  # how the photo shows the head, for the photo look


def photo_projection(cam: np.ndarray, crop_transform: np.ndarray) -> np.ndarray:
    """(4, 4) FLAME space -> photo pixels and depth, from DECA's orthographic camera in the 224 crop.

    DECA: x_ndc = s (X + tx), y_ndc = s (Y + ty), image y down; crop pixel = (ndc + 1) 112 - 0.5 (pixel centres);
    then back from the crop to the photo through the inverse of the crop's similarity transform.
    """
    s, tx, ty = (float(v) for v in cam)
    half = 112.0
    to_crop = np.array([
        [half * s, 0, 0, half * s * tx + half - 0.5],
        [0, -half * s, 0, -half * s * ty + half - 0.5],
        [0, 0, -half * s, 0],
        [0, 0, 0, 1],
    ])
    to_photo = np.linalg.inv(crop_transform)
    scale = np.sqrt(abs(np.linalg.det(to_photo[:2, :2])))
    lift = np.eye(4)
    lift[:2, :2], lift[:2, 3], lift[2, 2] = to_photo[:2, :2], to_photo[:2, 2], scale
    return (lift @ to_crop).astype(np.float32)


def full_pose(global_rotation: np.ndarray, jaw: np.ndarray, eyes: np.ndarray | None = None) -> np.ndarray:
    """FLAME's 15 pose values [global, neck, jaw, left eye, right eye]; the neck at rest, as DECA."""
    pose = np.zeros(15, np.float32)
    pose[:3], pose[6:9] = global_rotation, jaw
    if eyes is not None:
        pose[9:15] = eyes
    return pose


def eye_rotations(face: FaceObservation) -> np.ndarray:
    """(6,) axis-angle rotations of FLAME's left and right eyes from MediaPipe's eyeLook scores (DECA regresses no
    gaze); as the ICT avatar's eyeballs, 30 degrees sideways and 25 up or down at full score."""
    rotations = []
    for side, outward in (("Left", 1.0), ("Right", -1.0)):  # FLAME's +x is the subject's left
        look = {d: face.blendshape(f"eyeLook{d}{side}") for d in ("Out", "In", "Up", "Down")}
        yaw = outward * (look["Out"] - look["In"]) * GAZE_DEGREES[0]  # about +y: the gaze turns towards +x
        pitch = (look["Up"] - look["Down"]) * GAZE_DEGREES[1]  # about -x: the gaze turns towards +y
        rotations += [-np.radians(pitch), np.radians(yaw), 0.0]
    return np.array(rotations, np.float32)


def fit_photo(model: DecaModel, photo: np.ndarray,
              face: FaceObservation) -> tuple[dict, FlameIdentity, np.ndarray, np.ndarray]:
    """The photo's codes, its FLAME identity, the projection from (posed) FLAME space into the photo, and the
    rotation from that space to the camera (DECA's camera does not rotate: FLAME's global pose holds the head's)."""
    if model.encoder is not None:
        crop, transform = deca_crop(photo, face.landmarks)
        code = model.encoder.encode(crop)
        code["detail"] = model.encoder.encode_detail(crop)
        projection = photo_projection(code["cam"], transform)
        return code, flame_identity(model.flame, code["shape"]), projection, np.eye(3)
    identity = flame_identity(model.flame, np.zeros(100, np.float32))  # FLAME's mean head: no shape encoder
    fitter = ExpressionFitter(model.flame, identity, model.landmarks)
    exp, jaw, _ = fitter.fit(face.landmarks)
    points, pixels = fitter.points(exp, jaw), face.landmarks[fitter.landmarks.mediapipe, :2]
    rotation, scale, translation = fit_weak_perspective(points, pixels, np.ones(len(points)))
    projection = weak_perspective_projection(rotation, scale, translation)
    flat_light = np.zeros((9, 3), np.float32)
    flat_light[0] = 1 / 0.282095  # an even white light: the photo texture as it is
    code = {"exp": exp, "pose": np.r_[np.zeros(3), jaw], "tex": np.zeros(50), "light": flat_light,
            "detail": np.zeros(128, np.float32)}
    return code, identity, projection, rotation


def prepare_deca_identity(model: DecaModel, photo_path: Path, ctx: moderngl.Context,
                          choice: int | None = None) -> DecaIdentity:
    """DECA's codes for the photo, its FLAME head, and its texture baked from the full-resolution photo.

    ``choice``: which face of the photo (1 is the leftmost); None: the largest (`realtime.tracking.faces`)."""
    photo = read_image(photo_path, "identity photo")
    face = find_identity_face(photo, photo_path, choice)
    code, identity, projection, rotation = fit_photo(model, photo, face)
    pose = full_pose(code["pose"][:3], code["pose"][3:6])
    posed = flame_vertices(model.flame, identity, code["exp"], pose)
    template = model.template
    normals = VertexNormals(template.render_vertex[template.triangles], len(posed))(posed)
    atlas = bake_photo(
        ctx,
        posed[template.render_vertex],
        normals[template.render_vertex],
        template.triangles,
        template.render_uv,
        photo,
        face_region_mask(face.landmarks, photo.shape, feather=0.04 * np.ptp(face.landmarks[:, 0])),
        projection,
        ATLAS_SIZE,
    )
    mask = cv2.resize(model.face_eye_mask[::-1], ATLAS_SIZE, interpolation=cv2.INTER_LINEAR)  # to GL rows
    confidence = np.clip(atlas[..., 3], 0, 1) * mask
    base = model.data.bfm_albedo(code["tex"])
    base = model.data.mean_texture() if base is None else base
    base = cv2.resize(base, ATLAS_SIZE, interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
    albedo = atlas[..., :3] * confidence[..., None] + base * (1 - confidence[..., None])
    return DecaIdentity(
        name=Path(photo_path).name,
        flame=identity,
        detail=code["detail"],
        light=np.asarray(code["light"], np.float32).reshape(9, 3),
        albedo=np.clip(albedo * 255 + 0.5, 0, 255).astype(np.uint8),
        photo_view=DecaPhotoView(np.asarray(code["exp"], np.float32), pose, rotation, projection, face.landmarks,
                                 person_mask(photo)),
    )


@dataclass(frozen=True, eq=False)
class DecaGeometry(AvatarGeometry):
    displacement: np.ndarray | None = field(default=None)  # (256, 256) D_detail output, DECA rows


class DecaPipeline:
    """Tracker, DECA encoder, FLAME and renderer for one identity; the `RetargetPipeline` interface."""

    def __init__(self, ctx: moderngl.Context, model: DecaModel, identity: DecaIdentity, tracker: FaceTracker,
                 options: DecaOptions) -> None:
        self.ctx, self.model, self.identity, self.tracker, self.options = ctx, model, identity, tracker, options
        template = model.template
        self._normals = VertexNormals(template.render_vertex[template.triangles], model.flame.v_template.shape[0])
        low, high = identity.flame.v_shaped.min(axis=0), identity.flame.v_shaped.max(axis=0)
        height = float(high[1] - low[1])
        render = RenderOptions(
            size=options.size,
            background=options.background,
            framing_height=1.45 * height,
            target=tuple(float(v) for v in (low + high) / 2),
            lighting="sh" if options.style == "textured" else "shape",
        )
        mesh = AvatarMesh(
            triangles=template.triangles.astype(np.int32),
            render_vertex=template.render_vertex.astype(np.int32),
            uv=template.render_uv.astype(np.float32),
            material=np.tile(np.array([[0.7, 0.7, 0.7, 1.0]], np.float32), (len(template.render_vertex), 1)),
        )
        self.photo_look = options.look == "photo" and options.style == "textured"
        self._cavity = None
        if self.photo_look:
            view = identity.photo_view
            rest = flame_vertices(model.flame, identity.flame, view.exp, view.pose)
            self.renderer, self._cavity = photo_look_renderer(
                ctx, template, model.flame.faces, identity.albedo, view, rest, self._normals(rest),
                read_image(options.identity, "identity photo"), render)
            self._frame = head_frame(rest, model.flame.faces, identity.flame, view, model.landmarks)
        else:
            self.renderer = AvatarRenderer(ctx, mesh, identity.albedo, render)
        self.renderer.set_sh_light(identity.light)
        self._detail = None
        self._fitter = None
        if model.encoder is None:
            self._fitter = ExpressionFitter(model.flame, identity.flame, model.landmarks)
        elif options.detail:
            self._detail = DetailNormalPass(ctx, template.render_uv, template.triangles, model.face_eye_mask,
                                            model.fixed_displacement)
            self.renderer.set_normal_map(self._detail.texture)
        self._pivot = identity.flame.joints[1]  # the neck joint
        self._pose = self.neutral_pose()
        self._rest = np.zeros(N_EXP + N_JAW + N_EYES, np.float32)
        self._filter = None
        if options.smoothing > 0:
            min_cutoff, beta = CODE_FILTER_TUNING
            self._filter = PoseFilter(OneEuroParameters(min_cutoff / options.smoothing, beta / options.smoothing),
                                      head_filter_parameters(options.smoothing))
        self._motion = HeadMotion(head_filter_parameters(options.smoothing) if options.smoothing > 0 else None)

    @classmethod
    def create(cls, options: DecaOptions, ctx: moderngl.Context | None = None) -> "DecaPipeline":
        if options.style not in ("textured", "shape"):
            raise UserError(f"unknown style {options.style!r}: use --style textured or --style shape")
        model = DecaModel.load(options.deca_data, options.backend)
        ctx = ctx or create_context()
        identity = prepare_deca_identity(model, options.identity, ctx, options.face)
        tracker = FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.VIDEO))
        return cls(ctx, model, identity, tracker, options)

    @property
    def identity_names(self) -> tuple[str, ...]:
        return (self.options.identity.name,)

    def select_identity(self, index: int) -> None:
        """This path animates one identity (the command line refuses several)."""
        if index != 0:
            raise IndexError(f"identity {index} of 1")

    def neutral_pose(self) -> AvatarPose:
        return AvatarPose(np.zeros(N_EXP + N_JAW + N_EYES, np.float32), np.eye(3), tracked=False)

    def track(self, rgb: np.ndarray, timestamp: float) -> DecaFace | None:
        face = self.tracker.track(rgb, timestamp)
        if face is None:
            if self._fitter is not None:
                self._fitter.reset()
            return None
        if self._fitter is not None:
            exp, jaw, _ = self._fitter.fit(face.landmarks)
            return DecaFace(face, exp.astype(np.float32), jaw.astype(np.float32))
        crop, _ = deca_crop(rgb, face.landmarks)
        code = self.model.encoder.encode(crop)
        return DecaFace(face, np.asarray(code["exp"], np.float32), np.asarray(code["pose"][3:6], np.float32))

    def calibrate_neutral(self, face: DecaFace) -> None:
        self._rest = np.r_[face.exp, face.jaw, np.zeros(N_EYES)].astype(np.float32)
        if self.options.head_pose:
            self._motion.calibrate(face.observation.landmarks)

    def pose(self, face: DecaFace | None, dt: float) -> AvatarPose:
        if face is not None:
            rotation = head_rotation(face.observation.transform) if self.options.head_pose else np.eye(3)
            codes = np.r_[face.exp, face.jaw, eye_rotations(face.observation)] - self._rest
            if self._filter is not None:
                codes, rotation = self._filter(codes, rotation, dt)
            offset = HeadOffset()
            if self.options.head_pose:
                offset = HeadOffset(*self._motion(face.observation.landmarks, dt))
            self._pose = AvatarPose(codes.astype(np.float32), rotation, True, offset)
        else:
            if self._filter is not None:
                self._filter.reset()
            self._motion.reset_filter()
            amount = 1.0 - np.exp(-max(dt, 0.0) / self.options.ease_seconds)
            self._pose = blend(self._pose, self.neutral_pose(), amount)
        return self._pose

    def geometry(self, pose: AvatarPose) -> DecaGeometry:
        exp, jaw, eyes = np.split(pose.expression, [N_EXP, N_EXP + N_JAW])
        if self.photo_look:
            view = self.identity.photo_view
            exp, flame_pose = photo_codes(view, exp, jaw, eyes)
            jaw = flame_pose[6:9]
            matrix = photo_matrix(view, pose.offset, self._frame)
        else:
            flame_pose, matrix = full_pose(np.zeros(3), jaw, eyes), model_matrix(pose.rotation, self._pivot)
        vertices = flame_vertices(self.model.flame, self.identity.flame, exp, flame_pose)
        normals = self._normals(vertices)
        displacement = None
        if self._detail is not None:
            displacement = self.model.encoder.decode_detail(jaw, exp, self.identity.detail)
        if self._cavity is not None:
            vertices = with_cavity(vertices, self._cavity, self.identity.photo_view.rotation)
            normals = np.r_[normals, [[0.0, 0.0, 1.0]]].astype(np.float32)
        return DecaGeometry(vertices, normals, matrix, displacement)

    def draw(self, geometry: DecaGeometry) -> np.ndarray:
        if self._detail is not None and geometry.displacement is not None:
            index = self.model.template.render_vertex
            self._detail.run(geometry.vertices[index], geometry.normals[index], geometry.displacement)
        return self.renderer.render(geometry.vertices, geometry.normals, geometry.model_matrix)

    def render_pose(self, pose: AvatarPose) -> np.ndarray:
        return self.draw(self.geometry(pose))

    def render(self, face: DecaFace | None, dt: float) -> np.ndarray:
        return self.render_pose(self.pose(face, dt))

    def close(self) -> None:
        self.tracker.close()
        if self._detail is not None:
            self._detail.release()
        self.renderer.release()

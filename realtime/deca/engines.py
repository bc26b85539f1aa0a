"""Compiled DECA networks (ONNX Runtime on the CPU, TensorRT on an NVIDIA GPU) behind DecaEncoder's interface.

``tools/build_engine.py`` exports E_flame, E_detail and D_detail to ONNX and compiles them into ``engines/`` with a
``manifest.json``; `load_engines` picks the best valid engine per network and returns a `Runner` with the same
methods as `realtime.deca.networks.DecaEncoder` (``encode``, ``encode_detail``, ``decode_detail``), or None when
nothing valid is there (the app then runs the networks in torch).

Preference, per network: TensorRT > ONNX Runtime INT8 > ONNX Runtime fp32. An engine is used only if its manifest
entry names the sha256 of the current ``deca_model.tar`` (else it is *stale*: built from other weights) and the
engine file's sha256 matches the manifest (else it is corrupt or tampered with). Refused engines are logged with the
command that rebuilds them; they are never used silently.

Accuracy bounds for INT8, checked by the build against fp32 torch on the calibration crops (an engine over any bound
is refused: not written to the manifest, and logged with the figure that failed). Two kinds of bound:

1. Each output against its own variation. E_flame's exp (50) and jaw (pose[3:6], 3) and E_detail's detail code
   (128) are bounded per coefficient: over the calibration crops, the max abs error of coefficient j must stay below
   CODE_ERROR_FRACTION (10 %) of coefficient j's standard deviation over those crops (`coefficient_bounds`: the
   column-wise std of the crops-by-coefficients array, never the std of the whole array, which measures the spread
   *between* coefficients, i.e. their different means, and says nothing about how each one moves).

   * Why the std over frames: it is how far the coefficient moves across faces and expressions, the signal that
     retargeting transfers; an error of a tenth of it keeps every transferred coefficient 20 dB above the engine's
     error in the worst crop. The frame-to-frame change is not used: the calibration crops are photos and a few
     evenly spaced frames of each clip, not consecutive frames, so their successive differences mix different people
     and seconds of motion; and in a live stream most of a single frame's change is tracker noise that the One Euro
     filter removes, a poor yardstick for the signal.
   * A coefficient that (nearly) does not move over the crops would get a bound of ~0, which no engine meets (the
     fp32 engines already differ from torch by ~1e-7 to 1e-5 from summation order). Each bound is therefore at least
     CODE_ERROR_FLOOR = 1e-4 in the coefficient's own units (a std below 1e-3 counts as "not moving"), an error
     nothing downstream can show: exp coefficients are FLAME expression-PCA weights of order one, whose unit moves
     vertices by millimetres, so 1e-4 moves them by well under a micrometre; jaw is in radians, and 1e-4 rad moves
     the chin ~10 um at ~0.1 m from the joint; the detail code reaches the screen only through D_detail, whose normals
     are checked below. The floor is ten times or more the fp32 round-off, and whatever it lets through is still held
     by the downstream checks.
   * The rest of the 236-d code (shape, texture, light, camera) is reported ("code") but not bounded: it is read
     once per identity photo, not per frame, so it cannot jitter. (`realtime.deca.pipeline.fit_photo` reads it with
     the same engine, so an INT8 E_flame's shape error does reach the identity's mesh; ``vertex_mm`` below uses the
     fp32 shape and does not cover it.)
   * D_detail's displacement keeps an absolute bound, max abs error below DISPLACEMENT_ERROR_BOUND = 1e-3 m (a tenth
     of the decoder's range of +-0.01 m, MAX_Z), as a sanity limit: the displacement only shades, through its
     gradient, so its accuracy is judged on the normal map it gives (below), not texel by texel.

2. What the app shows, with the other networks in fp32 (`head_vertices`, `DetailNormals`; figures in the manifest's
   ``downstream_errors`` for every engine, with ``max`` and ``p95`` over the crops):

   * ``vertex_mm``: FLAME (`realtime.deca.flame`) with the fp32 shape and, for each crop, exp and jaw from the engine
     vs from fp32 torch (global rotation, neck and eyes zero: the app takes the head rotation from the tracker); the
     distance of each of the 5023 vertices, in millimetres. Bound: max below VERTEX_ERROR_BOUND_MM = 1 mm. The app
     frames the head (with its neck) at 1/1.45 of the frame height, ~330 rows of the default 640 x 480: 1.2 to 1.6
     pixels per mm for a FLAME head of 0.2 to 0.27 m, so 1 mm is a pixel or two at most, and a tenth of the ~10 mm a
     mouth corner moves in a smile. Only E_flame moves vertices (the detail networks' figure is 0 by construction).
   * ``normal_degrees``: DECA's detail normal map (`realtime.deca.detail_normals`, on the GPU) of the coarse mesh and
     the displacement, from the engine's outputs vs from fp32 torch: E_flame's exp and jaw change both the mesh and
     D_detail's input, E_detail's code D_detail's input, D_detail the displacement itself. The angle between the
     two normals on every texel where the detail applies (``uv_face_eye_mask`` > 0, covered by the mesh), in
     degrees. Bounds: p95 below NORMAL_ERROR_BOUND_P95_DEGREES = 2 degrees: a Lambertian shade moves by at most
     sin(2 deg) = 3.5 % of the light, near the smallest brightness step one notices (a Weber fraction of a few %),
     on all but a twentieth of the texels; max below NORMAL_ERROR_BOUND_MAX_DEGREES = 10 degrees (at most 17 % of
     the light), so that the rest are isolated texels (about a pixel each on screen) and not a crease drawn where
     the face has none.

A figure that measured nothing (no texel) is NaN and counts as over its bound. TensorRT and ONNX Runtime fp32
engines get the same figures in the manifest but are not bounded (float engines of the same graph: round-off).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from realtime.deca.flame import FlameModel, HeadTemplate

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
CHECKPOINT_NAME = "deca_model.tar"
REBUILD_HINT = "python tools/build_engine.py --deca-data DIR"
NETWORKS = ("E_flame", "E_detail", "D_detail")
BACKENDS = ("auto", "onnxruntime", "tensorrt")
ORT_THREADS = 1  # beside MediaPipe and llvmpipe on 2 cores, one thread per network is faster overall (bench:
# whole DECA pipeline 20 -> 26 frames/s offline, 21 -> 27 live) than two that contend with them

# Per network: input name and shape, output name and shape (batch 1, fixed 224 x 224 for the encoders).
INPUTS = {"E_flame": ("images", (1, 3, 224, 224)), "E_detail": ("images", (1, 3, 224, 224)),
          "D_detail": ("latent", (1, 181))}
OUTPUTS = {"E_flame": ("code", (1, 236)), "E_detail": ("detail", (1, 128)),
           "D_detail": ("displacement", (1, 1, 256, 256))}

# The INT8 bounds stated in the module docstring.
CODE_ERROR_FRACTION = 0.10  # of each coefficient's own standard deviation over the calibration crops
CODE_ERROR_FLOOR = 1e-4  # the least bound of any coefficient, in its own units (a coefficient that does not move)
DISPLACEMENT_ERROR_BOUND = 1e-3  # metres, max abs over texels and crops
VERTEX_ERROR_BOUND_MM = 1.0  # max over vertices and crops
NORMAL_ERROR_BOUND_P95_DEGREES = 2.0  # 95th percentile over the detail texels of all crops
NORMAL_ERROR_BOUND_MAX_DEGREES = 10.0  # max over the same texels
BOUNDED_CODES = {"E_flame": ("exp", "jaw"), "E_detail": ("detail",)}
HEAD_FILES = ("generic_model.pkl", "head_template.obj", "uv_face_eye_mask.png", "fixed_displacement_256.npy")

# Engines ranked best first: (backend, precision).
PREFERENCE = (("tensorrt", "fp16"), ("tensorrt", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "fp32"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def coefficient_bounds(values: np.ndarray) -> np.ndarray:
    """The error bound of each coefficient from its fp32 values: (N, C) over N calibration crops -> (C,).

    CODE_ERROR_FRACTION of the coefficient's standard deviation over the crops (column-wise), at least
    CODE_ERROR_FLOOR.
    """
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(f"expected (crops >= 2, coefficients) values, got shape {values.shape}")
    return np.maximum(CODE_ERROR_FRACTION * values.std(axis=0), CODE_ERROR_FLOOR)


def error_bounds(network: str, reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The INT8 bound of each coefficient of ``network``'s bounded outputs, from fp32 reference values.

    ``reference`` holds the fp32 torch values stacked over the crops: "exp" (N, 50) and "jaw" (N, 3) for E_flame,
    "detail" (N, 128) for E_detail, each giving a (C,) array of bounds (`coefficient_bounds`); D_detail's
    displacement bound is absolute, a (1,) array that holds for every texel.
    """
    if network in BOUNDED_CODES:
        return {name: coefficient_bounds(reference[name]) for name in BOUNDED_CODES[network]}
    return {"displacement": np.array([DISPLACEMENT_ERROR_BOUND])}


def coefficient_errors(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Max abs error of each coefficient over the crops: (N, ...) fp32 and engine values -> (C,), C = the product of
    the trailing dimensions."""
    difference = np.asarray(candidate, np.float64) - np.asarray(reference, np.float64)
    return np.abs(difference.reshape(len(difference), -1)).max(axis=0)


def code_checks(network: str, reference: dict[str, np.ndarray],
                outputs: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Each bounded output's worst coefficient: the one with the largest error relative to its bound.

    ``reference`` and ``outputs``: fp32 torch and engine values stacked over the crops under the same names (see
    `error_bounds`). Returns per output {"coefficient": index, "error": its max abs error, "bound": its bound}; the
    output is within bounds iff error < bound.
    """
    checks: dict[str, dict[str, float]] = {}
    for name, bounds in error_bounds(network, reference).items():
        errors = coefficient_errors(reference[name], outputs[name])
        if len(bounds) == 1:  # one bound for every value (D_detail's displacement)
            checks[name] = {"error": float(errors.max()), "bound": float(bounds[0])}
            continue
        worst = int(np.argmax(errors / bounds))
        checks[name] = {"coefficient": worst, "error": float(errors[worst]), "bound": float(bounds[worst])}
    return checks


def downstream_checks(downstream: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The bounded downstream figures, {"vertex_mm_max", "normal_degrees_p95", "normal_degrees_max"} -> {"error",
    "bound"}, from {"vertex_mm": {"max", "p95"}, "normal_degrees": {"max", "p95"}} (the build's downstream errors)."""
    bounds = {"vertex_mm_max": VERTEX_ERROR_BOUND_MM, "normal_degrees_p95": NORMAL_ERROR_BOUND_P95_DEGREES,
              "normal_degrees_max": NORMAL_ERROR_BOUND_MAX_DEGREES}
    checks = {}
    for name, bound in bounds.items():
        figure, statistic = name.rsplit("_", 1)
        checks[name] = {"error": downstream[figure][statistic], "bound": bound}
    return checks


def over_bounds(checks: dict[str, dict[str, float]]) -> list[str]:
    """One phrase per check whose error is not below its bound (a NaN error is over), e.g. "exp coefficient 7 max
    error 0.0029 >= bound 0.0001", "normal_degrees_p95 2.5 >= bound 2"."""
    over = []
    for name, check in checks.items():
        if not check["error"] < check["bound"]:
            where = f" coefficient {check['coefficient']}" if "coefficient" in check else ""
            what = "" if name.endswith(("_max", "_p95")) else " max error"
            over.append(f"{name}{where}{what} {check['error']:.3g} >= bound {check['bound']:.3g}")
    return over


# ----------------------------------------------------------------------------------------------------------------------
# What the outputs become on screen: FLAME vertices and DECA's detail normal map.


@dataclass(frozen=True, eq=False)
class HeadModel:
    """FLAME, its UV layout and the inputs of DECA's detail normals, from the user's DECA data folder."""

    flame: FlameModel
    template: HeadTemplate
    face_eye_mask: np.ndarray  # (256, 256) in [0, 1], DECA rows
    fixed_displacement: np.ndarray  # (256, 256) metres, DECA rows

    @classmethod
    def load(cls, deca_data: Path) -> HeadModel:
        """The HEAD_FILES of ``deca_data`` (a `UserError` naming the missing ones)."""
        from realtime.deca.data import DecaData
        from realtime.deca.flame import import_flame, read_head_template
        from realtime.errors import UserError
        from realtime.paths import cache_dir

        data = DecaData(Path(deca_data))
        missing = [name for name in HEAD_FILES if not data.has(name)]
        if missing:
            raise UserError(f"{data.folder} lacks {', '.join(missing)}: the INT8 accuracy check runs FLAME and DECA's "
                            "detail normals; copy them from your DECA and FLAME downloads, or build --precision fp32")
        flame = import_flame(data.path("generic_model.pkl"), cache_dir() / "deca")
        return cls(flame, read_head_template(data.path("head_template.obj"), flame), data.uv_mask(),
                   data.fixed_displacement())


def head_vertices(flame: FlameModel, shape: np.ndarray, exp: np.ndarray, jaw: np.ndarray) -> np.ndarray:
    """FLAME heads (N, 5023, 3) float32 in metres from shape (N, 100), exp (N, 50) and jaw (N, 3) axis-angle; global
    rotation, neck and eyes zero (the app applies the tracked head rotation to the whole mesh)."""
    from realtime.deca.flame import flame_identity, flame_vertices

    heads = []
    for beta, psi, theta in zip(shape, exp, jaw, strict=True):
        pose = np.zeros(15, np.float32)
        pose[6:9] = theta  # [global, neck, jaw, left eye, right eye]
        heads.append(flame_vertices(flame, flame_identity(flame, beta), psi, pose))
    return np.stack(heads)


def vertex_errors_mm(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Distance of each vertex in millimetres: (N, V, 3) metres twice -> (N, V)."""
    return 1000.0 * np.linalg.norm(np.asarray(candidate, np.float64) - reference, axis=-1)


class DetailNormals:
    """DECA's detail normal maps (`realtime.deca.detail_normals.DetailNormalPass`) of heads and displacements.

    ``ctx``: an OpenGL 3.3 context (current while this is used); release() frees the GPU resources.
    """

    def __init__(self, ctx: Any, head: HeadModel) -> None:
        from realtime.deca.detail_normals import DetailNormalPass
        from realtime.geometry.normals import VertexNormals

        template = head.template
        self.ctx = ctx
        self.render_vertex = template.render_vertex
        self.vertex_normals = VertexNormals(template.render_vertex[template.triangles], len(head.flame.v_template))
        with ctx:
            self.detail = DetailNormalPass(ctx, template.render_uv, template.triangles, head.face_eye_mask,
                                           head.fixed_displacement)
        self.region = head.face_eye_mask > 0

    def __call__(self, vertices: np.ndarray, displacement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Heads (N, 5023, 3) and displacements (N, 256, 256) or D_detail's (N, 1, 256, 256) -> the detail normals
        (N, 256, 256, 3) float32 in DECA rows, and where they count (N, 256, 256) bool: texels covered by the mesh
        where the detail applies (face-eye mask > 0) and the normal is (near) unit."""
        from realtime.deca.detail_normals import read_texture

        maps, valid = [], []
        with self.ctx:
            for head, uv_z in zip(vertices, np.asarray(displacement).reshape(len(vertices), 256, 256), strict=True):
                normals = self.vertex_normals(head)
                self.detail.run(head[self.render_vertex], normals[self.render_vertex], uv_z)
                texture = read_texture(self.detail.texture)
                maps.append(texture[..., :3])
                valid.append((texture[..., 3] > 0) & self.region & (np.linalg.norm(texture[..., :3], axis=-1) > 0.5))
        return np.stack(maps), np.stack(valid)

    def release(self) -> None:
        with self.ctx:
            self.detail.release()


def normal_angles_degrees(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Angles in degrees between normals (..., 3) and (..., 3) -> (...), by atan2 (arccos loses small angles)."""
    a, b = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    return np.degrees(np.arctan2(np.linalg.norm(np.cross(a, b), axis=-1), np.sum(a * b, axis=-1)))


def error_summary(errors: np.ndarray) -> dict[str, float]:
    """{"max", "p95"} of errors of any shape; NaN (over any bound) when there are none: a check that measured
    nothing must not pass."""
    errors = np.ravel(errors)
    if errors.size == 0:
        return {"max": float("nan"), "p95": float("nan")}
    return {"max": float(errors.max()), "p95": float(np.percentile(errors, 95))}


# ----------------------------------------------------------------------------------------------------------------------
# The manifest.


def read_manifest(engines_dir: Path) -> list[dict[str, Any]]:
    """The manifest's engine entries ([] when there is no manifest; a damaged manifest is logged and ignored)."""
    path = Path(engines_dir) / MANIFEST_NAME
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())["engines"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("'engines' is not a list of entries")
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning("engine manifest %s is unreadable (%s): rebuild the engines with `%s`", path, err, REBUILD_HINT)
        return []
    return entries


def write_manifest(engines_dir: Path, entries: list[dict[str, Any]]) -> Path:
    """Write the manifest atomically (a crash never leaves half a manifest)."""
    path = Path(engines_dir) / MANIFEST_NAME
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps({"version": 1, "engines": entries}, indent=2) + "\n")
    partial.replace(path)
    return path


def _validate(entry: dict[str, Any], engines_dir: Path, checkpoint_sha256: str) -> Path | None:
    """The engine file of a manifest entry if it may be used; else None, with a log line that says why."""
    name = f"{entry.get('network')} {entry.get('backend')} {entry.get('precision')} engine {entry.get('file')}"
    if entry.get("checkpoint_sha256") != checkpoint_sha256:
        log.warning("stale %s: built from another deca_model.tar (sha256 %.12s..., current %.12s...); not used: "
                    "rebuild with `%s`", name, entry.get("checkpoint_sha256"), checkpoint_sha256, REBUILD_HINT)
        return None
    path = Path(engines_dir) / str(entry.get("file"))
    if not path.is_file():
        log.warning("%s is missing; not used: rebuild with `%s`", name, REBUILD_HINT)
        return None
    if file_sha256(path) != entry.get("sha256"):
        log.warning("%s does not match its manifest hash (corrupt or modified); not used: rebuild with `%s`", name,
                    REBUILD_HINT)
        return None
    return path


# ----------------------------------------------------------------------------------------------------------------------
# Runners.


@dataclass(frozen=True, eq=False)
class Runner:
    """The three networks as engines: numpy in, numpy out, batch 1, the same methods as DecaEncoder.

    ``run`` maps a network name to a function from its input array to its output array; ``engines`` describes the
    engine used for each network (its manifest entry).
    """

    run: dict[str, Callable[[np.ndarray], np.ndarray]]
    engines: dict[str, dict[str, Any]]

    def encode(self, crop: np.ndarray) -> dict[str, np.ndarray]:
        """E_flame on a DECA crop (224, 224, 3) float32 RGB in [0, 1]: `decompose_code` of the 236-d code."""
        from realtime.deca.networks import decompose_code

        return decompose_code(self.run["E_flame"](crop_batch(crop))[0])

    def encode_detail(self, crop: np.ndarray) -> np.ndarray:
        """E_detail on a DECA crop: the (128,) detail code."""
        return self.run["E_detail"](crop_batch(crop))[0]

    def decode_detail(self, jaw: np.ndarray, exp: np.ndarray, detail: np.ndarray) -> np.ndarray:
        """D_detail: the (256, 256) float32 UV displacement for this jaw (3), exp (50) and detail code (128)."""
        from realtime.deca.networks import detail_input

        latent = detail_input(np.ravel(jaw), np.ravel(exp), np.ravel(detail))[None]
        return self.run["D_detail"](np.asarray(latent, np.float32))[0, 0]

    def describe(self) -> str:
        return ", ".join(f"{name} {e['backend']} {e['precision']}" for name, e in self.engines.items())


def crop_batch(crop: np.ndarray) -> np.ndarray:
    """A DECA crop (224, 224, 3) as the encoders' (1, 3, 224, 224) float32 input."""
    if crop.shape != (224, 224, 3):
        raise ValueError(f"a DECA crop is (224, 224, 3) RGB in [0, 1], got {crop.shape}")
    return np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32)[None]


def ort_session(path: Path, optimised_path: Path | None = None) -> Any:
    """An ONNX Runtime CPU session with 2 intra-op threads and all graph optimisations (for an INT8 QDQ model they
    fuse the QuantizeLinear/DequantizeLinear pairs into integer kernels); ``optimised_path`` makes ONNX Runtime save
    its optimised graph there (the build's fp32 engine)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = ORT_THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings such as "hardware-specific optimisations" belong to the build's log
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimised_path is not None:
        options.optimized_model_filepath = str(optimised_path)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_runner(session: Any) -> Callable[[np.ndarray], np.ndarray]:
    input_name = session.get_inputs()[0].name

    def run(array: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: array})[0]

    return run


def tensorrt_unavailable_reason() -> str | None:
    """None if torch-tensorrt imports and CUDA is usable, else why not (one line)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "no CUDA device"
        import torch_tensorrt  # noqa: F401  (registers the TensorRT runtime ops that saved engines need)
    except Exception as err:  # without CUDA, `import torch_tensorrt` raises a plain Exception, not ImportError
        first_line = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        return f"{type(err).__name__}: {first_line.strip()[:160]}"
    return None


def tensorrt_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """A torch-tensorrt engine saved as an ExportedProgram (``torch_tensorrt.save``): numpy in, numpy out, on CUDA."""
    import torch
    import torch_tensorrt  # noqa: F401

    module = torch.export.load(str(path)).module()

    def run(array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            output = module(torch.from_numpy(array).cuda())
        output = output[0] if isinstance(output, list | tuple) else output
        return output.float().cpu().numpy()

    return run


def _open(entry: dict[str, Any], path: Path) -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        if entry["backend"] == "tensorrt":
            return tensorrt_runner(path)
        return ort_runner(ort_session(path))
    except Exception as err:  # a file with the right hash that the runtime cannot open: another runtime version
        log.warning("%s engine %s could not be opened (%s: %s); not used: rebuild with `%s`", entry["backend"], path,
                    type(err).__name__, str(err).splitlines()[0][:160] if str(err) else "", REBUILD_HINT)
        return None


# ----------------------------------------------------------------------------------------------------------------------
# Choosing the engines.


def load_engines(deca_data: Path, engines_dir: Path, backend: str = "auto") -> Runner | None:
    """The best valid engine for each DECA network, or None (use torch) if a network has none.

    ``backend``: "auto" (TensorRT when it is usable, else ONNX Runtime), "onnxruntime" or "tensorrt".
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    engines_dir = Path(engines_dir)
    entries = read_manifest(engines_dir)
    if not entries:
        log.info("no compiled DECA engines in %s (build them with `%s`): using torch", engines_dir, REBUILD_HINT)
        return None
    checkpoint = Path(deca_data) / CHECKPOINT_NAME
    if not checkpoint.is_file():
        log.warning("no %s in %s: compiled engines not used", CHECKPOINT_NAME, deca_data)
        return None
    checkpoint_sha256 = file_sha256(checkpoint)

    backends = ("tensorrt", "onnxruntime") if backend == "auto" else (backend,)
    if "tensorrt" in backends and any(e.get("backend") == "tensorrt" for e in entries):
        reason = tensorrt_unavailable_reason()
        if reason is not None:
            log.warning("TensorRT is unavailable (%s): its engines are not used", reason)
            backends = tuple(b for b in backends if b != "tensorrt")

    run, chosen = {}, {}
    for network in NETWORKS:
        for wanted in PREFERENCE:
            if wanted[0] not in backends:
                continue
            entry = next((e for e in entries if (e.get("network"), e.get("backend"), e.get("precision")) ==
                          (network, *wanted)), None)
            if entry is None:
                continue
            path = _validate(entry, engines_dir, checkpoint_sha256)
            runner = _open(entry, path) if path is not None else None
            if runner is not None:
                run[network], chosen[network] = runner, entry
                break
        else:
            log.warning("no valid compiled %s engine in %s: using torch for all DECA networks; rebuild with `%s`",
                        network, engines_dir, REBUILD_HINT)
            return None
    result = Runner(run=run, engines=chosen)
    log.info("DECA engines: %s", result.describe())
    return result

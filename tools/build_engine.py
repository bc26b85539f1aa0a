"""Compile DECA's networks (E_flame, E_detail, D_detail) for this machine into engines/ with a manifest.

    python tools/build_engine.py --deca-data DIR [--precision fp32|fp16|int8] [--backend auto|onnxruntime|tensorrt]
                                 [--calibration FRAMES_OR_CLIP ...] [--out engines/] [--runs 20] [--max-crops 32]

1. Load ``DIR/deca_model.tar`` strictly and export each network to ONNX (opset 17, batch 1, fixed 224 x 224 input for
   the encoders, D_detail's input (1, 181) = jaw, exp, detail): ``engines/<net>.onnx``, standard ops only, the input of
   every backend.
2. Calibration crops: real faces, cut with DECA's crop (`realtime.deca.crop.deca_crop`) around MediaPipe's landmarks
   (IMAGE mode) from the ``--calibration`` photos / clips / folders, by default the sample media beside the checkout
   (``../shared/assets/media``: its photos and a few frames of each clip). They calibrate INT8 and measure every
   engine's error against fp32 torch; D_detail is fed the [jaw, exp, detail] that fp32 E_flame/E_detail give on them.
3. Backend ``onnxruntime`` (CPU; precision default: fp32 and int8): fp32 is ONNX Runtime's ORT_ENABLE_ALL-optimised
   graph (``<net>.fp32.onnx``, specific to this machine's CPU); int8 is a static QDQ quantisation with per-channel
   weights (``<net>.int8.onnx``, calibration table ``<net>.int8.calibration.json`` beside it). An INT8 engine over the
   accuracy bounds stated in `realtime.deca.engines` is refused: deleted, left out of the manifest, and reported.
   Those bounds hold each code coefficient's error to its own variation over the crops, and check what the app
   shows: FLAME vertices (mm) and DECA's detail normals (degrees, rendered with OpenGL), so an INT8 build needs
   FLAME's ``generic_model.pkl``, ``head_template.obj``, ``uv_face_eye_mask.png`` and
   ``fixed_displacement_256.npy`` in the same ``--deca-data`` folder (the app needs them anyway).
   Backend ``tensorrt`` (NVIDIA GPU, the ``gpu`` extra; precision fp16 by default, or fp32): torch-tensorrt compiles
   each network and saves it as an ExportedProgram (``<net>.<precision>.trt.ep``). ``auto`` uses TensorRT when it
   can, else ONNX Runtime.
4. Median latency over --runs calls (after warm-up) for torch fp32 and every engine, a summary table, and
   ``engines/manifest.json`` (see `realtime.deca.engines`): per engine its max abs errors, its vertex and
   detail-normal errors (``downstream_errors``, when the FLAME files are there) and, for INT8, every bound it met.
"""

import argparse
import datetime
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import realtime  # noqa: E402, F401, I001  (first: it sets the thread environment before numpy loads, as in the app)
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from realtime.deca import engines  # noqa: E402
from realtime.errors import UserError  # noqa: E402
from realtime.io.clips import interrupt_on_sigterm  # noqa: E402

log = logging.getLogger("build_engine")

MEDIA = PROJECT_ROOT.parent / "shared" / "assets" / "media"
OPSET = 17
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
FRAMES_PER_CLIP = 4  # evenly spaced frames of each calibration clip
WARMUP_RUNS = 3


@dataclass
class Row:
    """One line of the summary: an engine (or torch) for one network."""

    network: str
    engine: str  # "torch fp32", "onnxruntime int8", ...
    size_mb: float | None
    latency_ms: float
    errors: dict[str, float] = field(default_factory=dict)
    downstream: dict[str, dict[str, float]] = field(default_factory=dict)  # see `downstream_errors`
    status: str = "ok"


@dataclass
class BuildReport:
    backend: str
    rows: list[Row]
    refused: dict[str, str]  # "<network> <precision>" -> why
    manifest: Path | None
    crops: int


# ----------------------------------------------------------------------------------------------------------------------
# Command line.


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deca-data", type=Path, required=True, help="DECA's data/ folder (with deca_model.tar)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                        help="default: fp16 with TensorRT; fp32 and int8 with ONNX Runtime")
    parser.add_argument("--backend", choices=engines.BACKENDS, default="auto")
    parser.add_argument("--calibration", type=Path, nargs="+", default=None, metavar="FRAMES_OR_CLIP",
                        help=f"photos, clips or folders of faces (default: {MEDIA})")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "engines", help="engines folder (default engines/)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per engine for the median latency")
    parser.add_argument("--max-crops", type=int, default=32, help="at most this many calibration crops")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        with interrupt_on_sigterm():
            report = build(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted: no engine or manifest was changed", file=sys.stderr)
        return 130
    print(summary_table(report))
    return 0


def resolve_backend(requested: str) -> str:
    """"tensorrt" or "onnxruntime"; a forced TensorRT that cannot run is a one-line UserError."""
    if requested == "onnxruntime":
        return requested
    reason = engines.tensorrt_unavailable_reason()
    if reason is None:
        return "tensorrt"
    if requested == "tensorrt":
        raise UserError(f"TensorRT is unavailable ({reason}): build on a machine with an NVIDIA GPU and "
                        "`pip install -e '.[gpu]'`, or use --backend onnxruntime")
    log.warning("TensorRT is unavailable (%s): using ONNX Runtime", reason)
    return "onnxruntime"


def resolve_precisions(backend: str, precision: str | None) -> list[str]:
    if backend == "tensorrt":
        if precision == "int8":
            raise UserError("INT8 with TensorRT is not built by this tool: use --precision fp16 (or fp32) with "
                            "TensorRT, or --backend onnxruntime --precision int8")
        return [precision or "fp16"]
    if precision == "fp16":
        raise UserError("fp16 is a GPU precision (TensorRT): on the CPU use --precision fp32 or int8")
    return [precision] if precision else ["fp32", "int8"]


# ----------------------------------------------------------------------------------------------------------------------
# The build.


def build(args: argparse.Namespace) -> BuildReport:
    backend = resolve_backend(args.backend)
    precisions = resolve_precisions(backend, args.precision)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # everything is built in a hidden folder and moved into `out` once all is done: an interrupted or failed build
    # changes nothing there (no half-written engine, no manifest entry for a file that is not whole)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=out) as staging:
        return build_in(args, backend, precisions, out, Path(staging))


def build_in(args: argparse.Namespace, backend: str, precisions: list[str], out: Path, stage: Path) -> BuildReport:
    from realtime.deca.networks import load_deca_checkpoint

    checkpoint = Path(args.deca_data) / engines.CHECKPOINT_NAME
    sources = args.calibration or [MEDIA]

    state: dict[str, Any] = {}
    steps: list[tuple[str, Callable[[], None]]] = [
        ("load checkpoint", lambda: state.update(networks=load_deca_checkpoint(checkpoint),
                                                 checkpoint_sha256=engines.file_sha256(checkpoint))),
        ("head model", lambda: state.update(head=head_model(Path(args.deca_data), required="int8" in precisions))),
        ("calibration crops", lambda: state.update(crops=calibration_crops(sources, args.max_crops))),
        ("torch fp32 reference", lambda: state.update(reference=torch_reference(state["networks"], state["crops"]))),
        ("fp32 heads and detail normals", lambda: state.update(downstream_reference(state))),
    ]
    for network in engines.NETWORKS:
        steps.append((f"export {network}", lambda n=network: export_onnx(torch_module(state["networks"], n), n,
                                                                        stage)))
    rows: list[Row] = []
    refused: dict[str, str] = {}
    built: list[dict[str, Any]] = []
    for precision in precisions:
        for network in engines.NETWORKS:
            def step(n: str = network, p: str = precision) -> None:
                entry, row = build_one(n, p, backend, stage, state, args.runs)
                rows.append(row)
                if entry is None:
                    refused[f"{n} {p}"] = row.status
                else:
                    built.append(entry)
            steps.append((f"{backend} {precision} {network}", step))
    steps.append(("torch latency", lambda: rows.extend(torch_rows(state, args.runs))))

    try:
        with tqdm(steps, desc="build engines", unit="step") as progress:
            for description, run in progress:
                progress.set_postfix_str(description)
                run()
    finally:
        release_downstream(state)

    rebuilt = {(e["network"], e["backend"], e["precision"]) for e in built}
    dropped = {(n, backend, p) for n, p in (key.split() for key in refused)}
    kept = [e for e in engines.read_manifest(out)
            if (e.get("network"), e.get("backend"), e.get("precision")) not in rebuilt | dropped]
    for built_file in sorted(stage.iterdir()):
        built_file.replace(out / built_file.name)
    for network, precision in (key.split() for key in refused):
        (out / f"{network}.{precision}.onnx").unlink(missing_ok=True)  # an older build of a refused engine
    manifest = engines.write_manifest(out, kept + built) if built or kept else None
    for why in refused.values():
        log.warning("%s", why)
    return BuildReport(backend=backend, rows=sorted(rows, key=_row_order), refused=refused, manifest=manifest,
                       crops=len(state["crops"]))


def _row_order(row: Row) -> tuple[int, int]:
    order = ("torch fp32", "onnxruntime fp32", "onnxruntime int8", "tensorrt fp32", "tensorrt fp16")
    return engines.NETWORKS.index(row.network), order.index(row.engine) if row.engine in order else len(order)


def torch_module(networks: Any, network: str) -> Any:
    return {"E_flame": networks.e_flame, "E_detail": networks.e_detail, "D_detail": networks.d_detail}[network]


# ----------------------------------------------------------------------------------------------------------------------
# Calibration crops and the fp32 reference.


def media_files(sources: list[Path]) -> list[Path]:
    files: list[Path] = []
    for source in sources:
        source = Path(source)
        if source.is_dir():
            files += sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        elif source.is_file():
            files.append(source)
        else:
            raise UserError(f"calibration media {source} not found: pass photos, clips or folders of faces")
    return files


def media_frames(path: Path) -> Iterator[np.ndarray]:
    """RGB uint8 frames of a photo, or FRAMES_PER_CLIP evenly spaced frames of a clip."""
    from realtime.io.images import read_image

    if path.suffix.lower() not in VIDEO_SUFFIXES:
        yield read_image(path, what="calibration image")
        return
    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        for index in np.linspace(0, max(count - 1, 0), FRAMES_PER_CLIP).round().astype(int):
            capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = capture.read()
            if ok:
                yield np.ascontiguousarray(bgr[:, :, ::-1])
    finally:
        capture.release()


def calibration_crops(sources: list[Path], max_crops: int) -> np.ndarray:
    """DECA crops (N, 224, 224, 3) float32 of the largest face in each photo / sampled clip frame."""
    from realtime.deca.crop import deca_crop
    from realtime.tracking.tracker import FaceTracker, FaceTrackerOptions, RunningMode

    crops = []
    with FaceTracker.create_from_options(FaceTrackerOptions(running_mode=RunningMode.IMAGE)) as tracker:
        for path in media_files(sources):
            for frame in media_frames(path):
                face = tracker.track(frame)
                if face is not None:
                    crops.append(deca_crop(frame, face.landmarks)[0])
    if not crops:
        raise UserError(f"no face found in the calibration media ({', '.join(map(str, sources))}): pass "
                        "--calibration with photos or clips of faces")
    if len(crops) > max_crops:
        crops = [crops[i] for i in np.linspace(0, len(crops) - 1, max_crops).round().astype(int)]
    log.info("%d calibration crops", len(crops))
    return np.stack(crops).astype(np.float32)


def torch_reference(networks: Any, crops: np.ndarray) -> dict[str, np.ndarray]:
    """fp32 torch outputs on the crops; D_detail's inputs come from E_flame's jaw/exp and E_detail's code."""
    import torch

    from realtime.deca.networks import decompose_code, detail_input

    torch.set_num_threads(engines.ORT_THREADS)
    images = np.concatenate([engines.crop_batch(c) for c in crops])
    with torch.inference_mode():
        code = np.concatenate([networks.e_flame(torch.from_numpy(x[None])).numpy() for x in images])
        detail = np.concatenate([networks.e_detail(torch.from_numpy(x[None])).numpy() for x in images])
    parts = decompose_code(code)
    latent = detail_input(parts["pose"][:, 3:6], parts["exp"], detail)
    return {"images": images, "code": code, "shape": parts["shape"], "exp": parts["exp"], "jaw": parts["pose"][:, 3:6],
            "detail": detail, "latent": latent, "displacement": torch_displacement(networks, latent)}


def torch_displacement(networks: Any, latent: np.ndarray) -> np.ndarray:
    """fp32 torch D_detail, one crop at a time: latent (N, 181) -> displacement (N, 1, 256, 256)."""
    import torch

    with torch.inference_mode():
        return np.concatenate([networks.d_detail(torch.from_numpy(np.asarray(x[None], np.float32))).numpy()
                               for x in latent])


def head_model(deca_data: Path, required: bool) -> engines.HeadModel | None:
    """FLAME and the detail-normal inputs for the downstream figures; None when absent and not ``required`` (the
    INT8 check needs them: then their absence is a `UserError`)."""
    if not required and not all((deca_data / name).is_file() for name in engines.HEAD_FILES):
        log.info("no FLAME / detail-normal files in %s: the manifest gets no vertex or normal errors", deca_data)
        return None
    return engines.HeadModel.load(deca_data)


def downstream_reference(state: dict[str, Any]) -> dict[str, Any]:
    """An OpenGL context, the `engines.DetailNormals` pass and the fp32 torch heads and detail normals on the
    calibration crops (state keys "gl", "detail_normals", "downstream"); nothing without a head model."""
    from realtime.rendering.renderer import create_context

    head, reference = state["head"], state["reference"]
    if head is None:
        return {}
    try:
        gl = create_context()
    except UserError as err:
        raise UserError(f"{err} (the INT8 check renders DECA's detail normals; or build --precision fp32)") from err
    detail_normals = engines.DetailNormals(gl, head)
    vertices = engines.head_vertices(head.flame, reference["shape"], reference["exp"], reference["jaw"])
    normals, valid = detail_normals(vertices, reference["displacement"])
    return {"gl": gl, "detail_normals": detail_normals,
            "downstream": {"vertices": vertices, "normals": normals, "valid": valid}}


def release_downstream(state: dict[str, Any]) -> None:
    if "detail_normals" in state:
        state.pop("detail_normals").release()
    if "gl" in state:
        state.pop("gl").release()


def network_inputs(network: str, reference: dict[str, np.ndarray]) -> np.ndarray:
    return reference["latent" if network == "D_detail" else "images"]


# ----------------------------------------------------------------------------------------------------------------------
# Export, engines, errors, latency.


def export_onnx(module: Any, network: str, out: Path) -> Path:
    """``<out>/<network>.onnx``: opset 17, batch 1, fixed shapes, standard ops (TorchScript exporter)."""
    import torch

    (input_name, input_shape), (output_name, _) = engines.INPUTS[network], engines.OUTPUTS[network]
    path = out / f"{network}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), (torch.zeros(input_shape),), str(path), opset_version=OPSET,
                          input_names=[input_name], output_names=[output_name], do_constant_folding=True,
                          dynamo=False)
    return path


def build_one(network: str, precision: str, backend: str, out: Path, state: dict[str, Any],
              runs: int) -> tuple[dict[str, Any] | None, Row]:
    """Build, check and time one engine: (its manifest entry or None if refused, its summary row)."""
    reference, crops_count = state["reference"], len(state["crops"])
    inputs = network_inputs(network, reference)
    onnx_path = out / f"{network}.onnx"
    extra: dict[str, Any] = {}
    if backend == "tensorrt":
        path = out / f"{network}.{precision}.trt.ep"
        run = compile_tensorrt(torch_module(state["networks"], network), network, precision, path)
    elif precision == "fp32":
        path = out / f"{network}.fp32.onnx"
        engines.ort_session(onnx_path, optimised_path=path)
        run = engines.ort_runner(engines.ort_session(path))
    else:
        path = out / f"{network}.int8.onnx"
        cache = out / f"{network}.int8.calibration.json"
        quantize_int8(onnx_path, path, cache, network, inputs)
        run = engines.ort_runner(engines.ort_session(path))
        extra["calibration"] = {"crops": crops_count, "table": cache.name, "method": "MinMax",
                                "format": "QDQ, per-channel int8 weights, uint8 activations"}
    outputs = engine_outputs(network, run, reference)
    errors = measure_errors(network, outputs, reference)
    downstream = downstream_errors(network, outputs, state)
    row = Row(network, f"{backend} {precision}", path.stat().st_size / 1e6, median_latency(run, inputs[:1], runs),
              errors, downstream)
    entry = {"network": network, "backend": backend, "precision": precision, "file": path.name,
             "sha256": engines.file_sha256(path), "checkpoint_sha256": state["checkpoint_sha256"],
             "onnx": onnx_path.name, "opset": OPSET,
             "inputs": [dict(zip(("name", "shape"), engines.INPUTS[network], strict=True))],
             "outputs": [dict(zip(("name", "shape"), engines.OUTPUTS[network], strict=True))],
             "runtime": runtime_versions(backend), "built": datetime.datetime.now(datetime.UTC).isoformat(),
             "max_errors": errors, "downstream_errors": downstream, "latency_ms": round(row.latency_ms, 3), **extra}
    if precision == "int8":
        checks = engines.code_checks(network, reference, outputs)
        if "downstream" not in state:  # `head_model` makes an INT8 build without it a UserError: never unchecked
            raise RuntimeError("INT8 engines are checked on FLAME and the detail normals, which were not loaded")
        checks.update(engines.downstream_checks(downstream))
        entry["error_bounds"] = checks
        over = engines.over_bounds(checks)
        if over:
            row.status = (f"refused: INT8 {network} exceeds the accuracy bound (" + ", ".join(over)
                          + "); not written to the manifest: the app uses the fp32 engine")
            path.unlink(missing_ok=True)
            return None, row
    return entry, row


def quantize_int8(onnx_path: Path, path: Path, cache: Path, network: str, inputs: np.ndarray) -> None:
    """Static QDQ quantisation, per-channel weights, calibrated (MinMax) on ``inputs``; the table goes to ``cache``.

    uint8 activations with int8 weights (U8S8) is ONNX Runtime's fast x86 combination: about 6 ms for E_flame here
    against 16 ms for int8 activations. (On x86 without VNNI, U8S8 can saturate: the accuracy check catches it.)
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = engines.INPUTS[network][0]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self.items, None)
            return None if item is None else {input_name: item[None]}

    prepared = path.with_suffix(".prepared.onnx")
    cache.unlink(missing_ok=True)  # calibrate afresh: the crops or the weights may have changed
    try:
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibration_cache_path=cache)
    finally:
        prepared.unlink(missing_ok=True)


def compile_tensorrt(module: Any, network: str, precision: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """torch-tensorrt (dynamo) engine for ``module`` at a fixed batch-1 shape, saved as an ExportedProgram.

    Only runs with CUDA and torch-tensorrt (the ``gpu`` extra); `resolve_backend` has checked both.
    """
    import torch
    import torch_tensorrt

    shape = engines.INPUTS[network][1]
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[precision]
    example = torch.zeros(shape, device="cuda")
    with torch.inference_mode():
        compiled = torch_tensorrt.compile(module.eval().cuda(), ir="dynamo", inputs=[example],
                                          enabled_precisions={dtype}, min_block_size=1)
    torch_tensorrt.save(compiled, str(path), output_format="exported_program", inputs=[example])
    module.cpu()  # the torch reference and the other engines' checks run on the CPU
    return engines.tensorrt_runner(path)


def engine_outputs(network: str, run: Callable[[np.ndarray], np.ndarray],
                   reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The engine on every calibration input, named as in the reference: E_flame "code" (N, 236), "exp" (N, 50),
    "jaw" (N, 3); E_detail "detail" (N, 128); D_detail "displacement" (N, 1, 256, 256)."""
    from realtime.deca.networks import decompose_code

    outputs = np.concatenate([run(x[None]) for x in network_inputs(network, reference)])
    if network == "E_flame":
        parts = decompose_code(outputs)
        return {"code": outputs, "exp": parts["exp"], "jaw": parts["pose"][:, 3:6]}
    return {"detail" if network == "E_detail" else "displacement": outputs}


def measure_errors(network: str, outputs: dict[str, np.ndarray],
                   reference: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs error vs fp32 torch over the calibration crops: exp, jaw and the whole code for E_flame."""
    names = ("exp", "jaw", "code") if network == "E_flame" else tuple(outputs)
    return {name: _max_error(outputs[name], reference[name]) for name in names}


def downstream_errors(network: str, outputs: dict[str, np.ndarray], state: dict[str, Any]) -> dict[str, Any]:
    """What the engine's outputs change on screen, the other networks in fp32 (see `realtime.deca.engines`):
    {"vertex_mm": {"max", "p95"}, "normal_degrees": {"max", "p95"}}; {} without a head model."""
    from realtime.deca.networks import detail_input

    if "downstream" not in state:
        return {}
    reference, base = state["reference"], state["downstream"]
    vertices = base["vertices"]
    if network == "E_flame":
        vertices = engines.head_vertices(state["head"].flame, reference["shape"], outputs["exp"], outputs["jaw"])
        displacement = torch_displacement(state["networks"],
                                          detail_input(outputs["jaw"], outputs["exp"], reference["detail"]))
    elif network == "E_detail":
        displacement = torch_displacement(state["networks"],
                                          detail_input(reference["jaw"], reference["exp"], outputs["detail"]))
    else:
        displacement = outputs["displacement"]
    normals, valid = state["detail_normals"](vertices, displacement)
    angles = engines.normal_angles_degrees(base["normals"], normals)[valid & base["valid"]]
    return {"vertex_mm": engines.error_summary(engines.vertex_errors_mm(base["vertices"], vertices)),
            "normal_degrees": engines.error_summary(angles)}


def _max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)))


def median_latency(run: Callable[[np.ndarray], Any], example: np.ndarray, runs: int) -> float:
    """Median wall time in ms of ``run(example)`` over ``runs`` calls after WARMUP_RUNS untimed ones."""
    for _ in range(WARMUP_RUNS):
        run(example)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        run(example)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def torch_rows(state: dict[str, Any], runs: int) -> list[Row]:
    import torch

    torch.set_num_threads(engines.ORT_THREADS)
    rows = []
    for network in engines.NETWORKS:
        module = torch_module(state["networks"], network)

        def run(x: np.ndarray, module: Any = module) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x))

        example = network_inputs(network, state["reference"])[:1]
        rows.append(Row(network, "torch fp32", None, median_latency(run, example, runs), {}))
    return rows


def runtime_versions(backend: str) -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import torch

    versions: dict[str, str | None] = {"torch": torch.__version__, "onnx": onnx.__version__,
                                       "onnxruntime": onnxruntime.__version__, "tensorrt": None}
    if backend == "tensorrt":
        import torch_tensorrt

        versions["tensorrt"] = torch_tensorrt.__version__
    return versions


def summary_table(report: BuildReport) -> str:
    header = f"{'network':<9} {'engine':<17} {'size MB':>8} {'median ms':>10}  max abs error vs fp32 torch"
    lines = [f"DECA engines ({report.backend}, {report.crops} calibration crops)", header, "-" * len(header)]
    for row in report.rows:
        size = f"{row.size_mb:8.1f}" if row.size_mb is not None else f"{'-':>8}"
        errors = ", ".join(f"{k} {v:.2e}" for k, v in row.errors.items()) or "(reference)"
        if row.downstream:
            vertex, normal = row.downstream["vertex_mm"], row.downstream["normal_degrees"]
            errors += (f"; vertices max {vertex['max']:.3g} mm, detail normals p95 {normal['p95']:.3g} max "
                       f"{normal['max']:.3g} deg")
        status = "" if row.status == "ok" else "  REFUSED"
        lines.append(f"{row.network:<9} {row.engine:<17} {size} {row.latency_ms:10.2f}  {errors}{status}")
    for why in report.refused.values():
        lines.append(why)
    lines.append(f"manifest: {report.manifest}" if report.manifest else "no manifest written")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

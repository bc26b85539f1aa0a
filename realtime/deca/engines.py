"""Compiled DECA networks (ONNX Runtime on the CPU, TensorRT on an NVIDIA GPU) behind DecaEncoder's interface.

``tools/build_engine.py`` exports E_flame, E_detail and D_detail to ONNX and compiles them into ``engines/`` with a
``manifest.json``; `load_engines` picks the best valid engine per network and returns a `Runner` with the same
methods as `realtime.deca.networks.DecaEncoder` (``encode``, ``encode_detail``, ``decode_detail``), or None when
nothing valid is there (the app then runs the networks in torch).

Preference, per network: TensorRT > ONNX Runtime INT8 > ONNX Runtime fp32. An engine is used only if its manifest
entry names the sha256 of the current ``deca_model.tar`` (else it is *stale*: built from other weights) and the
engine file's sha256 matches the manifest (else it is corrupt or tampered with). Refused engines are logged with the
command that rebuilds them; they are never used silently.

Accuracy bounds for INT8 (checked by the build on the calibration crops against fp32 torch; an engine over a bound is
not written to the manifest):

* E_flame: the max abs error on exp (50) and on jaw (pose[3:6]) must each stay below 10 % of the standard deviation of
  the fp32 values of that group over the calibration crops. Retargeting transfers exp and jaw, and what it transfers
  is their variation across faces and frames: an error of a tenth of that spread is below what the tracker's own
  frame-to-frame noise and the One Euro filter leave. (The whole 236-d code is reported but not bounded: shape,
  texture, light and camera are computed once per identity, with E_flame in fp32 if needed.)
* E_detail: the same 10 % of the detail code's spread (run once per identity, so fp32 costs little anyway).
* D_detail: max abs displacement error below 1e-3 m, a tenth of the decoder's range of +-0.01 m (MAX_Z); the
  displacement only shades (normal map), and 1 mm on a wrinkle of up to 10 mm is not visible at webcam resolution.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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
CODE_ERROR_FRACTION = 0.10  # of the fp32 values' standard deviation over the calibration crops
DISPLACEMENT_ERROR_BOUND = 1e-3  # metres

# Engines ranked best first: (backend, precision).
PREFERENCE = (("tensorrt", "fp16"), ("tensorrt", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "fp32"))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def error_bounds(network: str, reference: dict[str, np.ndarray]) -> dict[str, float]:
    """The INT8 bound of each bounded error of ``network``, from its fp32 reference outputs on the calibration set.

    ``reference`` holds the fp32 torch values stacked over the crops: "exp" and "jaw" for E_flame, "detail" for
    E_detail; D_detail's bound is absolute.
    """
    if network == "E_flame":
        return {name: CODE_ERROR_FRACTION * float(np.std(reference[name])) for name in ("exp", "jaw")}
    if network == "E_detail":
        return {"detail": CODE_ERROR_FRACTION * float(np.std(reference["detail"]))}
    return {"displacement": DISPLACEMENT_ERROR_BOUND}


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

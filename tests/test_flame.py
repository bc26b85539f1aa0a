"""FLAME import (restricted unpickling, cache), LBS against an independent reference, DECA's data files."""

import functools
import hashlib
import importlib
import os
import pickle
import pickletools
import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from realtime.deca import flame
from realtime.deca.flame import FlameModel, flame_identity, flame_vertices, import_flame, read_head_template
from realtime.deca.safe_pickle import UnsafePickleError, load_landmark_embedding, restricted_loads
from realtime.errors import UserError
from tests import deca_fixtures as fx

FLAME_PARENTS = (-1, 0, 1, 1, 1)  # root; neck <- root; jaw, left eye, right eye <- neck


@pytest.fixture(scope="module")
def flame2020(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    path = tmp_path_factory.mktemp("flame2020") / "generic_model.pkl"
    return path, fx.write_flame2020_pickle(path, np.random.default_rng(0))


@pytest.fixture(scope="module")
def model(flame2020) -> FlameModel:
    return import_flame(flame2020[0], cache_dir=None)


def globals_of(stream: bytes) -> set[str]:
    return {arg for op, arg, _ in pickletools.genops(stream) if op.name == "GLOBAL"}


def assert_one_line_error(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message


# ---------------------------------------------------------------------------------------------------------------------
# Import


def assert_model_equals(model: FlameModel, arrays: dict[str, np.ndarray]) -> None:
    def f32(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float32)

    assert np.array_equal(model.v_template, f32(arrays["v_template"]))
    assert np.array_equal(model.shapedirs, f32(arrays["shapedirs"][:, :, :300]))
    assert np.array_equal(model.exprdirs, f32(arrays["shapedirs"][:, :, 300:400]))
    assert np.array_equal(model.posedirs, f32(arrays["posedirs"].reshape(-1, 36).T))
    assert np.array_equal(model.J_regressor, f32(arrays["J_regressor"]))
    assert np.array_equal(model.lbs_weights, f32(arrays["weights"]))
    assert np.array_equal(model.faces, arrays["f"].astype(np.int64))
    assert model.parents.tolist() == list(FLAME_PARENTS) and model.parents.dtype == np.int64
    for name, shape in (
        ("v_template", (5023, 3)),
        ("shapedirs", (5023, 3, 300)),
        ("exprdirs", (5023, 3, 100)),
        ("posedirs", (36, 15069)),
        ("J_regressor", (5, 5023)),
        ("lbs_weights", (5023, 5)),
    ):
        array = getattr(model, name)
        assert array.shape == shape and array.dtype == np.float32 and array.flags.c_contiguous, name
    assert model.faces.shape == (9976, 3)


def test_flame2020_fixture_is_a_python2_chumpy_pickle(flame2020) -> None:
    stream = flame2020[0].read_bytes()
    assert stream[:2] == b"\x80\x02"  # protocol 2
    assert globals_of(stream) == {
        "chumpy.ch Ch",
        "scipy.sparse.csc csc_matrix",
        "numpy.core.multiarray _reconstruct",
        "numpy ndarray",
        "numpy dtype",
        "__builtin__ set",
    }
    opcodes = {op.name for op, _, _ in pickletools.genops(stream)}
    assert {"NEWOBJ", "BINSTRING", "SHORT_BINSTRING"} <= opcodes and "BINUNICODE" not in opcodes


def test_import_flame2020(flame2020, model) -> None:
    assert_model_equals(model, flame2020[1])


def test_import_flame2023(tmp_path) -> None:
    path = tmp_path / "flame2023.pkl"
    arrays = fx.write_flame2023_pickle(path, np.random.default_rng(1))
    assert b"scipy.sparse._csc" in path.read_bytes() and b"chumpy" not in path.read_bytes()  # today's module paths
    assert_model_equals(import_flame(path, cache_dir=None), arrays)


def test_cache_is_written_once_and_read_without_the_pickle(flame2020, tmp_path, monkeypatch) -> None:
    pkl = tmp_path / "generic_model.pkl"
    pkl.write_bytes(flame2020[0].read_bytes())
    cache = tmp_path / "cache"
    first = import_flame(pkl, cache)
    digest = hashlib.sha256(pkl.read_bytes()).hexdigest()
    assert (cache / f"flame-{digest[:16]}.npz").is_file()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]

    # Same size and modification time: the cache answers; neither the content nor the unpickler is touched.
    stat = pkl.stat()
    pkl.write_bytes(bytes(stat.st_size))
    os.utime(pkl, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    monkeypatch.setattr(flame, "restricted_load", lambda fp: pytest.fail("the pickle was unpickled again"))
    second = import_flame(pkl, cache)
    assert_model_equals(second, flame2020[1])
    assert all(np.array_equal(getattr(first, f), getattr(second, f)) for f in ("v_template", "posedirs", "faces"))

    # A changed file is read again (and this one is no pickle).
    monkeypatch.undo()
    os.utime(pkl, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(UserError, match="not a readable pickle"):
        import_flame(pkl, cache)


# ---------------------------------------------------------------------------------------------------------------------
# Linear blend skinning against a straightforward reference


def reference_vertices(arrays: dict, shape: np.ndarray, expression: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """FLAME with loops, from the pickle's own layout (posedirs 5023x3x36), rotations from scipy."""
    betas = np.zeros(400)
    betas[: len(shape)] = shape
    betas[300 : 300 + len(expression)] = expression
    v_shaped = arrays["v_template"] + arrays["shapedirs"] @ betas
    regressor = arrays["J_regressor"]
    joints = np.zeros((5, 3))
    for j in range(5):
        for v in np.flatnonzero(regressor[j]):
            joints[j] += regressor[j, v] * v_shaped[v]

    rotations = [Rotation.from_rotvec(pose[3 * j : 3 * j + 3]).as_matrix() for j in range(5)]
    feature = np.concatenate([(rotations[j] - np.eye(3)).ravel() for j in range(1, 5)])
    v_posed = np.array([v_shaped[v] + arrays["posedirs"][v] @ feature for v in range(len(v_shaped))])

    world = []
    for j in range(5):
        local = np.eye(4)
        local[:3, :3] = rotations[j]
        parent = FLAME_PARENTS[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0)
        world.append(local if parent < 0 else world[parent] @ local)
    skinning = []
    for j in range(5):
        unbind = np.eye(4)
        unbind[:3, 3] = -joints[j]
        skinning.append(world[j] @ unbind)

    out = np.zeros_like(v_posed)
    for v in range(len(v_posed)):
        blended = sum(arrays["weights"][v, j] * skinning[j] for j in range(5))
        out[v] = (blended @ np.append(v_posed[v], 1.0))[:3]
    return out


def test_lbs_matches_reference(flame2020, model) -> None:
    rng = np.random.default_rng(7)
    shape, expression = rng.normal(size=100), rng.normal(size=50)
    pose = rng.normal(scale=0.3, size=15)  # global, neck, jaw, eyes: all non-zero
    vertices = flame_vertices(model, flame_identity(model, shape), expression, pose)
    expected = reference_vertices(flame2020[1], shape, expression, pose)
    assert vertices.shape == (5023, 3) and vertices.dtype == np.float32
    assert np.abs(vertices - expected).max() < 1e-5
    assert np.abs(vertices - reference_vertices(flame2020[1], shape, expression, np.zeros(15))).max() > 1e-2


def test_zero_pose_and_expression_give_v_shaped(model) -> None:
    identity = flame_identity(model, np.random.default_rng(3).normal(size=100))
    vertices = flame_vertices(model, identity, np.zeros(50), np.zeros(15))
    np.testing.assert_allclose(vertices, identity.v_shaped, atol=1e-7)
    np.testing.assert_allclose(identity.joints, model.J_regressor @ identity.v_shaped, atol=1e-7)


def test_rodrigues_matches_scipy() -> None:
    rot_vecs = np.random.default_rng(5).normal(size=(6, 3)).astype(np.float32)
    rot_vecs[0] = 0
    rot_vecs[1] = [1e-7, 0, 0]
    expected = Rotation.from_rotvec(rot_vecs.astype(np.float64)).as_matrix()
    np.testing.assert_allclose(flame.batch_rodrigues(rot_vecs), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Refused and damaged files


@pytest.mark.faults
def test_malicious_pickle_is_refused(tmp_path) -> None:
    control = tmp_path / "control.pkl"
    fx.write_malicious_pickle(control, tmp_path / "control-marker")
    pickle.loads(control.read_bytes())  # the fixture really runs code when unpickled normally
    assert (tmp_path / "control-marker").exists()

    path, marker = tmp_path / "generic_model.pkl", tmp_path / "marker"
    fx.write_malicious_pickle(path, marker)
    with pytest.raises(UserError) as err:
        import_flame(path, tmp_path / "cache")
    assert_one_line_error(err, path, "refused", f"{os.system.__module__}.system")
    assert not marker.exists()


@pytest.mark.faults
@pytest.mark.parametrize(
    "function, make_args",
    [
        (eval, lambda marker: (f"__import__('os').system('touch {marker}')",)),
        (exec, lambda marker: (f"open('{marker}', 'w')",)),
        (open, lambda marker: (str(marker), "w")),
        (subprocess.check_call, lambda marker: (["touch", str(marker)],)),
        (os.system, lambda marker: (f"touch {marker}",)),
        (importlib.import_module, lambda marker: ("antigravity",)),
    ],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_code_running_globals_are_refused(tmp_path, function, make_args) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "generic_model.pkl"
    fx.write_pickle_calling(path, function, make_args(marker))
    with pytest.raises(UserError) as err:
        import_flame(path, None)
    assert_one_line_error(err, path, "refused", f".{function.__name__} is not allowed")
    with pytest.raises(UnsafePickleError):
        restricted_loads(path.read_bytes())
    assert not marker.exists()


@pytest.mark.faults
def test_partial_and_torch_globals_are_refused() -> None:
    import torch

    partial = pickle.dumps(functools.partial(print, "hello"), protocol=2)
    with pytest.raises(UnsafePickleError, match="functools.partial"):
        restricted_loads(partial)
    parameter = pickle.dumps(torch.nn.Parameter(torch.zeros(2)), protocol=2)
    with pytest.raises(UnsafePickleError, match="refused: torch"):
        restricted_loads(parameter)
    assert isinstance(UnsafePickleError("x"), ValueError)


@pytest.mark.faults
def test_pickle_cannot_patch_the_stand_in_classes() -> None:
    # GLOBAL chumpy.ch Ch; (None, {'stored_array': 1}); BUILD: would set an attribute on the stand-in class itself.
    stream = b"\x80\x02cchumpy.ch\nCh\nN}X\x0c\x00\x00\x00stored_arrayK\x01s\x86b."
    with pytest.raises(TypeError):  # BUILD finds the stand-in's __setstate__ unbound on the class
        restricted_loads(stream)
    assert restricted_loads(b"\x80\x02cchumpy.ch\nCh\n)\x81}X\x01\x00\x00\x00xK\x07sb.") == 7


@pytest.mark.faults
def test_damaged_and_foreign_files_give_one_line_errors(flame2020, tmp_path) -> None:
    import cv2

    stream = flame2020[0].read_bytes()
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(stream[: len(stream) // 2])
    with pytest.raises(UserError) as err:
        import_flame(truncated, tmp_path / "cache")
    assert_one_line_error(err, truncated, "not a readable pickle", "generic_model.pkl")

    jpeg = tmp_path / "photo.pkl"
    jpeg.write_bytes(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    with pytest.raises(UserError) as err:
        import_flame(jpeg, None)
    assert_one_line_error(err, jpeg, "not a readable pickle")

    arrays = fx.flame_arrays(np.random.default_rng(2))
    wrong_keys = tmp_path / "wrong_keys.pkl"
    wrong_keys.write_bytes(pickle.dumps({k: v for k, v in arrays.items() if k != "posedirs"}))
    with pytest.raises(UserError) as err:
        import_flame(wrong_keys, None)
    assert_one_line_error(err, wrong_keys, "missing 'posedirs'", "generic_model.pkl")

    wrong_shape = tmp_path / "wrong_shape.pkl"
    wrong_shape.write_bytes(pickle.dumps({**arrays, "v_template": np.zeros((100, 3))}))
    with pytest.raises(UserError) as err:
        import_flame(wrong_shape, None)
    assert_one_line_error(err, wrong_shape, "'v_template' has shape (100, 3)")

    not_a_dict = tmp_path / "list.pkl"
    not_a_dict.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UserError) as err:
        import_flame(not_a_dict, None)
    assert_one_line_error(err, not_a_dict, "not a dict")

    with pytest.raises(UserError) as err:
        import_flame(tmp_path / "absent.pkl", None)
    assert_one_line_error(err, tmp_path / "absent.pkl", "not found")


# ---------------------------------------------------------------------------------------------------------------------
# DECA's data files


@pytest.mark.parametrize("legacy", [True, False], ids=["numpy1-npy", "numpy2-npy"])
def test_landmark_embedding_loads_as_numpy(tmp_path, legacy) -> None:
    path = tmp_path / "landmark_embedding.npy"
    written = fx.write_landmark_embedding(path, np.random.default_rng(4), legacy=legacy)
    stream_globals = {arg for op, arg, _ in pickletools.genops(path.read_bytes()[128:]) if op.name == "GLOBAL"}
    if legacy:
        assert {"torch._utils _rebuild_tensor_v2", "torch.storage _load_from_bytes"} <= stream_globals
    embedding = load_landmark_embedding(path)
    shapes = {key: value.shape for key, value in embedding.items()}
    assert shapes == {
        "static_lmk_faces_idx": (51,),
        "static_lmk_bary_coords": (51, 3),
        "dynamic_lmk_faces_idx": (79, 17),
        "dynamic_lmk_bary_coords": (79, 17, 3),
        "full_lmk_faces_idx": (1, 68),
        "full_lmk_bary_coords": (1, 68, 3),
    }
    for key, value in embedding.items():
        assert isinstance(value, np.ndarray) and value.dtype == (np.int64 if key.endswith("idx") else np.float32)
        np.testing.assert_allclose(value, written[key], rtol=1e-6)


@pytest.mark.faults
def test_malicious_landmark_embedding_is_refused(tmp_path) -> None:
    path, marker = tmp_path / "landmark_embedding.npy", tmp_path / "marker"
    fx.write_malicious_npy(path, marker)
    with pytest.raises(UserError) as err:
        load_landmark_embedding(path)
    assert_one_line_error(err, path, "refused", "landmark_embedding.npy")
    assert not marker.exists()


def test_head_template_splits_into_5118_render_vertices(tmp_path, model) -> None:
    path = tmp_path / "head_template.obj"
    fx.write_head_template(path, model.faces, np.random.default_rng(6), model.v_template)
    text = path.read_text()
    assert (text.count("\nv "), text.count("\nvt "), text.count("\nf ")) == (5022, 5118, 9976)  # first line is a v
    template = read_head_template(path, model)
    assert template.render_vertex.shape == (5118,) and template.render_uv.shape == (5118, 2)
    assert template.triangles.shape == (9976, 3)
    assert np.array_equal(template.render_vertex[template.triangles], model.faces)
    assert template.render_uv.min() >= 0 and template.render_uv.max() <= 1
    assert set(np.unique(template.render_vertex)) == set(range(5023))


def test_head_template_mismatch_is_a_user_error(tmp_path, model) -> None:
    path = tmp_path / "head_template.obj"
    faces = model.faces.copy()
    faces[0] = faces[0][::-1] + [1, 0, 0]  # a triangle that FLAME does not have
    fx.write_head_template(path, faces, np.random.default_rng(6), model.v_template)
    with pytest.raises(UserError) as err:
        read_head_template(path, model)
    assert_one_line_error(err, path, "not the FLAME model's")

    lines = [line for line in path.read_text().splitlines() if not line.startswith("f ")]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as err:
        read_head_template(path)
    assert_one_line_error(err, path, "head_template.obj")

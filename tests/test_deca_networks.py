"""DECA networks, checkpoint and crop: upstream architecture and key names, strict and safe loading of the user's
``deca_model.tar`` (a random-weight stand-in here), code slicing, and the test-time crop on a real face."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from realtime.deca.crop import BOX_68_INDICES, box_68, deca_crop, deca_crop_transform  # noqa: E402
from realtime.deca.networks import (  # noqa: E402
    DecaEncoder,
    build_networks,
    decompose_code,
    detail_input,
    load_deca_checkpoint,
)
from realtime.errors import UserError  # noqa: E402
from realtime.io.images import read_image  # noqa: E402
from tests import deca_checkpoint  # noqa: E402
from tests.conftest import HANG_S, PROJECT, media  # noqa: E402


@pytest.fixture(scope="module")
def networks() -> dict:
    return build_networks()


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict]:
    """A random-weight deca_model.tar in the upstream layout, and the networks it was written from."""
    path = tmp_path_factory.mktemp("deca") / "deca_model.tar"
    return path, deca_checkpoint.write_deca_checkpoint(path, seed=3)


@pytest.fixture(scope="module")
def astronaut(image_tracker) -> tuple[np.ndarray, np.ndarray]:
    """The astronaut photo (RGB uint8) and its MediaPipe landmarks (478, 3) in pixels."""
    rgb = read_image(media("skimage_astronaut.png"))
    face = image_tracker.track(rgb)
    assert face is not None
    return rgb, face.landmarks


# ----------------------------------------------------------------------------------------------------------------------
# Architecture


def test_state_dicts_have_upstream_names_counts_and_shapes(networks: dict) -> None:
    e_flame, e_detail, d_detail = (networks[name].state_dict() for name in ("E_flame", "E_detail", "D_detail"))
    assert (len(e_flame), len(e_detail), len(d_detail)) == (322, 322, 44)
    assert e_flame["encoder.conv1.weight"].shape == (64, 3, 7, 7)
    assert e_flame["encoder.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert e_flame["encoder.layer4.2.bn3.running_var"].shape == (2048,)
    assert "encoder.bn1.num_batches_tracked" in e_flame
    assert not any(".fc." in key for key in e_flame)
    assert e_flame["layers.0.weight"].shape == (1024, 2048)
    assert e_flame["layers.2.weight"].shape == (236, 1024)
    assert e_detail["layers.2.weight"].shape == (128, 1024)
    assert d_detail["l1.0.weight"].shape == (8192, 181)
    assert d_detail["conv_blocks.21.weight"].shape == (1, 16, 3, 3)
    assert sorted({key.split(".")[1] for key in d_detail if key.startswith("conv_blocks.")}, key=int) == [
        "0", "2", "3", "6", "7", "10", "11", "14", "15", "18", "19", "21"]


def test_parameter_counts_and_layer_quirks(networks: dict) -> None:
    counts = [sum(p.numel() for p in networks[name].parameters()) for name in ("E_flame", "E_detail", "D_detail")]
    assert counts == [25_848_108, 25_737_408, 1_773_345]
    blocks = networks["D_detail"].conv_blocks
    assert isinstance(blocks[0], torch.nn.BatchNorm2d) and blocks[0].eps == 1e-5
    for index in (3, 7, 11, 15, 19):
        assert isinstance(blocks[index], torch.nn.BatchNorm2d) and blocks[index].eps == 0.8
    for index in (1, 5, 9, 13, 17):
        assert (blocks[index].mode, blocks[index].scale_factor, blocks[index].align_corners) == ("bilinear", 2, False)
    assert isinstance(blocks[22], torch.nn.Tanh)
    pool = networks["E_flame"].encoder.avgpool
    assert isinstance(pool, torch.nn.AvgPool2d) and pool.kernel_size == 7


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def test_round_trip_on_a_real_face_crop(written: tuple[Path, dict], astronaut) -> None:
    path, original = written
    loaded = load_deca_checkpoint(path)
    assert not any(net.training for net in (loaded.e_flame, loaded.e_detail, loaded.d_detail))
    crop, _ = deca_crop(*astronaut)
    deca = DecaEncoder(loaded)
    params = deca.encode(crop)
    detail = deca.encode_detail(crop)
    displacement = deca.decode_detail(params["pose"][3:6], params["exp"], detail)

    batch = torch.from_numpy(crop.transpose(2, 0, 1).copy())[None]
    with torch.inference_mode():
        code = original["E_flame"](batch)[0].numpy()
        expected_detail = original["E_detail"](batch)[0].numpy()
        latent = torch.from_numpy(np.concatenate([code[203:206], code[150:200], expected_detail]))[None]
        expected_displacement = original["D_detail"](latent)[0, 0].numpy()
    assert code.shape == (236,) and detail.shape == (128,) and displacement.shape == (256, 256)
    np.testing.assert_array_equal(np.concatenate([params[k].ravel() for k in params]), code)
    np.testing.assert_array_equal(detail, expected_detail)
    np.testing.assert_array_equal(displacement, expected_displacement)
    assert displacement.dtype == np.float32 and np.abs(displacement).max() <= 0.01
    assert np.ptp(displacement) > 0 and np.ptp(code) > 0  # random weights still respond to the image


def test_legacy_serialisation_and_a_checkpoint_without_extras_load(tmp_path: Path) -> None:
    path = tmp_path / "deca_model.tar"
    original = deca_checkpoint.write_deca_checkpoint(path, seed=1, extra=False, legacy_format=True)
    loaded = load_deca_checkpoint(path)
    for key, value in original["D_detail"].state_dict().items():
        assert torch.equal(loaded.d_detail.state_dict()[key], value), key
    assert torch.equal(loaded.e_flame.layers[2].weight, original["E_flame"].layers[2].weight)


@pytest.fixture(scope="module")
def valid_checkpoint() -> dict:
    return deca_checkpoint.checkpoint_dict(deca_checkpoint.random_networks(seed=2))


# what each broken variant's message must point at
BROKEN_MESSAGES = {
    "missing_key": "1 missing: layers.2.bias",
    "module_prefix": "'module.' prefix",
    "unexpected_key": "2 unexpected: encoder.fc.weight",
    "wrong_shape": "l1.0.weight [8192, 180] != [8192, 181]",
    "missing_network": "no D_detail",
    "not_a_dict": "not a dict",
    "truncated": "truncated",
    "truncated_legacy": "truncated",
    "empty": "empty",
    "html": "HTML page",
}


@pytest.mark.faults
@pytest.mark.parametrize("variant", sorted(deca_checkpoint.BROKEN_VARIANTS))
def test_a_broken_checkpoint_is_a_one_line_user_error_naming_the_file(variant: str, valid_checkpoint: dict,
                                                                     tmp_path: Path) -> None:
    path = tmp_path / f"{variant}.tar"
    deca_checkpoint.BROKEN_VARIANTS[variant](valid_checkpoint, path)
    with pytest.raises(UserError) as caught:
        load_deca_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message, message
    assert BROKEN_MESSAGES[variant] in message, message


def test_a_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_deca_checkpoint(tmp_path / "deca_model.tar")


@pytest.mark.faults
def test_a_pickled_callable_is_refused_and_never_runs(valid_checkpoint: dict, tmp_path: Path) -> None:
    # the payload is real: an unsafe load of a small file with it runs the command
    armed = tmp_path / "armed"
    deca_checkpoint.write_pickled_callable({}, tmp_path / "small.tar", armed)
    torch.load(tmp_path / "small.tar", weights_only=False)
    assert armed.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "deca_model.tar"
    deca_checkpoint.write_pickled_callable(valid_checkpoint, path, marker)
    with pytest.raises(UserError) as caught:
        load_deca_checkpoint(path)
    assert str(path) in str(caught.value) and "pickled Python object (posix.system)" in str(caught.value)
    assert not marker.exists()


def test_without_torch_the_deca_path_says_how_to_install_it() -> None:
    script = ("import sys; sys.modules['torch'] = None\n"
              "import realtime.deca.crop\n"  # numpy and OpenCV only
              "from realtime.errors import UserError\n"
              "try:\n    import realtime.deca.networks\nexcept UserError as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=PROJECT, capture_output=True, text=True, timeout=HANG_S)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "the DECA path needs PyTorch: pip install -e '.[deca]'"


# ----------------------------------------------------------------------------------------------------------------------
# Codes


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_decompose_code_slices_in_param_list_order(kind: str) -> None:
    flat = np.arange(2 * 236, dtype=np.float32).reshape(2, 236) % 236
    code = torch.from_numpy(flat) if kind == "torch" else flat
    parts = decompose_code(code)
    assert list(parts) == ["shape", "tex", "exp", "pose", "cam", "light"]
    starts = {"shape": 0, "tex": 100, "exp": 150, "pose": 200, "cam": 206}
    sizes = {"shape": 100, "tex": 50, "exp": 50, "pose": 6, "cam": 3}
    for name, start in starts.items():
        np.testing.assert_array_equal(np.asarray(parts[name][1]), np.arange(start, start + sizes[name]))
    light = np.asarray(parts["light"])
    assert light.shape == (2, 9, 3)
    assert light[1, 4, 2] == 209 + 4 * 3 + 2  # coefficient-major, RGB-minor
    single = decompose_code(flat[0])
    assert single["light"].shape == (9, 3) and single["pose"][3:6].tolist() == [203, 204, 205]  # jaw
    with pytest.raises(ValueError):
        decompose_code(np.zeros(235))


def test_detail_input_is_jaw_then_exp_then_detail() -> None:
    jaw, exp, detail = np.full(3, 1.0), np.full(50, 2.0), np.full(128, 3.0)
    latent = detail_input(jaw, exp, detail)
    assert latent.shape == (181,) and latent.dtype == np.float32
    assert latent[:3].tolist() == [1] * 3 and set(latent[3:53]) == {2} and set(latent[53:]) == {3}
    batched = detail_input(torch.ones(2, 3), torch.zeros(2, 50), torch.zeros(2, 128))
    assert isinstance(batched, torch.Tensor) and batched.shape == (2, 181)
    with pytest.raises(ValueError):
        detail_input(exp, jaw, detail)


def test_the_encoder_wants_a_224_crop(networks: dict) -> None:
    from realtime.deca.networks import DecaNetworks

    deca = DecaEncoder(DecaNetworks(networks["E_flame"], networks["E_detail"], networks["D_detail"]), num_threads=None)
    with pytest.raises(ValueError, match="224"):
        deca.encode(np.zeros((256, 256, 3), np.float32))


# ----------------------------------------------------------------------------------------------------------------------
# Crop


def _upstream_similarity(box: tuple[float, float, float, float]) -> np.ndarray:
    """DECA's bbox2point + 3-point similarity, solved by least squares on x' = a x - b y + tx, y' = b x + a y + ty."""
    left, top, right, bottom = box
    old_size = ((right - left) + (bottom - top)) / 2 * 1.1
    cx, cy = (right + left) / 2, (bottom + top) / 2
    size = int(old_size * 1.25)
    src = np.array([[cx - size / 2, cy - size / 2], [cx - size / 2, cy + size / 2], [cx + size / 2, cy - size / 2]])
    dst = np.array([[0, 0], [0, 223], [223, 0]], float)
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        rhs += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty], [0, 0, 1]])


@pytest.mark.parametrize("box", [(180.9, 86.6, 270.2, 177.4), (10.0, 20.0, 110.0, 160.0), (-30.5, 5.25, 400.0, 300.0)])
def test_crop_transform_matches_a_least_squares_similarity(box: tuple[float, float, float, float]) -> None:
    np.testing.assert_allclose(deca_crop_transform(box), _upstream_similarity(box), atol=1e-9)


def _synthetic_face(center: tuple[float, float], half_width: float, half_height: float) -> np.ndarray:
    """478 landmarks at the centre, with the 68-box points on an ellipse."""
    landmarks = np.tile(np.array([*center, 0.0]), (478, 1))
    angles = np.linspace(0, 2 * np.pi, len(BOX_68_INDICES), endpoint=False)
    angles[:4] = 0, np.pi / 2, np.pi, 3 * np.pi / 2  # the extremes are on the box
    landmarks[list(BOX_68_INDICES), 0] = center[0] + half_width * np.cos(angles)
    landmarks[list(BOX_68_INDICES), 1] = center[1] + half_height * np.sin(angles)
    return landmarks


def test_a_point_lands_in_the_crop_where_the_transform_says() -> None:
    landmarks = _synthetic_face((300.0, 220.0), 80.0, 95.0)
    landmarks[10] = 300.0, 60.0, 0.0  # MediaPipe's forehead top: not part of the 68-style box
    left, top, right, bottom = box_68(landmarks)
    assert (left, top, right, bottom) == pytest.approx((220.0, 125.0, 380.0, 315.0))
    dot = np.array([341.3, 176.7])  # off the pixel grid
    ys, xs = np.mgrid[0:480, 0:640]
    blob = np.exp(-((xs - dot[0]) ** 2 + (ys - dot[1]) ** 2) / (2 * 4.0**2))
    image = np.repeat((255 * blob).round().astype(np.uint8)[..., None], 3, axis=2)
    crop, transform = deca_crop(image, landmarks)
    assert crop.shape == (224, 224, 3) and crop.dtype == np.float32 and 0 <= crop.min() and crop.max() <= 1
    weights = crop[..., 0]
    cys, cxs = np.mgrid[0:224, 0:224]
    found = np.array([(weights * cxs).sum(), (weights * cys).sum()]) / weights.sum()
    np.testing.assert_allclose(found, (transform @ [*dot, 1])[:2], atol=0.05)


def test_the_astronaut_crop_holds_the_face_where_deca_expects_it(astronaut, image_tracker) -> None:
    rgb, landmarks = astronaut
    left, top, right, bottom = box_68(landmarks)
    # brows to chin and ear side to ear side: inside MediaPipe's box, below its forehead top
    assert landmarks[:, 1].min() + 5 < top and bottom == landmarks[:, 1].max()
    assert (left, right) == pytest.approx((landmarks[:, 0].min(), landmarks[:, 0].max()), abs=2)
    crop, transform = deca_crop(rgb, landmarks)
    face = image_tracker.track((crop * 255).round().astype(np.uint8))
    assert face is not None
    crop_left, crop_top, crop_right, crop_bottom = box_68(face.landmarks)
    # DECA's test crop is 1.1 * 1.25 = 1.375 times the 68-landmark box, centred on it
    assert 224 / 1.375 * 0.9 < (crop_right - crop_left + crop_bottom - crop_top) / 2 < 224 / 1.375 * 1.1
    assert abs((crop_left + crop_right) / 2 - 112) < 10 and abs((crop_top + crop_bottom) / 2 - 112) < 10
    mapped = (transform[:2, :2] @ landmarks[:, :2].T).T + transform[:2, 2]
    assert np.median(np.linalg.norm(mapped - face.landmarks[:, :2], axis=1)) < 3.0
    # and the crop is the image resampled: the pixel under the nose tip matches
    nose = landmarks[1, :2]
    u, v = np.round((transform @ [*nose, 1])[:2]).astype(int)
    back = np.linalg.inv(transform) @ [u, v, 1]
    expected = cv2.getRectSubPix(rgb.astype(np.float32), (1, 1), (float(back[0]), float(back[1])))[0, 0] / 255
    np.testing.assert_allclose(crop[v, u], expected, atol=0.02)

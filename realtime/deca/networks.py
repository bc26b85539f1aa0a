"""DECA's three networks (E_flame, E_detail, D_detail), a strict loader for the user's ``deca_model.tar``, and a small
inference wrapper.

The modules reproduce the child names of upstream DECA's (``decalib/models/encoders.py``, ``resnet.py``,
``decoders.py``) exactly, so the released checkpoint loads with ``strict=True``: 322 state-dict entries for each
encoder, 44 for the detail decoder (see DECA_SPEC.md 1.2-1.4). Nothing here depends on torchvision.

The checkpoint is untrusted data: it is read with ``torch.load(weights_only=True)`` (tensors, containers and plain
values only; no pickled code runs) and every problem becomes a one-line `UserError` that names the file.

PyTorch is imported at the top: only the DECA path imports this module, and without torch the import raises a
`UserError` that says how to install it.
"""

import logging
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from realtime.errors import UserError

try:
    import torch
    from torch import nn
except ImportError as err:  # the DECA path is optional: say how to get it instead of an import crash
    raise UserError("the DECA path needs PyTorch: pip install -e '.[deca]'") from err

log = logging.getLogger(__name__)

IMAGE_SIZE = 224  # AvgPool2d(7) after a /32 backbone: the encoders take exactly 224 x 224
CODE_SIZE = 236  # E_flame output
DETAIL_SIZE = 128  # E_detail output
DETAIL_INPUT_SIZE = 3 + 50 + DETAIL_SIZE  # jaw, exp, detail code
UV_SIZE = 256  # D_detail output
MAX_Z = 0.01  # D_detail's out_scale: displacements in FLAME units (metres)

# DECA's param_list order (decalib/utils/config.py) and sizes; light is 9 SH coefficients x RGB.
CODE_LAYOUT: tuple[tuple[str, int], ...] = (("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3),
                                            ("light", 27))
NETWORK_NAMES = ("E_flame", "E_detail", "D_detail")
EXPECTED_ENTRIES = {"E_flame": 322, "E_detail": 322, "D_detail": 44}


# ----------------------------------------------------------------------------------------------------------------------
# Encoders: a ResNet-50 backbone (torchvision's child names, no fc, fixed 7x7 average pool) and a 2-layer MLP head.


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)  # stride here
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class ResNet50(nn.Module):
    """ResNet-50 up to the 2048-d pooled feature, as DECA's ``resnet.load_ResNet50Model``."""

    def __init__(self) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 3)
        self.layer2 = self._make_layer(128, 4, stride=2)
        self.layer3 = self._make_layer(256, 6, stride=2)
        self.layer4 = self._make_layer(512, 3, stride=2)
        self.avgpool = nn.AvgPool2d(7, stride=1)  # fixed, not adaptive: 224 x 224 input only

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


class ResnetEncoder(nn.Module):
    """E_flame (outsize 236) and E_detail (outsize 128): RGB [0, 1] NCHW 224 x 224, no mean/std normalisation."""

    def __init__(self, outsize: int) -> None:
        super().__init__()
        self.encoder = ResNet50()
        self.layers = nn.Sequential(nn.Linear(2048, 1024), nn.ReLU(), nn.Linear(1024, outsize))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(self.encoder(images))


# ----------------------------------------------------------------------------------------------------------------------
# Detail decoder: DECA's DCGAN-style Generator(latent_dim=181, out_channels=1, out_scale=0.01, 'bilinear').


def _up_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
        nn.Conv2d(in_channels, out_channels, 3, stride=1, padding=1),
        nn.BatchNorm2d(out_channels, eps=0.8),  # upstream's BatchNorm2d(c, 0.8): the 0.8 is eps, keep it
        nn.LeakyReLU(0.2, inplace=True),
    ]


class DetailGenerator(nn.Module):
    """D_detail: [jaw(3), exp(50), detail(128)] -> UV displacement [B, 1, 256, 256] in [-0.01, 0.01]."""

    init_size = 8

    def __init__(self, latent_dim: int = DETAIL_INPUT_SIZE, out_scale: float = MAX_Z) -> None:
        super().__init__()
        self.out_scale = out_scale
        self.l1 = nn.Sequential(nn.Linear(latent_dim, 128 * self.init_size**2))
        self.conv_blocks = nn.Sequential(
            nn.BatchNorm2d(128),  # eps 1e-5, unlike the inner ones
            *_up_block(128, 128),  # 16
            *_up_block(128, 64),  # 32
            *_up_block(64, 64),  # 64
            *_up_block(64, 32),  # 128
            *_up_block(32, 16),  # 256
            nn.Conv2d(16, 1, 3, stride=1, padding=1),
            nn.Tanh(),
        )

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        x = self.l1(latent).view(latent.shape[0], 128, self.init_size, self.init_size)
        return self.conv_blocks(x) * self.out_scale


def build_networks() -> dict[str, nn.Module]:
    """Freshly initialised E_flame, E_detail, D_detail (eval mode), keyed by their checkpoint names."""
    networks = {"E_flame": ResnetEncoder(CODE_SIZE), "E_detail": ResnetEncoder(DETAIL_SIZE),
                "D_detail": DetailGenerator()}
    for name, network in networks.items():
        assert len(network.state_dict()) == EXPECTED_ENTRIES[name], name
        network.eval()
    return networks


# ----------------------------------------------------------------------------------------------------------------------
# The checkpoint.


@dataclass(frozen=True, eq=False)
class DecaNetworks:
    """The three networks with the checkpoint's weights, in eval mode, on the CPU."""

    e_flame: ResnetEncoder
    e_detail: ResnetEncoder
    d_detail: DetailGenerator


def load_deca_checkpoint(path: Path) -> DecaNetworks:
    """Load the user's ``deca_model.tar`` strictly; any problem is a one-line `UserError` naming the file."""
    path = Path(path)
    checkpoint = _read_checkpoint(path)
    networks = build_networks()
    for name, network in networks.items():
        _load_strict(path, name, network, checkpoint)
    extras = sorted(str(k) for k in checkpoint if k not in NETWORK_NAMES)
    log.info("loaded DECA networks from %s (other entries ignored: %s)", path, ", ".join(extras) or "none")
    return DecaNetworks(e_flame=networks["E_flame"], e_detail=networks["E_detail"], d_detail=networks["D_detail"])


def _read_checkpoint(path: Path) -> Mapping:
    if not path.is_file():
        raise UserError(f"DECA checkpoint {path} not found: download deca_model.tar from the DECA project and point "
                        "the app at it")
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        raise UserError(f"DECA checkpoint {path} is empty: download deca_model.tar again")
    if head.lstrip()[:1] == b"<":
        raise UserError(f"DECA checkpoint {path} is an HTML page, not a checkpoint (a failed Google Drive download, "
                        "DECA issue #213): download deca_model.tar again from a browser")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch reports bad files as UnpicklingError, RuntimeError, EOFError, zipfile errors...
        raise UserError(_describe_load_failure(path, err)) from err
    if not isinstance(checkpoint, Mapping):
        raise UserError(f"DECA checkpoint {path} holds a {type(checkpoint).__name__}, not a dict with "
                        f"{', '.join(NETWORK_NAMES)}: is it deca_model.tar?")
    missing = [name for name in NETWORK_NAMES if not isinstance(checkpoint.get(name), Mapping)]
    if missing:
        found = ", ".join(sorted(str(k) for k in checkpoint)[:8]) or "nothing"
        raise UserError(f"DECA checkpoint {path} has no {', '.join(missing)} network (found: {found}): "
                        "is it DECA's deca_model.tar?")
    return checkpoint


def _describe_load_failure(path: Path, err: Exception) -> str:
    message = str(err)
    refused = re.search(r"GLOBAL ([\w.]+)", message)
    if refused:
        return (f"DECA checkpoint {path} contains a pickled Python object ({refused.group(1)}) that is not loaded "
                "because loading it could run code: use the released deca_model.tar, or re-save only its "
                "E_flame/E_detail/D_detail state dicts from a trusted copy")
    if "invalid load key, '<'" in message:
        return f"DECA checkpoint {path} is an HTML page, not a checkpoint (DECA issue #213): download it again"
    truncated = ("zip archive", "truncated", "unexpected eof", "corrupted")
    if isinstance(err, EOFError | zipfile.BadZipFile) or any(word in message.lower() for word in truncated):
        return f"DECA checkpoint {path} is truncated or corrupt: download deca_model.tar again"
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), type(err).__name__)
    return (f"DECA checkpoint {path} could not be read ({type(err).__name__}: {first_line[:160]}): "
            "download deca_model.tar again")


def _load_strict(path: Path, name: str, network: nn.Module, checkpoint: Mapping) -> None:
    state = checkpoint[name]
    expected = network.state_dict()
    where = f"DECA checkpoint {path}, {name}"
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise UserError(f"{where}: entries that are not tensors: {_first(not_tensors)}")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        hint = " (keys carry a 'module.' prefix: a DataParallel save; strip it)" if any(
            str(k).startswith("module.") for k in unexpected) else ""
        problems = [f"{len(keys)} {what}: {_first(keys)}" for what, keys in (("missing", missing),
                                                                            ("unexpected", unexpected)) if keys]
        raise UserError(f"{where}: the keys are not DECA's {len(expected)} {name} keys ({'; '.join(problems)}){hint}")
    wrong = [f"{k} {list(state[k].shape)} != {list(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise UserError(f"{where}: {len(wrong)} tensors have the wrong shape: {_first(wrong)}")
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:  # already checked above; kept so no torch message escapes unexplained
        raise UserError(f"{where}: {str(err).splitlines()[0]}") from err


def _first(items: list, count: int = 3) -> str:
    if not items:
        return "none"
    more = f", ... (+{len(items) - count})" if len(items) > count else ""
    return ", ".join(str(i) for i in items[:count]) + more


# ----------------------------------------------------------------------------------------------------------------------
# Codes.


def decompose_code(code: np.ndarray | torch.Tensor) -> dict[str, np.ndarray | torch.Tensor]:
    """Split E_flame's 236-d code (shape (236,) or (B, 236)) into DECA's parameters, keeping the array type.

    'shape' 100, 'tex' 50, 'exp' 50, 'pose' 6 (global rotation 0:3, jaw 3:6, axis-angle), 'cam' 3 (s, tx, ty),
    'light' (9, 3) (SH coefficient-major, RGB-minor).
    """
    if code.shape[-1] != CODE_SIZE:
        raise ValueError(f"a DECA code has {CODE_SIZE} values, got shape {tuple(code.shape)}")
    parts, start = {}, 0
    for name, size in CODE_LAYOUT:
        parts[name] = code[..., start:start + size]
        start += size
    parts["light"] = parts["light"].reshape(*code.shape[:-1], 9, 3)
    return parts


def detail_input(jaw: np.ndarray | torch.Tensor, exp: np.ndarray | torch.Tensor,
                 detail: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """D_detail's input: concatenate [jaw (3), exp (50), detail (128)] along the last axis -> 181 (upstream order)."""
    sizes = (jaw.shape[-1], exp.shape[-1], detail.shape[-1])
    if sizes != (3, 50, DETAIL_SIZE):
        raise ValueError(f"D_detail takes jaw (3), exp (50), detail ({DETAIL_SIZE}); got {sizes}")
    if any(isinstance(x, torch.Tensor) for x in (jaw, exp, detail)):
        return torch.cat([torch.as_tensor(x, dtype=torch.float32) for x in (jaw, exp, detail)], dim=-1)
    return np.concatenate([jaw, exp, detail], axis=-1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# Inference.


class DecaEncoder:
    """Per-image inference with the loaded networks: numpy in, numpy out, batch 1, torch eager on the CPU.

    ``num_threads`` sets torch's intra-op threads (process-wide, `torch.set_num_threads`); 2 matches these 2-core
    machines, where more threads only contend with capture, tracking and rendering. None leaves torch's setting alone.
    """

    def __init__(self, networks: DecaNetworks, num_threads: int | None = 2) -> None:
        self.networks = networks
        if num_threads is not None:
            torch.set_num_threads(num_threads)

    def encode(self, crop: np.ndarray) -> dict[str, np.ndarray]:
        """E_flame on a DECA crop (224, 224, 3) float32 RGB in [0, 1]: `decompose_code` of the 236-d code."""
        with torch.inference_mode():
            code = self.networks.e_flame(_to_batch(crop))[0].numpy()
        return decompose_code(code)

    def encode_detail(self, crop: np.ndarray) -> np.ndarray:
        """E_detail on a DECA crop: the (128,) detail code (run once per identity)."""
        with torch.inference_mode():
            return self.networks.e_detail(_to_batch(crop))[0].numpy()

    def decode_detail(self, jaw: np.ndarray, exp: np.ndarray, detail: np.ndarray) -> np.ndarray:
        """D_detail: the (256, 256) float32 UV displacement in [-0.01, 0.01] for this jaw (3), exp (50), detail."""
        latent = torch.from_numpy(detail_input(np.ravel(jaw), np.ravel(exp), np.ravel(detail)))[None]
        with torch.inference_mode():
            return self.networks.d_detail(latent)[0, 0].numpy()


def _to_batch(crop: np.ndarray) -> torch.Tensor:
    if crop.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"a DECA crop is ({IMAGE_SIZE}, {IMAGE_SIZE}, 3) RGB in [0, 1], got {crop.shape}")
    return torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1), dtype=np.float32))[None]

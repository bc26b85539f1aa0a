"""Stand-ins for the user's ``deca_model.tar``: DECA's exact architecture and key names with seeded random weights.

The real file is licensed and never shipped, so tests write one in the upstream layout (``{'E_flame': state_dict,
'E_detail': ..., 'D_detail': ..., 'epoch', 'iter', 'batch_size'}``), plus broken variants that users actually end up
with: a missing or renamed key, a wrong shape, a truncated download, an HTML page saved as .tar, and a file carrying a
pickled callable.
"""

import os
from collections.abc import Callable
from pathlib import Path

import torch

from realtime.deca.networks import build_networks

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
             b"Google Drive can't scan this file for viruses.</body></html>\n")


def random_networks(seed: int = 0) -> dict[str, torch.nn.Module]:
    """E_flame, E_detail, D_detail with seeded random weights and slightly randomised BatchNorm statistics (eval)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the modules' own initialisation
    networks = build_networks()
    with torch.no_grad():
        for network in networks.values():
            for module in network.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    n = module.num_features
                    module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                    module.running_var.copy_(1.0 + 0.2 * torch.rand(n, generator=generator))
                    module.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=generator))
                    module.bias.copy_(0.1 * torch.randn(n, generator=generator))
                    module.num_batches_tracked.fill_(1000)
    return networks


def checkpoint_dict(networks: dict[str, torch.nn.Module], extra: bool = True) -> dict:
    """The upstream top-level layout; ``extra`` adds the training bookkeeping the released file carries."""
    checkpoint: dict = {name: network.state_dict() for name, network in networks.items()}
    if extra:
        checkpoint.update(epoch=7, iter=1000, batch_size=16)
        # trainer.py also saves the optimiser's state_dict: plain containers and numbers, which weights_only accepts
        optimizer = torch.optim.Adam(networks["D_detail"].parameters(), lr=1e-4)
        checkpoint["opt"] = optimizer.state_dict()
    return checkpoint


def write_deca_checkpoint(path: Path, seed: int = 0, extra: bool = True,
                          legacy_format: bool = False) -> dict[str, torch.nn.Module]:
    """Write a random-weight ``deca_model.tar`` to ``path``; returns the networks it holds (eval mode).

    ``legacy_format`` writes torch's pre-1.6 (non-zip) serialisation, as a checkpoint saved in 2020 may be.
    """
    networks = random_networks(seed)
    torch.save(checkpoint_dict(networks, extra), path, _use_new_zipfile_serialization=not legacy_format)
    return networks


# ----------------------------------------------------------------------------------------------------------------------
# Broken variants. Each takes a valid checkpoint dict (from `checkpoint_dict`) and the path to write.


def _edited(checkpoint: dict, network: str, edit: Callable[[dict], dict]) -> dict:
    return {**checkpoint, network: edit(dict(checkpoint[network]))}


def write_missing_key(checkpoint: dict, path: Path) -> None:
    """E_flame without ``layers.2.bias``."""
    torch.save(_edited(checkpoint, "E_flame", lambda sd: {k: v for k, v in sd.items() if k != "layers.2.bias"}), path)


def write_module_prefix(checkpoint: dict, path: Path) -> None:
    """E_detail saved from a DataParallel wrapper: every key starts with ``module.``."""
    torch.save(_edited(checkpoint, "E_detail", lambda sd: {f"module.{k}": v for k, v in sd.items()}), path)


def write_unexpected_key(checkpoint: dict, path: Path) -> None:
    """E_flame with torchvision's classifier left in."""
    def add_fc(sd: dict) -> dict:
        return {**sd, "encoder.fc.weight": torch.zeros(1000, 2048), "encoder.fc.bias": torch.zeros(1000)}
    torch.save(_edited(checkpoint, "E_flame", add_fc), path)


def write_wrong_shape(checkpoint: dict, path: Path) -> None:
    """D_detail whose first layer takes 180 inputs instead of 181."""
    def shrink(sd: dict) -> dict:
        return {**sd, "l1.0.weight": sd["l1.0.weight"][:, :180].clone()}
    torch.save(_edited(checkpoint, "D_detail", shrink), path)


def write_missing_network(checkpoint: dict, path: Path) -> None:
    """No D_detail at all (e.g. a coarse-only checkpoint)."""
    torch.save({k: v for k, v in checkpoint.items() if k != "D_detail"}, path)


def write_not_a_dict(checkpoint: dict, path: Path) -> None:
    """A bare tensor."""
    torch.save(torch.zeros(3), path)


def write_truncated(checkpoint: dict, path: Path, legacy_format: bool = False) -> None:
    """An interrupted download: the first half of a valid file."""
    torch.save(checkpoint, path, _use_new_zipfile_serialization=not legacy_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def write_empty(checkpoint: dict, path: Path) -> None:
    path.write_bytes(b"")


def write_html(checkpoint: dict, path: Path) -> None:
    """What Google Drive returns instead of a large file (DECA issue #213)."""
    path.write_bytes(HTML_PAGE)


class RunsCommand:
    """Unpickling this object calls ``os.system(command)``: what a malicious checkpoint would carry."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return os.system, (self.command,)


def write_pickled_callable(checkpoint: dict, path: Path, marker: Path) -> None:
    """A checkpoint whose ``opt`` entry, if unpickled unsafely, creates ``marker``."""
    torch.save({**checkpoint, "opt": RunsCommand(f"touch '{marker}'")}, path)


BROKEN_VARIANTS: dict[str, Callable[[dict, Path], None]] = {
    "missing_key": write_missing_key,
    "module_prefix": write_module_prefix,
    "unexpected_key": write_unexpected_key,
    "wrong_shape": write_wrong_shape,
    "missing_network": write_missing_network,
    "not_a_dict": write_not_a_dict,
    "truncated": write_truncated,
    "truncated_legacy": lambda checkpoint, path: write_truncated(checkpoint, path, legacy_format=True),
    "empty": write_empty,
    "html": write_html,
}

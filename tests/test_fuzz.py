"""Fuzzing the loaders of untrusted files: thousands of seeded mutations of small images and model pickles.

Whatever the bytes, ``read_image`` returns an RGB picture or raises the one-line ``UserError``, and ``import_flame``
raises the one-line ``UserError`` (no seed is a whole FLAME model); nothing else escapes, and no mutation of a pickle
that would run a command gets to run it. Seeded, so a failure names a reproducible case.
"""

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from PIL import Image

import tests.deca_fixtures as fx
from realtime.deca.flame import import_flame
from realtime.errors import UserError
from realtime.io.images import MAX_SIDE, read_image

pytestmark = pytest.mark.faults

MUTATIONS = 2000


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: flipped bytes, a cut, inserted junk, a duplicated slice, or a large number written in."""
    data = bytearray(data)
    position = int(rng.integers(0, len(data)))
    match int(rng.integers(0, 5)):
        case 0:
            for at in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                data[at] ^= 1 << int(rng.integers(0, 8))
        case 1:
            del data[position:]
        case 2:
            data[position:position] = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        case 3:
            end = min(len(data), position + int(rng.integers(1, 256)))
            data[position:position] = data[position:end]
        case 4:
            data[position : position + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00",
                                                        b"\x00\x01\x00\x00"])
    return bytes(data)


def image_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    picture = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    variants = [(picture, "JPEG", {}), (picture, "JPEG", {"exif": exif, "progressive": True}),
                (picture, "PNG", {}), (picture.convert("L"), "PNG", {}), (picture.convert("CMYK"), "JPEG", {}),
                (picture.convert("P"), "GIF", {}), (picture, "BMP", {}), (picture, "WEBP", {}),
                (picture.convert("RGBA"), "PNG", {}),
                (Image.fromarray(rng.integers(0, 65536, (24, 32), dtype=np.uint16)), "PNG", {})]
    seeds = []
    for image, kind, options in variants:
        buffer = io.BytesIO()
        image.save(buffer, kind, **options)
        seeds.append(buffer.getvalue())
    return seeds


def pickle_seeds(marker: Path) -> list[bytes]:
    rng = np.random.default_rng(1)
    small_flame = {
        "f": np.arange(12, dtype=np.uint32).reshape(4, 3),
        "J_regressor": scipy.sparse.csc_matrix(rng.random((2, 6)) * (rng.random((2, 6)) > 0.5)),
        "kintree_table": np.array([[4294967295, 0], [0, 1]], np.int64),
        "v_template": fx.Ch(rng.random((6, 3))),
        "bs_style": "lbs",
    }
    running = marker.parent / "runs.pkl"
    fx.write_malicious_pickle(running, marker)
    return [fx.legacy_dumps(small_flame), fx.legacy_dumps({"v_template": rng.random((6, 3))}, protocol=2,
                                                          python2_strings=False), running.read_bytes()]


def fuzz(seeds: list[bytes], load: Callable[[Path], object], folder: Path, seed: int) -> dict[str, int]:
    """Feed MUTATIONS mutated seeds to ``load``; count the outcomes. Any exception but UserError fails the test."""
    rng = np.random.default_rng(seed)
    outcomes = {"loaded": 0, "refused": 0}
    path = folder / "fuzzed"
    for case in range(MUTATIONS):
        data = mutate(seeds[case % len(seeds)], rng)
        path.write_bytes(data)
        try:
            load(path)
        except UserError as error:
            assert "\n" not in str(error), f"case {case}: {error}"
            outcomes["refused"] += 1
        except Exception as error:  # the finding: keep the bytes for the report
            (folder / f"crash-{case}").write_bytes(data)
            raise AssertionError(f"case {case} (seed {seed}) escaped as {type(error).__name__}: {error}") from error
        else:
            outcomes["loaded"] += 1
    return outcomes


def test_mutated_images_load_or_give_the_one_line_error(tmp_path: Path) -> None:
    def load(path: Path) -> None:
        rgb = read_image(path)
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and max(rgb.shape) <= MAX_SIDE

    outcomes = fuzz(image_seeds(), load, tmp_path, seed=7)
    assert outcomes["refused"] > 0.2 * MUTATIONS and outcomes["loaded"] > 0.05 * MUTATIONS, outcomes


def test_mutated_model_pickles_give_the_one_line_error_and_never_run_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    outcomes = fuzz(pickle_seeds(marker), lambda path: import_flame(path, None), tmp_path, seed=11)
    assert outcomes == {"loaded": 0, "refused": MUTATIONS}
    assert not marker.exists()

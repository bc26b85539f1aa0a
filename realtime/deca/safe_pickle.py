"""Reading pickled model files without running code from them.

FLAME's ``generic_model.pkl`` and DECA's ``landmark_embedding.npy`` are pickles. ``pickle.load`` and
``np.load(allow_pickle=True)`` call whatever callables a file names, so a tampered download would run code. The
unpickler here resolves a fixed table of globals and refuses everything else with `UnsafePickleError`, before calling
anything. The table is what the real files reference:

* FLAME 2020 ``generic_model.pkl``: a Python 2 pickle (protocol 2, read with ``encoding='latin1'``) of a dict of
  numpy arrays (``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``, ``numpy.dtype``), chumpy arrays
  (``chumpy.ch.Ch``, whose state dict keeps the array under ``'x'``; its ``_dirty_vars`` is a ``__builtin__.set``)
  and a ``scipy.sparse.csc.csc_matrix`` (state dict: ``data``, ``indices``, ``indptr``, ``_shape``).
  FLAME 2023 pickles hold the same with newer module paths (``numpy._core``, ``scipy.sparse._csc``).
* ``landmark_embedding.npy``: a .npy file of a 0-d object array holding a dict. Two of its values are torch tensors,
  pickled as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, OrderedDict())`` with the
  storage as ``torch.storage._load_from_bytes(<torch.save bytes>)`` (at protocol 2 those bytes are written as
  ``_codecs.encode(text, 'latin1')``). The storage bytes are read by ``torch.load(weights_only=True)``, torch's own
  restricted unpickler.

chumpy is never imported: its arrays become a stub that keeps the pickled state. Sparse matrices are rebuilt with the
scipy constructor from their state (so that old and new scipy state layouts both load), tensors become numpy arrays.
`restricted_load` returns plain numpy arrays, scipy matrices and Python containers.
"""

import codecs
import contextlib
import importlib
import io
import logging
import pickle
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

from realtime.errors import UserError

log = logging.getLogger(__name__)

CHUMPY_MODULES = ("chumpy.ch", "chumpy.ch_ops", "chumpy.reordering")
SPARSE_CLASSES = {
    ("scipy.sparse.csc", "csc_matrix"): "csc",
    ("scipy.sparse._csc", "csc_matrix"): "csc",
    ("scipy.sparse._csc", "csc_array"): "csc",
    ("scipy.sparse.csr", "csr_matrix"): "csr",
    ("scipy.sparse._csr", "csr_matrix"): "csr",
    ("scipy.sparse._csr", "csr_array"): "csr",
}

LANDMARK_EMBEDDING_SHAPES = {
    "static_lmk_faces_idx": (51,),
    "static_lmk_bary_coords": (51, 3),
    "dynamic_lmk_faces_idx": (79, 17),
    "dynamic_lmk_bary_coords": (79, 17, 3),
    "full_lmk_faces_idx": (1, 68),
    "full_lmk_bary_coords": (1, 68, 3),
}


class UnsafePickleError(ValueError):
    """The file names a global outside the allow-list. Nothing it names has been called."""


# ---------------------------------------------------------------------------------------------------------------------
# Stand-ins for classes we rebuild without their libraries


class ChumpyStub:
    """Stand-in for a chumpy object: keeps the pickled state dict, evaluates nothing."""

    chumpy_name = "chumpy.ch.Ch"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"unexpected {self.chumpy_name} state of type {type(state).__name__}")
        self.state = state

    def stored_array(self) -> Any:
        """The ``'x'`` of the state: the array a plain ``Ch`` holds."""
        state = getattr(self, "state", {})
        if "x" not in state:
            raise ValueError(f"a {self.chumpy_name} expression has no stored array: it needs chumpy to evaluate")
        return state["x"]


class SparseStub:
    """Stand-in for a scipy sparse matrix while unpickling: keeps the state dict, rebuilt by `to_scipy`."""

    sparse_format = "csc"

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise ValueError(f"unexpected sparse matrix state of type {type(state).__name__}")
        self.state = state

    def to_scipy(self) -> Any:
        import scipy.sparse

        state = getattr(self, "state", {})
        shape = state.get("_shape", state.get("shape"))
        parts = [state.get(key) for key in ("data", "indices", "indptr")]
        if shape is None or any(not isinstance(part, np.ndarray) for part in parts):
            raise ValueError(f"a {self.sparse_format} matrix without data/indices/indptr/shape")
        matrix_class = scipy.sparse.csc_matrix if self.sparse_format == "csc" else scipy.sparse.csr_matrix
        return matrix_class(tuple(parts), shape=tuple(int(n) for n in shape))


_chumpy_stubs: dict[str, type] = {}


def _chumpy_stub(module: str, name: str) -> type:
    """One stub class per chumpy class name, so error messages can say which one a file used."""
    full_name = f"{module}.{name}"
    if full_name not in _chumpy_stubs:
        _chumpy_stubs[full_name] = type(name, (ChumpyStub,), {"chumpy_name": full_name})
    return _chumpy_stubs[full_name]


_CscStub = type("csc_matrix", (SparseStub,), {"sparse_format": "csc"})
_CsrStub = type("csr_matrix", (SparseStub,), {"sparse_format": "csr"})


# ---------------------------------------------------------------------------------------------------------------------
# Checked versions of the callables a pickle may name


def _reconstructor(cls: type, base: type, state: Any) -> object:
    """``copyreg._reconstructor`` (protocol 0/1 objects), for the stub classes only."""
    if base is not object or not (isinstance(cls, type) and issubclass(cls, ChumpyStub | SparseStub)):
        raise UnsafePickleError(f"refused: copyreg._reconstructor of {cls!r} is not allowed in a model file")
    return object.__new__(cls)


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode``: how protocol 2 writes ``bytes`` from Python 3. Text codecs only."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("iso8859-1", "utf-8", "ascii"):
        raise UnsafePickleError(f"refused: _codecs.encode with {encoding!r} is not allowed in a model file")
    return codecs.encode(text, encoding)


def _load_storage_from_bytes(data: Any) -> Any:
    """``torch.storage._load_from_bytes``, read by torch's own restricted loader."""
    torch = _import_torch()
    if not isinstance(data, bytes):
        raise UnsafePickleError("refused: torch.storage._load_from_bytes of something other than bytes")
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _rebuild_tensor(
    storage: Any, offset: int, size: Any, stride: Any, requires_grad: bool, hooks: Any, metadata: Any = None
) -> Any:
    """``torch._utils._rebuild_tensor_v2`` for a plain tensor: a storage, no hooks, no metadata."""
    torch = _import_torch()
    if not isinstance(storage, torch.storage.TypedStorage | torch.UntypedStorage):
        raise UnsafePickleError("refused: torch._utils._rebuild_tensor_v2 of something other than a storage")
    if hooks or metadata:
        raise UnsafePickleError("refused: a tensor with backward hooks or metadata is not allowed in a model file")
    return torch._utils._rebuild_tensor_v2(storage, offset, tuple(size), tuple(stride), False, OrderedDict())


def _import_torch() -> Any:
    try:
        return importlib.import_module("torch")
    except ImportError as err:
        raise UserError("this model file holds torch tensors: install torch with pip install -e '.[deca]'") from err


def _numpy_attr(submodule: str, name: str) -> Callable:
    """A numpy internal from ``numpy._core`` (numpy 2) or ``numpy.core`` (numpy 1)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{package}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"numpy has no {submodule}.{name}")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): _encode,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = _numpy_attr("multiarray", "_reconstruct")
        allowed[(f"{package}.multiarray", "scalar")] = _numpy_attr("multiarray", "scalar")
        allowed[(f"{package}.numeric", "_frombuffer")] = _numpy_attr("numeric", "_frombuffer")
    for builtins_module in ("__builtin__", "builtins"):  # Python 2 names arrive unmapped in find_class
        for name, value in (("set", set), ("frozenset", frozenset), ("complex", complex)):
            allowed[(builtins_module, name)] = value
    for copyreg_module in ("copy_reg", "copyreg"):
        allowed[(copyreg_module, "_reconstructor")] = _reconstructor
    for key, sparse_format in SPARSE_CLASSES.items():
        allowed[key] = _CscStub if sparse_format == "csc" else _CsrStub
    return allowed


_ALLOWED = _allowed_globals()


# ---------------------------------------------------------------------------------------------------------------------
# The unpickler and the conversion to plain values


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; chumpy classes become `ChumpyStub` subclasses."""

    def find_class(self, module: str, name: str) -> Any:
        if module in CHUMPY_MODULES:
            return _chumpy_stub(module, name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise UnsafePickleError(f"refused: {module}.{name} is not allowed in a model file")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused: persistent ids are not allowed in a model file")


def restricted_load(file: BinaryIO) -> Any:
    """Unpickle ``file`` through the allow-list and return plain values (see `to_plain`).

    Raises `UnsafePickleError` for a refused global, and whatever pickle raises for a damaged stream
    (``UnpicklingError``, ``EOFError``, ``ValueError``, ...): callers turn both into a `UserError` naming the file.
    """
    return to_plain(RestrictedUnpickler(file, encoding="latin1").load())


def restricted_loads(data: bytes) -> Any:
    return restricted_load(io.BytesIO(data))


def to_plain(value: Any) -> Any:
    """chumpy stubs -> ndarray, sparse stubs -> scipy matrices, torch tensors -> ndarray, through containers."""
    memo: dict[int, Any] = {}

    def convert(item: Any) -> Any:
        key = id(item)
        if key in memo:
            return memo[key]
        if isinstance(item, ChumpyStub):
            memo[key] = None  # a chumpy array holding itself is refused below as not an array
            result: Any = np.asarray(convert(item.stored_array()))
            if result.dtype.hasobject:
                raise ValueError(f"a {item.chumpy_name} holds no numeric array")
        elif isinstance(item, SparseStub):
            result = item.to_scipy()
        elif type(item).__module__ == "torch" and type(item).__name__ == "Tensor":
            result = item.detach().cpu().numpy().copy()
        elif isinstance(item, dict):
            result = type(item)() if type(item) in (dict, OrderedDict) else {}
            memo[key] = result
            for k, v in item.items():
                result[k] = convert(v)
        elif isinstance(item, list):
            result = []
            memo[key] = result
            result.extend(convert(v) for v in item)
        elif isinstance(item, tuple):
            result = tuple(convert(v) for v in item)
        elif isinstance(item, np.ndarray) and item.dtype.hasobject:
            result = np.empty(item.shape, dtype=object)
            memo[key] = result
            for index in np.ndindex(item.shape):
                result[index] = convert(item[index])
        else:
            result = item
        memo[key] = result
        return result

    return convert(value)


@contextlib.contextmanager
def refused_in_one_line(path: Path, kind: str, expected: str) -> Iterator[None]:
    """Within the block, a file refused by the restricted unpickler or one no parser can read becomes a one-line
    `UserError` naming ``path``, what it is not (``kind``, e.g. "pickle") and what was ``expected``."""
    try:
        yield
    except UserError:
        raise
    except UnsafePickleError as err:
        raise UserError(f"{path}: {err} {expected}") from err
    except Exception as err:  # a damaged or foreign file: any parser error
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        raise UserError(f"{path}: not a readable {kind} ({reason}); is the download complete? {expected}") from err


def load_npy(path: Path) -> np.ndarray:
    """A .npy array; object arrays (pickled payloads) go through the restricted unpickler, never ``np.load``.

    Raises `UnsafePickleError` or ``ValueError``/``EOFError``/pickle errors for a refused or damaged file.
    """
    with open(path, "rb") as fp:
        version = npy_format.read_magic(fp)
        if version == (1, 0):
            _, _, dtype = npy_format.read_array_header_1_0(fp)
        elif version == (2, 0):
            _, _, dtype = npy_format.read_array_header_2_0(fp)
        else:
            raise ValueError(f".npy format version {version} is not supported")
        if not dtype.hasobject:
            fp.seek(0)
            return npy_format.read_array(fp, allow_pickle=False)
        array = restricted_load(fp)
    if not isinstance(array, np.ndarray):
        raise ValueError(f"the pickled payload is a {type(array).__name__}, not an array")
    return array


def load_landmark_embedding(path: Path) -> dict[str, np.ndarray]:
    """DECA's ``data/landmark_embedding.npy`` as numpy arrays (face indices int64, barycentric coordinates float32).

    Keys and shapes: see `LANDMARK_EMBEDDING_SHAPES`. ``dynamic_*`` is the yaw look-up table for the 17 jaw-contour
    landmarks (79 one-degree bins from -39 to +39).
    """
    path = Path(path)
    expected = "(expected DECA's data/landmark_embedding.npy)"
    if not path.is_file():
        raise UserError(f"{path}: file not found {expected}")
    with refused_in_one_line(path, ".npy file", expected):
        array = load_npy(path)
    content = array.item() if array.dtype.hasobject and array.shape == () else None
    if not isinstance(content, dict):
        raise UserError(f"{path}: does not hold a dict of arrays {expected}")
    embedding: dict[str, np.ndarray] = {}
    for key, shape in LANDMARK_EMBEDDING_SHAPES.items():
        if key not in content:
            raise UserError(f"{path}: missing {key!r} {expected}")
        value = np.asarray(content[key])
        if value.shape != shape:
            raise UserError(f"{path}: {key!r} has shape {value.shape}, not {shape} {expected}")
        embedding[key] = value.astype(np.int64 if key.endswith("_idx") else np.float32)
    log.info("read the landmark embedding %s", path)
    return embedding

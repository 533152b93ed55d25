"""Read pickled checkpoints without running code from them.

A pickle can name any importable callable (e.g. `os.system` through `__reduce__`) and the stock unpickler calls it.
The official model-zoo `.pkl` files only need numpy arrays, dtypes, scalars and plain containers, so
`RestrictedUnpickler` admits exactly those (plus torch tensors, rebuilt through `torch.load(weights_only=True)`)
and refuses every other global with an error naming it. Files written by `torch.save` (zip or legacy format) are
read with `torch.load(weights_only=True)`, torch's own restricted unpickler.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from typing import Any

import torch

from maskformer.checkpoint import CheckpointError  # a ValueError: unreadable weights

# torch's legacy (non-zip) `torch.save` format starts with this pickled integer.
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global outside the allowed set (it could run code)."""


def _load_tensor_bytes(data: bytes) -> Any:
    """Stand-in for `torch.storage._load_from_bytes` (which uses weights_only=False): the restricted torch loader."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object for every global a weight pickle may reference."""
    import _codecs
    import builtins
    import collections

    import numpy as np

    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_tensor_bytes,
        ("_codecs", "encode"): _codecs.encode,  # latin-1 str -> bytes: array buffers in protocol-2 pickles of Python 3
    }
    for name in ("set", "frozenset", "bytearray", "complex"):
        allowed[("builtins", name)] = getattr(builtins, name)
    core = np._core if hasattr(np, "_core") else np.core
    for mod in ("numpy.core", "numpy._core"):  # pickles name the module of the numpy that wrote them
        allowed[(f"{mod}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = core.numeric._frombuffer
    for name in "ndarray dtype float16 float32 float64 int8 int16 int32 int64 uint8 bool_".split():
        allowed[("numpy", name)] = getattr(np, name)
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of `_allowed_globals()`; any other raises `UnsafePickleError`."""

    def __init__(self, file, *, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")  # latin1: Python-2 pickles (old detectron2 ImageNet weights)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        obj = self._allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self._source}: refusing to load the global {module}.{name}; a weight file may only hold numpy "
                "arrays, torch tensors and plain containers (this file could run code when unpickled)"
            )
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in a plain pickle ({pid!r})")


def _torch_load(path: str) -> Any:
    """`torch.load(weights_only=True)`, with its refusal turned into an `UnsafePickleError` naming the file."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafePickleError(
            f"{path}: torch.load(weights_only=True) refused this file ({first}); it holds objects other than "
            "tensors and plain containers"
        ) from None


def load_weights_pickle(path: str | os.PathLike) -> Any:
    """The unpickled object of a `.pkl` / `.pth` / `.bin` weight file (see the module doc); `UnsafePickleError` for a
    forbidden global, `ValueError` for a file that is not a readable pickle, each naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04" and zipfile.is_zipfile(path):
            return _torch_load(path)
        f.seek(0)
        try:
            obj = RestrictedUnpickler(f, source=path).load()
        except UnsafePickleError:
            raise
        except Exception as e:  # only allowed globals run, so any failure is a damaged stream (codec, key, struct...)
            raise CheckpointError(f"{path}: not a readable weight pickle (truncated or corrupted?): {e}") from None
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return _torch_load(path)
    return obj

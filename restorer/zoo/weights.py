"""Reading checkpoints safely and without torch: safetensors, or PyTorch files through
restorer.zoo.torchfile (a restricted unpickler); tensors come out as numpy arrays, memory-
mapped where the format allows, and nothing in a model file is ever run."""

from __future__ import annotations

import json
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from restorer.zoo import torchfile
from restorer.zoo.catalog import ModelSpec
from restorer.zoo.layout import StoreError

# The keys official loaders read the tensors from, in the order basicsr falls back through.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "model_state", "model_state_dict")


def _lenient(spec: ModelSpec | None) -> bool:
    """The official loader keeps only the keys it knows (old-photo VAE and mapping), so
    released files may hold extra tensors: catalog `strict = false`."""
    return spec is not None and spec.extra.get("strict") is False


def _unwrap(obj, wrapper_key: str = "") -> dict:
    """The tensors of a checkpoint: the wrapper key (the spec's first, then the usual
    ones) opened, and a leading `module.` (DataParallel) removed from every name."""
    if not isinstance(obj, dict):
        raise StoreError(f"the checkpoint holds a {type(obj).__name__}, not a dictionary of tensors")
    for key in ([wrapper_key] if wrapper_key else []) + list(WRAPPER_KEYS):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(k, str)}


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def load_state_dict(path: str | os.PathLike, spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """A checkpoint's tensors by name as numpy arrays (bfloat16 widened to float32), read
    safely and without torch: safetensors, or a PyTorch file through the restricted
    unpickler of restorer.zoo.torchfile (never a full unpickle). The arrays are copy-on-write
    views of the memory-mapped file where the format allows."""
    return _read_tensors(Path(path), spec.wrapper_key if spec else "")


def file_kind(path: Path) -> str:
    """What a file is by its content, not its name: "safetensors", "archive" (a zip of
    checkpoints) or "torch" (torch.save's zip or legacy pickle; anything else is tried as
    that and refused cleanly)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100 << 20:
        return "safetensors"
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "archive"
    return "torch"


def _read_tensors(path: Path, wrapper_key: str) -> dict:
    if not path.is_file():
        raise StoreError(f"cannot read '{path}': no such file")
    if file_kind(path) == "safetensors":
        return _unwrap(_read_safetensors(path), wrapper_key)
    raw = _unwrap(torchfile.load(path), wrapper_key)
    return {k: v for k, v in raw.items() if _is_tensor(v)}


# safetensors dtype -> numpy ("bf16": raw uint16, widened to float32)
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "bf16", "I64": "<i8", "I32": "<i4",
              "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?",
              "C64": "<c8"}


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A safetensors file's tensors: copy-on-write views of the memory-mapped file, every
    header entry checked against the file (dtype, shape times element size, offsets)."""
    header = _safetensors_header(path)
    with open(path, "rb") as f:
        start = 8 + int.from_bytes(f.read(8), "little")
    size = path.stat().st_size - start
    data = None
    out = {}
    for name, entry in header.items():
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise StoreError(f"cannot read {path.name} as safetensors: bad header entry for {name}") from None
        kind = _ST_DTYPES.get(code)
        if kind is None:
            raise StoreError(f"cannot read {path.name} as safetensors: tensor {name} has dtype {code}, "
                             "which restorer does not read")
        elem = np.dtype("<u2" if kind == "bf16" else kind)
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
                and all(type(o) is int for o in (begin, end)) and 0 <= begin <= end <= size
                and end - begin == math.prod(shape) * elem.itemsize):
            raise StoreError(f"cannot read {path.name} as safetensors: tensor {name}'s shape and "
                             "offsets do not fit the file")
        if end == begin:
            array = np.zeros(shape, elem)
        else:
            if data is None:
                data = np.memmap(path, dtype=np.uint8, mode="c")
            array = data[start + begin:start + end].view(np.ndarray).view(elem).reshape(shape)
        if kind == "bf16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        out[name] = array
    return out


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise StoreError(f"cannot read {path.name} as safetensors: the file is too short")
        n = int.from_bytes(head, "little")
        if n <= 0 or n > 100 << 20 or n > path.stat().st_size - 8:
            raise StoreError(f"cannot read {path.name} as safetensors: bad header length")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise StoreError(f"cannot read {path.name} as safetensors: the header is not JSON") from None
    if not isinstance(header, dict):
        raise StoreError(f"cannot read {path.name} as safetensors: the header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def tensor_shapes(path: str | os.PathLike, wrapper_key: str = "") -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors, without reading their data: the
    safetensors JSON header, or the PyTorch file's records (its storages memory-mapped,
    never read)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"cannot read '{path}': no such file")
    if file_kind(path) == "safetensors":
        header = _safetensors_header(path)
        try:
            return {(k[len("module."):] if k.startswith("module.") else k): tuple(v["shape"])
                    for k, v in header.items()}
        except (KeyError, TypeError):
            raise StoreError(f"cannot read {path.name} as safetensors: a header entry without a shape") from None
    raw = _unwrap(torchfile.load(path, arrays=False), wrapper_key)
    return {k: tuple(v.shape) for k, v in raw.items() if isinstance(v, torchfile.TensorInfo)}


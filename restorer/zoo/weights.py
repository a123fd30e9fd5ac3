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


def _unwrap(obj, wrapper_key: str = "", key_prefix: str = "") -> dict:
    """The tensors of a checkpoint: the wrapper key (the spec's first, then the usual
    ones) opened, and a leading `module.` (DataParallel) removed from every name. With
    `key_prefix`, only the names that carry it are the network's, and they lose it."""
    if not isinstance(obj, dict):
        raise StoreError(f"the checkpoint holds a {type(obj).__name__}, not a dictionary of tensors")
    for key in ([wrapper_key] if wrapper_key else []) + list(WRAPPER_KEYS):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    names = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items() if isinstance(k, str)}
    return _strip_prefix(names, key_prefix)


def _strip_prefix(tensors: dict, key_prefix: str) -> dict:
    if not key_prefix:
        return tensors
    return {k[len(key_prefix):]: v for k, v in tensors.items() if k.startswith(key_prefix)}


def _is_tensor(value) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")


def load_state_dict(path: str | os.PathLike, spec: ModelSpec | None = None) -> dict[str, np.ndarray]:
    """A checkpoint's tensors by name as numpy arrays (bfloat16 widened to float32), read
    safely and without torch: safetensors, or a PyTorch file through the restricted
    unpickler of restorer.zoo.torchfile (never a full unpickle). The arrays are copy-on-write
    views of the memory-mapped file where the format allows. A StoreError starts with the
    file's name."""
    return _read_tensors(Path(path), spec.wrapper_key if spec else "", spec.key_prefix if spec else "")


# The longest safetensors JSON header restorer reads (real ones are kilobytes to a few MB).
MAX_HEADER_BYTES = 100 << 20


def file_kind(path: Path) -> str:
    """What a file is by its content, not its name: "safetensors", "archive" (a zip of
    checkpoints) or "torch" (torch.save's zip or legacy pickle; anything else is tried as
    that and refused cleanly). A `.safetensors` name, or a `{` after the 8-byte length (no
    PyTorch file has one there), is read as safetensors, whose header check then says what
    is wrong: a wild length is not a reason to try the file as a pickle."""
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix.lower() == ".safetensors" or head[8:9] == b"{":
        return "safetensors"
    if head[:2] == b"PK" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return "archive"
    return "torch"


def _read_tensors(path: Path, wrapper_key: str, key_prefix: str = "") -> dict:
    if not path.is_file():
        raise StoreError(f"{path.name}: no such file")
    if file_kind(path) == "safetensors":
        return _unwrap(_read_safetensors(path), wrapper_key, key_prefix)
    try:
        raw = _unwrap(torchfile.load(path), wrapper_key, key_prefix)
    except StoreError as e:
        raise StoreError(_named(path, e)) from None
    return {k: v for k, v in raw.items() if _is_tensor(v)}


def _named(path: Path, error: StoreError) -> str:
    """An error's message starting with the file's name (once)."""
    text = str(error)
    return text if text.startswith(f"{path.name}: ") else f"{path.name}: {text}"


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
            raise StoreError(f"{path.name}: not a readable safetensors file: bad header entry for {name}") from None
        kind = _ST_DTYPES.get(code)
        if kind is None:
            raise StoreError(f"{path.name}: not a readable safetensors file: tensor {name} has dtype {code}, "
                             "which restorer does not read")
        elem = np.dtype("<u2" if kind == "bf16" else kind)
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)
                and all(type(o) is int for o in (begin, end)) and 0 <= begin <= end <= size
                and end - begin == math.prod(shape) * elem.itemsize):
            raise StoreError(f"{path.name}: not a readable safetensors file: tensor {name}'s shape and "
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
    """The JSON header of a safetensors file, its length checked against the file before
    anything is read (a length of 2**60 is a corrupt or hostile file, not a reason to try)."""
    bad = f"{path.name}: not a readable safetensors file"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            what = torchfile.sniff(path)
            raise StoreError(f"{path.name}: not a safetensors file ({what})" if what else f"{bad}: the file is too short")
        n = int.from_bytes(head, "little")
        if f.read(1) != b"{":
            what = torchfile.sniff(path)
            raise StoreError(f"{path.name}: not a safetensors file ({what or 'no JSON header after the length'})")
        if n > size - 8:
            raise StoreError(f"{bad}: its header claims {n} bytes but the whole file has {size}")
        if n > MAX_HEADER_BYTES:
            raise StoreError(f"{bad}: its header claims {n} bytes, over restorer's limit of {MAX_HEADER_BYTES}")
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested without end
            raise StoreError(f"{bad}: the header is not JSON") from None
    if not isinstance(header, dict):
        raise StoreError(f"{bad}: the header is not a JSON object")
    header.pop("__metadata__", None)
    return header


def tensor_shapes(path: str | os.PathLike, wrapper_key: str = "", key_prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors, without reading their data: the
    safetensors JSON header, or the PyTorch file's records (its storages memory-mapped,
    never read); `key_prefix` as for _unwrap. A StoreError starts with the file's name."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path.name}: no such file")
    if file_kind(path) == "safetensors":
        header = _safetensors_header(path)
        shapes = {}
        for k, v in header.items():
            shape = v.get("shape") if isinstance(v, dict) else None
            if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
                raise StoreError(f"{path.name}: not a readable safetensors file: tensor {k[:80]} has no valid shape")
            shapes[k[len("module."):] if k.startswith("module.") else k] = tuple(shape)
        return _strip_prefix(shapes, key_prefix)
    try:
        raw = _unwrap(torchfile.load(path, arrays=False), wrapper_key, key_prefix)
    except StoreError as e:
        raise StoreError(_named(path, e)) from None
    return {k: tuple(v.shape) for k, v in raw.items() if isinstance(v, torchfile.TensorInfo)}

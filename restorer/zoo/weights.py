"""Reading checkpoints safely: safetensors, or PyTorch files through a weights-only load;
nothing in a model file is ever run."""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

from restorer.zoo.catalog import ModelSpec
from restorer.zoo.layout import StoreError

# The keys official loaders read the tensors from, in the order basicsr falls back through.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "model_state", "model_state_dict")


def _lenient(spec: ModelSpec | None) -> bool:
    """The official loader keeps only the keys it knows (old-photo VAE and mapping), so
    released files may hold extra tensors: catalog `strict = false`."""
    return spec is not None and spec.extra.get("strict") is False


def _torch_load(path: Path):
    """torch.load that never unpickles anything but tensors and plain containers."""
    import pickle

    import torch

    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # Files in the legacy (pre-zip) format cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise StoreError(f"refusing to load {path.name}: {_pickle_reason(str(e))}; "
                         "only plain tensor files are loaded (nothing in it was run)") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.split(". ")[0]  # torch appends paragraphs of advice after the cause
        raise StoreError(f"cannot read {path.name} as a PyTorch checkpoint: {first}") from None


def _pickle_reason(message: str) -> str:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    if found:
        return f"its pickle calls {found.group(1)}"
    found = re.search(r"Unsupported operand (\d+)", message)
    if found:
        return f"its pickle uses an instruction a weights file never needs (opcode {found.group(1)})"
    return "its pickle holds more than tensors"


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


def load_state_dict(path: str | os.PathLike, spec: ModelSpec | None = None) -> dict:
    """A checkpoint's tensors by name, loaded safely: safetensors, or torch.load with
    weights_only (never a full unpickle). Tensors are torch tensors when torch imports,
    else numpy arrays (safetensors only)."""
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
        try:
            import torch  # noqa: F401
            from safetensors.torch import load_file
        except ImportError:
            from safetensors.numpy import load_file
        try:
            tensors = load_file(str(path))
        except Exception as e:
            raise StoreError(f"cannot read {path.name} as safetensors: {str(e).splitlines()[0]}") from None
        return _unwrap(tensors, wrapper_key)
    try:
        import torch  # noqa: F401
    except ImportError:
        raise StoreError(f"{path.name} is a PyTorch checkpoint and PyTorch is not installed: "
                         "pip install 'restorer[torch]' (or use a .safetensors file)") from None
    raw = _unwrap(_torch_load(path), wrapper_key)
    return {k: v for k, v in raw.items() if _is_tensor(v)}


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
    header.pop("__metadata__", None)
    return header


def tensor_shapes(path: str | os.PathLike, wrapper_key: str = "") -> dict[str, tuple[int, ...]]:
    """Names and shapes of a checkpoint's tensors, without reading their data: the
    safetensors JSON header, or a memory-mapped weights-only torch.load."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"cannot read '{path}': no such file")
    if file_kind(path) == "safetensors":
        header = _safetensors_header(path)
        return {(k[len("module."):] if k.startswith("module.") else k): tuple(v["shape"])
                for k, v in header.items()}
    return {k: tuple(v.shape) for k, v in _read_tensors(path, wrapper_key).items()}


"""PyTorch checkpoints read without torch, into numpy arrays; nothing in a file is ever run.

Two formats:
- zip (torch.save since 1.6): `<root>/data.pkl` (the object), `<root>/data/<key>` (one raw
  storage each, stored uncompressed and 64-byte aligned), optional `<root>/byteorder`;
- legacy (torch < 1.6): pickles of the magic number, the protocol version and sys_info, then
  the object's pickle, a pickled list of storage keys, then per key an int64 element count
  followed by the raw little-endian data.

Every pickle goes through `_Unpickler`, whose `find_class` knows only torch's tensor-rebuild
functions, the storage types, dtypes and OrderedDict (as stand-ins of ours: no torch code is
imported, let alone called); any other global refuses the file. The storages are slices of
one copy-on-write memory map of the file where the format allows (uncompressed members, the
legacy data section), so reading a checkpoint's names and shapes costs almost nothing.
Tensors come back as numpy views (offset, sizes and strides checked against their
storage); bfloat16 is widened to float32, which numpy lacks.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from restorer.zoo.layout import StoreError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
# A state dict's pickle is kilobytes to a few megabytes; a bigger one is not read into memory.
MAX_PICKLE_BYTES = 256 << 20
# torch.save stores members uncompressed; a compressed one inflating more than this is a bomb.
MAX_RATIO = 100


class Refused(Exception):
    """The pickle names a global that is not a tensor-rebuild record (args[0]: the global)."""


class Malformed(Exception):
    """The file is not a readable checkpoint (args[0]: why, one line)."""


# ---------------------------------------------------------------- stand-ins for torch globals


class _Sealed:
    """Everything a pickle can get hold of (stand-ins, storages, tensor records) is sealed:
    no __dict__ and no attribute setting, so pickle's BUILD cannot alter it (BUILD would
    otherwise rewrite an object's fields, ours shared by every load, after its checks)."""

    __slots__ = ()

    def __init__(self, **values):
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __setstate__(self, state):
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self.__slots__)})"


class StorageType(_Sealed):
    """torch.FloatStorage & co.: which dtype a storage's bytes hold ("bf16": raw uint16)."""

    __slots__ = ("dtype", "name")

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bf16" else np.dtype(self.dtype).itemsize


class DType(_Sealed):
    """torch.float32 & co. (named by _rebuild_tensor_v3 records)."""

    __slots__ = ("dtype", "name")


class TensorType(_Sealed):
    """torch.Tensor / torch.nn.Parameter as named by _rebuild_from_type_v2 records."""

    __slots__ = ("name",)


class _Call(_Sealed):
    """A rebuild function as the pickle sees it."""

    __slots__ = ("fn",)

    def __call__(self, *args):
        return self.fn(*args)


_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bf16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}
_DTYPES = {
    "float32": "float32", "float": "float32", "float64": "float64", "double": "float64", "float16": "float16",
    "half": "float16", "bfloat16": "bf16", "int64": "int64", "long": "int64", "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16", "int8": "int8", "uint8": "uint8", "bool": "bool",
    "complex64": "complex64", "complex128": "complex128",
}


class Storage(_Sealed):
    """One serialised storage. Its bytes (uint8) are set once their place in the file is
    known (legacy files store the data after the pickle); a legacy view is elements
    [offset, offset + numel) of `base`."""

    __slots__ = ("_data", "base", "numel", "offset", "order", "type")

    def __init__(self, type: StorageType, numel: int, *, base: Storage | None = None, offset: int = 0,
                 order: str = "<"):
        super().__init__(type=type, numel=numel, base=base, offset=offset, order=order, _data=[])

    def set_data(self, data: np.ndarray) -> None:
        self._data[:] = [data]

    def raw(self) -> np.ndarray:
        if self.base is not None:
            start, n = self.offset * self.type.itemsize, self.numel * self.type.itemsize
            data = self.base.raw()
            if start + n > len(data):
                raise Malformed("a storage view reaches past its storage")
            return data[start:start + n]
        if not self._data:
            raise Malformed("a storage's data is missing")
        return self._data[0]


class Tensor(_Sealed):
    """A tensor record (checked when made), made an array by `materialise` once all
    storages are read."""

    __slots__ = ("dtype", "metadata", "offset", "size", "storage", "stride")


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(type(v) is int and v >= 0 for v in value):
        raise Malformed(f"a tensor record's {what} is not a list of non-negative integers")
    return tuple(value)


def _tensor(storage, storage_offset, size, stride, dtype=None, metadata=None) -> Tensor:
    if not isinstance(storage, Storage):
        raise Malformed("a tensor record does not point at a storage")
    if type(storage_offset) is not int or storage_offset < 0:
        raise Malformed("a tensor record's storage offset is not a non-negative integer")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    if len(size) != len(stride):
        raise Malformed("a tensor record's size and stride differ in length")
    if metadata is not None and not isinstance(metadata, dict):
        raise Malformed("a tensor record's metadata is not a dictionary")
    return Tensor(storage=storage, offset=storage_offset, size=size, stride=stride, dtype=dtype,
                  metadata={k: bool(v) for k, v in (metadata or {}).items()})


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _tensor(storage, storage_offset, size, stride, metadata=metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    if not isinstance(dtype, DType):
        raise Malformed("a tensor record's dtype is not a torch dtype")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype, metadata)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, Tensor):
        raise Malformed("a parameter record holds no tensor")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data)


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor with Python attributes (or a Parameter): the attributes are dropped."""
    if not (isinstance(func, _Call) and func.fn in _REBUILDERS and isinstance(new_type, TensorType)
            and isinstance(args, tuple)):
        raise Malformed("a tensor-subclass record rebuilds something other than a tensor")
    return func(*args)


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
               _rebuild_parameter_with_state)

# (module, name) -> what the pickle gets instead. Nothing else is ever resolved.
ALLOWED: dict[tuple[str, str], object] = {
    ("torch._utils", f.__name__): _Call(fn=f) for f in _REBUILDERS
}
ALLOWED.update({
    ("torch._tensor", "_rebuild_from_type_v2"): _Call(fn=_rebuild_from_type_v2),
    ("torch", "Tensor"): TensorType(name="Tensor"),
    ("torch.nn.parameter", "Parameter"): TensorType(name="Parameter"),
    ("torch.storage", "UntypedStorage"): StorageType(name="UntypedStorage", dtype="uint8"),
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
})
ALLOWED.update({("torch", n): StorageType(name=n, dtype=d) for n, d in _STORAGE_DTYPES.items()})
ALLOWED.update({("torch", n): DType(name=n, dtype=d) for n, d in _DTYPES.items()})


class _Unpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves only ALLOWED globals and hands persistent ids (the
    storages) to `persistent` (none allowed when it is None)."""

    def __init__(self, file, persistent=None):
        super().__init__(file, encoding="utf-8")
        self._persistent = persistent

    def find_class(self, module, name):
        # Python 2 names (protocol-2 pickles of torch < 1.5, or of Python 3 with fix_imports)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        else:
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if self._persistent is None:
            raise Malformed("a storage reference where none belongs")
        return self._persistent(pid)


def _storage_id(pid, n: int) -> tuple:
    """('storage', type, key, location, numel[, view_metadata]) checked."""
    if not isinstance(pid, tuple) or len(pid) != n or pid[0] not in ("storage", b"storage"):
        kind = pid[0] if isinstance(pid, tuple) and pid else pid
        raise Malformed(f"an unknown persistent record {str(kind)[:40]!r}")
    _, stype, key, _location, numel = pid[:5]
    if not isinstance(stype, StorageType):
        raise Malformed("a storage record without a storage type")
    if isinstance(key, bytes):
        key = key.decode("ascii", "replace")
    if not isinstance(key, str) or type(numel) is not int or numel < 0:
        raise Malformed("a storage record with a bad key or size")
    return (stype, key, numel) + tuple(pid[5:])


# ---------------------------------------------------------------- the file's bytes


class _Bytes:
    """The file's bytes, memory-mapped once (copy-on-write: the arrays are writable and the
    file is never changed), else read."""

    def __init__(self, path: Path):
        self.size = path.stat().st_size
        if self.size == 0:
            self.data = np.empty(0, np.uint8)
            return
        try:
            self.data = np.memmap(path, dtype=np.uint8, mode="c")
        except (OSError, ValueError):
            self.data = np.fromfile(path, dtype=np.uint8)

    def slice(self, start: int, n: int) -> np.ndarray:
        if start < 0 or n < 0 or start + n > self.size:
            raise Malformed("a storage reaches past the end of the file")
        return self.data[start:start + n]


# ---------------------------------------------------------------- zip format


def _member_data_start(f, info: zipfile.ZipInfo) -> int:
    """Where a stored member's bytes begin: after its local header (name and extra field)."""
    f.seek(info.header_offset)
    head = f.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise Malformed(f"bad local header for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _load_zip(path: Path, data: _Bytes):
    with zipfile.ZipFile(path) as z, open(path, "rb") as raw:
        infos = {i.filename: i for i in z.infolist()}
        pickles = sorted(n for n in infos if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1))
        if not pickles:
            raise Malformed("a zip archive without data.pkl")
        for info in infos.values():  # checked before anything is inflated
            _check_member(info)
        root = pickles[0][: -len("data.pkl")]
        order = "<"
        if root + "byteorder" in infos:
            text = z.read(root + "byteorder").decode("ascii", "replace").strip()
            if text not in ("little", "big"):
                raise Malformed(f"unknown byte order {text[:20]!r}")
            order = "<" if text == "little" else ">"
        storages: dict[str, Storage] = {}

        def persistent(pid):
            stype, key, numel = _storage_id(pid, 5)
            if key in storages:
                return storages[key]
            info = infos.get(f"{root}data/{key}")
            if info is None:
                raise Malformed(f"storage {key[:40]!r} is missing from the archive")
            nbytes = numel * stype.itemsize
            if info.file_size < nbytes:
                raise Malformed(f"storage {key[:40]!r} is shorter than its tensor record says")
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                raw_bytes = data.slice(_member_data_start(raw, info), nbytes)
            else:
                with z.open(info) as member:  # only the bytes the tensors use
                    raw_bytes = np.frombuffer(bytearray(member.read(nbytes)), np.uint8)
            storages[key] = Storage(stype, numel, order=order)
            storages[key].set_data(raw_bytes)
            return storages[key]

        return _Unpickler(io.BytesIO(z.read(infos[pickles[0]])), persistent).load()


def _check_member(info: zipfile.ZipInfo) -> None:
    """Refuse, from the zip's own directory, a member that would inflate out of proportion."""
    if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
        raise Malformed(f"its {info.filename} declares {info.file_size} bytes, far more than a state dict's pickle")
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > MAX_RATIO * info.compress_size + (1 << 20):
        raise Malformed(f"member {info.filename[:60]} inflates {info.compress_size} bytes to {info.file_size} "
                        "(a zip bomb?)")


# ---------------------------------------------------------------- legacy format


def _load_legacy(path: Path, data: _Bytes):
    with open(path, "rb") as f:
        if _Unpickler(f).load() != LEGACY_MAGIC:
            raise Malformed("neither a zip archive nor a legacy checkpoint (no magic number)")
        version = _Unpickler(f).load()
        if version != LEGACY_PROTOCOL:
            raise Malformed(f"unknown legacy protocol version {str(version)[:20]}")
        _Unpickler(f).load()  # sys_info: sizes of C types; the data is little-endian regardless
        storages: dict[str, Storage] = {}
        views: dict[str, Storage] = {}

        def persistent(pid):
            stype, key, numel, view = _storage_id(pid, 6)
            root = storages.setdefault(key, Storage(stype, numel))
            if view is None:
                return root
            if not isinstance(view, tuple) or len(view) != 3:
                raise Malformed("a bad storage view record")
            view_key, offset, view_numel = view
            if not isinstance(view_key, str) or type(offset) is not int or type(view_numel) is not int \
                    or offset < 0 or view_numel < 0:
                raise Malformed("a bad storage view record")
            return views.setdefault(view_key, Storage(stype, view_numel, base=root, offset=offset))

        obj = _Unpickler(f, persistent).load()
        keys = _Unpickler(f).load()
        if not isinstance(keys, list):
            raise Malformed("the storage key list is missing")
        offset = f.tell()
    for key in keys:
        key = key.decode("ascii", "replace") if isinstance(key, bytes) else key
        storage = storages.get(key)
        if storage is None:
            raise Malformed(f"storage {str(key)[:40]!r} is listed but never used")
        numel = int(data.slice(offset, 8).view("<i8")[0])
        if numel < storage.numel:
            raise Malformed(f"storage {key[:40]!r} is shorter than its tensor record says")
        storage.set_data(data.slice(offset + 8, numel * storage.type.itemsize))
        offset += 8 + numel * storage.type.itemsize
    return obj


# ---------------------------------------------------------------- tensors out


@dataclass(frozen=True)
class TensorInfo:
    """A tensor's shape and dtype (what `load(..., arrays=False)` gives instead of arrays)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _elements(t: Tensor) -> tuple[np.ndarray, bool]:
    """The storage's elements as the tensor's dtype (bfloat16: raw uint16), and whether it
    is bfloat16; checks that the tensor's offset, sizes and strides stay inside them."""
    raw = t.storage.raw()
    order = (t.storage.base or t.storage).order
    name = t.dtype or t.storage.type.dtype
    bf16 = name == "bf16"
    elem = np.dtype("u2" if bf16 else name).newbyteorder(order)
    count = len(raw) // elem.itemsize
    if all(t.size):
        last = t.offset + sum((s - 1) * st for s, st in zip(t.size, t.stride))
        if last >= count:
            raise Malformed("a tensor reaches past the end of its storage")
    return raw[: count * elem.itemsize].view(elem), bf16


def info(t: Tensor) -> TensorInfo:
    elems, bf16 = _elements(t)
    return TensorInfo(t.size, np.dtype(np.float32) if bf16 else elems.dtype.newbyteorder("="))


def materialise(t: Tensor) -> np.ndarray:
    """The numpy array of a tensor record: a view of its storage where possible."""
    elems, bf16 = _elements(t)
    if not all(t.size):
        array = np.empty(t.size, elems.dtype)
    else:
        array = np.lib.stride_tricks.as_strided(elems[t.offset:], shape=t.size,
                                                strides=tuple(st * elems.itemsize for st in t.stride))
    if bf16:  # the upper half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if t.metadata.get("neg"):
        array = -array
    if t.metadata.get("conj"):
        array = np.conj(array)
    return array


def _resolve(obj, seen: dict, arrays: bool):
    """`obj` with every Tensor record replaced by its array, or its TensorInfo (containers
    edited in place)."""
    if isinstance(obj, Tensor):
        return materialise(obj) if arrays else info(obj)
    if isinstance(obj, (dict, list)):
        if id(obj) in seen:
            return obj
        seen[id(obj)] = obj
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in list(items):
            obj[k] = _resolve(v, seen, arrays)
        return obj
    if isinstance(obj, tuple):
        return tuple(_resolve(v, seen, arrays) for v in obj)
    if isinstance(obj, Storage):
        raise Malformed("the checkpoint holds a bare storage, not tensors")
    return obj


# ---------------------------------------------------------------- entry point


def is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"PK" and zipfile.is_zipfile(path)


def load(path: str | Path, arrays: bool = True):
    """The object a torch.save file holds, tensors as numpy arrays (with `arrays=False`, as
    TensorInfo: shape and dtype, no data touched); StoreError (one line, starting with the
    file's name) when the file holds anything but tensors and plain containers, or cannot be read."""
    path = Path(path)
    name = path.name
    try:
        data = _Bytes(path)
        obj = _load_zip(path, data) if is_zip(path) else _load_legacy(path, data)
        return _resolve(obj, {}, arrays)
    except Refused as e:
        raise StoreError(f"{name}: refusing to load it: its pickle calls {e.args[0]}; "
                         "only plain tensor files are loaded (nothing in it was run)") from None
    except Malformed as e:
        raise StoreError(_not_a_checkpoint(path, e.args[0])) from None
    except (TypeError, AttributeError) as e:
        # a record called with the wrong arguments, or an operation on one of our stand-ins
        raise StoreError(f"{name}: refusing to load it: its pickle holds more than tensors "
                         f"({_first_line(e)}); only plain tensor files are loaded (nothing in it was run)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, OSError, IndexError, KeyError, OverflowError,
            MemoryError, RecursionError, zipfile.BadZipFile, UnicodeDecodeError, struct.error) as e:
        raise StoreError(_not_a_checkpoint(path, _first_line(e))) from None


def _not_a_checkpoint(path: Path, why: str) -> str:
    """Why a file is no checkpoint, in the user's terms where its first bytes say what it is
    (the pickle's own complaint about a text file, "Memo value not found", helps no one)."""
    what = sniff(path)
    if what:
        return f"{path.name}: not a PyTorch checkpoint ({what})"
    return f"{path.name}: not a readable PyTorch checkpoint: {why}"


def sniff(path: Path) -> str:
    """What a file that is no checkpoint is, from its first bytes ("" when unknown)."""
    try:
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError:
        return ""
    if not head:
        return "the file is empty"
    lower = head.lstrip().lower()
    if lower.startswith((b"<!doctype html", b"<html", b"<head")) or b"<html" in lower[:256]:
        return "it is a web page: save the file the page links to, not the page"
    if lower.startswith(b"<?xml"):
        return "it is an XML document, often a server's error reply"
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "gzip data"),
                        (b"7z\xbc\xaf", "a 7-Zip archive"), (b"Rar!", "a RAR archive"), (b"%PDF", "a PDF")):
        if head.startswith(magic):
            return f"it is {kind}"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 3:  # not just a character cut at the end of the sample
                return ""
        return "it is text"
    return ""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]

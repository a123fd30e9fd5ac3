"""The local model store: where weights and exported ONNX models live, how they get there
(download, import of a file fetched by hand), how they are loaded without running anyone's
code, and how a catalog model becomes a Runner.

Layout under the store's home (platformdirs' user data dir; RESTORER_HOME overrides):
    models/<id>/<file name>          weights as fetched or imported
    models/<id>/installed.json       sha256, size and origin of each file, written on install
    onnx/<id>.<precision>.onnx       exported networks (dynamic height and width)
    onnx/<id>.<precision>.json       how the export was made and its parity with PyTorch
    onnx/<id>.<part>.<precision>.*   a sub-graph a pipeline runs on its own (a VAE's encoder)
    downloads/                       interrupted transfers (`.part`), resumed on the next try

Downloads come from the catalog's URL, or from a mirror: `download(..., base_url=...)` or the
RESTORER_MIRROR environment variable, which serves each file under the last path segment
of its official URL (`<mirror>/<file name>`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Callable
from urllib.parse import unquote, urlparse

from restorer.catalog import Catalog, FileSpec, ModelSpec

log = logging.getLogger("restorer")

# The keys official loaders read the tensors from, in the order basicsr falls back through.
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "model_state", "model_state_dict")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
ARCHIVE_SUFFIXES = (".zip",)
CHUNK = 1 << 20

ProgressCallback = Callable[[int, int], None]  # (bytes done, bytes total or 0 when unknown)


class StoreError(Exception):
    """A store operation cannot be done; the message is one line for the user."""


# ---------------------------------------------------------------- layout


def home() -> Path:
    override = os.environ.get("RESTORER_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("restorer", appauthor=False))


def model_dir(spec: ModelSpec) -> Path:
    return home() / "models" / spec.id


def weight_paths(spec: ModelSpec) -> list[Path]:
    return [model_dir(spec) / f.name for f in spec.files]


def onnx_path(spec: ModelSpec, precision: str = "fp32", part: str | None = None) -> Path:
    """The exported network, or with `part` one of its sub-graphs exported on its own
    (the family's EXPORT_PARTS, e.g. the old-photo VAE's encoder and decoder)."""
    name = f"{spec.id}.{part}.{precision}" if part else f"{spec.id}.{precision}"
    return home() / "onnx" / f"{name}.onnx"


def exported_parts(spec: ModelSpec, precision: str = "fp32") -> list[str]:
    """The sub-graphs of `spec` exported on their own at `precision`."""
    folder = home() / "onnx"
    if not folder.is_dir():
        return []
    prefix, suffix = f"{spec.id}.", f".{precision}.onnx"
    names = [p.name for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(suffix)]
    parts = [n[len(prefix):-len(suffix)] for n in names]
    return sorted(part for part in parts if re.fullmatch(r"[a-z_][a-z0-9_]*", part))


def is_installed(spec: ModelSpec) -> bool:
    """All of a model's files are in the store (or, for a model that ships inside a Python
    package, that package is installed)."""
    if spec.arch == "bundled":
        return _package_installed(spec.extra.get("package", ""))
    return bool(spec.files) and all(p.is_file() for p in weight_paths(spec))


def state(spec: ModelSpec) -> str:
    """What a user can do with a model now: built-in, bundled, unreleased, ready (a
    pipeline with all its parts), onnx (exported), installed, or missing."""
    if spec.builtin:
        return "built-in"
    if spec.arch == "bundled":  # ships inside a Python package (e.g. a text detector)
        return "bundled" if is_installed(spec) else "missing"
    if not spec.released:
        return "unreleased"
    if spec.is_pipeline:
        return "ready" if is_ready(spec) else "missing"
    if exported_precisions(spec):
        return "onnx"
    return "installed" if is_installed(spec) else "missing"


def _package_installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
        return True
    except metadata.PackageNotFoundError:
        return False


def is_ready(spec: ModelSpec) -> bool:
    """The model can run: its files (or its exported ONNX model) are here, and so is
    everything it needs (a text encoder, a pipeline's parts)."""
    from restorer.catalog import load_catalog

    own = spec.is_pipeline or onnx_path(spec).is_file() or bool(exported_parts(spec)) or is_installed(spec)
    return own and all(is_ready(load_catalog().get(n)) for n in spec.needs)


def exported_precisions(spec: ModelSpec) -> list[str]:
    return [p for p in ("fp32", "fp16") if onnx_path(spec, p).is_file() or exported_parts(spec, p)]


def weights_file(spec: ModelSpec) -> FileSpec | None:
    """The file holding the network's tensors (an entry may also list e.g. a tokenizer)."""
    return next((f for f in spec.files if f.name.lower().endswith(WEIGHT_SUFFIXES)), None)


def weights_path(spec: ModelSpec) -> Path:
    f = weights_file(spec)
    if f is None:
        raise StoreError(f"model '{spec.id}' lists no weights file in the catalog")
    return model_dir(spec) / f.name


def _catalog(catalog: Catalog | None) -> Catalog:
    if catalog is not None:
        return catalog
    from restorer.catalog import load_catalog  # looked up at call time: tests swap catalogs

    return load_catalog()


def _hint(spec: ModelSpec) -> str:
    from restorer.engine import install_hint

    return install_hint(spec)


# ---------------------------------------------------------------- safe loading


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


# ---------------------------------------------------------------- recognition


@lru_cache(maxsize=None)
def _signature(arch: str, hparams_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import torch

    from restorer.archs import build

    with torch.device("meta"):
        module = build(arch, json.loads(hparams_json))
    return tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())


def signature(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes a released checkpoint of `spec` holds, from its arch
    built on the meta device (no memory, no weights)."""
    return dict(_signature(spec.arch, json.dumps(spec.hparams, sort_keys=True)))


def _checkable(spec: ModelSpec) -> bool:
    """The entry's arch is ours, so a file can be checked against its signature."""
    from restorer.archs import ARCHS

    return spec.arch in ARCHS and weights_file(spec) is not None


def _recognisable(catalog: Catalog) -> list[ModelSpec]:
    return [s for s in catalog if _checkable(s)]


@dataclass
class Match:
    spec: ModelSpec
    file: FileSpec  # the catalog file this checkpoint is


@dataclass
class Difference:
    """How a checkpoint differs from an entry's signature, for the refusal message."""

    spec: ModelSpec
    share: float  # shared names / all names
    detail: str


def _normalise(name: str) -> str:
    stem = PurePosixPath(name.replace("\\", "/")).name
    for suffix in WEIGHT_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return re.sub(r"[^a-z0-9]", "", stem.lower())


def _normalise_path(name: str) -> str:
    return re.sub(r"[^a-z0-9/]", "", name.replace("\\", "/").lower())


def compare(found: dict[str, tuple], expected: dict[str, tuple], lenient: bool = False) -> str:
    """'' when `found` is a checkpoint of `expected`, else the first difference."""
    for name, shape in expected.items():
        if name in found and tuple(found[name]) != tuple(shape):
            return f"tensor {name}: expected shape {list(shape)}, found {list(found[name])}"
    for name in expected:
        if name not in found:
            return f"missing tensor {name}"
    if not lenient:
        for name in found:
            if name not in expected:
                return f"unexpected tensor {name}"
    return ""


def _file_for(spec: ModelSpec, hint: str) -> FileSpec:
    """The catalog file of `spec` a checkpoint named `hint` is (by name, else the weights)."""
    for f in spec.files:
        if hint and (_normalise(f.name) == _normalise(hint) or (f.member and _member_matches(f.member, hint))):
            return f
    return weights_file(spec)


def _member_matches(member: str, hint: str) -> bool:
    a, b = _normalise_path(member), _normalise_path(hint)
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def _tie_break(matches: list[Match], hint: str) -> list[Match]:
    """Entries sharing a signature told apart by the checkpoint's name: a path inside an
    archive against the catalog's `member`, else the file name against the catalog's."""
    if "/" in hint.replace("\\", "/"):
        by_member = [m for m in matches if any(f.member and _member_matches(f.member, hint) for f in m.spec.files)]
        if by_member:
            return by_member
    by_name = [m for m in matches if any(_normalise(f.name) == _normalise(hint) for f in m.spec.files)]
    return by_name or matches


def recognise(
    path: str | os.PathLike,
    model_id: str | None = None,
    *,
    name: str | None = None,
    catalog: Catalog | None = None,
) -> list[Match]:
    """The catalog entries a checkpoint file is, by its tensor names and shapes.

    Entries that share a signature (the same network trained on other data) are told apart
    by the file's name (`name`, default the path as given; a path inside an archive or an
    unpacked release counts whole, against the catalog's `member`) against the catalog's
    file names. Returns one Match, or several when the name
    cannot decide (the caller asks for --id). With `model_id` the file is checked against
    that entry only. Raises StoreError naming the closest entry and the first difference
    when nothing matches.
    """
    path = Path(path)
    catalog = _catalog(catalog)
    hint = name or str(path)  # a path as given still tells VAE_A_quality/latest_net_G.pth apart
    label = name or path.name
    try:
        found = tensor_shapes(path)
    except StoreError as e:
        raise StoreError(f"{label}: {e}") from None
    if not found:
        raise StoreError(f"{label}: the file holds no tensors")
    if model_id is not None:
        try:
            spec = catalog.get(model_id)
        except KeyError as e:
            raise StoreError(e.args[0]) from None
        if weights_file(spec) is None:
            raise StoreError(f"model '{spec.id}' takes no weights file")
        diff = compare(found, signature(spec), _lenient(spec))
        if diff:
            raise StoreError(f"{label} is not a checkpoint of '{spec.id}': {diff}")
        return [Match(spec, _file_for(spec, hint))]

    matches, misses = [], []
    for spec in _recognisable(catalog):
        try:
            expected = signature(spec)
        except Exception as e:  # an arch that cannot be built here is skipped, not fatal
            log.debug("cannot build %s for recognition: %s", spec.id, e)
            continue
        diff = compare(found, expected, _lenient(spec))
        if not diff:
            matches.append(Match(spec, _file_for(spec, hint)))
        else:
            shared = len(found.keys() & expected.keys())
            misses.append(Difference(spec, shared / max(1, len(found.keys() | expected.keys())), diff))
    if len(matches) > 1:
        matches = _tie_break(matches, hint)
    if matches:
        return matches
    if not misses:
        raise StoreError(f"{label} matches no catalog model (no catalog entry can be checked here)")
    best = max(misses, key=lambda d: d.share)
    extra = _user_model_note(path)
    raise StoreError(f"{label} matches no catalog model; closest is '{best.spec.id}' "
                     f"({best.share:.0%} of tensor names shared): {best.detail}{extra}")


def identify(path: str | os.PathLike, model_id: str | None = None, *, name: str | None = None,
             catalog: Catalog | None = None) -> Match:
    """Exactly one catalog entry for a checkpoint, or a StoreError asking for --id."""
    matches = recognise(path, model_id, name=name, catalog=catalog)
    if len(matches) > 1:
        ids = ", ".join(m.spec.id for m in matches)
        raise StoreError(f"{name or Path(path).name} fits several catalog models ({ids}); "
                         f"say which with --id ID")
    return matches[0]


def _user_model_note(path: Path) -> str:
    """Files outside the catalog: spandrel can identify many community architectures."""
    if path.suffix.lower() not in (".pth", ".pt", ".safetensors", ".ckpt"):
        return ""
    try:
        import spandrel
    except ImportError:
        return ""
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except Exception:
        return ""
    arch = getattr(getattr(descriptor, "architecture", None), "name", "unknown")
    return (f" (spandrel reads it as a user-supplied {arch} x{getattr(descriptor, 'scale', '?')} model; "
            "user-supplied models are not part of the catalog and are not installed)")


# ---------------------------------------------------------------- installing


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _record_path(spec: ModelSpec) -> Path:
    return model_dir(spec) / "installed.json"


def installed_record(spec: ModelSpec) -> dict:
    """What was recorded when each file was installed: {name: {sha256, size, source}}."""
    try:
        return json.loads(_record_path(spec).read_text())
    except (OSError, ValueError):
        return {}


def _write_record(spec: ModelSpec, name: str, sha: str, size: int, source: str) -> None:
    record = installed_record(spec)
    record[name] = {"sha256": sha, "size": size, "source": source}
    _atomic_write_text(_record_path(spec), json.dumps(record, indent=1))


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _place(source: Path, spec: ModelSpec, f: FileSpec, origin: str, *, move: bool = False,
           sha: str | None = None) -> Path:
    """Put `source` into the store as `f` of `spec`, atomically (temp + rename): moved,
    hard-linked where possible, else copied. Exports made from older weights are dropped."""
    target = model_dir(spec) / f.name
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{f.name}.{os.getpid()}.tmp")
    try:
        if tmp.exists():
            tmp.unlink()
        if move:
            os.replace(source, tmp)
        else:
            try:
                os.link(source, tmp)
            except OSError:
                shutil.copyfile(source, tmp)
        sha = sha or sha256_of(tmp)
        if f.sha256 and sha != f.sha256.lower():
            raise StoreError(f"{f.name}: sha256 {sha} differs from the catalog's {f.sha256}; not installed")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _write_record(spec, f.name, sha, target.stat().st_size, origin)
    for precision in ("fp32", "fp16"):
        for stale in (onnx_path(spec, precision), onnx_path(spec, precision).with_suffix(".json")):
            stale.unlink(missing_ok=True)
    return target


@dataclass
class AddResult:
    installed: list[tuple[str, Path]] = field(default_factory=list)  # (model id, stored path)
    unmatched: list[str] = field(default_factory=list)  # archive members that matched nothing, with why


def add(path: str | os.PathLike, model_id: str | None = None, *, catalog: Catalog | None = None) -> AddResult:
    """Install a checkpoint (or a zip archive of checkpoints) fetched by hand.

    A file is recognised by its tensors (see `recognise`) and placed in the store. An
    archive is checked whole first (no absolute paths, no `..`, no links), then each
    weights member is recognised on its own; members that match nothing are reported.
    """
    path = Path(path)
    catalog = _catalog(catalog)
    if not path.is_file():
        raise StoreError(f"cannot read '{path}': no such file")
    if file_kind(path) == "archive":
        return _add_archive(path, model_id, catalog)
    match = identify(path, model_id, catalog=catalog)
    stored = _place(path, match.spec, match.file, origin=str(path.resolve()))
    return AddResult(installed=[(match.spec.id, stored)])


def safe_members(archive: zipfile.ZipFile, label: str) -> list[zipfile.ZipInfo]:
    """The archive's entries, or a StoreError if any would land outside the folder it is
    extracted into (absolute path, `..`, drive letter) or is a link: checked for all
    members before anything is extracted."""
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in parts:
            raise StoreError(f"{label}: refusing the archive: member {info.filename!r} points outside it")
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise StoreError(f"{label}: refusing the archive: member {info.filename!r} is a symbolic link")
    return [i for i in archive.infolist() if not i.is_dir()]


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, workdir: Path) -> Path:
    """One member copied to a file we name ourselves (the member's path is never used)."""
    suffix = PurePosixPath(info.filename).suffix
    out = workdir / f"member{suffix}"
    with archive.open(info) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    return out


def _add_archive(path: Path, model_id: str | None, catalog: Catalog) -> AddResult:
    result = AddResult()
    with zipfile.ZipFile(path) as archive:
        members = safe_members(archive, path.name)
        weights = [m for m in members if m.filename.lower().endswith(WEIGHT_SUFFIXES)]
        if not weights:
            raise StoreError(f"{path.name}: the archive holds no weights files ({', '.join(WEIGHT_SUFFIXES)})")
        for info in weights:
            with tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
                member = _extract(archive, info, Path(tmp))
                try:
                    match = identify(member, model_id, name=info.filename, catalog=catalog)
                except StoreError as e:
                    result.unmatched.append(str(e))
                    continue
                stored = _place(member, match.spec, match.file, origin=f"{path.resolve()}!{info.filename}", move=True)
                result.installed.append((match.spec.id, stored))
    if not result.installed:
        raise StoreError(f"{path.name}: no member matched a catalog model ({'; '.join(result.unmatched[:3])})")
    return result


def _scratch() -> Path:
    d = home() / "tmp"
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---------------------------------------------------------------- downloading


def mirror_url(url: str, base_url: str | None = None) -> str:
    """`url`, or its file under a mirror (`base_url` or RESTORER_MIRROR) when one is set."""
    base = base_url or os.environ.get("RESTORER_MIRROR", "")
    if not base:
        return url
    return base.rstrip("/") + "/" + PurePosixPath(unquote(urlparse(url).path)).name


def _part_path(url: str) -> Path:
    name = PurePosixPath(unquote(urlparse(url).path)).name or "download"
    key = hashlib.sha1(url.encode()).hexdigest()[:10]
    return home() / "downloads" / f"{key}-{name}.part"


def fetch(url: str, part: Path, *, progress: ProgressCallback | None = None, attempts: int = 3,
          timeout: float = 60.0) -> Path:
    """Fetch `url` into `part`, resuming what is already there with a Range request;
    a transfer cut short is resumed up to `attempts` times, and kept for the next call."""
    import http.client
    import urllib.error
    import urllib.request

    part.parent.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(attempts):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "restorer"})
        if have:
            request.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the range: start over
                length = response.headers.get("Content-Length")
                total = have + int(length) if length is not None else 0
                with open(part, "ab" if have else "wb") as out:
                    done = have
                    if progress:
                        progress(done, total)
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
            if total and done < total:
                last_error = f"the connection closed at {done} of {total} bytes"
                continue
            return part
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # nothing left to send: the part is complete
                return part
            raise StoreError(f"download failed: HTTP {e.code} {e.reason} from {url}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            last_error = f"{reason}"
    raise StoreError(f"download of {url} interrupted ({last_error}); run the same command again to resume")


def download(spec: ModelSpec, progress: ProgressCallback | None = None, *, base_url: str | None = None,
             catalog: Catalog | None = None) -> list[tuple[str, Path]]:
    """Fetch a model's files into the store; returns (model id, path) of what was installed.

    Each file is checked before it is moved into place: its sha256 when the catalog knows
    it, else its tensors against the entry's signature; on a mismatch nothing is kept.
    An archive installs every catalog entry it holds (they share its URL). Files behind a
    page a person must open (Google Drive) are not tried: the error says what to do.
    """
    catalog = _catalog(catalog)
    if not spec.released:
        raise StoreError(_hint(spec))
    if spec.builtin or spec.is_pipeline:
        raise StoreError(f"model '{spec.id}' has nothing to download" +
                         (f"; it needs: {', '.join(spec.needs)}" if spec.needs else ""))
    if not spec.files:
        raise StoreError(f"model '{spec.id}' lists no files in the catalog")
    installed: list[tuple[str, Path]] = []
    for f in spec.files:
        if (model_dir(spec) / f.name).is_file():
            continue
        if f.browser or not f.url:
            where = f.url or "its authors' page"
            raise StoreError(f"model '{spec.id}': {f.name} cannot be downloaded automatically; "
                             f"download it in a browser from {where} then run: "
                             f"restorer-cli models add {f.name} --id {spec.id}")
        url = mirror_url(f.url, base_url)
        part = fetch(url, _part_path(url), progress=progress)
        try:
            if f.member:
                installed += _install_from_archive(part, f.url, catalog, label=url, required=spec.id)
            else:
                _check_download(part, spec, f, url)
                installed.append((spec.id, _place(part, spec, f, origin=f.url, move=True)))
        finally:
            part.unlink(missing_ok=True)
    return installed


def _check_download(path: Path, spec: ModelSpec, f: FileSpec, url: str) -> None:
    if f.sha256:
        got = sha256_of(path)
        if got != f.sha256.lower():
            path.unlink(missing_ok=True)
            raise StoreError(f"checksum mismatch for {f.name} from {url}: expected sha256 {f.sha256}, "
                             f"got {got}; nothing was kept")
    elif f.name.lower().endswith(WEIGHT_SUFFIXES) and _checkable(spec):
        try:
            shapes = tensor_shapes(path, spec.wrapper_key)
        except StoreError as e:
            path.unlink(missing_ok=True)
            raise StoreError(f"{f.name} from {url} is not a usable checkpoint ({e}); nothing was kept") from None
        diff = compare(shapes, signature(spec), _lenient(spec))
        if diff:
            path.unlink(missing_ok=True)
            raise StoreError(f"{f.name} from {url} is not a checkpoint of '{spec.id}': {diff}; nothing was kept")


def _install_from_archive(archive_path: Path, url: str, catalog: Catalog, label: str,
                          required: str) -> list[tuple[str, Path]]:
    """Install the members of a downloaded archive that catalog entries name (by URL); a
    member missing from the archive is an error only for the entry that was asked for."""
    wanted = [(s, f) for s in catalog for f in s.files if f.url == url and f.member]
    out = []
    with zipfile.ZipFile(archive_path) as archive:
        members = safe_members(archive, label)
        for spec, f in wanted:
            if (model_dir(spec) / f.name).is_file():
                continue
            info = next((i for i in members if _member_matches(f.member, i.filename)), None)
            if info is None:
                if spec.id == required:
                    raise StoreError(f"{label}: the archive has no member {f.member} (for '{spec.id}')")
                log.warning("%s: the archive has no member %s (for '%s')", label, f.member, spec.id)
                continue
            with tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
                member = _extract(archive, info, Path(tmp))
                _check_download(member, spec, f, f"{label}!{f.member}")
                out.append((spec.id, _place(member, spec, f, origin=f"{url}!{f.member}", move=True)))
    return out


# ---------------------------------------------------------------- verify, remove


def verify(spec: ModelSpec) -> list[str]:
    """Problems with an installed model ([] when it is sound): each file's sha256 against
    the catalog (else against what was recorded at install, and its tensors against the
    entry's signature)."""
    if not is_installed(spec):
        return [f"not installed ({_hint(spec)})"]
    problems = []
    record = installed_record(spec)
    for f in spec.files:
        path = model_dir(spec) / f.name
        sha = sha256_of(path)
        if f.sha256:
            if sha != f.sha256.lower():
                problems.append(f"{f.name}: sha256 {sha} differs from the catalog's {f.sha256}")
            continue
        recorded = record.get(f.name, {}).get("sha256")
        if recorded and recorded != sha:
            problems.append(f"{f.name}: changed since it was installed (sha256 {sha}, recorded {recorded})")
        if f.name.lower().endswith(WEIGHT_SUFFIXES) and _checkable(spec):
            try:
                diff = compare(tensor_shapes(path, spec.wrapper_key), signature(spec), _lenient(spec))
            except StoreError as e:
                diff = str(e)
            if diff:
                problems.append(f"{f.name}: {diff}")
    return problems


def remove(spec: ModelSpec) -> list[Path]:
    """Delete a model's files and exports; returns what was removed."""
    removed = []
    folder = model_dir(spec)
    if folder.exists():
        shutil.rmtree(folder)
        removed.append(folder)
    for precision in ("fp32", "fp16"):
        for part in [None, *exported_parts(spec, precision)]:
            path = onnx_path(spec, precision, part)
            for p in (path, path.with_suffix(".json")):
                if p.exists():
                    p.unlink()
                    removed.append(p)
    return removed


# ---------------------------------------------------------------- runners


def load_model(spec: ModelSpec, device: str = "cpu"):
    """The PyTorch module of an installed model, its weights strictly loaded."""
    from restorer.archs import build

    path = weights_path(spec)
    if not path.is_file():
        raise StoreError(_hint(spec))
    state = load_state_dict(path, spec)
    module = build(spec.arch, spec.hparams)
    if _lenient(spec):
        known = module.state_dict().keys()
        state = {k: v for k, v in state.items() if k in known}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise StoreError(f"{path.name} does not fit '{spec.id}': {detail}") from None
    return module.eval()


def runner(spec: ModelSpec, device: str = "auto", precision: str = "fp32"):
    """A Runner for a catalog model: its exported ONNX model when there is one, else eager
    PyTorch on the installed weights, else a StoreError saying how to install it."""
    from restorer.runtime.base import RunnerInfo

    settings = dict(scale=spec.output_scale, channels=spec.channels, pad_multiple=spec.pad_multiple,
                    overlap=spec.overlap, input_range=spec.input_range, output_range=spec.output_range,
                    pre_upscale=int(spec.extra.get("pre_upscale", 1)))
    for candidate in dict.fromkeys((precision, "fp32")):
        path = onnx_path(spec, candidate)
        if path.is_file():
            from restorer.runtime.onnx import OnnxRunner

            run = OnnxRunner(path, RunnerInfo(spec.id, "", ""), device=device, preferred_tile=None, **settings)
            shape = run.session.get_inputs()[0].shape
            if isinstance(shape[2], int) and isinstance(shape[3], int):
                # A fixed-size export: every tile is padded up to exactly that size.
                run.preferred_tile = shape[2]
                run.pad_multiple = shape[2]
                run.info.notes.append(f"exported at a fixed {shape[2]}x{shape[3]} tile")
            if candidate != precision:
                run.info.notes.append(f"no {precision} export of '{spec.id}'; using {candidate}")
            return _with_tile_constraints(run, spec)
    if not is_installed(spec):
        raise StoreError(_hint(spec))
    try:
        import torch  # noqa: F401
    except ImportError:
        raise StoreError(f"model '{spec.id}' is installed but not exported to ONNX, and PyTorch is not "
                         f"installed to run or export it: pip install 'restorer[torch]' then "
                         f"restorer-cli models export {spec.id}") from None
    from restorer.runtime.torch import TorchRunner

    run = TorchRunner(load_model(spec), RunnerInfo(spec.id, "", ""), device=device, preferred_tile=None, **settings)
    run.info.notes.append(f"running in eager PyTorch; `restorer-cli models export {spec.id}` makes it faster")
    return _with_tile_constraints(run, spec)


def _with_tile_constraints(run, spec: ModelSpec):
    """The catalog's limits on tile sizes, for the tiling engine: `tile_multiple` (every tile
    a multiple of it) and `min_size` (the smallest side the network accepts). CGNet needs
    both: it zero-pads to 16 itself, which must never happen inside the image, and its
    global pools and context grid favour large tiles (the engine already picks the largest
    tile that fits in memory, so the whole image when it fits)."""
    run.tile_multiple = max(1, int(spec.extra.get("tile_multiple", 1)))
    run.min_tile = int(spec.extra.get("min_size", 0))
    return run

"""Putting files into the store (atomically, recorded), importing files fetched by hand
(single checkpoints or zip archives, checked before extraction), verifying, removing."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from restorer.zoo.catalog import Catalog, FileSpec, ModelSpec, install_hint
from restorer.zoo.diffusers_folder import INDEX, is_model_folder, needed_files, output_scale, read_index
from restorer.zoo.layout import (
    CHUNK,
    WEIGHT_SUFFIXES,
    StoreError,
    _catalog,
    _write_record,
    exported_parts,
    home,
    installed_record,
    is_installed,
    model_dir,
    onnx_path,
)
from restorer.zoo.recognise import _checkable, compare, identify, signature
from restorer.zoo.weights import _lenient, file_kind, tensor_shapes


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _bring(source: Path, target: Path, move: bool) -> None:
    """`source` at `target`: moved, else hard-linked where the filesystem allows, else copied."""
    if move:
        os.replace(source, target)
        return
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


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
        _bring(source, tmp, move)
        sha = sha or sha256_of(tmp)
        if f.sha256 and sha != f.sha256.lower():
            raise StoreError(f"{f.name}: sha256 {sha} differs from the catalog's {f.sha256}; not installed")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    _write_record(spec, f.name, sha, target.stat().st_size, origin)
    for precision in ("fp32", "fp16"):
        for part in (None, *spec.requirements.export_parts):
            stale = onnx_path(spec, precision, part)
            stale.unlink(missing_ok=True)
            stale.with_suffix(".json").unlink(missing_ok=True)
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
    if path.is_dir():
        if not is_model_folder(path):
            raise StoreError(f"{path}: a folder without {INDEX}; models add takes a checkpoint file, a zip "
                             "of them, or a diffusers model folder")
        return add_folder(path, model_id, catalog)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    if file_kind(path) == "archive":
        try:
            return _add_archive(path, model_id, catalog)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a bad CRC, a cut or lying member
            raise StoreError(f"{path.name}: a damaged zip archive ({e})") from None
    match = identify(path, model_id, catalog=catalog)
    stored = _place(path, match.spec, match.file, origin=str(path.resolve()))
    return AddResult(installed=[(match.spec.id, stored)])


def add_folder(folder: Path, model_id: str | None, catalog: Catalog) -> AddResult:
    """Install a diffusers model folder: the pipeline type read from model_index.json picks
    the catalog entry; its parts are checked (configs, weights readable, output scale) and
    the folder is installed whole."""
    index = read_index(folder)
    kind = index["_class_name"]
    specs = [s for s in catalog if s.generative and s.extra.get("pipeline") == kind]
    if model_id is not None:
        try:
            spec = catalog.get(model_id)
        except KeyError as e:
            raise StoreError(e.args[0]) from None
        if spec not in specs:
            raise StoreError(f"{folder}: a {kind} folder, which is not what '{model_id}' is")
    elif not specs:
        raise StoreError(f"{folder}: no catalog entry runs a {kind}")
    else:
        spec = specs[0]
    names = check_folder(folder, spec)
    install_folder(spec, folder, names, origin=str(folder.resolve()))
    return AddResult(installed=[(spec.id, model_dir(spec))])


def check_folder(folder: Path, spec: ModelSpec) -> list[str]:
    """The files of a diffusers folder restorer installs for `spec`, checked: present, JSON
    readable, weights readable by the safe reader, the decoder's scale the entry's."""
    names = needed_files(folder)
    scale = output_scale(folder)
    if scale != spec.output_scale:
        raise StoreError(f"{folder}: its decoder upscales {scale}x, but '{spec.id}' is {spec.output_scale}x")
    for name in names:
        check_folder_file(folder / name, name)
    return names


def check_folder_file(path: Path, name: str) -> None:
    """One file of a diffusers folder is what its name says: JSON, or weights restorer's
    tensor-only reader can read."""
    if name.endswith(".json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise StoreError(f"{name}: not readable JSON ({e})") from None
    elif name.endswith(WEIGHT_SUFFIXES):
        try:
            shapes = tensor_shapes(path)
        except StoreError as e:
            raise StoreError(f"{name}: not a usable weights file ({str(e).removeprefix(path.name + ': ')})") from None
        if not shapes:
            raise StoreError(f"{name}: holds no tensors")


def install_folder(spec: ModelSpec, source: Path, names: list[str], origin: str, *, move: bool = False) -> Path:
    """Put `names` of `source` into the store as `spec`'s folder, all or nothing: built under
    a temporary name beside it (hard links where possible, else copies; moved with `move`),
    each file's sha256 checked against the catalog and recorded, then renamed into place."""
    target = model_dir(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{spec.id}.{os.getpid()}.tmp")
    retired = target.with_name(f".{spec.id}.{os.getpid()}.old")
    by_name = {f.name: f for f in spec.files}
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = {}
        for name in names:
            src, dst = source / name, staging / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            _bring(src, dst, move)
            sha = sha256_of(dst)
            expected = by_name[name].sha256.lower() if name in by_name else ""
            if expected and sha != expected:
                raise StoreError(f"{name}: sha256 {sha} differs from the catalog's {expected}; not installed")
            record[name] = {"sha256": sha, "size": dst.stat().st_size, "source": f"{origin}/{name}"}
        (staging / "installed.json").write_text(json.dumps(record, indent=1))
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)
    return target


# Limits on what an archive may make us write, checked from its directory before anything
# is extracted (a zip bomb declares gigabytes in a few kilobytes). The largest released
# checkpoint is well under 1 GB and compresses by a few percent at most.
MAX_MEMBER_BYTES = 8 << 30
MAX_RATIO = 100  # inflated size / stored size, for members over RATIO_FROM bytes
RATIO_FROM = 1 << 20
SPARE_BYTES = 256 << 20  # left free on the store's disk after extracting


def check_sizes(members: list[zipfile.ZipInfo], label: str, folder: Path) -> None:
    """Refuse, before extraction, members that declare more than a checkpoint could be, that
    inflate out of proportion, or that together would not fit on `folder`'s disk."""
    for info in members:
        if info.file_size > MAX_MEMBER_BYTES:
            raise StoreError(f"{label}: refusing the archive: member {info.filename!r} declares "
                             f"{info.file_size} bytes, over the limit of {MAX_MEMBER_BYTES}")
        if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise StoreError(f"{label}: refusing the archive: member {info.filename!r} inflates "
                             f"{info.compress_size} bytes to {info.file_size} (a zip bomb?)")
    needed = sum(i.file_size for i in members)
    free = shutil.disk_usage(folder).free
    if needed + SPARE_BYTES > free:
        raise StoreError(f"{label}: its checkpoints need {needed >> 20} MB but {folder} has "
                         f"{free >> 20} MB free; nothing was extracted")


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
    """One member copied into `workdir` (a fresh folder of ours) under its base name only, so
    messages name what the user knows; its sizes checked first, and the copy stopped the moment
    it inflates past what the archive declared (a lying header)."""
    check_sizes([info], info.filename, workdir)
    name = PurePosixPath(info.filename.replace("\\", "/")).name
    out = workdir / (name if re.fullmatch(r"[\w .+-]{1,120}", name) and name.strip(".") else
                     f"member{PurePosixPath(name).suffix[:16]}")
    written = 0
    with archive.open(info) as src, open(out, "wb") as dst:
        while chunk := src.read(CHUNK):
            written += len(chunk)
            if written > info.file_size:
                raise StoreError(f"{info.filename}: inflates past the {info.file_size} bytes the archive "
                                 "declares; refusing it")
            dst.write(chunk)
    return out


def _add_archive(path: Path, model_id: str | None, catalog: Catalog) -> AddResult:
    result = AddResult()
    with zipfile.ZipFile(path) as archive:
        members = safe_members(archive, path.name)
        weights = [m for m in members if m.filename.lower().endswith(WEIGHT_SUFFIXES)]
        if not weights:
            raise StoreError(f"{path.name}: the archive holds no weights files ({', '.join(WEIGHT_SUFFIXES)})")
        check_sizes(weights, path.name, _scratch())  # all of them, before the first is extracted
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


def verify(spec: ModelSpec) -> list[str]:
    """Problems with an installed model ([] when it is sound): each file's sha256 against
    the catalog (else against what was recorded at install, and its tensors against the
    entry's signature)."""
    if not is_installed(spec):
        return [f"not installed ({install_hint(spec)})"]
    problems = []
    record = installed_record(spec)
    if spec.generative:  # a folder: the files recorded when it was installed
        for name, entry in record.items():
            path = model_dir(spec) / name
            if not path.is_file():
                problems.append(f"{name}: missing")
            elif sha256_of(path) != entry.get("sha256"):
                problems.append(f"{name}: changed since it was installed (recorded sha256 {entry.get('sha256')})")
        return problems
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
                diff = compare(tensor_shapes(path, spec.wrapper_key, spec.key_prefix), signature(spec), _lenient(spec))
            except StoreError as e:
                problems.append(str(e))  # it names the file already
                continue
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
            # the export, its record, and the optimised graphs runners kept beside it
            kept = sorted(path.parent.glob(f".optimized/{glob.escape(path.stem)}.*"))
            for p in (path, path.with_suffix(".json"), *kept):
                if p.exists():
                    p.unlink()
                    removed.append(p)
    return removed


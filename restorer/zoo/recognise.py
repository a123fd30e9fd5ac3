"""Which catalog entry a checkpoint is, by its tensor names and shapes (not its file name)."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path, PurePosixPath

from restorer.archs import tensor_layout
from restorer.zoo.catalog import Catalog, FileSpec, ModelSpec
from restorer.zoo.layout import CHUNK, WEIGHT_SUFFIXES, StoreError, _catalog, weights_file
from restorer.zoo.weights import _lenient, _strip_prefix, tensor_shapes

log = logging.getLogger("restorer")


LAYOUTS = "layouts.json.gz"  # in restorer/data/, written by tools/make_layouts.py


def layout_key(arch: str, hparams: dict) -> str:
    """The layouts table's key of a network: its arch and the sha1 of its hyperparameters."""
    digest = hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()
    return f"{arch}|{digest}"


@lru_cache(maxsize=1)
def shipped_layouts() -> dict[str, list]:
    """The tensor layouts of the catalog's networks as shipped (tools/make_layouts.py):
    {layout_key: [[name, shape], ...]}; {} when the table is missing or unreadable."""
    try:
        blob = resources.files("restorer").joinpath("data", LAYOUTS).read_bytes()
        return json.loads(gzip.decompress(blob))["layouts"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.debug("no shipped tensor layouts: %s", e)
        return {}


def signature(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes a released checkpoint of `spec` holds: the shipped
    layouts table, else the module built on torch's meta device (restorer.archs.tensor_layout;
    StoreError when torch is not installed)."""
    shipped = shipped_layouts().get(layout_key(spec.arch, spec.hparams))
    if shipped is not None:
        return {name: tuple(shape) for name, shape in shipped}
    try:
        return tensor_layout(spec.arch, json.dumps(spec.hparams, sort_keys=True))
    except ImportError as e:
        if (e.name or "").split(".")[0] != "torch":
            raise StoreError(f"cannot build '{spec.id}' to work out its tensor layout: {e}") from None
        raise StoreError(f"the tensor layout of '{spec.id}' is not shipped, and PyTorch (needed to "
                         "work it out) is not installed") from None


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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hash(matches: list[Match], digest: str) -> list[Match]:
    """The entries that list a file with this sha256: the checkpoint is that file, whatever
    its name (and the Match names that file)."""
    out = []
    for m in matches:
        f = next((f for f in m.spec.files if f.sha256 and f.sha256.lower() == digest), None)
        if f is not None:
            out.append(Match(m.spec, f))
    return out


def _knows_hashes(specs) -> bool:
    return any(f.sha256 for s in specs for f in s.files)


def recognise(
    path: str | os.PathLike,
    model_id: str | None = None,
    *,
    name: str | None = None,
    catalog: Catalog | None = None,
) -> list[Match]:
    """The catalog entries a checkpoint file is, by its tensor names and shapes.

    Entries that share a signature (the same network trained on other data) are told apart
    by the file's sha256 where the catalog knows one, else by the file's name (`name`,
    default the path as given; a path inside an archive or an unpacked release counts whole,
    against the catalog's `member`) against the catalog's file names. Returns one Match, or
    several when neither can decide (the caller asks for --id). An entry whose signature
    cannot be had here (no shipped layout and no torch) is matched by its sha256 only. With
    `model_id` the file is checked against that entry only. Raises StoreError naming the
    closest entry and the first difference when nothing matches.
    """
    path = Path(path)
    catalog = _catalog(catalog)
    hint = name or str(path)  # a path as given still tells VAE_A_quality/latest_net_G.pth apart
    label = name or path.name
    try:
        found = tensor_shapes(path)
    except StoreError as e:  # it starts with the file's name: say it once, as the user knows it
        raise StoreError(f"{label}: {str(e).removeprefix(f'{path.name}: ')}") from None
    if not found:
        raise StoreError(f"{label}: the file holds no tensors")
    if model_id is not None:
        try:
            spec = catalog.get(model_id)
        except KeyError as e:
            raise StoreError(e.args[0]) from None
        if weights_file(spec) is None:
            raise StoreError(f"model '{spec.id}' takes no weights file")
        try:
            expected = signature(spec)
        except StoreError as e:
            same = _by_hash([Match(spec, _file_for(spec, hint))], sha256_of(path)) if _knows_hashes([spec]) else []
            if same:
                return same
            raise StoreError(f"{label}: cannot check it against '{spec.id}' here: {e}") from None
        diff = compare(_strip_prefix(found, spec.key_prefix), expected, _lenient(spec))
        if diff:
            raise StoreError(f"{label} is not a checkpoint of '{spec.id}': {diff}")
        return [Match(spec, _file_for(spec, hint))]

    matches, misses, unchecked = [], [], []
    for spec in _recognisable(catalog):
        try:
            expected = signature(spec)
        except Exception as e:  # an arch that cannot be built here is skipped, not fatal
            log.debug("cannot build %s for recognition: %s", spec.id, e)
            unchecked.append(spec)
            continue
        mine = _strip_prefix(found, spec.key_prefix)  # the network's tensors, as this entry stores them
        diff = compare(mine, expected, _lenient(spec)) if mine else "none of its tensors is named as this entry's are"
        if not diff:
            matches.append(Match(spec, _file_for(spec, hint)))
        else:
            shared = len(mine.keys() & expected.keys())
            misses.append(Difference(spec, shared / max(1, len(mine.keys() | expected.keys())), diff))
    digest = sha256_of(path) if (len(matches) > 1 and _knows_hashes(m.spec for m in matches)) \
        or (not matches and _knows_hashes(unchecked)) else ""
    if len(matches) > 1:
        matches = (_by_hash(matches, digest) if digest else []) or _tie_break(matches, hint)
    elif not matches and digest:
        matches = _by_hash([Match(s, weights_file(s)) for s in unchecked], digest)
    if matches:
        return matches
    if not misses:
        raise StoreError(f"{label} matches no catalog model (no catalog entry can be checked here)")
    best = max(misses, key=lambda d: d.share)
    extra = _user_model_note(path)
    if unchecked:  # e.g. user entries whose layout is not shipped, without torch to work it out
        ids = ", ".join(s.id for s in unchecked[:3]) + (f" and {len(unchecked) - 3} more" if len(unchecked) > 3 else "")
        extra += f" (not checked here, their layout needs PyTorch: {ids})"
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


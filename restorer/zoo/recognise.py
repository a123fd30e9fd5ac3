"""Which catalog entry a checkpoint is, by its tensor names and shapes (not its file name)."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from restorer.archs import tensor_layout
from restorer.zoo.catalog import Catalog, FileSpec, ModelSpec
from restorer.zoo.layout import WEIGHT_SUFFIXES, StoreError, _catalog, weights_file
from restorer.zoo.weights import _lenient, tensor_shapes

log = logging.getLogger("restorer")


def signature(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes a released checkpoint of `spec` holds (see
    restorer.archs.tensor_layout)."""
    return tensor_layout(spec.arch, json.dumps(spec.hparams, sort_keys=True))


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


"""Where a model lives in the local store, and what state it is in.

Layout under the store's home (platformdirs' user data dir; RESTORER_HOME overrides):
    models/<id>/<file name>          weights as fetched or imported
    models/<id>/installed.json       sha256, size and origin of each file, written on install
    onnx/<id>.<precision>.onnx       exported networks (dynamic height and width)
    onnx/<id>.<precision>.json       how the export was made and its parity with PyTorch
    onnx/<id>.<part>.<precision>.*   a sub-graph a pipeline runs on its own (a VAE's encoder)
    downloads/                       interrupted transfers (`.part`), resumed on the next try
    tmp/                             scratch space for extraction
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from restorer.io.atomic import atomic_path
from restorer.zoo.catalog import Catalog, FileSpec, ModelSpec, load_catalog
from restorer.zoo.home import home

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")



ARCHIVE_SUFFIXES = (".zip",)


CHUNK = 1 << 20


class StoreError(Exception):
    """A store operation cannot be done; the message is one line for the user."""




def model_dir(spec: ModelSpec) -> Path:
    return home() / "models" / spec.id


def weight_paths(spec: ModelSpec) -> list[Path]:
    return [model_dir(spec) / f.name for f in spec.files]


def onnx_path(spec: ModelSpec, precision: str = "fp32", part: str | None = None) -> Path:
    """The exported network, or with `part` one of its sub-graphs exported on its own
    (the architecture's declared export parts, e.g. the old-photo VAE's encoder and decoder)."""
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
    if spec.generative:
        # a model folder arrives whole (renamed into place last, its record inside it)
        return (model_dir(spec) / "model_index.json").is_file() and _record_path(spec).is_file()
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
    return catalog if catalog is not None else load_catalog()


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
    write_text_atomic(_record_path(spec), json.dumps(record, indent=1))


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


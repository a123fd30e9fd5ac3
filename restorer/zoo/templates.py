"""ONNX graph templates: a network's exported graph with its weights left out, shipped with
restorer, so a checkpoint becomes runnable on ONNX Runtime without PyTorch.

A template is made once per architecture and hyperparameter set (and per sub-graph, for a
network whose pipeline runs parts of it on their own) by the developers with
tools/make_templates.py (restorer.convert.templates, which needs torch), and shipped as
restorer/data/templates/<key>[.<part>].onnx.xz: the graph, its non-weight constants (index
tables) and, in the metadata entry "restorer.weights", for every weight initializer the
state_dict key it comes from and how the export transformed it (a transpose, a reshape).
Node debug metadata is stripped and the file xz-compressed: a template is 2-5% of its
exported size. index.json beside them records each template's architecture source digest,
so a template left stale by a change to its architecture fails the test suite.

Installing a checkpoint fills the template with the checkpoint's tensors (read without torch,
restorer.zoo.weights) and writes the runnable model into the store, as an export would.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from importlib import resources
from pathlib import Path

import numpy as np

from restorer.io.atomic import atomic_path
from restorer.zoo.catalog import ModelSpec
from restorer.zoo.layout import StoreError, onnx_path, weights_path, write_text_atomic
from restorer.zoo.weights import load_state_dict

METADATA_KEY = "restorer.weights"
INFO_KEY = "restorer.template"
SUFFIX = ".onnx.xz"
INDEX = "index.json"


def template_key(arch: str, hparams: dict) -> str:
    """The name of the templates of an architecture and its hyperparameters."""
    digest = hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:12]
    return f"{arch}-{digest}"


def template_name(spec: ModelSpec, part: str | None = None) -> str:
    key = template_key(spec.arch, spec.hparams)
    return f"{key}.{part}{SUFFIX}" if part else f"{key}{SUFFIX}"


def template_parts(spec: ModelSpec) -> tuple[str | None, ...]:
    """The graphs a model is made of: its declared export parts, or the whole network."""
    return spec.requirements.export_parts or (None,)


def shipped_templates() -> Path:
    return Path(str(resources.files("restorer").joinpath("data", "templates")))


def template_for(spec: ModelSpec, part: str | None = None, folder: Path | None = None) -> Path | None:
    """The template a catalog model (or its part) can be filled into, or None."""
    path = (folder or shipped_templates()) / template_name(spec, part)
    return path if path.is_file() else None


def has_templates(spec: ModelSpec, folder: Path | None = None) -> bool:
    """Whether every graph of `spec` can be made without torch."""
    return all(template_for(spec, part, folder) for part in template_parts(spec))


def read_template(path: Path):
    """The template's ONNX model (decompressed in memory)."""
    try:
        import onnx
    except ImportError:
        raise StoreError("filling an ONNX template needs the onnx package: pip install onnx") from None
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        try:
            data = lzma.decompress(data)
        except lzma.LZMAError as e:
            raise StoreError(f"{path.name}: damaged template ({e}); reinstall restorer") from None
    return onnx.load_from_string(data)


def write_template(model, target: Path) -> Path:
    """Write a template (an onnx.ModelProto) compressed, atomically, without the exporter's
    per-node debug metadata (source lines and module paths: 85% of an unstripped graph)."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]
    with atomic_path(target) as tmp:
        tmp.write_bytes(lzma.compress(model.SerializeToString(), preset=9 | lzma.PRESET_EXTREME))
    return target


def template_info(path: Path) -> dict:
    """The template's own record: arch, hparams, part, source digest."""
    model = read_template(path)
    return json.loads(next((p.value for p in model.metadata_props if p.key == INFO_KEY), "{}"))


def fill(template: Path, tensors: dict, target: Path) -> Path:
    """Write `template` with its weights taken from `tensors` (state_dict key -> array) to
    `target`, atomically."""
    import onnx
    from onnx import numpy_helper

    model = read_template(template)
    entries = json.loads(next((p.value for p in model.metadata_props if p.key == METADATA_KEY), "[]"))
    for entry in entries:
        key = entry["key"]
        if key not in tensors:
            raise StoreError(f"the checkpoint lacks tensor {key} that the {template.name} template needs")
        array = np.asarray(tensors[key])
        if entry.get("transpose"):
            array = array.T
        if array.size != int(np.prod(entry["shape"])):
            raise StoreError(f"tensor {key} has shape {tuple(array.shape)}; the {template.name} template needs "
                             f"{tuple(entry['shape'])}")
        array = np.ascontiguousarray(array.reshape(entry["shape"]).astype(entry["dtype"]))
        model.graph.initializer.append(numpy_helper.from_array(array, entry["name"]))
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target


def install_from_template(spec: ModelSpec, folder: Path | None = None) -> list[Path] | None:
    """Make the store's ONNX model(s) of an installed checkpoint from its templates, one per
    graph (no torch); None when restorer ships no template for it."""
    if not has_templates(spec, folder):
        return None
    tensors = load_state_dict(weights_path(spec), spec)
    made = []
    for part in template_parts(spec):
        template = template_for(spec, part, folder)
        target = fill(template, tensors, onnx_path(spec, "fp32", part))
        record = {"model": spec.id, **({"part": part} if part else {}), "precision": "fp32",
                  "template": template.name, "dynamic_hw": True}
        write_text_atomic(target.with_suffix(".json"), json.dumps(record, indent=1))
        made.append(target)
    return made


# ---------------------------------------------------------------- staleness

_ARCH_IMPORT = re.compile(r"^\s*(?:from|import)\s+(restorer\.archs\.[\w.]+|\.[\w.]*)", re.MULTILINE)


def _module_file(module: str) -> Path:
    root = Path(__file__).resolve().parents[2]
    base = root.joinpath(*module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def source_digest(arch: str) -> str:
    """sha1 of the source files an architecture is built from (its module and every
    restorer.archs module it imports), read as text: no torch. A template made from other
    sources is stale."""
    from restorer.archs import ARCHS

    pending = [ARCHS[arch].target.split(":")[0]]
    seen: dict[str, str] = {}
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        path = _module_file(module)
        if not path.is_file():
            continue
        text = path.read_text()
        seen[module] = text
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for name in _ARCH_IMPORT.findall(text):
            if name.startswith("."):
                up = len(name) - len(name.lstrip("."))
                base = package.rsplit(".", up - 1)[0] if up > 1 else package
                name = f"{base}.{name.lstrip('.')}" if name.strip(".") else base
            if name != "restorer.archs":
                pending.append(name)
    digest = hashlib.sha1()
    for module in sorted(seen):
        digest.update(module.encode() + b"\0" + seen[module].encode() + b"\0")
    return digest.hexdigest()[:16]


def read_index(folder: Path | None = None) -> dict:
    path = (folder or shipped_templates()) / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def templated_specs(catalog=None) -> list[ModelSpec]:
    """One catalog model per (architecture, hyperparameters) among the released checkpoints:
    what restorer ships templates for."""
    from restorer.archs import ARCHS
    from restorer.zoo.catalog import load_catalog

    seen, specs = set(), []
    for spec in catalog or load_catalog():
        key = template_key(spec.arch, spec.hparams)
        # empty hyperparameters: a release whose architecture was never published (nothing to build)
        if spec.released and spec.files and spec.arch in ARCHS and spec.hparams and key not in seen:
            seen.add(key)
            specs.append(spec)
    return specs


def template_problems(folder: Path | None = None) -> list[str]:
    """What is missing or stale among the shipped templates (one line each)."""
    folder = folder or shipped_templates()
    index = read_index(folder)
    found = []
    for spec in templated_specs():
        for part in template_parts(spec):
            name = template_name(spec, part)
            record = index.get(name)
            if record is None or not (folder / name).is_file():
                found.append(f"{name} ({spec.id}): missing")
            elif record["source"] != source_digest(spec.arch):
                found.append(f"{name} ({spec.id}): stale, {spec.arch}'s source changed since it was made")
    return found

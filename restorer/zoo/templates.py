"""ONNX graph templates: a network's exported graph with its weights left out, shipped with
restorer, so a checkpoint becomes runnable on ONNX Runtime without PyTorch.

A template is made once per architecture and hyperparameter set by the developers
(restorer.convert.templates, which needs torch) and stored as restorer/data/templates/<key>.onnx.
Its metadata entry "restorer.weights" lists, for every initializer that holds a weight,
the state_dict key it comes from and how the export transformed it (a transpose, a reshape).
Installing a checkpoint fills the template with the checkpoint's tensors (read without
torch, restorer.zoo.weights) and writes the runnable model into the store, as an export
would; everything that is not a weight (index tables, masks) stays in the template.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import numpy as np

from restorer.io.atomic import atomic_path
from restorer.zoo.catalog import ModelSpec
from restorer.zoo.layout import StoreError, onnx_path, weights_path, write_text_atomic
from restorer.zoo.weights import load_state_dict

METADATA_KEY = "restorer.weights"


def template_key(arch: str, hparams: dict) -> str:
    """The name of the template for an architecture and its hyperparameters."""
    digest = hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:12]
    return f"{arch}-{digest}"


def shipped_templates() -> Path:
    return Path(str(resources.files("restorer").joinpath("data", "templates")))


def template_for(spec: ModelSpec, folder: Path | None = None) -> Path | None:
    """The template a catalog model can be filled into, or None."""
    path = (folder or shipped_templates()) / f"{template_key(spec.arch, spec.hparams)}.onnx"
    return path if path.is_file() else None


def fill(template: Path, tensors: dict, target: Path) -> Path:
    """Write `template` with its weights taken from `tensors` (state_dict key -> array) to
    `target`, atomically."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise StoreError("filling an ONNX template needs the onnx package: pip install onnx") from None
    model = onnx.load(str(template))
    entries = json.loads(next((p.value for p in model.metadata_props if p.key == METADATA_KEY), "[]"))
    for entry in entries:
        key = entry["key"]
        if key not in tensors:
            raise StoreError(f"the checkpoint lacks tensor {key} that the {template.stem} template needs")
        array = np.asarray(tensors[key])
        if entry.get("transpose"):
            array = array.T
        array = np.ascontiguousarray(array.reshape(entry["shape"]).astype(entry["dtype"]))
        model.graph.initializer.append(numpy_helper.from_array(array, entry["name"]))
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp))
    return target


def install_from_template(spec: ModelSpec, folder: Path | None = None) -> Path | None:
    """Make the store's ONNX model of an installed checkpoint from its template (no torch);
    None when no template ships for it."""
    template = template_for(spec, folder)
    if template is None:
        return None
    tensors = {k: np.asarray(v) for k, v in load_state_dict(weights_path(spec), spec).items()}
    target = fill(template, tensors, onnx_path(spec))
    record = {"model": spec.id, "precision": "fp32", "template": template.stem, "dynamic_hw": True}
    write_text_atomic(target.with_suffix(".json"), json.dumps(record, indent=1))
    return target

"""Making ONNX graph templates (restorer.zoo.templates fills them): export a network built
with distinct random weights, find every initializer that is a weight by its values (the
exporter may rename, transpose or reshape them), record where it comes from and drop it.

    python tools/make_templates.py              # every catalog architecture + hyperparameter set
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from restorer.archs import build
from restorer.convert.export import example_inputs
from restorer.convert.graph import export_onnx
from restorer.zoo.catalog import ModelSpec
from restorer.zoo.templates import METADATA_KEY, template_key


def _distinct_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every floating-point tensor of the state dict its own random values, so each
    initializer of the export can be traced back to exactly one of them."""
    generator = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for tensor in module.state_dict(keep_vars=True).values():
            if id(tensor) in seen or not tensor.is_floating_point():
                continue
            seen.add(id(tensor))
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)


def _fingerprint(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def make_template(spec: ModelSpec, target: Path, tile: int | None = None) -> Path:
    """Export `spec`'s architecture (random weights) and write it without its weights."""
    import onnx
    from onnx import numpy_helper

    module = build(spec.arch, spec.hparams).eval()
    _distinct_weights(module)
    index: dict[str, tuple[str, bool]] = {}  # fingerprint -> (state_dict key, transposed)
    for key, value in module.state_dict().items():
        if value.is_floating_point():
            array = value.numpy()
            index.setdefault(_fingerprint(array), (key, False))
            if array.ndim == 2:
                index.setdefault(_fingerprint(array.T), (key, True))
    multiple = max(1, spec.requirements.min_side)
    tile = tile or max(multiple, 32 - 32 % multiple)
    exported = target.with_suffix(".full.onnx")
    export_onnx(module, example_inputs(spec, module, tile, batch=2), exported, fold_constants=False)
    model = onnx.load(str(exported))
    exported.unlink()
    for path in exported.parent.glob(exported.name + "*"):
        path.unlink()
    state = module.state_dict()
    kept, entries = [], []
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        match = None
        if array.dtype.kind == "f":
            if init.name in state and state[init.name].numel() == array.size:
                match = (init.name, False)  # the exporter kept the parameter's name
            elif array.size > 1:
                match = index.get(_fingerprint(array))
        if match is None:
            kept.append(init)
            continue
        key, transposed = match
        entries.append({"name": init.name, "key": key, "transpose": transposed, "shape": list(array.shape),
                        "dtype": str(array.dtype)})
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    meta = model.metadata_props.add()
    meta.key, meta.value = METADATA_KEY, json.dumps(entries)
    info = model.metadata_props.add()
    info.key, info.value = "restorer.template", json.dumps({"arch": spec.arch, "hparams": spec.hparams})
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target))
    return target


def make_for_catalog(specs: list[ModelSpec], folder: Path, only_missing: bool = True) -> list[Path]:
    """One template per (architecture, hyperparameters) among `specs`."""
    made = []
    for spec in specs:
        target = folder / f"{template_key(spec.arch, spec.hparams)}.onnx"
        if only_missing and target.exists():
            continue
        made.append(make_template(spec, target))
    return made

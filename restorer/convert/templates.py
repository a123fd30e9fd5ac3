"""Making ONNX graph templates (restorer.zoo.templates fills them): export a network built
with distinct random weights, find every initializer that is a weight by its values (the
exporter may rename, transpose or reshape them), record where it comes from and drop it.
The template is then filled back with the same weights and must give what the export gives
(within 1e-5; it is the same graph), else it is not written.

    python tools/make_templates.py              # every catalog architecture + hyperparameter set
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from restorer.archs import build
from restorer.convert.export import example_inputs
from restorer.convert.graph import export_onnx
from restorer.convert.text import export_bert_onnx, export_language_head
from restorer.io.atomic import atomic_path
from restorer.run.onnx import create_session
from restorer.zoo.catalog import ModelSpec
from restorer.zoo.templates import (
    INFO_KEY,
    METADATA_KEY,
    fill,
    source_digest,
    template_name,
    template_parts,
    write_template,
)

EXACT = 1e-5  # a filled template is the export's own graph: anything above this is a mapping error


def _distinct_weights(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every floating-point tensor of the state dict its own random values, so each
    initializer of the export can be traced back to exactly one of them."""
    generator = torch.Generator().manual_seed(seed)
    seen = set()
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if id(tensor) in seen or not tensor.is_floating_point():
                continue
            seen.add(id(tensor))
            values = torch.randn(tensor.shape, generator=generator) * 0.05
            # a variance must stay positive (a negative one gives NaN, and NaN proves nothing)
            tensor.copy_(1 + values.abs() if name.endswith("running_var") else values)


def _fingerprint(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def check_inputs(spec: ModelSpec, module: torch.nn.Module, part: str | None, tile: int) -> dict[str, np.ndarray]:
    """Inputs to compare a graph of `spec` with: its example inputs at `tile` pixels (token ids
    and a padded mask for the sentence encoder, an embedding for the language head)."""
    g = np.random.default_rng(1)
    if spec.arch == "BertModel":
        ids = g.integers(1, spec.hparams["vocab_size"], (2, 9)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1, 6:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    if spec.arch == "InstructIRLMHead":
        return {"sentence_embedding": g.standard_normal((2, module.fc1.in_features)).astype(np.float32)}
    return {k: v.numpy() for k, v in example_inputs(spec, module, tile, seed=1, part=part).items()}


def default_tile(spec: ModelSpec) -> int:
    multiple = max(1, spec.requirements.min_side)
    return max(multiple, 32 - 32 % multiple)


def _export(spec: ModelSpec, module: torch.nn.Module, part: str | None, path: Path, tile: int) -> None:
    """Export the graph unfolded (every weight an initializer of its own) to `path`."""
    if spec.arch == "BertModel":
        export_bert_onnx(module, path, fold_constants=False)
    elif spec.arch == "InstructIRLMHead":
        export_language_head(module, path, fold_constants=False)
    else:
        # one tile at a time, as the engine feeds it (and much faster to trace than a dynamic batch)
        net = getattr(module, part) if part else module
        export_onnx(net, example_inputs(spec, module, tile, part=part), path, fold_constants=False,
                    dynamic_batch=False)


def _run(path: Path, feeds: dict) -> list[np.ndarray]:
    session = create_session(path, "cpu").session
    wanted = {i.name for i in session.get_inputs()}
    return session.run(None, {k: v for k, v in feeds.items() if k in wanted})


def make_template(spec: ModelSpec, folder: Path, tile: int | None = None) -> dict[str, dict]:
    """Export `spec`'s architecture (random weights) and write its template(s) into
    `folder`, one per graph. Returns {file name: its index record}."""
    import onnx
    from onnx import numpy_helper

    module = build(spec.arch, spec.hparams).eval()
    _distinct_weights(module)
    state = {k: v.numpy() for k, v in module.state_dict().items() if v.is_floating_point()}
    index: dict[str, tuple[str, bool]] = {}  # fingerprint -> (state_dict key, transposed)
    for key, array in state.items():
        index.setdefault(_fingerprint(array), (key, False))
        if array.ndim == 2:
            index.setdefault(_fingerprint(array.T), (key, True))
    tile = tile or default_tile(spec)
    records = {}
    with tempfile.TemporaryDirectory(prefix="template-") as scratch:
        for part in template_parts(spec):
            exported = Path(scratch) / "full.onnx"
            _export(spec, module, part, exported, tile)
            feeds = check_inputs(spec, module, part, tile)
            model = onnx.load(str(exported))
            # the reference: the export without what write_template strips. Its shape hints
            # (value_info) steer ONNX Runtime's fusions (e.g. a Conv and the Add after it into
            # one FusedConv), which round differently: a relative 1e-6..1e-5 that is no
            # mapping error, but huge where random weights blow the output up (GFPGAN's SFT
            # scales: 5e21 at 512 px)
            del model.graph.value_info[:]
            for node in model.graph.node:
                del node.metadata_props[:]
                node.doc_string = ""
            reference = Path(scratch) / "reference.onnx"
            onnx.save(model, str(reference))
            prefix = f"{part}." if part else ""
            kept, entries = [], []
            for init in model.graph.initializer:
                array = numpy_helper.to_array(init)
                match = None
                if array.dtype.kind == "f":
                    name = prefix + init.name
                    if name in state and state[name].size == array.size:
                        match = (name, False)  # the exporter kept the parameter's name
                    elif array.size > 1:
                        match = index.get(_fingerprint(array))
                if match is None:
                    kept.append(init)
                    continue
                key, transposed = match
                entries.append({"name": init.name, "key": key, "transpose": transposed,
                                "shape": list(array.shape), "dtype": str(array.dtype)})
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
            record = {"arch": spec.arch, "hparams": spec.hparams, **({"part": part} if part else {}),
                      "source": source_digest(spec.arch)}
            for key, value in ((METADATA_KEY, json.dumps(entries)), (INFO_KEY, json.dumps(record))):
                meta = model.metadata_props.add()
                meta.key, meta.value = key, value
            target = folder / template_name(spec, part)
            candidate = write_template(model, Path(scratch) / target.name)
            # the proof: filled with the same weights, the template is the export
            filled = fill(candidate, state, Path(scratch) / "filled.onnx")
            diff = max(float(np.max(np.abs(a - b))) for a, b in zip(_run(reference, feeds), _run(filled, feeds)))
            if not diff <= EXACT:  # NaN included
                raise RuntimeError(f"{target.name}: the filled template differs from the export by {diff:.3g}")
            with atomic_path(target) as tmp:
                shutil.copyfile(candidate, tmp)
            records[target.name] = {**record, "bytes": target.stat().st_size,
                                    "weights": len(entries), "max_diff_to_export": diff}
    return records

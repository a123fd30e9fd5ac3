"""PyTorch -> ONNX export with a parity check against PyTorch.

The dynamo exporter is used: it handles attention blocks with dynamic height and width,
where the legacy TorchScript exporter bakes the export size into some reshapes.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

OPSET = 18


@dataclass
class Parity:
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def export_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    dynamic_hw: bool = True,
    output_name: str = "output",
    opset: int = OPSET,
) -> Path:
    """Export `module(**inputs)` to `path` (written atomically).

    The first input is the image (NCHW); with `dynamic_hw` its batch, height and width are
    dynamic, else only the batch is. Other inputs (an embedding, a mask) keep their
    leading batch dimension dynamic.
    """
    path = Path(path)
    module = module.eval()
    names = list(inputs)
    image = names[0]
    batch = torch.export.Dim("batch", min=1, max=64)
    shapes: dict[str, dict[int, object]] = {}
    if dynamic_hw:
        shapes[image] = {0: batch, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}
    else:
        shapes[image] = {0: batch}
    for name in names[1:]:
        t = inputs[name]
        shapes[name] = {0: batch} if t.dim() > 0 else {}
        if dynamic_hw and t.dim() == 4:
            # a per-pixel input (a mask, maybe at another resolution than the image)
            shapes[name].update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    # torch.export specialises a dimension traced at size 1: trace with a batch of two.
    inputs = {k: (v.repeat(2, *([1] * (v.dim() - 1))) if v.dim() > 0 and v.shape[0] == 1 else v)
              for k, v in inputs.items()}
    if len(names) == 1:
        shapes = {image: shapes[image]}
    return write_onnx(module, inputs, path, shapes, [output_name], opset=opset)


def write_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    dynamic_shapes: dict,
    output_names: list[str],
    *,
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
) -> Path:
    """torch.onnx.export (dynamo) of `module(**inputs)`, written atomically to `path`, with
    optional metadata properties. The one place every network is exported through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.part", dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                module.eval(),
                kwargs=inputs,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                input_names=list(inputs),
                output_names=output_names,
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        program.save(tmp)
        if metadata:
            import onnx

            proto = onnx.load(tmp)
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, str(value)
            onnx.save(proto, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def run_onnx(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run an exported model on the CPU provider (for parity checks)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items() if k in wanted}
    return session.run(None, feeds)[0]


def parity(
    module: torch.nn.Module,
    onnx_path: str | os.PathLike,
    inputs: dict[str, np.ndarray],
    tolerance: float = 1e-4,
) -> Parity:
    """Max abs difference between PyTorch and ONNX Runtime on the same inputs."""
    with torch.no_grad():
        expected = module.eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    got = run_onnx(onnx_path, inputs)
    return Parity(float(np.max(np.abs(expected - got))), tolerance)


# ---------------------------------------------------------------- catalog models

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2  # fp16 keeps ~3 decimal digits; an 8-bit step is 4e-3


class ExportError(RuntimeError):
    """A model could not be exported (or its export did not match PyTorch); one line."""


class _HalfPrecision(torch.nn.Module):
    """Runs a network in float16 behind float32 inputs and outputs, so an fp16 export is
    fed exactly like an fp32 one."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module.half()

    def forward(self, **inputs):
        cast = {k: v.half() if v.is_floating_point() else v for k, v in inputs.items()}
        return self.module(**cast).float()


def _forward_parameters(module: torch.nn.Module) -> list[str]:
    import inspect

    return list(inspect.signature(module.forward).parameters)


def _family(spec):
    import importlib

    from restorer.archs import ARCHS

    return importlib.import_module(ARCHS[spec.arch].split(":")[0])


def export_parts(spec) -> tuple[str, ...]:
    """The sub-graphs of a model its pipeline runs on its own, each exported to
    store.onnx_path(spec, precision, part): the family module's EXPORT_PARTS for the
    model's arch (e.g. a VAE's encoder and decoder); () for a model exported whole."""
    from restorer.archs import ARCHS

    if spec.arch not in ARCHS or spec.arch in TEXT_EXPORTERS:
        return ()
    return tuple(getattr(_family(spec), "EXPORT_PARTS", {}).get(spec.arch, ()))


def example_inputs(spec, module: torch.nn.Module, tile: int, batch: int = 1, seed: int = 0,
                   part: str | None = None) -> dict[str, torch.Tensor]:
    """Inputs to trace and check a catalog model (or its sub-graph `part`) with, `tile`
    pixels square.

    A family whose network takes more than an image (a text embedding, a mask, a latent)
    defines `example_inputs(hparams, tile)` in its arch module, returning every input by
    name (a family with EXPORT_PARTS: `example_inputs(hparams, tile, part=None)`);
    otherwise the network takes one image of the catalog's channel count.
    """
    generator = torch.Generator().manual_seed(seed)
    hook = getattr(_family(spec), "example_inputs", None)
    if hook is not None:
        inputs = hook(spec.hparams, tile, part=part) if part else hook(spec.hparams, tile)
        return {k: v.expand(batch, *v.shape[1:]).contiguous() if v.dim() else v for k, v in inputs.items()}
    names = _forward_parameters(module)
    if len(names) != 1:
        raise ExportError(f"'{spec.id}': {spec.arch}.forward takes {', '.join(names)}; its arch module "
                          f"needs an example_inputs(hparams, tile) function to be exported")
    lo, hi = spec.input_range
    image = torch.rand(batch, spec.channels, tile, tile, generator=generator) * (hi - lo) + lo
    return {names[0]: image}


def export_model(spec, tile: int | None = None, precision: str = "fp32", force: bool = False,
                 progress=None) -> tuple[Path, Parity]:
    """Export an installed catalog model to store.onnx_path(spec, precision), checked.

    The weights are strictly loaded into our arch, exported with dynamic height and width
    (a fixed tile with a dynamic batch where the arch cannot), and ONNX Runtime and PyTorch
    are run on the same random input at the tile size: an export further than the
    tolerance from PyTorch is discarded with an error. fp16 is refused for archs whose
    catalog `precisions` lack it unless `force`. An existing export is kept unless `force`.
    A model whose family declares EXPORT_PARTS is exported as those sub-graphs instead,
    each to store.onnx_path(spec, precision, part) with its own check and record.
    Returns the path and the measured parity (for parts: the last path, the worst parity).
    """
    from restorer import store

    say = progress or (lambda message: None)
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"unknown precision {precision!r}; use fp32 or fp16")
    if spec.builtin or spec.is_pipeline:
        raise ExportError(f"model '{spec.id}' is not a single network; nothing to export")
    if precision == "fp16" and "fp16" not in spec.precisions and not force:
        raise ExportError(f"fp16 is not known to be safe for '{spec.id}' ({spec.arch}; catalog precisions: "
                          f"{', '.join(spec.precisions)}); add --force to export it anyway")
    targets = [(part, store.onnx_path(spec, precision, part)) for part in export_parts(spec) or [None]]
    done = {part: _recorded(target) for part, target in targets if not force}
    if all(done.get(part) for part, _ in targets):
        return targets[-1][1], max((done[part] for part, _ in targets), key=lambda r: r.max_abs_diff)
    if not store.is_installed(spec):
        raise ExportError(store._hint(spec))
    target = targets[-1][1]
    if spec.arch in TEXT_EXPORTERS:
        say(f"exporting {spec.id}")
        result = TEXT_EXPORTERS[spec.arch](spec, target)
        if not result.ok:
            target.unlink(missing_ok=True)
            raise ExportError(f"'{spec.id}': ONNX Runtime differs from PyTorch by {result.max_abs_diff:.2e}")
        target.with_suffix(".json").write_text(json.dumps({"max_abs_diff": result.max_abs_diff,
                                                           "tolerance": result.tolerance}))
        return target, result

    multiple = max(1, spec.pad_multiple)
    tile = tile or spec.tile
    tile = max(multiple, tile - tile % multiple)
    say(f"loading {store.weights_path(spec).name}")
    module = store.load_model(spec)
    results = []
    for part, target in targets:
        if done.get(part):
            results.append(done[part])
            continue
        net = getattr(module, part) if part else module
        if part:
            say(f"part {part}")
        results.append(_export_graph(spec, net, target, tile, precision, part, say))
    return target, max(results, key=lambda r: r.max_abs_diff)


def _recorded(target: Path) -> Parity | None:
    """The parity recorded next to an existing export, or None (no export, or no record of
    its check: export again)."""
    if not target.is_file():
        return None
    try:
        info = json.loads(target.with_suffix(".json").read_text())
        return Parity(info["max_abs_diff"], info["tolerance"])
    except (OSError, ValueError, KeyError):
        return None


def _export_graph(spec, module: torch.nn.Module, target: Path, tile: int, precision: str, part: str | None,
                  say) -> Parity:
    """One network (or sub-graph) exported to `target`, checked against PyTorch, recorded."""
    import copy

    name = f"{spec.id} {part}" if part else spec.id
    net = _HalfPrecision(copy.deepcopy(module)) if precision == "fp16" else module
    # The batch axis is dynamic (min 1), which torch.export cannot trace from a batch of one.
    example = example_inputs(spec, module, tile, batch=2, part=part)
    check = {k: v[:1].numpy() if v.dim() else v.numpy()
             for k, v in example_inputs(spec, module, tile, seed=1, part=part).items()}
    tolerance = FP16_TOLERANCE if precision == "fp16" else FP32_TOLERANCE
    scratch = target.with_name(f".{target.name}.{os.getpid()}.check.onnx")
    dynamic = True
    try:
        say(f"exporting at {tile}x{tile} with dynamic height and width")
        try:
            export_onnx(net, example, scratch, dynamic_hw=True)
        except Exception as e:  # noqa: BLE001 - any tracing failure means: try a fixed size
            say(f"dynamic export failed ({str(e).splitlines()[0][:120]}); exporting a fixed {tile}x{tile} tile")
            dynamic = False
            try:
                export_onnx(net, example, scratch, dynamic_hw=False)
            except Exception as e2:  # noqa: BLE001
                raise ExportError(f"'{name}' could not be exported: {str(e2).splitlines()[0][:200]}") from None
        say("checking ONNX Runtime against PyTorch")
        try:
            result = parity(module, scratch, check, tolerance=tolerance)
        except Exception as e:  # noqa: BLE001 - e.g. no fp16 kernels in this ONNX Runtime build
            raise ExportError(f"'{name}' {precision} export could not be run by ONNX Runtime here: "
                              f"{str(e).strip().splitlines()[0][:200]}; the export was discarded") from None
        if not result.ok:
            raise ExportError(f"'{name}' {precision} export differs from PyTorch by {result.max_abs_diff:.3g} "
                              f"(tolerance {tolerance:g}); the export was discarded")
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    record = {"model": spec.id, **({"part": part} if part else {}), "precision": precision, "tile": tile,
              "dynamic_hw": dynamic, "max_abs_diff": result.max_abs_diff, "tolerance": tolerance}
    target.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return result



# ---------------------------------------------------------------- the instruction's text side


def _export_text_encoder(spec, target: Path) -> Parity:
    """bge-micro-v2 (a BERT) -> ONNX: token ids and mask in, last hidden state out; the
    torch-free TextEncoder pools it. Checked on a padded batch of random token ids."""
    from restorer import store
    from restorer.archs.bert import export_bert_onnx, load_bert, read_weights

    model = load_bert(read_weights(store.weights_path(spec)), **spec.hparams)
    export_bert_onnx(model, target)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, spec.hparams["vocab_size"], (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    with torch.no_grad():
        expected = model(ids, mask).numpy()
    got = _run_raw(target, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    keep = mask.numpy().astype(bool)  # padded positions carry no meaning
    return Parity(float(np.max(np.abs(expected - got)[keep])), FP32_TOLERANCE)


def _export_language_head(spec, target: Path) -> Parity:
    """InstructIR's language head -> ONNX (two outputs: the embedding and the logits)."""
    from restorer import store
    from restorer.archs.instructir import export_language_head

    head = store.load_model(spec)
    export_language_head(head, target)
    x = torch.randn(3, spec.hparams["embedding_dim"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = [t.numpy() for t in head(x)]
    got = _run_raw(target, {"sentence_embedding": x.numpy()})
    return Parity(max(float(np.max(np.abs(e - g))) for e, g in zip(expected, got)), FP32_TOLERANCE)


def _run_raw(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


TEXT_EXPORTERS = {"BertModel": _export_text_encoder, "InstructIRLMHead": _export_language_head}

"""Exporting an installed catalog model to ONNX, checked against PyTorch, into the 

A family whose network takes more than one image declares it: its arch module's
`example_inputs(hparams, tile[, part])`, and its sub-graphs in restorer.archs.ARCHS
(`export_parts`). The text side of InstructIR has its own exporters (restorer.convert.text).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from restorer.archs import family_module
from restorer.convert.graph import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    Parity,
    export_onnx,
    parity,
)
from restorer.convert.text import TEXT_EXPORTERS
from restorer.run.torch import load_module
from restorer.zoo.catalog import install_hint
from restorer.zoo.layout import is_installed, onnx_path, weights_path


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


def export_parts(spec) -> tuple[str, ...]:
    """The sub-graphs of a model its pipeline runs on its own, each exported to
    onnx_path(spec, precision, part): the architecture's declared `export_parts` (e.g. a
    VAE's encoder and decoder); () for a model exported whole."""
    return spec.requirements.export_parts


def example_inputs(spec, module: torch.nn.Module, tile: int, batch: int = 1, seed: int = 0,
                   part: str | None = None) -> dict[str, torch.Tensor]:
    """Inputs to trace and check a catalog model (or its sub-graph `part`) with, `tile`
    pixels square.

    A family whose network takes more than an image (a text embedding, a mask, a latent)
    defines `example_inputs(hparams, tile)` in its arch module, returning every input by
    name (a family with export parts: `example_inputs(hparams, tile, part=None)`);
    otherwise the network takes one image of the catalog's channel count.
    """
    generator = torch.Generator().manual_seed(seed)
    hook = getattr(family_module(spec.arch), "example_inputs", None)
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
    """Export an installed catalog model to onnx_path(spec, precision), checked.

    The weights are strictly loaded into our arch, exported with dynamic height and width
    (a fixed tile with a dynamic batch where the arch cannot), and ONNX Runtime and PyTorch
    are run on the same random input at the tile size: an export further than the
    tolerance from PyTorch is discarded with an error. fp16 is refused for archs whose
    catalog `precisions` lack it unless `force`. An existing export is kept unless `force`.
    A model whose architecture declares export parts is exported as those sub-graphs instead,
    each to onnx_path(spec, precision, part) with its own check and record.
    Returns the path and the measured parity (for parts: the last path, the worst parity).
    """

    say = progress or (lambda message: None)
    if precision not in ("fp32", "fp16"):
        raise ExportError(f"unknown precision {precision!r}; use fp32 or fp16")
    if spec.builtin or spec.is_pipeline:
        raise ExportError(f"model '{spec.id}' is not a single network; nothing to export")
    if precision == "fp16" and "fp16" not in spec.precisions and not force:
        raise ExportError(f"fp16 is not known to be safe for '{spec.id}' ({spec.arch}; catalog precisions: "
                          f"{', '.join(spec.precisions)}); add --force to export it anyway")
    targets = [(part, onnx_path(spec, precision, part)) for part in export_parts(spec) or [None]]
    done = {part: _recorded(target) for part, target in targets if not force}
    if all(done.get(part) for part, _ in targets):
        return targets[-1][1], max((done[part] for part, _ in targets), key=lambda r: r.max_abs_diff)
    if not is_installed(spec):
        raise ExportError(install_hint(spec))
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
    say(f"loading {weights_path(spec).name}")
    module = load_module(spec)
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
        return Parity(info["max_abs_diff"], info["tolerance"], info.get("scale", 1.0))
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
                              f"(tolerance {tolerance:g} x output scale {result.scale:.3g}); the export was discarded")
        os.replace(scratch, target)
    finally:
        scratch.unlink(missing_ok=True)
    record = {"model": spec.id, **({"part": part} if part else {}), "precision": precision, "tile": tile,
              "dynamic_hw": dynamic, "max_abs_diff": result.max_abs_diff, "tolerance": tolerance,
              "scale": result.scale}
    target.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return result



# ---------------------------------------------------------------- the instruction's text side



"""PyTorch -> ONNX: the one export path (atomic write), and running an export for a parity check.

The dynamo exporter is used: it handles attention blocks with dynamic height and width,
where the legacy TorchScript exporter bakes the export size into some reshapes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from restorer.io.atomic import atomic_path
from restorer.run.onnx import run_fixed

OPSET = 18


@dataclass
class Parity:
    max_abs_diff: float
    tolerance: float
    scale: float = 1.0  # max(1, largest output magnitude): float32 error grows with the values

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * self.scale


def export_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    *,
    dynamic_hw: bool = True,
    output_name: str = "output",
    opset: int = OPSET,
    fold_constants: bool = True,
    dynamic_batch: bool = True,
) -> Path:
    """Export `module(**inputs)` to `path` (written atomically).

    The first input is the image (NCHW); with `dynamic_hw` its batch, height and width are
    dynamic, else only the batch is. Other inputs (an embedding, a mask) keep their
    leading batch dimension dynamic. Without `dynamic_batch` the graph takes a batch of one
    (the tiling engine's feed): tracing with one symbol fewer is 2-3x faster for the
    scan-based families, whose every shape in the scan carries the batch symbol.
    """
    path = Path(path)
    module = module.eval()
    names = list(inputs)
    image = names[0]
    batch = torch.export.Dim("batch", min=1, max=64) if dynamic_batch else None
    leading = {0: batch} if dynamic_batch else {}
    shapes: dict[str, dict[int, object]] = {}
    shapes[image] = dict(leading)
    if dynamic_hw:
        shapes[image].update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    for name in names[1:]:
        t = inputs[name]
        shapes[name] = dict(leading) if t.dim() > 0 else {}
        if dynamic_hw and t.dim() == 4:
            # a per-pixel input (a mask, maybe at another resolution than the image)
            shapes[name].update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    if dynamic_batch:
        # torch.export specialises a dimension traced at size 1: trace with a batch of two.
        inputs = {k: (v.repeat(2, *([1] * (v.dim() - 1))) if v.dim() > 0 and v.shape[0] == 1 else v)
                  for k, v in inputs.items()}
    else:
        inputs = {k: v[:1] if v.dim() > 0 else v for k, v in inputs.items()}
    if len(names) == 1:
        shapes = {image: shapes[image]}
    return write_onnx(module, inputs, path, shapes, [output_name], opset=opset, fold_constants=fold_constants)


def write_onnx(
    module: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    path: str | os.PathLike,
    dynamic_shapes: dict,
    output_names: list[str],
    *,
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
    fold_constants: bool = True,
) -> Path:
    """torch.onnx.export (dynamo) of `module(**inputs)`, written atomically to `path`, with
    optional metadata properties. The one place every network is exported through.
    `fold_constants=False` keeps every weight an initializer of its own (a template must not
    bake a weight into a folded constant, e.g. HAT's bias table gathered by its index);
    ONNX Runtime folds them when it loads the model."""
    path = Path(path)
    with atomic_path(path) as tmp:
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
                optimize=fold_constants,
                verbose=False,
            )
        program.save(str(tmp))
        if metadata:
            import onnx

            proto = onnx.load(str(tmp))
            for key, value in metadata.items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, str(value)
            onnx.save(proto, str(tmp))
    return path


def run_onnx(path: str | os.PathLike, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """Run an exported model on the CPU provider, its sizes fixed as the runner fixes them
    (for parity checks)."""
    feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in inputs.items()}
    return run_fixed(path, feeds)[0]


def parity(
    module: torch.nn.Module,
    onnx_path: str | os.PathLike,
    inputs: dict[str, np.ndarray],
    tolerance: float = 1e-4,
) -> Parity:
    """Max abs difference between PyTorch and ONNX Runtime on the same inputs, judged
    relative to the output's magnitude (an intermediate latent can be far larger than 1)."""
    with torch.no_grad():
        expected = module.eval()(**{k: torch.from_numpy(v) for k, v in inputs.items()}).numpy()
    got = run_onnx(onnx_path, inputs)
    scale = max(1.0, float(np.max(np.abs(expected))))
    return Parity(float(np.max(np.abs(expected - got))), tolerance, scale)


# ---------------------------------------------------------------- catalog models

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2  # fp16 keeps ~3 decimal digits; an 8-bit step is 4e-3



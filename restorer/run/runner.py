"""The one protocol every backend speaks: ONNX Runtime, eager PyTorch, built-in operators.

A Runner maps an NCHW float32 batch with values in [0, 1] to an NCHW float32 batch of
`needs.scale` times the size. Its `needs` (restorer.archs.requirements.Requirements) say
what the tiling engine must feed it: the multiple its input is padded to, the smallest and
fixed tile, the context a tile needs, whether it must see the whole image. Anything a
network needs beyond the pixels (a text embedding, a mask) is passed as named extra inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from restorer.archs.requirements import Requirements


class OutOfMemory(RuntimeError):
    """A backend ran out of memory on a tile; the tiling engine retries with a smaller one."""


@dataclass
class RunnerInfo:
    """What a runner is, for reports: the model id, the backend, the provider that ran."""

    model: str  # catalog id, e.g. "hat-s-x4", or "builtin:denoise"
    backend: str  # "onnx", "torch" or "builtin"
    provider: str  # "CUDAExecutionProvider", "CPUExecutionProvider", "torch:cpu", "numpy"
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class Runner(Protocol):
    info: RunnerInfo
    needs: Requirements  # scale, channels, padding, tile limits, extra inputs: read by the tiling engine

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        """NCHW float32 in [0, 1] -> NCHW float32 (N, C, H*scale, W*scale)."""
        ...

    def close(self) -> None:
        """Release what the runner holds (a session, a module)."""
        ...


class NetworkRunner:
    """Shared by the ONNX Runtime and PyTorch runners: value ranges and extra inputs.

    Images travel in [0, 1]; a network trained on another range (e.g. [-1, 1]) gets its
    input mapped to `needs.input_range` and its output mapped back from `needs.output_range`.
    """

    def __init__(self, info: RunnerInfo, needs: Requirements, fixed_inputs: dict[str, np.ndarray] | None = None):
        self.info = info
        self.needs = needs
        self.fixed_inputs = dict(fixed_inputs or {})  # e.g. a text embedding for every tile

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        if self.needs.pre_upscale > 1:
            batch = bicubic_upscale(batch, self.needs.pre_upscale)
        lo, hi = self.needs.input_range
        x = batch if (lo, hi) == (0.0, 1.0) else batch * (hi - lo) + lo
        inputs = {**self.fixed_inputs, **extra}
        y = self.forward(np.ascontiguousarray(x, dtype=np.float32), inputs)
        if not np.isfinite(y).all():  # e.g. an fp16 overflow: never write black patches silently
            raise FloatingPointError(f"{self.info.model} produced NaN or infinite values on {self.info.provider} "
                                     "(try --device cpu, or an fp32 export)")
        lo, hi = self.needs.output_range
        return y if (lo, hi) == (0.0, 1.0) else (y - lo) / (hi - lo)

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def expect_repeats(self, shape: tuple[int, ...]) -> None:
        """Told by the tiling engine: batches of `shape` come more than once (an image's
        tiles), so a runtime that prepares per shape may do so from the first call."""

    def close(self) -> None:
        pass


def bicubic_upscale(batch: np.ndarray, factor: int) -> np.ndarray:
    """NCHW bicubic upscaling, for networks that restore an already-interpolated image."""
    import cv2

    n, c, h, w = batch.shape
    out = np.empty((n, c, h * factor, w * factor), np.float32)
    for i in range(n):
        for j in range(c):
            out[i, j] = cv2.resize(batch[i, j], (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)
    return out

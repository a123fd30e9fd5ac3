"""The one protocol every backend speaks: ONNX Runtime, eager PyTorch, built-in operators.

A Runner maps an NCHW float32 batch with values in [0, 1] to an NCHW float32 batch of
`scale` times the size. It declares what the tiling engine needs to feed it: the multiple
its input must be padded to, how many pixels of context a tile needs (overlap), and the
tile size it prefers. Anything a network needs beyond the pixels (a text embedding, a mask)
is passed as named extra inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


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
    scale: int  # output size / input size (1 to 4)
    channels: int  # 3 (RGB) or 1 (gray); the engine converts the image to match
    pad_multiple: int  # input H and W are reflect-padded to a multiple of this
    overlap: int  # context pixels (input scale) each tile needs on every side
    preferred_tile: int | None  # None: the whole image in one piece is fine
    whole_image: bool  # True: the runner needs global statistics; never tile it

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        """NCHW float32 in [0, 1] -> NCHW float32 (N, C, H*scale, W*scale)."""
        ...


class NetworkRunner:
    """Shared by the ONNX Runtime and PyTorch runners: value ranges and extra inputs.

    Images travel in [0, 1]; a network trained on another range (e.g. [-1, 1]) gets its
    input mapped to `input_range` and its output mapped back from `output_range`.
    """

    whole_image = False
    bytes_per_pixel = 40_000  # rough activation memory per input pixel, for auto tiling

    def __init__(
        self,
        info: RunnerInfo,
        *,
        scale: int = 1,
        channels: int = 3,
        pad_multiple: int = 1,
        overlap: int = 16,
        preferred_tile: int | None = None,
        input_range: tuple[float, float] = (0.0, 1.0),
        output_range: tuple[float, float] = (0.0, 1.0),
        fixed_inputs: dict[str, np.ndarray] | None = None,
        pre_upscale: int = 1,
    ):
        self.info = info
        self.scale = scale
        self.channels = channels
        self.pad_multiple = pad_multiple
        self.overlap = overlap
        self.preferred_tile = preferred_tile
        self.input_range = tuple(input_range)
        self.output_range = tuple(output_range)
        self.fixed_inputs = dict(fixed_inputs or {})  # e.g. a text embedding for every tile
        self.pre_upscale = pre_upscale  # >1: the network restores bicubic-upscaled input (MIRNet SR)

    def __call__(self, batch: np.ndarray, **extra: np.ndarray) -> np.ndarray:
        if self.pre_upscale > 1:
            batch = bicubic_upscale(batch, self.pre_upscale)
        lo, hi = self.input_range
        x = batch if (lo, hi) == (0.0, 1.0) else batch * (hi - lo) + lo
        inputs = {**self.fixed_inputs, **extra}
        y = self.forward(np.ascontiguousarray(x, dtype=np.float32), inputs)
        if not np.isfinite(y).all():  # e.g. an fp16 overflow: never write black patches silently
            raise FloatingPointError(f"{self.info.model} produced NaN or infinite values on {self.info.provider} "
                                     "(try --device cpu, or an fp32 export)")
        lo, hi = self.output_range
        return y if (lo, hi) == (0.0, 1.0) else (y - lo) / (hi - lo)

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError


def bicubic_upscale(batch: np.ndarray, factor: int) -> np.ndarray:
    """NCHW bicubic upscaling, for networks that restore an already-interpolated image."""
    import cv2

    n, c, h, w = batch.shape
    out = np.empty((n, c, h * factor, w * factor), np.float32)
    for i in range(n):
        for j in range(c):
            out[i, j] = cv2.resize(batch[i, j], (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)
    return out

"""Layers two families share (NAFNet's, in CGNet and InstructIR), written so that their ONNX
export runs fast: what ONNX Runtime's profiler showed, the exported graph avoids.

The rule for every family: eager PyTorch computes as the official code does (the golden
fixtures check it); under `exporting()` the same arithmetic may take the form ONNX Runtime
runs fastest (the export parity checks and the shipped-template test check it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def exporting() -> bool:
    return torch.compiler.is_exporting() or torch.compiler.is_compiling()


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of NCHW, per pixel (biased variance, NAFNet's eps 1e-6).

    Eager PyTorch computes it as the official code does. The export instead views the tensor
    channel-last and uses one LayerNormalization operator: ONNX Runtime fuses that, where the
    mean/variance ops over the channel axis ran about 6x slower (docs/benchmarks.md)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if exporting():
            y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
            return y.permute(0, 3, 1, 2)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        y = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight.view(1, -1, 1, 1) * y + self.bias.view(1, -1, 1, 1)


def channel_halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The two channel halves of NCHW, as x.chunk(2, 1). Sliced: chunk and split both
    export as a tensor sequence (SplitToSequence + SequenceAt, one more copy and 6-13% of
    CGNet's and InstructIR's time in ONNX Runtime), slices as two Slice operators."""
    half = x.shape[1] // 2
    return x[:, :half], x[:, half:]


def simple_gate(x: torch.Tensor) -> torch.Tensor:
    """NAFNet's SimpleGate: one channel half times the other."""
    first, second = channel_halves(x)
    return first * second

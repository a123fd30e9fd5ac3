"""Building blocks shared by the Global-restoration networks (VAEs and mappings) of
"Bringing Old Photos Back to Life" (Wan et al., CVPR 2020).

The layer order inside each nn.Sequential is kept exactly as released, because the
state-dict keys carry the positions (e.g. `conv_block.1`, `conv_block.5`): norms,
activations and pads occupy the index gaps.
"""

from __future__ import annotations

import torch
from torch import nn


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The Global nets' norm: instance norm without affine parameters or running stats."""
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "batch":
        return nn.BatchNorm2d(channels, affine=True)
    raise ValueError(f"unsupported norm {norm!r} (released checkpoints use 'instance')")


def pad_layer(padding_type: str, amount: int) -> list[nn.Module]:
    """The pad before a 3x3 conv, or nothing when the conv pads with zeros itself."""
    if padding_type == "reflect":
        return [nn.ReflectionPad2d(amount)]
    if padding_type == "replicate":
        return [nn.ReplicationPad2d(amount)]
    if padding_type == "zero":
        return []
    raise ValueError(f"unsupported padding_type {padding_type!r}")


class ResnetBlock(nn.Module):
    """pad + conv3 (dilated) + norm + ReLU + pad + conv3 + norm, plus the identity.

    Keys: `conv_block.1` and `conv_block.5` (with reflect padding; the index gaps are the
    pads, norms and the activation).
    """

    def __init__(self, dim: int, padding_type: str = "reflect", norm: str = "instance", dilation: int = 1):
        super().__init__()
        zero_pad = padding_type == "zero"
        layers: list[nn.Module] = []
        layers += pad_layer(padding_type, dilation)
        layers += [
            nn.Conv2d(dim, dim, 3, padding=dilation if zero_pad else 0, dilation=dilation),
            norm_layer(norm, dim),
            nn.ReLU(True),
        ]
        layers += pad_layer(padding_type, 1)
        layers += [nn.Conv2d(dim, dim, 3, padding=1 if zero_pad else 0), norm_layer(norm, dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


def conv_norm_relu(cin: int, cout: int, norm: str) -> list[nn.Module]:
    """3x3 conv (zero pad 1) + norm + ReLU: the mappings' width-changing layers."""
    return [nn.Conv2d(cin, cout, 3, 1, 1), norm_layer(norm, cout), nn.ReLU(True)]

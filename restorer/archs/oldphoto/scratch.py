"""The scratch detector of "Bringing Old Photos Back to Life" (Global/detection_models UNet).

Gray image in [-1, 1] (N x 1 x H x W, H and W multiples of 2**depth) -> one logit per
pixel; the pipeline takes sigmoid(logit) >= 0.4 as "scratch". Batch norms run on their
running statistics (eval mode), as the official detection script does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BlurPool(nn.Module):
    """Antialiased stride-2 downsampling: reflect pad 1, fixed [1,2,1]x[1,2,1]/16 depthwise filter.

    The filter is a state-dict buffer (`filt`, C x 1 x 3 x 3) in the released checkpoint.
    """

    def __init__(self, channels: int):
        super().__init__()
        taps = torch.tensor([1.0, 2.0, 1.0])
        kernel = taps[:, None] * taps[None, :]
        self.register_buffer("filt", (kernel / kernel.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ConvBlock(nn.Module):
    """`conv_num` x (reflect pad + 3x3 conv + BN + LeakyReLU 0.2); key prefix `block`."""

    def __init__(self, conv_num: int, cin: int, cout: int, padding: bool, batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(conv_num):
            layers += [nn.ReflectionPad2d(int(padding)), nn.Conv2d(cin, cout, 3)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.LeakyReLU(0.2, True))
            cin = cout
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UpBlock(nn.Module):
    """Upsample x2 (bilinear + reflect pad + 3x3 conv, or a 2x2 transposed conv), concatenate
    the skip, then a ConvBlock. (The official centre crop of the skip is a no-op for the
    sizes the network accepts, H and W multiples of 2**depth, and is left out: its symbolic
    sizes made the dynamic-shape ONNX export several times slower.)"""

    def __init__(self, conv_num: int, cin: int, cout: int, up_mode: str, padding: bool, batch_norm: bool):
        super().__init__()
        if up_mode == "upconv":
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        elif up_mode == "upsample":
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.ReflectionPad2d(1),
                nn.Conv2d(cin, cout, 3),
            )
        else:
            raise ValueError(f"unsupported up_mode {up_mode!r}")
        self.conv_block = ConvBlock(conv_num, cin, cout, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.up(x), skip], 1))


class ScratchUNet(nn.Module):
    """UNet(depth 4, wf 6, 2 convs per block, BN, BlurPool down, bilinear up), no tanh."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        depth: int = 4,
        conv_num: int = 2,
        wf: int = 6,
        padding: bool = True,
        batch_norm: bool = True,
        up_mode: str = "upsample",
        with_tanh: bool = False,
        sync_bn: bool = True,
        antialiasing: bool = True,
    ):
        super().__init__()
        del sync_bn  # no effect in the official code either: plain BatchNorm2d, no prefix
        self.first = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, 2**wf, 7), nn.LeakyReLU(0.2, True))
        channels = 2**wf
        self.down_path = nn.ModuleList()
        self.down_sample = nn.ModuleList()
        for i in range(depth):
            if antialiasing:
                down = [
                    nn.ReflectionPad2d(1),
                    nn.Conv2d(channels, channels, 3),
                    nn.BatchNorm2d(channels),
                    nn.LeakyReLU(0.2, True),
                    BlurPool(channels),
                ]
            else:
                down = [
                    nn.ReflectionPad2d(1),
                    nn.Conv2d(channels, channels, 4, stride=2),
                    nn.BatchNorm2d(channels),
                    nn.LeakyReLU(0.2, True),
                ]
            self.down_sample.append(nn.Sequential(*down))
            self.down_path.append(ConvBlock(conv_num, channels, 2 ** (wf + i + 1), padding, batch_norm))
            channels = 2 ** (wf + i + 1)
        self.up_path = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up_path.append(UpBlock(conv_num, channels, 2 ** (wf + i), up_mode, padding, batch_norm))
            channels = 2 ** (wf + i)
        last: list[nn.Module] = [nn.ReflectionPad2d(1), nn.Conv2d(channels, out_channels, 3)]
        if with_tanh:
            last.append(nn.Tanh())
        self.last = nn.Sequential(*last)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - ONNX input name
        """Gray N x 1 x H x W in [-1, 1] -> logits N x 1 x H x W."""
        x = self.first(input)
        skips = []
        for down, block in zip(self.down_sample, self.down_path):
            skips.append(x)
            x = block(down(x))
        for up, skip in zip(self.up_path, reversed(skips)):
            x = up(x, skip)
        return self.last(x)

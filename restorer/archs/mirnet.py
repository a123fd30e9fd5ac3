"""MIRNet (v1): multi-scale residual network for real image restoration and enhancement.

Zamir et al., "Learning Enriched Features for Real Image Restoration and Enhancement"
(ECCV 2020), github.com/swz30/MIRNet. The official code and weights carry an academic,
non-commercial licence.

Written from the paper and the published facts (tensor names and shapes of the released
checkpoints; see tests/fixtures/mirnet/). Facts that decide the numbers:
- no conv has a bias; the output is the input plus a predicted residual, unclamped;
- a multi-scale residual block (MSRB) keeps `height` streams (n, 2n, 4n channels at full,
  1/2, 1/4 resolution). The first column of dual-attention units (DAU) runs stream j on the
  down-sampled stream j-1; every later column fuses all streams resampled to each stream's
  size with selective kernel feature fusion (SKFF), then runs a DAU. All streams are then
  brought to full size and fused with stream 0's SKFF (the same module as in the mesh);
- every column of one stream is the SAME DAU (weights reused), and every DAU in the
  network shares one single-slope PReLU. Checkpoints store each alias as its own key with
  equal values; this module reuses the modules the same way;
- DAU spatial attention compresses channels to [max, mean] (in that order), 5x5 conv,
  sigmoid; channel attention is GAP, 1x1 to C/8, ReLU, 1x1, sigmoid;
- the down step blurs with a fixed [1,2,1]x[1,2,1]/16 filter, reflect-padded, stride 2
  (persistent `filt` buffers); the up step uses a 3x3 stride-2 transposed conv
  (output_padding 1) and bilinear x2 with align_corners=False.

H and W must be multiples of 2**(height-1) (4 for the released models); the official scripts
do no padding, so the catalog asks the tiling engine for reflect padding to 4.
The SKFF and channel attention pool globally: tiles are not equivalent to the whole image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def conv(cin: int, cout: int, kernel: int, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)


class SKFF(nn.Module):
    """Selective kernel feature fusion of `height` equally sized inputs."""

    def __init__(self, channels: int, height: int = 3, reduction: int = 8, bias: bool = False):
        super().__init__()
        self.height = height
        d = max(int(channels / reduction), 4)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, d, 1, bias=bias), nn.PReLU())
        self.fcs = nn.ModuleList(nn.Conv2d(d, channels, 1, bias=bias) for _ in range(height))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack(feats, dim=1)  # (B, height, C, H, W)
        z = self.conv_du(stacked.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        weights = torch.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1), dim=1)
        return (stacked * weights).sum(dim=1)


class SpatialConv(nn.Module):
    """Holds the 5x5 conv as `spatial.conv` (checkpoint naming)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 5, padding=2, bias=False)


class SpatialAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial = SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial.conv(pooled))


class ChannelAttention(nn.Module):
    def __init__(self, channels: int, reduction: int = 8, bias: bool = False):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1, bias=bias),
            nn.ReLU(),
            nn.Conv2d(channels // reduction, channels, 1, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(x.mean(dim=(2, 3), keepdim=True))


class DAU(nn.Module):
    """Dual attention unit; `act` is the network-wide shared PReLU."""

    def __init__(self, channels: int, act: nn.Module, bias: bool = False):
        super().__init__()
        self.body = nn.Sequential(conv(channels, channels, 3, bias), act, conv(channels, channels, 3, bias))
        self.SA = SpatialAttention()
        self.CA = ChannelAttention(channels, 8, bias)
        self.conv1x1 = nn.Conv2d(2 * channels, channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        return self.conv1x1(torch.cat([self.SA(res), self.CA(res)], dim=1)) + x


class Blur(nn.Module):
    """Anti-aliased stride-2 down-sampling: fixed 3x3 binomial filter, reflect padding."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = a[:, None] * a[None, :]
        self.register_buffer("filt", (filt / filt.sum())[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ResidualDownSample(nn.Module):
    def __init__(self, c: int, bias: bool = False):
        super().__init__()
        self.top = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=bias),
            nn.PReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=bias),
            nn.PReLU(),
            Blur(c),
            nn.Conv2d(c, 2 * c, 1, bias=bias),
        )
        self.bot = nn.Sequential(Blur(c), nn.Conv2d(c, 2 * c, 1, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class ResidualUpSample(nn.Module):
    def __init__(self, c: int, bias: bool = False):
        super().__init__()
        self.top = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=bias),
            nn.PReLU(),
            nn.ConvTranspose2d(c, c, 3, stride=2, padding=1, output_padding=1, bias=bias),
            nn.PReLU(),
            nn.Conv2d(c, c // 2, 1, bias=bias),
        )
        self.bot = nn.Sequential(Upsample2x(), nn.Conv2d(c, c // 2, 1, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.top(x) + self.bot(x)


class Resample(nn.Module):
    """log2(factor) residual down (channels x2 each) or up (channels /2 each) steps."""

    def __init__(self, c: int, factor: int, step: type[nn.Module], stride: int):
        super().__init__()
        layers = []
        for _ in range(int(math.log2(factor))):
            layers.append(step(c))
            c = int(c * stride) if step is ResidualDownSample else int(c // stride)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MSRB(nn.Module):
    def __init__(self, n_feat: int, height: int, width: int, stride: int, bias: bool, act: nn.Module):
        super().__init__()
        self.height, self.width = height, width
        feats = [int(n_feat * stride**i) for i in range(height)]
        # one DAU per stream, reused by every column (the checkpoint lists it once per column)
        self.blocks = nn.ModuleList(nn.ModuleList([DAU(f, act, bias)] * width) for f in feats)
        self.last_up = nn.ModuleDict(
            {str(i): Resample(feats[i], 2**i, ResidualUpSample, stride) for i in range(1, height)}
        )
        scales = [2**i for i in range(height - 1, 0, -1)]  # e.g. [4, 2]
        self.down = nn.ModuleDict()
        for i, f in enumerate(feats):
            for s in scales[i:]:
                self.down[f"{f}_{s}"] = Resample(f, s, ResidualDownSample, stride)
        self.up = nn.ModuleDict()
        for i, f in enumerate(reversed(feats)):
            for s in scales[i:]:
                self.up[f"{f}_{s}"] = Resample(f, s, ResidualUpSample, stride)
        self.conv_out = nn.Conv2d(n_feat, n_feat, 3, padding=1, bias=bias)
        self.selective_kernel = nn.ModuleList(SKFF(f, height) for f in feats)

    def resample(self, x: torch.Tensor, to: int, frm: int) -> torch.Tensor:
        """Bring stream `frm` to the size and channels of stream `to`."""
        if to == frm:
            return x
        key = f"{x.shape[1]}_{2 ** abs(to - frm)}"
        return self.up[key](x) if to < frm else self.down[key](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        streams = []
        s = x
        for j in range(self.height):
            if j > 0:
                s = self.down[f"{s.shape[1]}_2"](s)
            s = self.blocks[j][0](s)
            streams.append(s)
        for col in range(1, self.width):
            fused = [
                self.selective_kernel[j]([self.resample(streams[k], j, k) for k in range(self.height)])
                for j in range(self.height)
            ]
            streams = [self.blocks[j][col](fused[j]) for j in range(self.height)]
        full = [streams[0]] + [self.last_up[str(k)](streams[k]) for k in range(1, self.height)]
        return self.conv_out(self.selective_kernel[0](full)) + x


class RRG(nn.Module):
    def __init__(self, n_feat: int, n_MSRB: int, height: int, width: int, stride: int, bias: bool, act: nn.Module):
        super().__init__()
        layers: list[nn.Module] = [MSRB(n_feat, height, width, stride, bias, act) for _ in range(n_MSRB)]
        layers.append(conv(n_feat, n_feat, 3))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class MIRNet(nn.Module):
    """NCHW RGB in [0, 1] (H, W multiples of 2**(height-1)) -> same size, unclamped."""

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        n_feat: int = 64,
        kernel_size: int = 3,
        stride: int = 2,
        n_RRG: int = 3,
        n_MSRB: int = 2,
        height: int = 3,
        width: int = 2,
        bias: bool = False,
    ):
        super().__init__()
        if stride != 2:
            raise ValueError("MIRNet streams halve the resolution per level: stride must be 2")
        # one PReLU for every DAU in the network, as in the released checkpoints
        shared_act = nn.PReLU()
        self.conv_in = nn.Conv2d(in_channels, n_feat, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)
        self.body = nn.Sequential(
            *[RRG(n_feat, n_MSRB, height, width, stride, bias, shared_act) for _ in range(n_RRG)]
        )
        self.conv_out = nn.Conv2d(n_feat, out_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=bias)
        self.pad_multiple = 2 ** (height - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.body(self.conv_in(x))) + x

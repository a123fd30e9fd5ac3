"""MIRNet-v2: the faster multi-scale residual network.

Zamir et al., "Learning Enriched Features for Fast Image Restoration and Enhancement"
(TPAMI 2022), github.com/swz30/MIRNetv2. The official code and weights carry an academic,
non-commercial licence.

Written from the paper and the published facts (tensor names and shapes of the released
checkpoints; see tests/fixtures/mirnet/v2/). Facts that decide the numbers:
- no conv has a bias; conv_in -> 4 residual groups -> conv_out, plus the input (for
  task="defocus_deblurring" the shallow features are added before conv_out instead);
- the 4 groups are fixed, with grouped 3x3 convs (groups 1, 2, 4, 4); `n_RRG`, `height`,
  `width` and `scale` are accepted (they are in the option files) but do not change the net;
- a multi-resolution block (MRB) has 3 streams with n, int(1.5n), int(2.25n) channels; each
  stream's residual context block (RCB) and both 2-input SKFFs run twice with the same
  weights, while each pass has its own up-sampling modules;
- down = 2x2 average pool (ceil mode, padding not counted) then 1x1; up = 1x1 THEN
  bilinear x2 with align_corners=False; activations are LeakyReLU(0.2);
- the RCB's context block takes a softmax over all H*W positions: a whole-image statistic,
  so tiles are not equivalent to the whole image.

The official tests reflect-pad right/bottom to a multiple of 4 and crop back; that is the
tiling engine's job here (catalog pad_multiple = 4). The SR checkpoints keep the
resolution: the input must already be interpolated to the output size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restorer.archs.layers import exporting

SLOPE = 0.2  # LeakyReLU negative slope everywhere


class SKFF(nn.Module):
    def __init__(self, channels: int, height: int = 2, reduction: int = 8, bias: bool = False):
        super().__init__()
        d = max(int(channels / reduction), 4)
        self.conv_du = nn.Sequential(nn.Conv2d(channels, d, 1, bias=bias), nn.LeakyReLU(SLOPE))
        self.fcs = nn.ModuleList(nn.Conv2d(d, channels, 1, bias=bias) for _ in range(height))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if exporting():
            # The same sums without stacking the full-size maps into one 5-D tensor: ONNX Runtime
            # spent 14% of the network's time reducing over that stack's second axis.
            z = self.conv_du(sum(feats[1:], feats[0]).mean(dim=(2, 3), keepdim=True))
            weights = torch.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1), dim=1)
            return sum((f * weights[:, i] for i, f in enumerate(feats[1:], 1)), feats[0] * weights[:, 0])
        stacked = torch.stack(feats, dim=1)  # (B, height, C, H, W)
        z = self.conv_du(stacked.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        weights = torch.softmax(torch.stack([fc(z) for fc in self.fcs], dim=1), dim=1)
        return (stacked * weights).sum(dim=1)


class ContextBlock(nn.Module):
    """Global context: softmax-weighted sum over all positions, transformed, added back."""

    def __init__(self, channels: int, bias: bool = False):
        super().__init__()
        self.conv_mask = nn.Conv2d(channels, 1, 1, bias=bias)
        self.channel_add_conv = nn.Sequential(
            nn.Conv2d(channels, channels, 1, bias=bias),
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(channels, channels, 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        weights = torch.softmax(self.conv_mask(x).flatten(2), dim=2)  # (B, 1, HW)
        context = torch.matmul(x.flatten(2).unsqueeze(1), weights.unsqueeze(3))  # (B, 1, C, 1)
        return x + self.channel_add_conv(context.view(b, c, 1, 1))


class RCB(nn.Module):
    def __init__(self, channels: int, bias: bool = False, groups: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias, groups=groups),
            nn.LeakyReLU(SLOPE),
            nn.Conv2d(channels, channels, 3, padding=1, bias=bias, groups=groups),
        )
        self.gcnet = ContextBlock(channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.gcnet(self.body(x)), SLOPE) + x


class Down(nn.Module):
    def __init__(self, channels: int, chan_factor: float, bias: bool = False):
        super().__init__()
        self.bot = nn.Sequential(
            nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
            nn.Conv2d(channels, int(channels * chan_factor), 1, bias=bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bot(x)


class Upsample2x(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class Up(nn.Module):
    def __init__(self, channels: int, chan_factor: float, bias: bool = False):
        super().__init__()
        self.bot = nn.Sequential(nn.Conv2d(channels, int(channels // chan_factor), 1, bias=bias), Upsample2x())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bot(x)


class Resample(nn.Module):
    """One x2 step wrapped as `body.0` (the checkpoint naming of Down/UpSample with factor 2)."""

    def __init__(self, step: nn.Module):
        super().__init__()
        self.body = nn.Sequential(step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MRB(nn.Module):
    def __init__(self, n_feat: int, chan_factor: float, bias: bool, groups: int):
        super().__init__()
        top, mid, bot = (int(n_feat * chan_factor**i) for i in range(3))
        self.dau_top = RCB(top, bias=bias, groups=groups)
        self.dau_mid = RCB(mid, bias=bias, groups=groups)
        self.dau_bot = RCB(bot, bias=bias, groups=groups)
        self.down2 = Resample(Down(top, chan_factor))
        self.down4 = nn.Sequential(Resample(Down(top, chan_factor)), Resample(Down(mid, chan_factor)))
        self.up21_1 = Resample(Up(mid, chan_factor))
        self.up21_2 = Resample(Up(mid, chan_factor))
        self.up32_1 = Resample(Up(bot, chan_factor))
        self.up32_2 = Resample(Up(bot, chan_factor))
        self.conv_out = nn.Conv2d(n_feat, n_feat, 1, bias=bias)
        self.skff_top = SKFF(top, 2)
        self.skff_mid = SKFF(mid, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_top, x_mid, x_bot = x, self.down2(x), self.down4(x)
        for up32, up21 in ((self.up32_1, self.up21_1), (self.up32_2, self.up21_2)):
            x_top = self.dau_top(x_top)
            x_mid = self.dau_mid(x_mid)
            x_bot = self.dau_bot(x_bot)
            x_mid = self.skff_mid([x_mid, up32(x_bot)])
            x_top = self.skff_top([x_top, up21(x_mid)])
        return self.conv_out(x_top) + x


class RRG(nn.Module):
    def __init__(self, n_feat: int, n_MRB: int, chan_factor: float, bias: bool, groups: int):
        super().__init__()
        layers: list[nn.Module] = [MRB(n_feat, chan_factor, bias, groups) for _ in range(n_MRB)]
        layers.append(nn.Conv2d(n_feat, n_feat, 3, padding=1, bias=bias))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class MIRNetV2(nn.Module):
    """NCHW in [0, 1] (3 channels, or 6 = [left RGB, right RGB] for defocus deblurring;
    H, W multiples of 4) -> NCHW RGB of the same size, unclamped."""

    GROUPS = (1, 2, 4, 4)  # the official net hard-codes 4 groups with these conv groups

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        n_feat: int = 80,
        chan_factor: float = 1.5,
        n_RRG: int = 4,
        n_MRB: int = 2,
        height: int = 3,
        width: int = 2,
        scale: int = 1,
        bias: bool = False,
        task: str | None = None,
    ):
        super().__init__()
        self.task = task
        self.conv_in = nn.Conv2d(inp_channels, n_feat, 3, padding=1, bias=bias)
        self.body = nn.Sequential(*[RRG(n_feat, n_MRB, chan_factor, bias, g) for g in self.GROUPS])
        self.conv_out = nn.Conv2d(n_feat, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.conv_in(x)
        deep = self.body(shallow)
        if self.task == "defocus_deblurring":
            return self.conv_out(deep + shallow)
        return self.conv_out(deep) + x

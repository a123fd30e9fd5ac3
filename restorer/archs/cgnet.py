"""CGNet / CascadedGaze: a NAFNet-style U-Net whose encoder blocks add a Global Context
Extractor (GCE).

Ghasemabadi et al., "CascadedGaze: Efficiency in Global Context Extraction for Image
Restoration" (TMLR 2024), github.com/Ascend-Research/CascadedGaze.

Written from the paper and the published facts (tensor names and shapes of the released
SIDD checkpoint and of the two announced-but-unreleased models; see tests/fixtures/cgnet/).
Facts that decide the numbers:
- LayerNorm2d normalises over channels per pixel, biased variance, eps 1e-6;
- the GCE block's first half uses exact (erf) GELU, not a SimpleGate; the two channel halves
  are ADDED and fed to a cascade of depthwise-then-pointwise convs (no padding, no bias, GELU
  after each); every cascade output is nearest-upsampled (legacy `nearest`, floor indexing)
  back to the block size and concatenated after the full 2c tensor;
- the network zero-pads right/bottom to a multiple of 2**levels inside forward, adds the
  (padded) input as a global residual and crops back. Padding stays here, not in the tiling
  engine: reflect padding instead of zeros changes the result.

Three classes:
- `CascadedGaze`: the released SIDD denoiser; every encoder block is a GCE block.
- `GCENetMHLocal`: the GoPro multi-head deblurring net (weights not released): only the first
  block of each encoder level is a GCE block, the ending conv predicts n_heads images, and
  every global average pool is replaced by a local box average whose kernel is 1.5x the
  feature size at `train_size` (Chu et al., "Revisiting Global Statistics Aggregation").
- `CascadedGazeNetBiggerLocal`: the Gaussian colour denoising net (weights not released):
  local pooling, a different GCE cascade per level and a residual clamped to [-1, 1]. No
  golden output exists for it; its forward follows the conformance notes and is checked by
  tensor names and shapes only.

The global average pools (channel attention) and the GCE cascade see the whole input:
tiled inference is not equivalent to whole-image inference (see bench/bench_cgnet_mirnet.py).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from restorer.archs.layers import LayerNorm2d, channel_halves, exporting, simple_gate


class GlobalPool(nn.Module):
    """Global average pool to 1x1 (the released model's channel attention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class LocalPool(nn.Module):
    """Box average of fixed kernel, stride 1, via an integral image; the result is
    replicate-padded back to the input size. When the kernel covers the whole map in both
    directions it is the global mean (broadcast over the map).

    Under export the covering case takes the integral-image path too (the kernel is clipped
    with sym_min, not by a Python branch), so an ONNX graph traced at one size stays valid at
    others. The running sums lose precision in fp16 on large maps: keep this net in fp32.
    """

    def __init__(self, kernel: tuple[int, int]):
        super().__init__()
        self.kernel = kernel

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if not exporting() and self.kernel[0] >= h and self.kernel[1] >= w:
            # the official fallback; exact mean rather than an integral-image difference
            return x.mean(dim=(2, 3), keepdim=True)
        k1 = torch.sym_min(h, self.kernel[0])
        k2 = torch.sym_min(w, self.kernel[1])
        s = F.pad(x.cumsum(dim=-1).cumsum(dim=-2), (1, 0, 1, 0))
        out_h = h - k1 + 1
        out_w = w - k2 + 1
        box = (
            s[:, :, k1 : k1 + out_h, k2 : k2 + out_w]
            + s[:, :, :out_h, :out_w]
            - s[:, :, :out_h, k2 : k2 + out_w]
            - s[:, :, k1 : k1 + out_h, :out_w]
        ) / (k1 * k2)
        pad = ((k2 - 1) // 2, k2 // 2, (k1 - 1) // 2, k1 // 2)
        return F.pad(box, pad, mode="replicate")


class DepthwiseSeparableConv(nn.Module):
    """Depthwise conv (no padding) then pointwise conv, no bias. Registration order
    (pointwise first) matches the checkpoint's tensor order; the call order is the reverse."""

    def __init__(self, channels: int, kernel: int, stride: int):
        super().__init__()
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.depthwise = nn.Conv2d(channels, channels, kernel, stride=stride, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class GlobalContextExtractor(nn.Module):
    """A cascade of strided depthwise-separable convs; returns every stage's output."""

    def __init__(self, channels: int, kernels: Sequence[int], strides: Sequence[int]):
        super().__init__()
        self.depthwise_separable_convs = nn.ModuleList(
            DepthwiseSeparableConv(channels, k, s) for k, s in zip(kernels, strides)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for conv in self.depthwise_separable_convs:
            x = F.gelu(conv(x))
            outputs.append(x)
        return outputs


def _attention(channels: int, pool: nn.Module) -> nn.Sequential:
    # index 0 is the pool (no tensors), index 1 the 1x1 conv: `sca.1.weight` in checkpoints
    return nn.Sequential(pool, nn.Conv2d(channels, channels, 1, bias=True))


class CascadedGazeBlock(nn.Module):
    def __init__(self, c: int, kernels: Sequence[int], strides: Sequence[int], pool: nn.Module):
        super().__init__()
        dw = 2 * c
        fused = dw + c * len(kernels)  # the 2c tensor plus one c-channel map per GCE stage
        self.conv1 = nn.Conv2d(c, dw, 1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw, bias=True)
        self.GCE = GlobalContextExtractor(c, kernels, strides)
        self.project_out = nn.Conv2d(fused, c, 1, bias=True)
        self.sca = _attention(fused, pool)
        self.conv4 = nn.Conv2d(c, 2 * c, 1, bias=True)
        self.conv5 = nn.Conv2d(c, c, 1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        size = inp.shape[-2:]
        x = F.gelu(self.conv2(self.conv1(self.norm1(inp))))
        first, second = channel_halves(x)
        stages = self.GCE(first + second)
        x = torch.cat([x] + [F.interpolate(s, size=size, mode="nearest") for s in stages], dim=1)
        x = self.project_out(self.sca(x) * x)
        y = inp + x * self.beta
        x = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFBlock(nn.Module):
    """NAFNet block: SimpleGate + simplified channel attention, then a SimpleGate FFN."""

    def __init__(self, c: int, pool: nn.Module):
        super().__init__()
        dw = 2 * c
        self.conv1 = nn.Conv2d(c, dw, 1, bias=True)
        self.conv2 = nn.Conv2d(dw, dw, 3, padding=1, groups=dw, bias=True)
        self.conv3 = nn.Conv2d(c, c, 1, bias=True)
        self.sca = _attention(c, pool)
        self.conv4 = nn.Conv2d(c, 2 * c, 1, bias=True)
        self.conv5 = nn.Conv2d(c, c, 1, bias=True)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = simple_gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


# GCE cascade (kernels, strides) for a level's GCE_CONVS_nums entry
SIDD_GCE = {3: ((3, 3, 5), (2, 3, 4)), 2: ((3, 3), (2, 3))}
GAUSSIAN_GCE = {4: ((3, 3, 5), (2, 3, 4)), 3: ((3, 3), (2, 1))}


def _gce_layout(table: dict, count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    # the official code treats every count other than the "big" one as the 2-conv cascade
    big = max(table)
    return table[big] if count == big else table[min(table)]


def _gce_min_size(kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Smallest feature side for which every stage of the cascade has a valid input."""
    side = 1
    while True:
        s, ok = side, True
        for k, st in zip(kernels, strides):
            if s < k:
                ok = False
                break
            s = (s - k) // st + 1
        if ok:
            return side
        side += 1


class _CascadedGazeUNet(nn.Module):
    """The shared U-Net. `make_pool(level)` builds the pool for a block at that level
    (feature size = padded input / 2**level); `gce_blocks(num)` says how many leading blocks
    of an encoder level are GCE blocks."""

    def __init__(
        self,
        img_channel: int,
        width: int,
        middle_blk_num: int,
        enc_blk_nums: Sequence[int],
        dec_blk_nums: Sequence[int],
        GCE_CONVS_nums: Sequence[int],
        gce_table: dict,
        gce_blocks: Callable[[int], int],
        make_pool: Callable[[int], nn.Module],
        out_channels: int,
    ):
        super().__init__()
        if len(GCE_CONVS_nums) < len(enc_blk_nums):
            raise ValueError("GCE_CONVS_nums needs one entry per encoder level")
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1, bias=True)
        self.ending = nn.Conv2d(width, out_channels, 3, padding=1, bias=True)
        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()
        levels = len(enc_blk_nums)
        self.padder_size = 2**levels
        min_side = 1
        chan = width
        for level, num in enumerate(enc_blk_nums):
            kernels, strides = _gce_layout(gce_table, GCE_CONVS_nums[level])
            n_gce = gce_blocks(num)
            blocks = [
                CascadedGazeBlock(chan, kernels, strides, make_pool(level))
                if i < n_gce
                else NAFBlock(chan, make_pool(level))
                for i in range(num)
            ]
            if n_gce:
                min_side = max(min_side, _gce_min_size(kernels, strides) * 2**level)
            self.encoders.append(nn.Sequential(*blocks))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, stride=2, bias=True))
            chan *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(chan, make_pool(levels)) for _ in range(middle_blk_num)])
        for i, num in enumerate(dec_blk_nums):
            self.ups.append(nn.Sequential(nn.Conv2d(chan, 2 * chan, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            level = levels - 1 - i
            self.decoders.append(nn.Sequential(*[NAFBlock(chan, make_pool(level)) for _ in range(num)]))
        # the padded input must be at least this big per side, or a GCE conv has no input
        self.min_size = -(-min_side // self.padder_size) * self.padder_size

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        return F.pad(x, (0, (-w) % self.padder_size, 0, (-h) % self.padder_size))

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intro(x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)
        return self.ending(x)


class CascadedGaze(_CascadedGazeUNet):
    """The released CGNet (SIDD real denoising): NCHW RGB in [0, 1] -> same size, unclamped.

    The padded input must be at least `min_size` pixels per side (64 with the released
    GCE_CONVS_nums [3, 3, 2, 2]), as in the official code.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        GCE_CONVS_nums: Sequence[int] = (),
    ):
        super().__init__(
            img_channel,
            width,
            middle_blk_num,
            enc_blk_nums,
            dec_blk_nums,
            GCE_CONVS_nums,
            gce_table=SIDD_GCE,
            gce_blocks=lambda num: num,
            make_pool=lambda level: GlobalPool(),
            out_channels=img_channel,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.pad(x)
        return (self.body(x) + x)[:, :, :h, :w]


def _local_pool_factory(train_size: Sequence[int], padder_size: int, fast_imp: bool):
    """Kernels as the official conversion computes them on its dummy forward at train_size:
    kernel = feature size at train_size * int(1.5 * train side) // train side."""
    if fast_imp:
        raise ValueError("fast_imp=True (the approximate strided box average) is not implemented")
    th, tw = int(train_size[-2]), int(train_size[-1])
    ph, pw = -(-th // padder_size) * padder_size, -(-tw // padder_size) * padder_size
    base_h, base_w = int(th * 1.5), int(tw * 1.5)

    def make(level: int) -> LocalPool:
        return LocalPool(((ph >> level) * base_h // th, (pw >> level) * base_w // tw))

    return make


class GCENetMHLocal(_CascadedGazeUNet):
    """Multi-head CGNet for motion deblurring (GoPro; weights announced, not released).

    Output: (B, n_out, 3, H, W), n_out = n_heads or, with combinate_heads, the
    n_heads*(n_heads+1)/2 pairwise means (h_i + h_j)/2 for i = 0.., j = 0..i, each plus the
    input. The official forward only accepts H and W that are multiples of 16 (its head
    reshape uses the unpadded size); here the heads are split at the padded size and cropped,
    which is identical there and also works elsewhere.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        n_heads: int = 4,
        combinate_heads: bool = False,
        GCE_CONVS_nums: Sequence[int] = (3, 3, 2, 2),
        train_size: Sequence[int] = (1, 3, 256, 256),
        fast_imp: bool = False,
    ):
        make_pool = _local_pool_factory(train_size, 2 ** len(enc_blk_nums), fast_imp)
        super().__init__(
            img_channel,
            width,
            middle_blk_num,
            enc_blk_nums,
            dec_blk_nums,
            GCE_CONVS_nums,
            gce_table=SIDD_GCE,
            gce_blocks=lambda num: 1,
            make_pool=make_pool,
            out_channels=img_channel * n_heads,
        )
        self.img_channel = img_channel
        self.n_heads = n_heads
        self.combinate_heads = combinate_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h, w = x.shape[-2:]
        x = self.pad(x)
        heads = self.body(x)
        heads = heads.view(b, self.n_heads, self.img_channel, x.shape[-2], x.shape[-1])
        if self.combinate_heads:
            pairs = [
                (heads[:, i] + heads[:, j]) / 2 for i in range(self.n_heads) for j in range(i + 1)
            ]
            heads = torch.stack(pairs, dim=1)
        return (heads + x.unsqueeze(1))[..., :h, :w]


class CascadedGazeNetBiggerLocal(_CascadedGazeUNet):
    """CGNet for synthetic Gaussian colour denoising (sigma 15/25/50; weights announced, not
    released). Local pooling as GCENetMHLocal; GCE count 4 -> 3-stage cascade, other counts
    -> 2-stage cascade with strides (2, 1); the predicted residual is clamped to [-1, 1].

    Checked against the manifest's names and shapes only: no golden output exists.
    """

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: Sequence[int] = (),
        dec_blk_nums: Sequence[int] = (),
        GCE_CONVS_nums: Sequence[int] = (),
        train_size: Sequence[int] = (1, 3, 256, 256),
        fast_imp: bool = False,
    ):
        make_pool = _local_pool_factory(train_size, 2 ** len(enc_blk_nums), fast_imp)
        super().__init__(
            img_channel,
            width,
            middle_blk_num,
            enc_blk_nums,
            dec_blk_nums,
            GCE_CONVS_nums,
            gce_table=GAUSSIAN_GCE,
            gce_blocks=lambda num: num,
            make_pool=make_pool,
            out_channels=img_channel,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.pad(x)
        return (self.body(x).clamp(-1.0, 1.0) + x)[:, :, :h, :w]

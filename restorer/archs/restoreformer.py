"""RestoreFormer and RestoreFormer++: blind face restoration by cross-attention between the
degraded face's features (queries) and high-quality codebook features (keys and values).

Wang et al., "RestoreFormer: High-Quality Blind Face Restoration from Undegraded Key-Value
Pairs" (CVPR 2022), github.com/wzhouxiff/RestoreFormer; Wang et al., "RestoreFormer++:
Towards Real-World Blind Face Restoration from Undegraded Key-Value Pairs" (TPAMI 2023),
github.com/wzhouxiff/RestoreFormerPlusPlus (which serves both networks' inference).

Written from the papers and the published facts (tensor names and shapes of the released
checkpoints, the official hyperparameters and test code; see tests/fixtures/restoreformer/).
Both networks are a VQGAN-style encoder / vector quantiser / decoder (taming-transformers
layout); what decides the numbers:
- the input is an aligned 512x512 RGB face in [-1, 1] ((img / 255 - 0.5) / 0.5); the output
  is the first element of the official tuple, in [-1, 1] (the test code clamps it there);
- GroupNorm has 32 groups and eps 1e-6, the nonlinearity is swish (x * sigmoid(x)); the
  encoder downsamples by zero-padding right/bottom by 1 and a stride-2 3x3 conv, the decoder
  upsamples by nearest 2x and a 3x3 conv;
- attention sits where the *nominal* resolution (the `resolution` hyperparameter, halved per
  level, not the input's size) is in `attn_resolutions`. In the encoder it is self-attention;
  in the decoder it is cross-attention: the query comes from an encoder feature (norm2), keys
  and values from the decoder's own quantised stream (norm1), the result is added to the
  decoder stream. The decoder's middle attention queries the encoder's middle output; at the
  lowest level it queries the output of the encoder's first middle block; at any other level
  the encoder level's output before its downsampling. Queries are scaled by
  int(C / head_size) ** -0.5 before the product;
- RestoreFormer++ (`ex_multi_scale_num` = 1) adds decoder cross-attention one level up:
  each unit turns the decoder's attn_resolutions into [first, last * 2], so (16,) becomes
  [16, 32]. RestoreFormer uses head_size 8 and none; RestoreFormer++ head_size 4;
- the quantiser picks, per latent pixel, the code with the smallest |z|^2 + |e|^2 - 2 z.e
  (first index on ties) and keeps the straight-through form z + (e - z) of the official code
  (the same value up to float rounding, kept for it).

Hyperparameters keep the official names of VQVAEGANMultiHeadTransformer. `dropout` and the
training flags `fix_decoder`, `fix_codebook`, `fix_encoder` are accepted and have no effect at
inference. `double_z` must be False (the official network cannot run with it: the quantiser's
1x1 conv takes `z_channels`).

Deviations from the official code (none changes the output beyond float rounding):
- forward returns the image only (official: image, codebook loss, code statistics, features);
- the code lookup is argmin + gather instead of a one-hot matrix product;
- a configuration the official forward would fail on (decoder attention at the lowest level
  with `enable_mid` off: the feature it queries does not exist) is refused at construction.

H and W must be multiples of 2 ** (len(ch_mult) - 1) (32 for the releases); the catalog runs
the released networks on fixed 512x512 tiles, the size they were trained and tested at. The
attention and GroupNorm statistics span the whole input.

Licences: both official repositories' code is Apache-2.0; the README of RestoreFormer++ states
no separate licence for the weights (released as assets of the same GitHub repository); they
were trained on FFHQ (a dataset NVIDIA publishes under CC BY-NC-SA 4.0). This module is this
project's own code.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

GROUPS = 32
NORM_EPS = 1e-6


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _conv3(cin: int, cout: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=padding)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus the input (through a 1x1 conv when the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = _norm(cin)
        self.conv1 = _conv3(cin, cout)
        self.norm2 = _norm(cout)
        self.conv2 = _conv3(cout, cout)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class MultiHeadAttnBlock(nn.Module):
    """Multi-head attention over all pixels with 1x1-conv projections. Without `query` it is
    self-attention; with it, queries come from `query` (its own norm2) and keys and values
    from `x` (norm1). The projected result is added to `x`."""

    def __init__(self, channels: int, head_size: int):
        super().__init__()
        if channels % head_size:
            raise ValueError(f"{channels} channels do not split into {head_size} heads")
        self.heads = head_size
        self.scale = int(channels // head_size) ** -0.5
        self.norm1 = _norm(channels)
        self.norm2 = _norm(channels)  # used for the query of cross-attention only
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        kv = self.norm1(x)
        qs = kv if query is None else self.norm2(query)
        b, c, h, w = qs.shape
        heads = self.heads
        q = self.q(qs).reshape(b, heads, c // heads, h * w).transpose(2, 3) * self.scale  # b, heads, hw, d
        k = self.k(kv).reshape(b, heads, c // heads, -1)  # b, heads, d, hw'
        v = self.v(kv).reshape(b, heads, c // heads, -1).transpose(2, 3)  # b, heads, hw', d
        attn = torch.softmax(q @ k, dim=-1)
        out = (attn @ v).transpose(2, 3).reshape(b, c, h, w)  # channel = head * d + i
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = _conv3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution: ResnetBlocks, each followed by an attention block where the level
    has attention, and the resampling to the next level."""

    def __init__(self, cin: int, cout: int, blocks: int, attention: bool, head_size: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout) for i in range(blocks))
        self.attn = nn.ModuleList(MultiHeadAttnBlock(cout, head_size) for _ in range(blocks if attention else 0))

    def forward(self, x: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x, query)
        return x


class Middle(nn.Module):
    def __init__(self, channels: int, head_size: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = MultiHeadAttnBlock(channels, head_size)
        self.block_2 = ResnetBlock(channels, channels)


class Encoder(nn.Module):
    """conv_in, levels (self-attention at the attention resolutions), middle, norm-swish-conv.
    Returns the latent and the features the decoder's cross-attention queries: per level
    (index = level; the lowest level's is the first middle block's output) and the middle's."""

    def __init__(self, ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                 enable_mid, head_size):
        super().__init__()
        levels = len(ch_mult)
        self.enable_mid = enable_mid
        self.conv_in = _conv3(in_channels, ch)
        self.down = nn.ModuleList()
        res, cin = resolution, ch
        for i, mult in enumerate(ch_mult):
            level = Level(cin, ch * mult, num_res_blocks, res in attn_resolutions, head_size)
            cin = ch * mult
            if i != levels - 1:
                level.downsample = Downsample(cin)
                res //= 2
            self.down.append(level)
        if enable_mid:
            self.mid = Middle(cin, head_size)
        self.norm_out = _norm(cin)
        self.conv_out = _conv3(cin, z_channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor | None]:
        h = self.conv_in(x)
        features = []
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                features.append(h)
                h = level.downsample(h)
        middle = None
        if self.enable_mid:
            h = self.mid.block_1(h)
            features.append(h)
            h = self.mid.block_2(self.mid.attn_1(h))
            middle = h
        return self.conv_out(_swish(self.norm_out(h))), features, middle


class Decoder(nn.Module):
    """conv_in, middle (cross-attention), levels from the lowest up (cross-attention at the
    decoder's attention resolutions), norm-swish-conv to the image."""

    def __init__(self, ch, out_ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, enable_mid,
                 head_size):
        super().__init__()
        levels = len(ch_mult)
        self.enable_mid = enable_mid
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (levels - 1)
        self.conv_in = _conv3(z_channels, cin)
        if enable_mid:
            self.mid = Middle(cin, head_size)
        up = []
        for i in reversed(range(levels)):
            attention = res in attn_resolutions
            if attention and i == levels - 1 and not enable_mid:
                raise ValueError("decoder attention at the lowest level queries the encoder's middle: "
                                 "it needs enable_mid")
            level = Level(cin, ch * ch_mult[i], num_res_blocks + 1, attention, head_size)
            cin = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(cin)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)  # index = level, as the released names
        self.norm_out = _norm(cin)
        self.conv_out = _conv3(cin, out_ch)

    def forward(self, z: torch.Tensor, features: Sequence[torch.Tensor], middle: torch.Tensor | None) -> torch.Tensor:
        h = self.conv_in(z)
        if self.enable_mid:
            h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h), middle))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            h = level(h, features[i] if len(level.attn) else None)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry per latent pixel (squared Euclidean distance)."""

    def __init__(self, n_e: int, e_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)
        codes = self.embedding.weight
        distance = (flat**2).sum(dim=1, keepdim=True) + (codes**2).sum(dim=1) - 2 * (flat @ codes.t())
        quantised = nn.functional.embedding(distance.argmin(dim=1), codes)
        quantised = flat + (quantised - flat)  # the official straight-through form, same rounding
        return quantised.reshape(b, h, w, c).permute(0, 3, 1, 2)


class _VQTransformer(nn.Module):
    """The network both papers share (official VQVAEGANMultiHeadTransformer)."""

    def __init__(
        self,
        n_embed: int = 1024,
        embed_dim: int = 256,
        ch: int = 64,
        out_ch: int = 3,
        ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.0,
        in_channels: int = 3,
        resolution: int = 512,
        z_channels: int = 256,
        double_z: bool = False,
        enable_mid: bool = True,
        fix_decoder: bool = False,
        fix_codebook: bool = True,
        fix_encoder: bool = False,
        head_size: int = 8,
        ex_multi_scale_num: int = 0,
    ):
        super().__init__()
        if double_z:
            raise ValueError("double_z=True: the official network cannot run with it (quant_conv takes z_channels)")
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, attn_resolutions, in_channels, resolution, z_channels,
                               enable_mid, head_size)
        decoder_attn = list(attn_resolutions)
        for _ in range(ex_multi_scale_num):  # as upstream: [first, last * 2], not a growing list
            decoder_attn = [decoder_attn[0], decoder_attn[-1] * 2]
        self.decoder = Decoder(ch, out_ch, ch_mult, num_res_blocks, tuple(decoder_attn), resolution, z_channels,
                               enable_mid, head_size)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.multiple = 2 ** (len(ch_mult) - 1)  # H and W must be multiples of this

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, features, middle = self.encoder(x)
        quantised = self.quantize(self.quant_conv(z))
        return self.decoder(self.post_quant_conv(quantised), features, middle)


class RestoreFormer(_VQTransformer):
    """RestoreFormer (CVPR 2022): head_size 8, cross-attention at the 16-px level only.
    Input and output RGB in [-1, 1], 512x512 aligned faces."""

    def __init__(self, *, head_size: int = 8, ex_multi_scale_num: int = 0, **hparams):
        super().__init__(head_size=head_size, ex_multi_scale_num=ex_multi_scale_num, **hparams)


class RestoreFormerPlusPlus(_VQTransformer):
    """RestoreFormer++ (TPAMI 2023): head_size 4, cross-attention at the 16- and 32-px levels
    (ex_multi_scale_num 1). Input and output RGB in [-1, 1], 512x512 aligned faces."""

    def __init__(self, *, head_size: int = 4, ex_multi_scale_num: int = 1, **hparams):
        super().__init__(head_size=head_size, ex_multi_scale_num=ex_multi_scale_num, **hparams)

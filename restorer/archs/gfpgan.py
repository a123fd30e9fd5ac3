"""GFPGAN v1.3 / v1.4 ("clean" architecture, GFPGANv1Clean): blind face restoration with a
generative facial prior.

Wang et al., "Towards Real-World Blind Face Restoration with Generative Facial Prior"
(CVPR 2021), github.com/TencentARC/GFPGAN (Apache-2.0). This module is our own
implementation, written from the paper and the published facts (tensor names and shapes of
the released layout, the official hyperparameters and test procedure; see
tests/fixtures/gfpgan/), and checked against golden outputs of the official code.

The network: a U-Net over an aligned 512x512 face crop whose encoder (1x1 conv, then
residual blocks that halve the size down to 4x4) ends in a linear layer giving one
StyleGAN2 latent w per decoder layer; its decoder path (residual blocks that double the
size) yields, at every resolution 8..512, a scale and a shift map (two conv-lrelu-conv
heads). A StyleGAN2 generator (constant 4x4 input, modulated/demodulated convs, noise
injection, ToRGB skips) is driven by those latents, and after the first (upsampling) conv
of each resolution half of its channels (sft_half) are modulated as x * scale + shift
(Spatial Feature Transform). The image is the sum of the ToRGB skips.

Conventions:
- input: NCHW float32 RGB in [-1, 1] (pixel / 255, then mean 0.5, std 0.5), exactly
  out_size x out_size (512 for every release): the bottleneck is flattened into a linear
  layer, so no other size can work;
- output: RGB in [-1, 1] (the official test clamps to [-1, 1] afterwards; not done here);
- released hyperparameters (gfpgan/utils.py GFPGANer, V1.3 and V1.4 alike): out_size=512,
  num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
  num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True; the checkpoints
  keep the weights under 'params_ema'.

Facts that decide the numbers:
- bilinear resizes everywhere (align_corners=False, no antialias): x2 up before the
  upsampling modulated convs and on the ToRGB skip, x0.5 down in the encoder blocks;
- the modulated conv's style is `modulation(w)` (bias initialised to 1), the weight is
  demodulated with rsqrt(sum w^2 + 1e-8), its output is multiplied by sqrt(2), then noise
  (times a learnt scalar), bias and leaky ReLU(0.2) follow; ToRGB is not demodulated;
- leaky ReLU slope 0.2 throughout; the encoder's style latent code is used as w directly
  (input_is_latent=True): the eight-layer style MLP is in the checkpoint but unused.

Deviations from the official forward:
- deterministic noise: the official test (GFPGANer.enhance) draws fresh N(0, 1) noise for
  every StyleConv on every call (randomize_noise=True); here the noise maps stored in the
  checkpoint (stylegan_decoder.noises.noise{i}) are always used, which is the official
  forward with randomize_noise=False. A face restored twice is restored identically, and the
  ONNX graph has no random operator;
- forward returns the image only, not the intermediate U-Net RGB images (`out_rgbs`, a
  training-time loss input); the toRGB convs stay for strict loading and are not run;
- only the test-time path of the decoder: one style input, no truncation, no style mixing;
- decoder_load_path (a training-time StyleGAN2 checkpoint) must be None.
Under `exporting()` the modulated conv scales the input by the style and the output by the
demodulation instead of building a weight per sample (the same arithmetic; a shared
convolution weight that ONNX Runtime can pre-pack, and a free batch axis). An export traced
with dynamic height and width keeps them symbolic, but its graph runs at out_size only (the
family's fixed_tile). At 512 px with random weights the fp32 export was within 4e-5 of
PyTorch (output magnitude 4.8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from restorer.archs.layers import exporting

SLOPE = 0.2  # leaky ReLU negative slope, everywhere
DEMOD_EPS = 1e-8
STYLE_NORM_EPS = 1e-8


def channel_table(narrow: float, channel_multiplier: float) -> dict[int, int]:
    """StyleGAN2's channels per resolution (the U-Net uses the same table at half width)."""
    wide = {4: 512, 8: 512, 16: 512, 32: 512}
    scaled = {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    table = {r: int(c * narrow) for r, c in wide.items()}
    table.update({r: int(c * channel_multiplier * narrow) for r, c in scaled.items()})
    return table


def resize(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


class NormStyleCode(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + 1e-8): the first layer of the style MLP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + STYLE_NORM_EPS)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution, no bias; optional x2 bilinear upsampling first.

    Tensors: `modulation` (Linear num_style_feat -> in_channels), `weight`
    (1, out, in, k, k)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, upsample: bool = False):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.modulation = nn.Linear(num_style_feat, in_channels)
        self.weight = nn.Parameter(torch.empty(1, out_channels, in_channels, kernel_size, kernel_size))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}")

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        style = self.modulation(w)  # (b, in)
        if self.upsample:
            x = resize(x, 2)
        pad = self.kernel_size // 2
        if exporting():
            # x*s conv W, times demod: one shared weight, any batch
            kernel = self.weight[0]
            out = F.conv2d(x * style[:, :, None, None], kernel, padding=pad)
            if self.demodulate:
                energy = style.pow(2) @ kernel.pow(2).sum(dim=(2, 3)).t()  # (b, out)
                out = out * torch.rsqrt(energy + DEMOD_EPS)[:, :, None, None]
            return out
        # as the official code: a weight per sample, one grouped convolution
        b, c = x.shape[:2]
        weight = self.weight * style.view(b, 1, c, 1, 1)
        if self.demodulate:
            demod = torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + DEMOD_EPS)
            weight = weight * demod.view(b, self.out_channels, 1, 1, 1)
        weight = weight.view(b * self.out_channels, c, self.kernel_size, self.kernel_size)
        h, wd = x.shape[2:]
        out = F.conv2d(x.reshape(1, b * c, h, wd), weight, padding=pad, groups=b)
        return out.view(b, self.out_channels, *out.shape[2:])


class StyleConv(nn.Module):
    """Modulated 3x3 conv (x sqrt 2), + weight * noise, + bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, num_style_feat, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))  # noise strength
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, w) * 2**0.5
        out = out + self.weight * noise
        return F.leaky_relu(out + self.bias, SLOPE)


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB (not demodulated) + bias, plus the x2-upsampled skip."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, w) + self.bias
        if skip is not None:
            out = out + (resize(skip, 2) if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.weight.expand(batch, -1, -1, -1)


class SFTStyleGAN2(nn.Module):
    """StyleGAN2 generator whose first conv of every resolution from 8 px up is followed by a
    spatial feature transform from the U-Net (the official StyleGAN2GeneratorCSFT)."""

    def __init__(self, out_size: int, num_style_feat: int, num_mlp: int, channel_multiplier: float,
                 narrow: float, sft_half: bool):
        super().__init__()
        self.sft_half = sft_half
        mlp: list[nn.Module] = [NormStyleCode()]
        for _ in range(num_mlp):
            mlp += [nn.Linear(num_style_feat, num_style_feat), nn.LeakyReLU(SLOPE)]
        self.style_mlp = nn.Sequential(*mlp)
        channels = channel_table(narrow, channel_multiplier)
        self.log_size = int(math.log(out_size, 2))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2
        self.constant_input = ConstantInput(channels[4], 4)
        self.style_conv1 = StyleConv(channels[4], channels[4], num_style_feat)
        self.to_rgb1 = ToRGB(channels[4], num_style_feat, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        # the noise maps the checkpoint stores (layer 0 at 4 px, then two per resolution)
        self.noises = nn.Module()
        for i in range(self.num_layers):
            side = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.zeros(1, 1, side, side))
        in_channels = channels[4]
        for level in range(3, self.log_size + 1):
            out_channels = channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, num_style_feat, upsample=True))
            self.style_convs.append(StyleConv(out_channels, out_channels, num_style_feat))
            self.to_rgbs.append(ToRGB(out_channels, num_style_feat))
            in_channels = out_channels

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        """latent: (b, num_latent, num_style_feat) w per layer; conditions: [scale, shift] per
        resolution from 8 px up."""
        noise = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        out = self.style_conv1(self.constant_input(latent.shape[0]), latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            out = self.style_convs[2 * j](out, latent[:, i], noise[i])
            scale, shift = conditions[2 * j], conditions[2 * j + 1]
            if self.sft_half:  # only the second half of the channels is transformed
                half = out.shape[1] // 2
                out = torch.cat([out[:, :half], out[:, half:] * scale + shift], dim=1)
            else:
                out = out * scale + shift
            out = self.style_convs[2 * j + 1](out, latent[:, i + 1], noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip


class ResBlock(nn.Module):
    """conv3x3-lrelu, bilinear resize, conv3x3-lrelu; plus a resized 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int, factor: float):
        super().__init__()
        self.factor = factor
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.leaky_relu(self.conv1(x), SLOPE)
        out = F.leaky_relu(self.conv2(resize(out, self.factor)), SLOPE)
        return out + self.skip(resize(x, self.factor))


def _sft_head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(SLOPE),
                         nn.Conv2d(channels, out_channels, 3, 1, 1))


class GFPGANv1Clean(nn.Module):
    """GFPGAN (clean): U-Net + StyleGAN2 decoder with SFT. The official hyperparameter names
    and defaults; the releases use out_size=512, channel_multiplier=2, fix_decoder=False,
    input_is_latent=True, different_w=True, sft_half=True."""

    def __init__(self, out_size: int, num_style_feat: int = 512, channel_multiplier: float = 1,
                 decoder_load_path: str | None = None, fix_decoder: bool = True, num_mlp: int = 8,
                 input_is_latent: bool = False, different_w: bool = False, narrow: float = 1,
                 sft_half: bool = False):
        super().__init__()
        if decoder_load_path:
            raise ValueError("decoder_load_path is a training option; load a full GFPGAN state_dict instead")
        self.out_size = out_size
        self.input_is_latent = input_is_latent
        self.different_w = different_w
        self.num_style_feat = num_style_feat
        self.log_size = int(math.log(out_size, 2))
        unet = channel_table(narrow * 0.5, channel_multiplier)  # the U-Net: half the width
        top = 2**self.log_size

        self.conv_body_first = nn.Conv2d(3, unet[top], 1)
        self.conv_body_down = nn.ModuleList()
        in_channels = unet[top]
        for level in range(self.log_size, 2, -1):
            self.conv_body_down.append(ResBlock(in_channels, unet[2 ** (level - 1)], 0.5))
            in_channels = unet[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(in_channels, unet[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList()
        in_channels = unet[4]
        for level in range(3, self.log_size + 1):
            self.conv_body_up.append(ResBlock(in_channels, unet[2**level], 2))
            in_channels = unet[2**level]
        # intermediate RGB heads: a training loss input, kept for strict loading, never run
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[2**level], 3, 1) for level in range(3, self.log_size + 1))
        n_w = (self.log_size * 2 - 2) if different_w else 1
        self.final_linear = nn.Linear(unet[4] * 4 * 4, n_w * num_style_feat)
        self.stylegan_decoder = SFTStyleGAN2(out_size, num_style_feat, num_mlp, channel_multiplier, narrow,
                                             sft_half)
        if fix_decoder:
            for p in self.stylegan_decoder.parameters():
                p.requires_grad = False
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for level in range(3, self.log_size + 1):
            c = unet[2**level]
            sft_channels = c if sft_half else 2 * c
            self.condition_scale.append(_sft_head(c, sft_channels))
            self.condition_shift.append(_sft_head(c, sft_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, 3, out_size, out_size) RGB in [-1, 1] -> the restored face, same shape, ~[-1, 1]."""
        if not exporting() and tuple(x.shape[2:]) != (self.out_size, self.out_size):
            # the only size the bottleneck's linear layer takes. (An export traced with dynamic
            # height and width keeps them symbolic but runs at this size only: the engine
            # feeds it fixed_tile = out_size.)
            raise ValueError(f"GFPGAN takes {self.out_size}x{self.out_size} input, not {tuple(x.shape[2:])}")
        feat = F.leaky_relu(self.conv_body_first(x), SLOPE)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), SLOPE)
        style = self.final_linear(feat.flatten(1))

        conditions = []
        for block, skip, scale, shift in zip(self.conv_body_up, reversed(skips), self.condition_scale,
                                             self.condition_shift):
            feat = block(feat + skip)
            conditions += [scale(feat), shift(feat)]

        decoder = self.stylegan_decoder
        if self.different_w:  # one w per decoder layer
            style = style.reshape(style.shape[0], decoder.num_latent, self.num_style_feat)
        if not self.input_is_latent:
            # as the official code: the MLP's normalisation averages over dim 1 (the layer
            # axis when different_w)
            style = decoder.style_mlp(style)
        if not self.different_w:
            style = style.unsqueeze(1).expand(-1, decoder.num_latent, -1)
        return decoder(style, conditions)

"""The face-enhancement generator of "Bringing Old Photos Back to Life" (SPADEGenerator with
no_parsing_map: every SPADE is conditioned on the degraded face itself).

Aligned face RGB in [-1, 1], N x 3 x S x S (S = load_size: 256, or 512 for FaceSR_512)
-> enhanced face in [-1, 1] (tanh). The 18-channel parsing label of the official call is
all zeros and unused with no_parsing_map, so it is not an input here.

Spectral norm: the released convs store `weight_orig`, `weight_u`, `weight_v`; in eval
mode PyTorch divides by sigma = u . (W v) with the stored vectors (no power iteration),
which `SpectralConv2d` reproduces. The param-free norms are batch norms on running stats.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

SPADE_HIDDEN = 128  # hard-coded in the official SPADE


class SpectralConv2d(nn.Module):
    """Conv2d whose weight is weight_orig / sigma, sigma = u . (weight_orig.reshape(out, -1) @ v).

    Loads both checkpoint layouts: (weight_orig, weight_u, weight_v), and the PyTorch < 1.1
    one (weight, weight_orig, weight_u) where `weight` already is the normalised weight.
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.padding = padding
        weight = torch.empty(cout, cin, kernel_size, kernel_size)
        nn.init.kaiming_uniform_(weight, a=5 ** 0.5)  # nn.Conv2d's default
        self.weight_orig = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        # A fresh module is usable too (checkpoints overwrite all three): u, v from a few
        # power iterations, so sigma starts at the weight's largest singular value.
        matrix = weight.reshape(cout, -1)
        u = F.normalize(torch.randn(cout), dim=0)
        for _ in range(3):
            v = F.normalize(matrix.t() @ u, dim=0)
            u = F.normalize(matrix @ v, dim=0)
        self.register_buffer("weight_u", u)
        self.register_buffer("weight_v", v)
        self._register_load_state_dict_pre_hook(self._from_old_layout)

    @staticmethod
    def _from_old_layout(state_dict, prefix, *_args):
        weight = state_dict.pop(prefix + "weight", None)
        if weight is None or prefix + "weight_v" in state_dict:
            return
        # Choose u, v with u . (W v) = 1 exactly, so weight_orig = weight is used as is.
        matrix = weight.reshape(weight.shape[0], -1)
        ones = torch.ones(matrix.shape[1], dtype=matrix.dtype)
        image = matrix @ ones
        norm = image.norm()
        state_dict[prefix + "weight_orig"] = weight
        state_dict[prefix + "weight_v"] = ones / norm
        state_dict[prefix + "weight_u"] = image / norm

    def normalized_weight(self) -> torch.Tensor:
        matrix = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        sigma = torch.dot(self.weight_u, torch.mv(matrix, self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.normalized_weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """Param-free norm of x, then x * (1 + gamma) + beta, with gamma and beta predicted from
    the degraded face (bilinearly resized to x's size) by a shared 3x3 conv + ReLU."""

    def __init__(self, param_free_norm: str, kernel_size: int, channels: int):
        super().__init__()
        if param_free_norm in ("syncbatch", "batch"):
            self.param_free_norm = nn.BatchNorm2d(channels, affine=False)
        elif param_free_norm == "instance":
            self.param_free_norm = nn.InstanceNorm2d(channels, affine=False)
        else:
            raise ValueError(f"unsupported SPADE norm {param_free_norm!r}")
        pad = kernel_size // 2
        self.mlp_shared = nn.Sequential(nn.Conv2d(3, SPADE_HIDDEN, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, channels, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, channels, kernel_size, padding=pad)

    def forward(self, x: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        face = F.interpolate(face, size=x.shape[2:], mode="bilinear", align_corners=False)
        hidden = self.mlp_shared(face)
        return normalized * (1 + self.mlp_gamma(hidden)) + self.mlp_beta(hidden)


class SPADEResBlock(nn.Module):
    """norm_0 -> lrelu -> conv_0 -> norm_1 -> lrelu -> conv_1, plus a shortcut that is learned
    (norm_s -> conv_s, 1x1 without bias) where the width changes."""

    def __init__(self, fin: int, fout: int, norm_G: str):  # noqa: N803
        super().__init__()
        parsed = re.fullmatch(r"(spectral)?spade(\D+)(\d)x\d", norm_G)
        if parsed is None:
            raise ValueError(f"unsupported norm_G {norm_G!r}")
        spectral, param_free, ks = parsed.group(1), parsed.group(2), int(parsed.group(3))
        if not spectral:
            raise ValueError("the released generators are spectral-normalised (norm_G 'spectral...')")
        self.learned_shortcut = fin != fout
        middle = min(fin, fout)
        self.conv_0 = SpectralConv2d(fin, middle, 3, padding=1)
        self.conv_1 = SpectralConv2d(middle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SpectralConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(param_free, ks, fin)
        self.norm_1 = SPADE(param_free, ks, middle)
        if self.learned_shortcut:
            self.norm_s = SPADE(param_free, ks, fin)

    def forward(self, x: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, face)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, face), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, face), 0.2))
        return shortcut + dx


class FaceSPADEGenerator(nn.Module):
    """SPADEGenerator (no_parsing_map, injection_layer 'all').

    fc: 3x3 conv on the face bilinearly resized to (load_size / 2**n_up)^2; then head_0,
    G_middle_0/1, up_0..up_3 with nearest x2 upsamplings between them (5 in total for
    'normal'); output tanh(conv_img(lrelu(x))). The output is always load_size square.
    """

    def __init__(
        self,
        ngf: int = 64,
        load_size: int = 256,
        aspect_ratio: float = 1.0,
        label_nc: int = 18,
        semantic_nc: int = 18,
        norm_G: str = "spectralspadesyncbatch3x3",  # noqa: N803 - official option name
        num_upsampling_layers: str = "normal",
        injection_layer: str = "all",
        no_parsing_map: bool = True,
        use_vae: bool = False,
        z_dim: int = 256,
        no_instance: bool = True,
        crop_size: int = 256,
        preprocess_mode: str = "resize",
        contain_dontcare_label: bool = False,
        init_type: str = "xavier",
        init_variance: float = 0.02,
        netG: str = "spade",  # noqa: N803
    ):
        super().__init__()
        # label_nc, semantic_nc, z_dim, crop_size, preprocess_mode, init_*: accepted as the
        # official options, without effect on the test-time network used here.
        if netG != "spade" or use_vae or not no_parsing_map or injection_layer != "all":
            raise ValueError(
                "supported: netG 'spade', use_vae False, no_parsing_map True, injection_layer 'all' "
                "(the released face checkpoints)"
            )
        ups = {"normal": 5, "more": 6, "most": 7}
        if num_upsampling_layers not in ups:
            raise ValueError(f"unsupported num_upsampling_layers {num_upsampling_layers!r}")
        self.num_upsampling_layers = num_upsampling_layers
        self.sw = load_size // 2 ** ups[num_upsampling_layers]
        self.sh = round(self.sw / aspect_ratio)
        nf = ngf
        self.fc = nn.Conv2d(3, 16 * nf, 3, padding=1)
        self.head_0 = SPADEResBlock(16 * nf, 16 * nf, norm_G)
        self.G_middle_0 = SPADEResBlock(16 * nf, 16 * nf, norm_G)
        self.G_middle_1 = SPADEResBlock(16 * nf, 16 * nf, norm_G)
        self.up_0 = SPADEResBlock(16 * nf, 8 * nf, norm_G)
        self.up_1 = SPADEResBlock(8 * nf, 4 * nf, norm_G)
        self.up_2 = SPADEResBlock(4 * nf, 2 * nf, norm_G)
        self.up_3 = SPADEResBlock(2 * nf, nf, norm_G)
        final = nf
        if num_upsampling_layers == "most":
            self.up_4 = SPADEResBlock(nf, nf // 2, norm_G)
            final = nf // 2
        self.conv_img = nn.Conv2d(final, 3, 3, padding=1)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")

    def forward(self, degraded_image: torch.Tensor) -> torch.Tensor:
        """Face RGB N x 3 x S x S in [-1, 1] -> enhanced face N x 3 x S x S in [-1, 1]."""
        face = degraded_image
        x = F.interpolate(face, size=(self.sh, self.sw), mode="bilinear", align_corners=False)
        x = self.fc(x)
        x = self.head_0(x, face)
        x = self._up(x)
        x = self.G_middle_0(x, face)
        if self.num_upsampling_layers in ("more", "most"):
            x = self._up(x)
        x = self.G_middle_1(x, face)
        for block in (self.up_0, self.up_1, self.up_2, self.up_3):
            x = block(self._up(x), face)
        if self.num_upsampling_layers == "most":
            x = self.up_4(self._up(x), face)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))

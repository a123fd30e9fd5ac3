"""The latent mappings of "Bringing Old Photos Back to Life": VAE_A latent -> VAE_B latent.

- `Mapping` (Mapping_Model): the plain mapping of the quality-restoration path.
- `MappingWithNonLocal` (Mapping_Model_with_mask): the scratch path; a partial non-local
  block lets scratched latent pixels borrow from unscratched ones. Takes the scratch mask
  (N x 1 x H x W at IMAGE resolution, 1 = scratch) as a second input.
- `MappingPatchAttention` (Mapping_Model_with_mask_2): the --HR scratch path; three
  patch-attention stages (patch 8, 4, 2) that copy the best-matching unscratched patch into
  each scratched one. Its official inference code uses data-dependent indexing and
  F.fold; here it is rewritten with a static patch grid (reshapes, masked argmax and
  gather) so it exports to ONNX, with the same result (see `PatchAttention`).

All three take and return 64-channel latents (`tmp_nc` = 64 is hard-coded in the
official classes, whatever `nc` is); `map_mc` is the inner width (512 released; the last
conv is hard-wired 128 -> 64, so map_mc must be at least 128).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResnetBlock, conv_norm_relu, norm_layer

LATENT_CHANNELS = 64  # the official `tmp_nc`


def _widening(map_mc: int, norm: str) -> list[nn.Module]:
    """64 -> map_mc in four 3x3 convs, doubling the width up to map_mc."""
    layers: list[nn.Module] = []
    for i in range(4):
        cin = min(LATENT_CHANNELS * 2**i, map_mc)
        cout = min(LATENT_CHANNELS * 2 ** (i + 1), map_mc)
        layers += conv_norm_relu(cin, cout, norm)
    return layers


def _narrowing(map_mc: int, norm: str, feat_dim: int) -> list[nn.Module]:
    """map_mc -> 64: three 3x3 convs halving the width, then a hard-wired 128 -> 64 conv."""
    layers: list[nn.Module] = []
    for i in range(3):
        cin = min(64 * 2 ** (4 - i), map_mc)
        cout = min(64 * 2 ** (3 - i), map_mc)
        layers += conv_norm_relu(cin, cout, norm)
    layers += [nn.Conv2d(LATENT_CHANNELS * 2, LATENT_CHANNELS, 3, 1, 1)]
    if 0 < feat_dim < LATENT_CHANNELS:
        layers += [norm_layer(norm, LATENT_CHANNELS), nn.ReLU(True), nn.Conv2d(LATENT_CHANNELS, feat_dim, 1, 1)]
    return layers


def _blocks(count: int, channels: int, padding_type: str, norm: str, dilation: int) -> list[nn.Module]:
    return [ResnetBlock(channels, padding_type, norm, dilation) for _ in range(count)]


class Mapping(nn.Module):
    """Mapping_Model: widen, `mapping_n_block` res-blocks, narrow; one Sequential `model`."""

    def __init__(
        self,
        nc: int = 64,
        map_mc: int = 512,
        mapping_n_block: int = 6,
        norm: str = "instance",
        padding_type: str = "reflect",
        mapping_net_dilation: int = 1,
        feat_dim: int = -1,
    ):
        super().__init__()
        del nc  # accepted for fidelity; the official class hard-codes 64 channels
        layers = _widening(map_mc, norm)
        layers += _blocks(mapping_n_block, map_mc, padding_type, norm, mapping_net_dilation)
        layers += _narrowing(map_mc, norm, feat_dim)
        self.model = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - ONNX input name
        return self.model(input)


def _mask_to_latent(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Image-resolution {0,1} scratch mask -> latent grid, 1 wherever any scratch touches.

    Bilinear (align_corners False, no antialias) then every value > 0 becomes 1.
    """
    small = F.interpolate(mask, size=size, mode="bilinear", align_corners=False)
    return torch.where(small > 0, torch.ones_like(small), small)


class NonLocalWithMask(nn.Module):
    """Partial non-local block (NonLocalBlock2D_with_mask_Res, 'combine' fusion).

    Attention over all latent pixels, but only unscratched pixels may be attended to:
    `valid` is 1 where neither the bilinear-dilated mask nor the nearest-sampled mask
    marks a scratch; attention columns are multiplied by it and each row is
    L1-renormalised. Output: valid * x + (1 - valid) * res_block(W(y)).
    The attention is a full (h*w) x (h*w) matrix: memory grows with the pixel count squared.
    """

    def __init__(
        self,
        in_channels: int,
        inter_channels: int,
        mode: str = "combine",
        re_norm: bool = True,
        temperature: float = 1.0,
        use_self: bool = False,
        cosin: bool = False,
    ):
        super().__init__()
        if mode != "combine":
            # the official block only defines its output for 'combine'
            raise ValueError(f"unsupported NL_fusion_method {mode!r} (released: 'combine')")
        self.inter_channels = inter_channels
        self.renorm = re_norm
        self.temperature = temperature
        self.use_self = use_self
        self.cosin = cosin
        self.g = nn.Conv2d(in_channels, inter_channels, 1)
        self.W = nn.Conv2d(inter_channels, in_channels, 1)
        self.theta = nn.Conv2d(in_channels, inter_channels, 1)
        self.phi = nn.Conv2d(in_channels, inter_channels, 1)
        self.res_block = nn.Sequential(*_blocks(3, inter_channels, "reflect", "instance", 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        c = self.inter_channels
        values = self.g(x).reshape(b, c, -1).transpose(1, 2)  # b, hw, c
        queries = self.theta(x).reshape(b, c, -1).transpose(1, 2)  # b, hw, c
        keys = self.phi(x).reshape(b, c, -1)  # b, c, hw
        if self.cosin:
            queries = F.normalize(queries, dim=2)
            keys = F.normalize(keys, dim=1)
        attention = torch.softmax(torch.matmul(queries, keys) / self.temperature, dim=2)

        scratched = _mask_to_latent(mask, (h, w))
        unscratched = F.interpolate(1 - mask, size=(h, w), mode="nearest")
        valid = (1 - scratched) * unscratched  # b, 1, h, w
        columns = valid.reshape(b, 1, h * w)
        if self.use_self:
            eye = torch.eye(h * w, dtype=torch.bool, device=x.device).unsqueeze(0)
            weights = torch.where(eye, torch.ones_like(attention), columns.expand_as(attention))
        else:
            weights = columns
        attention = attention * weights
        if self.renorm:
            attention = F.normalize(attention, p=1, dim=2)

        y = torch.matmul(attention, values).transpose(1, 2).reshape(b, c, h, w)
        filled = self.res_block(self.W(y))
        return valid * x + (1 - valid) * filled


class MappingWithNonLocal(nn.Module):
    """Mapping_Model_with_mask: before_NL (widen) -> NL(x, mask) -> after_NL (blocks, narrow)."""

    def __init__(
        self,
        nc: int = 64,
        map_mc: int = 512,
        mapping_n_block: int = 6,
        norm: str = "instance",
        padding_type: str = "reflect",
        mapping_net_dilation: int = 1,
        feat_dim: int = -1,
        NL_res: bool = True,  # noqa: N803 - official option names
        NL_fusion_method: str = "combine",  # noqa: N803
        correlation_renormalize: bool = True,
        softmax_temperature: float = 1.0,
        use_self: bool = False,
        cosin_similarity: bool = False,
    ):
        super().__init__()
        del nc
        if not NL_res:
            raise ValueError("only NL_res=True (the released setting) defines the NL block")
        self.before_NL = nn.Sequential(*_widening(map_mc, norm))
        self.NL = NonLocalWithMask(
            map_mc,
            map_mc,
            NL_fusion_method,
            correlation_renormalize,
            softmax_temperature,
            use_self,
            cosin_similarity,
        )
        layers = _blocks(mapping_n_block, map_mc, padding_type, norm, mapping_net_dilation)
        layers += _narrowing(map_mc, norm, feat_dim)
        self.after_NL = nn.Sequential(*layers)

    def forward(self, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: A002
        """input: latent N x 64 x h x w; mask: N x 1 x H x W in {0, 1}, 1 = scratch."""
        return self.after_NL(self.NL(self.before_NL(input), mask))


class PatchAttention(nn.Module):
    """Patch_Attention_4 (its memory-saving `inference_forward`, as the --HR pipeline calls it).

    On a grid of non-overlapping p x p patches of x = res_block(z): a patch is "scratched"
    when more than 60 % of its latent pixels are scratched (mask bilinearly resized to the
    latent, > 0 -> 1). Each scratched patch is replaced by the unscratched patch with the
    highest cosine similarity (first one on ties); unscratched patches stay. The composed
    map, the input z and the resized mask are fused by a 3x3 conv (1025 -> 512, hard-coded).

    Quirks kept from the official code: when at least one patch is scratched, rows/columns
    beyond the last whole patch are zero in the composed map (F.fold leaves them empty);
    when none is, the composed map is x itself. Where no unscratched patch exists (the
    official code fails), the patches stay as they are. The official code picks the
    scratched patches from the first image of a batch; here each image uses its own mask.

    Rewritten with a static patch grid: the full (patches x patches) similarity is
    computed and scratched columns are excluded, so it exports to ONNX; memory grows with
    the square of the patch count.
    """

    def __init__(self, in_channels: int, inter_channels: int, patch_size: int):
        super().__init__()
        del in_channels
        self.patch_size = patch_size
        self.F_Combine = nn.Conv2d(1025, 512, 3, 1, 1)
        self.res_block = nn.Sequential(ResnetBlock(inter_channels, "reflect", "instance"))

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.res_block(z)
        b, c, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        small = _mask_to_latent(mask, (h, w))

        def patches(t: torch.Tensor) -> torch.Tensor:
            """b, ch, h, w -> b, gh*gw, ch*p*p (row-major grid, F.unfold's feature order)."""
            ch = t.shape[1]
            t = t[:, :, : gh * p, : gw * p].reshape(b, ch, gh, p, gw, p)
            return t.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, ch * p * p)

        scratched = patches(small).mean(dim=2) > 0.6  # b, L
        x_patches = patches(x)  # b, L, c*p*p
        unit = F.normalize(x_patches, dim=2)
        similarity = torch.matmul(unit, unit.transpose(1, 2))  # b, L(query), L(key)
        blocked = scratched.unsqueeze(1).expand_as(similarity)
        similarity = torch.where(blocked, torch.full_like(similarity, float("-inf")), similarity)
        best = torch.argmax(torch.softmax(similarity, dim=2), dim=2)  # b, L
        borrowed = torch.gather(x_patches, 1, best.unsqueeze(2).expand_as(x_patches))
        has_key = (~scratched).any(dim=1, keepdim=True)  # b, 1
        replace = (scratched & has_key).unsqueeze(2)
        composed = torch.where(replace, borrowed, x_patches)

        composed = composed.reshape(b, gh, gw, c, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, c, gh * p, gw * p)
        composed = F.pad(composed, (0, w - gw * p, 0, h - gh * p))
        any_scratched = scratched.any(dim=1).reshape(b, 1, 1, 1)
        composed = torch.where(any_scratched, composed, x)
        return self.F_Combine(torch.cat((z, composed, small), dim=1))


class MappingPatchAttention(nn.Module):
    """Mapping_Model_with_mask_2 (multi-scale patch attention, run.py --with_scratch --HR).

    before_NL (widen + 2 blocks) -> PA(8) -> 2 blocks -> PA(4) -> 2 blocks -> PA(2) ->
    after_NL (2 blocks, narrow). Block counts are hard-coded: mapping_n_block is ignored,
    as in the official class. map_mc must be 512 (the fusion conv is hard-wired 1025 -> 512).
    H/4 and W/4 of the image should be multiples of 8 for whole patches at every scale.
    """

    def __init__(
        self,
        nc: int = 64,
        map_mc: int = 512,
        mapping_n_block: int = 6,
        norm: str = "instance",
        padding_type: str = "reflect",
        mapping_net_dilation: int = 1,
        feat_dim: int = -1,
        mapping_exp: int = 1,
    ):
        super().__init__()
        del nc, mapping_n_block
        if mapping_exp != 1:
            raise ValueError("only mapping_exp=1 defines the patch-attention stages")

        def blocks(count: int) -> list[nn.Module]:
            return _blocks(count, map_mc, padding_type, norm, mapping_net_dilation)

        self.before_NL = nn.Sequential(*_widening(map_mc, norm), *blocks(2))
        self.NL_scale_1 = PatchAttention(map_mc, map_mc, 8)
        self.res_block_1 = nn.Sequential(*blocks(2))
        self.NL_scale_2 = PatchAttention(map_mc, map_mc, 4)
        self.res_block_2 = nn.Sequential(*blocks(2))
        self.NL_scale_3 = PatchAttention(map_mc, map_mc, 2)
        self.after_NL = nn.Sequential(*blocks(2), *_narrowing(map_mc, norm, feat_dim))

    def forward(self, input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # noqa: A002
        """input: latent N x 64 x h x w; mask: N x 1 x H x W in {0, 1} (dilated), 1 = scratch."""
        x = self.NL_scale_1(self.before_NL(input), mask)
        x = self.NL_scale_2(self.res_block_1(x), mask)
        x = self.NL_scale_3(self.res_block_2(x), mask)
        return self.after_NL(x)


# Options only the masked mappings take: catalog entries name them, so they tell the three
# classes of this module apart (export hooks get the hyperparameters, not the class).
_NON_LOCAL_OPTIONS = ("NL_res", "NL_fusion_method", "correlation_renormalize", "softmax_temperature",
                      "use_self", "cosin_similarity")
_PATCH_ATTENTION_OPTIONS = ("mapping_exp",)


def example_inputs(hparams: dict, tile: int) -> dict[str, torch.Tensor]:
    """Inputs to export and check a mapping with (restorer.convert.export), for a `tile` pixels
    square image: its latent (N x 64 x tile/4 x tile/4, rounded to whole 8-patches) and,
    for the masked mappings, a scratch mask at image resolution (a band and a line)."""
    side = max(8, tile // 4 - tile // 4 % 8)  # latent side; attention memory grows with side**4
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, LATENT_CHANNELS, side, side, generator=generator)
    if not any(k in hparams for k in _NON_LOCAL_OPTIONS + _PATCH_ATTENTION_OPTIONS):
        return {"input": latent}
    size = 4 * side
    mask = torch.zeros(1, 1, size, size)
    mask[:, :, size // 4 : size // 2, :] = 1.0
    mask[:, :, :, size * 3 // 4 : size * 3 // 4 + 3] = 1.0
    return {"input": latent, "mask": mask}

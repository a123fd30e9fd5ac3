"""MambaIR (v1): a state-space restoration network, and its U-Net for real-image denoising.

Guo et al., "MambaIR: A Simple Baseline for Image Restoration with State-Space Model",
ECCV 2024. Written from the paper and the published facts of the released checkpoints
(tensor names and shapes, hyperparameters). The selective scan is ours
(restorer.archs.selective_scan): plain tensor operations instead of the CUDA-only kernel of
the official code, so the network runs on CPU and exports to ONNX with dynamic H and W.

`MambaIR` (classical SR, lightweight SR, Gaussian colour denoising, grayscale JPEG artefact
removal) takes NCHW in [0, 1] at any size and subtracts the DIV2K mean itself (RGB only).
`MambaIRUNet` (real denoising) takes NCHW in [0, 1] with H and W multiples of 8.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from restorer.archs.selective_scan import selective_scan

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def _to_nchw(x: torch.Tensor) -> torch.Tensor:
    # Contiguous NCHW: convs on channels-last views make the exporter pin the batch size.
    return x.permute(0, 3, 1, 2).contiguous()


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation over channels (as in RCAN)."""

    def __init__(self, num_feat: int, squeeze_factor: int):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, num_feat // squeeze_factor, 1),
            nn.ReLU(),
            nn.Conv2d(num_feat // squeeze_factor, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class CAB(nn.Module):
    """Convolutional block with channel attention. Compression 3 and squeeze 30 are fixed by
    the released checkpoints; the lightweight-SR variant uses 1x1 and depthwise convs."""

    def __init__(self, num_feat: int, is_light_sr: bool = False):
        super().__init__()
        squeeze = 30
        if is_light_sr:
            mid = num_feat // 2
            self.cab = nn.Sequential(
                nn.Conv2d(num_feat, mid, 1),
                nn.Conv2d(mid, mid, 3, 1, 1, groups=mid),
                nn.GELU(),
                nn.Conv2d(mid, num_feat, 1),
                nn.Conv2d(num_feat, num_feat, 3, 1, padding=2, groups=num_feat, dilation=2),
                ChannelAttention(num_feat, squeeze),
            )
        else:
            mid = num_feat // 3
            self.cab = nn.Sequential(
                nn.Conv2d(num_feat, mid, 3, 1, 1),
                nn.GELU(),
                nn.Conv2d(mid, num_feat, 3, 1, 1),
                ChannelAttention(num_feat, squeeze),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cab(x)


class SS2D(nn.Module):
    """2D selective scan: four scans over the feature map (row-major, column-major and both
    reversed), each with its own projections, summed back in row-major order.

    Stacked parameters are direction-major (k = 0..3): x_proj_weight [4, R + 2N, d_inner],
    dt_projs_weight [4, d_inner, R], dt_projs_bias [4, d_inner], A_logs [4 * d_inner, N],
    Ds [4 * d_inner]. B and C are per direction, shared by that direction's channels.
    """

    directions = 4

    def __init__(self, d_model: int, d_state: int = 16, expand: float = 2.0, d_conv: int = 3, scan_chunk: int = 16):
        super().__init__()
        self.d_state = d_state
        self.d_inner = int(expand * d_model)  # truncated, as the checkpoints are
        self.dt_rank = math.ceil(d_model / 16)
        self.scan_chunk = scan_chunk
        k, d, n, r = self.directions, self.d_inner, d_state, self.dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, d_conv, padding=(d_conv - 1) // 2, groups=d, bias=True)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, d))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, d))
        self.A_logs = nn.Parameter(torch.empty(k * d, n))
        self.Ds = nn.Parameter(torch.empty(k * d))
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, d_model, bias=False)
        self.reset_state_space()

    @torch.no_grad()
    def reset_state_space(self) -> None:
        """The usual Mamba initialisation (S4D-real A, unit D, softplus(dt bias) in [1e-3, 0.1])."""
        nn.init.uniform_(self.x_proj_weight, -self.d_inner**-0.5, self.d_inner**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        n = self.d_state
        self.A_logs.copy_(torch.log(torch.arange(1, n + 1, dtype=self.A_logs.dtype)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, d_inner, H, W] -> the four directions' outputs summed, [B, d_inner, H, W]."""
        b, d, h, w = x.shape
        length = h * w
        rows = x.flatten(2)
        cols = x.transpose(2, 3).flatten(2)
        xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], 1)  # [B, 4, d, L]
        x_dbl = torch.einsum("kcd,bkdl->bkcl", self.x_proj_weight, xs)  # [B, 4, R + 2N, L]
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("kdr,bkrl->bkdl", self.dt_projs_weight, dts)  # [B, 4, d, L]
        y = selective_scan(
            xs.reshape(b, self.directions * d, length),
            dts.reshape(b, self.directions * d, length),
            -torch.exp(self.A_logs),
            Bs,
            Cs,
            self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1),
            delta_softplus=True,
            chunk=self.scan_chunk,
        ).reshape(b, self.directions, d, length)
        # Back to row-major: un-reverse k2/k3, un-transpose k1/k3.
        row_major = y[:, 0] + y[:, 2].flip(-1)
        col_major = (y[:, 1] + y[:, 3].flip(-1)).reshape(b, d, w, h).transpose(2, 3)
        return row_major.reshape(b, d, h, w) + col_major

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, H, W, C] -> [B, H, W, C]."""
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(_to_nchw(x)))
        y = self.scan(x).permute(0, 2, 3, 1)
        y = self.out_norm(y) * F.silu(z)
        return self.out_proj(y)


class VSSBlock(nn.Module):
    """x = x * skip_scale + SS2D(LN(x)); x = x * skip_scale2 + CAB(LN(x)). Channels last."""

    def __init__(self, hidden_dim: int, d_state: int, expand: float, is_light_sr: bool = False, scan_chunk: int = 16):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden_dim)
        self.self_attention = SS2D(hidden_dim, d_state=d_state, expand=expand, scan_chunk=scan_chunk)
        self.skip_scale = nn.Parameter(torch.ones(hidden_dim))
        self.conv_blk = CAB(hidden_dim, is_light_sr)
        self.ln_2 = nn.LayerNorm(hidden_dim)
        self.skip_scale2 = nn.Parameter(torch.ones(hidden_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.skip_scale + self.self_attention(self.ln_1(x))
        cab = self.conv_blk(_to_nchw(self.ln_2(x))).permute(0, 2, 3, 1)
        return x * self.skip_scale2 + cab


def _run_blocks(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """NCHW in and out; the blocks work channels last."""
    x = x.permute(0, 2, 3, 1)
    for block in blocks:
        x = block(x)
    return _to_nchw(x)


def _residual_conv(dim: int, resi_connection: str) -> nn.Module:
    if resi_connection == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if resi_connection == "3conv":
        return nn.Sequential(
            nn.Conv2d(dim, dim // 4, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(dim // 4, dim // 4, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(dim // 4, dim, 3, 1, 1),
        )
    raise ValueError(f"resi_connection must be '1conv' or '3conv', got {resi_connection!r}")


class _Blocks(nn.Module):
    """Holder so the state_dict reads `residual_group.blocks.N`."""

    def __init__(self, blocks: list[nn.Module]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)


class ResidualGroup(nn.Module):
    """Residual state-space group: VSS blocks, a conv, plus the group input."""

    def __init__(self, dim, depth, d_state, mlp_ratio, resi_connection, is_light_sr, scan_chunk):
        super().__init__()
        self.residual_group = _Blocks(
            [VSSBlock(dim, d_state, mlp_ratio, is_light_sr, scan_chunk) for _ in range(depth)]
        )
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_run_blocks(self.residual_group.blocks, x)) + x


class _TokenNorm(nn.Module):
    """Holder so the state_dict reads `patch_embed.norm`."""

    def __init__(self, dim: int, enabled: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if enabled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return x
        return _to_nchw(self.norm(x.permute(0, 2, 3, 1)))


class MambaIR(nn.Module):
    """MambaIR. `upsampler`: "pixelshuffle" (classical SR), "pixelshuffledirect" (lightweight
    SR, with the light CAB) or "" (denoising / JPEG: same size, global residual).

    Accepted but without effect at inference: img_size, patch_size (must be 1), drop_rate,
    drop_path_rate, norm_layer, use_checkpoint. `scan_chunk` is ours: the selective scan's
    chunk length (speed only, not results; 16 was fastest at real sizes in eager PyTorch and
    ONNX Runtime, bench/bench_scan.py).
    """

    def __init__(
        self,
        img_size=64,
        patch_size=1,
        in_chans: int = 3,
        embed_dim: int = 96,
        depths=(6, 6, 6, 6),
        drop_rate: float = 0.0,
        d_state: int = 16,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        norm_layer=None,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
        scan_chunk: int = 16,
        **kwargs,
    ):
        super().__init__()
        if patch_size != 1:
            raise ValueError("MambaIR checkpoints use patch_size 1")
        if upsampler not in ("pixelshuffle", "pixelshuffledirect", ""):
            raise ValueError(f"unknown upsampler {upsampler!r}")
        self.img_range = img_range
        self.mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
        self.upscale = upscale
        self.upsampler = upsampler
        num_feat = 64
        is_light_sr = upsampler == "pixelshuffledirect"

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = _TokenNorm(embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            ResidualGroup(embed_dim, depth, d_state, mlp_ratio, resi_connection, is_light_sr, scan_chunk)
            for depth in depths
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(0.01))
            self.upsample = _pixelshuffle_upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(nn.Conv2d(embed_dim, upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(upscale))
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return _to_nchw(self.norm(x.permute(0, 2, 3, 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) * self.img_range
        if self.upsampler == "pixelshuffle":
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        elif self.upsampler == "pixelshuffledirect":
            x = self.conv_first(x)
            x = self.upsample(self.conv_after_body(self.forward_features(x)) + x)
        else:
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        return x / self.img_range + mean


def _pixelshuffle_upsample(scale: int, num_feat: int) -> nn.Sequential:
    """conv + PixelShuffle(2) per factor of two, or one conv + PixelShuffle(3)."""
    layers: list[nn.Module] = []
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            layers += [nn.Conv2d(num_feat, 4 * num_feat, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(num_feat, 9 * num_feat, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"upscale {scale} is not supported (2^n or 3)")
    return nn.Sequential(*layers)


class _Conv(nn.Module):
    """Holder so the state_dict reads `patch_embed.proj`."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.proj = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class _Resample(nn.Module):
    """conv then Pixel(Un)Shuffle(2), both without bias: `down*.body` / `up*.body`."""

    def __init__(self, channels: int, down: bool):
        super().__init__()
        if down:
            self.body = nn.Sequential(nn.Conv2d(channels, channels // 2, 3, 1, 1, bias=False), nn.PixelUnshuffle(2))
        else:
            self.body = nn.Sequential(nn.Conv2d(channels, channels * 2, 3, 1, 1, bias=False), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MambaIRUNet(nn.Module):
    """The four-level U-Net of VSS blocks used for real-image denoising (SIDD/DND).

    Channels double per level (dim, 2dim, 4dim, 8dim); the decoder's first level and the
    refinement stay at 2dim; every block has d_state 16. Output = conv(features) + input.
    H and W must be multiples of 8 (three 2x downsamplings).
    """

    def __init__(
        self,
        inp_channels: int = 3,
        out_channels: int = 3,
        dim: int = 48,
        num_blocks=(4, 6, 6, 8),
        mlp_ratio: float = 2.0,
        num_refinement_blocks: int = 4,
        drop_path_rate: float = 0.0,
        bias: bool = False,
        dual_pixel_task: bool = False,
        scan_chunk: int = 16,
    ):
        super().__init__()
        d_state = 16

        def blocks(channels: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(VSSBlock(channels, d_state, mlp_ratio, scan_chunk=scan_chunk) for _ in range(count))

        self.patch_embed = _Conv(nn.Conv2d(inp_channels, dim, 3, 1, 1, bias=False))
        self.encoder_level1 = blocks(dim, num_blocks[0])
        self.down1_2 = _Resample(dim, down=True)
        self.encoder_level2 = blocks(dim * 2, num_blocks[1])
        self.down2_3 = _Resample(dim * 2, down=True)
        self.encoder_level3 = blocks(dim * 4, num_blocks[2])
        self.down3_4 = _Resample(dim * 4, down=True)
        self.latent = blocks(dim * 8, num_blocks[3])
        self.up4_3 = _Resample(dim * 8, down=False)
        self.reduce_chan_level3 = nn.Conv2d(dim * 8, dim * 4, 1, bias=bias)
        self.decoder_level3 = blocks(dim * 4, num_blocks[2])
        self.up3_2 = _Resample(dim * 4, down=False)
        self.reduce_chan_level2 = nn.Conv2d(dim * 4, dim * 2, 1, bias=bias)
        self.decoder_level2 = blocks(dim * 2, num_blocks[1])
        self.up2_1 = _Resample(dim * 2, down=False)
        self.decoder_level1 = blocks(dim * 2, num_blocks[0])
        self.refinement = blocks(dim * 2, num_refinement_blocks)
        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(dim, dim * 2, 1, bias=bias)
        self.output = nn.Conv2d(dim * 2, out_channels, 3, 1, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shallow = self.patch_embed(x)
        enc1 = _run_blocks(self.encoder_level1, shallow)
        enc2 = _run_blocks(self.encoder_level2, self.down1_2(enc1))
        enc3 = _run_blocks(self.encoder_level3, self.down2_3(enc2))
        latent = _run_blocks(self.latent, self.down3_4(enc3))
        dec3 = self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1))
        dec3 = _run_blocks(self.decoder_level3, dec3)
        dec2 = self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1))
        dec2 = _run_blocks(self.decoder_level2, dec2)
        dec1 = _run_blocks(self.decoder_level1, torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = _run_blocks(self.refinement, dec1)
        if self.dual_pixel_task:
            return self.output(dec1 + self.skip_conv(shallow))
        return self.output(dec1) + x

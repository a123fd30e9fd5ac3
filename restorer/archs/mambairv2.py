"""MambaIRv2: attentive state-space restoration (classical SR, lightweight SR, denoising, JPEG).

Guo et al., "MambaIRv2: Attentive State Space Restoration", CVPR 2025. Written from the
paper and the published facts of the released checkpoints (tensor names and shapes,
hyperparameters, the official test-time conventions; see tests/fixtures/mambair/). The
selective scan is restorer.archs.selective_scan (plain tensor ops, CPU and ONNX friendly).

Facts that decide the numbers:
- RGB models subtract the DIV2K mean inside forward and add it back (gray models: no mean);
- the official forward pads H and W at the bottom/right to a multiple of window_size
  SYMMETRICALLY (the edge pixel repeated: it concatenates the flipped image, which is not
  F.pad's reflect), runs and crops back. Eager forward here does the same, so any size
  works; an ONNX export takes input already padded to whole windows instead (the catalog's
  pad_multiple, which the tiling engine reflect-pads to): padding inside the graph makes
  the symbolic shapes so complex that tracing takes several times longer;
- every attentive layer has a window-attention half (shifted by window_size // 2 on odd
  layers, -100 mask between regions the shift brought together) and an attentive
  state-space (ASSM) half, each with its own ConvFFN (GatedMLP in the light variant) and a
  learned per-channel scale on its input (scale1, scale2);
- ASSM routes every token to one of num_tokens prompts (route MLP, argmax), reorders the
  tokens by route id (stable: ties keep raster order), runs ONE single-direction selective
  scan with C_t + prompt, and puts the tokens back. As in the official code the prompts are
  added in RASTER order while the tokens are in sorted order;
- LayerNorm eps is 1e-5 everywhere.

Determinism: the official ASSM samples Gumbel noise before the argmax even at inference and
sorts unstably, so it has no single output. Here the route is the plain argmax (the zero-noise
limit) and the sort is stable, the convention of the conformance fixtures. Ties are broken
by sorting the unique key route_id * L + position, so any sort (eager or ONNX TopK) agrees.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from restorer.archs.hat import from_windows, relative_bias, shift_mask, to_windows, window_position_index
from restorer.archs.mambair import RGB_MEAN, _pixelshuffle_upsample, _residual_conv
from restorer.archs.selective_scan import selective_scan


def symmetric_pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad NCHW bottom/right to a multiple by mirroring with the edge pixel repeated, as the
    official forward does (it concatenates the flipped image and crops). Where the padding
    is longer than the image (the official code fails there) the rows past the mirror
    repeat the first row."""
    for axis in (2, 3):
        n = x.shape[axis]
        size = (n + multiple - 1) // multiple * multiple
        i = torch.arange(size, device=x.device)
        x = x.index_select(axis, torch.where(i < n, i, 2 * n - 1 - i).clamp(min=0))
    return x


def _nchw(x: torch.Tensor) -> torch.Tensor:
    # Contiguous NCHW: convs on channels-last views make the exporter pin the batch size.
    return x.permute(0, 3, 1, 2).contiguous()


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1)


class DepthwiseConv(nn.Module):
    """Holder so the state_dict reads `dwconv.depthwise_conv.0`: depthwise k x k conv + GELU."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, 1, (kernel_size - 1) // 2, groups=channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _nhwc(self.depthwise_conv(_nchw(x)))


class ConvFFN(nn.Module):
    """fc1, GELU, x + GELU(depthwise conv(x)), fc2. Channels last."""

    def __init__(self, dim: int, hidden: int, kernel_size: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden, kernel_size)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        return self.fc2(x + self.dwconv(x))


class Gate(nn.Module):
    """Spatial gate of GatedMLP: x1 * depthwise5x5(LayerNorm(x2)) for the halves x1 | x2."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.conv = nn.Conv2d(channels, channels, 5, 1, 2, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return x1 * _nhwc(self.conv(_nchw(self.norm(x2))))


class GatedMLP(nn.Module):
    """The light variant's feed-forward: fc1, GELU, gate, fc2 from half the width. Channels last."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.sg = Gate(hidden // 2)
        self.fc2 = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.sg(F.gelu(self.fc1(x))))


class WindowAttention(nn.Module):
    """Multi-head self-attention in windows with a relative position bias. Takes the qkv
    projection (the layer's `wqkv`) already applied: (windows, n, 3c)."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.proj = nn.Linear(dim, dim)

    def forward(self, qkv: torch.Tensor, position_index: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        bw, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        attn = attn + relative_bias(self.relative_position_bias_table, position_index).unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            attn = (attn.view(-1, n_windows, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        out = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class SelectiveScan(nn.Module):
    """One-direction Mamba scan over `dim` channels (the official Selective_Scan with K = 1).

    Parameters keep the official stacked shapes: x_proj_weight [1, R + 2N, dim],
    dt_projs_weight [1, dim, R], dt_projs_bias [1, dim], A_logs [dim, N], Ds [dim],
    with R = ceil(dim / 16).
    """

    def __init__(self, dim: int, d_state: int, scan_chunk: int = 64):
        super().__init__()
        self.d_state = d_state
        self.dt_rank = math.ceil(dim / 16)
        self.scan_chunk = scan_chunk
        r, n = self.dt_rank, d_state
        self.x_proj_weight = nn.Parameter(torch.empty(1, r + 2 * n, dim))
        self.dt_projs_weight = nn.Parameter(torch.empty(1, dim, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(1, dim))
        self.A_logs = nn.Parameter(torch.empty(dim, n))
        self.Ds = nn.Parameter(torch.empty(dim))
        self.reset_state_space()

    @torch.no_grad()
    def reset_state_space(self) -> None:
        """The usual Mamba initialisation (S4D-real A, unit D, softplus(dt bias) in [1e-3, 0.1])."""
        dim = self.Ds.shape[0]
        nn.init.uniform_(self.x_proj_weight, -dim**-0.5, dim**-0.5)
        nn.init.uniform_(self.dt_projs_weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=self.A_logs.dtype)).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """x: [B, dim, L] tokens in scan order; prompt: [B, N, L] added to C -> [B, dim, L]."""
        x_dbl = torch.matmul(self.x_proj_weight[0], x)  # [B, R + 2N, L]
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        dts = torch.matmul(self.dt_projs_weight[0], dts)  # [B, dim, L]
        return selective_scan(
            x,
            dts,
            -torch.exp(self.A_logs),
            Bs,
            Cs + prompt,
            self.Ds,
            delta_bias=self.dt_projs_bias.reshape(-1),
            delta_softplus=True,
            chunk=self.scan_chunk,
        )


def stable_argsort(keys: torch.Tensor) -> torch.Tensor:
    """Ascending order of small non-negative integer keys [B, L], ties in position order."""
    length = keys.shape[-1]
    unique = keys * length + torch.arange(length, device=keys.device)
    return torch.argsort(unique, dim=-1)


class ASSM(nn.Module):
    """Attentive state-space module. Channels last: [B, H, W, dim] -> [B, H, W, dim].

    The prompt dictionary is embeddingB [num_tokens, inner_rank] @ embeddingA [inner_rank,
    d_state]; embeddingA belongs to the layer and is passed in.
    """

    def __init__(self, dim: int, d_state: int, num_tokens: int, inner_rank: int, mlp_ratio: float, scan_chunk: int):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.selectiveScan = SelectiveScan(hidden, d_state, scan_chunk)
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = nn.Linear(hidden, dim)
        self.in_proj = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.CPE = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden))
        self.embeddingB = nn.Embedding(num_tokens, inner_rank)
        self.route = nn.Sequential(
            nn.Linear(dim, dim // 3), nn.GELU(), nn.Linear(dim // 3, num_tokens), nn.LogSoftmax(dim=-1)
        )

    def forward(self, x: torch.Tensor, embedding_a: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        prompts = self.embeddingB.weight @ embedding_a  # [num_tokens, d_state]
        route = torch.argmax(self.route(x), dim=-1).reshape(b, h * w)  # [B, L]
        prompt = F.embedding(route, prompts).transpose(1, 2)  # [B, N, L], raster order
        order = stable_argsort(route)  # sorted position -> raster position

        feat = self.in_proj(_nchw(x))
        feat = feat * torch.sigmoid(self.CPE(feat))
        hidden = feat.shape[1]
        tokens = feat.reshape(b, hidden, h * w)
        tokens = torch.gather(tokens, 2, order.unsqueeze(1).expand(b, hidden, h * w))
        y = self.selectiveScan(tokens, prompt).transpose(1, 2)  # [B, L, hidden], sorted order
        y = self.out_proj(self.out_norm(y))
        # Back to raster order: sorted token i goes to position order[i].
        raster = torch.zeros_like(y).scatter(1, order.unsqueeze(-1).expand(b, h * w, c), y)
        return raster.reshape(b, h, w, c)


class AttentiveLayer(nn.Module):
    """Window-attention half then attentive state-space half. Channels last."""

    def __init__(self, dim, d_state, num_heads, window_size, shift_size, inner_rank, num_tokens,
                 convffn_kernel_size, mlp_ratio, gated_mlp: bool, scan_chunk: int):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.scale1 = nn.Parameter(torch.full((dim,), 1e-4))
        self.scale2 = nn.Parameter(torch.full((dim,), 1e-4))
        self.wqkv = nn.Linear(dim, 3 * dim)
        self.win_mhsa = WindowAttention(dim, window_size, num_heads)
        self.assm = ASSM(dim, d_state, num_tokens, inner_rank, mlp_ratio, scan_chunk)
        hidden = int(dim * mlp_ratio)
        if gated_mlp:
            self.convffn1, self.convffn2 = GatedMLP(dim, hidden), GatedMLP(dim, hidden)
        else:
            self.convffn1 = ConvFFN(dim, hidden, convffn_kernel_size)
            self.convffn2 = ConvFFN(dim, hidden, convffn_kernel_size)
        self.embeddingA = nn.Embedding(inner_rank, d_state)

    def forward(self, x: torch.Tensor, position_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        s, ws = self.shift_size, self.window_size
        shortcut = x
        qkv = self.wqkv(self.norm1(x))
        if s:
            qkv = torch.roll(qkv, shifts=(-s, -s), dims=(1, 2))
        attn = self.win_mhsa(to_windows(qkv, ws), position_index, mask if s else None)
        attn = from_windows(attn, ws, b, h, w)
        if s:
            attn = torch.roll(attn, shifts=(s, s), dims=(1, 2))
        x_win = attn + shortcut
        x_win = self.convffn1(self.norm2(x_win)) + x_win
        x = shortcut * self.scale1 + x_win

        shortcut = x
        x_ssm = self.assm(self.norm3(x), self.embeddingA.weight) + x
        return shortcut * self.scale2 + x_ssm + self.convffn2(self.norm4(x_ssm))


class _Layers(nn.Module):
    """Holder so the state_dict reads `residual_group.layers.N`."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class ASSB(nn.Module):
    """Attentive state-space group: `depth` attentive layers (odd ones shifted), a conv, plus
    the group input. Channels last in and out."""

    def __init__(self, dim, depth, num_heads, window_size, resi_connection, gated_mlp, **layer_kwargs):
        super().__init__()
        self.residual_group = _Layers([
            AttentiveLayer(dim, num_heads=num_heads, window_size=window_size,
                           shift_size=0 if i % 2 == 0 else window_size // 2, gated_mlp=gated_mlp, **layer_kwargs)
            for i in range(depth)
        ])
        self.conv = _residual_conv(dim, resi_connection)

    def forward(self, x: torch.Tensor, position_index: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = x
        for layer in self.residual_group.layers:
            y = layer(y, position_index, mask)
        return _nhwc(self.conv(_nchw(y))) + x


class _TokenNorm(nn.Module):
    """Holder so the state_dict reads `patch_embed.norm` (patch_norm=True)."""

    def __init__(self, dim: int, enabled: bool):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if enabled else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.norm is None else self.norm(x)


class MambaIRv2(nn.Module):
    """MambaIRv2; kwargs are the official `network_g` hyperparameters.

    `upsampler`: "pixelshuffle" (classical SR), "pixelshuffledirect" (lightweight SR),
    "nearest+conv" (x4 only; no released checkpoint) or "" (denoising / JPEG: same size,
    global residual in the normalised space).
    forward: (B, in_chans, H, W) in [0, 1] -> (B, in_chans, H*upscale, W*upscale), unclamped.
    Eager: any H and W (padded to window_size symmetrically, as upstream, and cropped back).
    Exported: H and W must be multiples of window_size (padded outside).

    Accepted without effect at inference: img_size, qkv_bias (must be True), norm_layer,
    patch_size (must be 1), ape (must be False), use_checkpoint. `scan_chunk` is ours: the
    selective scan's chunk length (speed only).
    """

    gated_mlp = False  # MambaIRv2Light: GatedMLP instead of ConvFFN
    NUM_FEAT = 64

    def __init__(
        self,
        img_size=64,
        patch_size=1,
        in_chans: int = 3,
        embed_dim: int = 48,
        d_state: int = 8,
        depths=(6, 6, 6, 6),
        num_heads=(4, 4, 4, 4),
        window_size: int = 16,
        inner_rank: int = 32,
        num_tokens: int = 64,
        convffn_kernel_size: int = 5,
        mlp_ratio: float = 2.0,
        qkv_bias: bool = True,
        norm_layer=None,
        ape: bool = False,
        patch_norm: bool = True,
        use_checkpoint: bool = False,
        upscale: int = 2,
        img_range: float = 1.0,
        upsampler: str = "",
        resi_connection: str = "1conv",
        scan_chunk: int = 64,
        **kwargs,
    ):
        super().__init__()
        name = type(self).__name__
        if patch_size != 1 or ape or not qkv_bias:
            raise ValueError(f"{name}: released checkpoints use patch_size=1, ape=False, qkv_bias=True")
        if upsampler not in ("pixelshuffle", "pixelshuffledirect", "nearest+conv", ""):
            raise ValueError(f"{name}: unknown upsampler {upsampler!r}")
        if upsampler == "nearest+conv" and upscale != 4:
            raise ValueError(f"{name}: upsampler 'nearest+conv' is x4 only")
        if len(depths) != len(num_heads):
            raise ValueError(f"{name}: depths and num_heads must have the same length")
        self.window_size = window_size
        self.img_range = img_range
        self.mean = RGB_MEAN if in_chans == 3 else (0.0,)
        self.upscale = upscale if upsampler else 1
        self.upsampler = upsampler
        num_feat = self.NUM_FEAT

        # Persistent int64 buffer, present in every released state_dict.
        self.register_buffer("relative_position_index_SA", window_position_index(window_size))
        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = _TokenNorm(embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            ASSB(
                embed_dim,
                depth=depth,
                num_heads=heads,
                window_size=window_size,
                resi_connection=resi_connection,
                gated_mlp=self.gated_mlp,
                d_state=d_state,
                inner_rank=inner_rank,
                num_tokens=num_tokens,
                convffn_kernel_size=convffn_kernel_size,
                mlp_ratio=mlp_ratio,
                scan_chunk=scan_chunk,
            )
            for depth, heads in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = _residual_conv(embed_dim, resi_connection)

        if upsampler == "pixelshuffle":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.upsample = _pixelshuffle_upsample(upscale, num_feat)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        elif upsampler == "pixelshuffledirect":
            self.upsample = nn.Sequential(
                nn.Conv2d(embed_dim, upscale**2 * in_chans, 3, 1, 1), nn.PixelShuffle(upscale)
            )
        elif upsampler == "nearest+conv":
            self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU())
            self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
            self.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
        else:
            self.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """NCHW -> NCHW through the attentive state-space groups."""
        _, _, h, w = x.shape
        mask = shift_mask(h, w, self.window_size, self.window_size // 2, x)
        tokens = self.patch_embed(_nhwc(x))
        for layer in self.layers:
            tokens = layer(tokens, self.relative_position_index_SA, mask)
        return _nchw(self.norm(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ws = self.window_size
        if torch.compiler.is_exporting():
            # An export takes input already padded to whole windows (the catalog's
            # pad_multiple): stated with torch._check, every window view is exact division
            # and the symbolic shapes stay simple (tracing is several times faster).
            for axis in (2, 3):
                torch._check(x.shape[axis] % ws == 0,
                             lambda: f"{type(self).__name__}: exported input must be padded to a multiple of {ws}")
        else:
            x = symmetric_pad_to(x, ws)
        # The mean is made here, not kept as a buffer: a model built on the meta device and
        # loaded with assign=True has no tensor left behind on meta.
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) * self.img_range
        if self.upsampler == "":
            first = self.conv_first(x)
            x = x + self.conv_last(self.conv_after_body(self.forward_features(first)) + first)
        else:
            x = self.conv_first(x)
            x = self.conv_after_body(self.forward_features(x)) + x
            if self.upsampler == "pixelshuffle":
                x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
            elif self.upsampler == "pixelshuffledirect":
                x = self.upsample(x)
            else:  # nearest+conv
                x = self.conv_before_upsample(x)
                x = F.leaky_relu(self.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
                x = F.leaky_relu(self.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
                x = self.conv_last(F.leaky_relu(self.conv_hr(x), 0.2))
        x = x / self.img_range + mean
        return x[..., : h * self.upscale, : w * self.upscale]


class MambaIRv2Light(MambaIRv2):
    """MambaIRv2 for lightweight SR: the feed-forwards are GatedMLPs (no convffn_kernel_size
    effect); everything else, including the constructor, as MambaIRv2."""

    gated_mlp = True

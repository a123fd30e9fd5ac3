"""HAT: Hybrid Attention Transformer for image super-resolution.

Chen et al., "Activating More Pixels in Image Super-Resolution Transformer" (CVPR 2023) and
"HAT: Hybrid Attention Transformer for Image Restoration" (arXiv 2309.05239).

Written from the paper and the published facts of the released checkpoints (tensor names,
shapes, hyperparameters; see tests/fixtures/hat/). Facts that decide the numbers:
- the input is RGB in [0, 1]; the DIV2K mean is subtracted inside forward and added back;
- odd blocks of a group are cyclically shifted by window_size // 2 and use a -100 mask
  between regions that the shift brought together; the mask depends on the input size, so
  it is built from the runtime shape on every call (never stored);
- the overlapping cross-attention (OCAB) takes keys/values from windows of side
  window_size * (1 + overlap_ratio), zero-padded AFTER the k/v projection, and its stored
  relative position index holds negative entries that wrap around the bias table;
- LayerNorm eps is 1e-5 everywhere.

The body works channel-last (B, H, W, C) so LayerNorm and Linear act on the last axis and
every reshape is a plain view; this keeps the ONNX graph free of im2col and lets height and
width stay dynamic. `forward` expects H and W to be multiples of window_size: the tiling
engine reflect-pads to the catalog's pad_multiple and crops back, as the official test does.
"""

from __future__ import annotations

import torch
from torch import nn

# Mean RGB of DIV2K used by the official training code (a constant, not a checkpoint tensor).
RGB_MEAN = (0.4488, 0.4371, 0.4040)
MASK_VALUE = -100.0  # added to logits of pairs from different shifted regions (not -inf)
LAYER_NORM_EPS = 1e-5


def to_windows(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nH * nW, window * window, C), windows row-major, tokens row-major."""
    b, h, w, c = x.shape
    nh, nw = h // window, w // window
    x = x.view(b, nh, window, nw, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, window * window, c)


def from_windows(windows: torch.Tensor, window: int, b: int, h: int, w: int) -> torch.Tensor:
    """Inverse of to_windows."""
    c = windows.shape[-1]
    x = windows.view(b, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def window_position_index(window: int) -> torch.Tensor:
    """Row of the (2w-1)^2 bias table for every (query, key) pair of one window."""
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    y, x = ys.flatten(), xs.flatten()
    dy = y[:, None] - y[None, :] + window - 1
    dx = x[:, None] - x[None, :] + window - 1
    return dy * (2 * window - 1) + dx


def overlap_position_index(window: int, overlap_window: int) -> torch.Tensor:
    """Row of the (w+ow-1)^2 bias table for (query in a window, key in its enlarged window).

    Reproduces the released buffer exactly, negative entries included: they are meant to
    wrap around the table (Python-style indexing), so lookups take them modulo its size.
    """
    qy, qx = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ky, kx = torch.meshgrid(torch.arange(overlap_window), torch.arange(overlap_window), indexing="ij")
    offset = window - overlap_window + 1
    dy = ky.flatten()[None, :] - qy.flatten()[:, None] + offset
    dx = kx.flatten()[None, :] - qx.flatten()[:, None] + offset
    return dy * (window + overlap_window - 1) + dx


def shift_mask(h: int, w: int, window: int, shift: int, like: torch.Tensor) -> torch.Tensor:
    """(nWindows, N, N) additive mask for shifted windows, built from the runtime size.

    Each axis is cut into [0, n-window), [n-window, n-shift), [n-shift, n); a query and key
    whose region labels differ get MASK_VALUE. Tensor ops only, so H and W stay symbolic in
    an ONNX export.
    """

    def labels(n):
        i = torch.arange(n, device=like.device)
        return (i >= n - window).long() + (i >= n - shift).long()

    region = labels(h)[:, None] * 3 + labels(w)[None, :]
    region = to_windows(region[None, :, :, None], window)[..., 0]  # (nW, N)
    different = region[:, None, :] != region[:, :, None]
    return different.to(like.dtype) * MASK_VALUE


def relative_bias(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(heads, Nq, Nk) bias gathered from a (rows, heads) table; indices wrap around."""
    rows = table.shape[0]
    flat = torch.remainder(index.reshape(-1), rows)
    return table[flat].view(index.shape[0], index.shape[1], -1).permute(2, 0, 1)


def _shift_blocks(x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """Move blocks one place along `dim`: step 1 gives block i what block i-1 held, step -1
    what block i+1 held; the block left empty at the edge is zeros (outside the image)."""
    zeros = torch.zeros_like(x.narrow(dim, 0, 1))
    if step > 0:
        return torch.cat([zeros, x.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)
    return torch.cat([x.narrow(dim, 1, x.shape[dim] - 1), zeros], dim=dim)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation: global mean -> 1x1 down -> ReLU -> 1x1 up -> sigmoid gate."""

    def __init__(self, channels: int, squeeze_factor: int):
        super().__init__()
        hidden = channels // squeeze_factor
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        return x * self.attention(x)


class ChannelAttentionBlock(nn.Module):
    """CAB: conv 3x3 down by compress_ratio, GELU, conv 3x3 back up, channel attention."""

    def __init__(self, channels: int, compress_ratio: int, squeeze_factor: int):
        super().__init__()
        hidden = channels // compress_ratio
        self.cab = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, 1, 1),
            nn.GELU(),
            nn.Conv2d(hidden, channels, 3, 1, 1),
            ChannelAttention(channels, squeeze_factor),
        )

    def forward(self, x):
        return self.cab(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside window x window windows with a relative position bias."""

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows, position_index, mask=None):
        bw, n, c = windows.shape
        qkv = self.qkv(windows).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = q @ k.transpose(-2, -1)
        attn = attn + relative_bias(self.relative_position_bias_table, position_index).unsqueeze(0)
        if mask is not None:
            n_windows = mask.shape[0]
            attn = attn.view(-1, n_windows, self.heads, n, n) + mask[None, :, None]
            attn = attn.view(bw, self.heads, n, n)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
        return self.proj(out)


class HAB(nn.Module):
    """Hybrid attention block: (shifted) window attention + scaled CAB in parallel, then MLP."""

    def __init__(self, dim, heads, window, shift, compress_ratio, squeeze_factor, conv_scale, mlp_ratio):
        super().__init__()
        self.window = window
        self.shift = shift
        self.conv_scale = conv_scale
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = WindowAttention(dim, window, heads)
        self.conv_block = ChannelAttentionBlock(dim, compress_ratio, squeeze_factor)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, position_index, mask):
        b, h, w, c = x.shape
        y = self.norm1(x)
        conv = self.conv_block(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(to_windows(y, self.window), position_index, mask if self.shift else None)
        attn = from_windows(windows, self.window, b, h, w)
        if self.shift:
            attn = torch.roll(attn, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + attn + conv * self.conv_scale
        return x + self.mlp(self.norm2(x))


class OCAB(nn.Module):
    """Overlapping cross-attention: queries from windows, keys/values from enlarged windows."""

    def __init__(self, dim, heads, window, overlap_ratio, mlp_ratio):
        super().__init__()
        self.heads = heads
        self.window = window
        self.overlap_window = window + int(window * overlap_ratio)
        self.pad = (self.overlap_window - window) // 2
        self.scale = (dim // heads) ** -0.5
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.qkv = nn.Linear(dim, dim * 3)
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((window + self.overlap_window - 1) ** 2, heads)
        )
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def enlarged_windows(self, kv: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B * nH * nW, ow * ow, C): the overlap_window-sided windows that
        share a centre with each query window, zero outside the image.

        Equivalent to unfold(kernel ow, stride w, padding (ow-w)/2), built from views and
        concatenations instead (ONNX has no im2col): every window block gets the last `pad`
        rows of the block above and the first `pad` rows of the block below (zeros at the
        image border), then the same for columns.
        """
        b, h, w, c = kv.shape
        win, pad = self.window, self.pad
        blocks = kv.view(b, h // win, win, w // win, win, c)
        above, below = _shift_blocks(blocks[:, :, -pad:], 1, 1), _shift_blocks(blocks[:, :, :pad], 1, -1)
        blocks = torch.cat([above, blocks, below], dim=2)
        left, right = _shift_blocks(blocks[..., -pad:, :], 3, 1), _shift_blocks(blocks[..., :pad, :], 3, -1)
        blocks = torch.cat([left, blocks, right], dim=4)
        return blocks.permute(0, 1, 3, 2, 4, 5).reshape(-1, self.overlap_window**2, c)

    def forward(self, x, position_index):
        b, h, w, c = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm1(x))
        q = to_windows(qkv[..., :c], self.window)
        kv = self.enlarged_windows(qkv[..., c:])  # zero padding after the projection
        k, v = kv[..., :c], kv[..., c:]
        bw, nq, nk = q.shape[0], q.shape[1], k.shape[1]
        q = q.reshape(bw, nq, self.heads, d).transpose(1, 2) * self.scale
        k = k.reshape(bw, nk, self.heads, d).transpose(1, 2)
        v = v.reshape(bw, nk, self.heads, d).transpose(1, 2)
        attn = q @ k.transpose(-2, -1)
        attn = attn + relative_bias(self.relative_position_bias_table, position_index).unsqueeze(0)
        attn = attn.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(bw, nq, c)
        x = x + self.proj(from_windows(out, self.window, b, h, w))
        return x + self.mlp(self.norm2(x))


class AttentionBlocks(nn.Module):
    """The attention part of a residual group: `depth` HABs then one OCAB."""

    def __init__(self, dim, depth, heads, window, compress_ratio, squeeze_factor, conv_scale,
                 overlap_ratio, mlp_ratio):
        super().__init__()
        self.blocks = nn.ModuleList(
            HAB(dim, heads, window, 0 if j % 2 == 0 else window // 2, compress_ratio,
                squeeze_factor, conv_scale, mlp_ratio)
            for j in range(depth)
        )
        self.overlap_attn = OCAB(dim, heads, window, overlap_ratio, mlp_ratio)

    def forward(self, x, window_index, overlap_index, mask):
        for block in self.blocks:
            x = block(x, window_index, mask)
        return self.overlap_attn(x, overlap_index)


class RHAG(nn.Module):
    """Residual hybrid attention group: attention blocks, a 3x3 conv, plus the group input."""

    def __init__(self, dim, **kwargs):
        super().__init__()
        self.residual_group = AttentionBlocks(dim, **kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, window_index, overlap_index, mask):
        y = self.residual_group(x, window_index, overlap_index, mask)
        return x + self.conv(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Holds the LayerNorm applied to the tokens after conv_first (patch size 1)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x):
        return self.norm(x)


def pixelshuffle_upsampler(scale: int, features: int) -> nn.Sequential:
    """[conv 3x3 -> PixelShuffle(2)] per factor of 2, or one conv -> PixelShuffle(3)."""
    layers: list[nn.Module] = []
    if scale in (2, 4, 8):
        for _ in range(scale.bit_length() - 1):
            layers += [nn.Conv2d(features, 4 * features, 3, 1, 1), nn.PixelShuffle(2)]
    elif scale == 3:
        layers += [nn.Conv2d(features, 9 * features, 3, 1, 1), nn.PixelShuffle(3)]
    else:
        raise ValueError(f"HAT: upscale must be 2, 3, 4 or 8, got {scale}")
    return nn.Sequential(*layers)


class HAT(nn.Module):
    """HAT super-resolution network; kwargs are the official `network_g` hyperparameters.

    forward: (B, in_chans, H, W) in [0, 1], H and W multiples of window_size ->
    (B, in_chans, H*upscale, W*upscale), unclamped.
    """

    UPSAMPLE_FEATURES = 64  # fixed in the released design, independent of embed_dim

    def __init__(
        self,
        upscale: int = 4,
        in_chans: int = 3,
        img_size: int = 64,
        window_size: int = 16,
        compress_ratio: int = 3,
        squeeze_factor: int = 30,
        conv_scale: float = 0.01,
        overlap_ratio: float = 0.5,
        img_range: float = 1.0,
        depths=(6, 6, 6, 6, 6, 6),
        embed_dim: int = 180,
        num_heads=(6, 6, 6, 6, 6, 6),
        mlp_ratio: float = 2.0,
        upsampler: str = "pixelshuffle",
        resi_connection: str = "1conv",
    ):
        super().__init__()
        if upsampler != "pixelshuffle":
            raise ValueError(f"HAT: only upsampler='pixelshuffle' is released, got {upsampler!r}")
        if resi_connection != "1conv":
            raise ValueError(f"HAT: only resi_connection='1conv' is released, got {resi_connection!r}")
        if img_size <= window_size:
            # The official code then shrinks the window and drops the shift; no release does this.
            raise ValueError(f"HAT: img_size ({img_size}) must exceed window_size ({window_size})")
        if int(window_size * overlap_ratio) % 2:
            raise ValueError("HAT: window_size * overlap_ratio must be even (centred key windows)")
        self.upscale = upscale
        self.window_size = window_size
        self.img_range = img_range
        self.rgb_mean = RGB_MEAN if in_chans == 3 else (0.0,) * in_chans
        overlap_window = window_size + int(window_size * overlap_ratio)

        # Persistent int64 buffers, present in every released state_dict.
        self.register_buffer("relative_position_index_SA", window_position_index(window_size))
        self.register_buffer(
            "relative_position_index_OCA", overlap_position_index(window_size, overlap_window)
        )

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim)
        self.layers = nn.ModuleList(
            RHAG(
                embed_dim,
                depth=depth,
                heads=heads,
                window=window_size,
                compress_ratio=compress_ratio,
                squeeze_factor=squeeze_factor,
                conv_scale=conv_scale,
                overlap_ratio=overlap_ratio,
                mlp_ratio=mlp_ratio,
            )
            for depth, heads in zip(depths, num_heads)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        features = self.UPSAMPLE_FEATURES
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, features, 3, 1, 1), nn.LeakyReLU())
        self.upsample = pixelshuffle_upsampler(upscale, features)
        self.conv_last = nn.Conv2d(features, in_chans, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The mean is made here, not kept as a buffer: a model built on the meta device and
        # loaded with assign=True has no tensor left behind on meta.
        mean = torch.tensor(self.rgb_mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) * self.img_range
        # H and W must be whole windows. Stated with torch._check, an export also learns it:
        # every window view becomes exact division, which keeps dynamic-shape tracing fast.
        ws = self.window_size
        for axis in (2, 3):
            torch._check(
                x.shape[axis] % ws == 0,
                lambda: f"HAT: input {tuple(x.shape)} must be padded to a multiple of {ws}",
            )
        x = self.conv_first(x)
        _, _, h, w = x.shape
        mask = shift_mask(h, w, self.window_size, self.window_size // 2, x)
        tokens = self.patch_embed(x.permute(0, 2, 3, 1))
        for layer in self.layers:
            tokens = layer(tokens, self.relative_position_index_SA, self.relative_position_index_OCA, mask)
        body = self.norm(tokens).permute(0, 3, 1, 2)
        x = self.conv_after_body(body) + x
        x = self.conv_last(self.upsample(self.conv_before_upsample(x)))
        return x / self.img_range + mean

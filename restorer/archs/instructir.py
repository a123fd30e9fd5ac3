"""InstructIR (Conde et al., "InstructIR: High-Quality Image Restoration Following Human
Instructions", ECCV 2024): a NAFNet U-Net whose encoder and decoder stages are modulated by
an instruction embedding.

Two released networks, two classes:
- `InstructIR`, the image model: forward(image, embedding), where `embedding` is the
  already-projected, unit-norm instruction feature ([B, txtdim], 256 for the release).
- `LanguageHead` (catalog arch "InstructIRLMHead"): projects the 384-d sentence embedding of
  the prompt to that feature (Linear, then L2 norm) and classifies the degradation
  (Linear on the projected feature). It returns (embedding, logits).

The sentence encoder in front of the head (a BERT) lives in restorer.archs.bert and, torch-free,
in restorer.pipelines.text_encoder.

The official forward zero-pads the image on the right/bottom to a multiple of
2 ** len(enc_blk_nums) and crops the output back; this module does the same inside forward,
so the catalog's pad_multiple stays 1 (a reflect pad outside would change the result).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from restorer.archs.layers import LayerNorm2d, simple_gate
from restorer.pipelines.text_encoder import DEGRADATION_CLASSES  # noqa: F401  (re-exported; defined torch-free)


class NAFBlock(nn.Module):
    """NAFNet block: a gated depthwise-conv branch with simplified channel attention, then a
    gated 1x1 feed-forward branch, each added back with a learned per-channel scale."""

    def __init__(self, channels: int):
        super().__init__()
        wide = channels * 2
        self.norm1 = LayerNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, wide, 1)
        self.conv2 = nn.Conv2d(wide, wide, 3, padding=1, groups=wide)
        # Index 1 holds the conv so that the tensor names are sca.1.*, as released.
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(wide // 2, wide // 2, 1))
        self.conv3 = nn.Conv2d(wide // 2, channels, 1)
        self.norm2 = LayerNorm2d(channels)
        self.conv4 = nn.Conv2d(channels, wide, 1)
        self.conv5 = nn.Conv2d(wide // 2, channels, 1)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = simple_gate(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(simple_gate(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class InstructionBlock(nn.Module):
    """Instruction Condition Block: scale/shift the features, gate each channel by a sigmoid
    of a linear map of the instruction, refine with a NAFBlock, add the input back."""

    def __init__(self, channels: int, txtdim: int):
        super().__init__()
        self.fc = nn.Linear(txtdim, channels)
        self.block = NAFBlock(channels)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc(embedding))[:, :, None, None]
        f = (x * self.gamma + self.beta) * gate
        return self.block(f) + x


class InstructIR(nn.Module):
    """The image model. Constructor names are the official ones; the release uses
    width=32, enc_blk_nums=[2, 2, 4, 8], middle_blk_num=4, dec_blk_nums=[2, 2, 2, 2], txtdim=256."""

    def __init__(
        self,
        img_channel: int = 3,
        width: int = 16,
        middle_blk_num: int = 1,
        enc_blk_nums: list[int] | tuple[int, ...] = (),
        dec_blk_nums: list[int] | tuple[int, ...] = (),
        txtdim: int = 768,
    ):
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, 3, padding=1)
        self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
        self.encoders = nn.ModuleList()
        self.enc_cond = nn.ModuleList()
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.dec_cond = nn.ModuleList()

        channels = width
        for count in enc_blk_nums:
            self.encoders.append(nn.Sequential(*[NAFBlock(channels) for _ in range(count)]))
            self.enc_cond.append(InstructionBlock(channels, txtdim))
            self.downs.append(nn.Conv2d(channels, channels * 2, 2, stride=2))
            channels *= 2
        self.middle_blks = nn.Sequential(*[NAFBlock(channels) for _ in range(middle_blk_num)])
        for count in dec_blk_nums:
            self.ups.append(nn.Sequential(nn.Conv2d(channels, channels * 2, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.Sequential(*[NAFBlock(channels) for _ in range(count)]))
            self.dec_cond.append(InstructionBlock(channels, txtdim))
        self.pad_multiple = 2 ** len(enc_blk_nums)

    def forward(self, image: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """image [B, C, H, W] in [0, 1], embedding [B, txtdim] -> [B, C, H, W] (not clamped)."""
        height, width = image.shape[-2:]
        # Zero pad right/bottom to the next multiple (written as a ceiling, which keeps the
        # exporter's symbolic shapes simple: every level's size stays an exact multiple).
        m = self.pad_multiple
        padded_h = (height + m - 1) // m * m
        padded_w = (width + m - 1) // m * m
        inp = F.pad(image, (0, padded_w - width, 0, padded_h - height))

        x = self.intro(inp)
        skips = []
        for encoder, condition, down in zip(self.encoders, self.enc_cond, self.downs):
            x = condition(encoder(x), embedding)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for up, decoder, condition, skip in zip(self.ups, self.decoders, self.dec_cond, reversed(skips)):
            x = condition(decoder(up(x) + skip), embedding)
        x = self.ending(x) + inp
        return x[:, :, :height, :width]


class LanguageHead(nn.Module):
    """The text head released as lm_instructir-7d.pt (official class LMHead).

    forward(sentence_embedding [B, embedding_dim]) -> (embedding [B, hidden_dim], unit norm,
    the image model's conditioning; logits [B, num_classes], the degradation classifier).
    There is no activation between fc1 and the normalisation.
    """

    def __init__(self, embedding_dim: int = 384, hidden_dim: int = 256, num_classes: int = 4):
        super().__init__()
        self.fc1 = nn.Linear(embedding_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, num_classes)

    def forward(self, sentence_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        embedding = F.normalize(self.fc1(sentence_embedding), p=2.0, dim=1, eps=1e-12)
        return embedding, self.fc2(embedding)


def example_inputs(hparams: dict, tile: int) -> dict[str, torch.Tensor]:
    """Inputs to export and check the image model with (restorer.convert.export): an image in
    [0, 1], `tile` pixels square, and a unit-norm instruction embedding [1, txtdim]."""
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, hparams.get("img_channel", 3), tile, tile, generator=generator)
    embedding = F.normalize(torch.randn(1, hparams.get("txtdim", 768), generator=generator), dim=1)
    return {"image": image, "embedding": embedding}


def load_language_head(path: str | Path) -> LanguageHead:
    """The released head file (a bare state dict, torch zip format) as a LanguageHead, strictly.

    Its tensors are tagged cuda:2, so they are mapped to the CPU; sizes come from the tensors.
    """
    weights = torch.load(Path(path), map_location="cpu", weights_only=True)
    hidden_dim, embedding_dim = weights["fc1.weight"].shape
    num_classes = weights["fc2.weight"].shape[0]
    head = LanguageHead(embedding_dim=embedding_dim, hidden_dim=hidden_dim, num_classes=num_classes)
    head.load_state_dict(weights, strict=True)
    return head.eval()


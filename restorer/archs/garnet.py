"""GaRNet: scene-text removal with gated attention inside given text boxes.

Lee and Choi, "The Surprisingly Straightforward Scene Text Removal Method With Gated
Attention and Region of Interest Generation: A Comprehensive Prominent Model Analysis"
(ECCV 2022). Released generator: 12,399,909 float32 parameters, no buffers, no
normalisation layers (train and eval mode compute the same thing).

Written from the paper and the published facts of the released checkpoint (tensor names and
shapes, see tests/fixtures/garnet/). Conventions of `forward(image, mask)`:
- `image` is N x 3 x H x W RGB in [-1, 1] (the official code feeds `img / 127.5 - 1`);
- `mask` is N x 1 x H x W with 1.0 where text is to be removed and 0.0 elsewhere: filled
  text-box polygons (the whole quadrilateral, not the strokes), not soft;
- H and W must be multiples of 32 (the total stride);
- the result is the restored image in [-1, 1] up to the ELU floor (>= -1, may exceed 1);
  the official code composites `(1 - mask) * image + mask * result` afterwards, which is
  the caller's job (restorer.pipelines.text_removal).

Facts that decide the numbers:
- the mask branch is a pyramid of fixed 1-channel box filters (stored in the checkpoint,
  so they are loaded, not hard-coded); each level is divided by (its max + 1e-6). The
  official code takes that max over the whole batch, which makes a sample's result depend
  on the other samples; here it is taken per sample, identical for a batch of one (the
  official test setting) and independent of batching otherwise;
- every encoder block gates its residual with sigmoid(alpha * conv7(x) + beta * conv7'(x))
  over [channel mean, channel max, mask level], alpha and beta being learnt scalars;
- lateral connections are 1x1 -> 3x3 -> 3x3 at ceil(c / 2) channels, then 1x1 back to c;
- the decoder upsamples with 4x4 stride-2 transposed convs, each followed by ELU, adds the
  lateral features and applies a further ELU; the first upsampling starts from only two
  channels (`layer6`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PAD_MULTIPLE = 32  # total stride of the encoder
MAX_EPS = 1e-6  # added to each mask-pyramid level's max before dividing


def _normalise_by_max(x: torch.Tensor) -> torch.Tensor:
    """x / (max over C, H, W of each sample + eps)."""
    return x / (x.amax(dim=(1, 2, 3), keepdim=True) + MAX_EPS)


def _box_filters(count: int, stride_first: int = 1) -> nn.Sequential:
    """`count` bias-free 1-channel 3x3 convs; the first may have stride 2."""
    layers = []
    for i in range(count):
        stride = stride_first if i == 0 else 1
        layers.append(nn.Conv2d(1, 1, 3, stride=stride, padding=1, bias=False))
    return nn.Sequential(*layers)


class MaskPyramid(nn.Module):
    """The box mask at strides 4, 8, 16 and 32, blurred by fixed box filters."""

    def __init__(self):
        super().__init__()
        self.initial = nn.Sequential(nn.Conv2d(1, 1, 4, stride=2, padding=1, bias=False))
        self.layer1_out = _box_filters(2)
        self.layer2_in = _box_filters(2)
        self.layer2_out = _box_filters(2, stride_first=2)
        self.layer3_in = _box_filters(2)
        self.layer3_out = _box_filters(2, stride_first=2)
        self.layer4_in = _box_filters(2)
        self.layer4_out = _box_filters(2, stride_first=2)
        self.layer5 = _box_filters(2)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                k = conv.weight.shape[-1]
                with torch.no_grad():
                    conv.weight.fill_(1.0 / (k * k))
                conv.weight.requires_grad_(False)

    def forward(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """The eight levels the encoder blocks consume, in block order."""
        x = _normalise_by_max(self.initial(mask))
        in1 = _normalise_by_max(F.max_pool2d(x, 2, 2))
        out1 = _normalise_by_max(self.layer1_out(in1))
        in2 = _normalise_by_max(self.layer2_in(out1))
        out2 = _normalise_by_max(self.layer2_out(in2))
        in3 = _normalise_by_max(self.layer3_in(out2))
        out3 = _normalise_by_max(self.layer3_out(in3))
        in4 = _normalise_by_max(self.layer4_in(out3))
        out4 = _normalise_by_max(self.layer4_out(in4))
        out5 = _normalise_by_max(self.layer5(out4))
        return [out1, in2, out2, in3, out3, in4, out4, out5]


class GateAttention(nn.Module):
    """Spatial gate from [mean over channels, max over channels, mask level]."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.beta = nn.Parameter(torch.tensor(0.5))
        self.conv = nn.Conv2d(3, 1, 7, padding=3, bias=False)  # stroke
        self.conv2 = nn.Conv2d(3, 1, 7, padding=3, bias=False)  # surround

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True), mask], dim=1)
        stroke = self.conv(pooled)
        surround = self.conv2(pooled)
        gate = torch.sigmoid(self.alpha * stroke + self.beta * surround)
        return gate, torch.sigmoid(stroke), torch.sigmoid(surround)


class GatedResidual(nn.Module):
    """conv3-ReLU-conv3, gated by the mask-guided attention, plus the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.att_layer = GateAttention()
        # A stride-2 block projects its shortcut; others add the input as it is.
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1, stride=2) if downsample else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        out = self.conv2(F.relu(self.conv1(x)))
        gate, stroke, surround = self.att_layer(out, mask)
        shortcut = self.conv3(x) if self.conv3 is not None else x
        return F.relu(out * gate + shortcut), gate, stroke, surround


class LateralBlock(nn.Module):
    """1x1 down to ceil(c / 2) channels, then two 3x3 convs (no activations)."""

    def __init__(self, channels: int):
        super().__init__()
        half = math.ceil(channels / 2)
        self.model = nn.Sequential(
            nn.Conv2d(channels, half, 1),
            nn.Conv2d(half, half, 3, padding=1),
            nn.Conv2d(half, half, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _lateral(channels: int) -> nn.Sequential:
    return nn.Sequential(LateralBlock(channels), nn.Conv2d(math.ceil(channels / 2), channels, 1))


def _up(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1), nn.ELU())


class GaRNet(nn.Module):
    """The released generator. `in_channels` is the official constructor argument (RGB: 3);
    `ndf` is a constant inside the official constructor (64), a keyword here so reduced
    copies (the tiny test fixture uses 8) can be built."""

    def __init__(self, in_channels: int = 3, ndf: int = 64):
        super().__init__()
        self.mask_branch = MaskPyramid()
        self.layer1 = nn.Conv2d(in_channels + 1, ndf, 4, stride=2, padding=1)
        self.layer1_lc = _lateral(ndf)
        self.layer1_block = GatedResidual(ndf, ndf)
        self.layer2 = GatedResidual(ndf, ndf)
        self.layer2_lc = _lateral(ndf)
        self.layer2_block = GatedResidual(ndf, ndf * 2, downsample=True)
        self.layer3 = GatedResidual(ndf * 2, ndf * 2)
        self.layer3_lc = _lateral(ndf * 2)
        self.layer3_block = GatedResidual(ndf * 2, ndf * 4, downsample=True)
        self.layer4 = GatedResidual(ndf * 4, ndf * 4)
        self.layer4_lc = _lateral(ndf * 4)
        self.layer4_block = GatedResidual(ndf * 4, ndf * 8, downsample=True)
        self.layer5 = GatedResidual(ndf * 8, ndf * 8)
        self.layer6 = nn.Conv2d(ndf * 8, 2, 1)
        self.uplayer1 = _up(2, ndf * 4)
        self.uplayer2 = _up(ndf * 4, ndf * 2)
        self.uplayer3 = _up(ndf * 2, ndf)
        self.convs_1 = nn.Conv2d(ndf, in_channels, 1, bias=False)
        self.uplayer4 = _up(ndf, ndf)
        self.convs_2 = nn.Conv2d(ndf, in_channels, 1, bias=False)
        self.uplayer5 = _up(ndf, in_channels)

    def forward_all(self, image: torch.Tensor, mask: torch.Tensor) -> dict[str, object]:
        """Every output of the official forward, by name (for conformance checks)."""
        levels = self.mask_branch(mask)
        x = self.layer1(torch.cat([image, mask], dim=1))
        lateral1 = self.layer1_lc(x)
        x = F.max_pool2d(x, 2, 2)

        blocks = [
            (self.layer1_block, None),
            (self.layer2, self.layer2_lc),
            (self.layer2_block, None),
            (self.layer3, self.layer3_lc),
            (self.layer3_block, None),
            (self.layer4, self.layer4_lc),
            (self.layer4_block, None),
            (self.layer5, None),
        ]
        laterals = [lateral1]
        gates, strokes, surrounds = [], [], []
        for (block, lateral), level in zip(blocks, levels):
            x, gate, stroke, surround = block(x, level)
            gates.append(gate)
            strokes.append(stroke)
            surrounds.append(surround)
            if lateral is not None:
                laterals.append(lateral(x))

        x = self.layer6(x)
        up1 = F.elu(laterals[3] + self.uplayer1(x))
        up2 = F.elu(laterals[2] + self.uplayer2(up1))
        up3 = F.elu(laterals[1] + self.uplayer3(up2))
        up4 = F.elu(laterals[0] + self.uplayer4(up3))
        return {
            "output": self.uplayer5(up4),
            "up3_o": self.convs_1(up3),
            "up4_o": self.convs_2(up4),
            "mask_pyramid": levels,
            "gate": gates,
            "att_stroke": strokes,
            "att_surround": surrounds,
        }

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image N x 3 x H x W in [-1, 1], mask N x 1 x H x W (1 = text) -> N x 3 x H x W."""
        # Only the restored image is computed here: the side outputs (convs_1, convs_2)
        # are training losses' targets and stay out of the exported graph.
        levels = self.mask_branch(mask)
        x = self.layer1(torch.cat([image, mask], dim=1))
        lateral1 = self.layer1_lc(x)
        x = F.max_pool2d(x, 2, 2)
        x = self.layer1_block(x, levels[0])[0]
        x = self.layer2(x, levels[1])[0]
        lateral2 = self.layer2_lc(x)
        x = self.layer2_block(x, levels[2])[0]
        x = self.layer3(x, levels[3])[0]
        lateral3 = self.layer3_lc(x)
        x = self.layer3_block(x, levels[4])[0]
        x = self.layer4(x, levels[5])[0]
        lateral4 = self.layer4_lc(x)
        x = self.layer4_block(x, levels[6])[0]
        x = self.layer5(x, levels[7])[0]
        x = self.layer6(x)
        x = F.elu(lateral4 + self.uplayer1(x))
        x = F.elu(lateral3 + self.uplayer2(x))
        x = F.elu(lateral2 + self.uplayer3(x))
        x = F.elu(lateral1 + self.uplayer4(x))
        return self.uplayer5(x)



def example_inputs(hparams: dict, tile: int) -> dict[str, torch.Tensor]:
    """Inputs to export and check the network with (restorer.convert.export): an image in [-1, 1]
    and a box mask with two filled text lines, `tile` pixels square (made a multiple of 32)."""
    side = max(PAD_MULTIPLE, tile - tile % PAD_MULTIPLE)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, hparams.get("in_channels", 3), side, side, generator=generator) * 2 - 1
    mask = torch.zeros(1, 1, side, side)
    mask[:, :, side // 4 : side // 2, side // 8 : side - side // 8] = 1.0
    mask[:, :, side * 5 // 8 : side * 3 // 4, side // 4 : side // 2] = 1.0
    return {"image": image, "mask": mask}

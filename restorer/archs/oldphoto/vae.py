"""The Global-restoration VAEs of "Bringing Old Photos Back to Life" (GlobalGenerator_DCDCv2).

Two VAEs with the same shapes are released: VAE_A (old photos; only its encoder runs at
test time) and VAE_B (clean photos; only its decoder runs). The pipeline therefore needs
the two halves as separate graphs: restorer.archs.ARCHS declares them as export parts (plain
nn.Sequential modules taking one NCHW tensor), or call `encode` / `decode`.

With the released options (ngf 64, mc 64, k_size 4, n_downsample_global 3, start_r 1,
spatio_size 64) there are only two stride-2 steps: the latent is 64 x H/4 x W/4, and the
input's H and W must be multiples of 4.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ResnetBlock, norm_layer


class GlobalVAE(nn.Module):
    """Encoder and decoder of GlobalGenerator_DCDCv2; input and output RGB in [-1, 1]."""

    def __init__(
        self,
        input_nc: int = 3,
        output_nc: int = 3,
        ngf: int = 64,
        k_size: int = 4,
        n_downsample_global: int = 3,
        mc: int = 64,
        start_r: int = 1,
        spatio_size: int = 64,
        feat_dim: int = -1,
        norm: str = "instance",
        padding_type: str = "reflect",
        use_segmentation_model: bool = False,
    ):
        super().__init__()
        n = n_downsample_global

        def width(mult: float) -> int:
            return min(int(ngf * mult), mc)

        def block(channels: int) -> ResnetBlock:
            return ResnetBlock(channels, padding_type, norm)

        def down(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, k_size, stride=2, padding=1), norm_layer(norm, cout), nn.ReLU(True)]

        # k_size 3 needs output_padding 1 to double the size; the released k_size 4 needs none.
        output_padding = 0 if k_size == 4 else 1

        def up(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.ConvTranspose2d(cin, cout, k_size, stride=2, padding=1, output_padding=output_padding),
                norm_layer(norm, cout),
                nn.ReLU(True),
            ]

        enc: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(input_nc, width(1), 7),
            norm_layer(norm, width(1)),
            nn.ReLU(True),
        ]
        for i in range(start_r):
            enc += down(width(2**i), width(2 ** (i + 1)))
        for i in range(start_r, n - 1):
            enc += down(width(2**i), width(2 ** (i + 1)))
            enc += [block(width(2 ** (i + 1))), block(width(2 ** (i + 1)))]
        deepest = width(2**n)
        if spatio_size == 32:
            # a third stride-2 step (not used by the released checkpoints)
            enc += down(width(2 ** (n - 1)), deepest)
        if spatio_size == 64:
            enc += [block(deepest)]
        enc += [block(deepest)]
        if feat_dim > 0:
            enc += [nn.Conv2d(deepest, feat_dim, 1, 1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = []
        if feat_dim > 0:
            dec += [nn.Conv2d(feat_dim, deepest, 1, 1)]
        dec += [block(width(2**n))]
        if spatio_size == 32:
            dec += up(width(2**n), width(2 ** (n - 1)))
        if spatio_size == 64:
            dec += [block(width(2**n))]
        for i in range(1, n - start_r):
            mult = 2 ** (n - i)
            dec += [block(width(mult)), block(width(mult))]
            dec += up(width(mult), width(mult / 2))
        for i in range(n - start_r, n):
            mult = 2 ** (n - i)
            dec += up(width(mult), width(mult / 2))
        dec += [nn.ReflectionPad2d(3), nn.Conv2d(width(1), output_nc, 7)]
        if not use_segmentation_model:
            dec += [nn.Tanh()]
        self.decoder = nn.Sequential(*dec)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """RGB [-1, 1] (H, W multiples of 4) -> latent 64 x H/4 x W/4."""
        return self.encoder(image)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent -> RGB in [-1, 1] (tanh)."""
        return self.decoder(latent)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(image))


# The sub-graphs restorer.convert.export writes on their own (onnx/<id>.<part>.<precision>.onnx):
# the pipeline runs VAE_A's encoder and VAE_B's decoder, never a whole VAE.



def example_inputs(hparams: dict, tile: int, part: str | None = None) -> dict[str, torch.Tensor]:
    """Inputs to export and check a VAE (or its `part`) with (restorer.convert.export): an RGB
    image in [-1, 1], `tile` pixels square (rounded to the latent's stride), or for the
    decoder a latent of the encoder's shape for that image."""
    import inspect

    o = {**{k: v.default for k, v in inspect.signature(GlobalVAE).parameters.items()}, **hparams}
    steps = o["start_r"] + max(0, o["n_downsample_global"] - 1 - o["start_r"]) + (o["spatio_size"] == 32)
    stride = 2**steps
    side = max(stride, tile - tile % stride)
    generator = torch.Generator().manual_seed(0)
    if part == "decoder":
        channels = o["feat_dim"] if o["feat_dim"] > 0 else min(o["ngf"] * 2 ** o["n_downsample_global"], o["mc"])
        return {"input": torch.randn(1, channels, side // stride, side // stride, generator=generator)}
    image = torch.rand(1, o["input_nc"], side, side, generator=generator) * 2 - 1
    return {"input" if part == "encoder" else "image": image}

"""What a network needs from the engine around it, as one typed record.

The tiling engine, the runners and the exporter read this and nothing else: no
`spec.extra` keys, no attributes patched onto runner objects. A family declares its
defaults in restorer.archs.ARCHS; a catalog entry adds what belongs to one checkpoint
(its scale, channels, value range); a built-in operator declares its own.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class Requirements:
    scale: int = 1  # output size / input size of a restore (a pre-upscaling network counts its upscale)
    channels: int = 3  # 3 (RGB) or 1 (gray); the engine converts the image to match
    pad_multiple: int = 1  # input H and W are reflect-padded to a multiple of this
    tile_multiple: int = 1  # every tile a multiple of this (CGNet: its own zero padding must not land inside)
    min_size: int = 1  # the smallest side the network accepts; smaller images are padded up to it
    fixed_tile: int | None = None  # a fixed-size export: every tile exactly this (padded up)
    overlap: int = 16  # context pixels (input scale) each tile needs on every side
    preferred_tile: int | None = None  # None: as large as memory allows
    whole_image: bool = False  # global statistics: never tile
    # The output depends on statistics of the whole tile (global pools, scans across it): its
    # tiles stay as large as allowed instead of shrinking to fit the image.
    whole_tile_statistics: bool = False
    bytes_per_pixel: int = 40_000  # rough activation memory per input pixel, for the automatic tile size
    input_range: tuple[float, float] = (0.0, 1.0)  # the network's value range (images travel in [0, 1])
    output_range: tuple[float, float] = (0.0, 1.0)
    pre_upscale: int = 1  # >1: the network restores a bicubic-upscaled input (MIRNet real SR)
    extra_inputs: tuple[str, ...] = ()  # network inputs beyond the image (a text embedding, a mask)
    precisions: tuple[str, ...] = ("fp32",)  # precisions known to keep parity with fp32
    export_parts: tuple[str, ...] = ()  # sub-graphs exported and run on their own (a VAE's halves)

    def with_(self, **changes) -> "Requirements":
        """A copy with some fields changed (unknown names are an error)."""
        return replace(self, **changes)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def min_side(self) -> int:
        """The smallest side an input may have once padded: the minimum, the multiple and
        the fixed tile together."""
        side = max(1, self.min_size, self.pad_multiple, self.fixed_tile or 1)
        multiple = max(1, self.pad_multiple, self.tile_multiple)
        return -(-side // multiple) * multiple

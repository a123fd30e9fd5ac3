"""Network architectures, one module per family, written from the papers and the published
facts (tensor names and shapes of the released checkpoints, official hyperparameters).

Contract every architecture keeps:
- `state_dict()` names and shapes equal those of the officially released checkpoints, so
  `load_state_dict(sd, strict=True)` succeeds on them (after the catalog's wrapper key and
  `module.` prefix are removed by restorer.zoo.weights).
- The constructor takes the official hyperparameter names as keyword arguments and works
  under `with torch.device("meta"):` (restorer.archs.tensor_layout builds shape-only modules to recognise
  a checkpoint by its tensors).
- `forward` takes NCHW float32 in the value range the catalog entry states (`input_range`)
  and is traceable by torch.onnx.export with dynamic height and width where the arch allows.

torch is imported by the family modules only; importing this package stays light.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from functools import lru_cache


@dataclass(frozen=True)
class Arch:
    """One architecture: where its nn.Module lives, and what every network of it needs
    (the catalog entry adds per-checkpoint facts: scale, channels, value range)."""

    target: str  # "module:Class"
    needs: dict = field(default_factory=dict)  # Requirements fields shared by every checkpoint


# The smallest input side (`min_size`) of each family, derived from its released
# hyperparameters (the engine pads a smaller image up to it; tests/test_min_size.py checks it).
# A family not listed here accepts 1 px, or its minimum is one attention window: HAT,
# MambaIRv2 and MambaIRv2Light need H and W to be whole windows, and one window (window_size,
# a per-checkpoint hyperparameter: 16 in every release) is enough, so the catalog's
# pad_multiple (= window_size) already gives it. MambaIR (v1) has only stride-1 convs and
# scans: 1 px works. InstructIR zero-pads to 16 inside its forward: any size works.
#
# Whole-tile statistics (tiles kept as large as allowed rather than fitted to the image):
# CGNet's global or local-window pools (a tile below a local window falls back to the global
# mean: 136 8-bit steps in tests/test_seams.py), MIRNet's and InstructIR's channel
# attention, the Mamba scans across the tile. HAT's channel attention averages the tile too,
# but next to its windowed attention a 10 % smaller tile stays within its seam bound, and HAT
# is the family where the recomputed overhang costs most.
_WHOLE_TILE = {"whole_tile_statistics": True}

# CGNet zero-pads to 16 inside its forward, which must never happen inside the image, and the
# GCE cascade of every encoder block is unpadded: at levels 0-1 (GCE_CONVS 3 or 4: kernels
# 3, 3, 5, strides 2, 3, 4) a map needs >= 31 px, i.e. >= 62 px of input at level 1; levels
# 2-3 need >= 7 px (28, 56 px of input). 62 rounded up to 16 is 64, for all three released or
# announced variants (the modules' own `min_size`); see docs/seams.md.
_CGNET = {"tile_multiple": 16, "min_size": 64, **_WHOLE_TILE}
# MIRNet (v1, height 3) and MIRNet_v2 (3 streams, fixed): two halvings to a 1/4 stream and the
# streams are fused at equal sizes, so 4 px (the catalog's pad_multiple); in v1 the 1/2 stream
# is blurred with reflect padding of 1 before its halving, which needs >= 2 px there.
_MIRNET = {"min_size": 4, **_WHOLE_TILE}

# catalog `arch` name -> Arch. Adding a network touches this map, the family module and
# models/catalog.toml, nothing else. Torch is not imported here: the engine reads the needs
# of a network that runs on ONNX Runtime without it.
ARCHS: dict[str, Arch] = {
    # Activation memory per input pixel, from which the engine sizes tiles to free memory
    # (ONNX Runtime, measured at 48- and 96-px tiles, x4): HAT-S and HAT-L 72 KB, MambaIRv2-Large
    # 230-260 KB, MambaIRv2-Light 26 KB, MambaIR under 5 KB; with a third to spare. At the
    # default 40 KB a 24 MP photo through HAT got a 512-px tile and was killed for memory.
    "HAT": Arch("restorer.archs.hat:HAT", {"bytes_per_pixel": 100_000}),
    "MambaIR": Arch("restorer.archs.mambair:MambaIR", _WHOLE_TILE),
    # three PixelUnshuffle(2) steps: 8 px leaves 1 px at the bottom level
    "MambaIRUNet": Arch("restorer.archs.mambair:MambaIRUNet", {"min_size": 8, **_WHOLE_TILE}),
    "MambaIRv2": Arch("restorer.archs.mambairv2:MambaIRv2", {"bytes_per_pixel": 300_000, **_WHOLE_TILE}),
    "MambaIRv2Light": Arch("restorer.archs.mambairv2:MambaIRv2Light", _WHOLE_TILE),
    "CascadedGaze": Arch("restorer.archs.cgnet:CascadedGaze", _CGNET),
    "GCENetMHLocal": Arch("restorer.archs.cgnet:GCENetMHLocal", _CGNET),
    "CascadedGazeNetBiggerLocal": Arch("restorer.archs.cgnet:CascadedGazeNetBiggerLocal", _CGNET),
    "MIRNet": Arch("restorer.archs.mirnet:MIRNet", _MIRNET),
    "MIRNet_v2": Arch("restorer.archs.mirnet_v2:MIRNetV2", _MIRNET),
    "InstructIR": Arch("restorer.archs.instructir:InstructIR", {"extra_inputs": ("embedding",), **_WHOLE_TILE}),
    "InstructIRLMHead": Arch("restorer.archs.instructir:LanguageHead"),
    "BertModel": Arch("restorer.archs.bert:BertModel"),
    # total stride 32 (five halvings to a 1-px bottleneck), image and mask pyramid alike
    "GaRNet": Arch("restorer.archs.garnet:GaRNet", {"extra_inputs": ("mask",), "min_size": 32}),
    # Old-photo pipeline parts, sized by restorer.pipelines.old_photo rather than padded by the
    # engine: the VAE encoder needs >= 8 px (its 1/4-size latent goes through reflect-padded
    # ResnetBlocks), the decoder and the plain mapping >= 2 px of latent; the face generator
    # runs at its load_size.
    "OldPhotoVAE": Arch("restorer.archs.oldphoto.vae:GlobalVAE", {"export_parts": ("encoder", "decoder")}),
    "OldPhotoMapping": Arch("restorer.archs.oldphoto.mapping:Mapping"),
    "OldPhotoMappingNL": Arch("restorer.archs.oldphoto.mapping:MappingWithNonLocal"),
    "OldPhotoMappingPA": Arch("restorer.archs.oldphoto.mapping:MappingPatchAttention"),
    # depth 4: after the 4th BlurPool the 1/16 map is reflect-padded by 1 (ConvBlock), which
    # needs >= 2 px there: 2 * 16 = 32 (its pad_multiple 16 alone let a 16-px input fail)
    "OldPhotoScratchUNet": Arch("restorer.archs.oldphoto.scratch:ScratchUNet", {"min_size": 32}),
    "OldPhotoFaceSPADE": Arch("restorer.archs.oldphoto.face:FaceSPADEGenerator"),
    # GFPGAN v1.3/v1.4: aligned 512x512 face crops in [-1, 1]; the 4x4 bottleneck is flattened
    # into a linear layer (no other size), and the style code comes from the whole crop
    "GFPGANv1Clean": Arch("restorer.archs.gfpgan:GFPGANv1Clean", {
        "input_range": (-1.0, 1.0), "output_range": (-1.0, 1.0), "fixed_tile": 512, **_WHOLE_TILE}),
    # RestoreFormer / RestoreFormer++: aligned 512x512 face crops in [-1, 1], as the official
    # test code feeds them; five halvings (H, W multiples of 32) and attention over the whole
    # 16x16 (and, ++, 32x32) map: trained and tested at 512 only
    "RestoreFormer": Arch("restorer.archs.restoreformer:RestoreFormer", {
        "input_range": (-1.0, 1.0), "output_range": (-1.0, 1.0), "fixed_tile": 512, **_WHOLE_TILE}),
    "RestoreFormerPlusPlus": Arch("restorer.archs.restoreformer:RestoreFormerPlusPlus", {
        "input_range": (-1.0, 1.0), "output_range": (-1.0, 1.0), "fixed_tile": 512, **_WHOLE_TILE}),
}


def family_module(arch: str):
    """The Python module of an architecture (imports torch)."""
    return importlib.import_module(_arch(arch).target.split(":")[0])


def _arch(arch: str) -> Arch:
    try:
        return ARCHS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}") from None


def arch_class(arch: str):
    """The nn.Module class for a catalog arch name (imports torch)."""
    module_name, class_name = _arch(arch).target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build(arch: str, hparams: dict):
    """Instantiate an architecture with its official hyperparameters."""
    return arch_class(arch)(**hparams)


@lru_cache(maxsize=None)
def _layout(arch: str, hparams_json: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    import torch

    with torch.device("meta"):
        module = build(arch, json.loads(hparams_json))
    return tuple((k, tuple(v.shape)) for k, v in module.state_dict().items())


def tensor_layout(arch: str, hparams_json: str) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of an architecture with these hyperparameters (JSON, sorted
    keys), from the module built on the meta device: no memory, no weights (imports torch)."""
    return dict(_layout(arch, hparams_json))

"""Network architectures, one module per family, written from the papers and the published
facts (tensor names and shapes of the released checkpoints, official hyperparameters).

Contract every architecture keeps:
- `state_dict()` names and shapes equal those of the officially released checkpoints, so
  `load_state_dict(sd, strict=True)` succeeds on them (after the catalog's wrapper key and
  `module.` prefix are removed by restorer.store).
- The constructor takes the official hyperparameter names as keyword arguments and works
  under `with torch.device("meta"):` (restorer.store builds shape-only modules to recognise
  a checkpoint by its tensors).
- `forward` takes NCHW float32 in the value range the catalog entry states (`input_range`)
  and is traceable by torch.onnx.export with dynamic height and width where the arch allows.

torch is imported by the family modules only; importing this package stays light.
"""

from __future__ import annotations

import importlib

# catalog `arch` name -> "module:Class". Adding a network touches this map, the family
# module and models/catalog.toml, nothing else.
ARCHS: dict[str, str] = {
    "HAT": "restorer.archs.hat:HAT",
    "MambaIR": "restorer.archs.mambair:MambaIR",
    "MambaIRUNet": "restorer.archs.mambair:MambaIRUNet",
    "MambaIRv2": "restorer.archs.mambairv2:MambaIRv2",
    "MambaIRv2Light": "restorer.archs.mambairv2:MambaIRv2Light",
    "CascadedGaze": "restorer.archs.cgnet:CascadedGaze",
    "GCENetMHLocal": "restorer.archs.cgnet:GCENetMHLocal",
    "CascadedGazeNetBiggerLocal": "restorer.archs.cgnet:CascadedGazeNetBiggerLocal",
    "MIRNet": "restorer.archs.mirnet:MIRNet",
    "MIRNet_v2": "restorer.archs.mirnet_v2:MIRNetV2",
    "InstructIR": "restorer.archs.instructir:InstructIR",
    "InstructIRLMHead": "restorer.archs.instructir:LanguageHead",
    "BertModel": "restorer.archs.bert:BertModel",
    "GaRNet": "restorer.archs.garnet:GaRNet",
    "OldPhotoVAE": "restorer.archs.oldphoto.vae:GlobalVAE",
    "OldPhotoMapping": "restorer.archs.oldphoto.mapping:Mapping",
    "OldPhotoMappingNL": "restorer.archs.oldphoto.mapping:MappingWithNonLocal",
    "OldPhotoMappingPA": "restorer.archs.oldphoto.mapping:MappingPatchAttention",
    "OldPhotoScratchUNet": "restorer.archs.oldphoto.scratch:ScratchUNet",
    "OldPhotoFaceSPADE": "restorer.archs.oldphoto.face:FaceSPADEGenerator",
}


def arch_class(arch: str):
    """The nn.Module class for a catalog arch name (imports torch)."""
    try:
        target = ARCHS[arch]
    except KeyError:
        raise KeyError(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHS))}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


def build(arch: str, hparams: dict):
    """Instantiate an architecture with its official hyperparameters."""
    return arch_class(arch)(**hparams)

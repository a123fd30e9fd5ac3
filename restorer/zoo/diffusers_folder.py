"""A diffusers model folder, the Hugging Face hub layout: `model_index.json` names the
pipeline class and, for each component, its library and class; each component lives in a
sub-folder of the same name (unet/, vae/ or vqvae/, scheduler/, text_encoder/, tokenizer/)
with its config and, for networks, one weights file.

Read here without torch or diffusers (the store checks and installs folders with the lean
install); restorer.run.diffusion builds the pipeline from what this module finds."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from restorer.zoo.layout import StoreError

INDEX = "model_index.json"

# The pipelines restorer runs, and the component whose decoder sets the output scale
# (2 ** (number of its blocks - 1): each block after the first doubles the size).
PIPELINES = {
    "LDMSuperResolutionPipeline": "vqvae",
    "StableDiffusionUpscalePipeline": "vae",
}
LIBRARIES = ("diffusers", "transformers")

# Weights file names in the order a folder's copy is preferred: safetensors before pickled
# PyTorch files (which restorer reads with its tensor-only reader anyway), full precision
# before the fp16 variant.
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors", "model.safetensors",
    "diffusion_pytorch_model.bin", "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin",
)
CONFIG_NAMES = ("config.json", "scheduler_config.json")
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json")


@dataclass(frozen=True)
class Component:
    name: str  # the sub-folder ("unet")
    library: str  # "diffusers" or "transformers"
    cls: str  # "UNet2DModel"

    @property
    def kind(self) -> str:
        """"scheduler", "tokenizer" or "network" (a module with a weights file)."""
        if self.cls.endswith("Scheduler"):
            return "scheduler"
        if "Tokenizer" in self.cls:
            return "tokenizer"
        return "network"


def is_model_folder(path: Path) -> bool:
    return path.is_dir() and (path / INDEX).is_file()


def read_index(folder: Path) -> dict:
    """model_index.json, checked: a pipeline restorer runs, components from known libraries."""
    path = folder / INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{folder}: not a diffusers model folder (no {INDEX})") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{path}: unreadable ({e})") from None
    if not isinstance(index, dict) or not isinstance(index.get("_class_name"), str):
        raise StoreError(f"{path}: names no pipeline class (_class_name)")
    if index["_class_name"] not in PIPELINES:
        raise StoreError(f"{folder}: a {index['_class_name']} folder; restorer runs "
                         f"{' and '.join(PIPELINES)}")
    for comp in components(index):
        if comp.library not in LIBRARIES:
            raise StoreError(f"{path}: component {comp.name} comes from {comp.library!r}; "
                             f"restorer loads components from {' or '.join(LIBRARIES)} only")
    return index


def components(index: dict) -> list[Component]:
    """The components the index names ([library, class] pairs; null ones are absent)."""
    out = []
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or len(value) != 2:
            continue
        library, cls = value
        if library is None or cls is None:
            continue
        if not (isinstance(library, str) and isinstance(cls, str) and cls.isidentifier() and name.isidentifier()):
            raise StoreError(f"{INDEX}: component {name!r} is not a [library, class] pair")
        out.append(Component(name, library, cls))
    return out


def weights_of(folder: Path, comp: Component) -> Path | None:
    """The weights file restorer loads for a network component (None when it has none)."""
    return next((folder / comp.name / n for n in WEIGHT_NAMES if (folder / comp.name / n).is_file()), None)


def needed_files(folder: Path) -> list[str]:
    """The files (relative, '/'-separated) a pipeline needs from `folder`, checked present:
    the index, each component's config, a network's weights, a tokenizer's vocabulary.
    A StoreError names the first that is missing."""
    index = read_index(folder)
    files = [INDEX]
    for comp in components(index):
        sub = folder / comp.name
        if comp.kind == "tokenizer":
            present = [n for n in TOKENIZER_FILES if (sub / n).is_file()]
            if not ({"vocab.json", "merges.txt"} <= set(present) or "tokenizer.json" in present):
                raise StoreError(f"{folder}: {comp.name}/ has no vocabulary (vocab.json and merges.txt)")
            files += [f"{comp.name}/{n}" for n in present]
            continue
        config = next((n for n in CONFIG_NAMES if (sub / n).is_file()), None)
        if config is None:
            raise StoreError(f"{folder}: {comp.name}/ has no {' or '.join(CONFIG_NAMES)}")
        files.append(f"{comp.name}/{config}")
        if comp.kind == "network":
            weights = weights_of(folder, comp)
            if weights is None:
                raise StoreError(f"{folder}: {comp.name}/ has no weights file ({WEIGHT_NAMES[0]} or {WEIGHT_NAMES[2]})")
            files.append(f"{comp.name}/{weights.name}")
    return files


def read_config(folder: Path, name: str) -> dict:
    sub = folder / name
    path = next((sub / n for n in CONFIG_NAMES if (sub / n).is_file()), sub / CONFIG_NAMES[0])
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StoreError(f"{path}: unreadable ({e})") from None
    if not isinstance(config, dict):
        raise StoreError(f"{path}: not a JSON object")
    return config


def output_scale(folder: Path) -> int:
    """Output size / input size of the folder's pipeline: its decoder doubles the size once
    per block after the first (the latents are as large as the input)."""
    index = read_index(folder)
    decoder = PIPELINES[index["_class_name"]]
    blocks = read_config(folder, decoder).get("block_out_channels")
    if not isinstance(blocks, list) or not blocks:
        raise StoreError(f"{folder}: {decoder}/config.json has no block_out_channels")
    return 2 ** (len(blocks) - 1)

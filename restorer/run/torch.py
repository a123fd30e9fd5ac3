"""Eager PyTorch: a catalog model's module with its weights strictly loaded, and the runner for
networks not exported yet. torch is imported here (and in archs/, convert/) only."""

from __future__ import annotations

import logging

import numpy as np
import torch

from restorer.archs import build
from restorer.archs.requirements import Requirements
from restorer.run.runner import NetworkRunner, OutOfMemory, RunnerInfo
from restorer.zoo.catalog import ModelSpec, install_hint
from restorer.zoo.layout import StoreError, weights_path
from restorer.zoo.weights import _lenient, load_state_dict

log = logging.getLogger("restorer")


def torch_device(device: str = "auto") -> tuple[torch.device, str | None]:
    """The torch device for `device` (auto|cuda|cpu), and a note when CUDA was asked for but absent."""
    if device not in ("auto", "cuda"):  # cpu, or OpenVINO (which runs ONNX models only)
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    if device == "cuda":
        note = "CUDA unavailable: this torch build sees no CUDA device; running on CPU"
        log.warning(note)
        return torch.device("cpu"), note
    return torch.device("cpu"), None


def load_module(spec: ModelSpec) -> torch.nn.Module:
    """The PyTorch module of an installed model, its weights strictly loaded."""
    path = weights_path(spec)
    if not path.is_file():
        raise StoreError(install_hint(spec))
    # numpy arrays (views of the memory-mapped file); an unaligned one (legacy files) is copied
    tensors = {k: torch.from_numpy(np.require(v, requirements="A")) for k, v in load_state_dict(path, spec).items()}
    module = build(spec.arch, spec.hparams)
    if _lenient(spec):
        known = module.state_dict().keys()
        tensors = {k: v for k, v in tensors.items() if k in known}
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise StoreError(f"{path.name} does not fit '{spec.id}': {detail}") from None
    return module.eval()


class TorchRunner(NetworkRunner):
    def __init__(self, module: torch.nn.Module, info: RunnerInfo, needs: Requirements, *, device: str = "auto",
                 fixed_inputs: dict[str, np.ndarray] | None = None):
        dev, note = torch_device(device)
        info.backend, info.provider = "torch", f"torch:{dev.type}"
        if note:
            info.notes.append(note)
        super().__init__(info, needs, fixed_inputs)
        self.device = dev
        self.module = module.eval().to(dev)

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(self.device)
                   for k, v in inputs.items()}
        try:
            with torch.no_grad():
                out = self.module(torch.from_numpy(batch).to(self.device), **tensors)
        except torch.cuda.OutOfMemoryError as e:
            raise OutOfMemory(str(e).splitlines()[0]) from e
        except RuntimeError as e:
            if "out of memory" in str(e).lower():
                raise OutOfMemory(str(e).splitlines()[0]) from e
            raise
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.module = None

"""Eager PyTorch: for export, and for networks not exported yet. torch is imported here only."""

from __future__ import annotations

import logging

import numpy as np
import torch

from restorer.runtime.base import NetworkRunner, OutOfMemory, RunnerInfo

log = logging.getLogger("restorer")


def torch_device(device: str = "auto") -> tuple[torch.device, str | None]:
    """The torch device for `device` (auto|cuda|cpu), and a note when CUDA was asked for but absent."""
    if device == "cpu":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device("cuda"), None
    if device == "cuda":
        note = "CUDA unavailable: this torch build sees no CUDA device; running on CPU"
        log.warning(note)
        return torch.device("cpu"), note
    return torch.device("cpu"), None


class TorchRunner(NetworkRunner):
    def __init__(self, module: torch.nn.Module, info: RunnerInfo, *, device: str = "auto", **kwargs):
        dev, note = torch_device(device)
        info.backend, info.provider = "torch", f"torch:{dev.type}"
        if note:
            info.notes.append(note)
        super().__init__(info, **kwargs)
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

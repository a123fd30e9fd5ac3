"""ONNX Runtime sessions: the one place restorer creates them (runners, the text detector and
encoder, export parity checks). An explicit provider list, CUDA first, CPU fallback with one
warning, and the guard against a broken onnxruntime + onnxruntime-gpu install.

onnxruntime lists CUDAExecutionProvider as available even on a machine without a GPU or
CUDA libraries, and then silently creates a CPU session; so the provider that actually
runs is read back from the session, never assumed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from restorer.archs.requirements import Requirements
from restorer.run.runner import NetworkRunner, OutOfMemory, RunnerInfo

log = logging.getLogger("restorer")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cuda", "cpu")
# Set on the log record of a "not on the device asked for" warning: a front end shows the
# first of a run and drops the rest (every session of a run would say the same).
DEVICE_WARNING = "restorer_device_warning"


class RuntimeMissing(RuntimeError):
    pass


def import_onnxruntime():
    """onnxruntime, or a clear message about which package to install (never both)."""
    from importlib import metadata

    dists = {d for d in ("onnxruntime", "onnxruntime-gpu") if _installed(metadata, d)}
    if len(dists) > 1:
        raise RuntimeMissing(
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other; "
            "keep one: pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'restorer[gpu]' (or [cpu])"
        )
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeMissing(
            "ONNX Runtime is not installed: pip install 'restorer[cpu]' (or 'restorer[gpu]' for CUDA)"
        ) from None
    return onnxruntime


def _installed(metadata, name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def provider_list(device: str, available: list[str]) -> tuple[list[str], str | None]:
    """Providers to ask for, and why CUDA is left out when it was asked for."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU], None
    if CUDA in available:
        return [CUDA, CPU], None
    reason = "this onnxruntime build has no CUDA provider (install restorer[gpu])"
    return [CPU], reason if device == "cuda" else None


class Session(NamedTuple):
    session: object  # onnxruntime.InferenceSession
    provider: str  # the provider that actually runs
    note: str | None  # why CUDA was asked for and not used


def create_session(path: str | Path, device: str = "auto") -> Session:
    """An InferenceSession on the best provider for `device`."""
    ort = import_onnxruntime()
    providers, reason = provider_list(device, ort.get_available_providers())
    options = ort.SessionOptions()
    options.log_severity_level = 4  # our own one-line warning replaces ORT's CUDA noise
    note = None
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # a CUDA session that fails to create: retry on the CPU
        if providers[0] != CUDA:
            raise
        reason = f"CUDA session failed: {str(e).splitlines()[0]}"
        session = ort.InferenceSession(str(path), options, providers=[CPU])
    actual = session.get_providers()[0]
    if device in ("auto", "cuda") and actual != CUDA and (device == "cuda" or CUDA in providers):
        reason = reason or "the CUDA provider could not start (no GPU or CUDA libraries found)"
        note = f"CUDA unavailable: {reason}; running on CPU"
        log.warning(note, extra={DEVICE_WARNING: True})
    return Session(session, actual, note)


def is_oom(error: Exception) -> bool:
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(
        k in text for k in ("failed to allocate", "out of memory", "bad_alloc", "cudaerrormemoryallocation")
    )


class OnnxRunner(NetworkRunner):
    """Runs an exported .onnx model; the image input is the session's first input."""

    def __init__(self, path: str | Path, info: RunnerInfo, needs: Requirements, *, device: str = "auto",
                 fixed_inputs: dict[str, np.ndarray] | None = None):
        session, provider, note = create_session(path, device)
        info.backend, info.provider = "onnx", provider
        if note:
            info.notes.append(note)
        shape = session.get_inputs()[0].shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            # A fixed-size export: every tile is padded up to exactly that size.
            needs = needs.with_(fixed_tile=shape[2])
            info.notes.append(f"exported at a fixed {shape[2]}x{shape[3]} tile")
        super().__init__(info, needs, fixed_inputs)
        self.session = session
        self.input_names = [i.name for i in session.get_inputs()]

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {self.input_names[0]: batch}
        for name in self.input_names[1:]:
            if name not in inputs:
                raise ValueError(f"{self.info.model}: missing network input {name!r}")
            value = np.asarray(inputs[name], dtype=np.float32)
            if value.shape[0] != batch.shape[0] and value.shape[0] == 1:
                value = np.repeat(value, batch.shape[0], axis=0)
            feeds[name] = value
        try:
            return self.session.run(None, feeds)[0]
        except Exception as e:
            if is_oom(e):
                raise OutOfMemory(str(e).splitlines()[0]) from e
            raise

    def close(self) -> None:
        self.session = None  # ONNX Runtime frees the session's memory with the last reference

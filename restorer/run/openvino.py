"""OpenVINO: the same ONNX models on Intel CPUs, GPUs and NPUs, through OpenVINO's own
runtime (the `openvino` package reads ONNX directly; see the README for why not the
onnxruntime-openvino build).

`--device openvino[:CPU|GPU|NPU]` asks for it; `--device auto` picks it on an Intel
processor when it is installed and no CUDA GPU is. Inference runs in fp32 on every device
(OpenVINO's GPU default is fp16, which breaks parity with the official networks).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from restorer.archs.requirements import Requirements
from restorer.run.onnx import DEVICE_WARNING, RuntimeMissing, is_oom, network_feeds, physical_cores
from restorer.run.runner import NetworkRunner, OutOfMemory, RunnerInfo

log = logging.getLogger("restorer")

TARGETS = ("CPU", "GPU", "NPU")


class GraphUnsupported(RuntimeError):
    """OpenVINO cannot read this graph (an operator its ONNX reader lacks)."""


def openvino_installed() -> bool:
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def intel_cpu() -> bool:
    try:
        return "GenuineIntel" in Path("/proc/cpuinfo").read_text()
    except OSError:
        import platform

        return "intel" in platform.processor().lower()


def openvino_target(device: str) -> str | None:
    """The OpenVINO device `device` names ("CPU", "GPU", "NPU"), or None for ONNX Runtime.
    `auto` means OpenVINO's CPU plugin on an Intel processor with OpenVINO installed and no
    CUDA."""
    if device.startswith("openvino"):
        target = device.partition(":")[2].upper() or "CPU"
        if target not in TARGETS:
            raise ValueError(f"unknown OpenVINO device {target!r}; use openvino, openvino:GPU or openvino:NPU")
        return target
    if device == "auto" and openvino_installed() and intel_cpu() and not _cuda_provider():
        return "CPU"  # an integrated GPU in fp32 is rarely faster than the cores: asked for by name
    return None


def _cuda_provider() -> bool:
    try:
        import onnxruntime
    except ImportError:
        return False
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _core():
    try:
        import openvino
    except ImportError:
        raise RuntimeMissing("OpenVINO is not installed: pip install 'restorer[openvino]'") from None
    return openvino.Core()


class OpenVinoRunner(NetworkRunner):
    """Runs an ONNX model with OpenVINO, compiled once per input shape (the tile), with
    OpenVINO's model cache beside the model so a later start skips the compilation."""

    KEPT_SHAPES = 2

    def __init__(self, path: str | Path, info: RunnerInfo, needs: Requirements, *, target: str = "CPU",
                 fixed_inputs: dict[str, np.ndarray] | None = None):
        core = _core()
        if target not in core.available_devices:
            note = f"OpenVINO has no {target} device here ({', '.join(core.available_devices)}); running on CPU"
            log.warning(note, extra={DEVICE_WARNING: True})
            info.notes.append(note)
            target = "CPU"
        self.core, self.target, self.path = core, target, Path(path)
        try:
            self.model = core.read_model(str(path))
        except RuntimeError as e:  # e.g. MambaIR's scan: OpenVINO's ONNX reader has no Scan
            failed = [line.strip() for line in str(e).splitlines() if "failed for" in line]
            raise GraphUnsupported(failed[0] if failed else str(e).splitlines()[0]) from None
        info.backend, info.provider = "openvino", f"OpenVINO:{target}"
        first = self.model.inputs[0].get_partial_shape()
        if first.rank.get_length() == 4 and first[2].is_static and first[3].is_static:
            needs = needs.with_(fixed_tile=first[2].get_length())
            info.notes.append(f"exported at a fixed {first[2].get_length()}x{first[3].get_length()} tile")
        super().__init__(info, needs, fixed_inputs)
        self.input_names = [i.get_any_name() for i in self.model.inputs]
        self._compiled: OrderedDict[tuple, object] = OrderedDict()
        cache = self.path.parent / ".optimized"
        try:
            cache.mkdir(exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except (OSError, RuntimeError):
            pass  # no cache where the folder is read-only: compile at each start

    def _compiled_for(self, feeds: dict[str, np.ndarray]):
        key = tuple(feeds[name].shape for name in self.input_names)
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        while len(self._compiled) >= self.KEPT_SHAPES:
            self._compiled.popitem(last=False)
        model = self.model.clone()
        model.reshape({name: list(shape) for name, shape in zip(self.input_names, key)})
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if self.target == "CPU":
            config["INFERENCE_NUM_THREADS"] = physical_cores()
        request = self.core.compile_model(model, self.target, config).create_infer_request()
        self._compiled[key] = request
        return request

    def forward(self, batch: np.ndarray, inputs: dict[str, np.ndarray]) -> np.ndarray:
        feeds = network_feeds(self.info.model, self.input_names, batch, inputs)
        try:
            request = self._compiled_for(feeds)
            result = request.infer(feeds)
        except Exception as e:
            if is_oom(e):
                raise OutOfMemory(str(e).splitlines()[0]) from e
            raise
        return np.array(result[0], copy=True)  # the request reuses its output buffer

    def close(self) -> None:
        self._compiled.clear()

"""The one place a model becomes a Runner, and the cache that keeps runners alive.

A catalog network runs from its ONNX export when there is one (`<id>[.<part>].<precision>.onnx`
in the store), else in eager PyTorch on its installed weights, else the error says how to
install it. A built-in operator is built from its id. `RunnerCache` is owned by whoever runs
a batch or holds a GUI session: a batch of N images builds each runner once, and switching
models releases the old ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from restorer.archs.requirements import Requirements
from restorer.run.runner import Runner, RunnerInfo
from restorer.zoo.catalog import ModelSpec, install_hint
from restorer.zoo.layout import StoreError, is_installed, onnx_path
from restorer.zoo.templates import install_from_template, template_parts


def build_runner(spec: ModelSpec, device: str = "auto", precision: str = "fp32", part: str | None = None,
                 raw: bool = False) -> Runner:
    """A Runner for a catalog model (or its sub-graph `part`). `raw`: the caller feeds the
    network its own value range and sizes (a pipeline's stages), so no range mapping."""
    needs = Requirements() if raw or part else spec.requirements
    if spec.generative:
        return diffusion_runner(spec, device)
    for candidate in dict.fromkeys((precision, "fp32")):
        path = onnx_path(spec, candidate, part)
        if path.is_file():
            runner = onnx_runner(path, RunnerInfo(spec.id, "", ""), needs, device)
            if candidate != precision:
                runner.info.notes.append(f"no {precision} export of '{spec.id}'; using {candidate}")
            return runner
    if not is_installed(spec):
        raise StoreError(install_hint(spec))
    if install_from_template(spec) is not None:
        # a shipped ONNX template filled with the checkpoint: runs without torch, from now on
        runner = onnx_runner(onnx_path(spec, "fp32", part), RunnerInfo(spec.id, "", ""), needs, device)
        runner.info.notes.append("ONNX model made from restorer's template (no PyTorch needed)")
        if precision != "fp32":
            runner.info.notes.append(f"no {precision} export of '{spec.id}'; using fp32")
        return runner
    try:
        import torch  # noqa: F401
    except ImportError:
        raise StoreError(f"model '{spec.id}' is installed but not exported to ONNX, and PyTorch is not "
                         f"installed to run or export it: pip install 'restorer[torch]' then "
                         f"restorer-cli models export {spec.id}") from None
    from restorer.run.torch import TorchRunner, load_module

    module = load_module(spec)
    module = getattr(module, part) if part else module
    runner = TorchRunner(module, RunnerInfo(spec.id, "", ""), needs, device=device)
    runner.info.notes.append(f"running in eager PyTorch; `restorer-cli models export {spec.id}` makes it faster")
    return runner


def diffusion_runner(spec: ModelSpec, device: str = "auto") -> Runner:
    """A generative model's diffusers pipeline (torch, diffusers: restorer[generative])."""
    from restorer.run.diffusion import install_line, missing_packages

    if not is_installed(spec):
        raise StoreError(install_hint(spec))
    missing = missing_packages(spec.extra.get("pipeline"))
    if missing:
        raise StoreError(install_line(missing))
    from restorer.run.diffusion import DiffusionRunner
    from restorer.zoo.layout import model_dir

    return DiffusionRunner(model_dir(spec), RunnerInfo(spec.id, "", ""), spec.requirements, device,
                           half="fp16" in spec.precisions)


def onnx_runner(path: Path, info: RunnerInfo, needs: Requirements, device: str = "auto") -> Runner:
    """A Runner for an ONNX file on the runtime `device` names: OpenVINO, or ONNX Runtime
    (CUDA or CPU)."""
    from restorer.run.onnx import OnnxRunner
    from restorer.run.openvino import GraphUnsupported, OpenVinoRunner, openvino_target

    target = openvino_target(device)
    if target is None:
        return OnnxRunner(path, info, needs, device=device)
    try:
        return OpenVinoRunner(path, info, needs, target=target)
    except GraphUnsupported as e:
        import logging

        from restorer.run.onnx import DEVICE_WARNING

        note = f"OpenVINO cannot run {info.model} ({e}); running on ONNX Runtime CPU"
        logging.getLogger("restorer").warning(note, extra={DEVICE_WARNING: True})
        runner = OnnxRunner(path, info, needs, device="cpu")
        runner.info.notes.append(note)
        return runner


def make_runnable(spec: ModelSpec, export: bool = True) -> str:
    """Turn an installed checkpoint into the store's ONNX model(s) right after its install:
    filled into restorer's shipped template (no torch), else, with `export`, exported when
    torch is here. Returns how ("template", "export"), or "" when neither applies (the eager
    runner, or an export at first use, will do)."""
    if spec.builtin or spec.is_pipeline or spec.generative or not is_installed(spec):
        return ""
    if all(onnx_path(spec, "fp32", part).is_file() for part in template_parts(spec)):
        return ""
    if install_from_template(spec) is not None:
        return "template"
    if not export:
        return ""
    try:
        from restorer.convert.export import export_model
    except ImportError:
        return ""
    export_model(spec)
    return "export"


def onnx_model(spec: ModelSpec) -> Path:
    """The store's fp32 ONNX file of an installed single-graph model, made on first use
    (from the template without torch, else exported with torch)."""
    path = onnx_path(spec)
    if path.is_file():
        return path
    if not is_installed(spec):
        raise StoreError(install_hint(spec))
    if not make_runnable(spec):
        raise StoreError(f"restorer has no template for '{spec.id}' and PyTorch is not installed to "
                         f"export it: pip install 'restorer[torch]'")
    return path


@dataclass(frozen=True)
class RunnerKey:
    model: str
    device: str
    precision: str = "fp32"
    part: str | None = None
    raw: bool = False
    settings: tuple = ()  # a built-in operator's scale and strength


class RunnerCache:
    """Runners by (model, device, precision, part): built on first use, kept until released.

    Runner info (notes, provider) is per runner, not per use: a caller that reports notes
    copies them."""

    def __init__(self):
        self._runners: dict[RunnerKey, Runner] = {}
        self.built = 0  # how many runners this cache has built (a batch builds each once)

    def network(self, spec: ModelSpec, device: str = "auto", precision: str = "fp32", part: str | None = None,
                raw: bool = False) -> Runner:
        key = RunnerKey(spec.id, device, precision, part, raw)
        if key not in self._runners:
            self._runners[key] = build_runner(spec, device, precision, part, raw)
            self.built += 1
        return self._runners[key]

    def builtin(self, model_id: str, *, scale: int = 2, strength: float | None = None) -> Runner:
        from restorer.run.builtin import builtin_runner

        key = RunnerKey(model_id, "cpu", settings=(scale, strength))
        if key not in self._runners:
            self._runners[key] = builtin_runner(model_id, scale=scale, strength=strength)
            self.built += 1
        return self._runners[key]

    def keep_only(self, model_ids: set[str]) -> None:
        """Release every runner of a model not in `model_ids` (the GUI switched models)."""
        for key in [k for k in self._runners if k.model not in model_ids]:
            self._runners.pop(key).close()

    def clear(self) -> None:
        self.keep_only(set())

    def __len__(self) -> int:
        return len(self._runners)

    def __enter__(self) -> "RunnerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.clear()


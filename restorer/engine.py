"""From a request (a task, a model id or an instruction) to restored pixels.

`resolve` turns what the user asked for into Steps, each naming the backend that will do
it (a network, a pipeline or a built-in operator) and why; `restore` runs the Steps on an
Image. The CLI, the batch runner and the GUI all go through these two functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from restorer.catalog import TASKS, Catalog, ModelSpec, load_catalog
from restorer.imaging import Image
from restorer.runtime.base import Runner
from restorer.tiles import CancelToken, ProgressFn, run_tiled


# Tasks run by a multi-stage pipeline, and the built-in operator each falls back to when
# its networks are not installed (classical detection + inpainting).
PIPELINE_FALLBACKS = {"old-photo": "builtin:inpaint", "remove-text": "builtin:inpaint"}


class RequestError(Exception):
    """The request cannot be served (unknown model, nothing installed for a task); exit 2."""


@dataclass
class Options:
    device: str = "auto"
    tile: int | None = None
    scale: int | None = None
    strength: float | None = None
    extra: dict = field(default_factory=dict)  # pipeline options: mask, dilate, scratches, faces, hr


@dataclass
class StepReport:
    task: str
    model: str
    backend: str
    runner: str = ""
    provider: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "task": self.task, "model": self.model, "backend": self.backend, "runner": self.runner,
            "provider": self.provider, "seconds": round(self.seconds, 3), "notes": self.notes,
            **({"stages": self.stages} if self.stages else {}),
        }


@dataclass
class Context:
    """What a running step may use: device, tiling, progress, cancel, stage outputs."""

    options: Options
    progress: ProgressFn | None = None
    cancel: CancelToken | None = None
    stage_images: dict[str, np.ndarray] = field(default_factory=dict)  # for --save-intermediates
    on_note: Callable[[str], None] | None = None


@dataclass
class Step:
    task: str
    model: str  # catalog id
    backend: str  # "network", "builtin", "pipeline", "instructir"
    options: dict = field(default_factory=dict)
    prompt: str = ""  # the user's own words, for text-prompted networks
    why: str = ""  # how this backend was chosen, for the user

    def plan_entry(self) -> dict:
        return {"task": self.task, "backend": self.backend, "model": self.model,
                "options": self.options, **({"why": self.why} if self.why else {})}


# ---------------------------------------------------------------- choosing backends


def installed(spec: ModelSpec) -> bool:
    if spec.builtin:
        return True
    from restorer import store

    return store.is_ready(spec)


def resolve_model(model_id: str, options: Options, catalog: Catalog | None = None) -> Step:
    catalog = catalog or load_catalog()
    try:
        spec = catalog.get(model_id)
    except KeyError as e:
        raise RequestError(e.args[0]) from None
    if not spec.tasks and not spec.is_pipeline:
        raise RequestError(f"model '{spec.id}' is a part of a pipeline, not something to run on its own")
    if not installed(spec):
        raise RequestError(install_hint(spec))
    task = spec.tasks[0] if spec.tasks else "restore"
    return Step(task, spec.id, _backend_of(spec), _step_options(spec, options), why="chosen with --model")


def resolve_task(task: str, options: Options, catalog: Catalog | None = None, prompt: str = "") -> Step:
    """The best installed backend for a task: a network, else the built-in operator."""
    if task not in TASKS:
        raise RequestError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    catalog = catalog or load_catalog()
    candidates = [s for s in catalog.for_task(task) if not s.builtin]
    if task == "superres":
        wanted = options.scale or 2
        candidates = [s for s in candidates if s.output_scale == wanted]
    for spec in candidates:
        if installed(spec):
            return Step(task, spec.id, _backend_of(spec), _step_options(spec, options), prompt=prompt,
                        why=f"best installed model for {task}")
    if task in PIPELINE_FALLBACKS:
        return Step(task, PIPELINE_FALLBACKS[task], "pipeline", _step_options(catalog.get(PIPELINE_FALLBACKS[task]), options),
                    prompt=prompt, why=f"no network for {task} is installed; using classical fallbacks")
    builtins = [s for s in catalog.for_task(task) if s.builtin]
    if builtins:
        spec = builtins[0]
        return Step(task, spec.id, "builtin", _step_options(spec, options), prompt=prompt,
                    why=f"no network for {task} is installed; using the built-in operator")
    raise RequestError(no_backend_message(task, catalog))


def _backend_of(spec: ModelSpec) -> str:
    if any(t in PIPELINE_FALLBACKS for t in spec.tasks):
        return "pipeline"
    if spec.builtin:
        return "builtin"
    if spec.is_pipeline:
        return "pipeline"
    return "network"


def _step_options(spec: ModelSpec, options: Options) -> dict:
    out = {}
    if "superres" in spec.tasks:
        out["scale"] = (options.scale or spec.scale) if spec.builtin else spec.output_scale
    if options.strength is not None:
        out["strength"] = options.strength
    out.update(options.extra)
    return out


def install_hint(spec: ModelSpec) -> str:
    """What to type to install a model (or where a browser must fetch it)."""
    if not spec.released:
        return f"model '{spec.id}' was announced by its authors but its weights were never released"
    browser = [f for f in spec.files if f.browser]
    if browser:
        f = browser[0]
        return (f"model '{spec.id}' is not installed: download {f.name} in a browser from {f.url} "
                f"then run: restorer-cli models add {f.name} --id {spec.id}")
    return f"model '{spec.id}' is not installed: restorer-cli models download {spec.id}"


def no_backend_message(task: str, catalog: Catalog) -> str:
    specs = [s for s in catalog.for_task(task) if not s.builtin]
    if not specs:
        return f"nothing in restorer can do {task!r} yet"
    names = ", ".join(s.id for s in specs[:6])
    return (f"no installed model can do {task!r} and there is no built-in operator for it; "
            f"models that can: {names}. Install one: {install_hint(specs[0]).split(': ', 1)[-1]}")


# ---------------------------------------------------------------- running


def make_runner(step: Step, options: Options) -> Runner:
    """The Runner for a single-network or built-in step."""
    if step.backend == "builtin":
        from restorer.runtime.builtin import builtin_runner

        return builtin_runner(step.model, scale=step.options.get("scale", 2), strength=step.options.get("strength"))
    from restorer import store

    spec = load_catalog().get(step.model)
    return store.runner(spec, device=options.device)


def restore(image: Image, steps: list[Step], ctx: Context) -> tuple[Image, list[StepReport]]:
    """Run each step in order; returns the restored image and one report per step."""
    reports = []
    for step in steps:
        start = time.perf_counter()
        target = _target_size(step, image)
        if target is not None:
            step = _superres_step_for(step, image, ctx.options)
        report = StepReport(step.task, step.model, step.backend)
        if step.backend == "resize":
            pass  # the target size is reached by the resize below
        elif step.backend == "pipeline" or step.task in ("old-photo", "remove-text"):
            from restorer.pipelines import run_pipeline

            image = run_pipeline(step, image, ctx, report)
        else:
            runner = make_runner(step, ctx.options)
            report.runner, report.provider = runner.info.backend, runner.info.provider
            report.notes.extend(runner.info.notes)
            extra = step_inputs(step, runner, ctx)
            image = apply_runner(image, runner, ctx, extra=extra)
        if target is not None and (image.width, image.height) != target:
            image = _resize_image(image, target)
            report.notes.append(f"resized to {target[0]}x{target[1]} to reach the size asked for")
        report.seconds = time.perf_counter() - start
        reports.append(report)
    return image, reports


def _target_size(step: Step, image: Image) -> tuple[int, int] | None:
    """(width, height) a superres step was asked to reach ("to 4K", "1080p"), or None."""
    o = step.options
    if step.task != "superres" or not ("target_long_side" in o or "target_short_side" in o):
        return None
    w, h = image.width, image.height
    if "target_long_side" in o:
        f = o["target_long_side"] / max(w, h)
    else:
        f = o["target_short_side"] / min(w, h)
    return max(1, round(w * f)), max(1, round(h * f))


def _superres_step_for(step: Step, image: Image, options: Options) -> Step:
    """Pick the model scale that reaches a target size for this image (then resize down)."""
    from restorer.instructions import resolve_scale

    scales = sorted({s.output_scale for s in load_catalog().for_task("superres") if installed(s) and not s.builtin}
                    | {2, 3, 4})
    scale = resolve_scale(step.options, image.width, image.height, available=tuple(scales))
    if scale <= 1:
        return Step("superres", "resize", "resize", dict(step.options), why="already at the size asked for")
    opts = Options(options.device, options.tile, scale, options.strength, dict(options.extra))
    chosen = resolve_task("superres", opts, prompt=step.prompt)
    chosen.options.update({k: v for k, v in step.options.items() if k != "scale"})
    return chosen


def _resize_image(image: Image, size: tuple[int, int]) -> Image:
    w, h = size
    shrinking = w < image.width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    pixels = cv2.resize(image.pixels, (w, h), interpolation=interp).reshape(h, w, -1)
    alpha = None if image.alpha is None else cv2.resize(image.alpha, (w, h), interpolation=interp)
    return Image(np.clip(pixels, 0, 1).astype(np.float32), alpha, image.meta)


def step_inputs(step: Step, runner: Runner, ctx: Context) -> dict[str, np.ndarray] | None:
    """Extra network inputs a step needs (InstructIR's instruction embedding)."""
    if step.backend == "instructir":
        from restorer.pipelines.instruct import instruction_inputs

        return instruction_inputs(step)
    return None


def apply_runner(image: Image, runner: Runner, ctx: Context, extra: dict | None = None) -> Image:
    """One runner over an image: channel matching, tiling, alpha carried along."""
    pixels = image.pixels
    gray_in = pixels.shape[2] == 1
    s = runner.scale
    if runner.channels == 1 and not gray_in:
        # A luminance network on a colour image: restore Y, carry the chroma over.
        ycc = cv2.cvtColor(pixels, cv2.COLOR_RGB2YCrCb)
        y = run_tiled(ycc[..., :1], runner, tile=ctx.options.tile, extra=extra,
                      progress=ctx.progress, cancel=ctx.cancel, on_retry=ctx.on_note)
        chroma = resize(ycc[..., 1:], s)
        out = cv2.cvtColor(np.concatenate([y, chroma], axis=2).astype(np.float32), cv2.COLOR_YCrCb2RGB)
    else:
        feed = np.repeat(pixels, 3, axis=2) if runner.channels == 3 and gray_in else pixels
        out = run_tiled(feed, runner, tile=ctx.options.tile, extra=extra,
                        progress=ctx.progress, cancel=ctx.cancel, on_retry=ctx.on_note)
        if gray_in and out.shape[2] == 3:
            out = to_gray(out)
    alpha = image.alpha
    if alpha is not None and s != 1:
        alpha = np.clip(resize(alpha[..., None], s)[..., 0], 0, 1)
    return Image(np.clip(out, 0, 1).astype(np.float32), alpha, image.meta)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, the grayscale a gray input came from."""
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]


def resize(arr: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic resize of an HxWxC float array by an integer factor."""
    if scale == 1:
        return arr
    h, w = arr.shape[:2]
    out = cv2.resize(arr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h * scale, w * scale, -1)


# ---------------------------------------------------------------- instructions

INSTRUCT_MODEL_FAMILY = "instructir"


def resolve_instruction(text: str, options: Options, catalog: Catalog | None = None) -> list[Step]:
    """An instruction in words -> Steps. InstructIR takes the user's own words for the tasks
    it was trained on when it is installed; else each task gets its best installed backend."""
    from restorer.instructions import InstructionError, plan

    catalog = catalog or load_catalog()
    try:
        parsed = plan(text or "")
    except InstructionError as e:
        raise RequestError(str(e)) from None
    instruct = next((s for s in catalog.for_task("derain") if s.family == INSTRUCT_MODEL_FAMILY and installed(s)), None)
    steps = []
    for p in parsed.steps:
        step_options = Options(options.device, options.tile, p.options.get("scale", options.scale),
                               p.options.get("strength", options.strength), dict(options.extra))
        if instruct is not None and p.task in instruct.tasks and p.task != "superres":
            steps.append(Step(p.task, instruct.id, "instructir", dict(p.options), prompt=p.prompt or text,
                              why="InstructIR is installed and was trained for this; it gets your words"))
            continue
        step = resolve_task(p.task, step_options, catalog, prompt=p.prompt)
        for key, value in p.options.items():
            step.options.setdefault(key, value)
        if "scale" not in p.options and ("target_long_side" in p.options or "target_short_side" in p.options):
            step.options.pop("scale", None)  # chosen per image, from its size, when it runs
        steps.append(step)
    return steps

"""Running a Plan on one image: each step through its runner (from the batch's cache) and
the tiling engine, or through its pipeline; channels matched, alpha carried along, target
sizes reached. The CLI, the GUI and every batch executor restore through `restore`."""

from __future__ import annotations

import time

import cv2
import numpy as np

from restorer.io.imaging import Image
from restorer.pipelines import run_pipeline
from restorer.pipelines.instruct import instruction_inputs
from restorer.plan.request import Backend, Plan, Step, step_for_size
from restorer.run.context import Context, StepReport
from restorer.run.runner import Runner
from restorer.run.tiles import run_tiled
from restorer.zoo.catalog import load_catalog


def restore(image: Image, plan: Plan, ctx: Context) -> tuple[Image, list[StepReport]]:
    """Run each step of a plan in order; returns the restored image and one report per step.
    Runners come from ctx.cache, so a batch builds each of them once."""
    reports = []
    for planned in plan.steps:
        start = time.perf_counter()
        target = target_size(planned, image.width, image.height)
        step = step_for_size(planned, image.width, image.height) if target and planned.by_scale else planned
        report = StepReport(step.task, step.model, str(step.backend))
        if step.backend == Backend.RESIZE:
            pass  # the target size is reached by the resize below
        elif step.backend == Backend.PIPELINE:
            image = run_pipeline(step, image, ctx, report)
        else:
            runner = step_runner(step, ctx)
            report.ran(runner)
            image = apply_runner(image, runner, ctx, extra=step_inputs(step))
        if target is not None and (image.width, image.height) != target:
            image = _resize_image(image, target)
            report.notes.append(f"resized to {target[0]}x{target[1]} to reach the size asked for")
        report.seconds = time.perf_counter() - start
        reports.append(report)
    return image, reports






def _resize_image(image: Image, size: tuple[int, int]) -> Image:
    w, h = size
    shrinking = w < image.width
    interp = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    pixels = cv2.resize(image.pixels, (w, h), interpolation=interp).reshape(h, w, -1)
    alpha = None if image.alpha is None else cv2.resize(image.alpha, (w, h), interpolation=interp)
    return Image(np.clip(pixels, 0, 1).astype(np.float32), alpha, image.meta)


def step_inputs(step: Step) -> dict[str, np.ndarray] | None:
    """Extra network inputs a step needs (InstructIR's instruction embedding)."""
    if step.backend == Backend.INSTRUCTIR:
        return instruction_inputs(step)
    return None


def step_runner(step: Step, ctx: Context) -> Runner:
    """The runner of a single-network or built-in step, from the batch's cache."""
    if step.backend == Backend.BUILTIN:
        return ctx.cache.builtin(step.model, scale=step.options.get("scale", 2), strength=step.options.get("strength"))
    return ctx.cache.network(load_catalog().get(step.model), ctx.device)


def target_size(step: Step, width: int, height: int) -> tuple[int, int] | None:
    """(width, height) a superres step was asked to reach ("to 4K", "1080p"), or None."""
    o = step.options
    if not step.target_size:
        return None
    if "target_long_side" in o:
        f = o["target_long_side"] / max(width, height)
    else:
        f = o["target_short_side"] / min(width, height)
    return max(1, round(width * f)), max(1, round(height * f))


def apply_runner(image: Image, runner: Runner, ctx: Context, extra: dict | None = None) -> Image:
    """One runner over an image: channel matching, tiling, alpha carried along."""
    pixels = image.pixels
    gray_in = pixels.shape[2] == 1
    s = runner.needs.scale
    if runner.needs.channels == 1 and not gray_in:
        # A luminance network on a colour image: restore Y, carry the chroma over.
        ycc = cv2.cvtColor(pixels, cv2.COLOR_RGB2YCrCb)
        y = run_tiled(ycc[..., :1], runner, tile=ctx.tile, extra=extra,
                      progress=ctx.progress, cancel=ctx.cancel, on_retry=ctx.on_note)
        chroma = resize(ycc[..., 1:], s)
        out = cv2.cvtColor(np.concatenate([y, chroma], axis=2).astype(np.float32), cv2.COLOR_YCrCb2RGB)
    else:
        feed = np.repeat(pixels, 3, axis=2) if runner.needs.channels == 3 and gray_in else pixels
        out = run_tiled(feed, runner, tile=ctx.tile, extra=extra,
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

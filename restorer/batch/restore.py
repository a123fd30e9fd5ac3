"""Running a Plan on one image: each step through its runner (from the batch's cache) and
the tiling engine, or through its pipeline; channels matched, alpha carried along, target
sizes reached. The CLI, the GUI and every batch executor restore through `restore`."""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, replace
from typing import Callable

import cv2
import numpy as np

from restorer.io.imaging import Image
from restorer.pipelines import run_pipeline
from restorer.pipelines.instruct import instruction_inputs
from restorer.plan.request import Backend, Plan, Step, step_for_size
from restorer.run.context import Context, StepReport
from restorer.run.runner import Runner
from restorer.run.tiles import Cancelled, auto_tile, run_tiled
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
        elif step.backend == Backend.GENERATIVE:
            image = run_generative(step, image, ctx, report)
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


def run_generative(step: Step, image: Image, ctx: Context, report: StepReport) -> Image:
    """A diffusion pipeline over tiles: the noise for the whole image drawn from the step's
    seed and cut with the tiles; progress per denoising step and cancel between steps."""
    from restorer.run.diffusion import DenoiseProgress, generation_of, noise_field

    runner = ctx.cache.network(load_catalog().get(step.model), ctx.device)
    report.ran(runner)
    runner.generation = generation_of(step.options)
    # the noise covers the image as the network is fed it (a gray photo goes in as RGB)
    extra = {name: noise_field(runner.generation.seed, image.height, image.width, channels, ctx.origin, stream=k)
             for k, (name, channels) in enumerate(runner.noise_channels().items())}
    meter = DenoiseProgress(runner.generation.steps, ctx.progress, ctx.cancel)
    runner.on_step = meter.step
    try:
        return apply_runner(image, runner, replace(ctx, progress=meter.tile_done), extra=extra, on_plan=meter.planned)
    finally:
        runner.on_step = None


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


def apply_runner(image: Image, runner: Runner, ctx: Context, extra: dict | None = None,
                 on_plan: Callable[[int], None] | None = None) -> Image:
    """One runner over an image: channel matching, tiling, alpha carried along. `on_plan`
    is told the number of tiles before the first runs (restorer.run.tiles.run_tiled)."""
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
                        progress=ctx.progress, cancel=ctx.cancel, on_retry=ctx.on_note, on_plan=on_plan)
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


# ---------------------------------------------------------------------------------------
# region preview

# Context added around a region beyond a runner's declared overlap: apply_runner resamples
# alpha (and a luminance network's chroma) bicubically, which reads 2 pixels either side.
RESAMPLE_MARGIN = 4


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of one stage of the plan: x0, y0 inclusive; x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int

    def cut(self, image: Image, dx: int = 0, dy: int = 0) -> Image:
        """This box of `image`, whose top-left pixel is at (dx, dy) of this box's frame."""
        rows, cols = slice(self.y0 - dy, self.y1 - dy), slice(self.x0 - dx, self.x1 - dx)
        alpha = None if image.alpha is None else image.alpha[rows, cols]
        return Image(np.ascontiguousarray(image.pixels[rows, cols]), alpha, image.meta)


@dataclass(frozen=True)
class _Stage:
    """One piece of a plan as seen by a region: a tiled step (scale, context, grid) or, with
    `step` None, the resize to a target size. Sizes are the whole image's (width, height)."""

    size_in: tuple[int, int]
    size_out: tuple[int, int]
    step: Step | None = None
    scale: int = 1
    margin: int = 0
    align: int = 1
    min_side: int = 1

    def maps(self, box: Box) -> Box:
        """Where `box` of this stage's input lands in its output."""
        if self.step is not None:
            s = self.scale
            return Box(box.x0 * s, box.y0 * s, box.x1 * s, box.y1 * s)
        (w, h), (tw, th) = self.size_in, self.size_out
        x0, x1 = _scaled_span(box.x0, box.x1, tw / w, tw)
        y0, y1 = _scaled_span(box.y0, box.y1, th / h, th)
        return Box(x0, y0, x1, y1)

    def needs(self, box: Box) -> Box:
        """The input this stage needs to give the whole image's pixels over `box` of its output."""
        (w, h), (tw, th) = self.size_in, self.size_out
        if self.step is not None:
            x0, x1 = self._context(box.x0, box.x1, w)
            y0, y1 = self._context(box.y0, box.y1, h)
        else:
            x0, x1 = _resize_footprint(box.x0, box.x1, w, tw)
            y0, y1 = _resize_footprint(box.y0, box.y1, h, th)
        return Box(x0, y0, x1, y1)

    def _context(self, lo: int, hi: int, length: int) -> tuple[int, int]:
        lo = max(0, lo // self.scale - self.margin)
        hi = min(length, -(-hi // self.scale) + self.margin)
        if hi - lo < self.min_side:  # a smaller crop would be padded up (or see less) where the whole image is not
            hi = min(length, lo + self.min_side)
            lo = max(0, hi - self.min_side)
        # Start on the runner's grid (windows, strided levels) as the whole image does.
        return lo - lo % self.align, hi


def _scaled_span(lo: int, hi: int, factor: float, length: int) -> tuple[int, int]:
    """[lo, hi) scaled by a non-integer factor, rounded, at least one pixel, inside `length`."""
    a = min(length - 1, round(lo * factor))
    return a, min(length, max(a + 1, round(hi * factor)))


def _resize_footprint(lo: int, hi: int, n_in: int, n_out: int) -> tuple[int, int]:
    """The input pixels cv2.resize reads for outputs [lo, hi) of an n_in -> n_out resize:
    output x samples input (x + 0.5) * n_in / n_out - 0.5; Lanczos-4 reads 4 pixels each
    side of it, an area shrink ceil(n_in / n_out) + 1."""
    ratio = n_in / n_out
    support = 4 + math.ceil(ratio)
    a = math.floor((lo + 0.5) * ratio - 0.5) - support
    b = math.ceil((hi - 0.5) * ratio - 0.5) + 1 + support
    return max(0, a), min(n_in, b)


def check_box(box, width: int, height: int) -> Box:
    """A region (x0, y0, x1, y1) of a width x height image, checked; ValueError says what is wrong."""
    try:
        x0, y0, x1, y1 = (operator.index(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"a region is four whole pixel positions (x0, y0, x1, y1), not {box!r}") from None
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"region ({x0}, {y0}, {x1}, {y1}) is empty: x1 must exceed x0 and y1 y0")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"region ({x0}, {y0}, {x1}, {y1}) is not inside the {width}x{height} image "
                         f"(x from 0 to {width}, y from 0 to {height})")
    return Box(x0, y0, x1, y1)


def restore_region(image: Image, plan: Plan, ctx: Context, box: tuple[int, int, int, int]) -> Image:
    """The pixels of `box` (x0, y0, x1, y1 in input pixels, x1 and y1 exclusive) as restoring
    the whole image with `plan` would give them, from a crop of the image: a preview.

    Going back from the last step, the box is grown by the context each step needs (its
    runner's overlap, or a target-size resize's filter reach), clamped to the image and
    started on the runner's padding grid; that crop is restored step by step and the box's
    pixels are cut out. Tiled steps thus see what their tiles see in the whole run, so the
    preview equals the whole run's region within the tiling engine's own bounds
    (docs/seams.md). The result covers the box scaled by the plan: exactly box * scale for
    whole-number scales; for a target size, the box scaled by output / input size, rounded.
    A step that needs the whole image (a global statistic, such as built-in dehaze and low
    light, or a pipeline) makes the whole image run, and the box is cut from the result."""
    region = check_box(box, image.width, image.height)
    stages = _region_stages(image, plan, ctx)
    if stages is None:
        result, _ = restore(image, plan, ctx)
        w, h = result.width / image.width, result.height / image.height
        x0, x1 = _scaled_span(region.x0, region.x1, w, result.width)
        y0, y1 = _scaled_span(region.y0, region.y1, h, result.height)
        return Box(x0, y0, x1, y1).cut(result)
    wanted = [region]
    for stage in stages:
        wanted.append(stage.maps(wanted[-1]))
    needed = [wanted[-1]]  # what each stage must produce, from the last one back
    for stage in reversed(stages):
        needed.insert(0, stage.needs(needed[0]))
    crop = needed[0].cut(image)
    for k, stage in enumerate(stages):
        if ctx.cancel is not None and ctx.cancel.is_set():
            raise Cancelled("cancelled")
        src, dst = needed[k], needed[k + 1]
        if stage.step is None:
            crop = _resize_region(crop, src, dst, stage.size_in, stage.size_out)
        else:
            out, _ = restore(crop, replace(plan, steps=[stage.step]), replace(ctx, origin=(src.y0, src.x0)))
            crop = dst.cut(out, src.x0 * stage.scale, src.y0 * stage.scale)
    return crop


def _region_stages(image: Image, plan: Plan, ctx: Context) -> list[_Stage] | None:
    """The plan as stages over the whole image's sizes, as `restore` would run it on the
    whole image (target sizes resolved from the whole image); None when a step needs the
    whole image."""
    stages = []
    w, h = image.width, image.height
    for planned in plan.steps:
        target = target_size(planned, w, h)
        step = step_for_size(planned, w, h) if target and planned.by_scale else planned
        if step.backend == Backend.PIPELINE:
            return None  # multi-stage jobs detect and fill over the whole image
        if step.backend != Backend.RESIZE:
            runner = step_runner(step, ctx)
            needs = runner.needs
            if needs.whole_image:
                return None
            # The crop's own size decides nothing: the step runs at the scale the whole image chose.
            run = replace(step, options={k: v for k, v in step.options.items() if not k.startswith("target_")},
                          by_scale={})
            min_side = needs.min_side
            if needs.whole_tile_statistics:
                # What a tile sees of the image changes its result: give the crop at least the
                # extent of the whole run's tiles.
                min_side = max(min_side, needs.fixed_tile or ctx.tile or auto_tile(runner))
            align = math.lcm(max(1, needs.fixed_tile or needs.pad_multiple), max(1, needs.tile_multiple))
            s = needs.scale
            stages.append(_Stage((w, h), (w * s, h * s), run, s, max(needs.overlap, RESAMPLE_MARGIN), align,
                                 min_side))
            w, h = w * s, h * s
        if target is not None and (w, h) != target:
            stages.append(_Stage((w, h), target))
            w, h = target
    return stages


def _resize_region(crop: Image, src: Box, dst: Box, size_in: tuple[int, int], size_out: tuple[int, int]) -> Image:
    """`_resize_image` of the whole stage image, over `dst` only, from the `src` crop.

    cv2.resize maps output to input coordinates through the whole sizes, so the crop is
    placed on a zero canvas as wide as the whole image and resized along x, then on one as
    tall and resized along y (both filters are separable; the zeros are beyond every needed
    output's reach)."""
    (w, h), (tw, th) = size_in, size_out
    interp = cv2.INTER_AREA if tw < w else cv2.INTER_LANCZOS4  # as the whole image is resized

    def resized(a: np.ndarray) -> np.ndarray:
        rows = np.zeros((a.shape[0], w) + a.shape[2:], np.float32)
        rows[:, src.x0 : src.x1] = a
        rows = cv2.resize(rows, (tw, a.shape[0]), interpolation=interp).reshape(a.shape[0], tw, *a.shape[2:])
        cols = np.zeros((h, dst.x1 - dst.x0) + a.shape[2:], np.float32)
        cols[src.y0 : src.y1] = rows[:, dst.x0 : dst.x1]
        cols = cv2.resize(cols, (dst.x1 - dst.x0, th), interpolation=interp).reshape(th, dst.x1 - dst.x0,
                                                                                      *a.shape[2:])
        return cols[dst.y0 : dst.y1]

    alpha = None if crop.alpha is None else resized(crop.alpha)
    return Image(np.clip(resized(crop.pixels), 0, 1).astype(np.float32), alpha, crop.meta)

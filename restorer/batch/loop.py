"""The one batch loop: files restored one after another with one plan and one runner cache.
The CLI, the app's queue and any later executor run folders through `run_batch`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from restorer.batch.files import Item, clean_stale_temporaries
from restorer.batch.restore import restore
from restorer.io import imaging
from restorer.plan.request import Plan
from restorer.run.context import Context
from restorer.run.loader import RunnerCache
from restorer.run.tiles import Cancelled, CancelToken


@dataclass
class Output:
    """How outputs are written."""

    fmt: str = "same"
    quality: int = 95
    max_pixels: int | None = None
    save_intermediates: bool = False


def run_batch(
    items: list[Item],
    plan: Plan,
    output: Output,
    *,
    cancel: CancelToken | None = None,
    cache: RunnerCache | None = None,
    on_item: Callable[[int, Item], None] | None = None,
    on_tiles: Callable[[int, int, int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> bool:
    """Restore every pending item; returns False when cancelled (the rest marked cancelled).

    `on_item(index, item)` is called when an item starts ("running") and when it ends;
    `on_tiles(index, done, total)` as its tiles finish. Runners are built once for the
    whole batch (the given cache, else one owned and released here)."""
    owned = cache is None
    cache = cache or RunnerCache()
    clean_stale_temporaries(items)
    finished = True
    try:
        for index, item in enumerate(items):
            if item.status != "pending":
                continue
            if cancel is not None and cancel.is_set():
                finished = False
                break
            item.status = "running"
            if on_item:
                on_item(index, item)

            def progress(done: int, total: int, index=index) -> None:
                if on_tiles:
                    on_tiles(index, done, total)

            ctx = Context(plan.device, plan.tile, progress=progress, cancel=cancel, cache=cache, on_note=on_note)
            try:
                process(item, plan, ctx, output)
            except Cancelled:
                item.status = "cancelled"
                finished = False
            if on_item:
                on_item(index, item)
            if not finished:
                break
    finally:
        if owned:
            cache.clear()
    if not finished:
        for index, item in enumerate(items):
            if item.status == "pending":
                item.status = "cancelled"
                if on_item:
                    on_item(index, item)
    return finished


def process(
    item: Item,
    plan: Plan,
    ctx: Context,
    output: Output,
) -> None:
    """Restore one file into item.output; errors are recorded on the item, never raised."""
    start = time.perf_counter()
    try:
        image = imaging.load(item.input, max_pixels=output.max_pixels)
        item.notes.extend(image.meta.notes)
        ctx.stage_images = {}
        result, reports = restore(image, plan, ctx)
        item.steps = [r.as_dict() for r in reports]
        out_fmt = image.meta.format if output.fmt == "same" else output.fmt
        out_fmt = imaging.format_of(item.output) or out_fmt
        if image.meta.bit_depth == 16 and out_fmt not in imaging.SIXTEEN_BIT_FORMATS:
            item.notes.append(f"16-bit input written as 8-bit {out_fmt}")
        if output.save_intermediates:
            for stage, pixels in ctx.stage_images.items():
                stage_path = item.output.with_name(f"{item.output.stem}.{stage}.png")
                stage_meta = imaging.ImageMeta(format="png", bit_depth=8, gray=pixels.shape[2] == 1)
                imaging.save(imaging.Image(pixels, None, stage_meta), stage_path, format="png")
        imaging.save(result, item.output, format=out_fmt, quality=output.quality)
        item.status = "done"
    except imaging.ImageReadError as e:
        item.status, item.error = "failed", str(e)
    except imaging.ImageWriteError as e:
        item.status, item.error = "failed", str(e)
    except MemoryError:
        item.status, item.error = "failed", f"'{item.input}': out of memory (try a smaller --tile)"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Cancelled:
        raise
    except Exception as e:  # a failing network or pipeline: report it with the file's name
        item.status, item.error = "failed", f"'{item.input}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        item.seconds = time.perf_counter() - start

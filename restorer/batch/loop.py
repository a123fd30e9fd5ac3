"""The one batch loop: files restored one after another with one plan and one runner cache.
The CLI, the app's queue and any later executor run folders through `run_batch`, and so all
of them keep the output folders' journals (restorer.batch.journal) and run markers."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Callable

import numpy as np

from restorer.batch import files, journal
from restorer.batch.files import Item
from restorer.batch.restore import restore
from restorer.io import imaging
from restorer.io.atomic import atomic_path
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
    overwrite: bool = False  # replace existing outputs, restorer's or not (never inputs)


def settle(items: list[Item], plan: Plan, output: Output) -> list[int]:
    """Before anything runs: refuse outputs that would replace an input or that several inputs
    share, then decide from the journals what is skipped, redone or refused. What a dry run
    shows; run_batch does it first. Returns the indices of the items it settled."""
    before = [item.status for item in items]
    files.prepare(items)
    journal.decide(items, journal.plan_fingerprint(plan, output), overwrite=output.overwrite)
    return [i for i, item in enumerate(items) if item.status != before[i]]


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
    for index in settle(items, plan, output):
        if on_item:
            on_item(index, items[index])
    plan_id = PlanId(journal.plan_fingerprint(plan, output), journal.plan_summary(plan))
    owned = cache is None
    cache = cache or RunnerCache()
    finished = True
    markers: dict[Path, Path] = {}
    try:
        _claim_folders(items, markers, on_item)
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
                process(item, plan, ctx, output, plan_id)
            except Cancelled:
                item.status = "cancelled"
                finished = False
            _touch(markers.get(item.output.parent))
            if on_item:
                on_item(index, item)
            if not finished:
                break
    finally:
        if owned:
            cache.clear()
        for marker in markers.values():
            files.release_folder(marker)
    if not finished:
        for index, item in enumerate(items):
            if item.status == "pending":
                item.status = "cancelled"
                if on_item:
                    on_item(index, item)
    return finished


@dataclass
class PlanId:
    """How the journal names this batch's plan."""

    fingerprint: str  # journal.plan_fingerprint
    summary: str  # journal.plan_summary, for people


def _claim_folders(items: list[Item], markers: dict[Path, Path], on_item) -> None:
    """Mark every folder this batch will write to (files.claim_folder) into `markers`; the
    items of a folder that cannot be written to fail here, named, before any image is restored."""
    for item in items:
        folder = item.output.parent
        if item.status != "pending" or folder in markers:
            continue
        try:
            markers[folder] = files.claim_folder(folder)
        except OSError as e:
            problem = f"{folder}: cannot write: {e.strerror or e}"
            for i, other in enumerate(items):
                if other.status == "pending" and other.output.parent == folder:
                    other.status, other.error = "failed", problem
                    if on_item:
                        on_item(i, other)
            continue
        try:
            journal.Journal(folder).compact()
        except OSError:
            pass  # housekeeping only; a journal that cannot be written fails its files by name


def _touch(marker: Path | None) -> None:
    """A marker touched after each file says its run is alive (files.STALE_AFTER)."""
    if marker is not None:
        try:
            os.utime(marker)
        except OSError:
            pass


def process(
    item: Item,
    plan: Plan,
    ctx: Context,
    output: Output,
    plan_id: PlanId,
) -> None:
    """Restore one file into item.output and journal it; errors are recorded on the item,
    never raised. The per-file work of every executor: `render` (read, restore, encode; no
    file written) then `commit` (write atomically, journal); restorer.batch.ray_engine runs
    the first half on a worker and the second here, on the driver."""
    start = time.perf_counter()
    try:
        with failures_recorded(item):
            commit(item, render(item, plan, ctx, output), plan_id)
    finally:
        item.seconds = time.perf_counter() - start


@dataclass
class Rendered:
    """One restored file, encoded, not yet written: what `commit` writes and journals."""

    data: bytes  # the output file's bytes
    input_fp: dict  # journal.input_fingerprint of the input that was read
    stages: dict[str, np.ndarray]  # --save-intermediates: stage name -> pixels


def render(item: Item, plan: Plan, ctx: Context, output: Output) -> Rendered:
    """Read item.input, restore it with `plan` and encode it for item.output (its steps and
    notes go on the item); writes nothing. Raises what `failures_recorded` reports."""
    image = imaging.load(item.input, max_pixels=output.max_pixels)
    try:
        input_fp = journal.input_fingerprint(item.input)
    except OSError as e:
        raise imaging.ImageReadError(item.input, e.strerror or str(e)) from None
    item.notes.extend(image.meta.notes)
    ctx.stage_images = {}
    result, reports = restore(image, plan, ctx)
    item.steps = [r.as_dict() for r in reports]
    out_fmt = image.meta.format if output.fmt == "same" else output.fmt
    out_fmt = imaging.format_of(item.output) or out_fmt
    item.notes.extend(losses(result, image.meta.bit_depth, out_fmt))
    stages = dict(ctx.stage_images) if output.save_intermediates else {}
    return Rendered(imaging.encode(result, out_fmt, output.quality), input_fp, stages)


def commit(item: Item, rendered: Rendered, plan_id: PlanId) -> None:
    """Write what `render` made: the stage images, then the output (atomically, journaled)."""
    for stage_path, image in stage_images(item.output, rendered.stages):
        imaging.save(image, stage_path, format="png")
    entry = journal.record(item.output.name, "writing", rendered.input_fp, plan_id.fingerprint, plan_id.summary,
                           journal.output_fingerprint(rendered.data))
    write_journaled(item.output, rendered.data, entry)
    item.status = "done"


def stage_images(target: PurePath, stages: dict[str, np.ndarray]) -> list[tuple[PurePath, imaging.Image]]:
    """--save-intermediates: each stage's image (8-bit PNG) and its name beside `target`."""
    return [(target.with_name(f"{target.stem}.{stage}.png"),
             imaging.Image(pixels, None, imaging.ImageMeta(format="png", bit_depth=8, gray=pixels.shape[2] == 1)))
            for stage, pixels in stages.items()]


@contextlib.contextmanager
def failures_recorded(item: Item):
    """What fails in `render` or `commit` becomes item.status "failed" and one line in
    item.error naming the file; cancelling and interrupts pass through."""
    try:
        yield
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


def losses(image: imaging.Image, bit_depth: int, fmt: str) -> list[str]:
    """What writing `image` as `fmt` drops, one note each (imaging.encode drops it silently)."""
    notes = []
    if bit_depth == 16 and fmt not in imaging.SIXTEEN_BIT_FORMATS:
        notes.append(f"16-bit input written as 8-bit {fmt}")
    if image.alpha is not None:
        if fmt not in imaging.ALPHA_FORMATS:
            notes.append(f"alpha channel dropped: {fmt} has no transparency")
        elif image.pixels.shape[2] == 1 and bit_depth == 16 and fmt in imaging.SIXTEEN_BIT_FORMATS:
            notes.append(f"alpha channel dropped: 16-bit gray {fmt} is written without one")
    return notes


def write_journaled(path: Path, data: bytes, entry: dict) -> None:
    """`data` as `path`, complete or not at all, with the permissions open() would give; its
    "writing" record goes into the folder's journal before the rename, "done" after."""
    book = journal.Journal(path.parent)
    try:
        book.append(entry)
    except OSError as e:
        raise imaging.ImageWriteError(book.path, e.strerror or str(e)) from None
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, imaging.FILE_MODE)
    except OSError as e:
        raise imaging.ImageWriteError(path, e.strerror or str(e)) from None
    try:
        book.append({**entry, "status": "done"})
    except OSError:
        pass  # the "writing" record, whose hash the output matches, already vouches for it

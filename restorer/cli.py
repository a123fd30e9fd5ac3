"""restorer-cli: restore files and folders from the command line.

    restorer-cli photo.jpg -o out/ --task denoise
    restorer-cli --instruction "remove rain then upscale 2x" photos/ -o out/ --recursive
    restorer-cli models list

Exit codes: 0 all done, 1 some files failed (the rest were written), 2 nothing could be
done (bad arguments, an unreadable single input, a model that is not installed).
Importing this module must stay light: no torch, no Qt.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from pathlib import Path

from restorer import __version__
from restorer.tasks import TASKS

PROG = "restorer-cli"


class _OneLine(logging.Handler):
    """Warnings from the engine (CUDA fallback, OOM retries) as one line each on stderr."""

    def emit(self, record):
        print(f"{PROG}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Restore photos with published networks or built-in operators. "
        "Manage models with: restorer-cli models --help",
    )
    p.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="image files or folders")
    p.add_argument("-o", "--output", type=Path, metavar="OUTDIR", help="output folder")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--task", choices=TASKS, help="what to do; picks the best installed model")
    what.add_argument("--model", metavar="ID", help="a catalog model id (restorer-cli models list)")
    what.add_argument("--instruction", metavar="TEXT", help='what is wrong, in words: "remove rain then upscale 2x"')
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="upscaling factor for superres")
    p.add_argument("--strength", type=float, metavar="S", help="0..1 for operators that have one")
    p.add_argument("--tile", type=int, metavar="N", help="tile size in pixels (default: from free memory)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--format", choices=("same", "png", "jpg", "webp", "tiff"), default="same")
    p.add_argument("--quality", type=int, default=95, metavar="Q", help="JPEG/WebP quality (default 95)")
    p.add_argument("--suffix", default="", metavar="S", help="added to output file names")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--dry-run", action="store_true", help="show the plan and the files; write nothing")
    p.add_argument("--json", action="store_true", help="print one machine-readable report on stdout")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images larger than N pixels (default 400 million)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="fetch a model the request needs that is not installed (default: ask on a "
                   "terminal, else print the command to type)")
    g = p.add_argument_group("old photos and text removal")
    g.add_argument("--scratches", choices=("auto", "yes", "no"), default="auto")
    g.add_argument("--faces", action=argparse.BooleanOptionalAction, default=True)
    g.add_argument("--hr", action="store_true", help="the old-photo high-resolution mode")
    g.add_argument("--mask", type=Path, metavar="M", help="your own text mask (white = remove)")
    g.add_argument("--boxes", type=parse_boxes, metavar="X0,Y0,X1,Y1[;...]",
                   help="text boxes in pixels instead of detecting them")
    g.add_argument("--dilate", type=int, default=None, metavar="N", help="grow the text mask by N pixels")
    g.add_argument("--save-intermediates", action="store_true", help="write each stage's image beside the output")
    p.add_argument("--version", action="version", version=f"restorer {__version__}")
    return p


def parse_boxes(text: str) -> list[list[float]]:
    """"10,20,200,60;5,5,50,30" -> axis-aligned boxes [x0, y0, x1, y1]."""
    boxes = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            x0, y0, x1, y1 = (float(v) for v in part.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"a box is X0,Y0,X1,Y1 in pixels, not {part!r}") from None
        if x1 <= x0 or y1 <= y0:
            raise argparse.ArgumentTypeError(f"box {part!r} is empty (X1 must exceed X0, Y1 Y0)")
        boxes.append([x0, y0, x1, y1])
    return boxes


def fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["models"]:
        from restorer.models_cli import main as models_main

        return models_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.getLogger("restorer").addHandler(_OneLine())
    logging.getLogger("restorer").setLevel(logging.WARNING)
    logging.getLogger("restorer").propagate = False
    try:
        return run(args)
    except KeyboardInterrupt:
        return fail("interrupted; finished files are kept, no partial file was left", 130)


def run(args) -> int:
    from restorer.batch import files
    from restorer.batch.loop import Output, run_batch
    from restorer.plan.request import ModelMissing, Options, RequestError, plan_request

    if not args.inputs:
        return fail("no input given; usage: restorer-cli INPUT... -o OUTDIR --task T (see --help)")
    if not (args.task or args.model or args.instruction is not None):
        return fail("say what to do: --task T, --model ID or --instruction TEXT (see --help)")
    missing = [p for p in args.inputs if not p.exists()]
    if missing:
        return fail(f"cannot read '{missing[0]}': no such file or folder")
    if args.output is None and not args.dry_run:
        return fail("no output folder: add -o OUTDIR")

    options = Options(device=args.device, tile=args.tile, scale=args.scale, strength=args.strength,
                      extra=pipeline_options(args))
    asked: set[str] = set()
    while True:
        try:
            plan = plan_request(options, task=args.task, model=args.model, instruction=args.instruction)
            break
        except ModelMissing as e:
            ids = [s.id for s in e.specs]
            if asked & set(ids) or not _consent(args, e):
                return fail(str(e))
            asked |= set(ids)
            problem = fetch_models(e.specs, quiet=args.quiet)
            if problem:
                return fail(problem)
        except RequestError as e:
            return fail(str(e))

    outdir = args.output or Path(".")
    items = files.discover(args.inputs, outdir, recursive=args.recursive, fmt=args.format, suffix=args.suffix)
    files.prepare(items, overwrite=args.overwrite)

    if args.dry_run:
        for item in items:
            if item.status == "pending":
                item.status = "would-restore"
            elif item.status == "skipped":
                item.status = "would-skip"
        return report(args, plan, items)

    if not args.json:
        for step in plan.steps:
            print(f"{PROG}: {step.task}: {step.model} ({step.why or step.backend})", file=sys.stderr)
    show = not args.quiet and sys.stderr.isatty()
    files_bar = _bar(sum(1 for i in items if i.status == "pending"), "files", show)
    tiles_bar = None

    def on_item(index, item):
        nonlocal tiles_bar
        if item.status == "running":
            tiles_bar = _bar(None, item.input.name, show, leave=False)
            return
        if tiles_bar is not None:
            tiles_bar.close()
        if files_bar is not None:
            files_bar.update(1)
        if item.status == "failed" and not args.json:
            print(f"{PROG}: {item.error}", file=sys.stderr)

    def on_tiles(index, done, total):
        if tiles_bar is not None:
            tiles_bar.total = total
            tiles_bar.n = done
            tiles_bar.refresh()

    output = Output(args.format, args.quality, _max_pixels(args), args.save_intermediates)
    run_batch(items, plan, output, cancel=threading.Event(), on_item=on_item, on_tiles=on_tiles,
              on_note=lambda m: logging.getLogger("restorer").warning(m))
    if files_bar is not None:
        files_bar.close()
    return report(args, plan, items)


def _consent(args, e) -> bool:
    """--download / --no-download decide; else ask once on a terminal (default yes); a run
    without a terminal does not download."""
    if args.download is not None:
        return args.download
    if not sys.stdin.isatty():
        return False
    offer = e.offer().replace(f"model {e.wanted} needs", f"--model {e.wanted} needs")
    print(f"{PROG}: {offer} — download now? [Y/n] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, KeyboardInterrupt):
        return False
    if not answer:  # end of input
        print(file=sys.stderr)
        return False
    return answer.strip().lower() in ("", "y", "yes")


def fetch_models(specs, quiet: bool = False) -> str | None:
    """Download `specs` into the store (progress on stderr), then convert each to ONNX
    (restorer.run.loader.make_runnable). Returns an error line, or None."""
    from restorer.models_cli import download_with_progress
    from restorer.zoo.catalog import human_size
    from restorer.zoo.layout import StoreError

    show = not quiet and sys.stderr.isatty()
    for spec in specs:
        size = human_size(spec.size)
        print(f"{PROG}: downloading {spec.id}" + (f" ({size})" if size != "-" else ""), file=sys.stderr)
        try:
            download_with_progress(spec, show=show)
        except StoreError as e:
            return str(e)
    from restorer.run.loader import make_runnable

    for spec in specs:
        try:
            how = make_runnable(spec)
        except Exception as e:  # noqa: BLE001 - the eager runner (with torch) may still run it
            logging.getLogger("restorer").debug("conversion of %s skipped: %s", spec.id, e)
            continue
        if how:
            print(f"{PROG}: converted {spec.id} to ONNX ({how})", file=sys.stderr)
    return None


def _max_pixels(args) -> int | None:
    from restorer.io.imaging import DEFAULT_MAX_PIXELS

    return args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS


def _bar(total, desc, show, leave=True):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="tile" if total is None else "file", leave=leave, file=sys.stderr)


def pipeline_options(args) -> dict:
    extra = {}
    if args.scratches != "auto":
        extra["scratches"] = args.scratches
    if not args.faces:
        extra["faces"] = False
    if args.hr:
        extra["hr"] = True
    if args.mask is not None:
        extra["mask"] = str(args.mask)
    if args.boxes:
        extra["boxes"] = args.boxes
    if args.dilate is not None:
        extra["dilate"] = args.dilate
    return extra


def report(args, plan, items) -> int:
    failed = [i for i in items if i.status == "failed"]
    succeeded = [i for i in items if i.status in ("done", "skipped", "would-restore", "would-skip")]
    if args.json:
        counts = {}
        for i in items:
            counts[i.status] = counts.get(i.status, 0) + 1
        print(json.dumps({"plan": plan.entries(), "files": [i.as_dict() for i in items],
                          "summary": counts}, indent=2))
    elif not args.dry_run:
        done = sum(1 for i in items if i.status == "done")
        skipped = sum(1 for i in items if i.status == "skipped")
        print(f"{PROG}: {done} restored, {skipped} skipped (already there), {len(failed)} failed", file=sys.stderr)
        if failed:
            print(f"{PROG}: failed:", file=sys.stderr)
            for i in failed:
                print(f"  {i.input}: {i.error}", file=sys.stderr)
    else:
        for step in plan.steps:
            print(f"plan: {step.task} -> {step.model} [{step.backend}] {step.options or ''}")
        for i in items:
            print(f"{i.status}: {i.input} -> {i.output}")
    if failed:
        return 2 if not succeeded and len(items) == 1 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""restorer-cli: restore files and folders from the command line.

    restorer-cli photo.jpg -o out/ --task denoise
    restorer-cli --instruction "remove rain then upscale 2x" photos/ -o out/ --recursive
    restorer-cli models list
    restorer-cli eval restored/ references/ --crop-border 4 --y-channel

Exit codes, the same for one file and for a folder (the table is in README.md):
  0 every input restored (or already there), 1 some files failed and the others were written,
  2 nothing could be done (bad arguments, no images found, a model that is not installed,
  every file failed), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 the reader of
  the output went away (`| head`). Every error is one line on stderr.
Importing this module must stay light: no torch, no Qt.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

from restorer import __version__
from restorer.tasks import TASKS

PROG = "restorer-cli"


MIN_TILE = 32  # restorer.run.tiles.MIN_TILE (not imported: this module stays light)


class _OneLine(logging.Handler):
    """Warnings from the engine (CUDA fallback, OOM retries) as one line each on stderr; of
    the warnings that the device asked for is not the one used, only the first of a run."""

    def __init__(self):
        super().__init__()
        self.device_warned = False

    def emit(self, record):
        from restorer.run.onnx import DEVICE_WARNING

        if getattr(record, DEVICE_WARNING, False):
            if self.device_warned:
                return
            self.device_warned = True
        print(f"{PROG}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (its own print the whole usage first)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _number(kind, low, high=None):
    """An argparse type: an int or float in [low, high] (high None: no upper bound); nan
    and infinities are refused."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{' whole' if kind is int else ''} number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range ({allowed})")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    from restorer.batch.remote import location

    p = _Parser(
        prog=PROG,
        description="Restore photos with published networks or built-in operators. "
        "Manage models with: restorer-cli models --help; measure PSNR/SSIM with: restorer-cli eval --help",
    )
    p.add_argument("inputs", nargs="*", type=location, metavar="INPUT",
                   help="image files or folders (with --engine ray also URLs: s3://, gs://, hdfs://)")
    p.add_argument("-o", "--output", type=location, metavar="OUTDIR",
                   help="output folder (with --engine ray also a URL)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--task", choices=TASKS, help="what to do; picks the best installed model")
    what.add_argument("--model", metavar="ID", help="a catalog model id (restorer-cli models list)")
    what.add_argument("--instruction", metavar="TEXT", help='what is wrong, in words: "remove rain then upscale 2x"')
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="upscaling factor for superres")
    p.add_argument("--strength", type=_number(float, 0, 1), metavar="S", help="0..1 for operators that have one")
    p.add_argument("--tile", type=_number(int, MIN_TILE), metavar="N",
                   help=f"tile size in pixels, at least {MIN_TILE} (default: from free memory)")
    from restorer.run.onnx import DEVICES

    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: CUDA if there, else OpenVINO on an Intel CPU where installed, else ONNX Runtime CPU")
    p.add_argument("--format", default="same", metavar="{same,png,jpg,webp,tiff}",
                   help="output format (default: same as the input)")
    p.add_argument("--quality", type=_number(int, 1, 100), default=95, metavar="Q",
                   help="JPEG/WebP quality, 1 to 100 (default 95)")
    p.add_argument("--suffix", default="", metavar="S", help="added to output file names")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never inputs)")
    p.add_argument("--recursive", action="store_true", help="descend into sub-folders")
    p.add_argument("--dry-run", action="store_true", help="show the plan and the files; write nothing")
    p.add_argument("--json", action="store_true", help="print one machine-readable report on stdout")
    p.add_argument("--max-pixels", type=_number(int, 1), default=None, metavar="N",
                   help="refuse images larger than N pixels (default 400 million)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--download", action=argparse.BooleanOptionalAction, default=None,
                   help="fetch a model the request needs that is not installed (default: ask on a "
                   "terminal, else print the command to type)")
    g = p.add_argument_group("old photos and text removal")
    g.add_argument("--scratches", choices=("auto", "yes", "no"), default="auto")
    g.add_argument("--faces", action=argparse.BooleanOptionalAction, default=None,
                   help="restore the faces after the other steps (the best installed face model, e.g. "
                   "after --task superres); with --task old-photo its own face stage, on by default "
                   "(--no-faces turns it off)")
    g.add_argument("--hr", action="store_true", help="the old-photo high-resolution mode")
    g.add_argument("--mask", type=Path, metavar="M", help="your own text mask (white = remove)")
    g.add_argument("--boxes", type=parse_boxes, metavar="X0,Y0,X1,Y1[;...]",
                   help="text boxes in pixels instead of detecting them")
    g.add_argument("--dilate", type=_number(int, 0), default=None, metavar="N", help="grow the text mask by N pixels")
    g.add_argument("--save-intermediates", action="store_true", help="write each stage's image beside the output")
    gen = p.add_argument_group("generative upscaling (invents detail; restorer[generative])")
    gen.add_argument("--generative", action="store_true",
                     help="upscale with a diffusion model (ldm-sr-x4, sd-x4-upscaler): invents plausible detail")
    gen.add_argument("--seed", type=_number(int, 0), metavar="N", help="the same seed gives the same output (default 0)")
    gen.add_argument("--steps", type=_number(int, 1, 1000), metavar="N", help="denoising steps (more: slower, finer)")
    gen.add_argument("--guidance", type=_number(float, 0, 50), metavar="G",
                     help="how closely to follow the prompt (sd-x4-upscaler; default 9)")
    gen.add_argument("--noise-level", type=_number(int, 0, 350), metavar="N",
                     help="noise added to the input first (sd-x4-upscaler; default 20): more invents more")
    gen.add_argument("--prompt", metavar="TEXT", help="what the photo shows, to guide sd-x4-upscaler")
    gen.add_argument("--negative-prompt", metavar="TEXT", help="what to avoid (sd-x4-upscaler)")
    c = p.add_argument_group("cluster (restorer[cluster]; docs/cluster.md)")
    c.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: one process (default); ray: a pool of Ray workers, same outputs")
    c.add_argument("--address", metavar="ADDR",
                   help="with --engine ray: auto (the running cluster) or HOST:PORT of its head (default: a local Ray)")
    c.add_argument("--workers", type=_number(int, 1), metavar="N",
                   help="with --engine ray: workers (default: the cluster's CPUs, or GPUs / --gpus-per-worker)")
    c.add_argument("--gpus-per-worker", type=_number(float, 0), default=0.0, metavar="F",
                   help="with --engine ray: GPUs per worker (0.5: two workers share a GPU; default 0)")
    c.add_argument("--ship-models", action="store_true",
                   help="with --engine ray: send the plan's models to the workers through Ray's object store "
                        "(for cluster nodes that do not share this machine's model store)")
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it unwinds as on Ctrl-C: the file being
    written is removed, finished files are kept."""


_terminated = False  # SIGTERM arrived during this run (a subcommand may catch _Terminated itself)


def _on_sigterm(signum, frame):
    global _terminated
    _terminated = True
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """restorer-cli: every outcome is an exit code (see the module's docstring) and at most
    one line per problem on stderr, never a traceback."""
    global _terminated
    argv = sys.argv[1:] if argv is None else argv
    _terminated = False
    log = logging.getLogger("restorer")
    handler = _OneLine()
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding program): leave SIGTERM alone
        previous = None
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe (`| head`) surfaces here, inside the handlers below
        return 143 if _terminated and code == 130 else code
    except SystemExit as e:  # argparse: --help, --version, or a bad argument it has printed
        if isinstance(e.code, str):
            return fail(e.code)
        return e.code or 0
    except BrokenPipeError:
        # What the Python docs advise: further output to devnull, so that the interpreter's
        # own flush at exit does not print a second error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except _Terminated:
        return fail("terminated (SIGTERM); finished files are kept, no partial file was left", 143)
    except KeyboardInterrupt:
        return fail("interrupted; finished files are kept, no partial file was left", 130)
    except Exception as e:  # a bug: one line; RESTORER_DEBUG=1 shows where
        if os.environ.get("RESTORER_DEBUG"):
            raise
        first = (str(e).splitlines() or [""])[0]
        return fail(f"internal error: {type(e).__name__}: {first} (RESTORER_DEBUG=1 shows the traceback)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.removeHandler(handler)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["models"]:
        from restorer.models_cli import main as models_main

        return models_main(argv[1:])
    if argv[:1] == ["eval"]:
        from restorer.eval_cli import main as eval_main

        return eval_main(argv[1:])
    return run(build_parser().parse_args(argv))


def run(args) -> int:
    from restorer.batch import files, journal, remote
    from restorer.batch.loop import Output, run_batch, settle
    from restorer.plan.request import ModelMissing, Options, RequestError, plan_request
    from restorer.run.progress import ProgressClock, format_duration

    for option, value, problem in (("--format", args.format, files.check_format(args.format)),
                                   ("--suffix", args.suffix, files.check_suffix(args.suffix))):
        if problem:
            return fail(f"{option} {value!r}: {problem}")
    if not args.inputs:
        return fail("no input given; usage: restorer-cli INPUT... -o OUTDIR --task T (see --help)")
    if args.generative and not (args.task or args.model or args.instruction is not None):
        args.task = "superres"  # --generative alone: a generative 4x upscale
    if args.generative and (args.task not in (None, "superres") or args.model):
        return fail("--generative goes with --task superres (or alone); a model is chosen with --model alone")
    if not (args.task or args.model or args.instruction is not None):
        return fail("say what to do: --task T, --model ID or --instruction TEXT (see --help)")
    urls = [str(p) for p in [*args.inputs, args.output] if p is not None and remote.is_url(p)]
    missing = [p for p in args.inputs if not remote.is_url(p) and not p.exists()]
    if missing:
        return fail(f"{missing[0]}: no such file or folder")
    if args.output is None and not args.dry_run:
        return fail("no output folder: add -o OUTDIR")
    if args.output is not None and not remote.is_url(args.output) and args.output.exists() and not args.output.is_dir():
        return fail(f"{args.output}: is a file, not a folder (-o names the folder outputs go to)")
    if urls and args.engine != "ray":
        return fail(f"{urls[0]}: URLs are read and written by the cluster engine: add --engine ray "
                    "(pip install 'restorer[cluster]')")

    if args.engine == "ray" and not args.dry_run and not _have_ray():  # before any planning or download
        return fail("--engine ray needs Ray: pip install 'restorer[cluster]'")
    if args.engine == "local" and (args.address or args.workers or args.gpus_per_worker or args.ship_models):
        return fail("--address, --workers, --gpus-per-worker and --ship-models go with --engine ray")
    if args.engine == "ray":
        from restorer.batch.ray_engine import ClusterError, check_address

        try:
            check_address(args.address)
        except ClusterError as e:
            return fail(str(e))
    options = Options(device=args.device, tile=args.tile, scale=args.scale, strength=args.strength,
                      extra=pipeline_options(args), faces=bool(args.faces) and args.task != "old-photo",
                      generative=args.generative, generation=generation_options(args))
    asked: set[str] = set()
    while True:
        try:
            # a dry run shows the whole plan, what is not installed too, and downloads nothing
            plan = plan_request(options, task=args.task, model=args.model, instruction=args.instruction,
                                keep_missing=args.dry_run)
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
            if args.dry_run and args.json:  # JSON on stdout for every dry run, a refusal too
                print(json.dumps({"plan": [], "runnable": False, "error": str(e)}, indent=2))
            return fail(str(e))

    outdir = args.output or Path(".")
    batch = None  # a batch with URLs: restorer.batch.remote reads and writes it
    if urls:
        try:
            batch = remote.discover(args.inputs, outdir, recursive=args.recursive, fmt=args.format, suffix=args.suffix,
                                    mask_local=plan.mask_local)
        except remote.RemoteError as e:
            return fail(str(e))
        items = batch.items
    else:
        items = files.discover(args.inputs, outdir, recursive=args.recursive, fmt=args.format, suffix=args.suffix,
                               mask_local=plan.mask_local)
    if not items:  # only folders were given, and they hold no image
        folders = ", ".join(str(p) for p in args.inputs)
        hint = " (add --recursive to look in sub-folders)" if not args.recursive and not urls and _nested(args.inputs) else ""
        return fail(f"no images found in {folders}{hint}")
    clashes = files.collisions(items)
    if clashes:  # refused before any image is restored: one line naming the inputs each
        for line, _ in clashes:
            fail(line)
        return 2
    output = Output(args.format, args.quality, _max_pixels(args), args.save_intermediates, overwrite=args.overwrite)

    if args.dry_run:
        if batch is not None:
            remote.settle(batch, journal.plan_fingerprint(plan, output), overwrite=output.overwrite)
        else:
            settle(items, plan, output)  # what run_batch would skip, redo or refuse; reads only
        for item in items:
            if item.status == "pending":
                item.status = "would-restore"
            elif item.status == "skipped":
                item.status = "would-skip"
        code = report(args, plan, items)
        if not plan.runnable:  # shown whole above; it cannot run until these are installed
            return fail(f"the plan cannot run yet: {plan.missing_line()}")
        return code
    if batch is not None:
        problem = remote.Writer(batch).check()
    else:
        problem = files.check_writable(outdir)
    if problem:
        return fail(problem)

    if not args.json:
        for step in plan.steps:
            print(f"{PROG}: {step.task}: {step.model} ({step.why or step.backend})", file=sys.stderr)
    if args.device == "cuda" and any(step.backend == "builtin" for step in plan.steps):
        from restorer.run.builtin import device_warning

        _device_warning(device_warning(args.device))
    show = not args.quiet and sys.stderr.isatty()
    files_bar = _bar(sum(1 for i in items if i.status == "pending"), "files", show)
    tiles_bar = None
    clock = None  # the running file's progress over the plan's steps
    started = time.perf_counter()

    def on_item(index, item):
        nonlocal tiles_bar, clock
        if item.status == "running":
            clock = ProgressClock.for_plan(plan.steps)
            tiles_bar = _tiles_bar(item.input.name, show)
            return
        if tiles_bar is not None:
            tiles_bar.close()
            tiles_bar = None
        if files_bar is not None:
            files_bar.update(1)
        if item.status == "failed":  # said once, here (the summary only counts)
            print(f"{PROG}: {item.error}", file=sys.stderr)
        if item.status == "done" and item.notes:  # what was lost in saving, why it was redone
            print(f"{PROG}: note: {item.output}: {'; '.join(item.notes)}", file=sys.stderr)

    def on_tiles(index, done, total):
        if tiles_bar is not None:
            # The file's share of the whole plan (all its steps), and the time left measured
            # from its tiles so far: "photo.png: Reduce noise: tile 3 of 12 — 25 % — about 40 s left".
            clock.follow_tiles(done, total)
            tiles_bar.n = clock.percent
            tiles_bar.set_description_str(f"{items[index].input.name}: {clock.line()}", refresh=False)
            tiles_bar.refresh()

    if args.engine == "ray":
        code = _run_ray(args, items, plan, output, on_item, show, batch)
        if code is not None:  # Ray could not be started or joined: nothing was restored
            return code
    else:
        run_batch(items, plan, output, cancel=threading.Event(), on_item=on_item, on_tiles=on_tiles,
                  on_note=lambda m: logging.getLogger("restorer").warning(m))
    if files_bar is not None:
        files_bar.close()
        print(f"{PROG}: finished in {format_duration(time.perf_counter() - started)}", file=sys.stderr)
    if args.device == "cuda":  # whatever ran elsewhere than asked (pipeline stages too), said once
        used = {s.get("provider") for i in items for s in i.steps} - {None, "", "CUDAExecutionProvider"}
        if used:
            _device_warning(f"CUDA was asked for, but some steps ran on the CPU ({', '.join(sorted(used))})")
    return report(args, plan, items)


def _have_ray() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        return False


def _run_ray(args, items, plan, output, on_item, show, batch=None) -> int | None:
    """The batch on Ray workers (restorer.batch.ray_engine): the same settling, per-file code
    and journals as run_batch. Progress: the files bar on a terminal, else a line every few
    seconds; then the wall time and throughput. An exit code when Ray cannot be used."""
    from restorer.batch.ray_engine import ClusterError, run_batch_ray
    from restorer.run.progress import format_duration

    last = [0.0, None]  # when a line was printed; the last progress

    def on_progress(p):
        last[1] = p
        if show or args.quiet or (time.perf_counter() - last[0] < 5 and p.done < p.total):
            return
        last[0] = time.perf_counter()
        eta = f", about {format_duration(p.eta)} left" if p.eta is not None and p.done < p.total else ""
        print(f"{PROG}: {p.done}/{p.total} images, {p.rate:.2f} images/s{eta}", file=sys.stderr)

    started = time.perf_counter()
    try:
        run_batch_ray(items, plan, output, address=args.address, workers=args.workers,
                      gpus_per_worker=args.gpus_per_worker, ship_models=args.ship_models, cancel=threading.Event(), on_item=on_item,
                      on_progress=on_progress, on_note=lambda m: logging.getLogger("restorer").warning(m), remote=batch)
    except ClusterError as e:
        return fail(str(e))
    if last[1] is not None and not args.json:
        p, wall = last[1], time.perf_counter() - started
        print(f"{PROG}: ray: {p.done} images in {format_duration(wall)} wall time, {p.done / wall:.2f} images/s "
              f"({p.rate:.2f} images/s once the workers were asked)", file=sys.stderr)
    return None


def _nested(folders: list[Path]) -> bool:
    """Whether any of `folders` has a sub-folder (an unreadable one has none we can see)."""
    try:
        return any(child.is_dir() for folder in folders for child in folder.iterdir())
    except OSError:
        return False


def _device_warning(message: str) -> None:
    from restorer.run.onnx import DEVICE_WARNING

    logging.getLogger("restorer").warning(message, extra={DEVICE_WARNING: True})


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


def _bar(total, desc, show):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="file", file=sys.stderr)


def _tiles_bar(name, show):
    """One file's bar: its percentage of the whole plan, then the step, tile and time left
    in words (set per report); tqdm's own rate and estimate would count tiles of one step only."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=100, desc=name, bar_format="{bar:20}| {desc}", leave=False, file=sys.stderr)


def generation_options(args) -> dict:
    """The generative settings the user gave (the model's defaults fill in the rest)."""
    names = ("seed", "steps", "guidance", "noise_level", "prompt", "negative_prompt")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def pipeline_options(args) -> dict:
    extra = {}
    if args.scratches != "auto":
        extra["scratches"] = args.scratches
    if args.faces is False:
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
        print(json.dumps({"plan": plan.entries(), **({"runnable": plan.runnable} if args.dry_run else {}),
                          "files": [i.as_dict() for i in items], "summary": counts}, indent=2))
    elif not args.dry_run:
        done = sum(1 for i in items if i.status == "done")
        skipped = sum(1 for i in items if i.status == "skipped")
        print(f"{PROG}: {done} restored, {skipped} skipped (already there), {len(failed)} failed", file=sys.stderr)
    else:
        for step in plan.steps:
            print(f"plan: {step.plan_line()}")
        for i in items:
            print(f"{i.status}: {i.input} -> {i.output}")
    if failed:  # the same rule for one file and for a folder
        return 1 if succeeded else 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

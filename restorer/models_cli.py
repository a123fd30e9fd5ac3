"""restorer-cli models ...: list, inspect, download, add, verify, remove and export models.

    restorer-cli models list [--task T] [--installed] [--all] [--json]
    restorer-cli models info ID
    restorer-cli models download ID
    restorer-cli models add FILE [--id ID]
    restorer-cli models verify [ID]
    restorer-cli models remove ID
    restorer-cli models export ID [--tile N] [--fp16] [--force]   (a pipeline: its installed parts)

Errors are one line `restorer-cli: ...` with exit code 2. torch is imported only by the
commands that need it (add/verify of .pth files, export).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from restorer.tasks import TASKS
from restorer.zoo import download as download_mod
from restorer.zoo import layout
from restorer.zoo.catalog import ModelSpec, can_download, human_size

PROG = "restorer-cli"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} models", description="Manage the networks restorer can use.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    ls = sub.add_parser("list", help="catalog models, their licence and whether they are installed")
    ls.add_argument("--task", choices=TASKS)
    ls.add_argument("--installed", action="store_true", help="only models that can run now")
    ls.add_argument("--all", action="store_true", help="also models announced by their authors but never released")
    ls.add_argument("--json", action="store_true", help="a JSON array on stdout")
    info = sub.add_parser("info", help="what a model is for, its licence, and how to install it")
    info.add_argument("id")
    info.add_argument("--json", action="store_true")
    dl = sub.add_parser("download", help="fetch a model's files (progress, resume, sha256)")
    dl.add_argument("id")
    dl.add_argument("--mirror", metavar="URL", help="fetch files from URL/<file name> instead")
    add = sub.add_parser("add", help="install a checkpoint, a zip of them, or a diffusers model folder you downloaded")
    add.add_argument("file", type=Path)
    add.add_argument("--id", dest="model_id", metavar="ID", help="check the file against this model only")
    ver = sub.add_parser("verify", help="check installed files (sha256, tensor names and shapes)")
    ver.add_argument("id", nargs="?")
    rm = sub.add_parser("remove", help="delete a model's files and exports")
    rm.add_argument("id")
    ex = sub.add_parser("export", help="export an installed model to ONNX (faster), checked against PyTorch")
    ex.add_argument("id")
    ex.add_argument("--tile", type=int, metavar="N", help="tile size for tracing and the parity check")
    ex.add_argument("--fp16", action="store_true", help="half precision (only where the catalog says it is safe)")
    ex.add_argument("--force", action="store_true", help="export again; allow fp16 where it is not known safe")
    return p


def fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[2:] if argv is None else argv)
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as e:
        return fail(_one_line(e))
    except KeyboardInterrupt:
        return fail("interrupted; a partial download is kept and resumed next time", 130)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as one line: store and catalog errors, and export errors
    (restorer.convert.export imports torch, so it is only consulted once a command loaded it)."""
    from restorer.zoo.layout import StoreError

    errors = [StoreError, KeyError]
    if "restorer.convert.export" in sys.modules:
        errors.append(sys.modules["restorer.convert.export"].ExportError)
    return tuple(errors)


def _one_line(error: BaseException) -> str:
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    return " ".join(str(text).split())


def _catalog():
    from restorer.zoo import catalog

    return catalog.load_catalog()


def _spec(model_id: str) -> ModelSpec:
    return _catalog().get(model_id)


def licence_of(spec: ModelSpec) -> str:
    return f"{spec.licence} [non-commercial]" if spec.non_commercial else spec.licence


def size_of(spec: ModelSpec) -> int:
    """Bytes to download: the catalog's figure, else what the installed files take (the
    catalog does not know every file's size); 0 when neither is known."""
    if spec.size:
        return spec.size
    return sum(p.stat().st_size for p in layout.weight_paths(spec) if p.is_file())


def row_of(spec: ModelSpec) -> dict:
    state = layout.state(spec)
    return {
        "id": spec.id, "title": spec.title, "family": spec.family, "tasks": list(spec.tasks), "arch": spec.arch,
        "scale": spec.output_scale, "size": size_of(spec), "licence": spec.licence, "non_commercial": spec.non_commercial,
        "released": spec.released, "state": state, "installed": state in ("built-in", "bundled", "onnx", "installed", "ready"),
    }


# The store's states (restorer.zoo.layout.state) as a person would say them.
STATE_WORDS = {"missing": "not installed", "onnx": "installed", "unreleased": "never released"}


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _what_for(spec: ModelSpec, catalog) -> str:
    """Its tasks; for a part of other models (a pipeline stage, a text encoder), which ones."""
    if spec.tasks:
        return ",".join(spec.tasks)
    users = [s.id for s in catalog if spec.id in s.needs]
    return f"(part of {', '.join(users)})" if users else "-"


def cmd_list(args) -> int:
    catalog = _catalog()
    specs = [s for s in catalog if args.task is None or args.task in s.tasks]
    hidden = 0 if args.all else sum(1 for s in specs if not s.released)
    if not args.all:
        specs = [s for s in specs if s.released]
    rows = [(s, row_of(s)) for s in specs]
    if args.installed:
        rows = [(s, r) for s, r in rows if r["installed"]]
    if args.json:
        print(json.dumps([r for _, r in rows], indent=1))
        return 0
    # The licence is the last column and never shortened: it decides whether a model may be used.
    table = [("ID", "FOR", "SCALE", "SIZE", "STATUS", "LICENCE")]
    for spec, r in rows:
        table.append((r["id"], _clip(_what_for(spec, catalog), 30), f"x{r['scale']}", human_size(r["size"]),
                      STATE_WORDS.get(r["state"], r["state"]), licence_of(spec)))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    if any(r["non_commercial"] for _, r in rows):
        print("\n[non-commercial] = the licence forbids commercial use", file=sys.stderr)
    if hidden:
        print(f"{hidden} model(s) announced by their authors but never released are hidden: --all lists them",
              file=sys.stderr)
    return 0


def details_of(spec: ModelSpec) -> dict:
    """Everything the catalog and the store know (models info --json)."""
    info = row_of(spec)
    info.update({
        "paper": spec.paper, "notes": spec.notes, "details": f"docs/models.md, section {spec.id}",
        "channels": spec.channels, "pad_multiple": spec.pad_multiple,
        "tile": spec.tile, "precisions": list(spec.precisions), "needs": list(spec.needs),
        "files": [{"name": f.name, "url": f.url, "sha256": f.sha256, "size": f.size, "browser": not can_download(f),
                   **({"member": f.member} if f.member else {})} for f in spec.files],
        "store": str(layout.model_dir(spec)), "exports": layout.exported_precisions(spec),
    })
    if not info["installed"] and not spec.builtin:
        from restorer.zoo.catalog import install_hint

        info["install"] = install_hint(spec)
    return info


def cmd_info(args) -> int:
    spec = _spec(args.id)
    info = details_of(spec)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    catalog = _catalog()
    licence = spec.licence
    if spec.non_commercial and "non-commercial" not in licence.lower():
        licence += " (non-commercial use only)"
    size = human_size(info["size"]) if info["size"] else "not known until downloaded"
    install = info.get("install", "").removeprefix(f"model '{spec.id}' is not installed: ")
    if spec.is_pipeline and install:  # a pipeline has no files of its own: its parts are downloaded
        missing = [n for n in spec.needs if not layout.is_ready(_spec(n))]
        install = f"restorer-cli models download PART, for each missing part: {', '.join(missing)}"
    lines = [
        ("", spec.title),
        ("id", spec.id),
        ("for", _what_for(spec, catalog).replace(",", ", ")
         + (f", output x{spec.output_scale}" if spec.output_scale > 1 else "")),
        ("about", spec.notes),
        ("licence", licence),
        ("status", STATE_WORDS.get(info["state"], info["state"])),
        ("size", size if spec.files and spec.released else ""),
        ("needs", ", ".join(spec.needs)),
        ("install", install if spec.released else ""),
        ("stored in", info["store"] if info["installed"] and spec.files else ""),
        ("paper", spec.paper),
    ]
    for f in spec.files:
        where = f.url + (f" ({f.member} inside)" if f.member else "") + ("  [open in a browser]" if not can_download(f) else "")
        lines.append(("file", f"{f.name}  {human_size(f.size)}  {where}"))
    lines.append(("details", f"docs/models.md in restorer's source, section {spec.id}"))
    for key, value in lines:
        if value:
            print(f"{key + ':':<11} {value}" if key else value)
    return 0


def download_with_progress(spec: ModelSpec, *, show: bool, base_url: str | None = None):
    """download_mod.download with a byte progress bar on stderr when `show`."""
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if not show:
            return
        if bar is None:
            from tqdm import tqdm

            bar = tqdm(total=total or None, unit="B", unit_scale=True, desc=spec.id, file=sys.stderr)
        bar.total = total or None
        bar.n = done
        bar.refresh()

    try:
        return download_mod.download(spec, progress=progress, base_url=base_url)
    finally:
        if bar is not None:
            bar.close()


def cmd_download(args) -> int:
    spec = _spec(args.id)
    installed = download_with_progress(spec, show=sys.stderr.isatty(), base_url=args.mirror)
    if not installed:
        print(f"{spec.id}: already installed")
    for model_id, path in installed:
        print(f"installed {model_id}: {path}")
    _make_runnable(model_id for model_id, _ in installed)
    return 0


def _make_runnable(model_ids) -> None:
    """Fill the shipped ONNX template of each newly installed model (seconds, no torch)."""
    from restorer.run.loader import make_runnable

    for model_id in model_ids:
        spec = _spec(model_id)
        try:
            if make_runnable(spec, export=False):
                print(f"ready {model_id}: ONNX model made from restorer's template (no PyTorch needed)")
        except layout.StoreError as e:
            print(f"{PROG}: {model_id}: {e}", file=sys.stderr)


def cmd_add(args) -> int:
    from restorer.zoo import install
    result = install.add(args.file, args.model_id)
    for model_id, path in result.installed:
        print(f"installed {model_id}: {path}")
    _make_runnable(model_id for model_id, _ in result.installed)
    for why in result.unmatched:
        print(f"{PROG}: skipped: {why}", file=sys.stderr)
    return 0


def cmd_verify(args) -> int:
    from restorer.zoo import install, layout
    if args.id:
        specs = [_spec(args.id)]
    else:
        specs = [s for s in _catalog() if not s.builtin and layout.is_installed(s)]
        if not specs:
            print("no models installed")
            return 0
    bad = 0
    for spec in specs:
        problems = install.verify(spec)
        if problems:
            bad += 1
            for p in problems:
                print(f"{spec.id}: {p}")
        else:
            print(f"{spec.id}: ok")
    if bad:
        return fail(f"{bad} model(s) failed verification")
    return 0


def cmd_remove(args) -> int:
    from restorer.zoo import install
    spec = _spec(args.id)
    removed = install.remove(spec)
    if not removed:
        return fail(f"model '{spec.id}' is not installed")
    print(f"removed {spec.id} ({len(removed)} item(s))")
    return 0


def cmd_export(args) -> int:
    from restorer.convert.export import export_model, export_parts

    spec = _spec(args.id)
    if spec.generative:
        return fail(f"'{spec.id}' is a diffusion pipeline: it runs in PyTorch through diffusers, not from ONNX")
    precision = "fp16" if args.fp16 else "fp32"
    specs = [spec]
    if spec.is_pipeline:  # a pipeline is exported as its parts: those that are here
        parts = [p for p in map(_spec, spec.needs) if p.files]
        specs = [p for p in parts if layout.is_installed(p) or precision in layout.exported_precisions(p)]
        skipped = [p.id for p in parts if p.id not in {s.id for s in specs}]
        if skipped:
            print(f"{PROG}: skipping {', '.join(skipped)} (not installed)", file=sys.stderr)
        if not specs:
            return fail(f"none of the parts of '{spec.id}' is installed: restorer-cli models download {spec.id}")
    for one in specs:
        path, result = export_model(one, tile=args.tile, precision=precision, force=args.force,
                                    progress=lambda message: print(f"{PROG}: {message}", file=sys.stderr))
        parts = export_parts(one)
        where = ", ".join(str(layout.onnx_path(one, precision, part)) for part in parts) if parts else path
        print(f"exported {one.id} ({precision}): {where} (max abs diff vs PyTorch {result.max_abs_diff:.2e}, "
              f"tolerance {result.tolerance:g})")
    return 0


COMMANDS = {
    "list": cmd_list, "info": cmd_info, "download": cmd_download, "add": cmd_add,
    "verify": cmd_verify, "remove": cmd_remove, "export": cmd_export,
}

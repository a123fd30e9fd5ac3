"""restorer-cli models ...: list, inspect, download, add, verify, remove and export models.

    restorer-cli models list [--task T] [--installed] [--json]
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
    ls.add_argument("--json", action="store_true", help="a JSON array on stdout")
    info = sub.add_parser("info", help="everything the catalog and the store know about a model")
    info.add_argument("id")
    info.add_argument("--json", action="store_true")
    dl = sub.add_parser("download", help="fetch a model's files (progress, resume, sha256)")
    dl.add_argument("id")
    dl.add_argument("--mirror", metavar="URL", help="fetch files from URL/<file name> instead")
    add = sub.add_parser("add", help="install a checkpoint (or a zip of them) you downloaded yourself")
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


def row_of(spec: ModelSpec) -> dict:
    state = layout.state(spec)
    return {
        "id": spec.id, "title": spec.title, "family": spec.family, "tasks": list(spec.tasks), "arch": spec.arch,
        "scale": spec.output_scale, "size": spec.size, "licence": spec.licence, "non_commercial": spec.non_commercial,
        "released": spec.released, "state": state, "installed": state in ("built-in", "bundled", "onnx", "installed", "ready"),
    }


def _clip(text: str, width: int) -> str:
    """Long cells shortened, keeping a trailing [NC] mark visible."""
    if len(text) <= width:
        return text
    mark = " [NC]" if text.endswith(" [NC]") else ""
    return text[: width - len(mark) - 3] + "..." + mark


def cmd_list(args) -> int:
    specs = [s for s in _catalog() if args.task is None or args.task in s.tasks]
    rows = [row_of(s) for s in specs]
    if args.installed:
        rows = [r for r in rows if r["installed"]]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = [("ID", "TASKS", "ARCH", "SCALE", "SIZE", "LICENCE", "INSTALLED")]
    for r in rows:
        table.append((r["id"], ",".join(r["tasks"]) or "-", r["arch"], f"x{r['scale']}", human_size(r["size"]),
                      (r["licence"] + " [NC]") if r["non_commercial"] else r["licence"], r["state"]))
    table = [(row[0], *(_clip(cell, 36) for cell in row[1:])) for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    if any(r["non_commercial"] for r in rows):
        print("\n[NC] = the licence forbids commercial use", file=sys.stderr)
    return 0


def cmd_info(args) -> int:
    from restorer.zoo import layout
    spec = _spec(args.id)
    info = row_of(spec)
    info.update({
        "paper": spec.paper, "notes": spec.notes, "channels": spec.channels, "pad_multiple": spec.pad_multiple,
        "tile": spec.tile, "precisions": list(spec.precisions), "needs": list(spec.needs),
        "files": [{"name": f.name, "url": f.url, "sha256": f.sha256, "size": f.size, "browser": not can_download(f),
                   **({"member": f.member} if f.member else {})} for f in spec.files],
        "store": str(layout.model_dir(spec)), "exports": layout.exported_precisions(spec),
    })
    if not info["installed"] and not spec.builtin:
        from restorer.zoo.catalog import install_hint

        info["install"] = install_hint(spec)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    for key, value in info.items():
        if key == "files":
            for f in value:
                where = f"{f['url']}" + (f" ({f['member']} inside)" if f.get("member") else "")
                print(f"file:         {f['name']}  {human_size(f['size'])}  {where}"
                      + ("  [open in a browser]" if f["browser"] else "") + (f"  sha256 {f['sha256']}" if f["sha256"] else ""))
        elif key == "size":
            print(f"{'size:':<13} {human_size(value)}")
        elif value not in ("", [], None):
            print(f"{key + ':':<13} {', '.join(map(str, value)) if isinstance(value, list) else value}")
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

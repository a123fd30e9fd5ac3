"""Where ONNX Runtime spends a family's time: its profiler's per-operator totals for one tile,
run the way restorer runs it (sizes fixed to the tile, the product's session options).

    python bench/profile_ort.py [FAMILY ...] [--tile N] [--top K]

Families and default tiles are those of bench/bench_families.py. Prints one Markdown table
per family: operator, milliseconds in the profiled run, share of the operators' total.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_families import FAMILIES, build_module, fit_tile  # noqa: E402


def profile(family: str, tile: int | None, top: int) -> str:
    from restorer.convert.export import example_inputs
    from restorer.run import onnx as ort_runtime
    from restorer.zoo.catalog import load_catalog
    from restorer.zoo.templates import fill, template_for

    model, default_tile = FAMILIES[family]
    spec = load_catalog().get(model)
    tile = fit_tile(spec, tile or default_tile)
    module = build_module(spec)
    feeds = {k: v.numpy() for k, v in example_inputs(spec, module, tile).items()}
    with tempfile.TemporaryDirectory(prefix="profile-") as scratch:
        path = fill(template_for(spec), {k: v.numpy() for k, v in module.state_dict().items()},
                    Path(scratch) / "model.onnx")
        del module
        ort = ort_runtime.import_onnxruntime()
        probe = ort_runtime.create_session(path, "cpu", optimize=False).session
        symbols = {i.name: list(i.shape) for i in probe.get_inputs()}
        del probe
        feeds = {k: v for k, v in feeds.items() if k in symbols}
        options = ort_runtime._options(ort, ort_runtime.fixed_sizes(symbols, feeds), True)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        session.run(None, feeds)  # one run: a scan's iterations fill the profiler's event limit fast
        events = json.loads(Path(session.end_profiling()).read_text())
    # The profiler stops recording at its event limit (MambaIR's Scan bodies reach it): then
    # the totals cover the first part of the run only, and the table says so.
    complete = any(e.get("name") == "model_run" for e in events)
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"].get("op_name", "?")
            totals[op] = totals.get(op, 0.0) + e["dur"] / 1000
    whole = sum(totals.values())
    lines = [f"**{family}** ({model}, {tile}x{tile}): {whole:.0f} ms in operators"
             + ("" if complete else " (the profiler's event limit cut the run short: the first part only)"),
             "", "| operator | ms | share |", "|---|---|---|"]
    for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {op} | {ms:.0f} | {100 * ms / whole:.1f} % |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=list(FAMILIES))
    parser.add_argument("--tile", type=int)
    parser.add_argument("--top", type=int, default=6)
    args = parser.parse_args()
    np.seterr(all="ignore")
    for family in args.families:
        try:
            print(profile(family, args.tile, args.top), end="\n\n", flush=True)
        except Exception as e:  # noqa: BLE001 - one family's failure is a line, the rest still run
            print(f"**{family}**: not profiled ({type(e).__name__}: {str(e).splitlines()[0]})\n", flush=True)


if __name__ == "__main__":
    main()

"""HAT-S x4 and MambaIR-light x4 on the CPU: ONNX Runtime vs eager PyTorch, side by side.

Random weights at the RELEASED hyperparameters (the catalog entries `hat-s-x4` and
`mambair-light-x4`; for MambaIR the released-checkpoint manifest in tests/fixtures when the
catalog has no entry yet). Each case runs in its own process, so its peak RSS
(resource.getrusage ru_maxrss) is its own:
- export: restorer.convert.graph.export_onnx, batch-2 example, dynamic H/W, opset 18;
- torch:  eager PyTorch on one TILE x TILE tile, warm-up then RUNS timed runs;
- onnx:   ONNX Runtime (CPUExecutionProvider) on the same tile.
Throughput is in input megapixels per second. Then the selective scan: bench/bench_scan.py
(the MambaIR engineer's chunked-vs-sequential benchmark) is run when it exists, else a
short chunked-vs-reference timing on one SS2D-sized scan.

    nice python bench/bench_models.py            # a few minutes on 2 cores
    nice python bench/bench_models.py --tile 128 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "hat-s-x4": ("hat-s-x4", None),
    "mambair-light-x4": ("mambair-light-x4", ROOT / "tests" / "fixtures" / "mambair" / "MambaIR_lightSR_x4.keys.json"),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def arch_and_hparams(key: str) -> tuple[str, dict]:
    model_id, manifest = MODELS[key]
    catalog = tomllib.loads((ROOT / "models" / "catalog.toml").read_text(encoding="utf-8"))
    for entry in catalog.get("model", []):
        if entry["id"] == model_id:
            return entry["arch"], entry["hparams"]
    if manifest is not None and manifest.is_file():
        data = json.loads(manifest.read_text())
        return data["arch"], data["hyperparameters"]
    raise SystemExit(f"no catalog entry or manifest for {model_id}")


def random_model(key: str):
    import torch

    from restorer.archs import build

    torch.manual_seed(0)
    arch, hparams = arch_and_hparams(key)
    return build(arch, hparams).eval()


# --- workers (each in its own process) ---------------------------------------------------


def work_export(key: str, path: str, tile: str, threads: str) -> dict:
    import torch

    from restorer.convert.graph import export_onnx

    torch.set_num_threads(int(threads))
    model = random_model(key)
    start = time.perf_counter()
    export_onnx(model, {"x": torch.rand(2, 3, int(tile), int(tile))}, path)
    return {"export_s": round(time.perf_counter() - start, 1), "onnx_mb": round(os.path.getsize(path) / 2**20, 1),
            "peak_rss_mb": round(peak_rss_mb())}


def work_torch(key: str, tile: str, threads: str, runs: str) -> dict:
    import torch

    torch.set_num_threads(int(threads))
    model = random_model(key)
    loaded = peak_rss_mb()
    t = int(tile)
    x = torch.rand(1, 3, t, t)
    with torch.no_grad():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(int(runs)):
            model(x)
        elapsed = time.perf_counter() - start
    return {"mp_per_s": t * t * int(runs) / elapsed / 1e6, "s_per_tile": elapsed / int(runs),
            "peak_rss_mb": round(peak_rss_mb()), "after_load_mb": round(loaded)}


def work_onnx(path: str, tile: str, threads: str, runs: str) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    loaded = peak_rss_mb()
    name = session.get_inputs()[0].name
    t = int(tile)
    x = np.random.default_rng(0).random((1, 3, t, t), dtype=np.float32)
    session.run(None, {name: x})  # warm-up
    start = time.perf_counter()
    for _ in range(int(runs)):
        session.run(None, {name: x})
    elapsed = time.perf_counter() - start
    return {"mp_per_s": t * t * int(runs) / elapsed / 1e6, "s_per_tile": elapsed / int(runs),
            "peak_rss_mb": round(peak_rss_mb()), "after_load_mb": round(loaded)}


def work_scan(threads: str) -> dict:
    """Chunked vs sequential selective scan at the size of one SS2D call of the light
    model on a 64x64 tile (4 directions x d_inner 72, N 10, L 4096), batch 1."""
    import torch

    from restorer.archs.selective_scan import selective_scan, selective_scan_reference

    torch.set_num_threads(int(threads))
    g = torch.Generator().manual_seed(0)
    batch, dim, n, length = 1, 4 * 72, 10, 64 * 64
    u = torch.randn(batch, dim, length, generator=g)
    delta = torch.randn(batch, dim, length, generator=g) * 0.5
    A = -torch.exp(torch.randn(dim, n, generator=g))
    B = torch.randn(batch, 4, n, length, generator=g)
    C = torch.randn(batch, 4, n, length, generator=g)
    D, bias = torch.randn(dim, generator=g), torch.randn(dim, generator=g)
    timings, outs = {}, {}
    with torch.no_grad():
        for name, fn in (("chunked", selective_scan), ("sequential", selective_scan_reference)):
            start = time.perf_counter()
            outs[name] = fn(u, delta, A, B, C, D, bias, True)
            timings[name] = time.perf_counter() - start
    return {"shape": [batch, dim, n, length], "chunked_s": round(timings["chunked"], 3),
            "sequential_s": round(timings["sequential"], 3),
            "speedup": round(timings["sequential"] / timings["chunked"], 1),
            "max_abs_diff": float((outs["chunked"] - outs["sequential"]).abs().max())}


WORKERS = {"export": work_export, "torch": work_torch, "onnx": work_onnx, "scan": work_scan}


def in_subprocess(*args: str, threads: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)},
    )  # fmt: skip
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return {"error": lines[-1][:300] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def scan_study(threads: int) -> dict:
    script = ROOT / "bench" / "bench_scan.py"
    if script.is_file():  # the MambaIR engineer's benchmark: run it as is
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        return {"bench_scan.py": (done.stdout.strip() or done.stderr.strip())[-4000:]}
    return {"chunked_vs_sequential": in_subprocess("scan", str(threads), threads=threads)}


def table(report: dict) -> str:
    rows = ["| model | backend | MP/s | s per tile | peak RSS (MB) | after load (MB) |",
            "|---|---|---|---|---|---|"]
    for key, entry in report["models"].items():
        for backend in ("torch", "onnx"):
            r = entry.get(backend, {})
            if "error" in r:
                rows.append(f"| {key} | {backend} | error: {r['error']} | | | |")
            elif r:
                rows.append(f"| {key} | {backend} | {r['mp_per_s']:.4f} | {r['s_per_tile']:.2f} | "
                            f"{r['peak_rss_mb']} | {r['after_load_mb']} |")
        if "onnx_over_torch" in entry:
            rows.append(f"| {key} | ONNX/torch speed | {entry['onnx_over_torch']}x | | | |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", nargs="*", choices=list(MODELS) + ["scan"], default=list(MODELS) + ["scan"])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.worker:
        kind, *rest = args.worker
        print(json.dumps(WORKERS[kind](*rest)))
        return
    tile, threads, runs = str(args.tile), args.threads, str(args.runs)
    report = {"tile": args.tile, "threads": threads, "runs": args.runs, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for key in [k for k in args.only if k in MODELS]:
            path = str(Path(tmp) / f"{key}.onnx")
            entry = {"hparams": arch_and_hparams(key)[1]}
            entry["torch"] = in_subprocess("torch", key, tile, str(threads), runs, threads=threads)
            entry["export"] = in_subprocess("export", key, path, tile, str(threads), threads=threads)
            entry["onnx"] = (in_subprocess("onnx", path, tile, str(threads), runs, threads=threads)
                             if os.path.exists(path) else {"error": "no export"})
            if "mp_per_s" in entry["torch"] and "mp_per_s" in entry["onnx"]:
                entry["onnx_over_torch"] = round(entry["onnx"]["mp_per_s"] / entry["torch"]["mp_per_s"], 2)
            report["models"][key] = entry
            print(key, json.dumps({k: v for k, v in entry.items() if k != "hparams"}), file=sys.stderr, flush=True)
    if "scan" in args.only:
        report["scan"] = scan_study(threads)
    print(json.dumps(report, indent=1))
    if report["models"]:
        print()
        print(table(report))


if __name__ == "__main__":
    main()

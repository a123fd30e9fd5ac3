"""Tiled vs whole-image inference on a 4000x3000 image: time and peak memory, as ratios.

The network is a small 4-layer conv net (x2), exported to ONNX and run by ONNX Runtime on
the CPU: what is measured is the tiling engine's overhead and its memory bound, not a model.

Each run is its own process, so its peak RSS (ru_maxrss) is that case's alone. The cases
alternate (whole, tiled 512, tiled 256, whole, ...) for `--reps` rounds and the best time of
each is compared, so a burst of load on the machine hits one run, not one case. Before each
run the bench waits (up to --idle-wait seconds) for the other processes on the machine to
leave the CPUs idle, and it reports the CPU they took during each case's best run: a ratio
measured while something else computes says little.

By default the timed run is the second one in its process (warm): the first, untimed, builds
ONNX Runtime's session for the same input shape (the whole image, or one tile) and grows its
memory arena, as for every image after the first of a batch. --cold times the first run,
session creation included.

    python bench/bench_tiling.py                     # whole vs 512- and 256-px tiles, best of 5
    python bench/bench_tiling.py --tiles 512 --reps 5
    python bench/bench_tiling.py --engine old_tiles.py   # another tiles.py instead
    python bench/bench_tiling.py --compare old_tiles.py  # and another tiles.py's tiled runs, interleaved
    python bench/bench_tiling.py --profile 512       # one tiled run under cProfile (top entries)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from anywhere in the tree

H, W, SCALE, OVERLAP = 3000, 4000, 2, 8
TILES = (512, 256)


def build_model(path: Path) -> None:
    import torch

    from restorer.convert.graph import export_onnx

    class Net(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, image):
            return self.body(image)

    torch.manual_seed(0)
    net = Net(torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 3 * SCALE * SCALE, 3, padding=1), torch.nn.PixelShuffle(SCALE),
    ))
    export_onnx(net, {"image": torch.rand(1, 3, 64, 64)}, path)


def thread_count() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


class ThreadSampler:
    """The most threads this process had while the timed run went (sampled every 20 ms;
    the sampler itself is not counted)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, thread_count() - 1)

    def __enter__(self):
        self.peak = thread_count()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def make_runner(model: Path):
    from restorer.archs.requirements import Requirements
    from restorer.run.onnx import OnnxRunner
    from restorer.run.runner import RunnerInfo

    return OnnxRunner(model, RunnerInfo("bench", "", ""), Requirements(scale=SCALE, overlap=OVERLAP), device="cpu")


def engine(path: str | None):
    """restorer.run.tiles, or the tiles.py at `path` (e.g. an older version), as a module."""
    if not path:
        from restorer.run import tiles

        return tiles
    spec = importlib.util.spec_from_file_location("bench_engine", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run_case(case: str, model: Path, cold: bool, engine_path: str | None) -> dict:
    """One timed run in this (fresh) process: "whole" or "tiled:<tile>"."""
    tiles = engine(engine_path)
    img = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
    runner = make_runner(model)
    tile = None if case == "whole" else int(case.split(":")[1].split("@")[0])
    if not cold:  # the session for this input shape, and the arena, out of the timing
        tiles.run_runner(runner, img if tile is None else img[:tile, :tile])
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0 = time.process_time()
    with ThreadSampler() as threads:
        start = time.perf_counter()
        out = tiles.run_runner(runner, img) if tile is None else tiles.run_tiled(img, runner, tile=tile)
        seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"case": case, "seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak / 1024,
            "before_mb": base / 1024, "threads": threads.peak, "output": list(out.shape)}


def profile_case(tile: int, model: Path, engine_path: str | None, top: int = 25) -> None:
    import cProfile
    import pstats

    tiles = engine(engine_path)
    img = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
    runner = make_runner(model)
    tiles.run_runner(runner, img[:tile, :tile])
    prof = cProfile.Profile()
    start = time.perf_counter()
    prof.runcall(tiles.run_tiled, img, runner, tile=tile)
    print(f"tiled {tile}: {time.perf_counter() - start:.2f} s under cProfile (this thread only: the "
          "engine's worker thread is not profiled)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def thread_settings() -> str:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
           if k in os.environ}
    intra = opts.intra_op_num_threads or f"0 (ORT's default: one per core, {os.cpu_count()})"
    return (f"cpus {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), ORT intra-op threads {intra}, "
            f"env {env or 'none set'}")


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values) - idle) / tick, sum(values) / tick


def wait_idle(limit: float, busy_max: float = 0.15) -> float:
    """Wait until the CPUs stay idle (under `busy_max` busy over half a second); seconds waited."""
    start = time.monotonic()
    while True:
        b0, t0 = cpu_busy()
        time.sleep(0.5)
        b1, t1 = cpu_busy()
        if (b1 - b0) / max(t1 - t0, 1e-9) < busy_max or time.monotonic() - start > limit:
            return time.monotonic() - start


def run_child(case: str, model: Path, cold: bool, engine_path: str | None) -> dict:
    """One run in a fresh process, with the CPU seconds other processes took meanwhile."""
    command = [sys.executable, __file__, "--child", case, str(model)]
    command += ["--cold"] if cold else []
    command += ["--engine", engine_path] if engine_path else []
    busy0, _ = cpu_busy()
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, text=True)
    busy1, _ = cpu_busy()
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(out.returncode)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    own = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    result["others_cpu"] = max(0.0, (busy1 - busy0) - own)  # over the child's whole life
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, nargs="+", default=list(TILES))
    ap.add_argument("--reps", type=int, default=5, help="rounds; the best time of each case is kept")
    ap.add_argument("--cold", action="store_true", help="time each process's first run (session creation included)")
    ap.add_argument("--engine", metavar="TILES_PY", help="the tiling engine to measure (default: restorer.run.tiles)")
    ap.add_argument("--compare", metavar="TILES_PY",
                    help="also time this tiling engine's tiled runs (as tiled:<tile>@compare), interleaved")
    ap.add_argument("--idle-wait", type=float, default=20.0, metavar="S",
                    help="before each run, wait up to S seconds for the machine to be idle (0: never)")
    ap.add_argument("--profile", type=int, metavar="TILE", help="profile one tiled run instead")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "MODEL"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], Path(args.child[1]), args.cold, args.engine)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "net.onnx"
        build_model(model)
        if args.profile:
            profile_case(args.profile, model, args.engine)
            return
        cases = ["whole"] + [f"tiled:{t}" for t in args.tiles]
        cases += [f"tiled:{t}@compare" for t in args.tiles] if args.compare else []
        runs: dict[str, list[dict]] = {c: [] for c in cases}
        print(f"image {W}x{H} -> x{SCALE}, overlap {OVERLAP}, ONNX Runtime CPU; best of {args.reps}, "
              f"one process a run, {'cold (first run)' if args.cold else 'warm (second run)'}; "
              f"engine {args.engine or 'restorer.run.tiles'}" + (f", compared with {args.compare}" if args.compare else ""))
        print(f"  threads: {thread_settings()}")
        print(f"  load average (1/5/15 min) before: {load()}")
        waited = 0.0
        for _ in range(args.reps):
            for case in cases:
                if args.idle_wait > 0:
                    waited += wait_idle(args.idle_wait)
                runs[case].append(run_child(case, model, args.cold, args.compare if "@" in case else args.engine))
    best = {c: min(r, key=lambda x: x["seconds"]) for c, r in runs.items()}
    for case in cases:
        b = best[case]
        times = " ".join(f"{r['seconds']:.2f}" for r in runs[case])
        print(f"  {case:18s}: best {b['seconds']:5.2f} s (runs {times}; cpu {b['cpu_seconds']:.2f} s; "
              f"other processes {b['others_cpu']:.1f} cpu-s)  peak RSS "
              f"{max(r['peak_rss_mb'] for r in runs[case]):5.0f} MB  threads {b['threads']}")
    whole = best["whole"]
    for case in cases[1:]:
        b = best[case]
        print(f"  {case:18s}: tiled/whole time {b['seconds'] / whole['seconds']:.2f}x   "
              f"memory {b['peak_rss_mb'] / whole['peak_rss_mb']:.2f}x")
    print(f"  load average after: {load()}; waited {waited:.0f} s in all for an idle machine")


if __name__ == "__main__":
    main()

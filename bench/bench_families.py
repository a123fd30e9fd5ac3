"""Every network family on every installed runtime: eager PyTorch, ONNX Runtime (CPU, and
CUDA where a GPU is), OpenVINO where it is installed; one table.

Each family is represented by one catalog model at its RELEASED hyperparameters, with random
weights (`build_module`: seed 0, and zero-initialised parameters such as NAFNet's beta and
gamma given small random values so that every block counts in max_diff):

    family      model                      default tile
    hat         hat-s-x4                   64
    mambair     mambair-light-x4           64
    mambairv2   mambairv2-light-x4         64
    cgnet       cgnet-sidd                 256
    mirnet      mirnet-denoise-sidd        128
    mirnetv2    mirnetv2-denoise-real      128
    instructir  instructir-7d              256
    garnet      garnet                     256
    oldphoto    oldphoto-scratch-detector  256

The "default tile" is the side of the one square tile every case of a family is timed on
(input pixels; the x4 super-resolution families output 4x that). A tile is rounded up to
what the family accepts (its `spec.requirements.min_side` and pad/tile multiples). `--quick`
times every family at 64 px (or the smallest the family accepts) with at most 4 timed runs.

Per family, each case in a fresh process of its own (`--worker`), so its peak RSS
(ru_maxrss) is that case's alone:
1. prepare: the module is built, its example inputs (restorer.convert.export.example_inputs:
   the image first, then InstructIR's text embedding or GaRNet's mask) saved to .npz, and
   restorer's shipped ONNX template filled with the module's weights (no torch export);
2. torch: eager PyTorch on those inputs; its output is saved as the reference;
3. one per runtime, first use: the runner is built and runs the tile twice (as a user's
   first restore: the graphs are optimised, the second time fixed to the tile, and kept
   beside the model), timed
   (`first_use_s`) and its peak RSS recorded (`first_use_peak_rss_mb`); then, in a fresh
   process, the speed case below, which starts from the kept graph as every later run does;
4. one per runtime: the filled ONNX file through the product's runner factory
   (restorer.run.loader.onnx_runner, raw network in/out via `runner.forward`), on
   device "cpu" (ONNX Runtime CPU), "openvino" (when the openvino package is installed) and
   "cuda" (when ONNX Runtime has the CUDA provider and nvidia-smi is there). `max_diff` is
   the largest absolute difference to the eager output. The provider the runner reports it
   actually ran on is recorded (`ran_on`). A runtime the runner does not support yet, or any
   other failure, is a row with "skipped": "<reason>".
5. rss24 (`--rss24`, on by default except with --quick): the product's tiling engine
   (restorer.run.tiles.run_tiled) on a 6000x4000 image, automatic tile, the catalog model's
   own requirements, cancelled after `--rss-tiles` tiles (a worker that takes longer than
   `--timeout` is recorded as timed out): its peak RSS and the tile the engine chose (the
   shape of the batch the runner received). The engine's buffers are allocated lazily
   (np.empty: a page counts in RSS once written) and its output image is written strip by
   strip, mostly after the first tiles; so the worker writes every engine buffer at least
   as large as the output image once when it is allocated, making the peak after a couple
   of tiles that of the whole run, up to the rest of the strip buffers: the row reports
   the engine's other buffers as allocated and as resident at the cancellation
   (`rss24_other_buffers_mb`, `rss24_other_resident_mb`; some are by design never fully
   written).

Timing: one warm-up run, then runs until the last 3 are within 10 % of each other
((max - min) / min), at most 7 (quick: 4); seconds_per_tile is the median of the last 3,
mp_per_s = input megapixels per second. Every case uses the same thread count:
restorer.run.onnx.physical_cores() (else os.cpu_count()), torch.set_num_threads(that).

    nice python bench/bench_families.py --quick                # all families: 12 min on 2 shared cores,
                                                               # most of it eager MambaIR, MambaIRv2, HAT
    nice python bench/bench_families.py --quick --families cgnet,mirnetv2 --json /tmp/q.json
    nice python bench/bench_families.py                        # default tiles + 24 MP memory
    nice python bench/bench_families.py --families cgnet --tile 256 --rss24
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FAMILIES: dict[str, tuple[str, int]] = {  # family -> (catalog model, default tile)
    "hat": ("hat-s-x4", 64),
    "mambair": ("mambair-light-x4", 64),
    "mambairv2": ("mambairv2-light-x4", 64),
    "cgnet": ("cgnet-sidd", 256),
    "mirnet": ("mirnet-denoise-sidd", 128),
    "mirnetv2": ("mirnetv2-denoise-real", 128),
    "instructir": ("instructir-7d", 256),
    "garnet": ("garnet", 256),
    "oldphoto": ("oldphoto-scratch-detector", 256),
}
QUICK_TILE = 64
MAX_RUNS, QUICK_MAX_RUNS = 7, 4
SPREAD = 0.10  # the last 3 timings within this of each other: stop
RSS24_SIZE = (4000, 6000)  # H x W: 24 MP
KEYS = ("family", "provider", "tile", "seconds_per_tile", "mp_per_s", "peak_rss_mb", "max_diff")
RUNTIME_NAMES = {"CPUExecutionProvider": "ort-cpu", "CUDAExecutionProvider": "cuda",
                 "OpenVINOExecutionProvider": "openvino"}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def thread_count() -> int:
    try:
        from restorer.run.onnx import physical_cores
    except ImportError:
        return os.cpu_count() or 1
    return physical_cores()


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:240]


def fit_tile(spec, tile: int) -> int:
    """`tile` rounded up to what the family accepts: its smallest side and its multiples."""
    needs = spec.requirements
    multiple = math.lcm(max(1, needs.pad_multiple), max(1, needs.tile_multiple))
    side = max(tile, needs.min_side)
    return -(-side // multiple) * multiple


def runtime_name(provider: str) -> str:
    """The row name of the provider a runner reports ("CPUExecutionProvider" -> "ort-cpu",
    "openvino:cpu" -> "openvino")."""
    if provider.lower().startswith("openvino"):
        return "openvino"
    return RUNTIME_NAMES.get(provider, provider.lower())


def runtimes(only: set[str] | None = None) -> list[tuple[str, str, str | None]]:
    """(row provider, onnx_runner device, why it is not run or None) for every runtime
    besides eager torch that is installed here."""
    found = [("ort-cpu", "cpu", None)]
    if importlib.util.find_spec("openvino") is not None:
        found.append(("openvino", "openvino", None))
    try:
        import onnxruntime

        cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    except ImportError:
        cuda = False
    if cuda and shutil.which("nvidia-smi"):
        found.append(("cuda", "cuda", None))
    return [r for r in found if only is None or r[0] in only]


# ---------------------------------------------------------------- workers (own processes)


def time_runs(fn, max_runs: int) -> tuple[float, list[float], float, object, float]:
    """Warm-up, then timed runs until the last 3 agree within SPREAD (at most `max_runs`).
    Returns (median of the last 3, all timings, their spread, the last output, the process's
    CPU seconds per wall second over the timed runs: about the thread count on an idle
    machine, less when other processes compete for the cores)."""
    out = fn()
    times: list[float] = []
    spread = float("inf")
    cpu = time.process_time()
    while len(times) < max(3, max_runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
        if len(times) >= 3:
            last = times[-3:]
            spread = (max(last) - min(last)) / min(last)
            if spread < SPREAD:
                break
    return statistics.median(times[-3:]), times, spread, out, (time.process_time() - cpu) / sum(times)


def build_module(spec):
    """The family's network at its released hyperparameters, random weights (seed 0). A
    parameter initialised to zero (NAFNet's per-block beta and gamma) gets small random
    values: at zero its block passes the input through and max_diff would check nothing."""
    import torch

    from restorer.archs import build

    torch.manual_seed(0)
    module = build(spec.arch, spec.hparams).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point() and not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return module


def worker_prepare(spec, tile: int, work: Path) -> dict:
    """Build the module, save its example inputs, fill the shipped template with its weights."""

    from restorer.convert.export import example_inputs
    from restorer.zoo.templates import fill, template_for

    module = build_module(spec)
    inputs = example_inputs(spec, module, tile)
    np.savez(work / "inputs.npz", **{k: v.numpy() for k, v in inputs.items()})
    template = template_for(spec)
    if template is None:
        return {"onnx": None, "onnx_skipped": f"restorer ships no ONNX template for {spec.arch} {spec.hparams}"}
    start = time.perf_counter()
    fill(template, {k: v.numpy() for k, v in module.state_dict().items()}, work / "model.onnx")
    return {"onnx": str(work / "model.onnx"), "fill_s": round(time.perf_counter() - start, 2),
            "params_m": round(sum(p.numel() for p in module.parameters()) / 1e6, 2)}


def load_inputs(work: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    with np.load(work / "inputs.npz") as data:
        return list(data.files), {k: data[k] for k in data.files}


def worker_torch(spec, work: Path, threads: int, max_runs: int) -> dict:
    import torch


    torch.set_num_threads(threads)
    start = time.perf_counter()
    module = build_module(spec)
    names, arrays = load_inputs(work)
    inputs = {k: torch.from_numpy(v) for k, v in arrays.items()}
    setup = time.perf_counter() - start

    def run():
        with torch.no_grad():
            out = module(**inputs)
        return out[0] if isinstance(out, tuple) else out

    seconds, times, spread, out, util = time_runs(run, max_runs)
    np.save(work / "torch.npy", out.numpy())
    return {"seconds_per_tile": seconds, "times": times, "spread": spread, "setup_s": setup, "max_diff": 0.0,
            "cpu_util": util, "ran_on": "torch:cpu", "threads": torch.get_num_threads()}


def make_runner(spec, path: Path, device: str, needs):
    from restorer.run.loader import onnx_runner
    from restorer.run.runner import RunnerInfo

    return onnx_runner(path, RunnerInfo(spec.id, "", ""), needs, device)


def session_threads(runner) -> int | None:
    try:
        return runner.session.get_session_options().intra_op_num_threads or None
    except Exception:  # noqa: BLE001 - not an ONNX Runtime session (OpenVINO): unknown
        return None


def worker_first(spec, work: Path, device: str) -> dict:
    """A user's first restore with the model: the runner is built and runs two tiles of an
    image, announced as the tiling engine does, so both run on the graph fixed to the tile
    (optimised, and kept, at the first)."""
    from restorer.archs.requirements import Requirements

    start = time.perf_counter()
    runner = make_runner(spec, work / "model.onnx", device, Requirements())
    names, arrays = load_inputs(work)
    runner.expect_repeats(arrays[names[0]].shape)
    for _ in range(2):
        runner.forward(arrays[names[0]], {k: arrays[k] for k in names[1:]})
    return {"first_use_s": round(time.perf_counter() - start, 2)}


def worker_onnx(spec, work: Path, device: str, max_runs: int) -> dict:
    from restorer.archs.requirements import Requirements

    start = time.perf_counter()
    runner = make_runner(spec, work / "model.onnx", device, Requirements())
    setup = time.perf_counter() - start
    names, arrays = load_inputs(work)
    image, extra = arrays[names[0]], {k: arrays[k] for k in names[1:]}
    runner.expect_repeats(image.shape)  # the tiles of an image, as the tiling engine announces them
    seconds, times, spread, out, util = time_runs(lambda: runner.forward(image, extra), max_runs)
    result = {"seconds_per_tile": seconds, "times": times, "spread": spread, "setup_s": setup, "cpu_util": util,
              "ran_on": runtime_name(runner.info.provider), "runtime_provider": runner.info.provider,
              "threads": session_threads(runner), "notes": list(runner.info.notes)}
    ref_path = work / "torch.npy"
    if ref_path.is_file():
        ref = np.load(ref_path)
        out = np.asarray(out)
        if out.shape == ref.shape:
            result["max_diff"] = float(np.abs(out.astype(np.float64) - ref).max())
        else:
            result["max_diff_note"] = f"output {out.shape} vs eager {ref.shape}"
    return result


def resident_bytes(array: np.ndarray) -> int:
    """How many bytes of `array` are in RAM (mincore); -1 where that cannot be told."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        page = os.sysconf("SC_PAGE_SIZE")
        begin = array.ctypes.data - array.ctypes.data % page
        length = array.ctypes.data + array.nbytes - begin
        vector = (ctypes.c_ubyte * (-(-length // page)))()
        if libc.mincore(ctypes.c_void_p(begin), ctypes.c_size_t(length), vector) != 0:
            return -1
    except (OSError, AttributeError, ValueError):
        return -1
    return int((np.frombuffer(vector, np.uint8) & 1).sum()) * page


class _EngineNumpy:
    """numpy as the tiling engine sees it in the rss24 worker: its np.empty / np.zeros
    buffers are recorded, and one at least as large as the output image is written once
    at allocation, so it is resident from then on, as it is by the end of a whole run (the
    engine's buffers are allocated lazily: their pages count in RSS only once written, and
    the output image is written strip by strip, i.e. mostly after the tiles this worker runs)."""

    def __init__(self, real, output_pixels: int):
        self._real = real
        self.output_pixels = output_pixels
        self.buffers: list[np.ndarray] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def _record(self, array: np.ndarray) -> np.ndarray:
        if array.size >= self.output_pixels:
            array.reshape(-1)[:: max(1, 4096 // array.itemsize)] = 0  # one write per page
        self.buffers.append(array)
        return array

    def empty(self, *args, **kwargs):
        return self._record(self._real.empty(*args, **kwargs))

    def zeros(self, *args, **kwargs):
        return self._record(self._real.zeros(*args, **kwargs))


def worker_rss24(spec, work: Path, device: str, rss_tiles: int) -> dict:
    import restorer.run.tiles as tiles
    from restorer.run.tiles import Cancelled, auto_tile, free_memory_bytes, run_tiled

    h, w = RSS24_SIZE
    runner = make_runner(spec, work / "model.onnx", device, spec.requirements)
    engine_np = _EngineNumpy(np, h * w * runner.needs.scale**2)
    tiles.np = engine_np  # this process only
    names, arrays = load_inputs(work)
    channels = spec.requirements.channels
    image = np.random.default_rng(0).random((h, w, channels), dtype=np.float32)
    extra = {}
    for name in names[1:]:
        value = arrays[name]
        if value.ndim == 4 and value.shape[2:] == arrays[names[0]].shape[2:]:  # per-pixel (GaRNet's mask)
            mask = np.zeros((h, w, value.shape[1]), np.float32)
            mask[h // 4 : h // 4 + 64, w // 8 : w - w // 8] = 1.0  # two text lines, as the example's
            mask[h * 5 // 8 : h * 5 // 8 + 48, w // 4 : w // 2] = 1.0
            extra[name] = mask
        else:  # passed whole to every tile (InstructIR's text embedding)
            extra[name] = value
    seen: list[tuple[int, ...]] = []
    forward = runner.forward

    def counted(batch, inputs):
        out = forward(batch, inputs)
        seen.append(batch.shape)
        return out

    runner.forward = counted

    class Token:
        def is_set(self) -> bool:
            return len(seen) >= rss_tiles

    free = free_memory_bytes(runner.info.provider)
    expected = auto_tile(runner, free)
    start = time.perf_counter()
    finished = True
    try:
        run_tiled(image, runner, extra=extra, cancel=Token())
    except Cancelled:
        finished = False
    elapsed = time.perf_counter() - start
    return {"rss24_peak_mb": peak_rss_mb(), "rss24_tile": list(seen[0][2:]) if seen else None,
            "rss24_auto_tile": expected, "rss24_free_mb": round(free / 2**20), "rss24_tiles_run": len(seen),
            "rss24_finished": finished, "rss24_seconds": round(elapsed, 1),
            "rss24_ran_on": runtime_name(runner.info.provider), **buffer_report(engine_np)}


def buffer_report(engine_np: _EngineNumpy) -> dict:
    """The engine's own buffers: the output-sized ones (made resident), and the others
    (tile inputs, strips) as allocated and as resident when the run was cancelled."""
    big = [a for a in engine_np.buffers if a.size >= engine_np.output_pixels]
    small = [a for a in engine_np.buffers if a.size < engine_np.output_pixels]
    resident = [resident_bytes(a) for a in small]
    return {"rss24_output_buffers_mb": round(sum(a.nbytes for a in big) / 2**20),
            "rss24_other_buffers_mb": round(sum(a.nbytes for a in small) / 2**20),
            "rss24_other_resident_mb": round(sum(resident) / 2**20) if min(resident, default=0) >= 0 else None}


def worker_main(args) -> None:
    family, provider, tile = args.worker
    tile = int(tile)
    work = Path(args.workdir)
    result: dict = {"load1": os.getloadavg()[0]}
    try:
        from restorer.zoo.catalog import load_catalog

        spec = load_catalog().get(FAMILIES[family][0])
        if args.stage == "prepare":
            result.update(worker_prepare(spec, tile, work))
        elif args.stage == "first":
            result.update(worker_first(spec, work, args.device))
        elif args.stage == "rss24":
            result.update(worker_rss24(spec, work, args.device, args.rss_tiles))
        elif provider == "torch":
            result.update(worker_torch(spec, work, args.threads, args.max_runs))
        else:
            result.update(worker_onnx(spec, work, args.device, args.max_runs))
    except Exception as e:  # noqa: BLE001 - every failure is a row, never a crash of the bench
        result["skipped"] = one_line(e)
    result["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------- the parent


def spawn(args, family: str, provider: str, tile: int, work: Path, stage: str, device: str = "") -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", family, provider, str(tile),
               "--stage", stage, "--workdir", str(work), "--threads", str(args.threads),
               "--max-runs", str(args.max_runs), "--rss-tiles", str(args.rss_tiles), "--device", device]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        result = {"skipped": f"timed out after {args.timeout:g} s"}
    else:
        result = None
        for line in reversed(done.stdout.strip().splitlines()):
            if line.startswith("{"):
                try:
                    result = json.loads(line)
                    break
                except ValueError:
                    continue
        if result is None:
            tail = done.stderr.strip().splitlines()
            result = {"skipped": f"worker exited with {done.returncode}: {tail[-1][:200] if tail else 'no output'}"}
    result["wall_s"] = round(time.perf_counter() - start, 1)
    say(f"  {family:<10} {stage:<7} {provider:<8} {result['wall_s']:7.1f} s"
        + (f"  skipped: {result['skipped']}" if "skipped" in result else ""))
    return result


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def make_row(family: str, model: str, provider: str, tile: int, result: dict, threads: int) -> dict:
    seconds = result.get("seconds_per_tile")
    row = {"family": family, "provider": provider, "tile": tile,
           "seconds_per_tile": round(seconds, 4) if seconds else None,
           "mp_per_s": round(tile * tile / 1e6 / seconds, 5) if seconds else None,
           "peak_rss_mb": round(result["peak_rss_mb"]) if "peak_rss_mb" in result else None,
           "max_diff": result.get("max_diff"), "model": model}
    if "skipped" in result:
        row["skipped"] = result["skipped"]
        row["seconds_per_tile"] = row["mp_per_s"] = row["max_diff"] = None
    row["threads"] = result.get("threads") or threads
    if "times" in result:
        row["runs"] = len(result["times"])
        row["times"] = [round(t, 4) for t in result["times"]]
        row["spread"] = round(result["spread"], 3) if math.isfinite(result["spread"]) else None
    for key in ("ran_on", "runtime_provider", "setup_s", "cpu_util", "load1", "max_diff_note", "first_use_s",
                "first_use_peak_rss_mb"):
        if key in result:
            row[key] = round(result[key], 2) if isinstance(result[key], float) else result[key]
    if result.get("notes"):
        row["notes"] = result["notes"]
    if row.get("ran_on") and provider != "torch" and row["ran_on"] != provider:
        why = f" ({result['notes'][0][:100]})" if result.get("notes") else ""
        row["note"] = f"asked for {provider}, ran on {row['ran_on']}{why}"
    return row


def write_json(path: Path, rows: list[dict]) -> None:
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(rows, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    head = ("family", "model", "provider", "tile", "s/tile", "MP/s", "speed-up vs eager", "peak RSS MB",
            "max diff", "24 MP peak RSS MB", "note")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in rows:
        rss24 = fmt(row.get("rss24_peak_mb"), ".0f")
        if row.get("rss24_tile"):
            rss24 += f" (tile {row['rss24_tile'][0]})"
        note = row.get("skipped") or row.get("rss24_skipped") and f"24 MP: {row['rss24_skipped']}" or row.get("note", "")
        cells = (row["family"], row.get("model", ""), row["provider"], str(row["tile"]),
                 fmt(row["seconds_per_tile"], ".3f"), fmt(row["mp_per_s"], ".4f"),
                 fmt(row.get("speedup_vs_torch"), ".2f"), fmt(row["peak_rss_mb"], ".0f"),
                 fmt(row["max_diff"], ".2e"), rss24, note.replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def versions() -> str:
    found = []
    for name in ("torch", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy"):
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def bench(args) -> list[dict]:
    from restorer.zoo.catalog import load_catalog

    catalog = load_catalog()
    families = [f.strip() for f in args.families.split(",")] if args.families else list(FAMILIES)
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f"unknown families {', '.join(unknown)}; choose from {', '.join(FAMILIES)}")
    only = {p.strip() for p in args.providers.split(",")} if args.providers else None
    others = runtimes(only)
    load = os.getloadavg()
    print(f"threads {args.threads} | load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | "
          f"CPU {cpu_model()} ({os.cpu_count()} logical) | {versions()}")
    print(f"runtimes: torch, {', '.join(r[0] for r in others) or '-'} | "
          f"{'quick' if args.quick else 'full'} run, at most {args.max_runs} timed runs | "
          f"24 MP memory: {'on' if args.rss24 else 'off'}", flush=True)
    rows: list[dict] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_families_") as scratch:
        for family in families:
            model, default_tile = FAMILIES[family]
            spec = catalog.get(model)
            tile = fit_tile(spec, args.tile or (QUICK_TILE if args.quick else default_tile))
            work = Path(scratch) / family
            work.mkdir()
            prep = spawn(args, family, "-", tile, work, "prepare")
            eager = make_row(family, model, "torch", tile, spawn(args, family, "torch", tile, work, "speed")
                             if "skipped" not in prep else {"skipped": f"prepare: {prep['skipped']}"}, args.threads)
            if prep.get("params_m") is not None:
                eager["params_m"] = prep["params_m"]
            eager["speedup_vs_torch"] = 1.0 if eager["seconds_per_tile"] else None
            family_rows = [eager]
            for provider, device, _ in others:
                if "skipped" in prep or not prep.get("onnx"):
                    result = {"skipped": prep.get("skipped") or prep.get("onnx_skipped", "no ONNX model")}
                else:
                    first = spawn(args, family, provider, tile, work, "first", device)
                    result = spawn(args, family, provider, tile, work, "speed", device)
                    if "first_use_s" in first:
                        result.update(first_use_s=first["first_use_s"],
                                      first_use_peak_rss_mb=round(first["peak_rss_mb"]))
                row = make_row(family, model, provider, tile, result, args.threads)
                if row["seconds_per_tile"] and eager["seconds_per_tile"]:
                    row["speedup_vs_torch"] = round(eager["seconds_per_tile"] / row["seconds_per_tile"], 3)
                if args.rss24:
                    if "skipped" in row:
                        row["rss24_skipped"] = "not run: the speed case was skipped"
                    else:
                        rss = spawn(args, family, provider, tile, work, "rss24", device)
                        if "skipped" in rss:
                            row["rss24_skipped"] = rss["skipped"]
                            row["rss24_peak_mb"] = round(rss["peak_rss_mb"]) if "peak_rss_mb" in rss else None
                        else:
                            row.update({k: v for k, v in rss.items() if k.startswith("rss24_")})
                            row["rss24_peak_mb"] = round(row["rss24_peak_mb"])
                family_rows.append(row)
            rows.extend(family_rows)
            shutil.rmtree(work, ignore_errors=True)
            if args.json:
                write_json(args.json, rows)
    load = os.getloadavg()
    print(f"\n{table(rows)}\n")
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} | "
          f"{len(rows)} cases in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"every family at {QUICK_TILE} px (or its smallest), at most {QUICK_MAX_RUNS} timed runs, "
                             "no 24 MP memory unless --rss24")
    parser.add_argument("--tile", type=int, help="tile side for every family (rounded up to what it accepts)")
    parser.add_argument("--families", help=f"comma-separated, of: {', '.join(FAMILIES)}")
    parser.add_argument("--providers", help="comma-separated runtimes besides torch (ort-cpu, openvino, cuda); "
                                            "default: every installed one")
    parser.add_argument("--json", type=Path, help="write the rows to this JSON file (atomically)")
    parser.add_argument("--rss24", action=argparse.BooleanOptionalAction, default=None,
                        help="24 MP tiling-engine peak RSS per family and runtime (default: on, off with --quick)")
    parser.add_argument("--rss-tiles", type=int, default=2, help="tiles the 24 MP run does before it is cancelled")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a worker may take before it is recorded "
                                                                   "as timed out")
    parser.add_argument("--threads", type=int, help="threads for every case (default: physical cores)")
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "PROVIDER", "TILE"), help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="speed", choices=("prepare", "first", "speed", "rss24"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="", help=argparse.SUPPRESS)
    parser.add_argument("--max-runs", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    args.threads = args.threads or thread_count()
    args.max_runs = args.max_runs or (QUICK_MAX_RUNS if args.quick else MAX_RUNS)
    if args.rss24 is None:
        args.rss24 = not args.quick
    bench(args)


if __name__ == "__main__":
    main()

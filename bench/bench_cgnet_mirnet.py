"""CGNet and MIRNet on the CPU: ONNX Runtime vs eager PyTorch, tiled vs whole, fp16 vs fp32.

Three studies, printed as one JSON report:

1. speed: random weights at the RELEASED hyperparameters (CGNet SIDD 119 M params, MIRNet v1
   31.8 M, MIRNet-v2 5.9 M), one TILE x TILE tile, megapixels per second and peak RSS
   (ru_maxrss of a fresh process per case, so each figure is that case's alone; the
   ONNX file is exported in yet another process beforehand).
2. tiling: the tiny golden-fixture networks (official random weights) on their own input and
   on a Kodak crop, whole image vs a 3 x 2 grid (and a 2 x 1 grid) of overlapping crops
   blended with linear ramps; differences are measured after clamping to [0, 1], next to how
   much the network changes the image at all. For CGNet also with tile sizes rounded up to
   multiples of 16 (so its internal zero padding never lands inside the image) and with the
   global average pools fed from a whole-image first pass, which separates what the pools
   cost from what the GCE cascade's tile-anchored grid costs.
3. fp16: the tiny fixtures in eager fp16 and as an fp16 ONNX graph in ONNX Runtime (CPU) vs
   the official fp32 output.
4. mh-dynamic: the multi-head CGNet (local pooling) exported once with dynamic H/W and run
   by ONNX Runtime at three sizes, incl. one where every pool falls back to the global mean
   (the official code's Python branch would be frozen at trace time; ours is shape-driven).

    nice python bench/bench_cgnet_mirnet.py                  # everything (several minutes)
    nice python bench/bench_cgnet_mirnet.py --only tiling fp16
    nice python bench/bench_cgnet_mirnet.py --only mh-dynamic     # ~2-3 min export
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SAMPLE = Path("/work/shared/samples/Kodak24/kodim05.png")
TILE = 128
RUNS = 3
THREADS = 1

RELEASED = {
    "cgnet-sidd": (
        "CascadedGaze",
        {"img_channel": 3, "width": 60, "middle_blk_num": 10, "enc_blk_nums": [2, 2, 4, 6],
         "dec_blk_nums": [2, 2, 2, 2], "GCE_CONVS_nums": [3, 3, 2, 2]},
    ),
    "mirnet-v1": ("MIRNet", {}),
    "mirnetv2": ("MIRNet_v2", {"n_feat": 80, "chan_factor": 1.5, "n_MRB": 2}),
}  # fmt: skip

TINY = {
    "cgnet_tiny": ("cgnet", "CascadedGaze", 1),
    "mirnet_v1_tiny": ("mirnet", "MIRNet", 4),
    "mirnetv2_tiny": ("mirnet/v2", "MIRNet_v2", 4),
}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def random_model(key: str):
    import torch

    from restorer.archs import build

    torch.manual_seed(0)
    arch, hparams = RELEASED[key]
    model = build(arch, hparams).eval()
    with torch.no_grad():  # nonzero residual scales so every branch does real work
        for name, p in model.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.normal_(0, 0.1)
    return model


# --- worker entry points (each in its own process) ---------------------------------------


def work_export(key: str, path: str) -> dict:
    import torch

    from restorer.convert.graph import export_onnx

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    export_onnx(random_model(key), {"x": torch.rand(2, 3, TILE, TILE)}, path)
    return {"export_s": round(time.perf_counter() - start, 1), "onnx_mb": round(os.path.getsize(path) / 2**20)}


def work_torch(key: str) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    model = random_model(key)
    loaded = peak_rss_mb()
    x = torch.rand(1, 3, TILE, TILE)
    with torch.no_grad():
        model(x)  # warm-up
        start = time.perf_counter()
        for _ in range(RUNS):
            model(x)
        elapsed = time.perf_counter() - start
    return {"mp_per_s": TILE * TILE * RUNS / elapsed / 1e6, "peak_rss_mb": peak_rss_mb(), "after_load_mb": loaded}


def work_onnx(path: str) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    loaded = peak_rss_mb()
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, TILE, TILE), dtype=np.float32)
    session.run(None, {name: x})
    start = time.perf_counter()
    for _ in range(RUNS):
        session.run(None, {name: x})
    elapsed = time.perf_counter() - start
    return {"mp_per_s": TILE * TILE * RUNS / elapsed / 1e6, "peak_rss_mb": peak_rss_mb(), "after_load_mb": loaded}


def in_subprocess(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(THREADS)},
    )  # fmt: skip
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed_study() -> dict:
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for key in RELEASED:
            path = str(Path(tmp) / f"{key}.onnx")
            entry = {"torch": in_subprocess("torch", key)}
            entry["export"] = in_subprocess("export", key, path)
            entry["onnx"] = in_subprocess("onnx", path) if os.path.exists(path) else {"error": "no export"}
            if "mp_per_s" in entry["torch"] and "mp_per_s" in entry["onnx"]:
                entry["onnx_over_torch_speed"] = round(entry["onnx"]["mp_per_s"] / entry["torch"]["mp_per_s"], 2)
            report[key] = entry
            if os.path.exists(path):
                os.unlink(path)
            print(key, json.dumps(entry), file=sys.stderr)
    return report


# --- tiling ------------------------------------------------------------------------------


def load_tiny(name: str):
    import torch

    from restorer.archs import build
    from tests.manifests import load_safetensors

    folder, arch, multiple = TINY[name]
    base = FIXTURES / folder / name
    meta = json.loads(base.with_suffix(".json").read_text())
    model = build(arch, meta["hyperparameters"]).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_safetensors(base.with_suffix(".safetensors")).items()})
    return model, np.load(base.with_suffix(".input.npy")), multiple


def run_padded(model, x: np.ndarray, multiple: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    t = torch.from_numpy(np.ascontiguousarray(x))
    if multiple > 1:
        t = F.pad(t, (0, (-w) % multiple, 0, (-h) % multiple), mode="reflect")
    with torch.no_grad():
        return model(t)[..., :h, :w].numpy()


def spans(length: int, count: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """`count` windows covering [0, length) that overlap their neighbours by at least
    `overlap`, each of a size rounded up to `multiple`."""
    size = -(-(length + (count - 1) * overlap) // count)
    size = min(length, -(-size // multiple) * multiple)
    starts = [round(i * (length - size) / (count - 1)) for i in range(count)] if count > 1 else [0]
    return [(s, s + size) for s in starts]


def ramp(size: int, start: int, stop: int, length: int, overlap: int) -> np.ndarray:
    """Linear blend weights for one window; full weight at the image border."""
    w = np.ones(size, np.float32)
    r = np.linspace(1.0 / (overlap + 1), 1.0, overlap, dtype=np.float32) if overlap else np.ones(0, np.float32)
    if start > 0:
        w[:overlap] = r
    if stop < length:
        w[size - overlap :] = r[::-1]
    return w


def tiled(model, x: np.ndarray, multiple: int, overlap: int, rows: int = 2, cols: int = 3, size_multiple: int = 1) -> np.ndarray:
    h, w = x.shape[-2:]
    out = weight = None
    for y0, y1 in spans(h, rows, overlap, size_multiple):
        for x0, x1 in spans(w, cols, overlap, size_multiple):
            piece = run_padded(model, x[..., y0:y1, x0:x1], multiple)
            if out is None:
                out = np.zeros(x.shape[:-3] + (piece.shape[-3], h, w), np.float32)
                weight = np.zeros((h, w), np.float32)
            wy = ramp(y1 - y0, y0, y1, h, overlap)  # ramps over the minimum overlap
            wx = ramp(x1 - x0, x0, x1, w, overlap)
            ww = wy[:, None] * wx[None, :]
            out[..., y0:y1, x0:x1] += piece * ww
            weight[y0:y1, x0:x1] += ww
    return out / weight


class WholeImagePools:
    """Record every CGNet GlobalPool output on a whole-image pass, then replay them."""

    def __init__(self, model):
        from restorer.archs.cgnet import GlobalPool

        self.pools = [m for m in model.modules() if isinstance(m, GlobalPool)]
        self.recorded: dict[int, object] = {}

    def record(self, model, x: np.ndarray) -> None:
        import torch

        handles = [p.register_forward_hook(self._keep) for p in self.pools]
        with torch.no_grad():
            model(torch.from_numpy(x))
        for h in handles:
            h.remove()

    def _keep(self, module, args, output):
        self.recorded[id(module)] = output

    def __enter__(self):
        self.handles = [p.register_forward_hook(lambda m, a, o: self.recorded[id(m)]) for p in self.pools]
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def diff(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(np.clip(a, 0, 1) - np.clip(b, 0, 1))  # what reaches the saved image
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(np.percentile(d, 99))}


def sample_crop(h: int, w: int) -> np.ndarray:
    from PIL import Image

    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"), dtype=np.float32) / 255.0
    return np.ascontiguousarray(rgb[:h, :w].transpose(2, 0, 1)[None])


def tiling_study() -> dict:
    import torch

    torch.set_num_threads(THREADS)
    report = {}
    for name in TINY:
        model, fixture_input, multiple = load_tiny(name)
        inputs = {"fixture": fixture_input, "kodak_256x384": sample_crop(256, 384)}
        for label, x in inputs.items():
            overlap = 16 if label == "fixture" else 32
            whole = run_padded(model, x, multiple)
            entry = {
                "overlap": overlap,
                # how much the network changes the image: the scale the tiling error compares to
                "network_change": diff(whole, x),
                "per_tile_pools": diff(tiled(model, x, multiple, overlap), whole),
                "2x1_tiles": diff(tiled(model, x, multiple, overlap, rows=1, cols=2), whole),
            }
            if name == "cgnet_tiny":
                # CGNet zero-pads each piece to 16 inside forward: a tile whose size is not a
                # multiple of 16 gets zeros inside the image, which the GCE and pools see
                entry["3x2_tiles_x16"] = diff(tiled(model, x, multiple, overlap, size_multiple=16), whole)
                pools = WholeImagePools(model)
                pools.record(model, x)
                with pools:
                    entry["whole_image_pools"] = diff(tiled(model, x, multiple, overlap), whole)
                    entry["whole_image_pools_x16"] = diff(
                        tiled(model, x, multiple, overlap, size_multiple=16), whole
                    )
            report[f"{name}/{label}"] = entry
    return report


# --- fp16 --------------------------------------------------------------------------------


def fp16_study() -> dict:
    import torch

    from restorer.convert.graph import export_onnx

    torch.set_num_threads(THREADS)
    report = {}
    for name in TINY:
        model, x, multiple = load_tiny(name)
        golden = np.load(FIXTURES / TINY[name][0] / f"{name}.output.npy")
        h, w = x.shape[-2:]
        t = torch.from_numpy(x)
        if multiple > 1:
            t = torch.nn.functional.pad(t, (0, (-w) % multiple, 0, (-h) % multiple), mode="reflect")
        entry = {}
        with torch.no_grad():
            eager = model.half()(t.half())[..., :h, :w].float().numpy()
        entry["eager_fp16_vs_fp32"] = {"max": float(np.abs(eager - golden).max()), "mean": float(np.abs(eager - golden).mean())}
        # an fp16 ONNX graph (weights and activations), run by ONNX Runtime's CPU provider
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(model, {"x": t.half().repeat(2, 1, 1, 1)}, Path(tmp) / "fp16.onnx", dynamic_hw=False)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            out = session.run(None, {session.get_inputs()[0].name: t.numpy().astype(np.float16)})[0]
        out = out.astype(np.float32)[..., :h, :w]
        entry["onnx_fp16_vs_fp32"] = {"max": float(np.abs(out - golden).max()), "mean": float(np.abs(out - golden).mean())}
        report[name] = entry
    return report


def mh_dynamic_study() -> dict:
    import torch

    from restorer.archs.cgnet import GCENetMHLocal
    from restorer.convert.graph import export_onnx, run_onnx
    from tests.manifests import load_safetensors

    torch.set_num_threads(THREADS)
    base = FIXTURES / "cgnet" / "cgnet_mh_tiny"
    meta = json.loads(base.with_suffix(".json").read_text())
    model = GCENetMHLocal(**meta["hyperparameters"]).eval()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in load_safetensors(base.with_suffix(".safetensors")).items()})
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = export_onnx(model, {"x": torch.rand(2, 3, 112, 128)}, Path(tmp) / "mh.onnx")
        report["export_s"] = round(time.perf_counter() - start, 1)
        golden = np.load(base.with_suffix(".output.npy"))
        report["golden_112x128"] = float(np.abs(run_onnx(path, {"x": np.load(base.with_suffix(".input.npy"))}) - golden).max())
        for h, w in ((64, 64), (90, 200)):
            x = np.random.default_rng(1).random((1, 3, h, w), dtype=np.float32)
            with torch.no_grad():
                expected = model(torch.from_numpy(x)).numpy()
            report[f"vs_torch_{h}x{w}"] = float(np.abs(run_onnx(path, {"x": x}) - expected).max())
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=["speed", "tiling", "fp16", "mh-dynamic"],
                        default=["speed", "tiling", "fp16"])
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.worker:
        kind, *rest = args.worker
        result = {"export": work_export, "torch": work_torch, "onnx": work_onnx}[kind](*rest)
        print(json.dumps(result))
        return
    report = {"tile": TILE, "runs": RUNS, "threads": THREADS}
    for study in args.only:
        studies = {"speed": speed_study, "tiling": tiling_study, "fp16": fp16_study, "mh-dynamic": mh_dynamic_study}
        report[study] = studies[study]()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

"""Tiled vs whole-image inference on a 4000x3000 image: time and peak memory, as ratios.

Each case runs in its own process so peak RSS (ru_maxrss) is that case's alone. The
network is a small 4-layer conv net (x2), exported to ONNX and run by ONNX Runtime on the
CPU: what is measured is the tiling engine's overhead and its memory bound, not a model.

    python bench/bench_tiling.py            # both cases and the ratios
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

H, W, SCALE, TILE = 3000, 4000, 2, 512


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


def run_case(case: str, model: Path) -> dict:
    from restorer.run.runner import RunnerInfo
    from restorer.run.onnx import OnnxRunner
    from restorer.run.tiles import run_runner, run_tiled

    img = np.random.default_rng(0).random((H, W, 3), dtype=np.float32)
    runner = OnnxRunner(model, RunnerInfo("bench", "", ""), device="cpu", scale=SCALE, overlap=8)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = run_runner(runner, img) if case == "whole" else run_tiled(img, runner, tile=TILE)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"case": case, "seconds": seconds, "peak_rss_mb": peak / 1024, "before_mb": base / 1024,
            "output": list(out.shape)}


def main() -> None:
    if len(sys.argv) == 3:
        print(json.dumps(run_case(sys.argv[1], Path(sys.argv[2]))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "net.onnx"
        build_model(model)
        results = {}
        for case in ("whole", "tiled"):
            out = subprocess.run([sys.executable, __file__, case, str(model)], capture_output=True, text=True)
            if out.returncode:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(out.returncode)
            results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    w, t = results["whole"], results["tiled"]
    print(f"image {W}x{H} -> x{SCALE}, tile {TILE}, ONNX Runtime CPU")
    for r in (w, t):
        print(f"  {r['case']:5s}: {r['seconds']:7.2f} s   peak RSS {r['peak_rss_mb']:8.0f} MB")
    print(f"  tiled/whole time   : {t['seconds'] / w['seconds']:.2f}x")
    print(f"  tiled/whole memory : {t['peak_rss_mb'] / w['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()

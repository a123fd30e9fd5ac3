"""Does HAT survive reduced precision? Measured on the CPU (no GPU in this environment).

1. The tiny x4 conformance model (tests/fixtures/hat/tiny): fp32 ONNX vs an fp16 ONNX export
   (module.half() before export) in ONNX Runtime CPU, on the golden input.
2. HAT-S x4 at its released hyperparameters with random weights (our init + N(0, 0.05) on
   every parameter, as the conformance fixtures were made), on a 64x64 input:
   eager PyTorch CPU fp32 vs bf16 vs fp16, plus the largest activation seen in fp32
   (fp16 overflows above 65504).

Run: OMP_NUM_THREADS=1 .venv/bin/python bench/hat_fp16.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from restorer.archs.hat import HAT
from restorer.convert.graph import export_onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.manifests
from tests.manifests import FIXTURES, load_manifest, load_safetensors  # noqa: E402

HAT_FIXTURES = FIXTURES / "hat"


def run_ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def tiny_onnx_fp16() -> None:
    name = "hat_tiny_x4"
    meta = json.loads((HAT_FIXTURES / "tiny" / f"{name}.json").read_text())
    hp = meta["hyperparameters"]
    model = HAT(**hp).eval()
    weights = load_safetensors(HAT_FIXTURES / "tiny" / f"{name}.safetensors")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()}, strict=True)
    image = torch.from_numpy(np.load(HAT_FIXTURES / "tiny" / f"{name}.input.npy"))
    ws = hp["window_size"]
    padded = F.pad(image, (0, -image.shape[-1] % ws, 0, -image.shape[-2] % ws), mode="reflect")
    example = torch.rand(2, 3, 2 * ws, 2 * ws)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = run_ort(export_onnx(model, {"x": example}, Path(tmp) / "fp32.onnx"), padded.numpy())
        try:
            path16 = export_onnx(model.half(), {"x": example.half()}, Path(tmp) / "fp16.onnx")
            fp16 = run_ort(path16, padded.numpy().astype(np.float16)).astype(np.float32)
            print(f"tiny x4 ONNX CPU fp16 vs fp32: max|diff| {np.abs(fp16 - fp32).max():.3g}, "
                  f"finite {np.isfinite(fp16).all()}, output range [{fp32.min():.2f}, {fp32.max():.2f}]")
        except Exception as error:  # noqa: BLE001 - report, don't crash the bench
            print(f"tiny x4 ONNX fp16 did not run on ORT CPU: {type(error).__name__}: {str(error)[:300]}")


def hat_s_x4_random() -> None:
    manifest, _ = load_manifest(HAT_FIXTURES / "manifests" / "HAT-S_SRx4.keys.json")
    torch.manual_seed(0)
    model = HAT(**manifest["hyperparameters"]).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.normal_(0, 0.02, generator=gen)
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))

    peak = {"value": 0.0, "where": ""}

    def track(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.is_floating_point():
            m = float(output.detach().abs().max())
            if m > peak["value"]:
                peak.update(value=m, where=module_names[module])

    module_names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(track) for m in model.modules()]
    start = time.perf_counter()
    with torch.no_grad():
        ref = model(x)
    fp32_s = time.perf_counter() - start
    for h in hooks:
        h.remove()
    print(f"HAT-S x4 64x64 fp32: {fp32_s:.1f}s, output range [{ref.min():.2f}, {ref.max():.2f}], "
          f"largest activation {peak['value']:.3g} at {peak['where']}")
    for dtype in (torch.bfloat16, torch.float16):
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out = model.to(dtype)(x.to(dtype)).float()
        except Exception as error:  # noqa: BLE001
            print(f"  {dtype}: did not run: {str(error)[:200]}")
            continue
        finally:
            model.float()
        diff = (out - ref).abs()
        print(f"  {dtype}: {time.perf_counter() - start:.1f}s, max|diff| {diff.max():.3g}, "
              f"mean|diff| {diff.mean():.3g}, finite {bool(torch.isfinite(out).all())}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    tiny_onnx_fp16()
    hat_s_x4_random()

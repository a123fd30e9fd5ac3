"""Runners: ONNX Runtime equals PyTorch on an exported net; CUDA requested on a machine
without it falls back to the CPU with one warning naming the cause."""

import logging

import numpy as np
import pytest
import torch

from restorer.archs.requirements import Requirements
from restorer.convert.graph import export_onnx
from restorer.run import onnx as ort_runtime
from restorer.run.onnx import CPU, CUDA, OnnxRunner, provider_list
from restorer.run.runner import RunnerInfo
from restorer.run.tiles import run_tiled
from restorer.run.torch import TorchRunner


class SmallNet(torch.nn.Module):
    """Three 3x3 convs (receptive radius 3), then a pixel-shuffle upscale."""

    def __init__(self, scale: int):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.GELU(),
            torch.nn.Conv2d(8, 3 * scale * scale, 3, padding=1),
        )
        self.up = torch.nn.PixelShuffle(scale)

    def forward(self, image):
        return self.up(self.body(image))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    net = SmallNet(2)
    path = export_onnx(net, {"image": torch.rand(1, 3, 24, 24)}, tmp_path_factory.mktemp("onnx") / "small.onnx")
    return net, path


def test_onnx_equals_pytorch_tiled(exported):
    net, path = exported
    img = np.random.default_rng(0).random((53, 70, 3), dtype=np.float32)
    needs = Requirements(scale=2, overlap=4)
    torch_out = run_tiled(img, TorchRunner(net, RunnerInfo("t", "", ""), needs, device="cpu"), tile=32)
    onnx_out = run_tiled(img, OnnxRunner(path, RunnerInfo("t", "", ""), needs, device="cpu"), tile=32)
    assert np.abs(torch_out - onnx_out).max() <= 1e-4


def test_forcing_cuda_on_this_machine_falls_back_with_one_warning(exported, caplog):
    _, path = exported
    with caplog.at_level(logging.WARNING, logger="restorer"):
        runner = OnnxRunner(path, RunnerInfo("t", "", ""), Requirements(scale=2), device="cuda")
    assert runner.info.provider == CPU
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "CUDA unavailable" in warnings[0] and "CPU" in warnings[0]
    assert runner.info.notes == warnings
    out = runner(np.zeros((1, 3, 8, 8), np.float32))
    assert out.shape == (1, 3, 16, 16)


def test_a_cuda_session_that_fails_to_create_retries_on_cpu(exported, monkeypatch, caplog):
    _, path = exported
    ort = ort_runtime.import_onnxruntime()
    real = ort.InferenceSession

    def fake(path, options, providers):
        if providers[0] == CUDA:
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected\nmore")
        return real(path, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", fake)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    with caplog.at_level(logging.WARNING, logger="restorer"):
        runner = OnnxRunner(path, RunnerInfo("t", "", ""), Requirements(scale=2), device="auto")
    assert runner.info.provider == CPU
    assert "no CUDA-capable device" in runner.info.notes[0]


def test_provider_order():
    assert provider_list("auto", [CUDA, CPU]) == ([CUDA, CPU], None)
    assert provider_list("cpu", [CUDA, CPU]) == ([CPU], None)
    providers, reason = provider_list("cuda", [CPU])
    assert providers == [CPU] and "restorer[gpu]" in reason
    assert provider_list("auto", [CPU]) == ([CPU], None)  # auto on a CPU build: no warning
    with pytest.raises(ValueError):
        provider_list("tpu", [CPU])


def test_both_onnxruntime_packages_installed_is_refused(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "distribution", lambda name: object())
    with pytest.raises(ort_runtime.RuntimeMissing, match="both onnxruntime and onnxruntime-gpu"):
        ort_runtime.import_onnxruntime()


def test_cli_device_cuda_falls_back_to_cpu_with_one_warning(exported, tmp_path):
    """Through restorer-cli: an exported model run with --device cuda on this CPU machine."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    from PIL import Image

    _, path = exported
    home = tmp_path / "home"
    (home / "onnx").mkdir(parents=True)
    shutil.copy(path, home / "onnx" / "tiny-x2.fp32.onnx")
    (home / "catalog.toml").write_text(
        '[[model]]\nid = "tiny-x2"\ntitle = "tiny x2 test net"\nfamily = "test"\ntasks = ["superres"]\n'
        'arch = "none"\nscale = 2\noverlap = 4\n[[model.files]]\nname = "tiny.safetensors"\n'
    )
    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8)).save(img)
    env = {**os.environ, "RESTORER_HOME": str(home)}
    r = subprocess.run([sys.executable, "-m", "restorer.cli", str(img), "-o", str(tmp_path / "out"),
                        "--model", "tiny-x2", "--device", "cuda", "--json"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if "warning" in l]
    assert len(warnings) == 1 and "CUDA unavailable" in warnings[0] and "running on CPU" in warnings[0]
    step = json.loads(r.stdout)["files"][0]["steps"][0]
    assert step["runner"] == "onnx" and step["provider"] == CPU
    assert Image.open(tmp_path / "out" / "in.png").size == (100, 80)


def test_pre_upscale_feeds_the_network_a_bicubic_upscale():
    """MIRNet's SR checkpoints restore an image already interpolated to the output size."""
    import cv2

    class Identity(torch.nn.Module):
        def forward(self, image):
            return image

    runner = TorchRunner(Identity(), RunnerInfo("t", "", ""), Requirements(scale=3, pre_upscale=3, overlap=4), device="cpu")
    img = np.random.default_rng(5).random((20, 30, 3), dtype=np.float32)
    out = run_tiled(img, runner, tile=64)
    expected = cv2.resize(img, (90, 60), interpolation=cv2.INTER_CUBIC)
    assert out.shape == (60, 90, 3) and np.abs(out - expected).max() < 1e-5


def test_a_network_that_returns_nan_fails_clearly():
    """An overflow (fp16 on some GPUs) must not become black patches in a saved photo."""

    class Overflow(torch.nn.Module):
        def forward(self, image):
            return image * float("inf") * 0.0  # NaN everywhere

    runner = TorchRunner(Overflow(), RunnerInfo("t-nan", "", ""), Requirements(), device="cpu")
    with pytest.raises(FloatingPointError, match="t-nan produced NaN"):
        run_tiled(np.ones((20, 20, 3), np.float32), runner, tile=64)

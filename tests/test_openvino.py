"""OpenVINO runs the same ONNX models as ONNX Runtime, with the same result (per family, on
the shipped templates filled with random weights), is chosen by --device, reports itself,
and degrades to its CPU when the GPU asked for is not there."""

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("openvino")
torch = pytest.importorskip("torch")

from restorer.archs.requirements import Requirements  # noqa: E402
from restorer.convert.graph import FP32_TOLERANCE  # noqa: E402
from restorer.run import openvino as ov_runtime  # noqa: E402
from restorer.run.loader import onnx_runner  # noqa: E402
from restorer.run.onnx import OnnxRunner, run_fixed  # noqa: E402
from restorer.run.openvino import OpenVinoRunner, openvino_target  # noqa: E402
from restorer.run.runner import RunnerInfo  # noqa: E402

# one catalog model per family, as in bench/bench_families.py
FAMILIES = {
    "hat": "hat-s-x2", "mambair": "mambair-light-x2", "mambairv2": "mambairv2-light-x2", "cgnet": "cgnet-sidd",
    "mirnet": "mirnet-denoise-sidd", "mirnetv2": "mirnetv2-denoise-real", "instructir": "instructir-7d",
    "garnet": "garnet", "oldphoto": "oldphoto-scratch-detector",
}


def _filled(spec_id, folder):
    from restorer.archs import build
    from restorer.convert.templates import check_inputs, default_tile
    from restorer.zoo.catalog import load_catalog
    from restorer.zoo.templates import fill, template_for

    spec = load_catalog().get(spec_id)
    torch.manual_seed(0)
    module = build(spec.arch, spec.hparams).eval()
    path = fill(template_for(spec), {k: v.numpy() for k, v in module.state_dict().items()}, folder / "m.onnx")
    tile = max(default_tile(spec), 32)
    return path, check_inputs(spec, module, None, tile)


# OpenVINO's ONNX reader has no Scan operator (MambaIR's selective scan): these run on ONNX Runtime
NO_OPENVINO = {"mambair", "mambairv2"}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(set(FAMILIES) - NO_OPENVINO))
def test_openvino_equals_onnxruntime(family, tmp_path):
    path, feeds = _filled(FAMILIES[family], tmp_path)
    expected = run_fixed(path, feeds)[0]
    runner = OpenVinoRunner(path, RunnerInfo(family, "", ""), Requirements(), target="CPU")
    first, *rest = runner.input_names
    got = runner.forward(feeds[first], {k: feeds[k] for k in rest})
    scale = max(1.0, float(np.abs(expected).max()))
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= FP32_TOLERANCE * scale
    assert runner.info.provider == "OpenVINO:CPU"


@pytest.mark.parametrize("family", sorted(NO_OPENVINO))
def test_a_graph_openvino_cannot_read_runs_on_onnxruntime_with_a_note(family, tmp_path):
    path, feeds = _filled(FAMILIES[family], tmp_path)
    runner = onnx_runner(path, RunnerInfo(family, "", ""), Requirements(), "openvino")
    assert runner.info.provider == "CPUExecutionProvider"
    assert any("OpenVINO cannot run" in n and "Scan" in n for n in runner.info.notes)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 3, padding=1)
        self.up = torch.nn.PixelShuffle(2)

    def forward(self, image):
        return self.up(self.conv(image))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from restorer.convert.graph import export_onnx

    folder = tmp_path_factory.mktemp("tiny")
    return export_onnx(Tiny(), {"image": torch.rand(1, 3, 24, 24)}, folder / "tiny.fp32.onnx")


def test_device_names_pick_the_runtime(monkeypatch):
    assert openvino_target("openvino") == "CPU"
    assert openvino_target("openvino:gpu") == "GPU"
    assert openvino_target("cpu") is None and openvino_target("cuda") is None
    with pytest.raises(ValueError, match="TPU"):
        openvino_target("openvino:TPU")
    # auto: OpenVINO on an Intel processor, unless a CUDA build of ONNX Runtime is there
    monkeypatch.setattr(ov_runtime, "intel_cpu", lambda: False)
    assert openvino_target("auto") is None
    monkeypatch.setattr(ov_runtime, "intel_cpu", lambda: True)
    assert openvino_target("auto") == "CPU"
    monkeypatch.setattr(ov_runtime, "_cuda_provider", lambda: True)
    assert openvino_target("auto") is None


def test_a_missing_openvino_gpu_falls_back_to_its_cpu_with_one_note(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="restorer"):
        runner = onnx_runner(tiny, RunnerInfo("t", "", ""), Requirements(scale=2), "openvino:GPU")
    assert runner.info.provider == "OpenVINO:CPU"
    assert len(runner.info.notes) == 1 and "no GPU device" in runner.info.notes[0]
    x = np.random.default_rng(0).random((1, 3, 20, 28), dtype=np.float32)
    with torch.no_grad():
        expected = Tiny()(torch.from_numpy(x)).numpy()
    assert np.abs(runner(x) - expected).max() <= 1e-5


def test_cli_device_openvino_reports_the_provider(tiny, tmp_path):
    """restorer-cli --device openvino on an exported store model: OpenVINO ran, and says so."""
    import os
    import shutil

    from PIL import Image

    home = tmp_path / "home"
    (home / "onnx").mkdir(parents=True)
    shutil.copy(tiny, home / "onnx" / "tiny-x2.fp32.onnx")
    (home / "catalog.toml").write_text(
        '[[model]]\nid = "tiny-x2"\ntitle = "tiny x2 test net"\nfamily = "test"\ntasks = ["superres"]\n'
        'arch = "none"\nscale = 2\noverlap = 4\n[[model.files]]\nname = "tiny.safetensors"\n'
    )
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "in.png")
    out = subprocess.run([sys.executable, "-m", "restorer.cli", str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                          "--model", "tiny-x2", "--device", "openvino", "--json"],
                         capture_output=True, text=True, env={**os.environ, "RESTORER_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    step = json.loads(out.stdout)["files"][0]["steps"][0]
    assert step["runner"] == "openvino" and step["provider"] == "OpenVINO:CPU"
    assert Image.open(tmp_path / "out" / "in.png").size == (60, 40)


def test_a_shape_seen_twice_gets_a_fixed_size_session_kept_on_disk(tiny, tmp_path):
    import shutil

    model = tmp_path / "tiny.fp32.onnx"
    shutil.copy(tiny, model)
    rng = np.random.default_rng(1)
    tile, other = rng.random((1, 3, 32, 32), dtype=np.float32), rng.random((1, 3, 16, 40), dtype=np.float32)
    with torch.no_grad():
        want = {x.shape: Tiny()(torch.from_numpy(x)).numpy() for x in (tile, other)}
    runner = OnnxRunner(model, RunnerInfo("t", "", ""), Requirements(scale=2), device="cpu")
    for x in (tile, tile, other, tile):  # the tile twice: fixed; another shape: the dynamic graph again
        assert np.abs(runner.forward(x, {}) - want[x.shape]).max() <= 1e-5
    assert runner._fixed is not None and set(dict(runner._fixed[0]).values()) == {1, 32}  # the 32x32 tile's session
    kept = sorted((tmp_path / ".optimized").glob("tiny.fp32.*.onnx"))
    assert len(kept) == 2  # the dynamic graph and the tile's, optimised
    # a later start reads them back; a damaged one is made again
    for path in kept:
        path.write_bytes(b"not a graph")
    again = OnnxRunner(model, RunnerInfo("t", "", ""), Requirements(scale=2), device="cpu")
    for x in (tile, tile, other):
        assert np.abs(again.forward(x, {}) - want[x.shape]).max() <= 1e-5
    assert all(p.read_bytes()[:11] != b"not a graph" for p in (tmp_path / ".optimized").glob("*.onnx"))


def test_the_tiles_of_an_image_run_on_the_fixed_size_session_from_the_first(tiny, tmp_path):
    """The tiling engine announces that its tiles repeat one shape, so not even the first tile
    runs on the dynamic graph (whose memory arena costs HAT-S 150 MB more at its peak)."""
    import shutil

    from restorer.run.tiles import run_tiled

    model = tmp_path / "tiny.fp32.onnx"
    shutil.copy(tiny, model)
    runner = OnnxRunner(model, RunnerInfo("t", "", ""), Requirements(scale=2, overlap=4), device="cpu")
    ran_on = []
    real = runner._session_for

    def spy(feeds):
        session = real(feeds)
        ran_on.append("fixed" if runner._fixed is not None and session is runner._fixed[1] else "dynamic")
        return session

    runner._session_for = spy
    image = np.random.default_rng(2).random((70, 90, 3), dtype=np.float32)
    with torch.no_grad():
        want = Tiny()(torch.from_numpy(image.transpose(2, 0, 1)[None].copy())).numpy()[0].transpose(1, 2, 0)
    out = run_tiled(image, runner, tile=32)
    assert len(ran_on) > 4 and set(ran_on) == {"fixed"}
    assert np.abs(out - want).max() <= 1e-4
    ran_on.clear()
    run_tiled(image[:20, :20], runner, tile=32)  # one tile: a shape that may never come again
    assert ran_on == ["dynamic"]

"""The old-photo pipeline end to end through restorer-cli: with no weights (classical
scratch detection + inpainting, said in --json) and with fixture weights registered as the
pipeline's parts (scratch detection -> scratch-path global restoration -> faces)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.manifests import FIXTURES, load_safetensors

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "oldphoto_scratch_b.png"
OLD = FIXTURES / "oldphoto"


def cli(*args, home: Path):
    import os

    env = {**os.environ, "RESTORER_HOME": str(home), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_without_weights_uses_the_classical_fallbacks(tmp_path):
    r = cli(PHOTO, "-o", tmp_path / "out", "--task", "old-photo", "--json", "--save-intermediates", home=tmp_path / "h")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plan"][0]["model"] == "builtin:inpaint" and report["plan"][0]["backend"] == "pipeline"
    step = report["files"][0]["steps"][0]
    stages = [s["stage"] for s in step["stages"]]
    # with dlib installed the faces are found first and left untouched
    assert stages in (["face-detection", "scratch-detection", "inpaint"], ["scratch-detection", "inpaint"])
    assert "classical" in step["stages"][-2]["backend"]
    assert any("not installed" in n for n in step["notes"])
    out = Image.open(tmp_path / "out" / "oldphoto_scratch_b.png")
    assert out.size == (256, 256) and out.mode == "RGBA"  # size and alpha kept
    mask = np.asarray(Image.open(tmp_path / "out" / "oldphoto_scratch_b.scratch-mask.png"))
    assert set(np.unique(mask)) <= {0, 255} and 0.005 < (mask > 0).mean() < 0.2


def _save(weights: dict, path: Path) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(path))


def _random_weights(arch: str, hparams: dict, seed: int) -> dict:
    import torch

    from restorer.archs import build

    torch.manual_seed(seed)
    module = build(arch, hparams)
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _register_fixture_parts(home: Path) -> None:
    """The pipeline's nine parts as user catalog entries with the fixtures' (tiny) configs."""
    vae = {"input_nc": 3, "output_nc": 3, "ngf": 64, "k_size": 4, "n_downsample_global": 3, "mc": 64,
           "start_r": 1, "spatio_size": 64, "feat_dim": -1}
    mapping = {"map_mc": 128, "mapping_n_block": 1, "mapping_net_dilation": 1, "feat_dim": -1}
    nl = {**mapping, "NL_res": True, "NL_fusion_method": "combine", "correlation_renormalize": True,
          "softmax_temperature": 1.0, "use_self": False, "cosin_similarity": False}
    face = {"ngf": 2, "load_size": 256, "norm_G": "spectralspadesyncbatch3x3", "num_upsampling_layers": "normal",
            "injection_layer": "all", "no_parsing_map": True, "label_nc": 18, "semantic_nc": 18}
    scratch = json.loads((OLD / "scratch_detector_tiny.json").read_text())["config"]
    parts = {  # id: (arch, hparams, weights)
        "oldphoto-scratch-detector": ("OldPhotoScratchUNet", scratch, load_safetensors(OLD / "scratch_detector_tiny.safetensors")),
        "oldphoto-vae-a-quality": ("OldPhotoVAE", vae, load_safetensors(OLD / "global_vae_a.safetensors")),
        "oldphoto-vae-b-quality": ("OldPhotoVAE", vae, load_safetensors(OLD / "global_vae_b.safetensors")),
        "oldphoto-vae-b-scratch": ("OldPhotoVAE", vae, load_safetensors(OLD / "global_vae_b.safetensors")),
        "oldphoto-mapping-quality": ("OldPhotoMapping", mapping, load_safetensors(OLD / "global_mapping_plain_tiny.safetensors")),
        "oldphoto-mapping-scratch": ("OldPhotoMappingNL", nl, load_safetensors(OLD / "global_mapping_nl_tiny.safetensors")),
        # the patch attention is built for 512 channels whatever map_mc says, as upstream
        "oldphoto-mapping-hr": ("OldPhotoMappingPA", {**mapping, "map_mc": 512, "mapping_exp": 1}, None),
        "oldphoto-face-256": ("OldPhotoFaceSPADE", face, None),
        "oldphoto-face-512": ("OldPhotoFaceSPADE", {**face, "load_size": 512}, None),
    }
    lines = []
    for seed, (part_id, (arch, hparams, weights)) in enumerate(parts.items()):
        if weights is None:
            weights = _random_weights(arch, hparams, seed)
        _save(weights, home / "models" / part_id / "w.safetensors")
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in hparams.items())
        lines += [
            "[[model]]", f'id = "{part_id}"', f'title = "{part_id} (test fixture)"', 'family = "oldphoto"',
            "tasks = []", f'arch = "{arch}"', f"hparams = {{ {table} }}",
            "[[model.files]]", 'name = "w.safetensors"', "",
        ]
    (home / "catalog.toml").write_text("\n".join(lines))


def test_with_fixture_weights_runs_the_network_path(tmp_path):
    pytest.importorskip("torch")
    home = tmp_path / "h"
    _register_fixture_parts(home)
    r = cli(PHOTO, "-o", tmp_path / "out", "--task", "old-photo", "--scratches", "yes", "--json",
            "--save-intermediates", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plan"][0]["model"] == "oldphoto"
    step = report["files"][0]["steps"][0]
    stages = [s["stage"] for s in step["stages"]]
    assert stages[:2] == ["scratch-detection", "global-restoration"]  # the official order
    assert step["stages"][0]["backend"] == "oldphoto-scratch-detector"
    assert "scratch path" in step["stages"][1]["backend"] and "oldphoto-mapping-scratch" in step["stages"][1]["backend"]
    out_dir = tmp_path / "out"
    assert Image.open(out_dir / "oldphoto_scratch_b.png").size == (256, 256)
    assert (out_dir / "oldphoto_scratch_b.scratch-mask.png").exists()
    assert (out_dir / "oldphoto_scratch_b.global.png").exists()
    try:
        import dlib  # noqa: F401
    except ImportError:
        assert any("face enhancement skipped" in n for n in step["notes"])
    else:  # the sample has one face: detected, enhanced at 256 px, blended back
        assert stages[2:] == ["face-detection", "face-01"]
        assert Image.open(out_dir / "oldphoto_scratch_b.face-01.png").size == (256, 256)


def test_gray_photo_in_hr_mode(tmp_path):
    """A grayscale scan through the authors' HR mode: patch-attention mapping, 512-px faces,
    and the result stays grayscale at the input's size."""
    pytest.importorskip("torch")
    home = tmp_path / "h"
    _register_fixture_parts(home)
    gray = tmp_path / "gray_scan.png"
    Image.open(PHOTO).convert("L").resize((240, 240)).save(gray)
    r = cli(gray, "-o", tmp_path / "out", "--task", "old-photo", "--scratches", "yes", "--hr", "--json",
            "--save-intermediates", home=home)
    assert r.returncode == 0, r.stderr
    step = json.loads(r.stdout)["files"][0]["steps"][0]
    assert "oldphoto-mapping-hr" in step["stages"][1]["backend"]
    out = Image.open(tmp_path / "out" / "gray_scan.png")
    assert out.mode == "L" and out.size == (240, 240)
    try:
        import dlib  # noqa: F401
    except ImportError:
        return
    faces = [s for s in step["stages"] if s["stage"].startswith("face-0")]
    assert faces and faces[0]["backend"] == "oldphoto-face-512"
    assert Image.open(tmp_path / "out" / "gray_scan.face-01.png").size == (512, 512)


@pytest.mark.parametrize("size", [(40, 48), (1, 1)])
def test_photos_smaller_than_the_networks_take_are_padded_up(tmp_path, monkeypatch, size):
    """The pipeline's networks need 32 px (the scratch detector): a 48x40 crop or a single
    pixel is padded up and cropped back, in the network path and the classical fallback."""
    pytest.importorskip("torch")
    from restorer.cli import main

    photo = tmp_path / "tiny.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(photo)
    for home in (tmp_path / "bare", tmp_path / "h"):
        if home.name == "h":
            _register_fixture_parts(home)
        monkeypatch.setenv("RESTORER_HOME", str(home))
        out = tmp_path / f"out-{home.name}"
        assert main([str(photo), "-o", str(out), "--task", "old-photo", "--scratches", "yes", "--quiet"]) == 0
        assert Image.open(out / "tiny.png").size == (size[1], size[0])

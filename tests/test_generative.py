"""Generative upscaling (diffusers): tiny random-weight pipelines of both released types,
built from configs offline and installed with `models add` like a downloaded folder, run
through restorer-cli end to end; restorer's denoising loops against the pipelines' own;
seams between tiles; downloads of a model folder from a local Hub; the lean install."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("diffusers")
pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from restorer import cli  # noqa: E402
from restorer.run import diffusion  # noqa: E402
from restorer.zoo.catalog import load_catalog  # noqa: E402
from tests.generative_helpers import tiny_ldm, tiny_sd_upscaler  # noqa: E402

MODELS = {"ldm-sr-x4": tiny_ldm, "sd-x4-upscaler": tiny_sd_upscaler}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {model_id: make(root / model_id) for model_id, make in MODELS.items()}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty store, and the packaged catalog without its sha256s: the tiny folders stand in
    for the released ones, whose weights the catalog pins."""
    import re
    from importlib import resources

    from tests.store_helpers import use_catalog

    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    for var in ("RESTORER_MIRROR", "HF_ENDPOINT", "HF_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    text = resources.files("restorer_models").joinpath("catalog.toml").read_text(encoding="utf-8")
    use_catalog(monkeypatch, re.sub(r'sha256 = "[0-9a-f]{64}"', 'sha256 = ""', text))
    return tmp_path / "home"


def photo(path: Path, size=(40, 24)) -> Path:
    rng = np.random.default_rng(3)
    base = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)).save(path)
    return path


def restore_cli(src: Path, out: Path, *args: str) -> tuple[int, np.ndarray | None]:
    code = cli.main([str(src), "-o", str(out), "--device", "cpu", "--quiet", *args])
    result = out / src.name
    return code, (np.asarray(Image.open(result)) if result.exists() else None)


# ---------------------------------------------------------------- restorer's loops = the pipelines'


def test_ldm_loop_gives_the_pipelines_own_output(folders):
    pipe = diffusion.load_pipeline(folders["ldm-sr-x4"])
    image = torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))
    g = diffusion.Generation(steps=4)
    expected = pipe(image * 2 - 1, num_inference_steps=4, generator=torch.Generator().manual_seed(5),
                    output_type="np").images
    latents = torch.randn((1, 3, 16, 24), generator=torch.Generator().manual_seed(5))  # what the pipeline drew
    ours = (diffusion.upscale_ldm(pipe, image * 2 - 1, latents, g) + 1) / 2
    assert ours.shape == (1, 3, 64, 96)
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


def test_sd_upscaler_loop_gives_the_pipelines_own_output(folders):
    pipe = diffusion.load_pipeline(folders["sd-x4-upscaler"])
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    g = diffusion.Generation(steps=3, guidance=7.5, noise_level=30, prompt="a cat", negative_prompt="blur")
    expected = pipe(g.prompt, image=image.permute(0, 2, 3, 1).numpy(), num_inference_steps=3, guidance_scale=7.5,
                    noise_level=30, negative_prompt="blur", generator=torch.Generator().manual_seed(7),
                    output_type="np").images
    drawn = torch.Generator().manual_seed(7)  # the pipeline draws the image noise, then the latents
    image_noise = torch.randn((1, 3, 16, 16), generator=drawn)
    latents = torch.randn((1, 4, 16, 16), generator=drawn)
    ours = (diffusion.upscale_sd(pipe, image * 2 - 1, latents, image_noise, g) + 1) / 2
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), expected, atol=1e-5)


# ---------------------------------------------------------------- install and run through the CLI


@pytest.mark.parametrize("model_id", list(MODELS))
def test_models_add_a_folder_then_restore_end_to_end(model_id, folders, home, tmp_path, capsys):
    assert cli.main(["models", "add", str(folders[model_id])]) == 0
    assert f"installed {model_id}" in capsys.readouterr().out or (home / "models" / model_id).is_dir()
    from restorer.zoo.layout import is_installed, state

    spec = load_catalog().get(model_id)
    assert is_installed(spec) and state(spec) == "installed"
    record = json.loads((home / "models" / model_id / "installed.json").read_text())
    assert "model_index.json" in record and all(len(r["sha256"]) == 64 for r in record.values())

    src = photo(tmp_path / "small.png")
    code, first = restore_cli(src, tmp_path / "a", "--model", model_id, "--steps", "2", "--seed", "1")
    assert code == 0 and first.shape == (96, 160, 3)  # 4x of 40x24
    code, again = restore_cli(src, tmp_path / "b", "--model", model_id, "--steps", "2", "--seed", "1")
    assert code == 0 and np.array_equal(first, again)  # same seed, same output
    code, other = restore_cli(src, tmp_path / "c", "--model", model_id, "--steps", "2", "--seed", "2")
    assert code == 0 and not np.array_equal(first, other)


def test_generative_option_plans_the_installed_model_and_the_words_pick_it(folders, home, tmp_path, capsys):
    from restorer.plan.request import Backend, Options, plan_request

    cli.main(["models", "add", str(folders["ldm-sr-x4"])])
    capsys.readouterr()
    step, = plan_request(Options(generative=True, generation={"seed": 5}), task="superres").steps
    assert (step.model, step.backend, step.options["seed"], step.options["steps"]) == ("ldm-sr-x4", Backend.GENERATIVE, 5, 100)
    # a plain upscale never invents detail
    assert plan_request(Options(scale=4), task="superres").steps[0].backend != Backend.GENERATIVE
    for words in ("upscale 4x and add detail", "generative upscale", "make this small photo big and sharp, invent detail"):
        steps = plan_request(Options(), instruction=words, keep_missing=True).steps
        assert steps[-1].model == "ldm-sr-x4" and steps[-1].backend == Backend.GENERATIVE, words
    code = cli.main([str(photo(tmp_path / "p.png")), "-o", str(tmp_path / "o"), "--task", "superres", "--generative",
                     "--dry-run", "--json"])
    assert code == 0 and json.loads(capsys.readouterr().out)["plan"][0]["model"] == "ldm-sr-x4"


def test_instruction_without_a_generative_model_upscales_without_inventing_and_says_why(home):
    from restorer.plan.request import Backend, Options, plan_request

    step, = plan_request(Options(), instruction="upscale 4x and add detail").steps
    assert step.backend != Backend.GENERATIVE
    assert "no generative model is installed (restorer-cli models download ldm-sr-x4)" in step.why


def test_the_sd_upscalers_prompt_defaults_to_the_instructions_words(folders, home):
    from restorer.plan.request import Options, plan_request

    cli.main(["models", "add", str(folders["sd-x4-upscaler"])])
    step, = plan_request(Options(), instruction="upscale 4x and add detail").steps
    assert step.model == "sd-x4-upscaler" and step.options["prompt"] == "upscale 4x and add detail"
    step, = plan_request(Options(generative=True), task="superres").steps
    assert step.options["prompt"] == load_catalog().get("sd-x4-upscaler").extra["prompt"]


def test_a_pipeline_that_gives_nan_is_refused(folders, home, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-ldm"
    tiny_ldm(broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    tensors["conv_out.bias"] = torch.full_like(tensors["conv_out.bias"], float("nan"))
    save_file(tensors, weights)
    assert cli.main(["models", "add", str(broken)]) == 0
    code, out = restore_cli(photo(tmp_path / "p.png"), tmp_path / "o", "--model", "ldm-sr-x4", "--steps", "2")
    assert code != 0 and out is None
    assert "NaN or infinite" in capsys.readouterr().err


def test_models_add_refuses_a_folder_it_cannot_run(folders, home, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert cli.main(["models", "add", str(other)]) == 2
    assert "a StableDiffusionPipeline folder; restorer runs" in capsys.readouterr().err
    assert cli.main(["models", "add", str(folders["ldm-sr-x4"]), "--id", "sd-x4-upscaler"]) == 2
    assert "not what 'sd-x4-upscaler' is" in capsys.readouterr().err
    assert not (home / "models").exists() or not any((home / "models").iterdir())


# ---------------------------------------------------------------- tiles, progress, cancel


def _restore(folder_model: str, image: np.ndarray, tile: int | None, progress=None, cancel=None, steps: int = 3):
    from restorer.batch.restore import restore
    from restorer.io.imaging import Image as Picture
    from restorer.plan.request import Options, plan_request
    from restorer.run.context import Context

    plan = plan_request(Options(device="cpu", tile=tile, generation={"steps": steps, "seed": 4}), model=folder_model)
    out, _ = restore(Picture(image, None, {}), plan, Context("cpu", tile, progress=progress, cancel=cancel))
    return out.pixels


def column_steps(pixels: np.ndarray) -> np.ndarray:
    """Mean absolute change between neighbouring columns (one value per column pair)."""
    return np.abs(np.diff(pixels.astype(np.float64), axis=1)).mean(axis=(0, 2))


def test_tiles_blend_without_a_seam_and_memory_follows_the_tile(folders, home):
    from restorer.run.tiles import axis_starts

    cli.main(["models", "add", str(folders["ldm-sr-x4"])])
    rng = np.random.default_rng(0)
    w = 400
    image = (np.linspace(0.2, 0.8, 24 * w).reshape(24, w, 1) * np.ones(3) + rng.normal(0, 0.05, (24, w, 3)))
    image = np.clip(image, 0, 1).astype(np.float32)
    whole = _restore("ldm-sr-x4", image, tile=512)  # one tile
    tiled = _restore("ldm-sr-x4", image, tile=128)  # the catalog's tile: 5 across
    assert tiled.shape == whole.shape == (96, 4 * w, 3)
    starts = axis_starts(w, 128, 16, 16)
    assert len(starts) == 5
    # where one tile's weight rises and its neighbour's falls: the ramps (overlap 16, ramp 16
    # at input scale, x4 at the output), with the columns either side
    ramps = np.zeros(4 * w - 1, bool)
    for x in starts[1:]:
        ramps[4 * (x + 16) - 4:4 * (x + 32) + 4] = True
    for x in starts[:-1]:
        ramps[4 * (x + 128 - 32) - 4:4 * (x + 128 - 16) + 4] = True
    steps = column_steps(tiled)
    border, inside = steps[ramps].max(), np.percentile(steps[~ramps], 99)
    assert border <= 1.1 * inside, (border, inside)
    # overlapping tiles start from the same noise: the tiled result stays close to the whole
    assert np.abs(tiled - whole).mean() < 0.1


def test_progress_per_denoising_step_and_cancel_between_steps(folders, home):
    from restorer.run.tiles import Cancelled

    cli.main(["models", "add", str(folders["ldm-sr-x4"])])
    image = np.full((24, 160, 3), 0.5, np.float32)
    calls = []
    _restore("ldm-sr-x4", image, tile=96, progress=lambda d, t: calls.append((d, t)), steps=3)
    assert calls[0] == (1, 9) and calls[-1] == (9, 9)  # 3 tiles x 3 steps, step by step
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    class StopAfter:
        def __init__(self):
            self.seen = 0

        def is_set(self):
            return self.seen >= 2

    token = StopAfter()
    with pytest.raises(Cancelled):
        _restore("ldm-sr-x4", image, tile=96, progress=lambda d, t: setattr(token, "seen", d), cancel=token, steps=3)
    assert token.seen == 2  # stopped inside the first tile, not at its end


def test_progress_line_names_tile_and_denoising_step():
    from restorer.plan.request import Backend, Step
    from restorer.run.progress import ProgressClock

    clock = ProgressClock.for_plan([Step("superres", "ldm-sr-x4", Backend.GENERATIVE, {"steps": 50})])
    clock.follow_tiles(62, 200)
    assert clock.step_text() == "Upscale: tile 2 of 4, denoising step 12 of 50"


# ---------------------------------------------------------------- the lean install


def test_without_diffusers_generative_says_what_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "diffusers" else real(name, *a))
    monkeypatch.setattr(diffusion, "find_spec", importlib.util.find_spec)
    code = cli.main([str(photo(tmp_path / "p.png")), "-o", str(tmp_path / "o"), "--task", "superres", "--generative"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "diffusers" in err[0] and "pip install 'restorer[generative]'" in err[0]


# ---------------------------------------------------------------- downloads from a local Hub


def hub_entry(folder: Path, model_id: str = "tiny-ldm", corrupt: str = "") -> tuple[str, dict[str, bytes]]:
    """A catalog entry listing the folder's files at Hub URLs, and what the Hub serves."""
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    served = {f"/someone/{model_id}/resolve/main/{name}": (folder / name).read_bytes() for name in files}
    text = (f'[[model]]\nid = "{model_id}"\ntitle = "tiny"\nfamily = "generative"\ntasks = ["superres"]\n'
            f'arch = "diffusers"\npipeline = "LDMSuperResolutionPipeline"\nscale = 4\npad_multiple = 8\n'
            f'overlap = 16\ntile = 128\nsteps = 2\nlicence = "MIT"\n')
    for name in files:
        data = (folder / name).read_bytes()
        sha = "0" * 64 if name == corrupt else hashlib.sha256(data).hexdigest()
        text += (f'[[model.files]]\nname = "{name}"\nurl = "https://huggingface.co/someone/{model_id}/resolve/main/'
                 f'{name}"\nsha256 = "{sha}"\nsize = {len(data)}\n')
    return text, served


def test_download_a_model_folder_from_the_hub_with_resume(folders, home, monkeypatch):
    from huggingface_hub import constants

    from restorer.zoo import download as dl
    from restorer.zoo.layout import StoreError, is_installed
    from tests.store_helpers import use_catalog
    from tests.test_downloads_hosts import HubServer

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    text, served = hub_entry(folders["ldm-sr-x4"])
    spec = use_catalog(monkeypatch, text).get("tiny-ldm")
    big = max(served, key=lambda k: len(served[k]))
    with HubServer(served) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        hub.cuts_left, hub.cut_at = 1, len(served[big]) // 2
        seen = []
        try:
            dl.download(spec, progress=lambda d, t: seen.append((d, t)))
        except StoreError as e:  # the library gave up on this call: the next one resumes
            assert "run the same command again" in str(e)
            assert not is_installed(spec) and not (home / "models" / "tiny-ldm").exists()  # nothing half-installed
            dl.download(spec, progress=lambda d, t: seen.append((d, t)))
        ranges = [r["range"] for r in hub.requests if r["method"] == "GET" and r["path"].endswith(big.split("/main/")[1])]
    assert is_installed(spec)
    for path, data in served.items():
        name = path.split("/resolve/main/")[1]
        assert (home / "models" / "tiny-ldm" / name).read_bytes() == data
    assert any(r and r != "bytes=0-" for r in ranges)  # the cut file was resumed, not restarted
    assert seen and seen[-1][0] == seen[-1][1] == spec.size
    assert not (home / "downloads" / "tiny-ldm.folder").exists()


def test_a_checksum_mismatch_in_a_folder_installs_nothing(folders, home, monkeypatch):
    from restorer.zoo import download as dl
    from restorer.zoo.layout import StoreError, is_installed
    from tests.store_helpers import use_catalog
    from tests.test_downloads_hosts import HubServer

    text, served = hub_entry(folders["ldm-sr-x4"], corrupt="vqvae/diffusion_pytorch_model.safetensors")
    spec = use_catalog(monkeypatch, text).get("tiny-ldm")
    with HubServer(served) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(StoreError, match="checksum mismatch.*nothing was kept"):
            dl.download(spec)
    assert not is_installed(spec) and not (home / "models" / "tiny-ldm").exists()


# ---------------------------------------------------------------- the app


def test_app_exposes_generative_seed_and_steps_and_restores(folders, home, tmp_path, qtbot):
    pytest.importorskip("pytestqt")
    from PySide6.QtCore import QSettings
    from restorer_ui.main_window import MainWindow
    from restorer_ui.settings import AppSettings

    from restorer.plan.request import Backend

    cli.main(["models", "add", str(folders["ldm-sr-x4"])])
    window = MainWindow(AppSettings(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)))
    qtbot.addWidget(window)
    window.show()
    panel = window.request
    panel.set_task("superres")
    assert panel.generative.isVisibleTo(panel) and panel.seed.isVisibleTo(panel) and panel.steps.isVisibleTo(panel)
    labels = [panel.model.itemText(i) for i in range(panel.model.count())]
    assert any(t.startswith("Invents detail:") and "[ldm-sr-x4]" in t for t in labels)
    panel.generative.setChecked(True)
    panel.seed.setValue(3)
    panel.steps.setValue(2)
    step, = panel.resolve_plan().steps
    assert (step.model, step.backend, step.options["seed"], step.options["steps"]) == ("ldm-sr-x4", Backend.GENERATIVE, 3, 2)
    panel.set_task("denoise")
    assert not panel.generative.isVisibleTo(panel)

    window.open_path(photo(tmp_path / "small.png"))
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=10000)
    panel.set_task("superres")
    panel.update_plan()
    assert panel.ok, panel.plan.text()
    window.start_restore()
    qtbot.waitUntil(lambda: not window.is_busy(), timeout=60000)
    assert window.result is not None and (window.result.width, window.result.height) == (160, 96)


def test_the_noise_at_a_pixel_does_not_depend_on_the_crop():
    whole = diffusion.noise_field(9, 100, 130, 4)
    crop = diffusion.noise_field(9, 30, 40, 4, origin=(20, 70))
    assert np.array_equal(whole[20:50, 70:110], crop)
    assert not np.array_equal(whole, diffusion.noise_field(10, 100, 130, 4))  # another seed
    assert not np.array_equal(whole, diffusion.noise_field(9, 100, 130, 4, stream=1))  # the other input
    assert abs(float(whole.mean())) < 0.02 and abs(float(whole.std()) - 1) < 0.02


def test_a_preview_of_a_region_shows_what_the_whole_run_gives_there(folders, home):
    from restorer.batch.restore import restore, restore_region
    from restorer.io.imaging import Image as Picture
    from restorer.plan.request import Options, plan_request
    from restorer.run.context import Context

    cli.main(["models", "add", str(folders["ldm-sr-x4"])])
    rng = np.random.default_rng(1)
    image = Picture(np.clip(rng.normal(0.5, 0.1, (40, 320, 3)), 0, 1).astype(np.float32), None, {})
    plan = plan_request(Options(device="cpu", generation={"steps": 2, "seed": 3}), model="ldm-sr-x4")
    ctx = Context("cpu")
    whole, _ = restore(image, plan, ctx)
    box = (200, 8, 260, 32)
    region = restore_region(image, plan, ctx, box)
    expected = whole.pixels[4 * 8:4 * 32, 4 * 200:4 * 260]
    assert region.pixels.shape == expected.shape
    assert np.abs(region.pixels - expected).mean() < 0.01, np.abs(region.pixels - expected).mean()


def test_asking_for_cuda_without_one_runs_on_the_cpu_and_says_so(folders, home, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cli.main(["models", "add", str(folders["ldm-sr-x4"])])
    src = photo(tmp_path / "p.png")
    code = cli.main([str(src), "-o", str(tmp_path / "o"), "--model", "ldm-sr-x4", "--steps", "1", "--device", "cuda",
                     "--quiet", "--json"])
    captured = capsys.readouterr()
    assert code == 0 and "--device cuda: PyTorch sees no CUDA device; running on the CPU" in captured.err
    report = json.loads(captured.out[captured.out.index("{"):])
    assert report["files"][0]["steps"][0]["provider"] == "torch:cpu"

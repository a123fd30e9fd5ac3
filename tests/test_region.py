"""Region preview (restorer.batch.restore.restore_region): the restored pixels of a box, from a
crop, equal the same region of the whole restore within the tiling engine's seam bounds
(tests/test_seams.py, docs/seams.md), at the image's edges and inside it, for local built-in
operators, a x2 upscale, a target size and a random-weight network; a restore of the bare box
(no context) breaks the same bound, so the comparison can fail."""

from __future__ import annotations

import numpy as np
import pytest

from restorer.batch.restore import restore, restore_region
from restorer.io.imaging import Image
from restorer.plan.request import Backend, Options, Plan, Step, plan_request
from restorer.run.context import Context
from restorer.run.loader import RunnerCache
from tests.seam_helpers import sample_image

STEP = 1 / 255  # one 8-bit level of the [0, 1] output
BOXES = {
    "top-left corner": (0, 0, 40, 30),
    "inside": (70, 50, 150, 110),
    "bottom-right corner": (200, 150, 256, 200),
    "right edge, thin": (250, 20, 256, 180),
}


@pytest.fixture(scope="module")
def photo() -> Image:
    """A real photo with noise to remove and an alpha ramp to carry."""
    rgb = sample_image(200, 256)
    noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 0.06, rgb.shape), 0, 1).astype(np.float32)
    alpha = np.tile(np.linspace(0, 1, 256, dtype=np.float32), (200, 1))
    return Image(noisy, alpha)


def _region_of(full: Image, source: Image, box) -> tuple[np.ndarray, np.ndarray | None]:
    """The box of the whole restore (whole-number scale)."""
    s = full.width // source.width
    x0, y0, x1, y1 = box
    alpha = None if full.alpha is None else full.alpha[y0 * s : y1 * s, x0 * s : x1 * s]
    return full.pixels[y0 * s : y1 * s, x0 * s : x1 * s], alpha


def _bare_box(image: Image, plan: Plan, ctx: Context, box) -> np.ndarray:
    """The box restored on its own, with no context around it."""
    x0, y0, x1, y1 = box
    crop = Image(np.ascontiguousarray(image.pixels[y0:y1, x0:x1]), None)
    return restore(crop, plan, ctx)[0].pixels


BUILTIN_PLANS = {
    "denoise": Plan([Step("denoise", "builtin:denoise", Backend.BUILTIN)]),
    "upscale x2": Plan([Step("superres", "builtin:upscale", Backend.BUILTIN, {"scale": 2})]),
    "denoise then upscale x2": Plan([Step("denoise", "builtin:denoise", Backend.BUILTIN),
                                     Step("superres", "builtin:upscale", Backend.BUILTIN, {"scale": 2})]),
}


@pytest.mark.parametrize("tile", [None, 64], ids=["one tile", "64-px tiles"])
@pytest.mark.parametrize("name", list(BUILTIN_PLANS))
def test_builtin_preview_is_the_region_of_the_whole_restore(photo, name, tile):
    plan = Plan(BUILTIN_PLANS[name].steps, tile=tile)
    ctx = Context(tile=tile, cache=RunnerCache())
    full, _ = restore(photo, plan, ctx)
    for where, box in BOXES.items():
        preview = restore_region(photo, plan, ctx, box)
        pixels, alpha = _region_of(full, photo, box)
        assert preview.pixels.shape == pixels.shape, where
        # The built-ins are local within their overlap: equal but for float rounding in the blend.
        assert np.abs(preview.pixels - pixels).max() < 1e-5, where
        assert np.abs(preview.alpha - alpha).max() < 1e-5, where
    # Without the context the box's border pixels come out differently.
    box = BOXES["inside"]
    assert np.abs(_bare_box(photo, plan, ctx, box) - _region_of(full, photo, box)[0]).max() > 4 * STEP


@pytest.mark.parametrize("instruction", ["upscale to 700 pixels wide", "make it 1080p"])
def test_target_size_preview_uses_the_whole_image_scale(photo, instruction, monkeypatch, tmp_path):
    """"to 700 px wide" on a 256-px photo: x3 (768) then down to 700, an area resize;
    "1080p": x4 then up by 1.35, Lanczos. The crop's own size must decide neither."""
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path))  # nothing installed: the built-in upscaler
    plan = plan_request(Options(), instruction=instruction)
    ctx = Context(cache=RunnerCache())
    full, _ = restore(photo, plan, ctx)
    fx, fy = full.width / photo.width, full.height / photo.height
    for where, (x0, y0, x1, y1) in BOXES.items():
        preview = restore_region(photo, plan, ctx, (x0, y0, x1, y1))
        X0, Y0 = round(x0 * fx), round(y0 * fy)
        assert preview.pixels.shape == (round(y1 * fy) - Y0, round(x1 * fx) - X0, 3), where
        whole = full.pixels[Y0 : Y0 + preview.height, X0 : X0 + preview.width]
        assert np.abs(preview.pixels - whole).max() < 1e-4, where  # the area resize sums in another order
        assert np.abs(preview.alpha - full.alpha[Y0 : Y0 + preview.height, X0 : X0 + preview.width]).max() < 1e-4


def test_whole_image_operators_run_the_whole_image(photo, monkeypatch):
    """Built-in dehaze takes its airlight from the whole image (whole_image): the preview is
    cut from a whole run, never computed from the crop's statistics."""
    plan = Plan([Step("dehaze", "builtin:dehaze", Backend.BUILTIN)])
    ctx = Context(cache=RunnerCache())
    full, _ = restore(photo, plan, ctx)
    box = BOXES["inside"]
    preview = restore_region(photo, plan, ctx, box)
    assert np.array_equal(preview.pixels, _region_of(full, photo, box)[0])
    assert np.abs(_bare_box(photo, plan, ctx, box) - preview.pixels).max() > 4 * STEP


class _InRange:
    """A tiny random-weight network's output (about [-3, 5]) mapped into [0, 1], so that the
    restore's clipping to [0, 1] does not flatten the comparison."""

    def __init__(self, runner, lo: float, hi: float):
        self.inner, self.needs, self.info = runner, runner.needs, runner.info
        self.lo, self.hi = lo, hi

    def __call__(self, batch, **extra):
        return (self.inner(batch, **extra) - self.lo) / (self.hi - self.lo)

    def close(self):
        pass


class _Cache(RunnerCache):
    """The runner cache of the app and batches, serving the tiny network for any catalog model."""

    def __init__(self, runner):
        super().__init__()
        self.runner = runner

    def network(self, spec, device="auto", precision="fp32", part=None, raw=False):
        return self.runner


def test_network_preview_is_within_the_seam_bound():
    """HAT x2 with random weights (the seam fixture, 8-px overlap = 2 windows): the preview is
    the whole restore's region within test_seams' HAT bound, half an 8-bit step."""
    pytest.importorskip("torch")
    from restorer.run.tiles import run_runner
    from tests.seam_helpers import TINY, fixture_base, load, make_runner

    model = TINY["hat_x2"]
    base = fixture_base(model)
    assert base is not None, f"{model.fixture} is missing from tests/fixtures"
    net, *_ = load(model, base)
    hat = make_runner(model, net, 2, 8)
    image = Image(sample_image(96, 128, "kodim05_crop256.png", 128))
    raw = run_runner(hat, image.pixels)
    ctx = Context(cache=_Cache(_InRange(hat, float(raw.min()), float(raw.max()))))
    plan = Plan([Step("superres", "hat-s-x2", Backend.NETWORK, {"scale": 2})])
    full, _ = restore(image, plan, ctx)
    for box in [(0, 0, 32, 24), (40, 30, 90, 70), (100, 70, 128, 96)]:
        preview = restore_region(image, plan, ctx, box)
        whole = _region_of(full, image, box)[0]
        assert preview.pixels.shape == whole.shape
        assert np.abs(preview.pixels - whole).max() < 0.5 * STEP, box
        assert np.abs(_bare_box(image, plan, ctx, box) - whole).max() > 10 * STEP, box


@pytest.mark.parametrize("box, words", [
    ((10, 10, 10, 50), "is empty"),
    ((30, 10, 20, 50), "is empty"),
    ((-1, 0, 20, 20), "not inside the 256x200 image"),
    ((200, 150, 257, 200), "not inside the 256x200 image"),
    ((0, 0, 20.5, 20), "whole pixel positions"),
    ((0, 0, 20), "whole pixel positions"),
])
def test_a_bad_box_is_refused_with_a_clear_message(photo, box, words):
    with pytest.raises(ValueError, match=words):
        restore_region(photo, BUILTIN_PLANS["denoise"], Context(cache=RunnerCache()), box)


def test_preview_job_returns_the_region_and_its_view(photo):
    pytest.importorskip("PySide6")
    from restorer_ui.jobs import PreviewJob

    plan = BUILTIN_PLANS["upscale x2"]
    job = PreviewJob(photo, plan, RunnerCache(), (70, 50, 150, 110))
    seen = []
    job.progress.connect(lambda fraction, left, text: seen.append((fraction, text)))
    result = job.work()
    assert result.box == (70, 50, 150, 110)
    assert result.image.pixels.shape == (120, 160, 3)
    assert result.pyramid.arrays[0].shape[:2] == (120, 160)
    assert any(text.startswith("Upscale: tile") for _, text in seen)
    assert seen[-1][0] == 1.0 and seen[-1][1].startswith("Preview finished in")

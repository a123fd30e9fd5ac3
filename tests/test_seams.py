"""No seam: tiled inference of real (tiny, official-weight-layout) networks stays within a
justified bound of the whole-image result and shows no step at tile borders.

Measures (tests/seam_helpers.py) are relative to the output's range: the tiny random-weight
fixtures output roughly [-3, 5], not [0, 1], so "half an 8-bit step" means
0.5/255 of that range. Bounds (the reasons and the measured numbers are in docs/seams.md):
- HAT (window attention): at the catalog overlap, max |tiled - whole| < half an 8-bit step.
  The catalog's 32 px at 16-px windows is 2 windows; the tiny model has 4-px windows, so
  the same context is 8 px (and the tile shrinks in the same ratio, 256 -> 64).
- CGNet and MambaIR see the whole tile (global pools and the context grid; scans across
  the tile), so no overlap makes them exact: max < 2 steps and mean < half a step is what
  they reach (CGNet at its catalog overlap of 64 px, not scaled: the tiny net keeps the
  released model's 4-level, x16 spatial geometry; it only has fewer channels).
- For every model: the error does not grow as the overlap grows, and the seam step (excess
  |gradient| of the difference image at the blend ramps) stays under a quarter step.
- Each bound is shown to fail on a hard crop (overlap 0).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.seam_helpers import TINY, fixture_base, load, sample_image, study

STEP = 1 / 255  # one 8-bit level, as a fraction of the output range
SEAM_BOUND = 0.25 * STEP

# key -> tile, overlaps (the last is the catalog default, scaled as explained above),
# max bound, mean bound, image (height, width, sample, resize width)
CASES = {
    "hat_x2": (64, (0, 2, 4, 8), 0.5 * STEP, 0.5 * STEP, (96, 128, "kodim05_crop256.png", 128)),
    "cgnet": (272, (0, 16, 64), 2 * STEP, 0.5 * STEP, (320, 432, "rain100l_clean_1.png", None)),
    "mambair_x2": (40, (0, 4, 8), 2 * STEP, 0.5 * STEP, (48, 80, "kodim05_crop256.png", 80)),
}  # fmt: skip


def _sweep(key: str) -> tuple[list[dict], tuple]:
    model = TINY[key]
    base = fixture_base(model)
    assert base is not None, f"{model.fixture} is missing from tests/fixtures"
    net, x, golden, _ = load(model, base)  # a load error is a regression, not a skip
    tile, overlaps, max_bound, mean_bound, (h, w, sample, resize) = CASES[key]
    image = sample_image(h, w, sample, resize)
    scale = golden.shape[-1] // x.shape[-1]
    model = dataclasses.replace(model, tile=tile)
    return [study(model, net, scale, image, ov) for ov in overlaps], (max_bound, mean_bound)


@pytest.fixture(scope="module", params=list(CASES))
def sweep(request):
    results, bounds = _sweep(request.param)
    return request.param, results, bounds


def test_catalog_overlap_is_within_the_bound(sweep):
    key, results, (max_bound, mean_bound) = sweep
    default = results[-1]
    assert default["tiles"] >= 6, f"{key}: the image must span at least 3 x 2 tiles"
    assert default["max_rel"] < max_bound, f"{key}: max {default['max_rel'] * 255:.2f} steps"
    assert default["mean_rel"] < mean_bound


def test_hard_crop_breaks_the_bound(sweep):
    """The assertions above can fail: overlap 0 (tiles cut edge to edge) does."""
    key, results, (max_bound, _) = sweep
    hard = results[0]
    assert hard["max_rel"] > max_bound
    assert hard["seam_step_rel"] > SEAM_BOUND


def test_error_does_not_grow_with_overlap(sweep):
    key, results, _ = sweep
    errors = [r["max_rel"] for r in results]
    # Non-strict: once the error is set by what a tile cannot see at all (CGNet's pools),
    # more overlap only moves it in the fourth digit.
    for smaller, larger in zip(errors, errors[1:]):
        assert larger <= smaller * 1.01, f"{key}: {errors}"
    assert errors[-1] < errors[0] / 10


def test_no_step_at_tile_borders(sweep):
    key, results, _ = sweep
    default = results[-1]
    assert default["seam_step_rel"] < SEAM_BOUND, f"{key}: {default['seam_step_rel'] * 255:.3f} steps"


def test_blend_zones_mark_the_ramps():
    """The seam measure looks where the weights change: a hard crop's step is at the tile
    starts (and the inward-shifted last tile), nowhere else."""
    from tests.seam_helpers import blend_zones

    zones = blend_zones(100, 40, 0, 1)  # tiles [0, 40), [39, 79), [60, 100): 60 = 100 - 40
    # gap i lies between pixels i and i + 1; each switch of tiles +-1 gap
    assert set(np.flatnonzero(zones)) == {37, 38, 39, 40, 58, 59, 60, 61, 76, 77, 78, 79}
    assert not blend_zones(30, 40, 8, 2).any()  # one tile: nothing to blend


# ---- CGNet's recommendation, honoured generically: its declared tile_multiple / min_size


def _cgnet_tiny_spec(tile_multiple: int | None):
    import json

    from restorer.zoo.catalog import parse

    hparams = json.loads((fixture_base(TINY["cgnet"]).with_suffix(".json")).read_text())["hyperparameters"]
    fields = "\n".join(f"{k} = {json.dumps(v)}" for k, v in hparams.items())
    # No override: the family's own needs (restorer.archs.ARCHS); else an entry that lifts them.
    limits = "" if tile_multiple else "tile_multiple = 1\nmin_size = 1\n"
    text = (f'[[model]]\nid = "tiny-cgnet"\ntitle = "t"\nfamily = "cgnet"\ntasks = ["denoise"]\n'
            f'arch = "CascadedGaze"\noverlap = 16\nwrapper_key = ""\n{limits}'
            f'[model.hparams]\n{fields}\n[[model.files]]\nname = "cgnet_tiny.safetensors"\n')
    return parse(text).get("tiny-cgnet")


def test_store_runner_carries_the_tile_limits_to_the_engine(tmp_path, monkeypatch):
    """The runner carries CGNet's declared tile_multiple / min_size (its Requirements), and run_tiled then
    cuts only full tiles of a multiple of 16 (never smaller than 64) even when asked for 65:
    CGNet's own zero padding never lands inside the image."""
    import shutil

    from restorer.run.loader import build_runner
    from restorer.run.tiles import run_runner, run_tiled
    from restorer.zoo import layout
    from tests.seam_helpers import TileRecorder

    monkeypatch.setenv("RESTORER_HOME", str(tmp_path))
    image = sample_image(96, 128, "kodim05_crop256.png", 128)
    errors = {}
    for multiple in (16, None):
        spec = _cgnet_tiny_spec(multiple)
        layout.model_dir(spec).mkdir(parents=True, exist_ok=True)
        shutil.copy(fixture_base(TINY["cgnet"]).with_suffix(".safetensors"), layout.weights_path(spec))
        runner = build_runner(spec, device="cpu")
        assert (runner.needs.tile_multiple, runner.needs.min_size) == ((16, 64) if multiple else (1, 1))
        recorder = TileRecorder(runner)
        tiled = run_tiled(image, recorder, tile=65, overlap=16)
        assert {s for s in recorder.shapes} == ({(80, 80)} if multiple else {(65, 65)})
        errors[multiple] = np.abs(tiled - run_runner(runner, image)).max()
    # the same tiles cut at 65 px put zeros inside the image: visibly worse
    assert errors[16] * 4 < errors[None]


def test_out_of_memory_halves_to_a_tile_multiple():
    from restorer.archs.requirements import Requirements
    from restorer.run.runner import OutOfMemory
    from restorer.run.tiles import run_tiled

    class Identity:
        info = None
        needs = Requirements(overlap=4, tile_multiple=16, min_size=32)

        def __init__(self):
            self.shapes = []

        def __call__(self, batch):
            self.shapes.append(batch.shape[2:])
            if batch.shape[2] > 64:
                raise OutOfMemory("test")
            return batch

    runner = Identity()
    image = np.random.default_rng(0).random((200, 200, 3), dtype=np.float32)
    # up to 160, fitted to the image: 2 tiles of 112; out of memory: 80 (3 tiles of 80);
    # again: 40 -> 32 (the multiple's floor, above min_size)
    out = run_tiled(image, runner, tile=150)
    assert np.allclose(out, image, atol=1e-6)
    assert {s[0] for s in runner.shapes} == {112, 80, 32}
    assert all(h % 16 == 0 and w % 16 == 0 for h, w in runner.shapes)

"""The built-in operators on the repository's sample photos (samples/).

Full-reference checks where the samples have a clean image (denoise, upscale, inpaint);
no-reference measures, direction and margin only, for dehaze and low light. Margins are
well below the measured effect (noted beside each), so they catch a broken operator, not
a re-tuning.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from restorer.run.runner import Runner
from restorer.run.builtin import (
    BUILTIN_TASKS,
    DarkChannelDehazer,
    IlluminationMapEnhancer,
    MaskInpainter,
    NonLocalMeansDenoiser,
    builtin_runner,
    dark_channel,
    luminance,
)

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def load(name: str) -> np.ndarray:
    """A sample as float32 HxWxC (or HxW for gray) in [0, 1]."""
    return np.asarray(Image.open(SAMPLES / name), dtype=np.float32) / 255.0


def to_batch(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image[None, None]
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def from_batch(batch: np.ndarray) -> np.ndarray:
    image = batch[0].transpose(1, 2, 0)
    return image[:, :, 0] if image.shape[2] == 1 else image


def psnr(a: np.ndarray, b: np.ndarray, border: int = 0) -> float:
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def add_noise(image: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0.0, sigma / 255.0, image.shape)
    return np.clip(image + noise, 0.0, 1.0).astype(np.float32)


def rms_contrast(image: np.ndarray) -> float:
    return float(luminance(image).std())


def entropy_bits(image: np.ndarray) -> float:
    counts = np.histogram(luminance(image), bins=256, range=(0.0, 1.0))[0].astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------------------------------
# factory and protocol


def test_factory_accepts_tasks_and_ids():
    for task, model_id in BUILTIN_TASKS.items():
        by_task = builtin_runner(task)
        by_id = builtin_runner(model_id)
        assert isinstance(by_task, Runner)
        assert by_task.info.model == by_id.info.model == model_id
        assert by_task.info.backend == "builtin" and by_task.info.provider == "numpy"
        assert by_task.needs.channels == 3
    assert builtin_runner("superres", scale=3).needs.scale == 3
    assert builtin_runner("builtin:upscale", scale=4).needs.scale == 4
    assert builtin_runner("denoise").needs.scale == 1
    assert isinstance(builtin_runner("builtin:inpaint"), MaskInpainter)
    assert builtin_runner("dehaze").needs.whole_image and builtin_runner("lowlight").needs.whole_image
    assert not builtin_runner("denoise").needs.whole_image and not builtin_runner("superres").needs.whole_image
    assert builtin_runner("denoise", strength=0.2).strength == 0.2


@pytest.mark.parametrize("bad", ["derain", "deblur", "builtin:nothing"])
def test_factory_rejects_unknown(bad):
    with pytest.raises(ValueError, match="no built-in"):
        builtin_runner(bad)


def test_factory_rejects_bad_scale_and_strength():
    with pytest.raises(ValueError, match="scale"):
        builtin_runner("superres", scale=5)
    with pytest.raises(ValueError, match="strength"):
        builtin_runner("denoise", strength=1.5)


@pytest.mark.parametrize("task", ["denoise", "dehaze", "lowlight", "superres"])
def test_batches_of_two_and_gray_input(task):
    runner = builtin_runner(task)
    rng = np.random.default_rng(1)
    colour = rng.random((2, 3, 40, 48), dtype=np.float32)
    gray = rng.random((1, 1, 40, 48), dtype=np.float32)
    out = runner(colour)
    assert out.shape == (2, 3, 40 * runner.needs.scale, 48 * runner.needs.scale) and out.dtype == np.float32
    # each image of a batch is processed on its own
    np.testing.assert_array_equal(out[1:], runner(colour[1:]))
    out_gray = runner(gray)
    assert out_gray.shape == (1, 1, 40 * runner.needs.scale, 48 * runner.needs.scale)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_rejects_wrong_layout():
    with pytest.raises(ValueError, match="N x C x H x W"):
        builtin_runner("denoise")(np.zeros((8, 8, 3), np.float32))


@pytest.mark.parametrize("runner", [NonLocalMeansDenoiser(0.0), DarkChannelDehazer(0.0),
                                    IlluminationMapEnhancer(0.0)])
def test_strength_zero_is_identity(runner):
    image = load("kodim23_crop256.png")[:64, :64]
    np.testing.assert_array_equal(runner(to_batch(image)), to_batch(image))


# ---------------------------------------------------------------------------------------
# denoise


@pytest.mark.parametrize("name", ["kodim05_crop256.png", "kodim23_crop256.png"])
def test_denoise_gains_4db_at_sigma25(name):
    # measured: kodim05 20.62 -> 26.98 dB, kodim23 20.37 -> 31.48 dB
    clean = load(name)
    noisy = add_noise(clean, 25)
    restored = from_batch(builtin_runner("denoise")(to_batch(noisy)))
    assert psnr(restored, clean) >= psnr(noisy, clean) + 4.0


def test_denoise_gray_gains_4db_at_sigma25():
    clean = load("set12_01_gray.png")  # measured 20.63 -> 27.81 dB
    noisy = add_noise(clean, 25)
    restored = from_batch(builtin_runner("denoise")(to_batch(noisy)))
    assert psnr(restored, clean) >= psnr(noisy, clean) + 4.0


def test_denoise_real_sidd_noise():
    clean, noisy = load("sidd_clean_06.png"), load("sidd_noisy_06.png")  # 22.79 -> 33.98 dB
    restored = from_batch(builtin_runner("denoise")(to_batch(noisy)))
    assert psnr(restored, clean) >= psnr(noisy, clean) + 5.0


def test_denoise_keeps_16bit_precision():
    # A linear ramp whose steps are finer than 8 bits: non-local means averages it
    # symmetrically, so away from the image border (where the mirrored padding bends the
    # ramp) it must come back unchanged. An 8-bit path would be off by up to half an 8-bit
    # step (0.00196); the 16-bit path stays far below that.
    ramp = np.linspace(0.2, 0.3, 96, dtype=np.float32)
    image = np.stack([np.tile(ramp, (64, 1)), np.tile(ramp[::-1], (64, 1)),
                      np.full((64, 96), 0.6, np.float32)], axis=2)
    interior = (slice(None), slice(16, -16))
    for sample in (image, image[:, :, 0]):
        restored = from_batch(NonLocalMeansDenoiser(0.2)(to_batch(sample)))
        assert np.abs(restored - sample)[interior].max() < 0.25 / 255


# ---------------------------------------------------------------------------------------
# tiled vs whole for the local operators


def split_and_join(runner, batch: np.ndarray) -> np.ndarray:
    """Run the left and right halves, each with `overlap` extra columns, and stitch."""
    width, overlap, scale = batch.shape[3], runner.needs.overlap, runner.needs.scale
    middle = width // 2
    left = runner(batch[..., : middle + overlap])[..., : middle * scale]
    right = runner(batch[..., middle - overlap:])[..., overlap * scale:]
    return np.concatenate([left, right], axis=3)


def test_denoise_tiles_seamlessly():
    noisy = add_noise(load("kodim05_crop256.png")[:96, :160], 25)
    runner = builtin_runner("denoise")
    whole = runner(to_batch(noisy))
    np.testing.assert_allclose(split_and_join(runner, to_batch(noisy)), whole, atol=1e-6)


@pytest.mark.parametrize("scale", [2, 3])
def test_upscale_tiles_seamlessly(scale):
    image = load("kodim05_crop256.png")[:64, :96]
    runner = builtin_runner("superres", scale=scale)
    whole = runner(to_batch(image))
    np.testing.assert_allclose(split_and_join(runner, to_batch(image)), whole, atol=1e-4)


# ---------------------------------------------------------------------------------------
# dehaze and low light: no-reference measures move the right way


def test_dehaze_raises_contrast_and_lowers_dark_channel():
    hazy = load("sots_hazy_0002.jpg")  # measured: contrast 0.217 -> 0.294, dark 0.427 -> 0.253
    dehazed = from_batch(builtin_runner("dehaze")(to_batch(hazy)))
    assert dehazed.shape == hazy.shape
    assert rms_contrast(dehazed) >= rms_contrast(hazy) + 0.03
    assert dark_channel(dehazed, 7).mean() <= dark_channel(hazy, 7).mean() - 0.1
    # and it is closer to the clear photo, not just darker (20.4 -> 21.3 dB; without the
    # sky tolerance the bright sky blew out and it fell to 14.7 dB)
    clear = load("sots_clean_0002.png")[: hazy.shape[0], : hazy.shape[1]]
    assert psnr(dehazed, clear) >= psnr(hazy, clear) + 0.5
    # a milder omega removes less haze
    milder = from_batch(builtin_runner("dehaze", strength=0.5)(to_batch(hazy)))
    assert dark_channel(dehazed, 7).mean() < dark_channel(milder, 7).mean() < dark_channel(hazy, 7).mean()


def test_lowlight_raises_luminance_and_entropy():
    dark = load("lol_low_778.png")  # measured: luminance 0.030 -> 0.314, entropy 4.29 -> 7.21
    enhanced = from_batch(builtin_runner("lowlight")(to_batch(dark)))
    assert luminance(enhanced).mean() >= luminance(dark).mean() + 0.15
    assert entropy_bits(enhanced) >= entropy_bits(dark) + 1.0
    # against the paired normal-light image it is much closer too (8.9 -> 18.2 dB)
    assert psnr(enhanced, load("lol_high_778.png")) >= psnr(dark, load("lol_high_778.png")) + 5.0


def test_lowlight_denoises_what_it_brightens():
    """The noise lifted out of the dark is suppressed: closer to the normal-light image than
    the plain division by the map (measured 18.2 -> 19.3 dB), and a clean image is left alone."""
    from restorer.run.builtin import IlluminationMapEnhancer

    dark = load("lol_low_778.png")
    op = IlluminationMapEnhancer()
    plain = np.clip(dark / (op.illumination(dark) ** op.strength)[:, :, None], 0, 1)
    enhanced = from_batch(builtin_runner("lowlight")(to_batch(dark)))
    reference = load("lol_high_778.png")
    assert psnr(enhanced, reference) >= psnr(plain, reference) + 0.5
    smooth = np.tile(np.linspace(0.02, 0.2, 96, dtype=np.float32), (64, 1))[:, :, None].repeat(3, axis=2)
    out = from_batch(builtin_runner("lowlight")(to_batch(smooth)))
    expected = np.clip(smooth / (op.illumination(smooth) ** op.strength)[:, :, None], 0, 1)
    assert np.abs(out - expected).max() < 1e-6  # no noise estimated, nothing denoised


def test_lowlight_is_not_a_global_curve():
    # Equal input values must map to different outputs where the surroundings differ:
    # a pixel in a dark region is lifted more than the same value next to bright light.
    image = np.full((64, 128, 3), 0.05, np.float32)
    image[:, 64:] = 0.6
    image[32, 100] = 0.05  # a dark pixel inside the bright half
    out = from_batch(builtin_runner("lowlight")(to_batch(image)))
    assert out[32, 20, 0] > out[32, 100, 0] + 0.1  # measured 0.55 vs 0.34


# ---------------------------------------------------------------------------------------
# upscale


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upscale_size_and_beats_bicubic(scale):
    # measured on kodim05: x2 24.53 -> 25.10, x3 21.62 -> 21.94, x4 20.22 -> 20.48 dB
    hr = load("kodim05_crop256.png")[:240, :240]
    lr = cv2.resize(hr, (240 // scale, 240 // scale), interpolation=cv2.INTER_AREA)
    out = from_batch(builtin_runner("superres", scale=scale)(to_batch(lr)))
    assert out.shape == hr.shape
    bicubic = np.clip(cv2.resize(lr, (240, 240), interpolation=cv2.INTER_CUBIC), 0, 1)
    assert psnr(out, hr, border=scale * 2) >= psnr(bicubic, hr, border=scale * 2) + 0.1


# ---------------------------------------------------------------------------------------
# inpaint


def stroke_over_smooth_image():
    smooth = cv2.GaussianBlur(load("kodim23_crop256.png"), (0, 0), 4)
    # values off the 8-bit grid, so bit-identity really tests 16-bit/float handling
    smooth = (smooth + np.float32(1e-4) * np.random.default_rng(2).random(smooth.shape)).astype(np.float32)
    mask = np.zeros(smooth.shape[:2], np.uint8)
    cv2.line(mask, (10, 20), (240, 200), 1, 5)
    damaged = smooth.copy()
    damaged[mask > 0] = (1.0, 0.0, 1.0)
    return smooth, damaged, mask


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_inpaint_removes_a_stroke_and_keeps_the_rest(method):
    smooth, damaged, mask = stroke_over_smooth_image()
    runner = MaskInpainter(method=method)
    out = from_batch(runner(to_batch(damaged), mask=mask[None, None].astype(np.float32)))
    outside, inside = mask == 0, mask > 0
    np.testing.assert_array_equal(out[outside], damaged[outside])  # bit-identical
    # measured mean error inside: telea 0.012, ns 0.013 (the stroke itself: 0.56)
    assert np.abs(out - smooth)[inside].mean() < 0.03
    assert np.abs(out - smooth)[inside].max() < 0.25


def test_inpaint_gray_and_empty_mask():
    smooth, damaged, mask = stroke_over_smooth_image()
    gray, gray_damaged = smooth[:, :, 1], damaged[:, :, 1]
    out = from_batch(MaskInpainter()(to_batch(gray_damaged), mask=mask[None, None].astype(np.float32)))
    assert np.abs(out - gray)[mask > 0].mean() < 0.03
    empty = np.zeros((1, 1, *gray.shape), np.float32)
    np.testing.assert_array_equal(MaskInpainter()(to_batch(gray_damaged), mask=empty), to_batch(gray_damaged))


def test_inpaint_requires_a_matching_mask():
    batch = np.zeros((1, 3, 16, 16), np.float32)
    with pytest.raises(ValueError, match="mask="):
        MaskInpainter()(batch)
    with pytest.raises(ValueError, match="mask shape"):
        MaskInpainter()(batch, mask=np.zeros((1, 1, 8, 16), np.float32))

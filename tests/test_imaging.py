"""Image I/O keeps what the user cares about: bit depth (by the file's sample type, not its
values), gray, alpha, ICC, EXIF with orientation applied and reset; bad files give one
clear line; the pixel-count guard; atomic writes."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from PIL import ImageCms

from restorer.io import imaging

RNG = np.random.default_rng(0)


def srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_round_trip_is_exact(tmp_path, ext):
    data = RNG.integers(0, 65536, (17, 23, 3), dtype=np.uint16)
    src = tmp_path / f"deep{ext}"
    cv2.imwrite(str(src), data[..., ::-1])
    img = imaging.load(src)
    assert img.meta.bit_depth == 16 and img.pixels.shape == (17, 23, 3)
    out = imaging.save(img, tmp_path / f"out{ext}")
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert back.dtype == np.uint16 and np.array_equal(back, data)


def test_16bit_decided_by_the_file_not_the_values(tmp_path):
    """A 16-bit PNG whose values all happen to be multiples of 257 stays 16-bit."""
    data = (RNG.integers(0, 256, (8, 8, 3)) * 257).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), data)
    assert imaging.load(tmp_path / "a.png").meta.bit_depth == 16
    eight = tmp_path / "b.png"
    PILImage.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(eight)
    assert imaging.load(eight).meta.bit_depth == 8


def test_16bit_png_keeps_icc_and_exif(tmp_path):
    src = tmp_path / "a.jpg"
    pil = PILImage.fromarray(RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8))
    exif = pil.getexif()
    exif[0x010F] = "TestCam"  # Make
    pil.save(src, icc_profile=srgb(), exif=exif.tobytes())
    img = imaging.load(src)
    img.meta.bit_depth = 16
    out = imaging.save(img, tmp_path / "out.png")
    back = PILImage.open(out)
    assert back.info.get("icc_profile") == PILImage.open(src).info["icc_profile"]
    assert back.getexif().get(0x010F) == "TestCam"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_and_reset(tmp_path, orientation):
    base = RNG.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    src = tmp_path / "o.png"
    pil = PILImage.fromarray(base)
    exif = pil.getexif()
    exif[0x0112] = orientation
    pil.save(src, exif=exif.tobytes())
    from PIL import ImageOps

    expected = np.asarray(ImageOps.exif_transpose(PILImage.open(src)))
    img = imaging.load(src)
    assert np.array_equal(imaging.to_integer(img.pixels, 8), expected)
    out = imaging.save(img, tmp_path / "out.png")
    assert PILImage.open(out).getexif().get(0x0112, 1) == 1


def test_gray_and_alpha_are_kept(tmp_path):
    gray = tmp_path / "g.png"
    PILImage.fromarray(RNG.integers(0, 65536, (9, 7), dtype=np.uint16)).save(gray)
    img = imaging.load(gray)
    assert img.meta.gray and img.meta.bit_depth == 16 and img.pixels.shape[2] == 1
    assert PILImage.open(imaging.save(img, tmp_path / "g_out.png")).mode == "I;16"
    la = tmp_path / "la.png"
    PILImage.fromarray(RNG.integers(0, 256, (9, 7, 2), dtype=np.uint8), "LA").save(la)
    img = imaging.load(la)
    assert img.pixels.shape[2] == 1 and img.alpha is not None
    assert PILImage.open(imaging.save(img, tmp_path / "la_out.png")).mode == "LA"


def test_palette_with_transparency_becomes_rgba_with_a_note(tmp_path):
    src = tmp_path / "p.png"
    pal = PILImage.fromarray(RNG.integers(0, 4, (8, 8), dtype=np.uint8), "P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 756)
    pal.info["transparency"] = 0
    pal.save(src, transparency=0)
    img = imaging.load(src)
    assert img.alpha is not None and any("palette" in n for n in img.meta.notes)


@pytest.mark.parametrize("fmt", ["webp", "bmp", "jpg", "tiff"])
def test_other_formats_round_trip(tmp_path, fmt):
    img = imaging.Image(RNG.random((16, 20, 3), dtype=np.float32))
    out = imaging.save(img, tmp_path / f"x{imaging.FORMATS[fmt][1]}", quality=100)
    back = imaging.load(out)
    assert back.pixels.shape == (16, 20, 3)
    if fmt in ("bmp", "tiff"):  # lossless
        assert np.array_equal(imaging.to_integer(back.pixels, 8), imaging.to_integer(img.pixels, 8))


def test_jpeg_output_of_an_rgba_image_drops_alpha(tmp_path):
    img = imaging.Image(RNG.random((8, 8, 3), dtype=np.float32), alpha=np.ones((8, 8), np.float32))
    assert PILImage.open(imaging.save(img, tmp_path / "a.jpg")).mode == "RGB"


def test_pixel_guard_against_decompression_bombs(tmp_path):
    src = tmp_path / "big.png"
    PILImage.new("RGB", (300, 200)).save(src)
    with pytest.raises(imaging.ImageReadError, match=r"300x200 .*over the limit.*--max-pixels"):
        imaging.load(src, max_pixels=50_000)
    assert imaging.load(src, max_pixels=60_000).width == 300


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, not an image", "not an image"),
])
def test_bad_files_give_one_line(tmp_path, content, reason):
    src = tmp_path / "bad.png"
    src.write_bytes(content)
    with pytest.raises(imaging.ImageReadError) as e:
        imaging.load(src)
    assert str(e.value).startswith(f"{src}: cannot read: ") and reason in str(e.value)
    assert "\n" not in str(e.value)


def test_truncated_16bit_png_is_a_clear_error(tmp_path):
    src = tmp_path / "t.png"
    cv2.imwrite(str(src), RNG.integers(0, 65536, (64, 64, 3), dtype=np.uint16))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(imaging.ImageReadError, match="cannot read"):
        imaging.load(src)


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous result")
    img = imaging.Image(RNG.random((8, 8, 3), dtype=np.float32))

    def disk_full(fd):  # the temporary is written, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imaging.os, "fsync", disk_full)
    with pytest.raises(imaging.ImageWriteError, match=r"out\.png: cannot write: No space left on device$"):
        imaging.save(img, target)
    assert target.read_bytes() == b"previous result"
    assert os.listdir(tmp_path) == ["out.png"]


@pytest.mark.parametrize("fmt, ext, what", [("GIF", ".gif", "an animated GIF of 3 frames"),
                                            ("PNG", ".png", "an animated PNG of 3 frames"),
                                            ("WEBP", ".webp", "an animated WEBP of 3 frames"),
                                            ("TIFF", ".tif", "a TIFF of 3 pages")])
def test_animations_and_multipage_files_are_refused_not_cut_to_one_frame(tmp_path, fmt, ext, what):
    frames = [PILImage.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    src = tmp_path / f"many{ext}"
    frames[0].save(src, fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with pytest.raises(imaging.ImageReadError) as e:
        imaging.load(src)
    assert str(e.value).startswith(f"{src}: cannot read: {what}; ") and "\n" not in str(e.value)
    single = tmp_path / f"one{ext}"
    frames[0].save(single, fmt)
    assert imaging.load(single).pixels.shape == (8, 8, 3)


def test_pillows_bomb_limit_is_ours_while_loading(tmp_path, monkeypatch):
    """Pillow refuses over twice its MAX_IMAGE_PIXELS (179 MP by default) before restorer's
    own check; while restorer loads, Pillow's limit is max_pixels, and it is put back after."""
    src = tmp_path / "p.png"
    PILImage.new("RGB", (100, 100)).save(src)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 2000)  # stands in for a 196 MP photo
    assert imaging.load(src).width == 100  # default limit, 400 MP
    assert imaging.load(src, max_pixels=10_001).width == 100
    with pytest.raises(imaging.ImageReadError, match=r"100x100 is 10000 pixels, over the limit of 4000 pixels"):
        imaging.load(src, max_pixels=4000)  # Pillow's own refusal, said in our words
    assert PILImage.MAX_IMAGE_PIXELS == 2000


def test_write_errors_are_one_line_and_leave_nothing(tmp_path):
    img = imaging.Image(RNG.random((8, 8, 3), dtype=np.float32))
    (tmp_path / "afile").write_text("in the way")
    with pytest.raises(imaging.ImageWriteError, match=r"afile is a file, not a folder$"):
        imaging.save(img, tmp_path / "afile" / "sub" / "out.png")
    (tmp_path / "taken.png").mkdir()
    with pytest.raises(imaging.ImageWriteError, match=r"taken\.png: cannot write: a folder of that name is in the way"):
        imaging.save(img, tmp_path / "taken.png")
    huge = imaging.Image(np.zeros((1, 17000, 3), np.float32))  # WebP's side limit is 16383
    with pytest.raises(imaging.ImageWriteError, match=r"wide\.webp: cannot write: cannot encode it as webp"):
        imaging.save(huge, tmp_path / "wide.webp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "taken.png"]

"""Mask-local edits keep their promise in the default run: scene-text removal on a JPEG
writes a PNG unless --format says otherwise, so that every pixel outside the mask is the
decoded input's, bit for bit, and says so; an explicit lossy --format is kept and the
report says the promise then holds only before encoding."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restorer.batch import files
from restorer.pipelines.text_detect import DetectorUnavailable, detector_path
from restorer.plan.request import Backend, Plan, Step

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "scenetext_thai.jpg"
PNG_NOTE = "written as PNG so that pixels outside the mask stay identical; --format jpg to re-encode"


def cli(*args, home: Path):
    env = {**os.environ, "RESTORER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300)


def changed_outside(original: Path, output: Path, mask_png: Path) -> tuple[int, int]:
    """(pixels changed outside the saved mask, pixels in the mask), on decoded 8-bit RGB."""
    before = np.asarray(Image.open(original).convert("RGB"))
    after = np.asarray(Image.open(output).convert("RGB"))
    mask = np.asarray(Image.open(mask_png)) > 127
    assert before.shape == after.shape and mask.shape == before.shape[:2]
    return int(((before != after).any(axis=2) & ~mask).sum()), int(mask.sum())


def test_default_run_on_a_jpeg_photo_changes_nothing_outside_the_mask(tmp_path):
    """The acceptance run: restorer-cli --task remove-text photo.jpg -o out/ (nothing else but
    --save-intermediates for the mask, --json for the report), detector and built-in fill."""
    try:
        detector_path()
    except DetectorUnavailable as e:
        pytest.skip(str(e))
    out = tmp_path / "out"
    r = cli("--task", "remove-text", PHOTO, "-o", out, "--save-intermediates", "--json", home=tmp_path / "store")
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)["files"][0]
    assert entry["status"] == "done" and entry["output"].endswith("scenetext_thai.png")
    assert PNG_NOTE in entry["notes"] and PNG_NOTE in r.stderr
    assert not (out / "scenetext_thai.jpg").exists()
    outside, inside = changed_outside(PHOTO, out / "scenetext_thai.png", out / "scenetext_thai.text-mask.png")
    assert inside > 1000  # text was found and filled ...
    assert outside == 0  # ... and nothing else moved (re-encoding as JPEG changed ~10^5 pixels)


def test_explicit_jpeg_is_kept_and_the_report_says_the_promise_is_before_encoding(tmp_path):
    src = tmp_path / "card.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(src, quality=90)
    r = cli("--task", "remove-text", src, "-o", tmp_path / "out", "--boxes", "10,10,30,20", "--format", "jpg",
            "--json", home=tmp_path / "store")
    assert r.returncode == 0, r.stderr
    entry = json.loads(r.stdout)["files"][0]
    assert entry["output"].endswith("card.jpg") and (tmp_path / "out" / "card.jpg").is_file()
    assert any("identical only before encoding" in n for n in entry["notes"])
    assert "identical only before encoding" in r.stderr


def test_png_output_keeps_icc_and_exif_and_only_the_boxes_change(tmp_path):
    """No detector needed: --boxes on a JPEG with an ICC profile and EXIF; the PNG carries both."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "restorer test camera"  # Make
    src = tmp_path / "sign.jpg"
    pixels = np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(src, quality=85, icc_profile=icc, exif=exif.tobytes())
    out = tmp_path / "out"
    r = cli("--task", "remove-text", src, "-o", out, "--boxes", "20,20,50,35", "--dilate", "0",
            "--save-intermediates", home=tmp_path / "store")
    assert r.returncode == 0, r.stderr
    assert PNG_NOTE in r.stderr
    written = Image.open(out / "sign.png")
    assert written.format == "PNG" and written.info.get("icc_profile") == icc
    assert written.getexif().get(0x010F) == "restorer test camera"
    outside, inside = changed_outside(src, out / "sign.png", out / "sign.text-mask.png")
    assert (outside, inside) == (0, 31 * 16)


def test_the_output_format_decision():
    jpg, png, webp = Path("o/a.jpg"), Path("o/b.png"), Path("o/c.webp")
    # mask-local, --format same: lossy inputs become PNG, lossless ones stay as they are
    assert files.output_path(jpg, "same", "", mask_local=True) == Path("o/a.png")
    assert files.output_path(webp, "same", "", mask_local=True) == Path("o/c.png")
    assert files.output_path(png, "same", "", mask_local=True) == Path("o/b.png")
    # an explicit format is obeyed; other tasks keep the input's format
    assert files.output_path(jpg, "jpg", "", mask_local=True) == Path("o/a.jpg")
    assert files.output_path(jpg, "same", "") == Path("o/a.jpg")
    assert files.mask_local_note(jpg, Path("o/a.png"), "same") == PNG_NOTE
    assert files.mask_local_note(png, Path("o/b.png"), "same") is None
    assert files.mask_local_note(jpg, Path("o/a.png"), "png") is None  # asked for: nothing to explain
    assert "only before encoding" in files.mask_local_note(png, Path("o/b.jpg"), "jpg")


def test_only_plans_of_mask_local_steps_are_mask_local():
    text = Step("remove-text", "builtin:inpaint", Backend.PIPELINE)
    denoise = Step("denoise", "builtin:denoise", Backend.BUILTIN)
    assert Plan([text]).mask_local
    assert not Plan([text, denoise]).mask_local and not Plan([denoise]).mask_local and not Plan([]).mask_local


def test_discover_notes_the_choice_per_file(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.jpg", "b.png"):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8)).save(buf, "JPEG" if name.endswith("jpg") else "PNG")
        (tmp_path / "in" / name).write_bytes(buf.getvalue())
    items = files.discover([tmp_path / "in"], tmp_path / "out", recursive=False, fmt="same", suffix="",
                           mask_local=True)
    assert [(i.output.name, i.notes) for i in items] == [("a.png", [PNG_NOTE]), ("b.png", [])]

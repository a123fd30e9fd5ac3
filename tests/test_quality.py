"""restorer.quality and `restorer-cli eval`: PSNR and SSIM equal BasicSR's own numbers.

The values in tests/fixtures/quality/values.json were computed with BasicSR's
calculate_psnr / calculate_ssim (its README says the command and the commit); this project
never imports basicsr.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restorer import quality
from restorer.cli import main

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quality"
VALUES = json.loads((FIXTURES / "values.json").read_text())
CASES = [(name, row) for name, rows in sorted(VALUES["pairs"].items()) for row in rows]


def case_id(case) -> str:
    name, row = case
    return f"{name}-{'y' if row['y_channel'] else 'rgb'}-crop{row['crop_border']}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_psnr_and_ssim_equal_basicsr(case):
    name, row = case
    restored = quality.read(FIXTURES / "restored" / f"{name}.png")
    reference = quality.read(FIXTURES / "reference" / f"{name}.png")
    options = {"crop_border": row["crop_border"], "y_channel": row["y_channel"]}
    assert abs(quality.psnr(restored, reference, **options) - row["psnr"]) <= 1e-6
    assert abs(quality.ssim(restored, reference, **options) - row["ssim"]) <= 1e-6


def test_the_fixtures_cover_what_the_papers_report():
    assert len(VALUES["pairs"]) >= 4
    assert {(r["y_channel"], r["crop_border"]) for _, r in CASES} == {(False, 0), (False, 4), (True, 0), (True, 4)}
    assert len(VALUES["basicsr_commit"]) == 40


def test_y_channel_is_bt601_luma():
    rgb = np.array([[[255.0, 0, 0], [0, 255.0, 0], [0, 0, 255.0], [255.0, 255.0, 255.0], [0, 0, 0]]])
    y = quality.to_y(rgb)[0, :, 0]
    np.testing.assert_allclose(y, [16 + 65.481, 16 + 128.553, 16 + 24.966, 235.0, 16.0], atol=1e-4)
    gray = np.arange(12, dtype=np.float64).reshape(3, 4, 1)
    np.testing.assert_array_equal(quality.to_y(gray), gray)


def test_identical_images_and_refusals():
    image = np.random.default_rng(0).integers(0, 256, (24, 24, 3)).astype(np.float64)
    assert quality.psnr(image, image) == math.inf and quality.ssim(image, image) == pytest.approx(1.0)
    with pytest.raises(quality.QualityError, match="differ in shape: 24x24 colour restored, 20x24 colour reference"):
        quality.psnr(image, image[:, :20])
    with pytest.raises(quality.QualityError, match="crop border 12 leaves nothing"):
        quality.psnr(image, image, crop_border=12)
    with pytest.raises(quality.QualityError, match="smaller than SSIM's 11x11 window"):
        quality.ssim(image, image, crop_border=7)


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_folders_json_per_image_and_mean(capsys):
    code, out, err = run(capsys, "eval", FIXTURES / "restored", FIXTURES / "reference",
                         "--crop-border", "4", "--y-channel", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["channel"], report["crop_border"]) == ("y", 4)
    expected = {name: next(r for r in rows if r["y_channel"] and r["crop_border"] == 4)
                for name, rows in VALUES["pairs"].items()}
    assert [i["name"] for i in report["images"]] == sorted(expected)
    for item in report["images"]:
        assert abs(item["psnr"] - expected[item["name"]]["psnr"]) <= 1e-6
        assert abs(item["ssim"] - expected[item["name"]]["ssim"]) <= 1e-6
    assert report["mean"]["count"] == len(expected)
    assert report["mean"]["psnr"] == pytest.approx(np.mean([e["psnr"] for e in expected.values()]), abs=1e-9)
    assert report["mean"]["ssim"] == pytest.approx(np.mean([e["ssim"] for e in expected.values()]), abs=1e-9)


def test_eval_two_files_and_a_table(capsys):
    name = "kodim05_noise15"
    code, out, _ = run(capsys, "eval", FIXTURES / "restored" / f"{name}.png", FIXTURES / "reference" / f"{name}.png")
    assert code == 0
    assert out.splitlines()[0] == "# all channels, crop border 0"
    row = next(line for line in out.splitlines() if line.startswith(name))
    assert row.split()[1:] == [f"{VALUES['pairs'][name][0]['psnr']:.4f}", f"{VALUES['pairs'][name][0]['ssim']:.4f}"]
    assert any(line.startswith("mean of 1") for line in out.splitlines())


def test_eval_pairs_by_stem_and_says_what_is_unpaired(tmp_path, capsys):
    restored, reference = tmp_path / "out", tmp_path / "gt"
    restored.mkdir()
    reference.mkdir()
    shutil.copy(FIXTURES / "restored" / "kodim05_noise15.png", restored / "a.png")
    Image.open(FIXTURES / "reference" / "kodim05_noise15.png").save(reference / "a.bmp")  # other extension, same stem
    shutil.copy(FIXTURES / "restored" / "kodim23_jpeg15.png", restored / "only-restored.png")
    shutil.copy(FIXTURES / "reference" / "kodim23_jpeg15.png", reference / "only-reference.png")
    (restored / "notes.txt").write_text("not an image")
    code, out, err = run(capsys, "eval", restored, reference, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [i["name"] for i in report["images"]] == ["a"]
    assert report["images"][0]["psnr"] == pytest.approx(VALUES["pairs"]["kodim05_noise15"][0]["psnr"], abs=1e-9)
    assert report["no_reference"] == [str(restored / "only-restored.png")]
    assert report["no_restored"] == [str(reference / "only-reference.png")]
    assert "1 restored image(s) without a reference, skipped: only-restored.png" in err


def test_eval_identical_images_json_has_null_psnr(tmp_path, capsys):
    image = FIXTURES / "reference" / "kodim05_noise15.png"
    code, out, _ = run(capsys, "eval", image, image, "--json")
    report = json.loads(out)  # strict JSON: no Infinity
    assert code == 0 and report["images"][0]["psnr"] is None and report["mean"]["psnr"] is None


def test_eval_errors_are_one_line(tmp_path, capsys):
    restored = FIXTURES / "restored" / "kodim05_noise15.png"
    cases = [
        ((restored, FIXTURES / "reference" / "set12_01_gray_noise25.png"), "48x48 colour restored, 48x48 gray reference"),
        ((restored, tmp_path / "missing.png"), f"cannot read '{tmp_path / 'missing.png'}': no such file"),
        ((FIXTURES / "restored", restored), "is a folder but"),
        ((tmp_path, FIXTURES / "reference"), "no image in"),
        ((restored, restored, "--crop-border", "-1"), "--crop-border must be 0 or more"),
        ((restored, restored, "--crop-border", "24"), "crop border 24 leaves nothing"),
    ]
    (tmp_path / "broken.png").write_bytes(b"not a png")
    cases.append(((tmp_path / "broken.png", restored), "broken.png"))
    for args, message in cases:
        code, out, err = run(capsys, "eval", *args)
        assert code == 2 and out == "", (args, out)
        assert err.count("\n") == 1 and err.startswith("restorer-cli: ") and message in err, (args, err)

"""Scene-text removal end to end through restorer-cli: the tiny GaRNet fixture registered as
the catalog's "garnet" in a temporary store, the built-in inpainting without weights, a
user's own mask with --dilate, and the instruction "remove the text". Every run checks the
promise of the pipeline on the written files: outside the saved mask the output PNG is bit
for bit the decoded input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from restorer.io import imaging
from restorer.pipelines.text_detect import DetectorUnavailable, boxes_to_mask, detect_text, detector_path
from tests.manifests import FIXTURES

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "scenetext_thai.jpg"
HAND_MARKED = json.loads((FIXTURES / "garnet" / "scenetext_thai.textmask.json").read_text())["polygons"]
DEFAULT_DILATE = 2  # restorer.pipelines.text_removal.DEFAULT_DILATE, the CLI's default


def cli(*args, home: Path):
    env = {**os.environ, "RESTORER_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def remove_text(home: Path, out: Path, *args) -> dict:
    """One --json run on the sample photo; the report of its one step."""
    r = cli(*args, PHOTO, "-o", out, "--format", "png", "--json", "--save-intermediates", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["files"][0]["status"] == "done", report["files"][0]["error"]
    return report


def needs_detector():
    try:
        detector_path()
    except DetectorUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """The input as restorer decodes it, in 8-bit values (the JPEG is 8-bit: exact)."""
    pixels = imaging.load(PHOTO).pixels
    values = np.round(pixels * 255)
    assert np.abs(pixels * 255 - values).max() < 1e-3
    return values.astype(np.uint8)


@pytest.fixture(scope="module")
def garnet_home(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from tests.test_export_families import register_tiny_garnet

    home = tmp_path_factory.mktemp("store")
    register_tiny_garnet(home, "garnet")
    return home


def written(out: Path) -> tuple[np.ndarray, np.ndarray]:
    """(the output's 8-bit RGB values, the saved mask as booleans)."""
    result = np.asarray(Image.open(out / "scenetext_thai.png"))
    saved = np.asarray(Image.open(out / "scenetext_thai.text-mask.png"))
    assert saved.ndim == 2 and set(np.unique(saved)) <= {0, 255}
    return result, saved == 255


def assert_only_the_mask_changed(photo, result, mask):
    assert result.shape == photo.shape and result.dtype == np.uint8
    assert mask.any()
    assert np.array_equal(result[~mask], photo[~mask])  # bit-identical outside
    # ... and the fill did happen inside: the saved mask is the region that changed.
    assert (result[mask] != photo[mask]).any(axis=1).mean() > 0.95


def stages_of(report: dict) -> list[dict]:
    stages = report["files"][0]["steps"][0]["stages"]
    for s in stages:
        assert isinstance(s["backend"], str) and s["backend"]
        assert isinstance(s["seconds"], float | int) and s["seconds"] >= 0
    return stages


def test_garnet_removes_detected_text_and_saves_the_mask_it_used(tmp_path, garnet_home, photo):
    needs_detector()
    report = remove_text(garnet_home, tmp_path / "out", "--task", "remove-text")
    assert [(p["task"], p["backend"], p["model"]) for p in report["plan"]] == [("remove-text", "pipeline", "garnet")]
    step = report["files"][0]["steps"][0]
    assert step["runner"] == "torch"  # not exported: eager PyTorch on the registered weights
    stages = stages_of(report)
    assert [s["stage"] for s in stages] == ["detect", "fill"]
    assert stages[0]["boxes"] >= 1 and stages[1]["backend"] == "garnet"

    result, mask = written(tmp_path / "out")
    assert_only_the_mask_changed(photo, result, mask)
    assert stages[1]["pixels"] == mask.sum()
    # The saved mask is the detector's boxes, filled and grown by the default dilation...
    expected = boxes_to_mask(detect_text(imaging.load(PHOTO).pixels), photo.shape, dilate=DEFAULT_DILATE)
    np.testing.assert_array_equal(mask, expected)
    # ... and it covers the hand-marked text lines without covering everything.
    hand = boxes_to_mask(HAND_MARKED, photo.shape)
    assert (mask & hand).sum() / hand.sum() >= 0.8
    assert (mask & hand).sum() / mask.sum() >= 0.6


def test_own_mask_is_dilated_and_nothing_outside_changes(tmp_path, garnet_home, photo):
    drawn = np.zeros(photo.shape[:2], np.uint8)
    drawn[270:330, 170:480] = 255  # the first text line, roughly
    cv2.line(drawn, (200, 500), (360, 560), 255, 3)  # a thin diagonal stroke
    mask_file = tmp_path / "my-mask.png"
    Image.fromarray(drawn, "L").save(mask_file)

    report = remove_text(garnet_home, tmp_path / "out", "--task", "remove-text", "--mask", mask_file, "--dilate", 4)
    stages = stages_of(report)
    assert [s["stage"] for s in stages] == ["mask", "fill"]
    assert str(mask_file) in stages[0]["backend"]
    result, mask = written(tmp_path / "out")
    expected = cv2.dilate((drawn > 0).astype(np.uint8), np.ones((3, 3), np.uint8), iterations=4) > 0
    np.testing.assert_array_equal(mask, expected)
    assert_only_the_mask_changed(photo, result, mask)

    # A mask of another size: a one-line error naming it, exit 2, no output file.
    Image.fromarray(drawn[:400], "L").save(tmp_path / "small.png")
    r = cli("--task", "remove-text", PHOTO, "-o", tmp_path / "bad", "--mask", tmp_path / "small.png", home=garnet_home)
    assert r.returncode == 2 and "small.png" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "bad" / "scenetext_thai.jpg").exists()


def test_without_weights_the_builtin_inpainting_fills_and_says_so(tmp_path, photo):
    needs_detector()
    report = remove_text(tmp_path / "empty-store", tmp_path / "out", "--task", "remove-text")
    plan = report["plan"][0]
    assert (plan["task"], plan["backend"], plan["model"]) == ("remove-text", "pipeline", "builtin:inpaint")
    assert "no network" in plan["why"]
    step = report["files"][0]["steps"][0]
    assert (step["runner"], step["provider"]) == ("builtin", "numpy")
    stages = stages_of(report)
    assert [s["stage"] for s in stages] == ["detect", "fill"] and stages[1]["backend"] == "builtin:inpaint"
    result, mask = written(tmp_path / "out")
    assert_only_the_mask_changed(photo, result, mask)
    # The white letters are gone: inside the hand-marked lines the bright pixels darken.
    letters = boxes_to_mask(HAND_MARKED, photo.shape) & (photo.min(axis=2) > 140)
    assert letters.sum() > 1000
    assert result[letters].min(axis=1).mean() < photo[letters].min(axis=1).mean() - 50


def test_instruction_remove_the_text_runs_the_pipeline(tmp_path, garnet_home, photo):
    # Nothing installed: the plan is the pipeline with its classical fallbacks.
    r = cli("--instruction", "remove the text", PHOTO, "--dry-run", "--json", home=tmp_path / "empty-store")
    assert r.returncode == 0, r.stderr
    assert [(p["task"], p["backend"], p["model"]) for p in json.loads(r.stdout)["plan"]] == \
        [("remove-text", "pipeline", "builtin:inpaint")]
    # GaRNet installed: the same words run it (on a mask of our own, to skip detection).
    drawn = np.zeros(photo.shape[:2], np.uint8)
    drawn[490:570, 190:375] = 255
    Image.fromarray(drawn, "L").save(tmp_path / "m.png")
    report = remove_text(garnet_home, tmp_path / "out", "--instruction", "remove the text",
                         "--mask", tmp_path / "m.png", "--dilate", 0)
    assert [(p["task"], p["backend"], p["model"]) for p in report["plan"]] == [("remove-text", "pipeline", "garnet")]
    assert [s["stage"] for s in stages_of(report)] == ["mask", "fill"]
    result, mask = written(tmp_path / "out")
    np.testing.assert_array_equal(mask, drawn > 0)
    assert_only_the_mask_changed(photo, result, mask)


def test_boxes_given_on_the_command_line(tmp_path):
    """--boxes replaces detection: the mask is exactly those boxes grown by --dilate."""
    import numpy as np
    from PIL import Image

    src = tmp_path / "card.png"
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(src)
    r = subprocess.run([sys.executable, "-m", "restorer.cli", str(src), "-o", str(tmp_path / "out"), "--task",
                        "remove-text", "--boxes", "10,20,30,40;50,5,70,15", "--dilate", "0", "--json",
                        "--save-intermediates"], capture_output=True, text=True,
                       env={**os.environ, "RESTORER_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    stages = json.loads(r.stdout)["files"][0]["steps"][0]["stages"]
    assert stages[0]["stage"] == "boxes" and stages[0]["boxes"] == 2
    mask = np.asarray(Image.open(tmp_path / "out" / "card.text-mask.png")) > 127
    expected = np.zeros((60, 80), bool)
    expected[20:41, 10:31] = True  # cv2.fillPoly includes the edges
    expected[5:16, 50:71] = True
    assert np.array_equal(mask, expected)
    bad = subprocess.run([sys.executable, "-m", "restorer.cli", str(src), "-o", str(tmp_path / "o2"), "--task",
                          "remove-text", "--boxes", "10,20,5,40"], capture_output=True, text=True)
    assert bad.returncode == 2 and "empty" in bad.stderr

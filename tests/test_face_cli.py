"""Face restoration through restorer-cli: --task faces without weights exits 2 naming the
model; --faces adds a faces step at the end of another task's plan (shown by --dry-run); with
a fake face network installed in a temporary store (an ONNX graph in RESTORER_HOME, described
by a user catalog entry) --task faces and --task superres --faces run end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "oldphoto_scratch_b.png"  # RGBA, one face
NO_FACE = REPO / "samples" / "sots_hazy_0002.jpg"


def cli(*args, home: Path):
    env = {**os.environ, "RESTORER_HOME": str(home), "OMP_NUM_THREADS": "2"}
    env.pop("RESTORER_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=600, stdin=subprocess.DEVNULL)


FAKE_ENTRY = """
[[model]]
id = "test-face"
title = "A fake face network: brightens the aligned crop (tests)"
family = "gfpgan"
tasks = ["faces"]
arch = "GFPGANv1Clean"
scale = 1
channels = 3
input_range = [-1.0, 1.0]
output_range = [-1.0, 1.0]
overlap = 0
tile = 512
rank = 99
licence = "Apache-2.0"
notes = "test only"
[[model.files]]
name = "test-face.pth"
url = "https://example.invalid/test-face.pth"
sha256 = ""
size = 0
"""


def install_fake_face_model(home: Path) -> None:
    """A user catalog entry and its 'export' in the store: y = 0.6 x + 0.4 on [-1, 1], i.e.
    in [0, 1] the crop is lifted towards white (a visible, smooth change)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "h", "w"])
    a = helper.make_tensor("a", TensorProto.FLOAT, [], [0.6])
    b = helper.make_tensor("b", TensorProto.FLOAT, [], [0.4])
    graph = helper.make_graph([helper.make_node("Mul", ["input", "a"], ["scaled"]),
                               helper.make_node("Add", ["scaled", "b"], ["output"])],
                              "fake_face", [x], [y], [a, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (home / "onnx").mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(home / "onnx" / "test-face.fp32.onnx"))
    (home / "catalog.toml").write_text(FAKE_ENTRY, encoding="utf-8")


def test_task_faces_without_weights_exits_2_naming_the_model(tmp_path):
    r = cli(PHOTO, "-o", tmp_path / "out", "--task", "faces", home=tmp_path / "h")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "gfpgan-v1.4" in lines[0] and "restorer-cli models download gfpgan-v1.4" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_faces_option_adds_a_step_a_dry_run_shows(tmp_path):
    r = cli(PHOTO, "-o", tmp_path / "out", "--task", "denoise", "--faces", "--dry-run", home=tmp_path / "h")
    assert r.returncode == 2, r.stderr  # the plan cannot run until a face model is installed
    plan = [line for line in r.stdout.splitlines() if line.startswith("plan: ")]
    assert plan[0].startswith("plan: denoise -> builtin:denoise")
    assert plan[1].startswith("plan: faces -> not installed:") and "gfpgan-v1.4" in plan[1]
    assert "restorer-cli models download gfpgan-v1.4" in r.stderr
    r = cli(PHOTO, "--task", "denoise", "--faces", "--dry-run", "--json", home=tmp_path / "h")
    report = json.loads(r.stdout)
    assert [s["task"] for s in report["plan"]] == ["denoise", "faces"] and report["runnable"] is False


def test_faces_runs_end_to_end_with_an_installed_face_model(tmp_path):
    home = tmp_path / "h"
    install_fake_face_model(home)
    r = cli(PHOTO, "--task", "superres", "--scale", "2", "--faces", "--dry-run", home=home)
    assert r.returncode == 0, r.stderr
    assert [line.split(" ->")[0] for line in r.stdout.splitlines() if line.startswith("plan: ")] == \
        ["plan: superres", "plan: faces"]
    assert "plan: faces -> test-face [pipeline]" in r.stdout

    r = cli(PHOTO, NO_FACE, "-o", tmp_path / "out", "--task", "faces", "--json", "--save-intermediates", home=home)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["plan"][0]["task"] == "faces" and report["plan"][0]["model"] == "test-face"
    by_name = {Path(f["input"]).name: f for f in report["files"]}
    step = by_name[PHOTO.name]["steps"][0]
    stages = {s["stage"]: s for s in step["stages"]}
    assert stages["face-detection"]["faces"] == 1 and stages["face-01"]["restored"] is True
    assert step["runner"] in ("onnx", "openvino")  # the ONNX graph, on the runtime --device auto picks
    # the photo keeps its size and alpha; only the face region changed
    before = np.asarray(Image.open(PHOTO))
    out = Image.open(tmp_path / "out" / PHOTO.name)
    assert out.size == (256, 256) and out.mode == "RGBA"
    after = np.asarray(out)
    x0, y0, x1, y1 = stages["face-01"]["region"]
    changed = np.argwhere(np.any(after != before, axis=2))
    assert len(changed) > 500
    assert changed.min(0).tolist() >= [y0, x0] and (changed.max(0) < [y1, x1]).all()
    assert np.array_equal(after[..., 3], before[..., 3])
    assert (tmp_path / "out" / "oldphoto_scratch_b.face-01.png").is_file()
    # a photo without a face: unchanged, said in the notes; written losslessly (mask-local)
    hazy = by_name[NO_FACE.name]
    assert any("no face found" in n for n in hazy["steps"][0]["notes"])
    assert Path(hazy["output"]).suffix == ".png"
    assert np.array_equal(np.asarray(Image.open(hazy["output"]).convert("RGB")),
                          np.asarray(Image.open(NO_FACE).convert("RGB")))

    # upscale, then restore the faces on the result
    r = cli(PHOTO, "-o", tmp_path / "up", "--task", "superres", "--scale", "2", "--faces", "--json", home=home)
    assert r.returncode == 0, r.stderr
    steps = json.loads(r.stdout)["files"][0]["steps"]
    assert [s["task"] for s in steps] == ["superres", "faces"]
    assert any(s["stage"] == "face-01" and s["restored"] for s in steps[1]["stages"])
    assert Image.open(tmp_path / "up" / PHOTO.name).size == (512, 512)


def test_faces_without_a_face_detector_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    from restorer import cli
    from restorer.plan import request

    home = tmp_path / "home"
    install_fake_face_model(home)
    monkeypatch.setenv("RESTORER_HOME", str(home))
    monkeypatch.setattr(request, "find_spec", lambda name: None)  # dlib not installed
    code = cli.main([str(PHOTO), "-o", str(tmp_path / "out"), "--task", "faces"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'restorer[faces]'" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

"""restorer-cli on a folder with good and bad files: everything good is restored with its
bit depth, mode, orientation, alpha and ICC; every bad file is named; exit code 1; no
partial or temporary file; a killed run resumes without redoing finished images."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "kodim05_crop256.png"


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, **kw)


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def make_folder(root: Path, n_plain: int = 12) -> dict:
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"))[:96, :128]
    root.mkdir(parents=True)
    (root / "sub").mkdir()
    files = {}
    for i in range(n_plain):
        p = root / ("sub" if i % 2 else ".") / f"plain{i:02d}.png"
        Image.fromarray(np.roll(rgb, i * 7, axis=1)).save(p)
    # 16-bit RGB PNG (written with OpenCV: Pillow cannot write 16-bit colour)
    import cv2

    rgb16 = (rgb.astype(np.uint16) * 257)[..., ::-1]
    cv2.imwrite(str(root / "deep16.png"), rgb16)
    files["deep16"] = root / "deep16.png"
    rgba = np.dstack([rgb, np.tile(np.linspace(0, 255, rgb.shape[1], dtype=np.uint8), (rgb.shape[0], 1))])
    Image.fromarray(rgba, "RGBA").save(root / "alpha.png")
    Image.fromarray(rgb).convert("L").save(root / "gray.jpg", quality=92)
    rot = Image.fromarray(rgb)
    exif = rot.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    rot.save(root / "sub" / "rotated.jpg", icc_profile=srgb_profile(), exif=exif.tobytes(), quality=92)
    Image.fromarray(rgb).convert("CMYK").save(root / "cmyk.jpg", quality=92)
    good = (root / "alpha.png").read_bytes()
    (root / "corrupt.png").write_bytes(good[: len(good) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.png").write_text("this is a text file, not a picture\n")
    (root / "readme.txt").write_text("ignored: not an image extension\n")
    return files


def outputs(folder: Path) -> list[Path]:
    """The images; restorer's own files (journal, lock, run markers, temporaries) start with a dot."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def leftovers(folder: Path) -> list[Path]:
    """Temporaries and run markers: what a finished run must not leave behind."""
    return [p for p in folder.rglob("*") if p.suffix == ".part" or p.name.startswith(".restorer-run-")]


def test_folder_batch_keeps_what_matters_and_reports_bad_files(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_folder(src)
    r = cli(src, "-o", out, "--task", "denoise", "--recursive", "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    status = {Path(f["input"]).name: f for f in report["files"]}
    assert {n for n, f in status.items() if f["status"] == "failed"} == {"corrupt.png", "empty.jpg", "notes.png"}
    for name in ("corrupt.png", "empty.jpg", "notes.png"):
        assert name in status[name]["error"] and "cannot read" in status[name]["error"]
    assert sum(f["status"] == "done" for f in report["files"]) == 12 + 5
    step = status["alpha.png"]["steps"][0]
    assert step["model"] == "builtin:denoise" and step["provider"] and step["task"] == "denoise"

    # the input tree is mirrored; no temporary or partial files anywhere
    assert (out / "sub" / "rotated.jpg").exists() and (out / "sub" / "plain01.png").exists()
    assert not leftovers(out)
    assert (out / ".restorer-journal.json").is_file() and (out / "sub" / ".restorer-journal.json").is_file()
    assert not (out / "corrupt.png").exists() and not (out / "readme.txt").exists()

    deep = Image.open(out / "deep16.png")
    import cv2

    assert cv2.imread(str(out / "deep16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    assert Image.open(out / "alpha.png").mode == "RGBA"
    a_in = np.asarray(Image.open(src / "alpha.png"))[..., 3]
    assert np.array_equal(np.asarray(Image.open(out / "alpha.png"))[..., 3], a_in)
    assert Image.open(out / "gray.jpg").mode == "L"
    rotated = Image.open(out / "sub" / "rotated.jpg")
    assert rotated.size == (96, 128)  # orientation applied to the pixels ...
    assert rotated.getexif().get(0x0112, 1) == 1  # ... and reset in the EXIF
    assert rotated.info.get("icc_profile") == Image.open(src / "sub" / "rotated.jpg").info["icc_profile"]
    assert Image.open(out / "cmyk.jpg").mode == "RGB"
    assert "CMYK" in " ".join(status["cmyk.jpg"]["notes"])
    del deep

    # a rerun skips what is there and redoes nothing
    again = cli(src, "-o", out, "--task", "denoise", "--recursive", "--json")
    summary = json.loads(again.stdout)["summary"]
    assert summary.get("skipped") == 17 and "done" not in summary


def test_killed_run_resumes_without_redoing_finished_images(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    make_folder(src, n_plain=30)
    proc = subprocess.Popen([sys.executable, "-m", "restorer.cli", str(src), "-o", str(out), "--task", "denoise",
                             "--recursive", "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(outputs(out)) < 4:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in outputs(out)}
    assert 4 <= len(finished) < 35, "the run should have been killed midway"
    r = cli(src, "-o", out, "--task", "denoise", "--recursive", "--json")
    assert r.returncode == 1  # the three bad files
    files = json.loads(r.stdout)["files"]
    skipped = {Path(f["output"]) for f in files if f["status"] == "skipped"}
    assert skipped == set(finished)
    for p, mtime in finished.items():
        assert p.stat().st_mtime_ns == mtime  # not rewritten
    assert sum(f["status"] == "done" for f in files) == 35 - len(finished)
    assert not leftovers(out)


def test_unreadable_single_file_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = cli(bad, "-o", tmp_path / "out", "--task", "denoise")
    assert r.returncode == 2
    lines = [l for l in r.stderr.splitlines() if "cannot read" in l]
    assert lines and lines[0].startswith("restorer-cli: ") and str(bad) in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "broken.jpg").exists()


def test_never_writes_over_an_input(tmp_path):
    img = tmp_path / "photo.png"
    Image.open(SAMPLE).crop((0, 0, 64, 64)).save(img)
    before = img.read_bytes()
    r = cli(img, "-o", tmp_path, "--task", "denoise", "--overwrite")
    assert r.returncode == 2 and "overwrite an input" in r.stderr
    assert img.read_bytes() == before
    r = cli(img, "-o", tmp_path, "--task", "denoise", "--suffix", "_clean")
    assert r.returncode == 0 and (tmp_path / "photo_clean.png").exists()


def test_help_imports_neither_torch_nor_qt():
    code = ("import sys\nfrom restorer.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "bad = [m for m in ('torch', 'PySide6') if m in sys.modules]\nprint('LOADED', bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "LOADED []" in r.stdout, r.stdout + r.stderr


def test_task_without_network_or_builtin_names_models_and_exits_2(tmp_path):
    img = tmp_path / "rainy.png"
    Image.open(SAMPLE).crop((0, 0, 32, 32)).save(img)
    env = {**os.environ, "RESTORER_HOME": str(tmp_path / "store")}
    r = cli(img, "-o", tmp_path / "out", "--task", "derain", env=env)
    assert r.returncode == 2
    assert "derain" in r.stderr and "built-in" in r.stderr


def test_format_and_quality_and_dry_run(tmp_path):
    img = tmp_path / "p.png"
    Image.open(SAMPLE).crop((0, 0, 64, 48)).save(img)
    r = cli(img, "-o", tmp_path / "o", "--task", "superres", "--scale", "2", "--format", "jpg",
            "--quality", "80", "--dry-run", "--json")
    assert r.returncode == 0
    plan = json.loads(r.stdout)
    assert plan["plan"][0]["model"] == "builtin:upscale" and plan["files"][0]["status"] == "would-restore"
    assert not (tmp_path / "o").exists()
    r = cli(img, "-o", tmp_path / "o", "--task", "superres", "--scale", "2", "--format", "jpg", "--quality", "80")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "o" / "p.jpg").size == (128, 96)

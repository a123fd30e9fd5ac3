"""restorer-cli --engine ray (restorer.batch.ray_engine): the same batch as --engine local on a
pool of Ray workers. Same output bytes and names, a worker killed mid-job changes nothing,
reruns skip what is there, bad files fail by name, and without Ray one line and exit 2.

Built-in operators only (no model download); a local Ray with 2 CPUs for the whole module."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")

from restorer.batch.journal import JOURNAL_NAME, LOCK_NAME  # noqa: E402
from restorer.cli import main  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TASK = ["--task", "denoise", "--device", "cpu", "--recursive", "--quiet"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray with 2 CPUs and an empty model store (RESTORER_HOME) for the module."""
    home = tmp_path_factory.mktemp("home")
    before = os.environ.get("RESTORER_HOME")
    os.environ["RESTORER_HOME"] = str(home)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)  # as the CLI's
    try:
        yield home
    finally:
        ray.shutdown()
        if before is None:
            os.environ.pop("RESTORER_HOME", None)
        else:
            os.environ["RESTORER_HOME"] = before


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """10 small images of mixed kinds in nested folders."""
    import cv2

    root = tmp_path_factory.mktemp("photos")
    (root / "a" / "b").mkdir(parents=True)
    rgb = np.asarray(Image.open(SAMPLES / "kodim05_crop256.png").convert("RGB"))
    for i in range(3):
        Image.fromarray(np.ascontiguousarray(rgb[i * 40:i * 40 + 72, i * 30:i * 30 + 96])).save(
            root / ("a" if i % 2 else ".") / f"plain{i}.png")
    Image.fromarray(rgb[:80, :112]).save(root / "a" / "photo.jpg", quality=90)
    exif = Image.Exif()
    exif[0x010F] = "restorer test camera"  # Make
    exif[0x0112] = 6  # orientation: rotate
    Image.fromarray(rgb[100:164, 50:146]).save(root / "a" / "b" / "exif.jpg", quality=92, exif=exif)
    Image.fromarray(rgb[10:74, 10:74]).save(root / "a" / "b" / "scan.tiff")
    rgb16 = (rgb[:64, :96].astype(np.uint16) * 257)[..., ::-1]
    cv2.imwrite(str(root / "deep16.png"), np.ascontiguousarray(rgb16))
    rgba = np.dstack([rgb[:64, :64], np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))])
    Image.fromarray(rgba, "RGBA").save(root / "a" / "alpha.png")
    Image.open(SAMPLES / "fbcnn_real_2_face.jpg").convert("RGB").resize((96, 96)).save(root / "face.jpg")
    gray = np.asarray(Image.open(SAMPLES / "kodim23_crop256.png").convert("L"))[:64, :96]
    Image.fromarray(gray).save(root / "a" / "b" / "gray.png")
    return root


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the journals and their locks, by relative name."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (JOURNAL_NAME, LOCK_NAME)}


def run_json(capsys, *args) -> tuple[int, dict]:
    capsys.readouterr()
    code = main([*map(str, args), "--json"])
    out = capsys.readouterr().out
    # The report is all a run prints on stdout; but the module's Ray outlives each run, and a
    # raylet message about an earlier run's killed worker may still arrive on stdout meanwhile.
    return code, json.loads(out[out.index('{\n  "plan"'):])


@pytest.fixture(scope="module")
def local_outputs(photos, tmp_path_factory, cluster) -> Path:
    out = tmp_path_factory.mktemp("local")
    assert main([str(photos), "-o", str(out), *TASK]) == 0
    return out


def test_ray_outputs_are_bit_identical_to_local(photos, local_outputs, tmp_path, capsys):
    code, report = run_json(capsys, photos, "-o", tmp_path / "ray", *TASK, "--engine", "ray")
    assert code == 0, report
    assert report["summary"] == {"done": 10}
    local, remote = outputs(local_outputs), outputs(tmp_path / "ray")
    assert len(local) == 10 and sorted(remote) == sorted(local)
    for name in local:
        assert remote[name] == local[name], name


def test_a_worker_killed_mid_job_changes_nothing(photos, local_outputs, tmp_path, monkeypatch, capsys):
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    monkeypatch.setenv("RESTORER_TEST_CRASH_ONCE", "exif.jpg")
    monkeypatch.setenv("RESTORER_TEST_CRASH_DIR", str(crashes))
    out = tmp_path / "ray"
    code, report = run_json(capsys, photos, "-o", out, *TASK, "--engine", "ray")
    assert (crashes / "crashed-exif.jpg").exists()  # the worker did die on it
    assert code == 0 and report["summary"] == {"done": 10}
    assert outputs(out) == outputs(local_outputs)  # each output once, nothing else (no temporary, no marker)
    for journal in out.rglob(JOURNAL_NAME):
        names = [json.loads(line)["name"] for line in journal.read_text().splitlines()
                 if json.loads(line)["status"] == "done"]
        assert len(names) == len(set(names))  # written once each


def test_rerun_skips_everything_and_redoes_only_what_was_deleted(photos, tmp_path, capsys):
    out = tmp_path / "ray"
    assert run_json(capsys, photos, "-o", out, *TASK, "--engine", "ray")[0] == 0
    first = outputs(out)
    code, report = run_json(capsys, photos, "-o", out, *TASK, "--engine", "ray")
    assert code == 0 and report["summary"] == {"skipped": 10}
    (out / "deep16.png").unlink()
    (out / "a" / "b" / "exif.jpg").unlink()
    code, report = run_json(capsys, photos, "-o", out, *TASK, "--engine", "ray")
    assert code == 0 and report["summary"] == {"done": 2, "skipped": 8}
    assert sorted(Path(f["output"]).name for f in report["files"] if f["status"] == "done") == ["deep16.png", "exif.jpg"]
    assert outputs(out) == first


def test_bad_files_fail_by_name_and_the_others_are_written(photos, tmp_path, capsys):
    src = tmp_path / "mixed"
    shutil.copytree(photos / "a" / "b", src)
    (src / "zero.png").write_bytes(b"")
    (src / "truncated.png").write_bytes((photos / "deep16.png").read_bytes()[:300])
    (src / "text.jpg").write_text("not a photo\n")
    code, report = run_json(capsys, src, "-o", tmp_path / "ray", *TASK, "--engine", "ray")
    local_code, local = run_json(capsys, src, "-o", tmp_path / "local", *TASK)
    assert code == local_code == 1  # some failed, the others written
    status = {Path(f["input"]).name: (f["status"], f["error"]) for f in report["files"]}
    assert {n for n, (s, _) in status.items() if s == "failed"} == {"zero.png", "truncated.png", "text.jpg"}
    assert {n for n, (s, _) in status.items() if s == "done"} == {"exif.jpg", "scan.tiff", "gray.png"}
    for name in ("zero.png", "truncated.png", "text.jpg"):
        error = status[name][1]
        assert name in error and "\n" not in error
    assert status == {Path(f["input"]).name: (f["status"], f["error"]) for f in local["files"]}  # the same words
    assert outputs(tmp_path / "ray") == outputs(tmp_path / "local")


def test_without_ray_one_line_and_exit_2(photos, tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    capsys.readouterr()
    assert main([str(photos), "-o", str(tmp_path / "out"), *TASK, "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err == "restorer-cli: --engine ray needs Ray: pip install 'restorer[cluster]'\n"
    assert not (tmp_path / "out").exists()


def test_ray_engine_imports_without_ray(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails
    monkeypatch.delitem(sys.modules, "restorer.batch.ray_engine", raising=False)
    module = importlib.import_module("restorer.batch.ray_engine")
    assert callable(module.run_batch_ray)


def test_an_address_where_nothing_answers_is_refused_at_once():
    from restorer.batch.ray_engine import ClusterError, check_reachable

    with pytest.raises(ClusterError, match="nothing answers at 127.0.0.1:1"):
        check_reachable("127.0.0.1:1", timeout=2)
    with pytest.raises(ClusterError, match="nothing answers"):
        check_reachable("ray://127.0.0.1:1", timeout=2)
    with pytest.raises(ClusterError, match="expected auto, HOST:PORT"):
        check_reachable("somewhere")


def test_models_shipped_through_the_object_store_to_workers_without_the_store(photos, cluster, tmp_path,
                                                                               monkeypatch, capsys):
    """--ship-models: the workers' own store (the module's, empty) lacks the model; the driver
    sends its files (and the user catalog that names it) through Ray's object store."""
    pytest.importorskip("torch")
    from tests.store_helpers import HAT_TINY, tiny_hat_entry

    driver_home = tmp_path / "driver-home"
    driver_home.mkdir()
    (driver_home / "catalog.toml").write_text(tiny_hat_entry("tiny-hat"))
    monkeypatch.setenv("RESTORER_HOME", str(driver_home))
    assert main(["models", "add", str(HAT_TINY / "hat_tiny_x2.safetensors"), "--id", "tiny-hat"]) == 0
    src = tmp_path / "in"
    src.mkdir()
    for name in ("plain0.png", "face.jpg"):
        shutil.copy(photos / name, src / name)
    model = ["--model", "tiny-hat", "--device", "cpu", "--quiet"]
    assert main([str(src), "-o", str(tmp_path / "local"), *model]) == 0
    code, report = run_json(capsys, src, "-o", tmp_path / "ray", *model, "--engine", "ray", "--ship-models")
    assert code == 0 and report["summary"] == {"done": 2}, report
    for name in ("plain0.png", "face.jpg"):
        local = np.asarray(Image.open(tmp_path / "local" / name), np.int16)
        remote = np.asarray(Image.open(tmp_path / "ray" / name), np.int16)
        assert local.shape == remote.shape and np.abs(local - remote).max() <= 1, name  # threads may round apart
    assert not any(p.name.startswith("restorer-store-") for p in driver_home.iterdir())

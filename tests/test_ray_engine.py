"""restorer-cli --engine ray (restorer.batch.ray_engine): the same batch as --engine local on a
pool of Ray workers. Same output bytes and names (40 images of mixed kinds), a worker killed
mid-job changes nothing, reruns skip what is there, bad files fail by name, and without Ray
one line and exit 2. The same from and to s3:// URLs, against an S3 server on 127.0.0.1.

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
def cluster(tmp_path_factory, s3_server):
    """A local Ray with 2 CPUs and an empty model store (RESTORER_HOME) for the module; started
    after the S3 server, so that its workers have the credentials and endpoint, as the workers
    of a Ray started by a user who can read the bucket."""
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


VARIANTS = 4  # each kind of image below, cut at as many places
IMAGES = 10 * VARIANTS


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """40 small images of 10 kinds (PNG, JPEG with EXIF and orientation, TIFF, 16-bit, alpha,
    gray) in nested folders; the first of each kind has the plain name (plain0.png), the
    others a number (plain0_1.png)."""
    import cv2

    root = tmp_path_factory.mktemp("photos")
    (root / "a" / "b").mkdir(parents=True)
    kodim = np.asarray(Image.open(SAMPLES / "kodim05_crop256.png").convert("RGB"))
    face = Image.open(SAMPLES / "fbcnn_real_2_face.jpg").convert("RGB").resize((112, 112))
    gray_source = np.asarray(Image.open(SAMPLES / "kodim23_crop256.png").convert("L"))

    def name(folder: Path, stem: str, ext: str, v: int) -> Path:
        return folder / (f"{stem}{ext}" if v == 0 else f"{stem}_{v}{ext}")

    for v in range(VARIANTS):
        rgb = np.roll(kodim, 9 * v, axis=(0, 1))  # another cut of the same photo
        for i in range(3):
            Image.fromarray(np.ascontiguousarray(rgb[i * 40:i * 40 + 72, i * 30:i * 30 + 96])).save(
                name(root / ("a" if i % 2 else "."), f"plain{i}", ".png", v))
        Image.fromarray(rgb[:80, :112]).save(name(root / "a", "photo", ".jpg", v), quality=90)
        exif = Image.Exif()
        exif[0x010F] = "restorer test camera"  # Make
        exif[0x0112] = 6  # orientation: rotate
        Image.fromarray(rgb[100:164, 50:146]).save(name(root / "a" / "b", "exif", ".jpg", v), quality=92, exif=exif)
        Image.fromarray(rgb[10:74, 10:74]).save(name(root / "a" / "b", "scan", ".tiff", v))
        rgb16 = (rgb[:64, :96].astype(np.uint16) * 257)[..., ::-1]
        cv2.imwrite(str(name(root, "deep16", ".png", v)), np.ascontiguousarray(rgb16))
        rgba = np.dstack([rgb[:64, :64], np.tile(np.linspace(0, 255, 64, dtype=np.uint8), (64, 1))])
        Image.fromarray(rgba, "RGBA").save(name(root / "a", "alpha", ".png", v))
        face.crop((v * 4, v * 4, v * 4 + 96, v * 4 + 96)).save(name(root, "face", ".jpg", v))
        Image.fromarray(np.roll(gray_source, 9 * v, axis=0)[:64, :96]).save(name(root / "a" / "b", "gray", ".png", v))
    assert len([p for p in root.rglob("*") if p.is_file()]) == IMAGES
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
    assert report["summary"] == {"done": IMAGES}
    local, remote = outputs(local_outputs), outputs(tmp_path / "ray")
    assert len(local) == IMAGES and sorted(remote) == sorted(local)
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
    assert code == 0 and report["summary"] == {"done": IMAGES}
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
    assert code == 0 and report["summary"] == {"skipped": IMAGES}
    (out / "deep16.png").unlink()
    (out / "a" / "b" / "exif.jpg").unlink()
    code, report = run_json(capsys, photos, "-o", out, *TASK, "--engine", "ray")
    assert code == 0 and report["summary"] == {"done": 2, "skipped": IMAGES - 2}
    assert sorted(Path(f["output"]).name for f in report["files"] if f["status"] == "done") == ["deep16.png", "exif.jpg"]
    assert outputs(out) == first


def test_bad_files_fail_by_name_and_the_others_are_written(photos, tmp_path, capsys):
    src = tmp_path / "mixed"
    src.mkdir()
    for name in ("exif.jpg", "scan.tiff", "gray.png"):
        shutil.copy(photos / "a" / "b" / name, src / name)
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
    with pytest.raises(ClusterError, match="expected auto or HOST:PORT"):
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


# ---------------------------------------------------------------- inputs and outputs at URLs


@pytest.fixture(scope="module")
def s3_server():
    """An S3 server on 127.0.0.1 (moto), found through AWS_ENDPOINT_URL and the credentials in
    the environment, as a user's S3-compatible store would be; None without moto."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "restorer-test",
           "AWS_SECRET_ACCESS_KEY": "restorer-test", "AWS_DEFAULT_REGION": "us-east-1"}
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield server
    finally:
        server.stop()
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def s3(s3_server, photos, cluster):
    """Bucket "archive" holds the photos under scans/, bucket "restored" is empty."""
    if s3_server is None:
        pytest.skip("moto is not installed")
    pytest.importorskip("pyarrow.fs")
    import boto3

    client = boto3.client("s3")
    for bucket in ("archive", "restored"):
        client.create_bucket(Bucket=bucket)
    for path in sorted(photos.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "archive", f"scans/{path.relative_to(photos).as_posix()}")
    return client


def bucket_files(client, bucket: str, prefix: str = "") -> dict[str, bytes]:
    """Every object under `prefix` but the journal's, by name below it."""
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k[len(prefix):]: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in sorted(keys)
            if not k[len(prefix):].startswith(".restorer-journal/")}


def test_s3_to_s3_gives_the_local_outputs_and_a_rerun_does_only_what_is_missing(s3, local_outputs, tmp_path,
                                                                               monkeypatch, capsys):
    """Inputs read by the workers from s3://, outputs put by the driver: the same names and
    bytes as the local engine, a worker killed on one image changes nothing, the journal lives
    beside the outputs, and a rerun skips everything but the deleted objects."""
    crashes = tmp_path / "crashes"
    crashes.mkdir()
    monkeypatch.setenv("RESTORER_TEST_CRASH_ONCE", "scan.tiff")
    monkeypatch.setenv("RESTORER_TEST_CRASH_DIR", str(crashes))
    code, report = run_json(capsys, "s3://archive/scans", "-o", "s3://restored/run1", *TASK, "--engine", "ray")
    assert (crashes / "crashed-scan.tiff").exists()
    assert code == 0 and report["summary"] == {"done": IMAGES}, report
    assert {f["input"] for f in report["files"]} >= {"s3://archive/scans/a/b/exif.jpg", "s3://archive/scans/deep16.png"}
    assert bucket_files(s3, "restored", "run1/") == outputs(local_outputs)
    journal_keys = [o["Key"] for o in s3.list_objects_v2(Bucket="restored", Prefix="run1/.restorer-journal/")["Contents"]
                    if o["Key"].endswith(".jsonl")]  # the journal: objects of its own, one per run
    assert len(journal_keys) == 1
    records = s3.get_object(Bucket="restored", Key=journal_keys[0])["Body"].read().decode().splitlines()
    assert sorted(json.loads(r)["name"] for r in records) == sorted(outputs(local_outputs))

    code, report = run_json(capsys, "s3://archive/scans", "-o", "s3://restored/run1", *TASK, "--engine", "ray")
    assert code == 0 and report["summary"] == {"skipped": IMAGES}
    s3.delete_object(Bucket="restored", Key="run1/a/b/exif.jpg")
    code, report = run_json(capsys, "s3://archive/scans", "-o", "s3://restored/run1", *TASK, "--engine", "ray")
    assert code == 0 and report["summary"] == {"done": 1, "skipped": IMAGES - 1}
    assert [f["output"] for f in report["files"] if f["status"] == "done"] == ["s3://restored/run1/a/b/exif.jpg"]
    assert bucket_files(s3, "restored", "run1/") == outputs(local_outputs)


def test_s3_objects_restorer_did_not_write_are_never_replaced(s3, tmp_path, capsys):
    s3.put_object(Bucket="restored", Key="theirs/face.jpg", Body=b"the user's own file")
    code, report = run_json(capsys, "s3://archive/scans/face.jpg", "-o", "s3://restored/theirs", *TASK,
                            "--engine", "ray")
    assert code == 2  # nothing restored: as the local engine says it
    assert report["files"][0]["error"] == ("s3://restored/theirs/face.jpg: exists and was not written by restorer; "
                                           "not overwritten; use --overwrite")
    assert s3.get_object(Bucket="restored", Key="theirs/face.jpg")["Body"].read() == b"the user's own file"


def test_s3_outputs_of_another_plan_are_redone(s3, capsys):
    args = ["s3://archive/scans/face.jpg", "-o", "s3://restored/redo", *TASK, "--engine", "ray"]
    assert run_json(capsys, *args)[0] == 0
    first = bucket_files(s3, "restored", "redo/")["face.jpg"]
    code, report = run_json(capsys, *args, "--quality", "60")
    assert code == 0 and report["summary"] == {"done": 1}
    assert report["files"][0]["notes"] == ["redone: the output was made with another plan (denoise=builtin:denoise)"]
    assert len(bucket_files(s3, "restored", "redo/")["face.jpg"]) < len(first)


def test_s3_outputs_beside_their_inputs_are_not_taken_for_inputs(s3, capsys):
    s3.copy_object(Bucket="restored", Key="beside/face.jpg", CopySource={"Bucket": "archive", "Key": "scans/face.jpg"})
    args = ["s3://restored/beside", "-o", "s3://restored/beside", "--suffix", "_r", *TASK, "--engine", "ray"]
    code, report = run_json(capsys, *args)
    assert code == 0 and [f["output"] for f in report["files"]] == ["s3://restored/beside/face_r.jpg"]
    code, report = run_json(capsys, *args)
    assert code == 0 and report["summary"] == {"skipped": 1}  # face_r.jpg is not an input now


def test_s3_bad_objects_fail_by_url_and_the_others_are_written(s3, tmp_path, capsys):
    s3.put_object(Bucket="archive", Key="mixed/zero.png", Body=b"")
    s3.put_object(Bucket="archive", Key="mixed/text.jpg", Body=b"not a photo\n")
    s3.copy_object(Bucket="archive", Key="mixed/gray.png", CopySource={"Bucket": "archive", "Key": "scans/a/b/gray.png"})
    code, report = run_json(capsys, "s3://archive/mixed", "-o", tmp_path / "out", *TASK, "--engine", "ray")
    assert code == 1
    status = {f["input"]: (f["status"], f["error"]) for f in report["files"]}
    assert status["s3://archive/mixed/gray.png"] == ("done", None)
    for name in ("zero.png", "text.jpg"):
        state, error = status[f"s3://archive/mixed/{name}"]
        assert state == "failed" and error.startswith(f"s3://archive/mixed/{name}: cannot read") and "\n" not in error
    # a local destination: written with a temporary name and a rename, nothing else left there
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".restorer-journal", "gray.png"]


def test_urls_need_the_ray_engine_and_a_reachable_place(s3, tmp_path, capsys):
    capsys.readouterr()
    assert main(["s3://archive/scans", "-o", str(tmp_path / "out"), *TASK]) == 2
    assert capsys.readouterr().err == ("restorer-cli: s3://archive/scans: URLs are read and written by the cluster "
                                       "engine: add --engine ray (pip install 'restorer[cluster]')\n")
    assert main(["s3://archive/nothing-here", "-o", str(tmp_path / "out"), *TASK, "--engine", "ray"]) == 2
    assert capsys.readouterr().err == "restorer-cli: s3://archive/nothing-here: no such file or folder\n"
    assert main(["s3://archive/scans", "-o", "s3://no-such-bucket/out", *TASK, "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("restorer-cli: s3://no-such-bucket/out: cannot write: ") and err.count("\n") == 1


def test_url_batches_are_named_as_folder_batches(s3, photos, tmp_path):
    """The same discovery rules whether the files are at URLs or in folders: mirrored names,
    a folder per input when there are several, --format and --suffix."""
    from restorer.batch import files, remote

    for recursive in (True, False):
        local = files.discover([photos / "a", photos / "a" / "b", photos / "face.jpg"], tmp_path, recursive=recursive,
                               fmt="png", suffix="_r")
        batch = remote.discover(["s3://archive/scans/a", "s3://archive/scans/a/b", "s3://archive/scans/face.jpg"],
                                "s3://restored/named", recursive=recursive, fmt="png", suffix="_r")
        assert [str(i.output.relative_to(tmp_path)) for i in local] == batch.outputs
        assert [i.input.relative_to(photos).as_posix() for i in local] == [
            i.input.removeprefix("s3://archive/scans/") for i in batch.items]


def test_the_pool_is_sized_by_the_clusters_gpus_or_cpus(monkeypatch):
    """--gpus-per-worker F: as many workers as the cluster's GPUs hold at F each (never more
    than fit, which would wait forever, nor than there are images); none fit: one line."""
    from restorer.batch import ray_engine

    resources = {"CPU": 16.0, "GPU": 2.0}
    monkeypatch.setattr(ray, "cluster_resources", lambda: dict(resources))
    notes = []
    assert ray_engine.pool_size(None, 1.0, 100) == 2
    assert ray_engine.pool_size(None, 0.5, 100) == 4
    assert ray_engine.pool_size(None, 0.0, 100) == 16  # CPU workers
    assert ray_engine.pool_size(None, 0.5, 3) == 3
    assert ray_engine.pool_size(8, 1.0, 100, notes.append) == 2
    assert notes == ["--workers 8: the Ray cluster holds 2 (2 GPUs at 1 per worker); using 2"]
    resources["GPU"] = 0.0
    with pytest.raises(ray_engine.ClusterError, match="no room for one worker \\(0 GPUs at 1 per worker\\)"):
        ray_engine.pool_size(None, 1.0, 100)

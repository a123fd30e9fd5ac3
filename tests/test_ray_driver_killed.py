"""restorer-cli --engine ray with its driver killed mid-job (SIGKILL, no clean-up of any kind),
then run again: the driver commits every output atomically (a temporary, then a rename) and
journals it, so what the kill leaves under an output's name is complete and exactly what
--engine local writes; the rerun skips those and restores only the missing ones, and ends with
the same folder as one uninterrupted local run (no temporary, no run marker left over).

A real `restorer-cli` subprocess in a session of its own, starting its own local Ray with 2
workers; the kill takes its whole session (the driver, the Ray services it started and the
workers the raylet started), so no Ray process outlives the test. Built-in operators only."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")

from restorer.batch.journal import JOURNAL_NAME, LOCK_NAME  # noqa: E402
from restorer.cli import main  # noqa: E402
from tests.ray_helpers import kill_session, session_members  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
TASK = ["--task", "denoise", "--device", "cpu", "--recursive", "--quiet"]
RAY = ["--engine", "ray", "--workers", "2"]
IMAGES = 18  # ~0.4 s each with the built-in denoise: several seconds between the first output and the last
KILL_AFTER = 3  # outputs there when the driver is killed: a few skipped on the rerun, most still missing
START_TIMEOUT = 150  # seconds for the first output (Ray's start-up included) on a loaded machine
RUN_TIMEOUT = 300


def make_photos(root: Path) -> list[str]:
    """IMAGES crops (PNG and JPEG, all different) of the larger samples, in two folders."""
    sources = [np.asarray(Image.open(SAMPLES / name).convert("RGB"))
               for name in ("lol_high_778.png", "rain100l_rainy_1.png", "sots_clean_0002.png")]
    (root / "sub").mkdir(parents=True)
    names = []
    for i in range(IMAGES):
        rgb = sources[i % len(sources)]
        y, x = (i * 7) % (rgb.shape[0] - 240), (i * 11) % (rgb.shape[1] - 300)
        name = f"{'sub/' if i % 2 else ''}photo{i:02d}.{'jpg' if i % 5 == 4 else 'png'}"
        Image.fromarray(np.ascontiguousarray(rgb[y:y + 240, x:x + 300])).save(root / name, quality=92)
        names.append(name)
    return sorted(names)


def outputs(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` but the journals and their locks, by relative name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in (JOURNAL_NAME, LOCK_NAME)}


def finished(folder: Path) -> list[str]:
    """The outputs under their final names (restorer's own files are hidden: temporaries, markers)."""
    if not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and not p.name.startswith("."))


def start(args: list, env: dict, cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "restorer.cli", *map(str, args)], env=env, cwd=cwd,
                            start_new_session=True, **kw)


@pytest.mark.slow
def test_driver_killed_mid_job_rerun_restores_only_the_missing(tmp_path, monkeypatch):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the Ray processes of the killed run")
    src, dst, local, home = tmp_path / "photos", tmp_path / "ray", tmp_path / "local", tmp_path / "home"
    home.mkdir()
    names = make_photos(src)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RESTORER_TEST_"))}
    env["RESTORER_HOME"] = str(home)

    # The first run, SIGKILLed (its whole session) as soon as KILL_AFTER outputs are there.
    log = (tmp_path / "first.log").open("wb")
    run = start([src, "-o", dst, *TASK, *RAY], env, tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while len(finished(dst)) < KILL_AFTER and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        caught = run.poll() is None
        kill_session(run.pid)
    finally:
        if run.poll() is None:
            kill_session(run.pid)
        run.wait()
        log.close()
    first_log = (tmp_path / "first.log").read_text(errors="replace")[-3000:]
    present = finished(dst)
    assert caught, f"the first run ended (exit {run.returncode}) before it could be killed mid-job:\n{first_log}"
    assert len(present) >= KILL_AFTER, f"{len(present)} outputs after {START_TIMEOUT} s:\n{first_log}"
    assert len(present) < IMAGES, ("the whole job finished before the kill landed; make the images bigger or "
                                   f"more:\n{first_log}")
    assert not session_members(run.pid)  # no Ray process of the killed run outlives it

    # The reference: one uninterrupted --engine local run.
    monkeypatch.setenv("RESTORER_HOME", str(home))
    assert main([str(src), "-o", str(local), *TASK]) == 0
    expected = outputs(local)
    assert sorted(expected) == names

    # Nothing half-written under an output's name: each one decodes and is local's, byte for byte.
    for name in present:
        assert (dst / name).read_bytes() == expected[name], f"{name}: not what --engine local writes"
        with Image.open(dst / name) as image:
            image.load()
    for name in outputs(dst):
        if name not in present:  # hidden: only restorer's temporaries and the killed run's markers
            base = name.rsplit("/", 1)[-1]
            assert base.endswith(".part") or base.startswith(".restorer-run-"), f"unexpected file {name}"

    # The rerun: the present outputs skipped, exactly the missing ones restored.
    rerun = start([src, "-o", dst, *TASK, *RAY, "--json"], env, tmp_path, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    try:
        out, err = rerun.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        kill_session(rerun.pid)
        rerun.communicate()
        pytest.fail(f"the rerun took more than {RUN_TIMEOUT} s")
    finally:
        kill_session(rerun.pid)  # nothing of its Ray left behind, whatever happened
    err = err.decode(errors="replace")[-3000:]
    assert rerun.returncode == 0, err
    try:
        report = json.loads(out)  # the report is all a run prints on stdout
    except ValueError:
        pytest.fail(f"stdout is not one JSON report:\n{out.decode(errors='replace')[-3000:]}\n{err}")
    status = {Path(f["output"]).relative_to(dst).as_posix(): f["status"] for f in report["files"]}
    assert sorted(status) == names
    assert sorted(n for n, s in status.items() if s == "skipped") == present
    assert sorted(n for n, s in status.items() if s == "done") == sorted(set(names) - set(present))
    assert report["summary"] == {"done": IMAGES - len(present), "skipped": len(present)}, report["summary"]
    assert outputs(dst) == expected  # the same names and bytes; no temporary, no marker left

"""The batch journal (restorer.batch.journal) and the rules around it, through restorer-cli:
a rerun skips only what the same plan made and is intact, redoes the rest, never replaces a
file restorer did not write; killed and concurrent runs leave every output once and intact;
colliding names, bad --suffix/--format and an unwritable destination stop before any image."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from restorer.batch import files, journal

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "kodim05_crop256.png"


@pytest.fixture
def env(tmp_path):
    """An empty model store: every task runs on a built-in operator, nothing is downloaded."""
    return {**os.environ, "RESTORER_HOME": str(tmp_path / "store")}


def cli(env, *args):
    return subprocess.run([sys.executable, "-m", "restorer.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120)


def popen(env, *args):
    return subprocess.Popen([sys.executable, "-m", "restorer.cli", *map(str, args), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def make_images(folder: Path, n: int, size: int = 64) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(SAMPLE).convert("RGB"))[:size, :size]
    paths = []
    for i in range(n):
        paths.append(folder / f"p{i:02d}.png")
        Image.fromarray(np.roll(rgb, i * 5, axis=1)).save(paths[-1])
    return paths


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.suffix == ".part" or p.name.startswith(files.RUN_MARKER)]


def statuses(result) -> dict[str, dict]:
    return {Path(f["output"]).name: f for f in json.loads(result.stdout)["files"]}


def journal_lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / journal.JOURNAL_NAME).read_text().splitlines()]


def test_a_changed_plan_redoes_every_file(tmp_path, env):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    assert cli(env, src, "-o", out, "--task", "denoise").returncode == 0
    r = cli(env, src, "-o", out, "--task", "superres", "--scale", "2", "--json")
    assert r.returncode == 0, r.stderr
    files_ = statuses(r)
    assert {f["status"] for f in files_.values()} == {"done"}
    assert all("another plan" in " ".join(f["notes"]) for f in files_.values())
    assert r.stderr.count("redone: the output was made with another plan") == 3  # one note line per file
    assert [Image.open(p).size for p in images(out)] == [(128, 128)] * 3
    # the same plan again: nothing to do
    again = cli(env, src, "-o", out, "--task", "superres", "--scale", "2", "--json")
    assert json.loads(again.stdout)["summary"] == {"skipped": 3}
    # and an edited input is redone
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(src / "p01.png")
    third = statuses(cli(env, src, "-o", out, "--task", "superres", "--scale", "2", "--json"))
    assert third["p01.png"]["status"] == "done" and "input changed" in " ".join(third["p01.png"]["notes"])
    assert third["p00.png"]["status"] == third["p02.png"]["status"] == "skipped"


def test_a_truncated_output_is_redone(tmp_path, env):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 3)
    assert cli(env, src, "-o", out, "--task", "denoise").returncode == 0
    victim = out / "p01.png"
    good = victim.read_bytes()
    victim.write_bytes(good[: len(good) // 2])
    r = cli(env, src, "-o", out, "--task", "denoise", "--json")
    assert r.returncode == 0, r.stderr
    files_ = statuses(r)
    assert files_["p01.png"]["status"] == "done" and "damaged" in " ".join(files_["p01.png"]["notes"])
    assert files_["p00.png"]["status"] == files_["p02.png"]["status"] == "skipped"
    assert victim.read_bytes() == good  # the same plan on the same input: the same bytes
    victim.unlink()  # a missing output is redone too
    assert statuses(cli(env, src, "-o", out, "--task", "denoise", "--json"))["p01.png"]["status"] == "done"


def test_a_foreign_file_is_refused_and_left_byte_identical(tmp_path, env):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 2)
    out.mkdir()
    foreign = out / "p00.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(foreign)
    before = foreign.read_bytes()
    r = cli(env, src, "-o", out, "--task", "denoise", "--json")
    assert r.returncode == 1
    files_ = statuses(r)
    assert files_["p00.png"]["status"] == "failed" and files_["p01.png"]["status"] == "done"
    message = f"{foreign}: exists and was not written by restorer; not overwritten; use --overwrite"
    assert files_["p00.png"]["error"] == message
    assert foreign.read_bytes() == before
    plain = cli(env, src, "-o", out, "--task", "denoise")
    assert [line for line in plain.stderr.splitlines() if line.startswith("restorer-cli: ") and message in line] == [
        f"restorer-cli: {message}"]  # one line as it happens (the summary at the end names it again)
    assert foreign.read_bytes() == before

    # an output restorer wrote and someone edited since is not replaced either
    edited = out / "p01.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(edited)
    edited_bytes = edited.read_bytes()
    files_ = statuses(cli(env, src, "-o", out, "--task", "denoise", "--json"))
    assert files_["p01.png"]["status"] == "failed" and "changed since restorer wrote it" in files_["p01.png"]["error"]
    assert edited.read_bytes() == edited_bytes

    # --overwrite replaces both, and the journal then knows them
    r = cli(env, src, "-o", out, "--task", "denoise", "--overwrite", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["summary"] == {"done": 2}
    assert Image.open(foreign).size == (64, 64)
    assert json.loads(cli(env, src, "-o", out, "--task", "denoise", "--json").stdout)["summary"] == {"skipped": 2}


def test_a_killed_batch_reruns_to_every_output_once_and_intact(tmp_path, env):
    src, out = tmp_path / "in", tmp_path / "out"
    inputs = make_images(src, 10, size=128)
    proc = popen(env, src, "-o", out, "--task", "denoise")
    deadline = time.time() + 60
    while time.time() < deadline and not images(out) and proc.poll() is None:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = images(out)
    assert 1 <= len(written) < len(inputs), "the run should have been killed midway"
    r = cli(env, src, "-o", out, "--task", "denoise", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)["summary"]
    assert summary.get("skipped", 0) >= len(written) and summary.get("skipped", 0) + summary.get("done", 0) == 10
    assert [p.name for p in images(out)] == [p.name for p in inputs]  # each output exactly once
    for p in images(out):
        with Image.open(p) as im:
            im.load()
            assert im.size == (128, 128)
    assert not leftovers(out)
    assert json.loads(cli(env, src, "-o", out, "--task", "denoise", "--json").stdout)["summary"] == {"skipped": 10}


def test_two_concurrent_runs_into_one_folder_both_finish(tmp_path, env):
    src, out, ref = tmp_path / "in", tmp_path / "out", tmp_path / "ref"
    make_images(src, 8, size=96)
    assert cli(env, src, "-o", ref, "--task", "denoise").returncode == 0
    runs = [popen(env, src, "-o", out, "--task", "denoise") for _ in range(2)]
    results = [p.communicate(timeout=120) for p in runs]
    assert [p.returncode for p in runs] == [0, 0], results
    assert [p.name for p in images(out)] == [p.name for p in images(ref)]
    for mine, theirs in zip(images(out), images(ref)):
        assert np.array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(theirs)))
    assert not leftovers(out)
    lines = journal_lines(out)  # every line whole: the two writers never tore one
    assert {r["name"] for r in lines if r["status"] == "done"} == {p.name for p in images(out)}
    assert json.loads(cli(env, src, "-o", out, "--task", "denoise", "--json").stdout)["summary"] == {"skipped": 8}


def test_colliding_output_names_are_refused_before_any_image(tmp_path, env):
    src, out = tmp_path / "in", tmp_path / "out"
    make_images(src, 1)
    Image.open(src / "p00.png").convert("RGB").save(src / "p00.jpg")
    r = cli(env, src, "-o", out, "--task", "denoise", "--format", "png")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"restorer-cli: '{src / 'p00.jpg'}' and '{src / 'p00.png'}' would both be written to '{out / 'p00.png'}'; "
        "rename one of them"]
    assert not out.exists() or not images(out)
    # the same name from two folders
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    make_images(tmp_path / "a", 1), make_images(tmp_path / "b", 1)
    r = cli(env, tmp_path / "a" / "p00.png", tmp_path / "b" / "p00.png", "-o", out, "--task", "denoise")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "would both be written" in r.stderr
    assert not out.exists() or not images(out)


@pytest.mark.parametrize("option, value, words", [
    ("--suffix", "../up", "'..'"), ("--suffix", "a/b", "'/'"), ("--format", "gif", "choose one of same, png"),
])
def test_suffix_and_format_are_checked_before_anything(tmp_path, capsys, option, value, words):
    from restorer.cli import main

    src = make_images(tmp_path / "in", 1)[0]
    assert main([str(src), "-o", str(tmp_path / "out"), "--task", "denoise", option, value]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"restorer-cli: {option} '{value}': ") and words in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "up").exists()


def test_an_unwritable_destination_stops_before_the_first_image(tmp_path, env):
    src = make_images(tmp_path / "in", 2)[0].parent
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder should be")
    r = cli(env, src, "-o", blocker / "out", "--task", "denoise")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [f"restorer-cli: {blocker / 'out'}: cannot write: Not a directory"]


def test_a_dropped_alpha_channel_is_said(tmp_path, env):
    src = tmp_path / "in"
    src.mkdir()
    rgba = np.dstack([np.asarray(Image.open(SAMPLE).convert("RGB"))[:48, :48], np.full((48, 48), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(src / "glass.png")
    r = cli(env, src, "-o", tmp_path / "out", "--task", "denoise", "--format", "jpg", "--json")
    assert r.returncode == 0, r.stderr
    assert "alpha channel dropped: jpg has no transparency" in statuses(r)["glass.jpg"]["notes"]
    notes = [line for line in r.stderr.splitlines() if "alpha" in line]
    out = tmp_path / "out" / "glass.jpg"
    assert notes == [f"restorer-cli: note: {out}: alpha channel dropped: jpg has no transparency"]


# ---------------------------------------------------------------- the parts, directly


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_start_up_cleanup_spares_a_live_run_and_removes_a_dead_ones(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    host = files._host()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = folder / f"{files.RUN_MARKER}{sleeper.pid}-0badcafe-{host}"
        live.touch()
        busy = folder / ".photo.png.abcd1234.part"  # the live run's image being written
        busy.write_bytes(b"half")
        old = folder / ".restorer-zz9plzq2.part"  # a temporary nobody touched for a day
        old.write_bytes(b"old")
        os.utime(old, (time.time() - 86400,) * 2)
        users = folder / ".notes.txt.abcd1234.part"  # not restorer's
        users.write_bytes(b"mine")
        files.clean_stale_temporaries(folder)
        assert busy.exists() and live.exists() and not old.exists() and users.exists()
        # the run ends (killed): its marker and temporaries go at the next start
        sleeper.kill()
        sleeper.wait()
        mine = files.claim_folder(folder)
        assert not busy.exists() and not live.exists() and users.exists() and mine.exists()
        files.release_folder(mine)
        assert not mine.exists()
        # a marker of a pid that does not exist any more is stale at once
        gone = folder / f"{files.RUN_MARKER}{dead_pid()}-0badcafe-{host}"
        gone.touch()
        busy.write_bytes(b"half")
        files.clean_stale_temporaries(folder)
        assert not gone.exists() and not busy.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def record(name: str, sha: str) -> dict:
    return {"name": name, "status": "done", "input": {}, "plan": "p", "output": {"size": 1, "sha256": sha}}


def test_a_torn_journal_line_is_skipped_and_does_not_swallow_the_next(tmp_path):
    book = journal.Journal(tmp_path)
    book.append(record("a.png", "1"))
    with open(book.path, "a") as f:
        f.write('{"name": "b.png", "status": "wri')  # a writer killed mid-line
    book.append(record("c.png", "3"))
    assert sorted(book.records()) == ["a.png", "c.png"]
    for sha in "456789":
        book.append(record("a.png", sha))
    book.compact()
    lines = journal_lines(tmp_path)
    assert [r["output"]["sha256"] for r in lines if r["name"] == "a.png"] == list("6789")
    assert [r["name"] for r in lines].count("c.png") == 1 and "b.png" not in book.records()


def test_the_plan_fingerprint_follows_what_changes_the_output(tmp_path, monkeypatch):
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "store"))
    from restorer.batch.loop import Output
    from restorer.plan.request import Options, plan_request

    def fp(task, output=Output(), **options):
        return journal.plan_fingerprint(plan_request(Options(**options), task=task), output)

    assert fp("denoise") == fp("denoise", device="cpu", tile=128)  # where it runs does not matter
    assert fp("denoise") != fp("denoise", strength=0.3)
    assert fp("superres", scale=2) != fp("superres", scale=3)
    assert fp("denoise") != fp("denoise", Output(quality=80))
    assert fp("denoise") == fp("denoise", Output(fmt="png"))  # the format is in the output's name


def test_outputs_written_beside_their_inputs_are_not_taken_for_inputs_again(tmp_path, env):
    folder = tmp_path / "photos"
    make_images(folder, 2)
    for _ in range(2):
        run = cli(env, folder, "-o", folder, "--task", "denoise", "--suffix", "_r", "--json", "--quiet")
        assert run.returncode == 0, run.stderr
    assert [p.name for p in images(folder)] == ["p00.png", "p00_r.png", "p01.png", "p01_r.png"]
    assert {f["status"] for f in json.loads(run.stdout)["files"]} == {"skipped"}
    # a file restorer did not write keeps being an input, whatever its name
    Image.open(folder / "p00.png").save(folder / "mine_r.png")
    names = [item.input.name for item in files.discover([folder], folder, recursive=True, fmt="same", suffix="_r")]
    assert names == ["mine_r.png", "p00.png", "p01.png"]

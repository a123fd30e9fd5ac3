"""The main window's queue panel: files and folders restored through the batch loop, with
its naming, journal and cancel (offscreen Qt, pytest-qt)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PIL import Image as PILImage  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDragEnterEvent, QDropEvent  # noqa: E402
from restorer_ui.queue_panel import QueuePanel  # noqa: E402

from restorer.archs.requirements import Requirements  # noqa: E402
from restorer.batch import restore as restore_module  # noqa: E402
from restorer.batch.journal import JOURNAL_NAME  # noqa: E402
from restorer.batch.loop import Output  # noqa: E402
from restorer.plan import request  # noqa: E402
from restorer.run.runner import RunnerInfo  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.fixture(autouse=True)
def store_home(tmp_path, monkeypatch):
    """An empty model store: the denoise task resolves to the built-in operator."""
    monkeypatch.setenv("RESTORER_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RESTORER_MIRROR", raising=False)


@pytest.fixture
def panel(qtbot):
    p = QueuePanel()
    qtbot.addWidget(p)
    p.resize(500, 500)
    p.show()
    qtbot.waitExposed(p)
    return p


def denoise_plan(tile: int | None = None) -> request.Plan:
    plan = request.plan_request(request.Options(tile=tile), task="denoise")
    assert [s.model for s in plan.steps] == ["builtin:denoise"]
    return plan


def photo(path: Path, seed: int, size: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    crop = np.asarray(PILImage.open(SAMPLES / "kodim05_crop256.png"))[:size, :size]
    PILImage.fromarray(np.roll(crop, 7 * seed, axis=1)).save(path)
    return path


def leftovers(folder: Path) -> list[str]:
    """Temporaries and run markers a run must not leave behind."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".part") or p.name.startswith(".restorer-run-"))


def run(qtbot, panel, plan, folder, suffix="_r", timeout=30000):
    with qtbot.waitSignal(panel.started, timeout=1000):
        with qtbot.waitSignal(panel.finished, timeout=timeout) as done:
            assert panel.start(plan, Output(), folder, suffix)
            assert panel.is_running() and not panel.clear_button.isEnabled()
    assert not panel.is_running() and panel.clear_button.isEnabled()
    return done.args[0]


def drop(panel, paths) -> QDropEvent:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    panel.dragEnterEvent(enter)
    assert enter.isAccepted()
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                       Qt.KeyboardModifier.NoModifier)
    panel.dropEvent(event)
    return event


def test_five_files_one_bad_then_a_rerun_skips_what_was_done(qtbot, panel, tmp_path):
    source = tmp_path / "in"
    good = [photo(source / f"photo{i}.png", i) for i in range(4)]
    bad = source / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    target = tmp_path / "out"
    assert panel.add_paths([good[0], good[1], bad, good[2], good[3]]) == 5
    assert panel.add_paths([good[1]]) == 0  # already queued
    assert [s[:2] for s in panel.states()] == [(p.name, "waiting") for p in (good[0], good[1], bad, good[2], good[3])]

    outcome = run(qtbot, panel, denoise_plan(), target)
    states = panel.states()
    assert [s[1] for s in states] == ["done", "done", "failed", "done", "done"], states
    name, _, reason = states[2]
    assert name == "bad.png" and "bad.png" in reason and "cannot read" in reason and "\n" not in reason
    assert states[0][2] == "photo0_r.png"
    assert outcome.counts == {"done": 4, "failed": 1} and not outcome.cancelled
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == [
        "photo0_r.png", "photo1_r.png", "photo2_r.png", "photo3_r.png"]
    assert (target / JOURNAL_NAME).is_file() and leftovers(target) == [] and leftovers(source) == []
    assert "bad.png" in panel.table.item(2, 2).text() and panel.table.item(2, 2).text().startswith("failed")
    # Thumbnails for the rows, none for the file that is not an image.
    qtbot.waitUntil(lambda: not panel._thumb_timer.isActive(), timeout=5000)
    assert [panel.has_thumbnail(i) for i in range(5)] == [True, True, False, True, True]

    # Again, the same plan: the journal says the four were made this way from these inputs.
    written = {p.name: p.stat().st_mtime_ns for p in target.glob("*_r.png")}
    outcome = run(qtbot, panel, denoise_plan(), target)
    assert [s[1] for s in panel.states()] == ["skipped", "skipped", "failed", "skipped", "skipped"]
    assert outcome.counts == {"skipped": 4, "failed": 1}
    assert {p.name: p.stat().st_mtime_ns for p in target.glob("*_r.png")} == written

    # Another plan (a stronger denoise): redone, not skipped.
    stronger = request.plan_request(request.Options(strength=1.0), task="denoise")
    run(qtbot, panel, stronger, target)
    assert [s[1] for s in panel.states()] == ["done", "done", "failed", "done", "done"]


def test_dropping_a_folder_queues_its_images_and_mirrors_its_folders(qtbot, panel, tmp_path):
    source = tmp_path / "drop"
    photo(source / "a.png", 1)
    photo(source / "sub" / "b.png", 2)
    (source / "notes.txt").write_text("not an image")
    (source / ".restorer-x.png.part").write_bytes(b"a temporary")
    single = photo(tmp_path / "elsewhere" / "c.png", 3)
    event = drop(panel, [source, single])
    assert event.isAccepted()
    assert sorted(s[0] for s in panel.states()) == ["a.png", "b.png", "c.png"]
    drop(panel, [source])  # again: nothing queued twice
    assert len(panel.states()) == 3 and panel.table.rowCount() == 3
    assert panel.summary.text() == "3 files: 3 waiting"

    target = tmp_path / "out"
    run(qtbot, panel, denoise_plan(), target, suffix="_clean")
    assert {s[1] for s in panel.states()} == {"done"}
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.png")) == [
        "a_clean.png", "c_clean.png", "sub/b_clean.png"]
    assert panel.summary.text() == "3 files: 3 done"


def test_without_an_output_folder_outputs_go_beside_the_inputs(qtbot, panel, tmp_path):
    a = photo(tmp_path / "one" / "a.png", 1)
    b = photo(tmp_path / "two" / "b.png", 2)
    panel.add_paths([a, b])
    with pytest.raises(ValueError, match="suffix"):
        panel.start(denoise_plan(), Output(), None, "/../x")
    assert not panel.is_running()
    run(qtbot, panel, denoise_plan(), None)
    assert (tmp_path / "one" / "a_r.png").is_file() and (tmp_path / "two" / "b_r.png").is_file()
    # An empty suffix would replace the input: the batch's rule refuses it, named.
    run(qtbot, panel, denoise_plan(), None, suffix="")
    assert [s[1] for s in panel.states()] == ["failed", "failed"]
    assert "a.png" in panel.states()[0][2]
    assert a.read_bytes() == (tmp_path / "one" / "a.png").read_bytes()
    assert panel.clear() and panel.states() == []


class SlowRunner:
    """An identity runner that takes its time on every tile."""

    needs = Requirements(overlap=0, preferred_tile=64)

    def __init__(self):
        self.info = RunnerInfo("builtin:denoise", "builtin", "numpy")
        self.calls = 0

    def __call__(self, batch, **extra):
        self.calls += 1
        time.sleep(0.05)
        return batch.copy()

    def close(self):
        pass


def test_cancel_between_tiles_leaves_no_partial_file(qtbot, panel, tmp_path, monkeypatch):
    runner = SlowRunner()
    monkeypatch.setattr(restore_module, "step_runner", lambda step, ctx: runner)
    paths = [photo(tmp_path / "in" / f"big{i}.png", i, size=256) for i in range(3)]  # 16 tiles of 64 each
    target = tmp_path / "out"
    panel.add_paths(paths)
    ticks = []
    timer = QTimer(interval=10)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    outcomes = []
    panel.finished.connect(outcomes.append)
    assert panel.start(denoise_plan(tile=64), Output(), target, "_r")

    def percent() -> int:
        name, state, detail = panel.states()[0]
        return int(detail.rstrip("%")) if state == "running" else -1

    qtbot.waitUntil(lambda: percent() >= 20, timeout=10000)
    assert panel.table.item(0, 2).text().startswith("running: ")
    calls_at_cancel = runner.calls
    panel.cancel()
    qtbot.waitUntil(lambda: bool(outcomes), timeout=5000)
    timer.stop()
    assert outcomes[0].cancelled and outcomes[0].counts == {"cancelled": 3}
    assert [s[1] for s in panel.states()] == ["cancelled"] * 3
    assert runner.calls <= calls_at_cancel + 2 and runner.calls < 16  # stopped after the tile in flight
    assert not list(target.glob("*.png")) and leftovers(target) == []
    # The event loop ran all along: no gap of half a second.
    assert len(ticks) > 20 and max(np.diff(ticks)) < 0.5
    assert not panel.is_running() and panel.clear_button.isEnabled()


def test_files_added_during_a_run_are_run_after_it(qtbot, panel, tmp_path, monkeypatch):
    runner = SlowRunner()
    monkeypatch.setattr(restore_module, "step_runner", lambda step, ctx: runner)
    first = [photo(tmp_path / "in" / f"p{i}.png", i, size=128) for i in range(2)]  # 4 tiles each
    late = photo(tmp_path / "late" / "q.png", 5, size=128)
    target = tmp_path / "out"
    panel.add_paths(first)
    outcomes = []
    panel.finished.connect(outcomes.append)
    assert panel.start(denoise_plan(tile=64), Output(), target, "_r")
    qtbot.waitUntil(lambda: panel.states()[0][1] == "running", timeout=5000)
    assert panel.add_paths([late]) == 1
    assert not panel.start(denoise_plan(), Output(), target)  # one run at a time
    assert not panel.clear() and len(panel.states()) == 3
    qtbot.waitUntil(lambda: bool(outcomes), timeout=20000)
    assert len(outcomes) == 1 and outcomes[0].counts == {"done": 3}
    assert [s[1] for s in panel.states()] == ["done"] * 3
    assert sorted(p.name for p in target.glob("*.png")) == ["p0_r.png", "p1_r.png", "q_r.png"]

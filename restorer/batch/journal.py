"""The batch journal: what restorer wrote into an output folder, so a rerun knows which files
it may skip, which it must redo and which are not its own.

One journal per output folder, `.restorer-journal.json`, in JSON lines: one record per write,
{"name", "status", "input": {path, size, mtime_ns, sha256}, "plan", "steps",
"output": {size, sha256}, "time"}. A "writing" record is appended before the output is renamed
into place and a "done" record after, so every output restorer ever put there has a record
carrying its hash, even when the run was killed between the two. Records are only appended
(one write each, under a lock file), a torn last line is ignored, and a run starts by
rewriting the journal atomically without the records it no longer needs (if any).

Deciding, for an output that exists: it is restorer's if its size and sha256 match a record;
it is skipped when that record's plan and input are today's; else it is redone. A file
restorer has no record of is never overwritten without --overwrite; nor is one restorer wrote
and someone changed since (it still decodes); a damaged one (it no longer decodes) is redone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from restorer.io import imaging
from restorer.io.atomic import atomic_path

JOURNAL_NAME = ".restorer-journal.json"
LOCK_NAME = ".restorer-journal.lock"
KEEP_PER_NAME = 4  # distinct outputs remembered per file name (concurrent runs may interleave)


def plan_fingerprint(plan, output) -> str:
    """What decides an output's content: every step's task, model, backend, options and
    prompt (and the step chosen per scale for a target size) and the encoding quality. The
    format is the output's own extension; device and tile size do not change what is restored."""

    def step_recipe(step) -> dict:
        return {"task": step.task, "model": step.model, "backend": str(step.backend), "options": step.options,
                "prompt": step.prompt, "by_scale": {str(k): step_recipe(v) for k, v in sorted(step.by_scale.items())}}

    recipe = {"steps": [step_recipe(s) for s in plan.steps], "quality": output.quality}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plan_summary(plan) -> str:
    """The plan in a few words, for people reading the journal."""
    return ", ".join(f"{s.task}={s.model}" for s in plan.steps)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def input_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(path)}


def output_fingerprint(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


class Journal:
    """The journal of one output folder."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / JOURNAL_NAME

    def outputs(self) -> set[str]:
        """The names of the files restorer wrote into this folder."""
        return set(self.records())

    def records(self) -> dict[str, list[dict]]:
        """Every readable record, by output name, oldest first. Read without the lock: appends
        are whole lines and a rewrite is an atomic rename, so at worst the last line is torn."""
        out: dict[str, list[dict]] = {}
        for record in self._read():
            out.setdefault(record["name"], []).append(record)
        return out

    def append(self, record: dict) -> None:
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._locked():
            with open(self.path, "ab") as f:
                if f.tell() and not _ends_with_newline(self.path):
                    line = "\n" + line  # a killed writer's torn line must not swallow this one
                f.write(line.encode())
                f.flush()
                os.fsync(f.fileno())

    def compact(self) -> None:
        """Rewrite the journal, atomically, with the last record of each distinct output per
        name (at most KEEP_PER_NAME); torn lines are dropped."""
        if not self.path.exists():
            return
        with self._locked():
            torn: list[str] = []
            records = self._read(torn)
            kept: dict[str, dict[str, dict]] = {}
            for record in records:
                per_name = kept.setdefault(record["name"], {})
                per_name.pop(record["output"]["sha256"], None)
                per_name[record["output"]["sha256"]] = record  # re-inserted: the latest comes last
            lines = [r for per_name in kept.values() for r in list(per_name.values())[-KEEP_PER_NAME:]]
            if len(lines) == len(records) and not torn:
                return
            with atomic_path(self.path) as tmp:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in lines)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, imaging.FILE_MODE)  # as when it was first appended to, not mkstemp's 0600

    def _read(self, torn: list | None = None) -> list[dict]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if _well_formed(record):
                out.append(record)
            elif line.strip() and torn is not None:
                torn.append(line)
        return out

    @contextlib.contextmanager
    def _locked(self):
        """An exclusive lock on LOCK_NAME beside the journal, between processes; the system
        releases it when a holder dies, so a killed run never blocks the next one."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK_NAME, "a+b") as f:
            if os.name == "nt":
                import msvcrt

                while True:
                    try:
                        f.seek(0)
                        msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)  # retries for 10 s, then raises
                        break
                    except OSError:
                        continue
                try:
                    yield
                finally:
                    f.seek(0)
                    msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _well_formed(record) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("name"), str) and isinstance(record.get("input"), dict)
            and isinstance(record.get("output"), dict) and isinstance(record["output"].get("size"), int)
            and isinstance(record["output"].get("sha256"), str))


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def record(name: str, status: str, input_fp: dict, plan_fp: str, steps: str, output_fp: dict) -> dict:
    return {"name": name, "status": status, "input": input_fp, "plan": plan_fp, "steps": steps,
            "output": output_fp, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def decide(items: list, plan_fp: str, *, overwrite: bool) -> None:
    """Settle, before anything runs, each pending item whose output exists: "skipped" (this
    plan made it from this input and it is intact), "failed" (not restorer's, or changed since:
    never overwritten without `overwrite`), or left pending to be redone with a note saying
    why. Reads only."""
    if overwrite:
        return
    # Hash the outputs first, then read the journals: a record is appended before its output
    # is renamed into place, so whatever restorer wrote that is hashed here has its record read.
    present = {}
    for i, item in enumerate(items):
        if item.status == "pending" and item.output.exists():
            try:
                present[i] = _file_fingerprint(item.output)
            except OSError as e:  # a folder, or a file restorer may not read: not restorer's to replace
                item.status = "failed"
                item.error = f"{item.output}: exists and cannot be read ({e.strerror or e}); not overwritten"
    journals: dict[Path, dict[str, list[dict]]] = {}
    for i, fp in present.items():
        item = items[i]
        folder = item.output.parent
        if folder not in journals:
            journals[folder] = Journal(folder).records()
        apply_verdict(item, _verdict(item, fp, journals[folder].get(item.output.name, []), plan_fp))


def apply_verdict(item, verdict: str) -> None:
    """A verdict on an existing output ("skip", "refuse: <why>" or why it is redone) onto its item."""
    if verdict == "skip":
        item.status = "skipped"
    elif verdict.startswith("refuse: "):
        item.status = "failed"
        item.error = f"{item.output}: {verdict[len('refuse: '):]}; not overwritten; use --overwrite"
    else:
        item.notes.append(f"redone: {verdict}")


def _file_fingerprint(path: Path) -> dict:
    return {"size": path.stat().st_size, "sha256": sha256_file(path)}


def _verdict(item, fp: dict, records: list[dict], plan_fp: str) -> str:
    """"skip", "refuse: <why>", or why the output is redone."""
    if not records:
        return "refuse: exists and was not written by restorer"
    mine = next((r for r in reversed(records)
                 if r["output"]["size"] == fp["size"] and r["output"]["sha256"] == fp["sha256"]), None)
    if mine is None:
        if _decodes(item.output):
            return "refuse: was changed since restorer wrote it"
        return "the output was damaged (it no longer decodes)"
    if mine.get("plan") != plan_fp:
        return f"the output was made with another plan ({mine.get('steps', '?')})"
    if not _same_input(mine["input"], item.input):
        return "the input changed since"
    return "skip"


def _same_input(fp: dict, path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_size != fp.get("size"):
        return False
    return st.st_mtime_ns == fp.get("mtime_ns") or sha256_file(path) == fp.get("sha256")


def _decodes(path: Path) -> bool:
    try:
        imaging.load(path)
    except imaging.ImageReadError:
        return False
    except Exception:  # noqa: BLE001 - cannot tell (too large, out of memory): treat as intact, never overwrite
        return True
    return True

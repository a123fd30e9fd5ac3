"""Files and folders: discovery, output naming, collisions, run markers, temporaries.

Rules that protect the user's files:
- an output never replaces an input, and two inputs never share an output (refused, named);
- what may be skipped, redone or must be left alone is decided by the output folder's
  journal (restorer.batch.journal);
- outputs are written atomically (a temporary file, then a rename); a running batch marks
  each output folder with `.restorer-run-<pid>-<token>-<host>`, so a run that starts there
  removes the temporaries of killed runs but never those of a run still writing.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from restorer.batch.journal import Journal
from restorer.io import imaging

IMAGE_SUFFIXES = set(imaging.EXTENSIONS)
OUTPUT_FORMATS = ("same", "png", "jpg", "webp", "tiff")
TEMP_SUFFIX = ".part"  # how restorer.io.atomic and restorer.io.imaging both end their temporaries
RUN_MARKER = ".restorer-run-"
STALE_AFTER = 6 * 3600  # seconds: a marker not touched (one file takes less) or a temporary this old is dead


@dataclass
class Item:
    input: Path
    output: Path
    status: str = "pending"  # pending, done, skipped, failed, would-restore, would-skip
    error: str = ""
    steps: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "input": str(self.input), "output": str(self.output), "status": self.status,
            "error": self.error or None, "steps": self.steps, "seconds": round(self.seconds, 3),
            "notes": self.notes,
        }


def discover(inputs: list[Path], outdir: Path, *, recursive: bool, fmt: str, suffix: str,
             mask_local: bool = False) -> list[Item]:
    """Input files paired with their outputs; folders are mirrored under `outdir`.
    `mask_local`: the plan changes only pixels inside a mask (see output_path)."""
    items: list[Item] = []
    folders = [p for p in inputs if p.is_dir()]
    outdir_resolved = outdir.resolve()
    written: dict[Path, set[str]] = {}  # folder -> what its journal says restorer wrote there
    for path in inputs:
        if path.is_dir():
            base = outdir / path.resolve().name if len(folders) > 1 else outdir
            pattern = path.rglob("*") if recursive else path.glob("*")
            for f in sorted(pattern):
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith(imaging.TEMP_PREFIX):
                    continue
                if _is_within(f.resolve(), outdir_resolved) and outdir_resolved != path.resolve():
                    continue  # our own outputs from an earlier run inside the input tree
                if f.name in written.setdefault(f.parent, Journal(f.parent).outputs()):
                    continue  # our own outputs, written beside their inputs
                rel = f.relative_to(path)
                items.append(Item(f, output_path(base / rel, fmt, suffix, mask_local)))
        else:
            items.append(Item(path, output_path(outdir / path.name, fmt, suffix, mask_local)))
    if mask_local:
        for item in items:
            item.notes.extend(filter(None, [mask_local_note(item.input, item.output, fmt)]))
    return items


# Formats imaging.encode writes lossily (WebP is lossless only at --quality 100).
LOSSY_FORMATS = {"jpg", "webp"}


def output_path(target: Path, fmt: str, suffix: str, mask_local: bool = False) -> Path:
    """The output for input `target`. With --format same, a mask-local plan (scene-text
    removal: every pixel outside the mask is kept bit for bit) writes a lossy input as PNG,
    since re-encoding it would change pixels everywhere; imaging.save keeps 16-bit, alpha,
    ICC and EXIF in PNG."""
    ext = target.suffix if fmt == "same" else imaging.FORMATS[fmt][1]
    if fmt == "same" and target.suffix.lower() not in IMAGE_SUFFIXES:
        ext = ".png"
    if fmt == "same" and mask_local and imaging.format_of(target) in LOSSY_FORMATS:
        ext = ".png"
    return target.with_name(target.stem + suffix + ext)


def mask_local_note(source: Path, output: Path, fmt: str) -> str | None:
    """What the output format does to a mask-local plan's promise, for the report."""
    written, given = imaging.format_of(output), imaging.format_of(source)
    if written in LOSSY_FORMATS:
        return (f"written as {imaging.FORMATS[written][0]}: pixels outside the mask are identical only before "
                f"encoding ({written} is lossy; --format png keeps them)")
    if fmt == "same" and given in LOSSY_FORMATS and written == "png":
        return f"written as PNG so that pixels outside the mask stay identical; --format {given} to re-encode"
    return None


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def check_suffix(suffix: str) -> str | None:
    """Why `suffix` cannot be added to output names (it would lead out of the output folder), or None."""
    if any(c in suffix for c in ("/", "\\", "\0")) or ".." in suffix:
        return "must not contain '/', '\\', '..' or a NUL character"
    return None


def check_format(fmt: str) -> str | None:
    if fmt not in OUTPUT_FORMATS:
        return f"choose one of {', '.join(OUTPUT_FORMATS)}"
    return None


def check_writable(folder: Path) -> str | None:
    """Make `folder` if needed and try a file in it: one line saying why not, or None."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=imaging.TEMP_PREFIX):
            pass
    except OSError as e:
        return f"{folder}: cannot write: {e.strerror or e}"
    return None


def collisions(items: list[Item]) -> list[tuple[str, list[Item]]]:
    """Outputs that several inputs would be written to (a.png and a.jpg with --format png, the
    same name from two folders): one line naming them, and the items. Compared without case,
    as on Windows and macOS disks; an output named by URL (restorer.batch.remote) as it is."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        key = item.output if isinstance(item.output, str) else str(item.output.resolve())
        groups.setdefault(key.casefold(), []).append(item)
    out = []
    for group in groups.values():
        if len(group) > 1:
            names = [f"'{i.input}'" for i in group]
            both = "both" if len(group) == 2 else "all"
            out.append((f"{', '.join(names[:-1])} and {names[-1]} would {both} be written to "
                        f"'{group[0].output}'; rename one of them", group))
    return out


def prepare(items: list[Item]) -> None:
    """Refuse outputs that would replace an input or that several inputs share (all named)."""
    refuse_overwriting_inputs(items)
    for problem, group in collisions(items):
        for item in group:
            if item.status == "pending":
                item.status, item.error = "failed", problem


# ---------------------------------------------------------------- run markers, temporaries


def claim_folder(folder: Path) -> Path:
    """Mark `folder` as written to by this run (made if missing), then remove the temporaries
    and markers dead runs left there. Returns the marker: touch it after each file, remove it
    at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"{RUN_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}-{_host()}"
    marker.touch()
    clean_stale_temporaries(folder, own=marker)
    return marker


def release_folder(marker: Path) -> None:
    try:
        marker.unlink()
    except OSError:
        pass


def clean_stale_temporaries(folder: Path, own: Path | None = None) -> None:
    """Remove restorer's temporaries in `folder` unless another live run may be writing them.

    Temporaries are listed before markers: a run marks a folder before its first temporary
    there, so a temporary seen here belongs to a run whose marker is seen next. With another
    live run in the folder only temporaries older than STALE_AFTER go (a file is written in
    seconds); dead runs' markers go too."""
    temporaries = [p for p in _entries(folder) if _is_temporary(p.name)]
    others_alive = False
    for marker in _entries(folder):
        if not marker.name.startswith(RUN_MARKER) or marker == own:
            continue
        if _marker_alive(marker):
            others_alive = True
        else:
            _unlink(marker)
    now = time.time()
    for tmp in temporaries:
        try:
            old = now - tmp.stat().st_mtime > STALE_AFTER
        except OSError:
            continue  # gone: its run renamed or removed it
        if old or not others_alive:
            _unlink(tmp)


def _entries(folder: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(folder) if e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _is_temporary(name: str) -> bool:
    """restorer.io.imaging's `.restorer-XXXX.part` or restorer.io.atomic's `.<target>.XXXX.part`
    for a target restorer writes (an image or the journal), never any other file."""
    if name.startswith(imaging.TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
        return True
    m = re.fullmatch(r"\.(.+)\.[a-z0-9_]{8}" + re.escape(TEMP_SUFFIX), name)  # tempfile.mkstemp's 8 characters
    if m is None:
        return False
    target = m.group(1)
    return target.startswith(".restorer-journal") or Path(target).suffix.lower() in IMAGE_SUFFIXES


def _marker_alive(marker: Path) -> bool:
    m = re.fullmatch(re.escape(RUN_MARKER) + r"(\d+)-[0-9a-f]+-(.*)", marker.name)
    try:
        fresh = time.time() - marker.stat().st_mtime < STALE_AFTER
    except OSError:
        return False
    if m is None or not fresh:
        return False
    if m.group(2) != _host():
        return True  # another machine's run (a shared folder): its pid says nothing here
    return _pid_alive(int(m.group(1)))


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def refuse_overwriting_inputs(items: list[Item]) -> None:
    inputs = {os.path.normcase(str(i.input.resolve())) for i in items}
    for item in items:
        if os.path.normcase(str(item.output.resolve())) in inputs:
            item.status = "failed"
            item.error = (f"the output would overwrite an input ('{item.output}'); "
                          "choose another -o folder or a --suffix")

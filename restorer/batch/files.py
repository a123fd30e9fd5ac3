"""Files and folders: discovery, output naming, skip/overwrite, temporaries.

Rules that protect the user's files:
- an output never replaces an input (the file is refused, named, and the batch goes on);
- an existing output is skipped unless overwrite is asked for, so a rerun after an
  interruption picks up where it stopped;
- images are written atomically by restorer.io.imaging.save; temporary files left by a run
  that was killed are removed at the start of the next run into the same folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from restorer.io import imaging

IMAGE_SUFFIXES = set(imaging.EXTENSIONS)


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


def discover(inputs: list[Path], outdir: Path, *, recursive: bool, fmt: str, suffix: str) -> list[Item]:
    """Input files paired with their outputs; folders are mirrored under `outdir`."""
    items: list[Item] = []
    folders = [p for p in inputs if p.is_dir()]
    outdir_resolved = outdir.resolve()
    for path in inputs:
        if path.is_dir():
            base = outdir / path.resolve().name if len(folders) > 1 else outdir
            pattern = path.rglob("*") if recursive else path.glob("*")
            for f in sorted(pattern):
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES or f.name.startswith(imaging.TEMP_PREFIX):
                    continue
                if _is_within(f.resolve(), outdir_resolved) and outdir_resolved != path.resolve():
                    continue  # our own outputs from an earlier run inside the input tree
                rel = f.relative_to(path)
                items.append(Item(f, output_path(base / rel, fmt, suffix)))
        else:
            items.append(Item(path, output_path(outdir / path.name, fmt, suffix)))
    return items


def output_path(target: Path, fmt: str, suffix: str) -> Path:
    ext = target.suffix if fmt == "same" else imaging.FORMATS[fmt][1]
    if fmt == "same" and target.suffix.lower() not in IMAGE_SUFFIXES:
        ext = ".png"
    return target.with_name(target.stem + suffix + ext)


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def prepare(items: list[Item], *, overwrite: bool) -> None:
    """Refuse outputs that would replace an input; skip outputs already there unless
    `overwrite` (how a rerun resumes where an interrupted run stopped)."""
    refuse_overwriting_inputs(items)
    for item in items:
        if item.status == "pending" and item.output.exists() and not overwrite:
            item.status = "skipped"


def clean_stale_temporaries(items: list[Item]) -> None:
    """Remove temporary files a killed run left in the output folders."""
    for folder in {i.output.parent for i in items}:
        if folder.is_dir():
            for tmp in folder.glob(imaging.TEMP_PREFIX + "*" + imaging.TEMP_SUFFIX):
                try:
                    tmp.unlink()
                except OSError:
                    pass


def refuse_overwriting_inputs(items: list[Item]) -> None:
    inputs = {os.path.normcase(str(i.input.resolve())) for i in items}
    for item in items:
        if os.path.normcase(str(item.output.resolve())) in inputs:
            item.status = "failed"
            item.error = (f"the output would overwrite an input ('{item.output}'); "
                          "choose another -o folder or a --suffix")

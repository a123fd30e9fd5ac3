"""What a running step may use (device, tile, progress, cancel, the runner cache), and the
report of what ran. Shared by the step executor and the pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from restorer.run.loader import RunnerCache
from restorer.run.tiles import CancelToken, ProgressFn


@dataclass
class Context:
    device: str = "auto"
    tile: int | None = None
    progress: ProgressFn | None = None
    cancel: CancelToken | None = None
    cache: RunnerCache = field(default_factory=RunnerCache)  # owned by the batch or the GUI session
    stage_images: dict[str, np.ndarray] = field(default_factory=dict)  # for --save-intermediates
    on_note: Callable[[str], None] | None = None
    # Where the image being restored sits in the whole one, (row, column): a preview restores
    # a crop, and what depends on the position (a generative step's noise) must follow it.
    origin: tuple[int, int] = (0, 0)


@dataclass
class StepReport:
    task: str
    model: str
    backend: str
    runner: str = ""
    provider: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "task": self.task, "model": self.model, "backend": self.backend, "runner": self.runner,
            "provider": self.provider, "seconds": round(self.seconds, 3), "notes": self.notes,
            **({"stages": self.stages} if self.stages else {}),
        }

    def ran(self, runner) -> None:
        """Record which runner did the work."""
        self.runner, self.provider = runner.info.backend, runner.info.provider
        self.notes.extend(n for n in runner.info.notes if n not in self.notes)

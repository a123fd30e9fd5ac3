"""Python's cyclic garbage collector runs in whichever thread happens to allocate when a
threshold is crossed. A cycle that holds Qt objects, collected from a worker thread (a restore,
a download, a test's local HTTP server), frees them off the GUI thread, and Qt crashes.
So the app turns automatic collection off and collects on the GUI thread, from a timer, as
the thresholds would have."""

from __future__ import annotations

import gc

from PySide6.QtCore import QObject, QTimer

INTERVAL_MS = 500


class MainThreadCollector(QObject):
    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.thresholds = gc.get_threshold()
        gc.disable()
        self.timer = QTimer(self, interval=INTERVAL_MS)
        self.timer.timeout.connect(self.collect)
        self.timer.start()

    def collect(self) -> None:
        """The generations whose counts crossed their thresholds, youngest first."""
        counts = gc.get_count()
        for generation in range(3):
            if counts[generation] <= self.thresholds[generation]:
                break
            gc.collect(generation)

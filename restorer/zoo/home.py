"""The store's root folder: platformdirs' user data dir, or RESTORER_HOME when set."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    override = os.environ.get("RESTORER_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("restorer", appauthor=False))

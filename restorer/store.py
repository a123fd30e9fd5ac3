"""The local model store: where weights and exported ONNX models live, and how a catalog
model becomes a Runner.

Layout under the store's home (platformdirs' user data dir; RESTORER_HOME overrides):
    models/<id>/<file name>          weights as fetched or imported
    onnx/<id>.<precision>.onnx       exported networks (dynamic height and width)
"""

from __future__ import annotations

import os
from pathlib import Path

from restorer.catalog import ModelSpec


def home() -> Path:
    override = os.environ.get("RESTORER_HOME")
    if override:
        return Path(override)
    import platformdirs

    return Path(platformdirs.user_data_dir("restorer", appauthor=False))


def model_dir(spec: ModelSpec) -> Path:
    return home() / "models" / spec.id


def weight_paths(spec: ModelSpec) -> list[Path]:
    return [model_dir(spec) / f.name for f in spec.files]


def onnx_path(spec: ModelSpec, precision: str = "fp32") -> Path:
    return home() / "onnx" / f"{spec.id}.{precision}.onnx"


def is_installed(spec: ModelSpec) -> bool:
    """All of a model's files are in the store."""
    return bool(spec.files) and all(p.is_file() for p in weight_paths(spec))


def is_ready(spec: ModelSpec) -> bool:
    """The model can run: its files (or its exported ONNX model) are here, and so is
    everything it needs (a text encoder, a pipeline's parts)."""
    from restorer.catalog import load_catalog

    own = spec.is_pipeline or onnx_path(spec).is_file() or is_installed(spec)
    return own and all(is_ready(load_catalog().get(n)) for n in spec.needs)

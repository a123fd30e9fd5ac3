"""Helpers for the conformance fixtures copied into tests/fixtures/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def load_manifest(path: Path) -> tuple[dict, list]:
    """A released checkpoint's manifest and its [name, shape, dtype] list (following refs)."""
    path = Path(path)
    manifest = json.loads(path.read_text())
    entries = manifest.get("state_dict")
    if not isinstance(entries, list):
        ref = manifest.get("state_dict_ref") or manifest.get("state_dict_same_as")
        entries = json.loads((path.parent / ref).read_text())["state_dict"]
    return manifest, entries


def random_state_dict(entries: list, seed: int = 0) -> dict[str, np.ndarray]:
    """Random values with the official names, shapes and dtypes (as tools/make_checkpoint.py)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape, dtype in entries:
        if "int" in dtype:
            out[name] = np.zeros(shape, dtype=np.int64)
        else:
            out[name] = (rng.standard_normal(shape) * 0.02).astype(np.float32)
    return out


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """A fixture's weights; sharded sets (`X.safetensors.index.json`) are merged."""
    from safetensors.numpy import load_file

    path = Path(path)
    index = path.with_name(path.name + ".index.json")
    if not path.exists() and index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        out = {}
        for shard in sorted(set(weight_map.values())):
            out.update(load_file(path.parent / shard))
        return out
    return load_file(path)

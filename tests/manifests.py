"""Helpers for the conformance fixtures copied into tests/fixtures/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

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


def manifest_fixture(manifest: str) -> Path:
    """The copy under tests/fixtures of a catalog ModelSpec's manifest, e.g. 'hat/HAT_SRx4.keys.json'
    (kept at tests/fixtures/hat/manifests/) or 'mirnet/v2/sr_x2.keys.json'."""
    family, _, rest = manifest.partition("/")
    for path in (FIXTURES / manifest, FIXTURES / family / "manifests" / rest):
        if path.is_file():
            return path
    raise FileNotFoundError(f"no fixture for the manifest {manifest!r} under {FIXTURES}")


def meta_state_dict(entries: list) -> dict:
    """Empty tensors on the meta device with a manifest's names, shapes and dtypes."""
    import torch

    return {name: torch.empty(shape, dtype=getattr(torch, dtype), device="meta") for name, shape, dtype in entries}


def assert_loads_strictly(model: torch.nn.Module | tuple[str, dict] | None, manifest: Path | list) -> dict:
    """Check that a released checkpoint's tensors load strictly into `model`; its manifest.

    model: a module (build it under `with torch.device("meta")`), or (arch, hparams), or None
    for the manifest's own arch and hyperparameters, built on the meta device with
    restorer.archs.build. manifest: a manifest's path, or its [name, shape, dtype] entries.
    The names, shapes and dtypes of the model's state dict must be the manifest's (the failure
    lists a few missing and unexpected names and the first mismatch); the meta tensors then
    load with strict=True, assign=True; the unique parameters count the manifest's "params".
    """
    import torch

    if isinstance(manifest, list):
        manifest, entries = {}, manifest
    else:
        manifest, entries = load_manifest(manifest)
    if not isinstance(model, torch.nn.Module):
        from restorer.archs import build

        arch, hparams = model or (manifest["arch"], manifest["hyperparameters"])
        with torch.device("meta"):  # up to 185 M parameters: never materialised
            model = build(arch, hparams)
    ours = {name: (list(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in model.state_dict().items()}
    theirs = {name: (list(shape), dtype) for name, shape, dtype in entries}
    missing = [name for name in theirs if name not in ours]
    unexpected = [name for name in ours if name not in theirs]
    differ = [(name, ours[name], theirs[name]) for name in theirs if name in ours and ours[name] != theirs[name]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} released tensors the model lacks, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{len(unexpected)} model tensors not released, e.g. {unexpected[:5]}")
    if differ:
        name, got, want = differ[0]
        problems.append(f"{len(differ)} differ, first {name}: model {got}, released {want}")
    assert not problems, "; ".join(problems)
    model.load_state_dict(meta_state_dict(entries), strict=True, assign=True)
    if "params" in manifest:
        count = sum(p.numel() for p in model.parameters())
        assert count == manifest["params"], f"{count} parameters, released {manifest['params']}"
    return manifest

"""Every network restorer ships a template for runs without torch.

For each architecture and released hyperparameter set in the catalog (every part of a model
run in parts, the InstructIR text side included), a checkpoint with the official tensor names
and shapes (random values; the index buffers a real release carries) is written as the
released .pth (under its wrapper key) and as .safetensors, added to a store and made runnable
by a process in which `import torch` fails. Both give the same ONNX output, and it equals the
network's eager PyTorch output on the same weights within the export parity bar (1e-4 of the
output's scale). That a filled template equals the torch export of the same weights to 1e-5
is proven when each template is made (restorer.convert.templates; max_diff_to_export in
index.json, checked here too).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restorer.zoo.templates import read_index, template_parts, template_problems, templated_specs
from tests.manifests import load_manifest, manifest_fixture

REPO = Path(__file__).resolve().parents[1]
SPECS = {spec.id: spec for spec in templated_specs()}


def test_every_released_architecture_has_a_fresh_template():
    """A missing template, or one made from an older version of its architecture's source,
    fails here: run python tools/make_templates.py."""
    assert template_problems() == []


def test_every_template_was_proven_equal_to_the_torch_export():
    index = read_index()
    assert index and all(0 <= r["max_diff_to_export"] <= 1e-5 for r in index.values())


def test_readme_reports_the_shipped_template_size():
    total = sum(r["bytes"] for r in read_index().values()) / 1e6
    assert f"{total:.1f} MB" in (REPO / "README.md").read_text()


# A process where torch cannot be imported: it adds each checkpoint it is given to a store and
# fills the templates (restorer.run.loader.make_runnable), answering with the ONNX paths.
WORKER = r"""
import json, os, sys
from dataclasses import replace
sys.modules["torch"] = None
from restorer.run.loader import make_runnable
from restorer.zoo import catalog as catalog_module, install, layout
from restorer.zoo.catalog import load_catalog
from restorer.zoo.templates import template_parts
# random values cannot match a release's sha256: the catalog without them (layouts still checked)
catalog_module._PINNED = catalog_module.Catalog(
    [replace(s, files=tuple(replace(f, sha256="") for f in s.files)) for s in load_catalog()])
for line in sys.stdin:
    job = json.loads(line)
    os.environ["RESTORER_HOME"] = job["home"]
    try:
        spec = load_catalog().get(job["id"])
        install.add(job["checkpoint"], spec.id)
        for f in spec.files:  # the text encoder's tokenizer.json: not a network
            if f.name != layout.weights_file(spec).name:
                (layout.model_dir(spec) / f.name).write_text("{}")
        how = make_runnable(spec)
        paths = [str(layout.onnx_path(spec, "fp32", part)) for part in template_parts(spec)]
        print(json.dumps({"how": how, "paths": paths}), flush=True)
    except Exception as e:
        print(json.dumps({"error": f"{type(e).__name__}: {e}"}), flush=True)
"""


@pytest.fixture(scope="module")
def torchless():
    process = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})

    def add_and_fill(spec, checkpoint: Path, home: Path) -> list[Path]:
        job = {"id": spec.id, "checkpoint": str(checkpoint), "home": str(home)}
        process.stdin.write(json.dumps(job) + "\n")
        process.stdin.flush()
        answer = json.loads(process.stdout.readline())
        assert "error" not in answer, answer.get("error")
        assert answer["how"] == "template"
        return [Path(p) for p in answer["paths"]]

    yield add_and_fill
    process.stdin.close()
    process.wait(timeout=30)


def _checkpoint_arrays(spec, module) -> tuple[dict[str, np.ndarray], str]:
    """The released checkpoint's tensors (names, shapes, dtypes of its manifest) with random
    float values, and its wrapper key. Integer tensors (index tables) are the network's own,
    as in a real release; running variances are positive; spectral-norm vectors are the
    power iteration's, as training leaves them."""
    own = {k: v.numpy() for k, v in module.state_dict().items()}
    if spec.manifest:
        _, entries = load_manifest(manifest_fixture(spec.manifest))
    else:  # the sentence encoder: a Hugging Face BertModel, whose names the arch keeps
        entries = [(k, list(v.shape), str(v.dtype)) for k, v in own.items()]
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape, dtype in entries:
        if "int" in dtype:
            arrays[name] = own[name.removeprefix("module.")].astype(dtype)
        elif name.endswith("running_var"):
            arrays[name] = np.asarray(1 + rng.random(shape), dtype=dtype)
        else:
            arrays[name] = np.asarray(rng.standard_normal(shape) * 0.02, dtype=dtype)
    for name in [n for n in arrays if n.endswith(".weight_orig")]:
        # A spectral-norm layer divides by u^T W v; a release stores the power iteration's unit
        # vectors, so that is W's largest singular value. Random u, v would divide by a random,
        # often tiny number and blow the activations up to ~1e30.
        base = name.removesuffix("orig")
        matrix = arrays[name].reshape(arrays[name].shape[0], -1).astype(np.float64)
        v = rng.standard_normal(matrix.shape[1])
        for _ in range(30):
            u = matrix @ v
            u /= np.linalg.norm(u)
            v = matrix.T @ u
            v /= np.linalg.norm(v)
        arrays[base + "u"], arrays[base + "v"] = u.astype(np.float32), v.astype(np.float32)
    return arrays, spec.wrapper_key


def _eager(spec, module, part, feeds):
    import torch

    net = getattr(module, part) if part else module
    with torch.no_grad():
        out = net(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _run(path: Path, feeds: dict) -> list[np.ndarray]:
    from restorer.run.onnx import run_fixed

    return run_fixed(path, feeds)  # sizes fixed, as the runner runs it


@pytest.mark.parametrize("spec_id", sorted(SPECS))
def test_checkpoint_imported_without_torch_runs_as_the_network(spec_id, torchless, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    from restorer.archs import build
    from restorer.convert.graph import FP32_TOLERANCE
    from restorer.convert.templates import check_inputs, default_tile
    from restorer.zoo.layout import weights_file
    from restorer.zoo.weights import load_state_dict

    spec = SPECS[spec_id]
    module = build(spec.arch, spec.hparams).eval()
    arrays, wrapper = _checkpoint_arrays(spec, module)
    released = weights_file(spec).name  # the official file name: some layouts are shared
    pth = tmp_path / (released if released.endswith((".pth", ".pt", ".bin")) else f"{Path(released).stem}.pth")
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    torch.save({wrapper: tensors} if wrapper else tensors, pth)
    del tensors
    safetensors = tmp_path / f"{Path(released).stem}.safetensors"
    save_file(arrays, safetensors)
    del arrays

    from_pth = torchless(spec, pth, tmp_path / "home-pth")
    pth.unlink()
    from_safetensors = torchless(spec, safetensors, tmp_path / "home-st")

    weights = load_state_dict(safetensors, spec)
    module.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=True)
    del weights
    for part, a, b in zip(template_parts(spec), from_pth, from_safetensors):
        feeds = {k: v[:1] for k, v in check_inputs(spec, module, part, default_tile(spec)).items()}
        got, again = _run(a, feeds), _run(b, feeds)
        expected = _eager(spec, module, part, feeds)
        for g, h, e in zip(got, again, expected, strict=True):
            assert np.array_equal(g, h), f"{spec_id} {part or ''}: .pth and .safetensors imports differ"
            assert g.shape == e.shape
            scale = max(1.0, float(np.abs(e).max()))
            diff = float(np.abs(g - e).max())
            # the export-parity bar: float32 kernels of ONNX Runtime and PyTorch differ in
            # summation order (the template itself equals the torch export to 1e-5)
            assert np.isfinite(e).all() and diff <= FP32_TOLERANCE * scale, \
                f"{spec_id} {part or ''}: {diff:.3g} (scale {scale:.3g})"

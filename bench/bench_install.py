"""How long installing a model takes: `restorer-cli models add FILE` on a checkpoint laid out
like the release (random values, the official names and shapes), then the first restore of a
64x64 image with it, each timed as the user sees it (a fresh process, a fresh store).

    python bench/bench_install.py [MODEL_ID ...]     # default: hat-s-x4

The first restore includes building the ONNX Runtime session (its graph optimisation, which
is then kept in the store); a second restore shows the start-up once that is kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.manifests import load_manifest, manifest_fixture, random_state_dict  # noqa: E402


def _timed(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return time.perf_counter() - start


def bench(model_id: str) -> None:
    import torch
    from PIL import Image

    from restorer.zoo.catalog import load_catalog

    spec = load_catalog().get(model_id)
    _, entries = load_manifest(manifest_fixture(spec.manifest))
    with tempfile.TemporaryDirectory(prefix="bench-install-") as scratch:
        scratch = Path(scratch)
        checkpoint = scratch / spec.files[0].name
        tensors = {k: torch.from_numpy(v) for k, v in random_state_dict(entries).items()}
        torch.save({spec.wrapper_key: tensors} if spec.wrapper_key else tensors, checkpoint)
        image = scratch / "in.png"
        Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(image)
        env = {**os.environ, "RESTORER_HOME": str(scratch / "home")}
        cli = [sys.executable, "-m", "restorer.cli"]
        add = _timed(cli + ["models", "add", str(checkpoint)], env)
        restore = [*cli, str(image), "--model", model_id, "--device", "cpu", "--quiet", "-o"]
        first = _timed(restore + [str(scratch / "out1")], env)
        second = _timed(restore + [str(scratch / "out2")], env)
        size = checkpoint.stat().st_size / 1e6
        print(f"| {model_id} | {size:.0f} MB | {add:.1f} s | {first:.1f} s | {second:.1f} s |")


def main() -> None:
    print(f"threads: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print("| model | checkpoint | models add (ready to run) | first restore, 64x64 | second restore |")
    print("|---|---|---|---|---|")
    for model_id in sys.argv[1:] or ["hat-s-x4"]:
        bench(model_id)


if __name__ == "__main__":
    main()

"""Generative upscaling speed and memory: seconds per output megapixel of restorer-cli with
ldm-sr-x4 and sd-x4-upscaler, for the tiny test pipelines and for the released
configurations (bench/generative_configs, random weights: the same networks, sizes and
arithmetic as the real ones), on this machine's CPU (and CUDA where there is one).

    python bench/bench_generative.py [--steps N] [--size PX] [--released-only] [--device cpu|cuda]

Each row is a fresh process: the folder is built and installed with restorer's `models add`
code, the pipeline loaded (timed apart), then a SIZE x SIZE crop of a sample photo upscaled
through restorer's own step (restorer.batch.restore, --steps N --seed 0; at most the
catalog's 128-px tile, so one tile), with the process's peak resident memory (ru_maxrss).
Denoising dominates, so a run at the model's default steps costs about (default / N) times
the upscale; the table gives both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bench" / "generative_configs"
sys.path.insert(0, str(ROOT))


def released_folder(model_id: str, folder: Path) -> Path:
    """The released configuration with random weights, saved in the hub layout."""
    import diffusers
    import torch
    import transformers

    from tests.generative_helpers import write_tokenizer_files

    torch.manual_seed(0)
    source = CONFIGS / model_id
    index = json.loads((source / "model_index.json").read_text())
    folder.mkdir(parents=True)
    shutil.copy(source / "model_index.json", folder / "model_index.json")
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        library, cls_name = value
        sub = folder / name
        if cls_name.endswith("Scheduler"):
            sub.mkdir()
            shutil.copy(source / name / "scheduler_config.json", sub / "scheduler_config.json")
        elif "Tokenizer" in cls_name:  # the released tokenizer_config's length, a character vocabulary
            write_tokenizer_files(sub)
            (sub / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
        elif library == "transformers":
            cls = getattr(transformers, cls_name)
            cls(cls.config_class.from_pretrained(source / name)).save_pretrained(sub)
        else:
            cls = getattr(diffusers, cls_name)
            cls.from_config(cls.load_config(source / name)).save_pretrained(sub)
    return folder


def tiny_folder(model_id: str, folder: Path) -> Path:
    from tests.generative_helpers import tiny_ldm, tiny_sd_upscaler

    return (tiny_ldm if model_id == "ldm-sr-x4" else tiny_sd_upscaler)(folder)


def parameters(folder: Path) -> int:
    from restorer.zoo.weights import tensor_shapes

    total = 0
    for path in folder.rglob("*.safetensors"):
        for shape in tensor_shapes(path).values():
            n = 1
            for d in shape:
                n *= d
            total += n
    return total


def measure(model_id: str, kind: str, steps: int, size: int, device: str) -> dict:
    """In this (child) process: build the folder, install it, load the pipeline, upscale a
    size x size crop; seconds for the load and for the upscale, and the peak memory."""
    import re
    from importlib import resources

    import numpy as np
    from PIL import Image

    from restorer.batch.restore import restore
    from restorer.io.imaging import Image as Picture
    from restorer.plan.request import Options, plan_request
    from restorer.run.context import Context
    from restorer.zoo import catalog as catalog_module
    from restorer.zoo.install import add_folder

    work = Path(tempfile.mkdtemp())
    try:
        os.environ["RESTORER_HOME"] = str(work / "home")
        # random weights stand in for the released ones, whose sha256 the catalog pins
        text = resources.files("restorer_models").joinpath("catalog.toml").read_text(encoding="utf-8")
        catalog_module._PINNED = catalog_module.parse(re.sub(r'sha256 = "[0-9a-f]{64}"', 'sha256 = ""', text))
        folder = (released_folder if kind == "released" else tiny_folder)(model_id, work / model_id)
        add_folder(folder, model_id, catalog_module._PINNED)
        params = parameters(folder)
        shutil.rmtree(folder)
        pixels = np.asarray(Image.open(ROOT / "samples" / "fbcnn_real_2_face.jpg").convert("RGB"), np.float32) / 255
        picture = Picture(np.ascontiguousarray(pixels[:size, :size]), None, {})
        plan = plan_request(Options(device=device, generation={"steps": steps, "seed": 0}), model=model_id)
        ctx = Context(device)
        start = time.perf_counter()
        ctx.cache.network(catalog_module._PINNED.get(model_id), device)
        load = time.perf_counter() - start
        start = time.perf_counter()
        out, _ = restore(picture, plan, ctx)
        upscale = time.perf_counter() - start
        assert (out.width, out.height) == (4 * size, 4 * size)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out_mp = (4 * size) ** 2 / 1e6
    default_steps = catalog_module._PINNED.get(model_id).extra["steps"]
    return {"model": model_id, "config": kind, "params": params, "input": size, "tile": 128, "steps": steps,
            "load_seconds": load, "seconds": upscale, "s_per_mp": upscale / out_mp,
            "s_per_mp_default": upscale * default_steps / steps / out_mp, "default_steps": default_steps,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: kilobytes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    p.add_argument("--released-only", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)  # a child's job
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.steps, args.size, args.device)))
        return
    rows = []
    for model_id in ("ldm-sr-x4", "sd-x4-upscaler"):
        for kind in ("released",) if args.released_only else ("tiny", "released"):
            # one process per run: its peak memory is that run's alone
            r = subprocess.run([sys.executable, __file__, "--one", model_id, kind, "--steps", str(args.steps),
                                "--size", str(args.size), "--device", args.device], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr[-2000:])
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print("| model | config | parameters | input (one tile) | steps | load | upscale | s per output MP | "
          "s per output MP at the default steps | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['config']} | {r['params'] / 1e6:.1f} M | {r['input']} px | {r['steps']} | "
              f"{r['load_seconds']:.1f} s | {r['seconds']:.1f} s | {r['s_per_mp']:.1f} | "
              f"{r['s_per_mp_default']:.0f} ({r['default_steps']} steps) | {r['peak_mb']:.0f} MB |")


if __name__ == "__main__":
    main()

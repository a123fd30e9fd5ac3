"""Tiled vs whole-image inference of the tiny golden-fixture networks: how far from the
whole-image result the tiling engine lands, and whether the difference shows a seam.

For each tiny model (HAT x2, CGNet, MIRNet v1, MambaIR v1 x2 and v2 x2 when their arch
imports and reproduces its golden output), a real photo crop is run whole and through
restorer.run.tiles.run_tiled at several overlaps; the measures are those of
tests/seam_helpers.py (max/mean |tiled - whole|, also relative to the output's range, and
the seam step: the excess |gradient| of the difference image at the blend ramps).
Prints a markdown table (paste into docs/seams.md).

    OMP_NUM_THREADS=1 nice python bench/seams.py          # ~2-4 minutes on 2 busy cores
    python bench/seams.py --only hat_x2 cgnet
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.seam_helpers import TINY, fixture_base, load, sample_image, study  # noqa: E402

# Bench only: MambaIR tiny fixtures may not be copied into tests/fixtures yet.
EXTRA_FIXTURES = (Path("/work/shared/conformance/mambair/tiny"),)
HALF_STEP = 0.5 / 255

# key -> [(tile, overlaps)], the image (height, width, sample, resize width)
PLAN = {
    "hat_x2": ([(32, (0, 2, 4, 8)), (64, (0, 2, 4, 8, 16))], (96, 128, "kodim05_crop256.png", 128)),
    "mirnet_v1": ([(32, (0, 2, 4, 8)), (64, (0, 2, 4, 8, 16))], (96, 128, "kodim05_crop256.png", 128)),
    "mambair_x2": ([(64, (0, 2, 4, 8, 16))], (96, 128, "kodim05_crop256.png", 128)),
    "mambairv2_x2": ([(64, (0, 4, 8, 16))], (96, 128, "kodim05_crop256.png", 128)),
    "cgnet": ([(64, (0, 4, 8, 16)), (272, (0, 16, 32, 64))], (320, 432, "rain100l_clean_1.png", None)),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(PLAN), default=list(PLAN))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    for key in args.only:
        model = TINY[key]
        base = fixture_base(model, EXTRA_FIXTURES)
        if base is None:
            print(f"{key}: fixture not found; skipped", file=sys.stderr)
            continue
        try:
            net, x, golden, _ = load(model, base)
            err = golden_error(model, net, x, golden)
        except Exception as e:  # an arch still being written
            print(f"{key}: cannot load ({e}); skipped", file=sys.stderr)
            continue
        if err > 1e-4:
            print(f"{key}: golden output not reproduced (max diff {err:.2g}); skipped", file=sys.stderr)
            continue
        scale = golden.shape[-1] // x.shape[-1]
        tiles, (h, w, sample, resize) = PLAN[key]
        image = sample_image(h, w, sample, resize)
        for tile, overlaps in tiles:
            for overlap in overlaps:
                start = time.perf_counter()
                r = study(dataclasses.replace(model, tile=tile), net, scale, image, overlap)
                r.update(model=key, image=f"{h}x{w}", overlap=overlap, seconds=time.perf_counter() - start)
                rows.append(r)
                print(f"{key} tile {r['tile']} overlap {overlap}: max_rel {r['max_rel']:.2e} "
                      f"seam {r['seam_step_rel']:.1e} ({r['seconds']:.1f}s)", file=sys.stderr, flush=True)
    print(table(rows))


def golden_error(model, net, x: np.ndarray, golden: np.ndarray) -> float:
    """Max |ours - official| on the fixture: plain forward, or (HAT) reflect-padded to the
    window multiple and cropped, as the official test does."""
    import torch

    from restorer.run.tiles import run_runner
    from tests.seam_helpers import make_runner

    try:
        with torch.no_grad():
            ours = net(torch.from_numpy(x)).numpy()
    except (ValueError, RuntimeError):
        runner = make_runner(model, net, golden.shape[-1] // x.shape[-1], 0)
        ours = run_runner(runner, x[0].transpose(1, 2, 0)).transpose(2, 0, 1)[None]
    return float(np.abs(ours - golden).max())


def table(rows: list[dict]) -> str:
    out = [
        "| model | image | tile used | tiles | overlap | max abs | mean abs | output range | max / range "
        "| mean / range | max in 8-bit steps | seam step / range | seam ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['model']} | {r['image']} | {r['tile']} | {r['tiles']} | {r['overlap']} | {r['max']:.2e} "
            f"| {r['mean']:.2e} | {r['range']:.2f} | {r['max_rel']:.2e} | {r['mean_rel']:.2e} "
            f"| {r['max_rel'] * 255:.2f} | {r['seam_step_rel']:.1e} | {r['seam_ratio']:.2f} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()

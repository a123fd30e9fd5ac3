"""Which order of two restoration steps works better, measured on the paired samples.

For every pair of tasks that have a built-in operator (denoise, dehaze, lowlight, superres)
both orders are run through restorer's own step executor (restorer.batch.restore.restore,
the code the CLI runs, with the built-in operators at their default strengths) on each
sample pair where one of the two degradations is present, and compared with the clean
image by PSNR on RGB in [0, 1]. For superres pairs the degraded photo is first shrunk 2x
(area average) and the x2 result is compared with the full-size clean image.

Only lol_778 has two real degradations (dark and noisy); sots_0002+noise is the hazy SOTS
photo with Gaussian noise (sigma 15/255, seed 0) added, so that denoise and dehaze are
measured together too. A pair is decided on the samples that have both of its degradations
when there are any, else on those with either (which order does less harm when one of the
two steps was not needed). An order that upscales first runs the other step on 4x the
pixels (16x at 4x), so it must win by MIN_GAIN_UPSCALED_DB; a smaller difference than TIE_DB
is a tie. Ties and unmeasured pairs keep the reasoned order. (The seconds in the table come
from a shared machine and are only shown, never used to decide.)

The planner's default order (restorer.plan.instructions.CANONICAL_ORDER and
MEASURED_ORDER) follows the verdicts this writes to bench/step_order.md.

    OMP_NUM_THREADS=1 nice .venv/bin/python bench/step_order.py   # ~2 minutes on 2 busy cores

Derain has no built-in operator (nor deblur, jpeg, enhance), so its order cannot be measured
without a network; rain100l is listed for completeness and skipped.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# A store of our own: the measurement is of the built-in operators, never of installed networks.
os.environ["RESTORER_HOME"] = tempfile.mkdtemp(prefix="restorer-bench-")

from restorer.batch.restore import restore  # noqa: E402
from restorer.io.imaging import Image, load  # noqa: E402
from restorer.plan.instructions import CANONICAL_ORDER  # noqa: E402
from restorer.plan.request import Backend, Plan, Step  # noqa: E402
from restorer.run.context import Context  # noqa: E402

SAMPLES = ROOT / "samples"
OUT = ROOT / "bench" / "step_order.md"
# sample -> (degraded file, clean file, the degradations it has)
PAIRS = {
    "lol_778": ("lol_low_778.png", "lol_high_778.png", {"lowlight", "denoise"}),  # dark and noisy
    "sidd_06": ("sidd_noisy_06.png", "sidd_clean_06.png", {"denoise"}),
    "sots_0002": ("sots_hazy_0002.jpg", "sots_clean_0002.png", {"dehaze"}),
    "rain100l_1": ("rain100l_rainy_1.png", "rain100l_clean_1.png", {"derain"}),
    "sots_0002+noise": ("sots_hazy_0002.jpg", "sots_clean_0002.png", {"dehaze", "denoise"}),  # noise added
}
NOISE_SIGMA = 15 / 255
BUILTIN = {"denoise": "builtin:denoise", "dehaze": "builtin:dehaze", "lowlight": "builtin:lowlight",
           "superres": "builtin:upscale"}
TIE_DB = 0.05  # below this the two orders are called equal
MIN_GAIN_UPSCALED_DB = 0.5  # what an order that upscales first must gain to be chosen


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.clip(a, 0, 1).astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def run(image: Image, tasks: tuple[str, ...], ctx: Context) -> tuple[np.ndarray, float]:
    steps = [Step(t, BUILTIN[t], Backend.BUILTIN, {"scale": 2} if t == "superres" else {}) for t in tasks]
    start = time.perf_counter()
    out, _ = restore(image, Plan(steps, "cpu"), ctx)
    return out.pixels, time.perf_counter() - start


def shrunk(image: Image) -> Image:
    h, w = image.height // 2, image.width // 2
    pixels = cv2.resize(image.pixels[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
    return Image(pixels.reshape(h, w, -1).astype(np.float32), None, image.meta)


def measure() -> list[dict]:
    ctx = Context("cpu")
    images = {name: (load(SAMPLES / low), load(SAMPLES / high), has) for name, (low, high, has) in PAIRS.items()}
    hazy = images["sots_0002+noise"][0]
    noise = np.random.default_rng(0).normal(0, NOISE_SIGMA, hazy.pixels.shape)
    noisy = Image(np.clip(hazy.pixels + noise, 0, 1).astype(np.float32), None, hazy.meta)
    images["sots_0002+noise"] = (noisy, *images["sots_0002+noise"][1:])
    rows = []
    for a, b in itertools.combinations(BUILTIN, 2):
        for name, (low, high, has) in images.items():
            other = ({a, b} - {"superres"})
            if not has & other:
                continue  # neither degradation is in this photo
            clean = high.pixels
            if "superres" in (a, b):
                low = shrunk(low)
                clean = clean[: 2 * low.height, : 2 * low.width]
            out_ab, t_ab = run(low, (a, b), ctx)
            out_ba, t_ba = run(low, (b, a), ctx)
            before = psnr(low.pixels, clean) if "superres" not in (a, b) else None
            both = other <= has  # every degradation the pair undoes is in the photo
            rows.append({"pair": (a, b), "sample": name, "both": both, "input": before, "ab": psnr(out_ab, clean),
                         "ba": psnr(out_ba, clean), "t_ab": t_ab, "t_ba": t_ba})
            print(f"{a}->{b} vs {b}->{a} on {name}: {rows[-1]['ab']:.2f} / {rows[-1]['ba']:.2f} dB", file=sys.stderr)
    return rows


def verdicts(rows: list[dict]) -> list[dict]:
    """Per pair: the better order, its mean gain, on which samples, and whether it decides."""
    out = []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        mine = [r for r in rows if r["pair"] == pair]
        on = [r for r in mine if r["both"]] or mine
        gain = float(np.mean([r["ab"] - r["ba"] for r in on]))
        first, second = pair if gain >= 0 else pair[::-1]
        upscaled = first == "superres"  # the other step then runs on scale^2 the pixels
        needed = MIN_GAIN_UPSCALED_DB if upscaled else TIE_DB
        out.append({"first": first, "second": second, "gain": abs(gain), "samples": [r["sample"] for r in on],
                    "both": on[0]["both"], "upscaled": upscaled, "decides": abs(gain) >= needed})
    return out


def planner(first: str, second: str) -> str:
    """The order restorer.plan.instructions.CANONICAL_ORDER gives the pair."""
    if CANONICAL_ORDER.index(first) < CANONICAL_ORDER.index(second):
        return f"{first} then {second}"
    return f"{second} then {first}"


def write(rows: list[dict], found: list[dict]) -> str:
    lines = ["# Step order, measured", "",
             "Made by `OMP_NUM_THREADS=1 nice .venv/bin/python bench/step_order.py` (built-in operators at their",
             "default strengths, run through `restorer.batch.restore.restore`; PSNR on RGB in [0, 1] against",
             "the clean image; for superres pairs the degraded photo was shrunk 2x first and the x2 result",
             "compared with the full-size clean photo; sots_0002+noise is the hazy photo with Gaussian noise,",
             "sigma 15/255, seed 0). Seconds are from a shared 2-core CPU: read the ratios.", "",
             "| steps A, B | sample | both degradations | input dB | A then B dB | B then A dB | A then B s | B then A s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["pair"]
        before = "-" if r["input"] is None else f"{r['input']:.2f}"
        lines.append(f"| {a}, {b} | {r['sample']} | {'yes' if r['both'] else 'no'} | {before} | "
                     f"{r['ab']:.2f} | {r['ba']:.2f} | "
                     f"{r['t_ab']:.1f} | {r['t_ba']:.1f} |")
    lines += ["", f"Verdict per pair: the better order by mean PSNR on the samples with both degradations "
              f"(else on all of them); it decides when it gains at least {TIE_DB} dB, or {MIN_GAIN_UPSCALED_DB} dB "
              "when it upscales first (the other step then works on 4x the pixels). Otherwise the planner "
              "keeps its reasoned order.", "",
              "| better order | mean gain dB | on | upscales first | decides | planner's order |",
              "|---|---|---|---|---|---|"]
    for v in found:
        on = ", ".join(v["samples"]) + ("" if v["both"] else " (one degradation each)")
        lines.append(f"| {v['first']} then {v['second']} | {v['gain']:.2f} | {on} | "
                     f"{'yes' if v['upscaled'] else 'no'} | {'yes' if v['decides'] else 'no: reasoned order kept'} | "
                     f"{planner(v['first'], v['second'])} |")
    lines += ["", f"The planner's default order (CANONICAL_ORDER): {' -> '.join(CANONICAL_ORDER)}.",
              "", "Not measured: derain, deblur, jpeg, enhance, old-photo and remove-text have no built-in",
              "operator of their own (rain100l_1 is a derain pair; it needs a network), so their place in",
              "CANONICAL_ORDER is reasoned, not measured.", ""]
    return "\n".join(lines)


def main() -> None:
    rows = measure()
    text = write(rows, verdicts(rows))
    OUT.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()

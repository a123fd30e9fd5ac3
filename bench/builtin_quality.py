"""PSNR / SSIM of the built-in operators on the sample pairs that have a clean reference.

    python bench/builtin_quality.py            # writes bench/builtin_quality.md

Each degraded sample is restored the way a user would (`restorer-cli FILE -o DIR --task T
--format png`, defaults, an empty model store so only the built-in operator can run), then
compared with its reference by restorer.quality: BasicSR's PSNR and SSIM, all channels and
the Y channel, no border crop (nothing is upscaled). The degraded input against the same
reference is the baseline. Derain has no built-in operator, so its row is the baseline only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from restorer import quality  # noqa: E402

SAMPLES = ROOT / "samples"
# task, degraded sample, reference, dataset (samples/PROVENANCE.md)
CASES = [
    ("denoise", "sidd_noisy_06.png", "sidd_clean_06.png", "SIDD (real smartphone noise)"),
    ("lowlight", "lol_low_778.png", "lol_high_778.png", "LOL eval15"),
    ("dehaze", "sots_hazy_0002.jpg", "sots_clean_0002.png", "RESIDE SOTS outdoor"),
    ("derain", "rain100l_rainy_1.png", "rain100l_clean_1.png", "Rain100L"),
]
BUILTIN = {"denoise": "builtin:denoise", "lowlight": "builtin:lowlight", "dehaze": "builtin:dehaze"}


def restore(task: str, source: Path, outdir: Path, home: Path) -> tuple[Path, float]:
    """The output file and the seconds restoring it took (restorer-cli's own --json figure)."""
    env = dict(os.environ, RESTORER_HOME=str(home))
    command = [sys.executable, "-m", "restorer.cli", str(source), "-o", str(outdir), "--task", task,
               "--format", "png", "--quiet", "--no-download", "--json"]
    done = subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    item = json.loads(done.stdout)["files"][0]
    used = [step["model"] for step in item["steps"]]
    if used != [BUILTIN[task]]:  # the bench is about the built-in operators only
        raise SystemExit(f"{source.name}: expected {BUILTIN[task]} to run, got {used}")
    return Path(item["output"]), item["seconds"]


def scores(restored: Path, reference: Path) -> dict:
    a, b = quality.read(restored), quality.read(reference)
    return {"psnr": quality.psnr(a, b), "ssim": quality.ssim(a, b),
            "psnr_y": quality.psnr(a, b, y_channel=True), "ssim_y": quality.ssim(a, b, y_channel=True)}


def cell(before: float, after: float | None, digits: int) -> str:
    return f"{before:.{digits}f}" if after is None else f"{before:.{digits}f} → {after:.{digits}f}"


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home, outdir = Path(tmp) / "home", Path(tmp) / "out"
        for task, degraded, reference, dataset in CASES:
            before = scores(SAMPLES / degraded, SAMPLES / reference)
            after, seconds = None, None
            if task in BUILTIN:
                restored, seconds = restore(task, SAMPLES / degraded, outdir, home)
                after = scores(restored, SAMPLES / reference)
            rows.append((task, degraded, reference, dataset, before, after, seconds))
            print(task, before, after, file=sys.stderr)

    lines = [
        "# Built-in operators: PSNR and SSIM against the clean reference",
        "",
        "Made by `python bench/builtin_quality.py` (this file is its output). Each cell is the degraded",
        "input → the built-in operator's output, both against the reference; PSNR in dB, SSIM in",
        "[0, 1], higher is better. Computed by `restorer.quality` with BasicSR's conventions (8-bit",
        "scale, SSIM with the 11x11 Gaussian window, no border crop; Y = BT.601 luma), the same",
        "numbers `restorer-cli eval` prints. One image per task (samples/PROVENANCE.md): a check of",
        "direction and size, not a benchmark score. Operators run at their default strength through",
        "`restorer-cli FILE -o OUT --task T --format png` with no models installed.",
        "",
        "| task | operator | degraded → reference | dataset | PSNR (dB) | SSIM | PSNR Y (dB) | SSIM Y | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task, degraded, reference, dataset, before, after, seconds in rows:
        get = (lambda key: after[key]) if after else (lambda key: None)
        operator = f"`{BUILTIN[task]}`" if task in BUILTIN else "none built in (input only)"
        lines.append(
            f"| {task} | {operator} | {degraded} → {reference} | {dataset} | {cell(before['psnr'], get('psnr'), 2)} "
            f"| {cell(before['ssim'], get('ssim'), 4)} | {cell(before['psnr_y'], get('psnr_y'), 2)} "
            f"| {cell(before['ssim_y'], get('ssim_y'), 4)} | {f'{seconds:.1f}' if seconds else '-'} |")
    # Say plainly where an operator made a number worse, rather than leave it to the reader.
    worse = [f"{task} {name} ({before[key]:.4f} → {after[key]:.4f})" for task, _, _, _, before, after, _ in rows
             if after for key, name in (("psnr", "PSNR"), ("ssim", "SSIM"), ("psnr_y", "PSNR Y"), ("ssim_y", "SSIM Y"))
             if after[key] < before[key]]
    lines += ["", "Lower after the operator than before: " + ("; ".join(worse) if worse else "nothing") + "."]
    lines += [
        "",
        "Seconds: restoring the one image (decode, operator, encode; restorer-cli's `--json` figure) on",
        "the project's 2-core CPU machine, shared with other work: read them as rough.",
        "",
    ]
    (ROOT / "bench" / "builtin_quality.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

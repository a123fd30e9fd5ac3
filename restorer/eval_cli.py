"""restorer-cli eval: PSNR and SSIM of restored images against their references.

    restorer-cli eval RESTORED REFERENCE [--crop-border N] [--y-channel] [--json]

RESTORED and REFERENCE are two image files, or two folders whose images are paired by name
stem. The numbers are BasicSR's (restorer.quality says how). Errors are one line
`restorer-cli: ...` with exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from restorer import quality

PROG = "restorer-cli"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} eval",
        description="PSNR (dB) and SSIM of restored images against reference images, computed as "
        "BasicSR and most restoration papers compute them (8-bit scale, SSIM with an 11x11 Gaussian window).")
    p.add_argument("restored", type=Path, metavar="RESTORED", help="a restored image, or a folder of them")
    p.add_argument("reference", type=Path, metavar="REFERENCE",
                   help="its reference image, or a folder of references with the same names")
    p.add_argument("--crop-border", type=int, default=0, metavar="N",
                   help="ignore N pixels on each side (papers use the upscaling factor for super-resolution)")
    p.add_argument("--y-channel", action="store_true", help="measure the luma (Y of BT.601 YCbCr) only")
    p.add_argument("--json", action="store_true", help="print one JSON report on stdout")
    return p


def fail(message: str, code: int = 2) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[2:] if argv is None else argv)
    if args.crop_border < 0:
        return fail(f"--crop-border must be 0 or more, not {args.crop_border}")
    try:
        found = quality.pair_files(args.restored, args.reference)
        scores = [quality.evaluate_pair(name, a, b, crop_border=args.crop_border, y_channel=args.y_channel)
                  for name, a, b in found.pairs]
    except quality.QualityError as e:
        return fail(" ".join(str(e).split()))
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    summary = quality.mean(scores)
    if args.json:
        print(json.dumps(report(args, found, scores, summary), indent=1))
    else:
        print_table(args, scores, summary)
    # Unpaired files are worth a line each way: a missing output usually means a failed restore.
    if found.no_reference:
        print(f"{PROG}: {len(found.no_reference)} restored image(s) without a reference, skipped: "
              + ", ".join(p.name for p in found.no_reference), file=sys.stderr)
    if found.no_restored:
        print(f"{PROG}: {len(found.no_restored)} reference image(s) without a restored image, skipped: "
              + ", ".join(p.name for p in found.no_restored), file=sys.stderr)
    return 0


def _finite(value: float) -> float | None:
    """JSON has no infinity: identical images (infinite PSNR) are reported as null."""
    return value if math.isfinite(value) else None


def report(args, found: quality.Pairs, scores: list[quality.Score], summary: dict) -> dict:
    return {
        "restored": str(args.restored), "reference": str(args.reference),
        "channel": "y" if args.y_channel else "rgb", "crop_border": args.crop_border,
        "images": [{"name": s.name, "restored": str(s.restored), "reference": str(s.reference),
                    "psnr": _finite(s.psnr), "ssim": s.ssim} for s in scores],
        "mean": {"psnr": _finite(summary["psnr"]), "ssim": summary["ssim"], "count": summary["count"]},
        "no_reference": [str(p) for p in found.no_reference],
        "no_restored": [str(p) for p in found.no_restored],
    }


def print_table(args, scores: list[quality.Score], summary: dict) -> None:
    channel = "Y (BT.601 luma)" if args.y_channel else "all channels"
    print(f"# {channel}, crop border {args.crop_border}")
    rows = [(s.name, f"{s.psnr:.4f}", f"{s.ssim:.4f}") for s in scores]
    rows.append((f"mean of {summary['count']}", f"{summary['psnr']:.4f}", f"{summary['ssim']:.4f}"))
    width = max(len("IMAGE"), *(len(r[0]) for r in rows))
    print(f"{'IMAGE':<{width}}  {'PSNR (dB)':>10}  {'SSIM':>7}")
    for name, p, s in rows:
        print(f"{name:<{width}}  {p:>10}  {s:>7}")

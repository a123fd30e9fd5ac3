"""Chunked selective scan vs the sequential recurrence, at the size of real SS2D calls.

Each case is one selective_scan call as MambaIR makes it on a 64x64 tile (L = 4096 tokens,
the four scan directions stacked as 4 * d_inner channels, B and C per direction), batch 1:
- MambaIR-SR / DN (embed 180, mlp_ratio 2 -> d_inner 360, N 16)
- MambaIR-light (embed 60, mlp_ratio 1.2 -> d_inner 72, N 10)
Prints seconds per call, the sequential/chunked ratio for a few chunk lengths, and the max
difference (float32). Run: OMP_NUM_THREADS=1 .venv/bin/python bench/bench_scan.py
"""

from __future__ import annotations

import os
import time

import torch

from restorer.archs.selective_scan import selective_scan, selective_scan_reference

CASES = {"sr (d_inner 360, N 16)": (360, 16), "light (d_inner 72, N 10)": (72, 10)}
TOKENS = 64 * 64
CHUNKS = (16, 32, 64, 128)


def inputs(d_inner: int, n: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    dim = 4 * d_inner
    return dict(
        u=torch.randn(1, dim, TOKENS, generator=g),
        delta=torch.randn(1, dim, TOKENS, generator=g) * 0.5,
        A=-torch.exp(torch.randn(dim, n, generator=g)),
        B=torch.randn(1, 4, n, TOKENS, generator=g),
        C=torch.randn(1, 4, n, TOKENS, generator=g),
        D=torch.randn(dim, generator=g),
        delta_bias=torch.randn(dim, generator=g),
        delta_softplus=True,
    )


def timed(fn, **kwargs) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn(**kwargs)
    return time.perf_counter() - start, out


def main() -> None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')})")
    print(f"L = {TOKENS} tokens (64x64 tile), batch 1, float32")
    with torch.no_grad():
        for label, (d_inner, n) in CASES.items():
            args = inputs(d_inner, n)
            seq_s, ref = timed(selective_scan_reference, **args)
            print(f"\n{label}: sequential {seq_s:.2f} s")
            for chunk in CHUNKS:
                s, out = timed(selective_scan, **args, chunk=chunk)
                diff = (out - ref).abs().max().item()
                print(f"  chunk {chunk:4d}: {s:.2f} s  sequential/chunked {seq_s / s:.2f}x  max|diff| {diff:.1e}")


if __name__ == "__main__":
    main()

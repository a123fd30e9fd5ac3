"""images/s of restorer-cli --engine ray against --engine local on the same 40 images.

    python bench/bench_ray.py [--images 40] [--side 512] [--cpus 2] [--task denoise] [--write-docs]

40 photos of about 512 px (the samples, resized, rolled and flipped so that no two are the
same) are restored with the built-in operator of --task (no model download) on the CPU:
once with --engine local, then with --engine ray on a local Ray of --cpus CPUs, started here
first (its start is timed apart: on a cluster it is paid once, not per job). Prints a
markdown table; --write-docs puts it into docs/cluster.md under "## Measured".
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "cluster.md"


def make_images(folder: Path, count: int, side: int) -> None:
    sources = sorted(p for p in (REPO / "samples").iterdir() if p.suffix.lower() in (".png", ".jpg"))
    for i in range(count):
        src = Image.open(sources[i % len(sources)]).convert("RGB")
        scale = side / max(src.size)
        arr = np.asarray(src.resize((round(src.width * scale), round(src.height * scale)), Image.BICUBIC))
        arr = np.roll(arr, 17 * i, axis=1)
        if i // len(sources) % 2:
            arr = arr[:, ::-1]
        sub = folder / f"set{i % 4}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(arr)).save(sub / f"img{i:02d}.png")


def timed_cli(args: list[str]) -> float:
    from restorer.cli import main

    start = time.perf_counter()
    code = main(args)
    if code != 0:
        raise SystemExit(f"restorer-cli {' '.join(args)} exited with {code}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--side", type=int, default=512)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--task", default="denoise")
    ap.add_argument("--write-docs", action="store_true")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    os.environ["RESTORER_HOME"] = str(work / "home")  # an empty store: the built-in operator
    try:
        make_images(work / "in", a.images, a.side)
        common = [str(work / "in"), "--recursive", "--task", a.task, "--device", "cpu", "--quiet"]
        local = timed_cli([*common, "-o", str(work / "local")])

        import ray

        start = time.perf_counter()
        ray.init(num_cpus=a.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        ray_start = time.perf_counter() - start
        try:
            remote = timed_cli([*common, "-o", str(work / "ray"), "--engine", "ray"])
        finally:
            ray.shutdown()
        same = all((work / "ray" / p.relative_to(work / "local")).read_bytes() == p.read_bytes()
                   for p in (work / "local").rglob("*.png"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = a.images
    rows = [
        ("--engine local", local, n / local),
        (f"--engine ray, {a.cpus} workers (Ray already started)", remote, n / remote),
        (f"--engine ray, counting `ray.init` ({ray_start:.1f} s)", remote + ray_start, n / (remote + ray_start)),
    ]
    table = [f"{n} images of about {a.side} px, `--task {a.task}` (built-in operator) on the CPU; outputs of both "
             f"engines {'bit-identical' if same else 'DIFFERENT'}.", "",
             "| engine | wall time | images/s |", "| --- | ---: | ---: |"]
    table += [f"| {name} | {sec:.1f} s | {rate:.2f} |" for name, sec, rate in rows]
    text = "\n".join(table)
    print(text)
    if a.write_docs:
        machine = (f"{platform.machine()}, {os.cpu_count()} CPUs seen by Python, Ray given {a.cpus}; "
                   f"Python {platform.python_version()}, Ray {ray.__version__}; {time.strftime('%Y-%m-%d')}")
        command = f"nice -n 19 python bench/bench_ray.py --images {n} --side {a.side} --cpus {a.cpus} --write-docs"
        section = f"## Measured\n\n{text}\n\nMachine: {machine}. Command:\n\n    {command}\n"
        doc = DOC.read_text()
        head, sep, rest = doc.partition("## Measured\n")
        if not sep:
            raise SystemExit(f"{DOC} has no '## Measured' heading")
        tail = rest[rest.find("\n## "):] if "\n## " in rest else "\n"
        DOC.write_text(head + section + tail)
        print(f"written to {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()

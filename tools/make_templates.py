"""Write the ONNX graph templates restorer ships (restorer/data/templates/), one per
architecture and hyperparameter set of the catalog's released checkpoints (one per part for
a network run in parts), and their index. Needs torch; exporting takes seconds to minutes a
template.

    python tools/make_templates.py [ID ...]     # missing or stale templates, or those of these models
    python tools/make_templates.py --check      # exit 1 if any is missing or stale (no torch needed)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from restorer.zoo.catalog import load_catalog  # noqa: E402
from restorer.zoo.templates import (  # noqa: E402
    INDEX,
    read_index,
    template_name,
    template_parts,
    template_problems,
    templated_specs,
)

FOLDER = ROOT / "restorer" / "data" / "templates"


def _record(records: dict) -> None:
    """Add records to index.json, re-read under a lock: several makers may run at once."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "restorer-make-templates.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        index = read_index(FOLDER)
        index.update(records)
        (FOLDER / INDEX).write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")


def main(argv: list[str]) -> int:
    index = read_index(FOLDER)
    if argv == ["--check"]:
        found = template_problems(FOLDER)
        for line in found:
            print(line)
        total = sum(r["bytes"] for r in index.values())
        print(f"{len(index)} templates, {total / 1e6:.1f} MB; {len(found)} missing or stale")
        return 1 if found else 0
    from restorer.convert.templates import make_template

    catalog = load_catalog()
    specs = [catalog.get(i) for i in argv] if argv else templated_specs()
    stale = {line.split(" ")[0] for line in template_problems(FOLDER)}
    failed = 0
    for spec in specs:
        names = [template_name(spec, part) for part in template_parts(spec)]
        if not argv and not stale.intersection(names):
            continue
        start = time.perf_counter()
        try:
            records = make_template(spec, FOLDER)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            failed += 1
            print(f"{spec.id}: {type(e).__name__}: {str(e).splitlines()[0][:300]}", file=sys.stderr, flush=True)
            continue
        _record(records)
        sizes = ", ".join(f"{n} {r['bytes'] / 1e6:.2f} MB (diff {r['max_diff_to_export']:.1e})"
                          for n, r in records.items())
        print(f"{spec.id}: {sizes} in {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

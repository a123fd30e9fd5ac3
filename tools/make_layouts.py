"""Write restorer/data/layouts.json.gz: the tensor names and shapes of every network in
models/catalog.toml, so `restorer-cli models add` recognises a checkpoint without torch.

    python tools/make_layouts.py            # rewrite the table (needs torch)
    python tools/make_layouts.py --check    # exit 1 if the table is stale

One entry per catalog entry whose arch is registered (restorer.archs.ARCHS) and that lists
files: key "<arch>|<sha1 of json.dumps(hparams, sort_keys=True)>" (restorer.zoo.recognise.
layout_key) -> [[name, shape], ...] in state_dict order, from the module built on torch's meta
device (restorer.archs.tensor_layout). Rerun after changing an architecture or the catalog;
tests/test_torchfree_weights.py checks that the table is current.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "restorer" / "data" / "layouts.json.gz"


def catalog_specs():
    """The packaged catalog's entries that can be recognised (never the user's own)."""
    sys.path.insert(0, str(ROOT))
    from restorer.archs import ARCHS
    from restorer.zoo.catalog import parse

    catalog = parse((ROOT / "models" / "catalog.toml").read_text(encoding="utf-8"))
    return [s for s in catalog if s.arch in ARCHS and s.files]


def layouts(specs=None) -> dict[str, list]:
    from restorer.archs import tensor_layout
    from restorer.zoo.recognise import layout_key

    table = {}
    for spec in specs if specs is not None else catalog_specs():
        key = layout_key(spec.arch, spec.hparams)
        if key not in table:
            layout = tensor_layout(spec.arch, json.dumps(spec.hparams, sort_keys=True))
            table[key] = [[name, list(shape)] for name, shape in layout.items()]
    return table


def render(table: dict[str, list]) -> bytes:
    """The file's bytes: compact JSON with sorted keys, gzip without a timestamp, so the same
    table always gives the same file."""
    text = json.dumps({"version": 1, "layouts": table}, sort_keys=True, separators=(",", ":"))
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def main(argv: list[str]) -> int:
    blob = render(layouts())
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_bytes() != blob:
            print(f"{TARGET.relative_to(ROOT)} is stale: run python tools/make_layouts.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_bytes(blob)
    print(f"wrote {TARGET.relative_to(ROOT)} ({len(blob)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

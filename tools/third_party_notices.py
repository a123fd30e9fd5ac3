"""Write THIRD_PARTY_NOTICES.md from models/catalog.toml: the licence of every model restorer
can download or import, grouped by family, non-commercial ones marked.

    python tools/third_party_notices.py            # rewrite the file
    python tools/third_party_notices.py --check    # exit 1 if the file is stale (a test runs this)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "THIRD_PARTY_NOTICES.md"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from restorer.zoo.catalog import parse

    catalog = parse((ROOT / "models" / "catalog.toml").read_text(encoding="utf-8"))
    lines = [
        "# Third-party notices",
        "",
        "restorer's own code is under the Apache License 2.0 (LICENSE). It ships no model weights:",
        "each network's weights are downloaded (or imported) by the user from their authors' release,",
        "under the licence below. Models marked **non-commercial** may not be used commercially.",
        "This file is generated from models/catalog.toml by `python tools/third_party_notices.py`.",
        "",
        "| model | family | licence | source |",
        "| --- | --- | --- | --- |",
    ]
    for spec in sorted(catalog, key=lambda s: (s.family, s.id)):
        if spec.builtin or not spec.released:
            continue
        licence = spec.licence or "not stated by the authors"
        if spec.non_commercial:
            licence = f"**non-commercial**: {licence}"
        source = next((f.url for f in spec.files if f.url), "") or spec.paper
        lines.append(f"| {spec.id} | {spec.family} | {licence.replace('|', '/')} | {source} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not TARGET.is_file() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.name} is stale: run python tools/third_party_notices.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Write the ONNX graph templates restorer ships (restorer/data/templates/), one per
architecture and hyperparameter set of the catalog's released checkpoints. Needs torch.

    python tools/make_templates.py [ID ...]     # all missing templates, or those of these models
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from restorer.archs import ARCHS  # noqa: E402
from restorer.convert.templates import make_template  # noqa: E402
from restorer.zoo.catalog import load_catalog  # noqa: E402
from restorer.zoo.templates import template_key  # noqa: E402

FOLDER = ROOT / "restorer" / "data" / "templates"


def main(ids: list[str]) -> int:
    catalog = load_catalog()
    specs = [catalog.get(i) for i in ids] if ids else [
        s for s in catalog if s.released and s.files and s.arch in ARCHS and s.arch not in ("BertModel", "InstructIRLMHead")]
    done = set()
    for spec in specs:
        key = template_key(spec.arch, spec.hparams)
        target = FOLDER / f"{key}.onnx"
        if key in done or (target.exists() and not ids):
            continue
        start = time.perf_counter()
        try:
            make_template(spec, target)
        except Exception as e:  # noqa: BLE001 - report and go on with the others
            print(f"{spec.id}: {type(e).__name__}: {str(e).splitlines()[0][:200]}", file=sys.stderr)
            continue
        done.add(key)
        print(f"{spec.id}: {target.name} {target.stat().st_size / 1e6:.2f} MB in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

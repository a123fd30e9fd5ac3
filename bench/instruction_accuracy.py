"""Accuracy of restorer.plan.instructions on labelled instruction sets, for the README.

    python bench/instruction_accuracy.py [FILE.json ...]

Each file holds records {"instruction", "task"}; a record counts as right when the first
planned step is its task (labels such as "superresolution" are mapped, see LABEL_ALIASES).
Without arguments: the InstructIR sample and our held-out phrasings in tests/fixtures.
"""

import sys
import time
from pathlib import Path

from restorer.plan.instructions import accuracy

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "instructions"


def main(paths: list[str]) -> None:
    for path in paths or [FIXTURES / "instructions.json", FIXTURES / "heldout.json"]:
        misses: list = []
        started = time.perf_counter()
        share = accuracy(path, misses)
        seconds = time.perf_counter() - started
        print(f"{Path(path).name}: {share:.1%} first-step accuracy ({seconds * 1000:.0f} ms)")
        for instruction, label, got in misses:
            print(f"  miss: {instruction!r}: expected {label}, got {got}")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Write the documentation pages generated from the code.

    python scripts/docs.py           # write docs/reference/{recipe,report}.md
    python scripts/docs.py --check   # exit 1 when a committed page is stale

The benchmarks page has its own generator (bench/tables.py), over bench/results/.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from potstill.config.reference import recipe_reference, report_reference
from potstill.util.io import atomic_write_text

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = {
    DOCS / "reference" / "recipe.md": recipe_reference,
    DOCS / "reference" / "report.md": report_reference,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check the pages are current")
    args = parser.parse_args()
    stale = []
    for path, render in PAGES.items():
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(path.relative_to(DOCS.parent))
        else:
            atomic_write_text(path, text)
            print(f"wrote {path.relative_to(DOCS.parent)}")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}; run python scripts/docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make tour`: execute every notebook headless into runs/<timestamp>/, with HTML copies.

The executed copies carry numbers from *your* machine; the committed notebooks stay clean.
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from labs.core.notebooks import NOTEBOOKS_DIR, execute_notebook


def main() -> int:
    out_dir = NOTEBOOKS_DIR.parent / "runs" / time.strftime("%Y%m%d-%H%M%S")
    notebooks = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    failures: list[str] = []
    for path in tqdm(notebooks, desc="notebooks", unit="nb"):
        try:
            result = execute_notebook(path, out_dir)
            tqdm.write(f"ok    {path.name}  ({result.seconds:.0f} s)")
        except Exception as exc:  # keep going: one broken lab should not hide the others
            failures.append(path.name)
            tqdm.write(f"FAIL  {path.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    print(f"\nExecuted notebooks and HTML copies: {out_dir}")
    if failures:
        print(f"Failed: {', '.join(failures)} (their partial output is in the folder above)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""Kill rate per module from mutmut's results (``make mutate`` prints it after ``mutmut run``).

Reads ``mutants/<path>.meta`` (mutmut 3: each mutant's exit code). Killed = the fast suite
failed (or timed out) with the mutant in place; survived = it passed; mutants no fast test
reaches count as survivors too. Mutants not yet checked are left out of the rate and
counted separately."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from mutmut.stats import status_by_exit_code

KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def summarise(root: Path) -> list[tuple[str, int, int, int]]:
    rows = []
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        status = [status_by_exit_code[c] for c in codes]
        done = [s for s in status if s != "not checked"]
        rows.append((str(meta.relative_to(root / "mutants"))[: -len(".meta")], sum(s in KILLED for s in done),
                     len(done), len(status) - len(done)))
    return rows


def main() -> None:
    rows = summarise(Path(sys.argv[1] if len(sys.argv) > 1 else "."))
    print(f"{'module':40s} {'killed':>7s} {'checked':>8s} {'rate':>7s} {'unchecked':>10s}")
    for name, killed, done, pending in rows:
        rate = f"{100 * killed / done:.1f}%" if done else "-"
        print(f"{name:40s} {killed:7d} {done:8d} {rate:>7s} {pending:10d}")
    killed, done = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all':40s} {killed:7d} {done:8d} {100 * killed / max(done, 1):6.1f}% {sum(r[3] for r in rows):10d}")


if __name__ == "__main__":
    main()

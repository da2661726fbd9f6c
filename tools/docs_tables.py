"""Result tables inside Markdown documents, rendered from committed ``results.json`` files.

A repository tool (not part of the installed package)::

    python tools/docs_tables.py docs/results.md docs/notes/*.md

A document marks each table with the folder of its run, relative to the document::

    <!-- results: full-budget/table1a -->
    | # | network | ... |
    <!-- end results -->

`sync_document` rewrites every marked block from its ``results.json``; `stale_blocks`
lists the blocks that differ from what their file gives (a test runs it on
``docs/results.md`` and on every dated note ``docs/notes/*.md``, whose blocks name their
folders as ``../full-budget/...``, so the documents cannot drift from the runs). The tables show both
readouts: strict (a tied top count is wrong) and argmax (ties broken by the lowest index,
the paper's most likely readout), with mean ± sample std over seeds.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any, Mapping

from hnn_bridge.report import load_results

__all__ = ["render_results_block", "stale_blocks", "sync_document"]

BLOCK = re.compile(r"(<!-- results: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end results -->)", re.S)


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.2f}" + (f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else "")


def render_results_block(results: Mapping[str, Any]) -> str:
    """The Markdown table of one run: per row, strict and argmax test accuracy (%), tie
    rate, the paper's value, argmax − paper, best-validation epoch(s) and seeds. A run made
    with ``--test-every-epoch`` adds the argmax accuracy of the best *test* epoch and that
    epoch (Fang et al.'s reporting; selection on test, so an optimistic figure)."""
    rows = results.get("rows", [])
    with_test = any(s.get("best_test_epoch") is not None for row in rows for s in row.get("seeds", []))
    head = "| # | network | coder | training | strict | argmax | ties | paper | argmax − paper | best epoch |"
    rule = "|---|---|---|---|---|---|---|---|---|---|"
    if with_test:
        head += " argmax at best test epoch | best test epoch |"
        rule += "---|---|"
    lines = [head + " seeds |", rule + "---|"]
    for row in rows:
        seeds = [s for s in row.get("seeds", []) if s.get("status") == "ok" and s.get("test_acc") is not None]
        strict = [100 * s["test_acc"] for s in seeds]
        argmax = [100 * s["test_acc_argmax"] for s in seeds]
        ties = [100 * s["test_tie_rate"] for s in seeds]
        paper = row.get("paper")
        diff = f"{statistics.fmean(argmax) - paper:+.2f}" if argmax and paper is not None else "–"
        tie = f"{statistics.fmean(ties):.2f}%" if ties else "–"
        best = ", ".join(str(s["best_epoch"]) for s in seeds) or "–"
        failed = [s for s in row.get("seeds", []) if s.get("status") != "ok"]
        count = f"{len(seeds)}" + (f" ({len(failed)} failed)" if failed else "")
        line = (
            f"| {row['row']} | {row['label']} | {row['coder'] or 'none'} | {row['training']} | "
            f"{_stat(strict)} | {_stat(argmax)} | {tie} | {'–' if paper is None else f'{paper:.2f}'} | "
            f"{diff} | {best} |"
        )
        if with_test:
            tested = [s for s in seeds if s.get("best_test_epoch") is not None]
            line += (
                f" {_stat([100 * s['best_test_acc_argmax'] for s in tested])} | "
                f"{', '.join(str(s['best_test_epoch']) for s in tested) or '–'} |"
            )
        lines.append(f"{line} {count} |")
    return "\n".join(lines) + "\n"


def _rendered(match: re.Match, base: Path) -> str:
    """The block ``match`` as its results.json gives it."""
    return render_results_block(load_results(base / match["path"]))


def sync_document(path: str | Path) -> int:
    """Rewrite every marked block of the document at ``path``; returns how many changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    changed = 0

    def fill(match: re.Match) -> str:
        nonlocal changed
        body = _rendered(match, path.parent)
        changed += body != match["body"]
        return match.group(1) + body + match.group(4)

    new = BLOCK.sub(fill, text)
    if changed:
        path.write_text(new, encoding="utf-8")
    return changed


def stale_blocks(path: str | Path) -> list[str]:
    """The run folders whose marked block in the document differs from their results.json."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return [m["path"] for m in BLOCK.finditer(text) if _rendered(m, path.parent) != m["body"]]


if __name__ == "__main__":  # python tools/docs_tables.py docs/results.md docs/notes/*.md
    import sys

    for doc in sys.argv[1:]:
        try:
            print(f"{doc}: {sync_document(doc)} block(s) rewritten")
        except FileNotFoundError as exc:  # a block names a run folder without results.json
            sys.exit(f"{doc}: nothing rewritten: {exc}")

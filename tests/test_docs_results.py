"""docs/results.md (the answer) and the dated notes under docs/notes/ (the record, one note
per investigation, indexed by docs/notes/lab-notebook.md) quote their tables from committed
results.json files, so the documents cannot drift from the runs (`tools/docs_tables.py`);
the results page's prose quotes no number that its tables lack."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

from hnn_bridge.report import load_results

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "docs_tables.py"
_spec = importlib.util.spec_from_file_location("docs_tables", TOOL)
docs_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(docs_tables)
BLOCK, render_results_block = docs_tables.BLOCK, docs_tables.render_results_block
stale_blocks, sync_document = docs_tables.stale_blocks, docs_tables.sync_document
DOCS = REPO / "docs"
RESULTS = DOCS / "results.md"
NOTES = sorted((DOCS / "notes").glob("*.md"))
INDEX = DOCS / "notes" / "lab-notebook.md"
# How many results blocks each dated note holds: the 39 tables of the lab notebook as it
# was until 2026-12-06, now one dated note per investigation, and the runs made since (the
# CIFAR-10 Table 1(b) with the bias after the filter). A table moved out of its note,
# lost, or added without updating this count fails the tests below.
NOTE_BLOCKS = {
    "2026-12-02-cifar-cpu-t8.md": 4,
    "2026-12-02-mnist-full-budget.md": 11,
    "2026-12-02-mnist-quick.md": 4,
    "2026-12-03-cifar-quick.md": 3,
    "2026-12-03-cifar-ties.md": 2,
    "2026-12-03-learning-rate.md": 1,
    "2026-12-04-augmentation.md": 2,
    "2026-12-05-cifar-cpu-t16.md": 6,
    "2026-12-05-input-token.md": 2,
    "2026-12-06-fang-bias.md": 5,
}


def _blocks(doc: Path) -> list[str]:
    return [m["path"] for m in BLOCK.finditer(doc.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("doc", [RESULTS, *NOTES], ids=lambda doc: doc.name)
def test_every_table_matches_its_results_json(doc: Path):
    blocks = _blocks(doc)
    if doc == RESULTS:
        assert "full-budget/table1a-lr1e-3" in blocks and "cpu/table1b-t16" in blocks
    assert len(blocks) == NOTE_BLOCKS.get(doc.name, 14 if doc == RESULTS else 0)
    assert all((doc.parent / p / "results.json").is_file() for p in blocks)
    assert stale_blocks(doc) == []


def test_each_run_is_quoted_by_one_dated_note_and_every_note_is_dated_and_in_the_site():
    """The notes that quote runs are named and headed by their date (`# 2026-12-05: ...`),
    no run is quoted by two notes, and every note is a page of the site and listed by the
    notebook's index."""
    assert {doc.name for doc in NOTES if _blocks(doc)} == set(NOTE_BLOCKS)
    quoted = [(doc.parent / p).resolve() for doc in NOTES for p in _blocks(doc)]
    assert len(quoted) == len(set(quoted)) == sum(NOTE_BLOCKS.values()) == 40
    index = INDEX.read_text(encoding="utf-8")
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    for doc in NOTES:
        assert f"notes/{doc.name}" in nav, doc.name
        if doc.name in NOTE_BLOCKS:
            date = doc.name[:10]
            assert re.fullmatch(r"2026-12-\d\d", date), doc.name
            assert doc.read_text(encoding="utf-8").startswith(f"# {date}: "), doc.name
            assert f"]({doc.name})" in index, doc.name


def test_every_committed_run_is_quoted_and_the_results_page_shows_a_subset():
    """Nothing measured is lost: every run folder under docs/ with a results.json is quoted
    by a Markdown page of docs/ (a dated note); the results page quotes a subset of the
    notes' runs (the current table of each paper table)."""
    runs = {p.parent.resolve() for p in DOCS.glob("*/*/results.json")}
    quoted = {(doc.parent / p).resolve() for doc in DOCS.rglob("*.md") for p in _blocks(doc)}
    assert runs - quoted == set()
    in_notes = {(doc.parent / p).resolve() for doc in NOTES for p in _blocks(doc)}
    on_page = {(RESULTS.parent / p).resolve() for p in _blocks(RESULTS)}
    assert on_page <= in_notes
    assert len(on_page) == 14


def test_every_number_in_the_results_prose_is_in_one_of_its_tables():
    """A two-decimal number (an accuracy, a spread, a paper value) written in the prose or
    the claims of docs/results.md must appear in a table that the page renders from a
    results.json, so a claim cannot quote a number that no run gave."""
    text = RESULTS.read_text(encoding="utf-8")
    tables = "".join(m["body"] for m in BLOCK.finditer(text))
    prose = BLOCK.sub("", text)
    quoted = set(re.findall(r"(?<![\d.])\d+\.\d\d(?![\d.])", prose))
    assert {"98.02", "98.27", "63.03", "62.05", "99.17"} <= quoted
    missing = sorted(n for n in quoted if not re.search(rf"(?<![\d.]){re.escape(n)}(?![\d.])", tables))
    assert missing == []


def test_no_doc_cites_a_file_outside_the_repository():
    for doc in DOCS.rglob("*.md"):
        assert "design.md" not in doc.read_text(encoding="utf-8"), doc


def test_sync_rewrites_a_stale_block_and_only_that(tmp_path: Path):
    shutil.copytree(DOCS / "full-budget" / "table1a", tmp_path / "run")
    good = render_results_block(load_results(tmp_path / "run"))
    assert (
        "| 1 | S784-S500-S10 (baseline) | duplicate | simultaneous | 97.04 | 97.45 | 0.94% | 98.13 | "
        "-0.68 | 68 | 1 |" in good
    )
    doc = tmp_path / "doc.md"
    doc.write_text(
        f"intro\n<!-- results: run -->\n{good.replace('97.45', '99.99')}<!-- end results -->\noutro\n"
    )
    assert stale_blocks(doc) == ["run"]
    assert sync_document(doc) == 1
    assert doc.read_text() == f"intro\n<!-- results: run -->\n{good}<!-- end results -->\noutro\n"
    assert stale_blocks(doc) == [] and sync_document(doc) == 0


def test_seeds_show_mean_and_sample_std(tmp_path: Path):
    results = json.loads((DOCS / "full-budget" / "table1a" / "results.json").read_text())
    row = results["rows"][0]
    first = row["seeds"][0]
    row["seeds"] = [
        first,
        {
            **first,
            "seed_index": 1,
            "test_acc": first["test_acc"] - 0.002,
            "test_acc_argmax": first["test_acc_argmax"] - 0.002,
            "best_epoch": 70,
        },
    ]
    results["rows"] = [row]
    line = render_results_block(results).splitlines()[2]
    assert (
        line == "| 1 | S784-S500-S10 (baseline) | duplicate | simultaneous | 96.94 ± 0.14 | 97.35 ± 0.14 | "
        "0.94% | "
        "98.13 | -0.78 | 68, 70 | 2 |"
    )


def test_a_run_scored_on_test_every_epoch_adds_the_best_test_epoch_columns(tmp_path: Path):
    results = json.loads((DOCS / "full-budget" / "table1a" / "results.json").read_text())
    row = results["rows"][0]
    row["seeds"] = [{**row["seeds"][0], "best_test_epoch": 91, "best_test_acc_argmax": 0.9771}]
    results["rows"] = [row]
    head, rule, line = render_results_block(results).splitlines()
    assert head.endswith("| best epoch | argmax at best test epoch | best test epoch | seeds |")
    assert rule.count("---") == 13
    assert (
        line == "| 1 | S784-S500-S10 (baseline) | duplicate | simultaneous | 97.04 | 97.45 | 0.94% | 98.13 | "
        "-0.68 | "
        "68 | 97.71 | 91 | 1 |"
    )


def test_the_command_names_a_missing_run_folder_and_leaves_the_document_alone(tmp_path: Path):
    import subprocess
    import sys

    shutil.copytree(DOCS / "full-budget" / "table1a", tmp_path / "run")
    doc = tmp_path / "doc.md"
    text = "<!-- results: run -->\nold\n<!-- end results -->\n<!-- results: gone -->\n<!-- end results -->\n"
    doc.write_text(text)
    proc = subprocess.run([sys.executable, str(TOOL), str(doc)], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        f"{doc}: nothing rewritten: {tmp_path / 'gone'}: no results.json "
        "(run `hnn-bridge recipe ... --out DIR` first)"
    )
    assert doc.read_text() == text  # the good block is not rewritten either

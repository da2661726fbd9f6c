"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing
anchor or an API name that no longer exists fails it). Needs the `docs` extra; skipped
without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs")
pytest.importorskip("mkdocstrings_handlers.python")
pytest.importorskip("material")


def test_mkdocs_build_strict(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    api = (tmp_path / "api" / "snntorch" / "index.html").read_text(encoding="utf-8")
    assert 'id="adapters.snntorch.IIRLeaky"' in api
    neuron = (tmp_path / "api" / "neuron" / "index.html").read_text(encoding="utf-8")
    assert 'id="hnn_bridge.neuron.IIRNeuron"' in neuron and 'id="hnn_bridge.functional.charge"' in neuron
    results = (tmp_path / "results" / "index.html").read_text(encoding="utf-8")
    assert "full-budget/table1a-lr1e-3/accuracy.png" in results
    assert (tmp_path / "full-budget" / "table1a-lr1e-3" / "accuracy.png").is_file()

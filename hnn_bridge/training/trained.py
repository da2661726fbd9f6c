"""A trained network back from a finished run folder (``results.json`` + ``checkpoints/``).

The runner saves each job's best-validation weights with the settings they were trained
with (`hnn_bridge.training.runner`); `load_trained` rebuilds that network and loads them.
A setting added after the file was written takes the value that reproduces the runs
before it (`hnn_bridge.recipe.ADDED_LATER`, e.g. the bias placement before 2026-12-06).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from ..builder import HybridNet, build
from ..params import IIRParams
from ..recipe import ADDED_LATER, Settings
from .checkpoint import torch_load

__all__ = ["TrainedRunError", "load_trained", "settings_of"]


class TrainedRunError(ValueError):
    """A run folder, row or seed that holds no trained network (the message says why)."""


def settings_of(saved: Mapping[str, Any]) -> Settings:
    """The `Settings` a weights file was trained with (missing keys: as before they existed)."""
    known = {f.name for f in fields(Settings)}
    values = {**ADDED_LATER, **{k: v for k, v in saved.items() if k in known}}
    values["lr_milestones"] = tuple(values.get("lr_milestones", ()))
    values["neuron"] = IIRParams.from_any(values.get("neuron"))
    return Settings(**values)


def load_trained(run_dir: str | Path, row: int, seed_index: int = 0) -> HybridNet:
    """The best-validation network of ``row`` (1-based, as in table.md) and seed
    ``seed_index`` of the run in ``run_dir``, in eval mode."""
    run_dir = Path(run_dir)
    results_path = run_dir / "results.json"
    if not results_path.is_file():
        raise TrainedRunError(
            f"{run_dir}: no results.json; give the --out folder of a `hnn-bridge recipe` or `train` run"
        )
    rows = json.loads(results_path.read_text(encoding="utf-8")).get("rows", [])
    match = [r for r in rows if r.get("row") == row]
    if not match:
        raise TrainedRunError(
            f"{run_dir}: no row {row}; the run has rows "
            f"{', '.join(str(r.get('row')) for r in rows) or 'none'}"
        )
    seeds = [s for s in match[0].get("seeds", []) if s.get("seed_index", 0) == seed_index]
    if not seeds or not seeds[0].get("checkpoint"):
        raise TrainedRunError(
            f"{run_dir}: row {row} seed {seed_index} has no trained weights "
            "(not finished; continue the run with --resume)"
        )
    weights = run_dir / seeds[0]["checkpoint"]
    if not weights.is_file():
        raise TrainedRunError(f"{weights}: the weights file named in results.json is missing")
    saved = torch_load(weights)
    s = settings_of(saved["settings"])
    # the reference backend: the same spikes as every other backend, on any device
    model = build(s.network(saved["arch"], saved["coder"], saved["training"], backend="reference"))
    model.load_state_dict(saved["model"])
    return model.eval()

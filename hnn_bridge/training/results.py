"""What a recipe run writes about its jobs: the rows of ``epochs.csv``, the content of
``results.json`` (per row, a summary of every seed), the warnings an epoch raises, and the
messages that name a saved file and what differs from it."""

from __future__ import annotations

import csv
import io
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from .. import __version__
from ..recipe import ADDED_LATER, Recipe, RowSpec
from .jobs import Job
from .loop import TIE_RULE

__all__ = [
    "EPOCH_FIELDS",
    "RESULTS_FORMAT",
    "best_test_epoch",
    "epoch_log_rows",
    "epoch_warnings",
    "epochs_csv",
    "fingerprint_changes",
    "retrain_hint",
    "row_status",
    "run_results",
    "seed_summary",
]

RESULTS_FORMAT = "hnn-bridge-results/1"
EPOCH_FIELDS = (
    "job",
    "row",
    "label",
    "seed",
    "phase",
    "epoch",
    "train_loss",
    "train_acc",
    "val_acc",
    "val_acc_argmax",
    "val_tie_rate",
    "lr",
    "seconds",
    "best",
    "train_out_silent",
    "train_out_saturated",
    "train_out_dead",
    "val_rates",
    "test_acc",
    "test_acc_argmax",
    "test_tie_rate",
)


# ---------------------------------------------------------------------------- epochs.csv


def epoch_log_rows(job: Job, row: RowSpec, log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``epochs.csv`` rows of ``job`` (run for ``row``): its `EpochRecord` dicts with the
    job, row, label, seed and phase (``pretrain`` for a separate row's pure ANN); lists
    and per-layer rates become one cell each."""
    phase = "pretrain" if job.kind == "ann" and row.coder is not None else "train"
    rows = []
    for r in log:
        entry = {k: r[k] for k in EPOCH_FIELDS if k in r}
        if isinstance(entry.get("train_out_dead"), list):  # one cell: "3 7"
            entry["train_out_dead"] = " ".join(map(str, entry["train_out_dead"]))
        if isinstance(entry.get("val_rates"), Mapping):  # one cell: "2:S32C3=0.1031 4:S64C3=0.0472"
            entry["val_rates"] = " ".join(f"{k}={v:.4f}" for k, v in entry["val_rates"].items())
        rows.append(
            {
                "job": job.name,
                "row": row.index,
                "label": row.label,
                "seed": job.seed_index,
                "phase": phase,
                **entry,
            }
        )
    return rows


def epochs_csv(logs: Iterable[list[dict[str, Any]]]) -> str:
    """The text of ``epochs.csv``: a header of `EPOCH_FIELDS`, then every job's rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EPOCH_FIELDS, lineterminator="\n")
    writer.writeheader()
    for rows in logs:
        writer.writerows(rows)
    return buffer.getvalue()


def epoch_warnings(record: Mapping[str, Any]) -> list[str]:
    """What a user must see about one epoch (an `EpochRecord` dict): an output layer that
    was silent, or saturated (every class at every step), on every training image, output
    neurons (classes) that never fired on a training image while others did, and hidden
    spiking layers that never fired on the validation set; each names the layer."""
    rates = record.get("val_rates") or {}
    out = list(rates)[-1] if rates else "the output layer"
    e = record["epoch"]
    found = []
    if record.get("train_out_silent") == 1.0:
        found.append(
            f"epoch {e}: output layer {out} was silent for the whole epoch (no spike for any "
            'training image, so no gradient reaches the weights); try norm = "batch", a larger '
            "init_rate or lr"
        )
    if record.get("train_out_saturated") == 1.0:
        found.append(
            f"epoch {e}: output layer {out} fired at every step for every class on every training "
            'image of the epoch (every prediction is a tie); try norm = "batch" or a smaller lr'
        )
    dead = record.get("train_out_dead")
    if dead and record.get("train_out_silent") != 1.0:
        classes = ", ".join(map(str, dead))
        found.append(
            f"epoch {e}: output layer {out}: the neuron of class(es) {classes} fired on no training "
            'image of the epoch (never predicted, almost no surrogate gradient); try norm = "batch" '
            "or a larger init_rate"
        )
    for key, rate in list(rates.items())[:-1]:
        if rate == 0.0:
            found.append(f"epoch {e}: spiking layer {key} did not fire on the validation set")
    return found


# ---------------------------------------------------------------------------- saved files


def fingerprint_changes(saved: Any, now: Mapping[str, Any]) -> str:
    """What differs between a saved job fingerprint and this run's, e.g.
    ``norm: 'none' -> 'batch'`` (a setting missing from a fingerprint has its
    `ADDED_LATER` value)."""
    if not isinstance(saved, Mapping):
        return "no fingerprint saved"
    now = json.loads(json.dumps(now))
    old_s, new_s = dict(saved.get("settings") or {}), dict(now.get("settings") or {})
    for key, before in ADDED_LATER.items():
        old_s.setdefault(key, before)
        new_s.setdefault(key, before)
    diffs = [
        f"{k}: {old_s.get(k)!r} -> {new_s.get(k)!r}"
        for k in sorted(set(old_s) | set(new_s))
        if old_s.get(k) != new_s.get(k)
    ]
    diffs += [
        f"{k}: {saved.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(saved) | set(now))
        if k not in ("settings", "twin") and saved.get(k) != now.get(k)
    ]
    if not diffs and saved.get("twin") != now.get("twin"):
        diffs.append("the pre-trained ANN's settings")
    return "; ".join(diffs) or "unknown difference"


def retrain_hint(*paths: Path) -> str:
    """How to have a job trained again: delete its files."""
    return f"delete {' and '.join(map(str, paths))} to train that job again (the other rows are kept)"


# ---------------------------------------------------------------------------- results.json


def seed_summary(job: dict[str, Any]) -> dict[str, Any]:
    """One seed of a row in ``results.json``, from its job result."""
    test = job.get("test") or {}
    return {
        "seed_index": job["seed_index"],
        "seed": job["seed"],
        "status": job["status"],
        "error": job["error"],
        "test_acc": test.get("acc"),
        "test_acc_argmax": test.get("acc_argmax"),
        "test_tie_rate": test.get("tie_rate"),
        "test_silent_rate": test.get("silent_rate"),
        "best_epoch": job["best_epoch"],
        "best_val_acc": (job.get("best_val") or {}).get("acc"),
        "epochs": job["epochs"],
        "epochs_run": job["epochs_run"],
        "wall_s": job["wall_s"],
        "pretrain": job.get("pretrain"),
        "checkpoint": job.get("checkpoint"),
        "job": job["job"],
        "reused": bool(job.get("reused")),
        "resumed_after": job.get("resumed_after", []),
        "warnings": job.get("warnings", []),
        "val_rates": [r["val_rates"] for r in job.get("log", []) if r.get("val_rates")],
        **{
            k: (test.get("ops") or {}).get(k)
            for k in ("macs", "acs", "energy_uj", "effective_macs", "energy")
        },
        **best_test_epoch(job.get("log", [])),
    }


def best_test_epoch(log: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest argmax test accuracy (the first of equals, like the
    ``np.argmax`` of Fang et al.'s reference code) and its scores; empty unless every
    epoch was scored on test (``RunOptions.test_every_epoch``)."""
    if not log or any(r.get("test_acc_argmax") is None for r in log):
        return {}
    best = max(log, key=lambda r: (r["test_acc_argmax"], -r["epoch"]))
    return {
        "best_test_epoch": best["epoch"],
        "best_test_acc": best["test_acc"],
        "best_test_acc_argmax": best["test_acc_argmax"],
        "best_test_tie_rate": best["test_tie_rate"],
    }


def row_status(seeds: list[dict[str, Any]], wanted: int) -> str:
    """``failed`` when a seed failed, ``ok`` when ``wanted`` seeds are done, else ``pending``."""
    if any(s["status"] != "ok" for s in seeds):
        return "failed"
    return "ok" if len(seeds) >= wanted else "pending"


def run_results(
    recipe: Recipe,
    seeds_done: Mapping[int, list[dict[str, Any]]],
    *,
    seeds: int,
    device: str,
    processes: int,
    data: Iterable[str],
    finished: bool,
    wall_s: float,
) -> dict[str, Any]:
    """The content of ``results.json`` (`hnn_bridge.report` reads it): the recipe, where and
    how it ran, and per row its seeds done so far (``seeds_done``: row index -> job results)."""
    rows = []
    for row in recipe.rows:
        entry = row.as_dict()
        entry["seeds"] = [seed_summary(r) for r in seeds_done.get(row.index, [])]
        entry["status"] = row_status(entry["seeds"], seeds)
        rows.append(entry)
    r = recipe
    return {
        "format": RESULTS_FORMAT,
        "recipe": {
            "name": r.name,
            "title": r.title,
            "paper_table": r.paper_table,
            "dataset": r.dataset,
            "source": r.source,
            "description": r.description,
        },
        "profile": r.profile,
        "overrides": dict(r.overrides),
        "seeds": seeds,
        "device": device,
        "processes": processes,
        "data": sorted(set(data)),
        "tie_rule": TIE_RULE,
        "finished": finished,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": wall_s,
        "versions": {
            "hnn_bridge": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "rows": rows,
    }

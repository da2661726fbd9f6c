"""Report files (issue 4): the Markdown table, the CSV, the accuracy plot, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hnn_bridge.report import (
    CSV_FIELDS,
    load_results,
    plot_accuracy,
    plot_energy,
    render_table,
    summarize_row,
    write_csv,
    write_report,
)
from hnn_bridge.training import checkpoint
from hnn_bridge.training.loop import TIE_RULE


def seed(acc: float, **kw) -> dict:
    base = {
        "seed_index": 0,
        "seed": 1,
        "status": "ok",
        "error": None,
        "test_acc": acc,
        "test_acc_argmax": acc + 0.01,
        "test_tie_rate": 0.02,
        "test_silent_rate": 0.01,
        "best_epoch": 4,
        "best_val_acc": acc,
        "epochs": 5,
        "epochs_run": 5,
        "wall_s": 30.0,
        "pretrain": None,
        "checkpoint": None,
        "job": "j",
        "reused": False,
        "macs": 397_000.0,
        "acs": 1_000_000.0,
        "energy_uj": 397_000 * 4.6e-6 + 1_000_000 * 0.9e-6,
    }
    return {**base, **kw}


def row(
    index: int,
    arch: str,
    coder: str | None,
    training: str,
    paper: float | None,
    seeds: list,
    share: float,
    status: str = "ok",
) -> dict:
    return {
        "row": index,
        "label": arch,
        "arch": arch,
        "coder": coder,
        "training": training,
        "paper": paper,
        "al_share": share,
        "note": "",
        "seeds": seeds,
        "status": status,
        "settings": {
            "dataset": "mnist",
            "epochs": 5,
            "steps": 10,
            "batch_size": 64,
            "lr": 1e-4,
            "lr_milestones": [50],
            "lr_gamma": 0.1,
            "dropout": 0.3,
            "input_mode": "direct",
        },
    }


@pytest.fixture
def results() -> dict:
    return {
        "format": "hnn-bridge-results/1",
        "recipe": {
            "name": "table1a",
            "title": "MLPs with duplicate coding on MNIST",
            "paper_table": "Table 1(a)",
            "dataset": "mnist",
            "source": "recipes/table1a.toml",
        },
        "profile": "full",
        "overrides": {"epochs": 5},
        "seeds": 2,
        "device": "cpu",
        "data": ["mnist (70000 images)"],
        "tie_rule": TIE_RULE,
        "finished": True,
        "rows": [
            row(
                1,
                "S784-S500-S10",
                "duplicate",
                "simultaneous",
                98.13,
                [seed(0.97), seed(0.98, seed_index=1)],
                0.0,
            ),
            row(
                2,
                "A784-A500-S10",
                "duplicate",
                "separate",
                99.17,
                [
                    seed(0.5, status="failed", error="non-finite training loss (nan) in epoch 2, batch 3"),
                    seed(0.98, seed_index=1),
                ],
                2 / 3,
                status="failed",
            ),
            row(3, "A784-A500-A10", None, "simultaneous", 98.23, [seed(0.981)], 1.0, status="pending"),
            row(4, "A784-S500-S10", "duplicate", "simultaneous", None, [], 1 / 3, status="pending"),
        ],
    }


def test_summarize_row_mean_std_diff(results: dict) -> None:
    s = summarize_row(results["rows"][0])
    assert s["acc_mean"] == pytest.approx(97.5) and s["acc_std"] == pytest.approx(0.7071, abs=1e-4)
    assert s["diff"] == pytest.approx(97.5 - 98.13) and s["tie_rate_mean"] == pytest.approx(2.0)
    assert s["acc_argmax_mean"] == pytest.approx(98.5) and s["n_seeds"] == 2 and s["best_epochs"] == "4,4"
    assert s["wall_s"] == 60.0 and s["steps"] == 10
    assert summarize_row(results["rows"][2])["steps"] is None  # a pure ANN has no T


def test_render_table(results: dict) -> None:
    text = render_table(results)
    assert text.startswith("## Table 1(a): MLPs with duplicate coding on MNIST\n")
    assert "profile full, overrides epochs=5" in text
    assert "Budget: dataset mnist, 5 epochs, T = 10, batch 64, Adam lr 0.0001, x0.1 at epochs 50" in text
    assert (
        "| 1 | S784-S500-S10 | duplicate | simultaneous | 97.50 ± 0.71 | 98.13 | -0.63 | 98.50 | 2.00% | "
        "0.397 | 1 | 2.726 | 5 (4,4) | 1m00s |"
    ) in text
    assert (
        "| 2 | A784-A500-S10 | duplicate | separate | failed: non-finite training loss (nan) in epoch 2"
        in text
    )
    assert "| 3 | A784-A500-A10 | none | simultaneous | 98.10 ± 0.00 (1/2 seeds) | 98.23 | -0.13 |" in text
    assert (
        "| 4 | A784-S500-S10 | duplicate | simultaneous | pending | – | – | – | – | – | – | – | – |" in text
    )
    assert "energy at 45 nm, float32: 4.6 pJ per MAC, 0.9 pJ per AC" in text
    assert "mean ± sample standard deviation over 2 seed(s)" in text
    assert (
        "Tie rule: Accuracy counts a prediction as correct only when the true class has the unique highest"
        in text
    )


def test_csv(results: dict) -> None:
    lines = write_csv(results).splitlines()
    assert lines[0].split(",") == list(CSV_FIELDS)
    assert len(lines) == 5
    assert lines[1].startswith("1,S784-S500-S10,S784-S500-S10,duplicate,simultaneous,direct,0.0,98.13,97.5,")


def test_plots_are_pngs(results: dict) -> None:
    for png in (plot_accuracy(results), plot_energy(results)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_write_report_and_load(results: dict, tmp_path: Path) -> None:
    paths = write_report(tmp_path, results)
    assert sorted(p.name for p in paths.values()) == [
        "accuracy.png",
        "energy.png",
        "rates.png",
        "results.csv",
        "results.json",
        "table.md",
    ]
    assert load_results(tmp_path) == json.loads(json.dumps(results))
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in paths.values())  # no temporary files left
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_results(tmp_path / "elsewhere")
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(ValueError, match="not an hnn-bridge results file"):
        load_results(tmp_path / "bad.json")


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "table.md"
    checkpoint.atomic_write_text(target, "old")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # the usual mode, not mkstemp's 0600

    def fail(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["table.md"]  # the temporary file was removed


def test_render_table_names_the_best_test_epoch_when_every_epoch_was_scored(results: dict) -> None:
    seed = results["rows"][0]["seeds"][0]
    text = render_table(
        {
            **results,
            "rows": [
                {
                    **results["rows"][0],
                    "seeds": [{**seed, "best_test_epoch": 3, "best_test_acc_argmax": 0.9912}],
                }
            ],
        }
    )
    assert (
        f"- row 1 seed {seed.get('seed_index', 0)}: best *test* epoch 3 (99.12% argmax; every epoch was "
        "scored on "
        "test, as Fang et al.'s code reports; the table shows the best-validation epoch)."
    ) in text


def test_render_table_says_which_rows_were_read_back_not_trained(results: dict) -> None:
    """A finished job read back by --resume (or copied in from an earlier run with the same
    fingerprint) is named, so that its wall time is not read as this invocation's."""
    results["rows"][0]["seeds"][1]["reused"] = True
    results["rows"][0]["seeds"][1]["job"] = "r01-S784-S500-S10-duplicate-simultaneous-s1"
    text = render_table(results)
    assert (
        "- row 1 seed 1 was read back finished from r01-S784-S500-S10-duplicate-simultaneous-s1.json in the "
        "checkpoints folder, not trained by this invocation (same settings; wall is that training's)."
    ) in text
    assert "row 1 seed 0 was read back" not in text

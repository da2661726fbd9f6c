"""The parts of the recipe runner, each on its own: jobs and their fingerprints
(`training.jobs`), the ``--jobs`` schedule (`training.pool`), the output lock
(`training.output_lock`) and what a run writes (`training.results`)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from helpers import TINY_RECIPE

from hnn_bridge.recipe import load_recipe
from hnn_bridge.training.jobs import SNN_ONLY, derive_seed, row_job
from hnn_bridge.training.output_lock import OutputBusy, exclusive
from hnn_bridge.training.pool import schedule
from hnn_bridge.training.results import (
    EPOCH_FIELDS,
    best_test_epoch,
    epoch_log_rows,
    epochs_csv,
    fingerprint_changes,
    row_status,
)

# row 1: separate (pre-trains the pure ANN A784-A32-A10); row 2: that pure ANN itself;
# row 3: simultaneous; row 4: separate without ALs to pre-train
RECIPE = (
    TINY_RECIPE
    + """
[[rows]]
arch = "A784-A32-A10"
coder = "none"
training = "simultaneous"

[[rows]]
arch = "A784-S16-S10"
coder = "duplicate"
training = "separate"
"""
)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("recipe") / "tiny.toml"
    path.write_text(RECIPE)
    return load_recipe(path).configure()


def test_seeds_depend_on_every_part_and_nothing_else():
    assert derive_seed(1, 0, "hnn", "A") == derive_seed(1, 0, "hnn", "A") < 2**63
    assert (
        len(
            {
                derive_seed(1, 0, "hnn", "A"),
                derive_seed(2, 0, "hnn", "A"),
                derive_seed(1, 1, "hnn", "A"),
                derive_seed(1, 0, "ann", "A"),
                derive_seed(1, 0, "hnn", "B"),
            }
        )
        == 5
    )


def test_a_separate_row_and_the_pure_ann_row_share_one_ann_job(recipe):
    separate, gaussian, ann, no_als = (row_job(row, 0) for row in recipe.rows)
    assert (
        separate.twin is not None
        and separate.twin.name == ann.name
        and ann.kind == "ann"
        and ann.twin is None
    )
    assert separate.twin.fingerprint == ann.fingerprint
    assert separate.fingerprint["twin"] == ann.fingerprint and gaussian.twin is None
    assert row_job(recipe.rows[0], 1).twin.name != ann.name  # another seed index, another ANN
    assert set(ann.fingerprint["settings"]).isdisjoint(SNN_ONLY)  # T, neuron ... do not change a pure ANN
    assert no_als.twin.arch == "A784-A16-A10"  # all artificial: the runner decides whether to train it


def test_the_jobs_schedule_trains_each_needed_ann_once_and_first(recipe):
    plan = schedule(recipe, 2, needs_twin=lambda job: job.arch != "A784-S16-S10")
    separate0, ann0 = row_job(recipe.rows[0], 0), row_job(recipe.rows[2], 0)
    assert len(plan.order) == 8 and list(plan.twins) == [ann0.name, row_job(recipe.rows[0], 1).twin.name]
    assert plan.twins[ann0.name][1] is recipe.rows[0]  # trained as the job of the row that needs it first
    queued = [job.name for job, _row in plan.queued]
    assert queued[:2] == list(plan.twins) and len(queued) == len(set(queued)) == 6
    assert separate0.name not in queued and [job.name for _row, job in plan.waiting[ann0.name]] == [
        separate0.name
    ]
    assert row_job(recipe.rows[3], 0).name in queued  # no ALs to pre-train: queued at the start
    alone = schedule(recipe, 1, needs_twin=lambda job: False)
    assert not alone.twins and not alone.waiting and len(alone.queued) == 4


def test_one_run_at_a_time_per_output_folder(tmp_path: Path):
    with exclusive(tmp_path):
        with pytest.raises(OutputBusy, match=f"another hnn-bridge run is writing to {tmp_path}"):
            with exclusive(tmp_path):
                pass
    with exclusive(tmp_path):  # released when the run ends
        pass


def test_epoch_log_rows_and_the_csv(recipe):
    separate = row_job(recipe.rows[0], 0)
    log = [
        {
            "epoch": 1,
            "train_loss": 2.0,
            "train_out_dead": [3, 7],
            "val_rates": {"2:S10": 0.12345},
            "not_a_column": 1,
        }
    ]
    pre, own = (
        epoch_log_rows(separate.twin, recipe.rows[0], log),
        epoch_log_rows(separate, recipe.rows[0], log),
    )
    assert pre[0]["phase"] == "pretrain" and own[0]["phase"] == "train" and own[0]["job"] == separate.name
    assert own[0]["train_out_dead"] == "3 7" and own[0]["val_rates"] == "2:S10=0.1235"
    assert "not_a_column" not in own[0] and log[0]["train_out_dead"] == [3, 7]  # the log is left alone
    rows = list(csv.DictReader(io.StringIO(epochs_csv([pre, own]))))
    assert tuple(rows[0]) == EPOCH_FIELDS and [r["phase"] for r in rows] == ["pretrain", "train"]


def test_best_test_epoch_is_the_first_of_equals_and_needs_every_epoch():
    log = [
        {"epoch": e, "test_acc": a - 0.01, "test_acc_argmax": a, "test_tie_rate": 0.0}
        for e, a in ((1, 0.5), (2, 0.7), (3, 0.7))
    ]
    assert best_test_epoch(log) == {
        "best_test_epoch": 2,
        "best_test_acc": 0.69,
        "best_test_acc_argmax": 0.7,
        "best_test_tie_rate": 0.0,
    }
    assert best_test_epoch(log + [{"epoch": 4, "test_acc_argmax": None}]) == {} and best_test_epoch([]) == {}


def test_row_status_and_fingerprint_changes():
    ok, bad = {"status": "ok"}, {"status": "failed"}
    assert (row_status([ok], 2), row_status([ok, ok], 2), row_status([ok, bad], 1)) == (
        "pending",
        "ok",
        "failed",
    )
    saved = {"kind": "hnn", "settings": {"lr": 0.001}, "twin": None}
    assert (
        fingerprint_changes(saved, {"kind": "hnn", "settings": {"lr": 0.01}, "twin": None})
        == "lr: 0.001 -> 0.01"
    )
    assert (
        fingerprint_changes(saved, {"kind": "hnn", "settings": {"lr": 0.001, "norm": "none"}, "twin": None})
        == "unknown difference"
    )  # a setting added later, at the value of the runs before it
    assert (
        fingerprint_changes(saved, {"kind": "hnn", "settings": {"lr": 0.001}, "twin": {"a": 1}})
        == "the pre-trained ANN's settings"
    )
    assert fingerprint_changes(None, saved) == "no fingerprint saved"

"""Seeing inside a run (issue 12): `norm` as a recipe setting and a CLI option, job
fingerprints that stay valid for runs made before it, per-layer firing rates in
epochs.csv and rates.png, and warnings that name a silent or saturated layer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import TINY_RECIPE, one_thread  # noqa: F401  (one_thread: a fixture)
from torch import nn

from hnn_bridge import build
from hnn_bridge.builder import NORMS
from hnn_bridge.cli import main
from hnn_bridge.recipe import RecipeError, Settings, build_row, load_recipe
from hnn_bridge.training.checkpoint import torch_load
from hnn_bridge.training.jobs import row_job
from hnn_bridge.training.runner import epoch_warnings

pytestmark = pytest.mark.usefixtures("one_thread")

# one epoch of the tiny recipe; row 1 trained simultaneously (deterministic at evaluation,
# unlike the Gaussian row 2, whose coder samples noise): a few seconds a row
GAUSS = TINY_RECIPE.replace("epochs = 2", "epochs = 1")
DUP = GAUSS.replace('training = "separate"', 'training = "simultaneous"')


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return path


def _cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_a_new_norm_kind_is_one_entry_of_norms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A norm kind is defined once, as an entry of `NORMS`: with one added, `build` and
    recipes take it and put its module after every weight op but the output's."""
    monkeypatch.setitem(NORMS, "group", lambda shape: nn.GroupNorm(1, shape[0]))
    model = build("A8C3-P2-S16-S10", input_shape=(1, 8, 8), norm="group", steps=2)
    assert [type(m).__name__ for m in model.modules() if isinstance(m, nn.GroupNorm)] == ["GroupNorm"] * 3
    assert model.settings["norm"] == "group" and model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    text = TINY_RECIPE.replace("dropout = 0.2", 'dropout = 0.2\nnorm = "group"')
    duplicate = load_recipe(_recipe(tmp_path, text)).configure().rows[0]
    assert sum(isinstance(m, nn.GroupNorm) for m in build_row(duplicate).modules()) == 2


def test_norm_is_a_recipe_setting(tmp_path: Path):
    text = TINY_RECIPE.replace("dropout = 0.2", 'dropout = 0.2\nnorm = "batch"')
    duplicate, gaussian = load_recipe(_recipe(tmp_path, text)).configure().rows
    assert duplicate.settings.norm == gaussian.settings.norm == "batch"

    def norms(row):
        return [
            type(m).__name__
            for m in build_row(row).modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)
        ]

    assert norms(duplicate) == ["BatchNorm1d", "BatchNorm1d"]  # after the A32 and the S10 weights
    assert norms(gaussian) == ["BatchNorm1d"]  # not on (mu, ln sigma), the Gaussian coder's input
    bad = _recipe(tmp_path, TINY_RECIPE.replace("dropout = 0.2", 'dropout = 0.2\nnorm = "layer"'))
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(err.value) == f"{bad}: [defaults]: key 'norm': expected one of 'none', 'batch', got 'layer'"


def test_norm_none_keeps_the_fingerprints_of_older_runs(tmp_path: Path):
    row = load_recipe(_recipe(tmp_path, TINY_RECIPE)).configure().rows[0]
    assert "norm" in Settings().as_dict() and "norm" not in Settings().identity()
    job = row_job(row, 0)
    assert "norm" not in job.fingerprint["settings"] and "norm" not in job.twin.fingerprint["settings"]
    batch = load_recipe(_recipe(tmp_path, TINY_RECIPE)).configure(overrides={"norm": "batch"}).rows[0]
    other = row_job(batch, 0)
    assert (
        other.fingerprint["settings"]["norm"] == "batch"
        and other.twin.fingerprint["settings"]["norm"] == "batch"
    )
    assert other.twin.name != job.twin.name  # the pre-trained ANN with BN is another checkpoint


def test_gaussian_runs_made_when_dropout_also_hit_ln_sigma_retrain(tmp_path: Path):
    rows = load_recipe(_recipe(tmp_path, TINY_RECIPE)).configure().rows
    assert row_job(rows[1], 0).fingerprint["gaussian_dropout"] == "mu"  # dropout 0.2: a new run
    assert "gaussian_dropout" not in row_job(rows[0], 0).fingerprint  # duplicate rows keep theirs
    no_dropout = load_recipe(_recipe(tmp_path, TINY_RECIPE)).configure(overrides={"dropout": 0.0}).rows[1]
    assert "gaussian_dropout" not in row_job(no_dropout, 0).fingerprint  # nothing changed without dropout
    head = (
        load_recipe(
            _recipe(
                tmp_path, TINY_RECIPE.replace('arch = "A784-A32-S10"\nlabel', 'arch = "A784-S32-S10"\nlabel')
            )
        )
        .configure()
        .rows[1]
    )
    # no dropout after a head
    assert head.arch == "A784-S32-S10" and "gaussian_dropout" not in row_job(head, 0).fingerprint


def test_rates_in_epochs_csv_results_and_rates_png(tmp_path: Path):
    out = tmp_path / "out"
    result = _cli("recipe", str(_recipe(tmp_path, DUP)), "--rows", "1", "--out", str(out))
    assert result.exit_code == 0, result.output
    with open(out / "epochs.csv") as f:
        (line,) = list(csv.DictReader(f))
    seed = json.loads((out / "results.json").read_text())["rows"][0]["seeds"][0]
    (rates,) = seed["val_rates"]
    assert list(rates) == ["3:S10"]
    assert line["val_rates"] == f"3:S10={rates['3:S10']:.4f}"
    assert 0.0 <= float(line["train_out_silent"]) <= 1.0 and 0.0 <= float(line["train_out_saturated"]) <= 1.0
    # independent check: the output layer's rate is the validation spike count / (T x classes x images)
    from hnn_bridge.data import load_dataset, split_622

    row = load_recipe(_recipe(tmp_path, DUP)).configure().rows[0]
    model = build_row(row)
    model.load_state_dict(torch_load(out / seed["checkpoint"])["model"])  # the only epoch is the best one
    model.eval()
    ds = load_dataset("mnist-5k")
    pick = split_622(ds.labels, seed=0, ratios=(500, len(ds) - 500, 0)).train
    images = ds.images[pick]
    val = split_622(ds.labels[pick], seed=0).val
    with torch.no_grad():
        counts = model(images[val].float() / 255)
    assert rates["3:S10"] == pytest.approx(
        float(counts.sum(dtype=torch.float64)) / (4 * 10 * len(val)), rel=1e-12
    )
    png = (out / "rates.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_epoch_warnings_name_the_layer():
    quiet = {
        "epoch": 3,
        "train_out_silent": 1.0,
        "train_out_saturated": 0.0,
        "val_rates": {"2:S500": 0.0, "3:S10": 0.0},
    }
    assert epoch_warnings(quiet) == [
        "epoch 3: output layer 3:S10 was silent for the whole epoch (no spike for any training image, so no "
        'gradient reaches the weights); try norm = "batch", a larger init_rate or lr',
        "epoch 3: spiking layer 2:S500 did not fire on the validation set",
    ]
    loud = {"epoch": 1, "train_out_silent": 0.0, "train_out_saturated": 1.0, "val_rates": {"3:S10": 1.0}}
    assert epoch_warnings(loud) == [
        "epoch 1: output layer 3:S10 fired at every step for every class on every training image of the "
        "epoch "
        '(every prediction is a tie); try norm = "batch" or a smaller lr'
    ]
    assert (
        epoch_warnings(
            {"epoch": 1, "train_out_silent": 0.99, "train_out_saturated": 0.5, "val_rates": {"3:S10": 0.2}}
        )
        == []
    )
    assert epoch_warnings({"epoch": 1, "train_out_silent": None, "train_out_saturated": None}) == []  # an ANN
    dead = {
        "epoch": 2,
        "train_out_silent": 0.104,
        "train_out_saturated": 0.0,
        "train_out_dead": [3, 7],
        "val_rates": {"4:S10": 0.09},
    }
    assert epoch_warnings(dead) == [
        "epoch 2: output layer 4:S10: the neuron of class(es) 3, 7 fired on no training image of the epoch "
        '(never predicted, almost no surrogate gradient); try norm = "batch" or a larger init_rate'
    ]
    assert epoch_warnings({**quiet, "train_out_dead": list(range(10))}) == epoch_warnings(quiet)  # said once


def test_a_silent_output_is_reported_while_training_and_in_the_table(tmp_path: Path):
    text = GAUSS.replace("[[rows]]", "[defaults.neuron]\nv_threshold = 1e6\n\n[[rows]]", 1)
    out = tmp_path / "out"
    result = _cli("recipe", str(_recipe(tmp_path, text)), "--rows", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (
        "warning: row 2 gaussian seed 0: epoch 1: output layer 3:S10 was silent for the whole epoch"
        in result.output
    )
    assert "- row 2 seed 0: warning: epoch 1: output layer 3:S10 was silent" in (out / "table.md").read_text()


def test_norm_changed_on_resume_retrains_and_names_the_change(tmp_path: Path):
    recipe = str(_recipe(tmp_path, GAUSS))
    out = tmp_path / "out"
    assert _cli("recipe", recipe, "--rows", "2", "--out", str(out)).exit_code == 0
    again = _cli("recipe", recipe, "--rows", "2", "--norm", "batch", "--out", str(out), "--resume")
    assert again.exit_code == 0, again.output
    assert "was made with other settings (norm: 'none' -> 'batch'); training this row again" in again.output
    weights = torch_load(out / "checkpoints" / "r02-A784-A32-S10-gaussian-simultaneous-s0.pt")
    assert weights["settings"]["norm"] == "batch" and any("running_mean" in k for k in weights["model"])


def test_weights_without_norm_do_not_load_into_a_network_with_norm():
    import hnn_bridge as hb

    plain = hb.build("A784-A32-S10", steps=4)
    normed = hb.build("A784-A32-S10", steps=4, norm="batch")
    with pytest.raises(ValueError) as err:
        hb.copy_weights(plain, normed)
    assert str(err.value) == (
        "copy_weights: the models do not match (only in the target: al.2.weight, al.2.bias, "
        "al.2.running_mean, "
        "al.2.running_var, al.2.num_batches_tracked, first_op.1.weight, first_op.1.bias, "
        "first_op.1.running_mean, "
        "first_op.1.running_var, first_op.1.num_batches_tracked)"
    )

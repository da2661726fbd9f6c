"""Training learns (on real data), and the learning-rate schedule runs and resumes exactly.

Learning: a short seeded run on the embedded mnist-5k digits (3,000 / 1,000 / 1,000 after
the 6:2:2 split; 4 epochs, T = 8) must reach at least 80% test accuracy (strict tie rule)
for the pure SNN, an HNN and the ANN. The pure ANN has no neuron, so it runs once; the two
spiking networks run on every backend that runs on the CPU. The backends have identical
spikes, so besides reaching the threshold on its own each backend must reproduce the
reference backend's first-epoch training loss. Everything is seeded and deterministic on
one machine, so the thresholds are not flaky: the reference values at the time of writing
are 88.7% (SNN), 88.4% (HNN) and 91.2% (ANN), well above 80%.

Schedules: MultiStepLR with non-empty ``lr_milestones`` (every quick profile has none), the
rate of each epoch as logged in epochs.csv and results.json, and a run interrupted just
before and just after a milestone and resumed gives the uninterrupted run's results bit for
bit (the scheduler's state is part of the saved training state).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from helpers import one_thread  # noqa: F401  (a fixture)

from hnn_bridge.recipe import load_recipe
from hnn_bridge.training import runner as runner_module
from hnn_bridge.training.checkpoint import torch_load
from hnn_bridge.training.runner import RunOptions, run_recipe

LEARN = """
[recipe]
name = "learn"
dataset = "mnist"

[defaults]
dataset = "mnist-5k"
epochs = 4
steps = 8
lr = 2e-3
batch_size = 50
dropout = 0.0
seed = 0
split_seed = 0

[defaults.neuron]
membrane_decay = 0.0

[[rows]]
arch = "S784-S128-S10"
label = "pure SNN"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A128-S10"
label = "HNN"
coder = "duplicate"
training = "simultaneous"

[[rows]]
arch = "A784-A128-A10"
label = "ANN"
coder = "none"
training = "simultaneous"
"""

THRESHOLD = 0.80
CPU_BACKENDS = ("spikingjelly", "snntorch")  # besides "reference"; spikingjelly-cupy needs CUDA


pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe(tmp_path: Path, text: str):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    return load_recipe(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict, Path]:
    """The three networks on the reference backend: (results, output folder)."""
    out = tmp_path_factory.mktemp("learn-reference")
    recipe = _recipe(out, LEARN).configure()
    return run_recipe(recipe, RunOptions(out=out / "out")), out / "out"


def _seed(results: dict, label: str) -> dict:
    (row,) = [r for r in results["rows"] if r["label"] == label]
    assert row["status"] == "ok"
    return row["seeds"][0]


def _log(out: Path, seed: dict) -> list[dict]:
    return json.loads((out / "checkpoints" / f"{seed['job']}.json").read_text())["log"]


@pytest.mark.slow
@pytest.mark.parametrize("label", ["pure SNN", "HNN", "ANN"])
def test_short_run_learns_mnist(reference, label: str) -> None:
    results, out = reference
    seed = _seed(results, label)
    assert seed["test_acc"] >= THRESHOLD, (label, seed["test_acc"])
    assert seed["best_val_acc"] >= THRESHOLD
    assert seed["test_acc"] <= seed["test_acc_argmax"]
    log = _log(out, seed)
    assert log[-1]["train_loss"] < log[0]["train_loss"] and len(log) == 4


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_every_cpu_backend_learns_the_same(reference, tmp_path: Path, backend: str) -> None:
    ref_results, ref_out = reference
    recipe = _recipe(tmp_path, LEARN).configure(overrides={"backend": backend}).select([1, 2])
    results = run_recipe(recipe, RunOptions(out=tmp_path / "out"))
    for label in ("pure SNN", "HNN"):
        ours, ref = _seed(results, label), _seed(ref_results, label)
        assert next(r for r in results["rows"] if r["label"] == label)["settings"]["backend"] == backend
        assert ours["test_acc"] >= THRESHOLD, (backend, label, ours["test_acc"])
        # identical spikes: the reference backend's first-epoch loss (to float rounding)
        assert _log(tmp_path / "out", ours)[0]["train_loss"] == pytest.approx(
            _log(ref_out, ref)[0]["train_loss"], rel=1e-6
        )


# ----------------------------------------------------------------------------- LR schedule

SCHEDULE = """
[recipe]
name = "schedule"
dataset = "mnist"

[defaults]
dataset = "mnist-5k"
subset = 500
epochs = 4
steps = 4
lr = 1e-3
lr_milestones = [2, 3]
lr_gamma = 0.5
batch_size = 50
dropout = 0.2

[[rows]]
arch = "A784-A32-S10"
label = "gaussian"
coder = "gaussian"
training = "simultaneous"
"""

LRS = [1e-3, 1e-3, 5e-4, 2.5e-4]  # the rate each epoch trains with: x0.5 after epochs 2 and 3


def _epochs_csv(out: Path) -> list[dict]:
    with open(out / "epochs.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch_load(p)["model"] for p in sorted((out / "checkpoints").glob("*.pt"))}


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("schedule")
    return run_recipe(_recipe(tmp, SCHEDULE).configure(), RunOptions(out=tmp / "out")), tmp / "out"


def test_multistep_lr_per_epoch(scheduled) -> None:
    results, scheduled = scheduled
    log = _epochs_csv(scheduled)
    assert [float(r["lr"]) for r in log] == pytest.approx(LRS, rel=1e-12)
    assert results["rows"][0]["settings"]["lr_milestones"] == [2, 3]
    job = results["rows"][0]["seeds"][0]["job"]
    saved = json.loads((scheduled / "checkpoints" / f"{job}.json").read_text())
    assert [r["lr"] for r in saved["log"]] == pytest.approx(LRS, rel=1e-12)


@pytest.mark.parametrize("stop_after", [1, 2, 3])  # before the first milestone, on it, between the two
def test_resume_across_a_milestone_is_bit_identical(
    scheduled, tmp_path: Path, monkeypatch, stop_after: int
) -> None:
    ref_results, scheduled = scheduled
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, SCHEDULE).configure()
    real = runner_module.save_state
    saved: list = []

    def save_then_interrupt(path, state):
        real(path, state)
        saved.append(state)
        if len(saved) == stop_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "save_state", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, RunOptions(out=out))
    state = saved[-1]
    # the saved state carries the scheduler: its step count and the rate of the next epoch
    assert state["scheduler"]["last_epoch"] == stop_after
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(LRS[stop_after])
    again: list = []
    monkeypatch.setattr(
        runner_module, "save_state", lambda path, st: (again.append(st["epoch"]), real(path, st))
    )
    resumed = run_recipe(recipe, RunOptions(out=out, resume=True))
    assert again == list(range(stop_after + 1, 5))  # it resumed: only the remaining epochs ran
    assert resumed["rows"][0]["seeds"][0]["epochs_run"] == 4
    assert _epochs_csv(out) == _epochs_csv(scheduled)
    a, b = _weights(scheduled), _weights(out)
    assert a.keys() == b.keys() and a
    for name in a:
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    ref = ref_results["rows"][0]["seeds"][0]
    ours = resumed["rows"][0]["seeds"][0]
    assert (ours["test_acc"], ours["best_epoch"], ours["best_val_acc"]) == (
        ref["test_acc"],
        ref["best_epoch"],
        ref["best_val_acc"],
    )


@pytest.mark.slow
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_a_short_gaussian_run_learns_mnist(tmp_path: Path, dropout: float) -> None:
    """The Gaussian coder (mu through the ReLU, ln sigma linear) in a real short run; at the
    MNIST recipes' dropout 0.3 the dropout after the last AL acts on mu only."""
    text = (
        LEARN[: LEARN.index("[[rows]]")].replace("dropout = 0.0", f"dropout = {dropout}")
        + """
[[rows]]
arch = "A784-A128-S10"
label = "gaussian"
coder = "gaussian"
training = "simultaneous"
"""
    )
    seed = _seed(
        run_recipe(_recipe(tmp_path, text).configure(), RunOptions(out=tmp_path / "out")), "gaussian"
    )
    assert seed["test_acc"] >= THRESHOLD, seed["test_acc"]

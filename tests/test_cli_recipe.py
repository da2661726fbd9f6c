"""`hnn-bridge recipe`, `train` and `report` end to end (issue 4): the quick profile of
table3a writes every output; an interrupted run resumed with --resume ends with exactly
the results of an uninterrupted one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hnn_bridge.cli import main
from hnn_bridge.training import runner as runner_module
from hnn_bridge.training.checkpoint import torch_load
from hnn_bridge.training.output_lock import exclusive

OUTPUTS = ("results.json", "results.csv", "table.md", "epochs.csv", "accuracy.png", "energy.png", "rates.png")


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.mark.slow
def test_table3a_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "q"
    result = invoke(["recipe", "table3a", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output  # no wall-time assert: CI machines are shared
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert results["profile"] == "quick" and results["finished"] and len(results["rows"]) == 4
    for row in results["rows"]:
        assert row["status"] == "ok"
        seed = row["seeds"][0]
        assert 0.0 <= seed["test_acc"] <= seed["test_acc_argmax"] <= 1.0
        # the README's first impression: every row of the smoke run learns visibly
        assert seed["test_acc_argmax"] >= 0.6, (row["label"], seed["test_acc_argmax"])
        assert (out / seed["checkpoint"]).is_file()
        assert row["settings"]["dataset"] == "mnist-5k"
    # operations per image at the firing rates measured on test (hnn_bridge.ops)
    s1, s4 = results["rows"][0]["seeds"][0], results["rows"][3]["seeds"][0]
    assert s4["macs"] == 784 * 500 + 500 * 10 and s4["acs"] == 0  # the pure ANN
    assert s1["macs"] == 0 and 0 < s1["acs"] < (784 * 500 + 500 * 10) * 25  # Poisson spikes, T = 25
    assert s1["energy_uj"] == pytest.approx(s1["acs"] * 0.9e-6)
    assert (out / "energy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the separate rows used the pure sigmoid ANN that is also row 4 (trained once)
    row3, row4 = results["rows"][2], results["rows"][3]
    assert row3["seeds"][0]["pretrain"]["job"] == row4["seeds"][0]["job"]
    table = (out / "table.md").read_text()
    for text in (
        "Table 3(a)",
        "| 1 | S784-S500-S10 (baseline) | poisson | simultaneous |",
        "98.09",
        "Tie rule",
        "energy (uJ)",
        "0.9 pJ per AC",
        "dataset mnist-5k, 10 epochs, T = 25",
    ):
        assert text in table
    assert table.strip() in result.stdout
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["paper"] for r in rows] == ["98.09", "89.67", "95.93", "97.67"]
    with open(out / "epochs.csv") as f:
        log = list(csv.DictReader(f))
    assert {(r["row"], r["phase"]) for r in log} == {
        ("1", "train"),
        ("2", "train"),
        ("3", "pretrain"),
        ("3", "train"),
    }
    assert len(log) == 4 * 10
    assert list((out / "checkpoints").glob("*.state.pt")) == []  # finished rows keep no resume state


def _comparable(out: Path) -> tuple:
    results = json.loads((out / "results.json").read_text())
    seeds = [
        (s["test_acc"], s["test_acc_argmax"], s["test_tie_rate"], s["best_epoch"], s["best_val_acc"])
        for r in results["rows"]
        for s in r["seeds"]
    ]
    with open(out / "epochs.csv") as f:
        log = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    weights = {}
    for path in sorted((out / "checkpoints").glob("*.pt")):
        weights[path.name] = torch_load(path)["model"]
    return seeds, log, weights


ARGS = ["recipe", "table3a", "--quick", "--rows", "1,3", "--epochs", "2", "--steps", "4"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    assert invoke([*ARGS, "--out", str(out)]).exit_code == 0
    return out


@pytest.mark.parametrize("stop_after", [1, 3, 4, 5])  # row 1; row 3 pre-training (mid, last epoch); row 3
def test_resume_after_an_interruption_gives_identical_results(
    straight: Path, tmp_path: Path, monkeypatch, stop_after: int
) -> None:
    out = tmp_path / "resumed"
    real = runner_module.save_state
    saved = {"n": 0}

    def save_then_interrupt(path, state):
        real(path, state)
        saved["n"] += 1
        if saved["n"] == stop_after:
            raise KeyboardInterrupt  # like Ctrl-C right after an epoch's checkpoint

    monkeypatch.setattr(runner_module, "save_state", save_then_interrupt)
    first = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
    assert first.exit_code == 130 and "interrupted" in first.output and "--resume" in first.output
    assert list((out / "checkpoints").glob("*.state.pt"))  # the interrupted row's state is on disk
    monkeypatch.setattr(runner_module, "save_state", real)
    second = invoke([*ARGS, "--out", str(out), "--resume"])
    assert second.exit_code == 0, second.output
    assert "resuming after epoch" in second.output
    a, b = _comparable(straight), _comparable(out)
    assert a[0] == b[0] and a[1] == b[1]
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        assert all(torch.equal(a[2][name][k], b[2][name][k]) for k in a[2][name]), name


def test_resume_skips_finished_rows(straight: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "again"
    shutil.copytree(straight, out)
    result = invoke([*ARGS, "--out", str(out), "--resume"])
    assert result.exit_code == 0
    assert result.output.count("reusing the finished row") == 2
    assert "epoch 1/2" not in result.output
    assert _comparable(out)[0] == _comparable(straight)[0]


def test_train_command_and_report(tmp_path: Path) -> None:
    out = tmp_path / "t"
    result = invoke(["train", "A784-A32-S10", "--quick", "--epochs", "1", "--steps", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    row = results["rows"][0]
    assert (row["arch"], row["coder"], row["training"], row["paper"]) == (
        "A784-A32-S10",
        "duplicate",
        "simultaneous",
        None,
    )
    assert row["settings"]["dataset"] == "mnist-5k" and row["settings"]["epochs"] == 1
    (out / "table.md").unlink()
    (out / "accuracy.png").unlink()
    again = invoke(["report", str(out)])
    assert again.exit_code == 0
    assert (out / "table.md").read_text().strip() in again.stdout
    assert (out / "accuracy.png").is_file()


def test_report_of_a_folder_without_results(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1 and "no results.json" in result.output and "Traceback" not in result.output


def test_missing_dataset_is_a_clean_error(tmp_path: Path, monkeypatch) -> None:
    import hnn_bridge.data.registry as registry

    def offline(name, root):
        raise OSError("no network")

    monkeypatch.setattr(registry, "_torchvision_download", offline)
    result = CliRunner().invoke(
        main,
        [
            "recipe",
            "sec4_2",
            "--epochs",
            "1",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    assert "Error: dataset 'mnist' not found under" in result.output and "--data-dir" in result.output
    assert "Traceback" not in result.output


def test_the_run_names_a_row_key_that_its_profile_replaces(tmp_path: Path, monkeypatch) -> None:
    import hnn_bridge.data.registry as registry

    def offline(name, root):
        raise OSError("no network")

    monkeypatch.setattr(registry, "_torchvision_download", offline)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[recipe]\nname = "r"\ndataset = "mnist"\n[defaults]\nepochs = 1\n[quick]\nsteps = 2\n'
        '[[rows]]\narch = "A784-S32-S10"\ncoder = "duplicate"\ntraining = "simultaneous"\nsteps = 6\n'
    )
    result = CliRunner().invoke(
        main,
        [
            "recipe",
            str(recipe),
            "--quick",
            "--data-dir",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert (
        "note: row 1 (A784-S32-S10): steps = 6 of the row is replaced by the [quick] profile's 2\n"
        in result.output
    )
    result = CliRunner().invoke(
        main, ["recipe", str(recipe), "--data-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out2")]
    )
    assert result.exit_code == 1 and "note:" not in result.output


def test_two_runs_cannot_share_an_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    with exclusive(out):  # another run holds the folder
        result = CliRunner().invoke(main, [*ARGS, "--out", str(out)])
    assert result.exit_code == 1
    assert f"another hnn-bridge run is writing to {out}" in result.output and "Traceback" not in result.output


def test_the_resume_hint_keeps_test_every_epoch() -> None:
    from hnn_bridge.commands.recipe import _resume_command

    argv = _resume_command(
        "sec4_2",
        "full",
        None,
        None,
        None,
        3,
        "cpu",
        None,
        Path("data"),
        Path("runs/x"),
        test_every_epoch=True,
    )
    assert argv == [
        "hnn-bridge",
        "recipe",
        "sec4_2",
        "--data-dir",
        "data",
        "--seeds",
        "3",
        "--test-every-epoch",
        "--out",
        "runs/x",
        "--resume",
    ]


def test_the_resume_hint_keeps_augment() -> None:
    from hnn_bridge.commands.recipe import _resume_command

    argv = _resume_command(
        "table1a", "full", None, None, "4", 1, "cpu", None, None, Path("runs/x"), augment="crop-rotate"
    )
    assert argv == [
        "hnn-bridge",
        "recipe",
        "table1a",
        "--rows",
        "4",
        "--augment",
        "crop-rotate",
        "--out",
        "runs/x",
        "--resume",
    ]


def test_recipe_augment_overrides_every_row() -> None:
    from hnn_bridge.recipe import load_recipe

    assert {r.settings.augment for r in load_recipe("table1a").configure().rows} == {"none"}
    configured = load_recipe("table1a").configure(overrides={"augment": "crop-rotate"})
    assert {r.settings.augment for r in configured.rows} == {"crop-rotate"}
    result = CliRunner().invoke(main, ["recipe", "table1a", "--augment", "flip"])
    assert result.exit_code == 2 and "'flip' is not one of 'none', 'crop-rotate'" in result.output

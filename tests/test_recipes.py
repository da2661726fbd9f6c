"""Recipes (issue 4): every shipped recipe parses and builds; bad recipes fail early and
name the file, the row and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hnn_bridge.cli import main
from hnn_bridge.data.augment import AUGMENTS
from hnn_bridge.recipe import (
    Recipe,
    RecipeError,
    al_share,
    build_row,
    check_rows,
    list_recipes,
    load_recipe,
    parse_rows,
)

SHIPPED = ["sec4_2", "table1a", "table1b", "table2a", "table2b", "table3a", "table3b"]

TINY = """
[recipe]
name = "tiny"
dataset = "mnist"

[defaults]
epochs = 1
steps = 4

[[rows]]
arch = "A784-A32-S10"
coder = "duplicate"
training = "separate"
paper = 90.0
"""


def write(tmp_path: Path, text: str, name: str = "r.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_all_recipes_are_shipped() -> None:
    assert list_recipes() == SHIPPED


CIFAR = ["table1b", "table2b", "table3b"]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("profile", ["full", "quick", "cpu"])
def test_every_shipped_recipe_parses_and_every_row_builds(name: str, profile: str) -> None:
    loaded = load_recipe(name)
    cifar = loaded.dataset == "cifar10"
    if profile == "cpu" and not cifar:
        with pytest.raises(RecipeError, match=f"recipe {name!r} has no \\[cpu\\] profile"):
            loaded.configure(profile="cpu")
        return
    recipe = loaded.configure(profile=profile)
    assert recipe.rows and recipe.profile == profile
    check_rows(recipe)  # builds every row and the pure ANN of every separate row
    for row in recipe.rows:
        assert row.paper is not None and 0 < row.paper < 100
        s = row.settings
        if profile == "full":  # §4.1 budgets and Fang et al.'s reference values, pinned
            assert s.epochs == (150 if cifar else 100) and (s.batch_size, s.steps) == (64, 25)
            assert s.neuron.membrane_decay == 0.0 and s.neuron.sigma == 0.4 and s.neuron.v_threshold == 1.0
            assert (s.neuron.tau_m, s.neuron.tau_s, s.neuron.synapse) == (4.0, 1.0, "dual_exp")
        elif recipe.dataset == "mnist":
            assert s.dataset == "mnist-5k"
        # every recipe departs from Fang et al.'s lr 1e-4 (measured, reasons in the TOML);
        # the CIFAR CNNs also from their MNIST setup: batch norm, no dropout, no calibration
        assert s.lr == 1e-3
        if cifar:
            assert (s.norm, s.dropout) == ("batch", 0.0)
        else:
            assert s.norm == "none"
            assert s.dropout == (0.3 if profile == "full" or name != "table3a" else 0.0)
        assert s.init_rate == 0.0


def test_table_rows_match_the_paper() -> None:
    t1a = load_recipe("table1a")
    assert [(r.arch, r.coder, r.training, r.paper) for r in t1a.rows] == [
        ("S784-S500-S10", "duplicate", "simultaneous", 98.13),
        ("A784-S500-S10", "duplicate", "separate", 98.22),
        ("A784-S500-S10", "duplicate", "simultaneous", 97.78),
        ("A784-A500-S10", "duplicate", "separate", 99.17),
        ("A784-A500-S10", "duplicate", "simultaneous", 98.07),
        ("A784-A500-A10", None, "simultaneous", 98.23),
    ]
    t3a = load_recipe("table3a")
    assert [r.training for r in t3a.rows] == ["simultaneous", "separate", "separate", "simultaneous"]
    assert t3a.rows[-1].settings.activation == "sigmoid"  # the pretrained ANN of the Poisson HNNs
    sec = load_recipe("sec4_2")
    assert [(r.settings.input_mode, r.paper) for r in sec.rows] == [("axon", 97.56), ("direct", 97.71)]
    assert [r.paper for r in load_recipe("table3b").rows] == [59.83, 50.28, 36.94, 31.32, 56.43]


def test_precedence_defaults_row_quick_cli(tmp_path: Path) -> None:
    path = write(
        tmp_path, TINY.replace("paper = 90.0", "paper = 90.0\nsteps = 6\nlr = 0.5") + "\n[quick]\nsteps = 2\n"
    )
    recipe = load_recipe(path)
    assert recipe.rows[0].settings.steps == 6 and recipe.rows[0].settings.lr == 0.5
    assert recipe.configure(quick=True).rows[0].settings.steps == 2
    assert recipe.configure(quick=True, overrides={"steps": 3}).rows[0].settings.steps == 3


def test_a_row_key_that_the_profile_replaces_is_named(tmp_path: Path) -> None:
    """The profile takes precedence over a row (above), so a row's own value is not used
    there; `shadowed` names it (an ablation row once ran its control again this way)."""
    path = write(
        tmp_path,
        TINY.replace("paper = 90.0", "paper = 90.0\nsteps = 6\nlr = 0.5\nneuron = { v_threshold = 0.5 }")
        + "\n[quick]\nsteps = 2\nlr = 0.5\nneuron = { v_threshold = 0.8 }\n",
    )
    recipe = load_recipe(path)
    assert recipe.configure().shadowed() == []
    assert recipe.configure(quick=True).shadowed() == [
        "row 1 (A784-A32-S10): steps = 6 of the row is replaced by the [quick] profile's 2",
        "row 1 (A784-A32-S10): neuron.v_threshold = 0.5 of the row is replaced by the [quick] profile's 0.8",
    ]
    # the same value (lr) is no conflict; a key of the command line overrides both
    assert recipe.configure(quick=True, overrides={"steps": 3}).shadowed() == [
        "row 1 (A784-A32-S10): neuron.v_threshold = 0.5 of the row is replaced by the [quick] profile's 0.8"
    ]


def test_al_share() -> None:
    assert [al_share(a) for a in ("S784-S500-S10", "A784-S500-S10", "A784-A500-A10")] == [0.0, 1 / 3, 1.0]
    assert al_share("A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10") == 0.5


def test_unknown_recipe_name() -> None:
    with pytest.raises(
        RecipeError, match=r"unknown recipe 'table9'; shipped recipes: sec4_2, table1a.*--list"
    ):
        load_recipe("table9")


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, TINY.replace('coder = "duplicate"', "coder = duplicate"))
    with pytest.raises(RecipeError, match=rf"^{path}: invalid TOML: Invalid value \(at line 12, column 9\)"):
        load_recipe(path)


@pytest.mark.parametrize(
    "old, new, message",
    [
        (
            "epochs = 1",
            "epochs = 1\nepohcs = 2",
            r": \[defaults\]: key 'epohcs': unknown key; known keys: dataset",
        ),
        ("paper = 90.0", "paper = 90.0\nbogus = 1", r": row 1 \(A784-A32-S10\): key 'bogus': unknown key"),
        (
            "paper = 90.0",
            "paper = 90.0\nneuron = { tau = 2.0 }",
            r": row 1 \(A784-A32-S10\): key 'neuron.tau': unknown neuron setting; known: detach_reset",
        ),
        ("epochs = 1", "epochs = 0", r": \[defaults\]: key 'epochs': must be >= 1, got 0"),
        ("epochs = 1", 'epochs = "ten"', r": \[defaults\]: key 'epochs': expected an integer, got 'ten'"),
        ('coder = "duplicate"', 'coder = "morse"', r": row 1 \(A784-A32-S10\): key 'coder': expected one of"),
        (
            'training = "separate"',
            'training = "both"',
            r"row 1 \(A784-A32-S10\): key 'training': expected one of",
        ),
        (
            'arch = "A784-A32-S10"',
            'arch = "A784-X32-S10"',
            r"row 1 \(A784-X32-S10\): key 'arch': unknown layer token 'X32'",
        ),
        ('arch = "A784-A32-S10"\n', "", r"row 1: key 'arch': missing"),
        ('name = "tiny"', 'name = "tiny"\nauthor = "me"', r": \[recipe\]: key 'author': unknown key"),
        (
            'dataset = "mnist"',
            'dataset = "imagenet"',
            r": \[recipe\]: key 'dataset': expected one of 'mnist'",
        ),
        (
            "steps = 4",
            "steps = 4\n[defaults.neuron]\nsigma = -1.0",
            r": \[defaults\]: key 'neuron': IIR neuron: sigma",
        ),
        ("paper = 90.0", "paper = 190.0", r"key 'paper': must be in \[0, 100\]"),
        (
            "epochs = 1",
            "epochs = 1\ninit_rate = 1.0",
            r": \[defaults\]: key 'init_rate': must be in \[0, 1\)",
        ),
        (
            "epochs = 1",
            "epochs = 1\nlogit_scale = 0",
            r": \[defaults\]: key 'logit_scale': must be in \(0, 100\], got 0",
        ),
        (
            "epochs = 1",
            "epochs = 1\ngaussian_sigma0 = -0.1",
            r": \[defaults\]: key 'gaussian_sigma0': must be in \[0, 100\]",
        ),
        (
            "epochs = 1",
            'epochs = 1\naugment = "flip"',
            r": \[defaults\]: key 'augment': expected one of 'none', 'crop-rotate', got 'flip'",
        ),
    ],
)
def test_bad_keys_name_file_row_and_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in TINY
    path = write(tmp_path, TINY.replace(old, new, 1))
    with pytest.raises(RecipeError, match=message) as info:
        load_recipe(path)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("name", AUGMENTS)
def test_a_recipe_takes_every_augmentation(tmp_path: Path, name: str) -> None:
    recipe = load_recipe(write(tmp_path, TINY.replace("epochs = 1", f'epochs = 1\naugment = "{name}"', 1)))
    assert recipe.defaults["augment"] == name


def test_duplicate_labels(tmp_path: Path) -> None:
    path = write(tmp_path, TINY + TINY[TINY.index("[[rows]]") :])
    with pytest.raises(
        RecipeError, match=r"row 2 \(A784-A32-S10\): key 'label': label 'A784-A32-S10' is already used"
    ):
        load_recipe(path)


@pytest.mark.parametrize(
    "arch, coder, training, message",
    [
        (
            "A784-A32-S10",
            "gaussian",
            "separate",
            r"row 2 \(A784-A32-S10\): keys 'coder' = 'gaussian', 'training' = 'separate': "
            r"impossible row: gaussian",
        ),
        (
            "A784-A32-S10",
            "poisson",
            "simultaneous",
            r"row 2 .*'training' = 'simultaneous': impossible row: poisson",
        ),
        ("A784-A32-A10", "duplicate", "simultaneous", r"row 2 .*impossible row: .*all artificial"),
        (
            "A784-A32-S7",
            "duplicate",
            "simultaneous",
            r"row 2 \(A784-A32-S7\): key 'arch': the output layer 'S7' has 7",
        ),
        (
            "A100-S10",
            "duplicate",
            "simultaneous",
            r"row 2 \(A100-S10\): key 'arch': input layer 'A100' has 100 units",
        ),
    ],
)
def test_impossible_rows_fail_before_training(
    tmp_path: Path, arch: str, coder: str, training: str, message: str
) -> None:
    bad = f'\n[[rows]]\narch = "{arch}"\ncoder = "{coder}"\ntraining = "{training}"\nlabel = "bad"\n'
    path = write(tmp_path, TINY + bad)
    recipe = load_recipe(path)  # parses: the keys are all known
    with pytest.raises(RecipeError, match=message) as info:
        check_rows(recipe)
    assert str(info.value).startswith(str(path))


def test_parse_rows() -> None:
    assert parse_rows(None, 4) is None
    assert parse_rows("1,3-4", 4) == [1, 3, 4]
    assert parse_rows("2,2", 4) == [2]
    with pytest.raises(RecipeError, match="row 5 does not exist; the recipe has rows 1..4"):
        parse_rows("5", 4)
    with pytest.raises(RecipeError, match="'x' is not a row number"):
        parse_rows("x", 4)


def test_single_row_recipe_inherits_the_paper_defaults() -> None:
    single = Recipe.single("A784-S500-S10", coder="poisson", training="separate", base=load_recipe("table1a"))
    assert single.rows[0].settings.epochs == 100 and single.rows[0].settings.neuron.membrane_decay == 0.0
    assert single.configure(quick=True).rows[0].settings.dataset == "mnist-5k"


# ------------------------------------------------------------------------------ CLI


def test_cli_list() -> None:
    result = CliRunner().invoke(main, ["recipe", "--list"])
    assert result.exit_code == 0
    for name in SHIPPED:
        assert name in result.output
    assert "Table 3(a)" in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:8]}
    assert all(("full quick cpu" in lines[n]) == (n in CIFAR) for n in SHIPPED)


@pytest.mark.parametrize(
    "args, message",
    [
        (["recipe", "table9"], "Error: unknown recipe 'table9'; shipped recipes:"),
        (
            ["recipe", "table1a", "--rows", "9"],
            "Error: --rows: row 9 does not exist; the recipe has rows 1..6",
        ),
        (["recipe"], "give a recipe NAME or PATH"),
        (
            ["recipe", "table1a", "--backend", "nope"],
            "command-line overrides: key 'backend': expected one of",
        ),
        (["recipe", "table1a", "--device", "tpu"], "'tpu'"),
    ],
)
def test_cli_errors_are_clean(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")] if len(args) > 1 else args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()  # failed before training


def test_cli_impossible_row_fails_before_training(tmp_path: Path) -> None:
    bad = '\n[[rows]]\narch = "A784-A32-S10"\ncoder = "gaussian"\ntraining = "separate"\nlabel = "bad"\n'
    path = write(tmp_path, TINY + bad)
    result = CliRunner().invoke(main, ["recipe", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"Error: {path}: row 2 (A784-A32-S10): keys 'coder' = 'gaussian'" in result.output
    assert not (tmp_path / "out").exists()


def test_profile_cpu_on_the_command_line() -> None:
    runner = CliRunner()
    mnist = runner.invoke(main, ["recipe", "table1a", "--profile", "cpu"])
    assert mnist.exit_code == 1
    assert (
        "recipe 'table1a' has no [cpu] profile (only the CIFAR-10 tables need one: the MNIST tables run at "
        "the paper's budget on a CPU); use the full budget or --quick"
    ) in mnist.output
    both = runner.invoke(main, ["recipe", "table1b", "--quick", "--profile", "cpu"])
    assert (
        both.exit_code == 2
        and "--quick is --profile quick; it cannot be combined with --profile cpu" in both.output
    )
    cpu = load_recipe("table1b").configure(profile="cpu")
    s = cpu.rows[0].settings
    assert (cpu.profile, s.subset, s.epochs, s.steps, s.batch_size, s.lr_milestones) == (
        "cpu",
        10000,
        4,
        16,
        32,
        (3,),
    )
    assert s.logit_scale == 0.125
    for table in ("table1b", "table2b", "table3b"):  # T = 25: docs/notes/2026-12-03-cifar-ties.md
        for profile, scale in (("full", 0.125), ("cpu", 0.125), ("quick", 0.5)):
            rows = load_recipe(table).configure(profile=profile).rows
            assert {r.settings.logit_scale for r in rows} == {scale}, (table, profile)


def test_a_new_norm_kind_is_one_entry_of_builder_norms(tmp_path: Path, monkeypatch) -> None:
    """An option is written once: a new kind of normalisation is one entry of
    `builder.NORMS`. The recipe accepts it, `build` puts its module after every weight op,
    and each command's ``--norm`` offers exactly NORMS's keys."""
    import click
    from torch import nn

    from hnn_bridge import builder
    from hnn_bridge.commands.describe import describe
    from hnn_bridge.commands.recipe import recipe as recipe_command
    from hnn_bridge.commands.train import train

    for command in (recipe_command, train, describe):
        (option,) = [p for p in command.params if p.name == "norm"]
        assert isinstance(option.type, click.Choice) and list(option.type.choices) == list(builder.NORMS)

    monkeypatch.setitem(builder.NORMS, "group", lambda shape: nn.GroupNorm(1, shape[0]))
    (row,) = load_recipe(write(tmp_path, TINY.replace("[defaults]", '[defaults]\nnorm = "group"'))).rows
    assert row.settings.norm == "group"
    net = build_row(row)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert [m.num_channels for m in norms] == [32, 10]  # after A32's and S10's weight ops
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    out = net(torch.rand(2, 1, 28, 28))
    assert out.shape[-2:] == (2, 10)

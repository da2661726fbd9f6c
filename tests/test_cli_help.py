"""`hnn-bridge train --help` states the defaults that a run really uses: the help is
compared with the settings that the command hands to the runner when an option is left out."""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner

from hnn_bridge.commands import train as train_module
from hnn_bridge.recipe import Settings

# (the help's wording of a family, the command line that trains on it)
CASES = {"MNIST": ["A784-A500-S10"], "CIFAR-10": ["A8C3-P2-S10", "--dataset", "cifar10"]}


def _settings_of_a_run(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> Settings:
    """The settings `hnn-bridge train ARGV` would train with (the runner is replaced)."""
    seen = []
    monkeypatch.setattr(train_module, "execute", lambda recipe, **kw: seen.append(recipe))
    result = CliRunner().invoke(train_module.train, argv)
    assert result.exit_code == 0, result.output
    (recipe,) = seen
    return recipe.rows[0].settings


def _help_of(option: str) -> str:
    """The help text of one option as `hnn-bridge train --help` renders it (its help record)."""
    ctx = click.Context(train_module.train, info_name="train")
    (record,) = [
        p.get_help_record(ctx) for p in train_module.train.params if option in getattr(p, "opts", ())
    ]
    return " ".join(record[1].split())


def _stated(help_text: str, family: str, quick: bool) -> str:
    """The default that ``help_text`` states for ``family`` (``MNIST``/``CIFAR-10``)."""
    (default,) = re.findall(r"\[default: ([^\]]*)\]", help_text)
    full, _, quick_part = default.partition("; --quick: ")
    part = quick_part if quick and quick_part else full
    per_family = dict(reversed(v.rsplit(" ", 1)) for v in part.split(", ")) if " " in part else None
    return per_family[family] if per_family else part


@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
@pytest.mark.parametrize("family", list(CASES))
def test_train_help_states_the_defaults_that_run(monkeypatch: pytest.MonkeyPatch, family: str, quick: bool):
    settings = _settings_of_a_run(monkeypatch, CASES[family] + (["--quick"] if quick else []))
    for option, key in [
        ("--lr", "lr"),
        ("--dropout", "dropout"),
        ("--epochs", "epochs"),
        ("--steps", "steps"),
        ("--batch-size", "batch_size"),
        ("--norm", "norm"),
        ("--augment", "augment"),
        ("--input-mode", "input_mode"),
        ("--seed", "seed"),
        ("--precision", "precision"),
        ("--activation", "activation"),
    ]:
        value = getattr(settings, key)
        expected = f"{value:g}" if isinstance(value, float) else str(value)
        assert _stated(_help_of(option), family, quick) == expected, (option, family, quick)


def test_the_defaults_that_issue_33_found_wrong():
    """A run prints `Adam lr 0.001` and the CIFAR-10 recipes train without dropout."""
    assert _help_of("--lr").endswith(
        "Adam learning rate, decayed at the recipe's milestones [default: 0.001]. [x>0]"
    )
    assert "[default: 0.3 MNIST, 0 CIFAR-10]" in _help_of("--dropout")
    assert _help_of("--dataset").endswith("[default: mnist; --quick: mnist-5k]")


def test_recipe_help_precision_default_is_every_shipped_recipes():
    """`hnn-bridge recipe --help` says the precision defaults to the recipe's, 32: every
    shipped recipe, at every profile it has, trains at that precision."""
    from hnn_bridge.commands.recipe import recipe as recipe_command
    from hnn_bridge.recipe import PROFILES, list_recipes, load_recipe

    ctx = click.Context(recipe_command, info_name="recipe")
    (record,) = [
        p.get_help_record(ctx) for p in recipe_command.params if "--precision" in getattr(p, "opts", ())
    ]
    (stated,) = re.findall(r"\[default: the recipe's, (\w+)\]", record[1])
    used = set()
    for name in list_recipes():
        loaded = load_recipe(name)
        for profile in PROFILES:
            if profile == "cpu" and not loaded.cpu:
                continue
            used |= {row.settings.precision for row in loaded.configure(profile=profile).rows}
    assert used == {stated}

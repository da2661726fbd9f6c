"""Every ablation recipe under docs/ablations changes only what it says it changes.

An ablation is read against a control: the rows of a shipped table with the same network,
coder and training. A key that differs silently (a neuron table left out, so the core's
defaults apply) turns the comparison into one of two changes at once; mnist-augment.toml
ran that way (lambda = e^(-1/4) instead of table1a's 0), which this test now names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hnn_bridge.notation import parse_arch
from hnn_bridge.recipe import RowSpec, load_recipe

ABLATIONS = Path(__file__).resolve().parents[1] / "docs" / "ablations"

# ablation -> (control recipe, profile the ablation was run at, keys it may change).
# A key outside the set that differs from the control fails the test. Rows are matched to
# the control's by network, coder and training; an ablation of the network itself names
# its control rows in CONTROL_ROWS instead (ablation row -> control row, 1-based).
CONTROLS: dict[str, tuple[str, str, frozenset[str]]] = {
    "mnist-ann-lr": ("table1a", "full", frozenset({"lr", "lr_milestones", "activation"})),
    # The neuron key is the slip the docstring names: the run is committed as made, and
    # docs/notes/2026-12-04-augmentation.md and mnist-membrane-decay.toml measure what lambda alone does.
    "mnist-augment": ("table1a", "full", frozenset({"augment", "neuron.membrane_decay"})),
    "mnist-membrane-decay": ("table1a", "full", frozenset({"neuron.membrane_decay"})),
    # Its control was the cpu profile at T = 8 (steps differs once the profile moves on).
    "cifar-logit-scale": ("table1b", "cpu", frozenset({"logit_scale", "steps"})),
    "cifar-ties-t16": ("table1b", "cpu", frozenset({"logit_scale", "steps"})),
    "cifar-logit-scale-t16": ("table1b", "cpu", frozenset({"logit_scale"})),
    "mnist-input-token": ("table1a", "full", frozenset()),
    "mnist-poisson-input-token": ("table3a", "full", frozenset()),
}
CONTROL_ROWS: dict[str, dict[int, int]] = {
    "mnist-input-token": {1: 4, 2: 5, 3: 6},
    "mnist-poisson-input-token": {1: 2, 2: 3, 3: 4},
}


def _flat(row: RowSpec) -> dict[str, Any]:
    """The settings that act on this row; the neuron's decays as the values used (None
    means e^(-1/tau_m)), and no neuron at all for a network without SLs."""
    settings = row.settings.as_dict()
    neuron = settings.pop("neuron")
    params = row.settings.neuron
    settings.pop("seed")  # each row derives its own seed from it; the control's is the same base
    if any(spec.spiking for spec in parse_arch(row.arch)):
        neuron.update(membrane_decay=params.lam, reset_decay=params.theta)
        settings.update({f"neuron.{k}": v for k, v in neuron.items()})
    return settings


def _control(control: list[RowSpec], row: RowSpec, rows: dict[int, int]) -> RowSpec:
    if rows:
        match = control[rows[row.index] - 1]
        assert (match.coder, match.training) == (row.coder, row.training), (
            f"row {row.index} has another control"
        )
        return match
    same = [c for c in control if (c.arch, c.coder, c.training) == (row.arch, row.coder, row.training)]
    assert same, f"no row of the control recipe trains {row.arch} ({row.coder}, {row.training})"
    return same[0]


def test_every_ablation_has_a_control() -> None:
    assert sorted(p.stem for p in ABLATIONS.glob("*.toml")) == sorted(CONTROLS)


def _rows_and_controls(name: str) -> list[tuple[RowSpec, RowSpec]]:
    """Each row of the ablation with its control row, both resolved at the run's profile."""
    control_name, profile, _ = CONTROLS[name]
    ablation = load_recipe(ABLATIONS / f"{name}.toml").configure(profile=profile)
    # every ablation ran before 2026-12-06, when the controls' SL biases were filtered too
    control = list(
        load_recipe(control_name)
        .configure(profile=profile, overrides={"bias_placement": "before_filter"})
        .rows
    )
    return [(row, _control(control, row, CONTROL_ROWS.get(name, {}))) for row in ablation.rows]


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_an_ablation_changes_only_its_declared_keys(name: str) -> None:
    declared = CONTROLS[name][2]
    for row, control_row in _rows_and_controls(name):
        mine, theirs = _flat(row), _flat(control_row)
        changed = {k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k)}
        assert changed <= declared, (
            f"{name} row {row.index} ({row.label}) also changes {sorted(changed - declared)}"
        )


# Ablations whose setting became the control's own (the cpu profile moved to T = 16, 0.125).
ADOPTED = {"cifar-ties-t16"}


@pytest.mark.parametrize("name", sorted(set(CONTROLS) - ADOPTED))
def test_every_ablation_row_differs_from_its_control(name: str) -> None:
    """The other half: a row that resolves to its control's settings trains the control
    again (cifar-logit-scale-t16 did once, its row's scale replaced by the profile's)."""
    for row, theirs in _rows_and_controls(name):
        assert row.arch != theirs.arch or _flat(row) != _flat(theirs), (
            f"{name} row {row.index} is its control"
        )


def test_the_augmentation_ablation_ran_its_spiking_rows_at_another_lambda() -> None:
    """The slip itself, so that the comparison cannot fail silently: table1a's neuron has
    lambda = 0, mnist-augment's spiking rows ran at e^(-1/4)."""
    table = load_recipe("table1a").rows[0].settings.neuron
    augment = load_recipe(ABLATIONS / "mnist-augment.toml").rows[-1]
    assert augment.arch == "S784-S500-S10"
    assert (table.lam, augment.settings.neuron.lam) == (0.0, pytest.approx(0.7788007830714049, abs=0))

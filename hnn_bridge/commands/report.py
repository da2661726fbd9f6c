"""`hnn-bridge report DIR`: re-render table.md, results.csv and the plots from results.json."""

from __future__ import annotations

from pathlib import Path

import click

from ..energy import DEFAULT_ENERGY_MODEL, ENERGY_MODELS
from ..report import load_results, render_table, write_report


def energy_model_option(func):
    """``--energy-model``: which model of `hnn_bridge.energy` the table and energy.png show."""
    return click.option(
        "--energy-model",
        type=click.Choice(list(ENERGY_MODELS)),
        default=DEFAULT_ENERGY_MODEL,
        show_default=True,
        help="Energy model of the table and energy.png: ops (compute only, Horowitz 2014, paper-comparable), "
        "lemaire (memory-aware, Lemaire et al. 2022) or simple (SpikingJelly's: compute and 24.96 pJ "
        "per byte of "
        "weights and neuron state); results.json records every model.",
    )(func)


@click.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@energy_model_option
def report(directory: Path, energy_model: str) -> None:
    """Redo the table and the plots of a finished (or interrupted) run in DIRECTORY."""
    try:
        results = load_results(directory)
        write_report(directory, results, json_too=False, energy_model=energy_model)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err))
    click.echo(render_table(results, energy_model))
    click.echo(f"wrote {directory}/results.csv, table.md, accuracy.png, energy.png, rates.png", err=True)

"""`hnn-bridge report DIR`: re-render table.md, results.csv and the plots from results.json."""

from __future__ import annotations

from pathlib import Path

import click

from ..report import load_results, render_table, write_report


@click.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def report(directory: Path) -> None:
    """Redo the table and the plots of a finished (or interrupted) run in DIRECTORY."""
    try:
        results = load_results(directory)
    except (OSError, ValueError) as err:
        raise click.ClickException(str(err))
    write_report(directory, results, json_too=False)
    click.echo(render_table(results))
    click.echo(f"wrote {directory}/results.csv, table.md, accuracy.png, energy.png, rates.png", err=True)

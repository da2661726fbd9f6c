"""What `hnn-bridge recipe` and `hnn-bridge train` share: check, run, report, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from ..recipe import Recipe, RecipeError, check_rows
from ..report import render_table, write_report
from ..training.progress import ConsoleReporter
from ..training.runner import OutputBusy, RunOptions, run_recipe


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must be present."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{device!r} is not a torch device (cpu, cuda, cuda:1)", param_hint="--device")
    if parsed.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{device!r}: only cpu and cuda devices are supported", param_hint="--device")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r}: no CUDA device is available here", param_hint="--device")
    return str(parsed)


def execute(recipe: Recipe, *, out: Path, seeds: int, device: str, data_dir: Path | None, resume: bool,
            resume_hint: str) -> dict[str, Any]:
    """Check every row, train, write the report files after every row, print the table.

    ``resume_hint`` is the command line to print when the run is interrupted.
    """
    from ..data import DatasetFormatError, DatasetNotFound

    try:
        check_rows(recipe)
    except RecipeError as err:
        raise click.ClickException(str(err))
    reporter = ConsoleReporter()
    options = RunOptions(out=out, seeds=seeds, device=device, data_dir=str(data_dir) if data_dir else None,
                         resume=resume, reporter=reporter)
    click.echo(f"{recipe.name}: {len(recipe.rows)} row(s) x {seeds} seed(s), profile {recipe.profile}, "
               f"writing to {out}", err=True)
    try:
        results = run_recipe(recipe, options, on_results=lambda r: write_report(out, r))
    except (DatasetNotFound, DatasetFormatError, OutputBusy) as err:
        raise click.ClickException(str(err))
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: finished epochs and rows are saved in {out}; continue with\n  {resume_hint}",
                   err=True)
        raise SystemExit(130)
    click.echo(render_table(results))
    click.echo(f"wrote {out}/results.json, results.csv, table.md, epochs.csv, accuracy.png, checkpoints/",
               err=True)
    return results

"""What `hnn-bridge recipe` and `hnn-bridge train` share: check, run, report, print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from ..energy import DEFAULT_ENERGY_MODEL
from ..errors import ConfigError
from ..precision import check_precision
from ..recipe import Recipe, RecipeError, check_rows
from ..report import render_table, write_report
from ..training.checkpoint import CheckpointError, OutputNotWritable
from ..training.distributed import env_rank, env_world_size, from_env, teardown
from ..training.progress import ConsoleReporter, Reporter
from ..training.runner import OutputBusy, RunOptions, check_parallel, run_recipe


def _fail(message: str) -> click.ClickException | click.exceptions.Exit:
    """The error to raise: printed by rank 0 only (every torchrun process hits it)."""
    if env_rank() != 0:
        return click.exceptions.Exit(1)
    return click.ClickException(message)


def check_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a CUDA device must be present."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise click.BadParameter(
            f"{device!r} is not a torch device (cpu, cuda, cuda:1)", param_hint="--device"
        )
    if parsed.type not in ("cpu", "cuda"):
        raise click.BadParameter(
            f"{device!r}: only cpu and cuda devices are supported", param_hint="--device"
        )
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device!r}: no CUDA device is available here", param_hint="--device")
    return str(parsed)


def execute(
    recipe: Recipe,
    *,
    out: Path,
    seeds: int,
    device: str,
    data_dir: Path | None,
    resume: bool,
    resume_hint: str,
    jobs: int = 1,
    test_every_epoch: bool = False,
    energy_model: str = DEFAULT_ENERGY_MODEL,
) -> dict[str, Any]:
    """Check every row, train, write the report files after every row, print the table.

    ``resume_hint`` is the command line to print when the run is interrupted. Under
    torchrun (``WORLD_SIZE`` > 1) this process joins the data-parallel group after the
    checks; only rank 0 prints. ``jobs`` > 1 runs (row, seed) jobs in worker processes.
    ``test_every_epoch`` scores every epoch on test too (`RunOptions.test_every_epoch`).
    ``energy_model`` picks the energy that the table and energy.png show (`hnn_bridge.energy`).
    """
    from ..data import DatasetFormatError, DatasetNotFound

    world = env_world_size()
    main = env_rank() == 0
    try:
        check_rows(recipe)
        check_parallel(recipe, world, jobs)
        for precision in sorted({row.settings.precision for row in recipe.rows}):
            check_precision(precision, device)
    except (RecipeError, ConfigError) as err:
        raise _fail(str(err))
    if world > 1 and torch.device(device).type == "cuda":
        device = "cuda"  # each process trains on cuda:LOCAL_RANK
    try:
        dist = from_env(device)
    except (RuntimeError, ValueError) as err:
        raise _fail(f"cannot join the torchrun process group: {err}")
    finished = False
    try:
        reporter = ConsoleReporter() if main else Reporter()
        options = RunOptions(
            out=out,
            seeds=seeds,
            device=device,
            data_dir=str(data_dir) if data_dir else None,
            resume=resume,
            reporter=reporter,
            dist=dist,
            jobs=jobs,
            test_every_epoch=test_every_epoch,
        )
        if main:
            how = (
                f", {world} processes (DDP)"
                if world > 1
                else f", {jobs} worker processes"
                if jobs > 1
                else ""
            )
            click.echo(
                f"{recipe.name}: {len(recipe.rows)} row(s) x {seeds} seed(s), profile {recipe.profile}"
                f"{how}, writing to {out}",
                err=True,
            )
            for line in recipe.shadowed():
                click.echo(f"note: {line}", err=True)
        try:
            results = run_recipe(
                recipe, options, on_results=lambda r: write_report(out, r, energy_model=energy_model)
            )
            finished = True
        except (DatasetNotFound, DatasetFormatError, OutputBusy, OutputNotWritable, CheckpointError) as err:
            raise _fail(str(err))
        except KeyboardInterrupt:
            if main:
                hint = resume_hint
                if world > 1 and hint.startswith("hnn-bridge "):
                    hint = f"torchrun --nproc_per_node {world} -m hnn_bridge " + hint[len("hnn-bridge ") :]
                click.echo(
                    f"\ninterrupted: finished epochs and rows are saved in {out}; continue with\n  {hint}",
                    err=True,
                )
            raise SystemExit(130)
    finally:
        teardown(dist, wait=finished)
    if main:
        click.echo(render_table(results, energy_model))
        click.echo(
            f"wrote {out}/results.json, results.csv, table.md, epochs.csv, accuracy.png, energy.png, "
            "rates.png, "
            "checkpoints/",
            err=True,
        )
    return results

"""`hnn-bridge export RUN_DIR --row N --nir FILE`: a trained network's spiking part as NIR."""

from __future__ import annotations

from pathlib import Path

import click

from ..training.trained import TrainedRunError, load_trained


@click.command("export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--row", type=click.IntRange(min=1), required=True, help="Row of the run's table (1-based).")
@click.option(
    "--seed",
    "seed_index",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed index of the row.",
)
@click.option(
    "--nir",
    "nir_file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The NIR file to write (HDF5, read by nir.read).",
)
@click.option(
    "--mode",
    type=click.Choice(["exact", "lif"]),
    default="exact",
    show_default=True,
    help="exact: the IIR neuron as an exact NIR subgraph (import_nir gives the same spikes); lif: the "
    "nearest standard neurons (CubaLIF), lossy, for simulators that cannot run the exact graph.",
)
def export(run_dir: Path, row: int, seed_index: int, nir_file: Path, mode: str) -> None:
    """Write the spiking part (from the coder on) of a trained network in RUN_DIR as NIR.

    The ALs and the coder are not part of NIR; `hnn_bridge.nir_export.nir_input(model,
    images)` gives the graph's input (one time step of the coded train at a time)."""
    try:
        from ..nir_export import export_nir
    except ImportError as err:  # pragma: no cover - the module itself imports nir lazily
        raise click.ClickException(str(err))
    try:
        model = load_trained(run_dir, row, seed_index)
        graph = export_nir(model, mode=mode)
        import nir

        nir.write(str(nir_file), graph)
    except ImportError:
        raise click.ClickException("NIR export needs the optional extra: pip install 'hnn-bridge[nir]'")
    except (TrainedRunError, ValueError, OSError) as err:
        raise click.ClickException(str(err))
    click.echo(
        f"wrote {nir_file}: row {row} ({model.arch}) seed {seed_index}, mode {mode}, {len(graph.nodes)} nodes"
    )

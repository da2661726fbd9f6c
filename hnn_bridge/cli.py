"""The `hnn-bridge` command line tool: one sub-command per module in `hnn_bridge.commands`."""

from __future__ import annotations

import click

from . import __version__
from .commands.bench import bench
from .commands.describe import describe
from .commands.export import export
from .commands.recipe import recipe
from .commands.report import report
from .commands.train import train
from .kernels.heap import reuse_freed_memory


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hnn-bridge")
def main() -> None:
    """Build, train and compare hybrid ANN-SNN networks (Muramatsu & Yu, 2021)."""
    reuse_freed_memory()  # each training step reuses the last one's memory ($HNN_BRIDGE_HEAP=0: not)


main.add_command(describe)
main.add_command(recipe)
main.add_command(train)
main.add_command(report)
main.add_command(bench)
main.add_command(export)

if __name__ == "__main__":
    main()

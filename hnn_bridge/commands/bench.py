"""`hnn-bridge bench`: time and memory of our neuron and networks next to SpikingJelly's
stock LIFNode and snnTorch's stock Leaky, measured in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..backends import BACKENDS

SUITES = ("neuron", "network", "epoch", "cnn", "all")


def _backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BACKENDS]
    if bad or not names:
        raise click.BadParameter(
            f"{', '.join(bad) or '(none)'}: choose from {', '.join(BACKENDS)}", param_hint="--backends"
        )
    return names


@click.command()
@click.option(
    "--suite",
    type=click.Choice(SUITES),
    default="neuron",
    show_default=True,
    help="neuron: one layer on [T, B, N]; network: the paper's MLP and a CNN; epoch: one training "
    "epoch of a recipe row; cnn: a training step of the paper's five CIFAR-10 CNN rows against "
    "the floor of their weight ops, with its peak memory, and the forward alone as evaluation "
    "runs it (no graph); all: neuron, network and epoch.",
)
@click.option(
    "--steps", "-T", type=click.IntRange(min=1), default=None, help="Time steps T [default: 25; cnn: 8]."
)
@click.option(
    "--batch", "-B", type=click.IntRange(min=1), default=None, help="Batch size [default: 64; cnn: 32]."
)
@click.option(
    "--neurons",
    "-N",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Neurons of the layer (neuron suite).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=None,
    help="Timed repeats per contender [default: 20 neuron, 10 network].",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=None,
    help="Untimed warm-up calls per contender [default: 3 neuron, 2 network, 2 epoch steps].",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option(
    "--backends",
    default="reference,spikingjelly,snntorch",
    show_default=True,
    help=f"Our backends to time, comma separated ({', '.join(BACKENDS)}).",
)
@click.option(
    "--archs",
    default=None,
    help="Networks of the network suite, comma separated [default: A784-S500-S10 and "
    "A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10]; cnn suite: row labels ('pure SNN', '1 AL', '3 ALs', "
    "'5 ALs', 'pure ANN') or architectures [default: all five].",
)
@click.option(
    "--precision",
    "precisions",
    default="32",
    show_default=True,
    help="cnn suite: comma-separated precisions of ours and the floor (32, bf16, 16).",
)
@click.option(
    "--profile", is_flag=True, help="cnn suite: add a torch.profiler breakdown of our step by category."
)
@click.option("--no-ablations", is_flag=True, help="Network/epoch suites: skip the ablations of ours.")
@click.option(
    "--recipe", "recipe_name", default="table1a", show_default=True, help="Epoch suite: recipe name or file."
)
@click.option(
    "--row",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Epoch suite: 1-based row of the recipe (table1a row 3: A784-S500-S10, duplicate, simultaneous).",
)
@click.option(
    "--dataset",
    type=click.Choice(["mnist", "mnist-5k"]),
    default=None,
    help="Epoch suite: dataset [default: the recipe's, mnist].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder with the datasets (e.g. ../shared/datasets).",
)
@click.option(
    "--limit-batches",
    type=click.IntRange(min=1),
    default=None,
    help="Epoch suite: time only the first N batches and scale to the whole epoch (flagged as an estimate).",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads before measuring."
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Write the results (all samples' summaries, memory, machine) as JSON here.",
)
def bench(
    suite,
    steps,
    batch,
    neurons,
    repeats,
    warmup,
    device,
    backends,
    archs,
    precisions,
    profile,
    no_ablations,
    recipe_name,
    row,
    dataset,
    data_dir,
    limit_batches,
    threads,
    json_path,
) -> None:
    """Time forward+backward and measure memory of our neuron, networks and a training epoch
    next to SpikingJelly's stock LIFNode and snnTorch's stock Leaky, in one interleaved run.

    Prints a Markdown table per suite with the medians and the ratios ours / theirs, and
    with --json writes everything. Memory: autograd's saved-tensor bytes, and the peak
    allocated above the start of a call (CUDA: max_memory_allocated; CPU: glibc heap).
    """
    import torch

    from ..bench import suites
    from ..bench.epoch import epoch_suite
    from ..errors import ConfigError
    from ..precision import PRECISIONS, check_precision

    names = _backends(backends)
    precision_list = [p.strip() for p in precisions.split(",") if p.strip()]
    for p in precision_list:
        if p not in PRECISIONS:
            raise click.BadParameter(f"{p!r}: choose from {', '.join(PRECISIONS)}", param_hint="--precision")
    # the wrong suite first: that message holds on every machine, the hardware one below not
    if suite != "cnn" and (precision_list != ["32"] or profile):
        raise click.UsageError(
            "--precision and --profile are measured by the cnn suite only; add --suite cnn"
        )
    for p in precision_list:
        try:
            check_precision(p, device)
        except ConfigError as err:
            raise click.UsageError(str(err))
    if device == "cuda" and not torch.cuda.is_available():
        raise click.UsageError("--device cuda: no CUDA device is available")
    if threads:
        torch.set_num_threads(threads)
    chosen = ["neuron", "network", "epoch"] if suite == "all" else [suite]
    results = []

    def echo(text: str) -> None:
        click.echo(text, err=True)

    for name in chosen:
        echo(f"[bench] {name} suite ...")
        if name == "cnn":
            from ..bench.cnn import cnn_suite, render_cnn

            arch_list = [a.strip() for a in archs.split(",") if a.strip()] if archs else None
            result = cnn_suite(
                archs=arch_list,
                steps=steps or 8,
                batch=batch or 32,
                backends=names,
                precisions=precision_list,
                repeats=repeats or 7,
                warmup=2 if warmup is None else warmup,
                device=device,
                profile=profile,
            )
            results.append(result)
            click.echo(render_cnn(result))
            click.echo("")
            continue
        steps, batch = steps or 25, batch or 64
        if name == "neuron":
            result = suites.neuron_suite(
                steps=steps,
                batch=batch,
                neurons=neurons,
                backends=names,
                repeats=repeats or 20,
                warmup=3 if warmup is None else warmup,
                device=device,
            )
        elif name == "network":
            arch_list = (
                [a.strip() for a in archs.split(",") if a.strip()] if archs else list(suites.DEFAULT_ARCHS)
            )
            result = suites.network_suite(
                archs=arch_list,
                steps=steps,
                batch=batch,
                backends=names,
                repeats=repeats or 10,
                warmup=2 if warmup is None else warmup,
                device=device,
                ablations=not no_ablations,
            )
        else:
            try:
                result = epoch_suite(
                    recipe=recipe_name,
                    row=row,
                    steps=steps,
                    batch=batch,
                    backends=names,
                    dataset=dataset,
                    data_dir=data_dir,
                    limit_batches=limit_batches,
                    warmup=2 if warmup is None else warmup,
                    device=device,
                    ablations=not no_ablations,
                    progress=echo,
                )
            except (FileNotFoundError, ValueError) as err:
                raise click.ClickException(f"epoch suite: {err}")
        results.append(result)
        click.echo(suites.render(result))
        click.echo("")
    if json_path:
        path = Path(json_path)
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"results": results}, indent=2, default=str) + "\n", encoding="utf-8")
        echo(f"[bench] wrote {path}")

"""`hnn-bridge train ARCH`: train one ad-hoc network with the outputs of a recipe run."""

from __future__ import annotations

from pathlib import Path

import click

from ..notation import parse_arch
from ..errors import ArchError
from ..recipe import (ACTIVATION_NAMES, AUGMENT_NAMES, CODER_NAMES, INPUT_SHAPES, NORM_NAMES, Recipe, RecipeError,
                      load_recipe)
from ..precision import PRECISIONS
from ._execute import check_device, execute


@click.command("train")
@click.argument("arch")
@click.option("--coder", type=click.Choice(CODER_NAMES), default=None,
              help="Coder between ALs and SLs [default: duplicate; none for an all-A ARCH].")
@click.option("--training", type=click.Choice(["simultaneous", "separate"]), default="simultaneous",
              show_default=True, help="§3.1: all layers from scratch, or pre-trained frozen ALs.")
@click.option("--dataset", type=click.Choice(sorted(INPUT_SHAPES)), default=None,
              help="[default: mnist; mnist-5k with --quick]")
@click.option("--quick", is_flag=True, help="The smoke profile of the dataset's paper recipe.")
@click.option("--epochs", type=click.IntRange(min=1), help="[default: the paper's, 100 MNIST / 150 CIFAR-10]")
@click.option("--steps", "-T", type=click.IntRange(min=1), help="Time steps T [default: 25].")
@click.option("--batch-size", type=click.IntRange(min=1), help="[default: 64]")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate [default: 1e-4].")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="[default: 0.3]")
@click.option("--activation", type=click.Choice(ACTIVATION_NAMES), help="AL activation [default: auto].")
@click.option("--norm", type=click.Choice(NORM_NAMES),
              help="Batch norm after every weight op [default: the recipe's; none on MNIST, batch on CIFAR-10].")
@click.option("--augment", type=click.Choice(AUGMENT_NAMES),
              help="Augment training images: crop-rotate is Fang et al.'s random resized crop and rotation "
              "[default: none].")
@click.option("--input-mode", type=click.Choice(["direct", "axon"]), help="§4.2 [default: direct].")
@click.option("--seed", type=click.IntRange(min=0), help="Base seed [default: 0].")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--backend", default=None, help="Neuron backend (see hnn_bridge.backends.BACKENDS).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="32: float32; bf16: bfloat16 autocast (CPUs with AVX-512 BF16/AMX, CUDA); 16: float16 "
              "autocast with a GradScaler (CUDA). The neuron's state stays float32 [default: the recipe's, 32].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: runs/train-ARCH].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the seeds (and a separate row's pure ANN first) in this many worker processes.")
@click.option("--test-every-epoch", is_flag=True,
              help="Also score every epoch's weights on test, to report the best test epoch (as Fang et al.'s "
              "code does) beside the best-validation one; the selection and the training are unchanged.")
def train(arch: str, coder: str | None, training: str, dataset: str | None, quick: bool, epochs: int | None,
          steps: int | None, batch_size: int | None, lr: float | None, dropout: float | None,
          activation: str | None, norm: str | None, augment: str | None, input_mode: str | None, seed: int | None,
          seeds: int, device: str, backend: str | None, precision: str | None, data_dir: Path | None,
          out: Path | None, resume: bool, jobs: int, test_every_epoch: bool) -> None:
    """Train one network ARCH (paper notation) and report its test accuracy.

    Every hyperparameter not given is taken from the paper recipe of the dataset
    (table1a for the 28x28 datasets, table1b for CIFAR-10); --quick uses its smoke profile.

    \b
    Data parallel (PyTorch DDP: one process per GPU, or gloo processes on the CPU):
      torchrun --nproc_per_node N -m hnn_bridge train ARCH --out DIR
    Each process takes batch_size / N rows of every global batch (batch_size must be
    divisible by N); rank 0 alone writes the files and prints.
    """
    device = check_device(device)
    try:
        specs = parse_arch(arch)
    except ArchError as err:
        raise click.BadParameter(str(err), param_hint="ARCH")
    if coder is None:
        coder = "duplicate" if any(s.spiking for s in specs) else "none"
    base = load_recipe("table1b" if dataset == "cifar10" else "table1a")
    given = {"dataset": dataset, "epochs": epochs, "steps": steps, "batch_size": batch_size, "lr": lr,
             "dropout": dropout, "activation": activation, "norm": norm, "augment": augment, "input_mode": input_mode,
             "seed": seed, "backend": backend, "precision": precision}
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        single = Recipe.single(arch, coder=None if coder == "none" else coder, training=training, base=base,
                               row_keys={"dataset": dataset} if dataset else None)
        configured = single.configure(quick=quick, overrides=overrides)
    except RecipeError as err:
        raise click.ClickException(str(err))
    if out is None:
        out = Path("runs") / f"train-{configured.rows[0].arch}"
    hint = f"the same `hnn-bridge train {arch} ...` command with --out {out} --resume"
    execute(configured, out=out, seeds=seeds, device=device, data_dir=data_dir, resume=resume, resume_hint=hint,
            jobs=jobs, test_every_epoch=test_every_epoch)

"""`hnn-bridge train ARCH`: train one ad-hoc network with the outputs of a recipe run."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import click

from ..builder import INPUT_MODES, NORMS, TRAININGS
from ..data import DATASET_NAMES
from ..errors import ArchError
from ..notation import parse_arch
from ..precision import PRECISIONS
from ..recipe import (
    ACTIVATION_NAMES,
    AUGMENT_NAMES,
    CODER_NAMES,
    Recipe,
    RecipeError,
    Settings,
    load_recipe,
)
from ._execute import check_device, execute
from .report import energy_model_option

#: The paper recipe whose settings `train` inherits, per family of datasets (the 28x28
#: datasets: table1a; CIFAR-10: table1b), and the dataset that selects it.
BASE_RECIPES = {"MNIST": ("table1a", None), "CIFAR-10": ("table1b", "cifar10")}


def base_recipe(dataset: str | None) -> Recipe:
    """The paper recipe that an ad-hoc network on ``dataset`` inherits its settings from."""
    return load_recipe(BASE_RECIPES["CIFAR-10" if dataset == "cifar10" else "MNIST"][0])


@lru_cache(maxsize=None)
def inherited_settings(*, quick: bool) -> dict[str, Settings]:
    """The settings that `train` runs with when an option is left out, per family of
    datasets (`BASE_RECIPES`), at the full budget or with ``--quick``: resolved as a run
    resolves them (`Recipe.single`, then `Recipe.configure`)."""
    out = {}
    for family, (_, dataset) in BASE_RECIPES.items():
        single = Recipe.single(
            "A1C3-A10",
            coder=None,
            training="simultaneous",
            base=base_recipe(dataset),
            row_keys={"dataset": dataset} if dataset else None,
        )
        out[family] = single.configure(quick=quick).rows[0].settings
    return out


def _say(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_help(key: str, *, families: tuple[str, ...] = tuple(BASE_RECIPES)) -> str:
    """``[default: ...]`` for the setting ``key`` of `Settings`, as `inherited_settings`
    gives it: one value where every family agrees, else one per family, and the
    ``--quick`` values where they differ from the full budget's."""

    def say(quick: bool) -> str:
        table = inherited_settings(quick=quick)
        values = {family: _say(getattr(table[family], key)) for family in families}
        if len(set(values.values())) == 1:
            return next(iter(values.values()))
        return ", ".join(f"{value} {family}" for family, value in values.items())

    full, quick = say(False), say(True)
    return f"[default: {full}" + (f"; --quick: {quick}" if quick != full else "") + "]"


class _DatasetName(click.Choice):
    """The named datasets, or ``imagefolder:PATH`` (the folder is checked as the recipe resolves)."""

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        from ..data import IMAGE_FOLDER_PREFIX

        if isinstance(value, str) and value.startswith(IMAGE_FOLDER_PREFIX):
            return value
        return super().convert(value, param, ctx)


@click.command("train")
@click.argument("arch")
@click.option(
    "--coder",
    type=click.Choice(CODER_NAMES),
    default=None,
    help="Coder between ALs and SLs [default: duplicate; none for an all-A ARCH].",
)
@click.option(
    "--training",
    type=click.Choice(TRAININGS),
    default="simultaneous",
    show_default=True,
    help="§3.1: all layers from scratch, or pre-trained frozen ALs.",
)
@click.option(
    "--dataset",
    type=_DatasetName([*sorted(DATASET_NAMES), "imagefolder:PATH"]),
    default=None,
    help="A named dataset, or imagefolder:PATH: your images, one folder per class "
    f"{default_help('dataset', families=('MNIST',))}",
)
@click.option("--quick", is_flag=True, help="The smoke profile of the dataset's paper recipe.")
@click.option("--epochs", type=click.IntRange(min=1), help=default_help("epochs"))
@click.option("--steps", "-T", type=click.IntRange(min=1), help=f"Time steps T {default_help('steps')}.")
@click.option("--batch-size", type=click.IntRange(min=1), help=default_help("batch_size"))
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    help=f"Adam learning rate, decayed at the recipe's milestones {default_help('lr')}.",
)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    help=f"Dropout probability between layers {default_help('dropout')}.",
)
@click.option(
    "--activation",
    type=click.Choice(ACTIVATION_NAMES),
    help=f"AL activation (auto: sigmoid with the poisson coder, else relu) {default_help('activation')}.",
)
@click.option(
    "--norm", type=click.Choice(NORMS), help=f"Batch norm after every weight op {default_help('norm')}."
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENT_NAMES),
    help="Augment training images: crop-rotate is Fang et al.'s random resized crop and rotation "
    f"{default_help('augment')}.",
)
@click.option("--input-mode", type=click.Choice(INPUT_MODES), help=f"§4.2 {default_help('input_mode')}.")
@click.option("--seed", type=click.IntRange(min=0), help=f"Base seed {default_help('seed')}.")
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--backend", default=None, help="Neuron backend (see hnn_bridge.backends.BACKENDS).")
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="32: float32; bf16: bfloat16 autocast (CPUs with AVX-512 BF16/AMX, CUDA); 16: float16 "
    f"autocast with a GradScaler (CUDA). The neuron's state stays float32 {default_help('precision')}.",
)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: runs/train-ARCH].",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run the seeds (and a separate row's pure ANN first) in this many worker processes.",
)
@click.option(
    "--test-every-epoch",
    is_flag=True,
    help="Also score every epoch's weights on test, to report the best test epoch (as Fang et al.'s "
    "code does) beside the best-validation one; the selection and the training are unchanged.",
)
@energy_model_option
def train(
    arch: str,
    coder: str | None,
    training: str,
    dataset: str | None,
    quick: bool,
    epochs: int | None,
    steps: int | None,
    batch_size: int | None,
    lr: float | None,
    dropout: float | None,
    activation: str | None,
    norm: str | None,
    augment: str | None,
    input_mode: str | None,
    seed: int | None,
    seeds: int,
    device: str,
    backend: str | None,
    precision: str | None,
    data_dir: Path | None,
    out: Path | None,
    resume: bool,
    jobs: int,
    test_every_epoch: bool,
    energy_model: str,
) -> None:
    """Train one network ARCH (paper notation) and report its test accuracy.

    Every hyperparameter not given is taken from the paper recipe of the dataset
    (table1a for the 28x28 datasets and image folders, table1b for CIFAR-10); --quick uses
    its smoke profile.

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
    base = base_recipe(dataset)
    given = {
        "dataset": dataset,
        "epochs": epochs,
        "steps": steps,
        "batch_size": batch_size,
        "lr": lr,
        "dropout": dropout,
        "activation": activation,
        "norm": norm,
        "augment": augment,
        "input_mode": input_mode,
        "seed": seed,
        "backend": backend,
        "precision": precision,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    try:
        single = Recipe.single(
            arch,
            coder=None if coder == "none" else coder,
            training=training,
            base=base,
            row_keys={"dataset": dataset} if dataset else None,
        )
        configured = single.configure(quick=quick, overrides=overrides)
    except RecipeError as err:
        raise click.ClickException(str(err))
    if out is None:
        out = Path("runs") / f"train-{configured.rows[0].arch}"
    hint = f"the same `hnn-bridge train {arch} ...` command with --out {out} --resume"
    execute(
        configured,
        out=out,
        seeds=seeds,
        device=device,
        data_dir=data_dir,
        resume=resume,
        resume_hint=hint,
        jobs=jobs,
        test_every_epoch=test_every_epoch,
        energy_model=energy_model,
    )

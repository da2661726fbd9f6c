"""`hnn-bridge recipe NAME|PATH`: reproduce one table of the paper (or list the recipes)."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from ..builder import BIAS_PLACEMENTS, NORMS
from ..precision import PRECISIONS
from ..recipe import AUGMENT_NAMES, PROFILES, RecipeError, list_recipes, load_recipe, parse_rows
from ._execute import check_device, execute
from .report import energy_model_option


def _listing() -> str:
    lines = [f"{'name':<9} {'paper':<12} {'dataset':<8} {'rows':>4}  {'profiles':<15}  title"]
    for name in list_recipes():
        r = load_recipe(name)
        profiles = "full quick" + (" cpu" if r.cpu else "")
        lines.append(
            f"{name:<9} {r.paper_table:<12} {r.dataset:<8} {len(r.rows):>4}  {profiles:<15}  {r.title}"
        )
    lines.append(
        "\nrun one with `hnn-bridge recipe NAME` (add --quick for a smoke run, --profile cpu for a CIFAR-10 "
        "table on a CPU), or pass a .toml path"
    )
    return "\n".join(lines)


def _resume_command(
    name: str,
    profile: str,
    epochs: int | None,
    steps: int | None,
    rows: str | None,
    seeds: int,
    device: str,
    backend: str | None,
    data_dir: Path | None,
    out: Path,
    jobs: int = 1,
    norm: str | None = None,
    precision: str | None = None,
    test_every_epoch: bool = False,
    augment: str | None = None,
    bias_placement: str | None = None,
) -> list[str]:
    """The command line that continues this run."""
    argv = ["hnn-bridge", "recipe", name]
    argv += {"full": [], "quick": ["--quick"]}.get(profile, ["--profile", profile])
    for flag, value in (
        ("--epochs", epochs),
        ("--steps", steps),
        ("--rows", rows),
        ("--backend", backend),
        ("--norm", norm),
        ("--augment", augment),
        ("--bias-placement", bias_placement),
        ("--precision", precision),
        ("--data-dir", data_dir),
    ):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--seeds", str(seeds)] if seeds != 1 else []
    argv += ["--device", device] if device != "cpu" else []
    argv += ["--jobs", str(jobs)] if jobs != 1 else []
    argv += ["--test-every-epoch"] if test_every_epoch else []
    return [*argv, "--out", str(out), "--resume"]


@click.command("recipe")
@click.argument("name", required=False, metavar="NAME|PATH")
@click.option("--list", "show_list", is_flag=True, help="List the shipped recipes and exit.")
@click.option(
    "--quick",
    is_flag=True,
    help="The recipe's [quick] profile: a smoke run (minutes on a CPU); = --profile quick.",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default=None,
    help="full: the paper's budget [default]; quick: a smoke run; cpu: a CIFAR-10 table on a "
    "2-core CPU in about 2 hours (subset, fewer epochs and steps).",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Override the number of epochs.")
@click.option("--steps", "-T", type=click.IntRange(min=1), help="Override the time steps T.")
@click.option("--rows", "rows_text", metavar="LIST", help="Only these rows (1-based), e.g. 1,3-4.")
@click.option(
    "--seeds",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Train every row with this many seeds; the table shows mean ± std.",
)
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N.")
@click.option("--backend", default=None, help="Neuron backend (see hnn_bridge.backends.BACKENDS).")
@click.option(
    "--norm",
    type=click.Choice(NORMS),
    default=None,
    help="Override the recipe's normalisation (batch: a BatchNorm after every weight op).",
)
@click.option(
    "--augment",
    type=click.Choice(AUGMENT_NAMES),
    default=None,
    help="Override the recipe's augmentation of training images (crop-rotate: Fang et al.'s).",
)
@click.option(
    "--bias-placement",
    type=click.Choice(BIAS_PLACEMENTS),
    default=None,
    help="Override where each spiking layer's bias acts: after_filter (Fang et al.'s layers) or "
    "before_filter (filtered with the current, as runs before 2026-12-06).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="32: float32; bf16: bfloat16 autocast (CPUs with AVX-512 BF16/AMX, CUDA); 16: float16 "
    "autocast with a GradScaler (CUDA). The neuron's state stays float32 [default: the recipe's, 32].",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the datasets (else $HNN_BRIDGE_DATA or the user cache; downloads if missing).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder [default: runs/NAME, or runs/NAME-PROFILE].",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue an interrupted run in --out: skip finished rows, "
    "continue the interrupted one from its last finished epoch.",
)
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Run independent (row, seed) jobs in this many worker processes, each with "
    "cpu_count / N threads (seeded per job: the results of a sequential run).",
)
@click.option(
    "--test-every-epoch",
    is_flag=True,
    help="Also score every epoch's weights on test, to report the best test epoch (as Fang et al.'s "
    "code does) beside the best-validation one; the selection and the training are unchanged.",
)
@energy_model_option
def recipe(
    name: str | None,
    show_list: bool,
    quick: bool,
    profile: str | None,
    epochs: int | None,
    steps: int | None,
    rows_text: str | None,
    seeds: int,
    device: str,
    backend: str | None,
    norm: str | None,
    augment: str | None,
    bias_placement: str | None,
    precision: str | None,
    data_dir: Path | None,
    out: Path | None,
    resume: bool,
    jobs: int,
    test_every_epoch: bool,
    energy_model: str,
) -> None:
    """Train the rows of a paper table and compare with the paper.

    NAME is a shipped recipe (table1a, table1b, table2a, table2b, table3a, table3b, sec4_2;
    see --list) or the path of a TOML recipe file. Writes results.json, results.csv,
    table.md, epochs.csv, accuracy.png, energy.png, rates.png and checkpoints/ into --out
    and prints the table.

    \b
    Data parallel (PyTorch DDP: one process per GPU, or gloo processes on the CPU):
      torchrun --nproc_per_node N -m hnn_bridge recipe NAME --out DIR
    Each process takes batch_size / N rows of every global batch (batch_size must be
    divisible by N); rank 0 alone writes the files and prints. --jobs N instead runs
    independent (row, seed) jobs in N worker processes on one machine; not both.
    """
    if show_list:
        click.echo(_listing())
        return
    if name is None:
        raise click.UsageError("give a recipe NAME or PATH, or --list to see the shipped recipes")
    if quick and profile not in (None, "quick"):
        raise click.UsageError(f"--quick is --profile quick; it cannot be combined with --profile {profile}")
    profile = profile or ("quick" if quick else "full")
    device = check_device(device)
    overrides = {
        k: v
        for k, v in (
            ("epochs", epochs),
            ("steps", steps),
            ("backend", backend),
            ("norm", norm),
            ("augment", augment),
            ("bias_placement", bias_placement),
            ("precision", precision),
        )
        if v is not None
    }
    try:
        loaded = load_recipe(name)
        configured = loaded.configure(profile=profile, overrides=overrides)
        configured = configured.select(parse_rows(rows_text, len(loaded.rows)))
    except RecipeError as err:
        raise click.ClickException(str(err))
    if out is None:
        out = Path("runs") / (configured.name + ("" if profile == "full" else f"-{profile}"))
    hint = " ".join(
        shlex.quote(a)
        for a in _resume_command(
            name,
            profile,
            epochs,
            steps,
            rows_text,
            seeds,
            device,
            backend,
            data_dir,
            out,
            jobs,
            norm,
            precision,
            test_every_epoch,
            augment,
            bias_placement,
        )
    )
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

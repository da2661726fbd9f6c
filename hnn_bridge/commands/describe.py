"""`hnn-bridge describe ARCH`: layers, where the coder sits, the operations of one inference
and their energy, layer by layer, under an energy model (`hnn_bridge.energy`)."""

from __future__ import annotations

import click

from ..builder import INPUT_MODES, NORMS, Default, HybridNet, build
from ..coders import CODERS
from ..energy import DEFAULT_ENERGY_MODEL, energy_note, layer_terms
from ..errors import ArchError, ConfigError
from ..ops import assumed_counts
from .report import energy_model_option


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def render(model: HybridNet, rate: float, energy_model: str = DEFAULT_ENERGY_MODEL) -> str:
    """The text `describe` prints (also used by tests and reports): per layer its MACs
    (dense), ACs (each spike with its position's real fan-out) and energy under
    ``energy_model``, then each layer's energy by term."""
    counts = assumed_counts(model, rate)
    terms = layer_terms(energy_model, counts)
    s = model.settings
    c, h, w = s["input_shape"]
    head = f"{model.arch}   input {c}x{h}x{w}"
    if model.coder is None:
        head += "   pure ANN (no coder)"
    else:
        head += f"   coder {s['coder']}, T={s['steps']}, input {s['input_mode']}, backend {s['backend']}"
    if s.get("norm", "none") != "none":
        head += f"   norm {s['norm']}"
    lines = [head, ""]
    cols = (
        f"{'#':>2}  {'token':<8} {'part':<6} {'output':<10} {'params':>11} {'MACs':>14} {'ACs':>14} "
        f"{'energy pJ':>12}  fed by"
    )
    lines += [cols, "-" * len(cols)]
    coder_done = model.coder is None
    for info, row, t in zip(model.layers, counts, terms):
        if not coder_done and info.part == "SL" or (not coder_done and info.part == "pool" and info.per_step):
            kind = (
                "constant over T: the first SL weighs it once per image"
                if model.first_op is not None
                else "per step"
            )
            lines.append(f"    -- {s['coder']} coder: [B, ...] -> [T={s['steps']}, B, ...] ({kind})")
            coder_done = True
        fed = "" if info.part in ("input", "pool") else info.fed_by
        if info.part == "SL" and info.fed_by == "spikes":
            fed += f" (rate {rate:g})"
        lines.append(
            f"{row.index:>2}  {info.token:<8} {info.part:<6} {_shape(info.out_shape):<10} {info.params:>11,} "
            f"{row.macs:>14,.0f} {row.acs:>14,.0f} {sum(t.values()):>12,.0f}  {fed}"
        )
    params = sum(p.numel() for p in model.parameters())
    total = sum(sum(t.values()) for t in terms)
    lines += [
        "-" * len(cols),
        f"parameters {params:,}   MACs {sum(r.macs for r in counts):,.0f}   ACs "
        f"{sum(r.acs for r in counts):,.0f}   "
        f"energy {total / 1e6:.4g} uJ per image ({energy_model})",
        f"(ACs at an assumed presynaptic firing rate of {rate:g}, set with --rate, SL outputs at the same "
        "rate; every value fed to a layer counted non-zero)",
        f"({energy_note(energy_model)})",
    ]
    names = list(terms[0]) if terms else []
    if len(names) > 2 or energy_model != "ops":
        lines += [
            "",
            f"energy by term (pJ per image), model {energy_model!r}:",
            f"{'#':>2}  {'token':<8} " + " ".join(f"{n:>12}" for n in names),
        ]
        for info, row, t in zip(model.layers, counts, terms):
            if any(t.values()):
                lines.append(f"{row.index:>2}  {info.token:<8} " + " ".join(f"{t[n]:>12,.0f}" for n in names))
        lines.append(
            f"{'':>2}  {'total':<8} " + " ".join(f"{sum(x[n] for x in terms):>12,.0f}" for n in names)
        )
    if s.get("norm", "none") != "none":
        lines.append(
            "(params include the batch norms; at inference a batch norm folds into the weight op "
            "before it, so it adds no operation)"
        )
    return "\n".join(lines)


@click.command()
@click.argument("arch")
@click.option(
    "--coder", type=click.Choice(CODERS), default=None, help="Coder between ALs and SLs [default: duplicate]."
)
@click.option(
    "--steps", "-T", type=click.IntRange(min=1), default=25, show_default=True, help="Time steps T."
)
@click.option(
    "--input-shape", default="1x28x28", show_default=True, help="C x H x W of one image (CIFAR-10: 3x32x32)."
)
@click.option("--input-mode", type=click.Choice(INPUT_MODES), default="direct", show_default=True)
@click.option(
    "--rate",
    type=click.FloatRange(0, 1),
    default=0.1,
    show_default=True,
    help="Assumed firing rate of spikes feeding SLs and of SL outputs, for the accumulate count.",
)
@click.option(
    "--norm",
    type=click.Choice(NORMS),
    default="none",
    show_default=True,
    help="batch: a batch norm after every weight op (as the CIFAR-10 recipes).",
)
@energy_model_option
def describe(
    arch: str,
    coder: str | None,
    steps: int,
    input_shape: str,
    input_mode: str,
    rate: float,
    norm: str,
    energy_model: str,
) -> None:
    """Print the layers of ARCH, where the coder sits, and the operations of one inference.

    ARCH is the paper's notation, for example A784-A500-S10. Operations are
    multiply-accumulates (ALs, and SLs fed by real values) and accumulates (SLs fed by
    spikes, at the firing rate --rate), with the energy of each layer under
    --energy-model."""
    try:
        shape = tuple(int(v) for v in input_shape.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{input_shape!r} is not CxHxW, e.g. 3x32x32", param_hint="--input-shape")
    try:
        model = build(
            arch,
            coder=Default.CODER if coder is None else coder,
            steps=steps,
            input_shape=shape,
            input_mode=input_mode,
            norm=norm,
        )
    except (ArchError, ConfigError) as err:
        raise click.UsageError(str(err))
    click.echo(render(model, rate, energy_model))

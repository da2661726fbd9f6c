"""Report files of a recipe run: ``results.json``, ``results.csv``, ``table.md``,
``accuracy.png`` (accuracy against the share of ALs, ours beside the paper's, as in the
paper's Figure 1 and §5 discussion), ``energy.png`` (accuracy against the estimated
energy per image under one energy model of `hnn_bridge.energy`, with the rows' Pareto
front) and ``rates.png`` (the validation firing rate of every
spiking layer after every epoch: a dead or saturated layer shows at a glance).

``results.json`` is the source of truth (written by the runner, see
`hnn_bridge.training.runner`); everything else is rendered from it, so ``hnn-bridge
report DIR`` can redo the table and the plot at any time.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import textwrap
from pathlib import Path
from typing import Any, Mapping

from .energy import DEFAULT_ENERGY_MODEL, EnergyModelError, energy_note
from .training.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json

__all__ = [
    "CSV_FIELDS",
    "load_results",
    "pareto_front",
    "plot_accuracy",
    "plot_energy",
    "plot_rates",
    "render_table",
    "summarize_row",
    "write_csv",
    "write_report",
]

CSV_FIELDS = (
    "row",
    "label",
    "arch",
    "coder",
    "training",
    "input_mode",
    "al_share",
    "paper",
    "acc_mean",
    "acc_std",
    "diff",
    "acc_argmax_mean",
    "tie_rate_mean",
    "silent_rate_mean",
    "macs",
    "acs",
    "energy_uj",
    "n_seeds",
    "epochs",
    "best_epochs",
    "steps",
    "wall_s",
    "status",
    "error",
    "effective_macs",
    "energy_model",
    "exact_counts",
)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _seed_energy(seed: Mapping[str, Any], model: str) -> float | None:
    """One seed's energy per image (uJ) under ``model``. A seed recorded before exact
    counts (no ``energy`` record) has only the ``ops`` estimate at rate x dense MACs;
    any other model is an error that says how to get the counts."""
    by_model = seed.get("energy")
    if isinstance(by_model, Mapping):
        if model not in by_model and seed.get("status") == "ok":
            raise EnergyModelError(
                f"this results file was recorded before the energy model {model!r} existed and its per-layer "
                f"counts (checkpoints/{seed.get('job')}.json) are not beside it; pick one of "
                f"{', '.join(by_model)}, or run the recipe again into a new --out with this version"
            )
        return by_model.get(model)
    if seed.get("energy_uj") is None or model == "ops":
        return seed.get("energy_uj")
    raise EnergyModelError(
        f"this results file was written before exact operation counts were recorded, so it holds no energy "
        f"under the {model!r} model (only 'ops', estimated at rate x dense MACs); to get them, run the "
        "recipe again into a new --out with this version (the counts are taken on the test set after "
        "training), or use --energy-model ops"
    )


def summarize_row(row: Mapping[str, Any], energy_model: str = DEFAULT_ENERGY_MODEL) -> dict[str, Any]:
    """Mean and sample standard deviation over the seeds of one row (accuracies in %);
    the energy per image under ``energy_model`` (see `hnn_bridge.energy`)."""
    seeds = [s for s in row.get("seeds", []) if s.get("test_acc") is not None and s.get("status") == "ok"]
    accs = [100.0 * s["test_acc"] for s in seeds]
    mean = statistics.fmean(accs) if accs else None
    std = statistics.stdev(accs) if len(accs) > 1 else (0.0 if accs else None)

    def avg(key: str, scale: float = 100.0) -> float | None:
        values = [s[key] for s in seeds if s.get(key) is not None]
        return scale * statistics.fmean(values) if values else None

    errors = [s.get("error") for s in row.get("seeds", []) if s.get("error")]
    paper = row.get("paper")
    settings = row.get("settings", {})
    return {
        "row": row["row"],
        "label": row["label"],
        "arch": row["arch"],
        "coder": row["coder"] or "none",
        "training": row["training"],
        "input_mode": settings.get("input_mode", ""),
        "al_share": row.get("al_share"),
        "paper": paper,
        "acc_mean": mean,
        "acc_std": std,
        "diff": None if mean is None or paper is None else mean - paper,
        "acc_argmax_mean": avg("test_acc_argmax"),
        "tie_rate_mean": avg("test_tie_rate"),
        "silent_rate_mean": avg("test_silent_rate"),
        "macs": avg("macs", 1.0),
        "acs": avg("acs", 1.0),
        "energy_uj": _mean([_seed_energy(x, energy_model) for x in seeds]),
        "n_seeds": len(seeds),
        "effective_macs": avg("effective_macs", 1.0),
        "energy_model": energy_model,
        "exact_counts": all(isinstance(x.get("energy"), Mapping) for x in seeds) if seeds else None,
        "epochs": max((s.get("epochs_run", 0) for s in row.get("seeds", [])), default=0),
        "best_epochs": ",".join(str(s.get("best_epoch")) for s in row.get("seeds", [])),
        "steps": settings.get("steps") if row.get("coder") else None,
        "wall_s": sum(s.get("wall_s") or 0.0 for s in row.get("seeds", [])),
        "status": row.get("status", "pending"),
        "error": "; ".join(errors) if errors else "",
    }


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _wall(seconds: float) -> str:
    from .training.progress import format_seconds

    return format_seconds(seconds)


def _budget(results: Mapping[str, Any]) -> str:
    rows = results.get("rows", [])
    if not rows:
        return ""
    s = rows[0].get("settings", {})
    parts = [f"dataset {s.get('dataset')}"]
    if s.get("subset"):
        parts.append(f"subset {s['subset']}")
    parts += [
        f"{s.get('epochs')} epochs",
        f"T = {s.get('steps')}",
        f"batch {s.get('batch_size')}",
        f"Adam lr {s.get('lr'):g}",
    ]
    if s.get("lr_milestones"):
        parts.append(f"x{s.get('lr_gamma'):g} at epochs {', '.join(map(str, s['lr_milestones']))}")
    parts.append(f"dropout {s.get('dropout')}")
    if s.get("norm", "none") != "none":
        parts.append(f"norm {s['norm']}")
    if "bias_placement" in s:  # results from before 2026-12-06 lack it: their SL biases were filtered
        parts.append(f"SL bias {s['bias_placement'].replace('_', ' ')}")
    parts += [f"{results.get('seeds', 1)} seed(s)", f"device {results.get('device')}"]
    return ", ".join(parts)


def render_table(results: Mapping[str, Any], energy_model: str = DEFAULT_ENERGY_MODEL) -> str:
    """The Markdown report: a heading, the budget, the table (energy under
    ``energy_model``) and the tie rule."""
    note = energy_note(energy_model)  # an unknown model fails here, before any row
    recipe = results.get("recipe", {})
    title = recipe.get("title", "")
    table = recipe.get("paper_table", "")
    head = f"## {table}: {title}" if table else f"## {title}"
    profile = results.get("profile", "full")
    overrides = results.get("overrides") or {}
    lines = [head, ""]
    where = f"Recipe `{recipe.get('name')}` ({recipe.get('source')}), profile {profile}"
    if overrides:
        where += ", overrides " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    lines += [where + ".", "", f"Budget: {_budget(results)}.", ""]
    for d in results.get("data", []):
        lines.append(f"Data: {d}.")
    if results.get("data"):
        lines.append("")
    n = results.get("seeds", 1)
    lines += [
        "| # | network | coder | training | ours (test acc. %) | paper | diff | argmax acc. | tie rate | "
        "MACs (M) | ACs (M) | energy "
        f"(uJ{'' if energy_model == DEFAULT_ENERGY_MODEL else ', ' + energy_model}) | "
        "epochs (best) | wall |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summaries = [summarize_row(row, energy_model) for row in results.get("rows", [])]
    for row, s in zip(results.get("rows", []), summaries):
        if s["status"] == "failed":
            first = next((x for x in row.get("seeds", []) if x.get("error")), {})
            ours = f"failed: {first.get('error', '')}"
        elif s["acc_mean"] is None:
            ours = "pending"
        else:
            ours = _fmt(s["acc_mean"]) + (f" ± {_fmt(s['acc_std'])}" if n > 1 else "")
            if s["status"] == "pending":
                ours += f" ({s['n_seeds']}/{n} seeds)"
        epochs = f"{s['epochs']} ({s['best_epochs']})" if s["epochs"] else "–"
        lines.append(
            f"| {s['row']} | {s['label']} | {s['coder']} | {s['training']} | {ours} | {_fmt(s['paper'])} | "
            f"{_fmt(s['diff'], sign=True)} | {_fmt(s['acc_argmax_mean'])} | "
            f"{_fmt(s['tie_rate_mean'])}{'%' if s['tie_rate_mean'] is not None else ''} | "
            f"{_millions(s['macs'])} | {_millions(s['acs'])} | {_fmt(s['energy_uj'], 3)} | {epochs} | "
            f"{_wall(s['wall_s']) if s['epochs'] else '–'} |"
        )
    std = " ± sample standard deviation" if n > 1 else ""
    lines += [
        "",
        f"ours: test accuracy of the best-validation epoch (§4.1), mean{std} over {n} seed(s); "
        "diff = ours − paper, in percentage points; wall = training time of the row (all seeds; "
        "pre-training of separate rows not included).",
        "",
        "MACs / ACs: millions of multiply-accumulates / accumulates per test image. MACs: dense (every "
        "weight use of ALs, once per image, and of SLs fed by real values, per step or once for a "
        "duplicate-coded train; results.csv has the effective MACs, zero inputs skipped, beside them). "
        + (
            "ACs: exact, every input spike of the test set with the real fan-out of its position "
            "(padding, pooling)"
            if all(s["exact_counts"] is not False for s in summaries)
            else "ACs: rows recorded before exact counts estimate them as measured mean input rate "
            "x dense MACs x T "
            "(too high for spiking convolutions: a spike at a padded border reaches fewer synapses)"
        )
        + f". Energy per image: {note}.",
        "",
        f"Tie rule: {results.get('tie_rule', '')}",
    ]
    notes = []
    for row in results.get("rows", []):
        for seed in row.get("seeds", []):
            who = f"row {row['row']} seed {seed.get('seed_index', 0)}"
            if seed.get("reused"):
                notes.append(
                    f"{who} was read back finished from {seed.get('job')}.json in the checkpoints "
                    "folder, not trained by this invocation (same settings; wall is that training's)."
                )
            if seed.get("resumed_after"):
                notes.append(
                    f"{who} was interrupted and resumed after epoch(s) "
                    f"{', '.join(map(str, seed['resumed_after']))}."
                )
            if seed.get("best_test_epoch") is not None:
                notes.append(
                    f"{who}: best *test* epoch {seed['best_test_epoch']} "
                    f"({_fmt(_pct(seed['best_test_acc_argmax']))}% "
                    "argmax; every epoch was scored on test, as Fang et al.'s code reports; the table "
                    "shows the best-validation epoch)."
                )
            warnings = seed.get("warnings") or []
            if warnings:
                more = (
                    f" (and {len(warnings) - 1} more warning(s) in results.json)" if len(warnings) > 1 else ""
                )
                notes.append(f"{who}: warning: {warnings[-1]}{more}.")
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    if not results.get("finished", True):
        lines += [
            "",
            "**Unfinished run**: rows marked pending have not been trained yet (continue with --resume).",
        ]
    return "\n".join(lines) + "\n"


def _millions(value: float | None) -> str:
    return "–" if value is None else f"{value / 1e6:.3g}"


def write_csv(results: Mapping[str, Any], energy_model: str = DEFAULT_ENERGY_MODEL) -> str:
    """One line per row (the summary of `summarize_row`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in results.get("rows", []):
        s = summarize_row(row, energy_model)
        writer.writerow({k: ("" if s[k] is None else s[k]) for k in CSV_FIELDS})
    return buffer.getvalue()


def _series_key(s: Mapping[str, Any], modes: set[str]) -> str:
    if s["coder"] == "none":
        return "pure ANN"
    key = f"{s['coder']}, {s['training']}"
    return key + (f", {s['input_mode']} input" if len(modes) > 1 else "")


_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink")


def _grouped(summaries: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(series name, colour, rows) per coder and training method; the pure ANN in black."""
    modes = {s["input_mode"] for s in summaries if s["coder"] != "none"}
    series: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        series.setdefault(_series_key(s, modes), []).append(s)
    return [
        (name, "black" if name == "pure ANN" else _COLORS[i % len(_COLORS)], items)
        for i, (name, items) in enumerate(series.items())
    ]


def _axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.6), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _png_bytes(fig) -> bytes:
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _png(fig, ax) -> bytes:
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")
    return _png_bytes(fig)


def plot_accuracy(results: Mapping[str, Any]) -> bytes:
    """PNG bytes: test accuracy against the share of ALs, one colour per coder and training
    method; ours solid with filled markers (error bars: std over seeds), the paper's dashed
    with hollow markers."""
    fig, ax = _axes()
    for name, color, items in _grouped([summarize_row(r) for r in results.get("rows", [])]):
        items = sorted(items, key=lambda s: (s["al_share"], s["row"]))
        marker = "*" if name == "pure ANN" else "o"
        ours = [s for s in items if s["acc_mean"] is not None]
        if ours:
            ax.errorbar(
                [s["al_share"] for s in ours],
                [s["acc_mean"] for s in ours],
                yerr=[s["acc_std"] or 0.0 for s in ours],
                color=color,
                marker=marker,
                linestyle="-",
                capsize=3,
                label=f"ours: {name}",
            )
        paper = [s for s in items if s["paper"] is not None]
        if paper:
            ax.plot(
                [s["al_share"] for s in paper],
                [s["paper"] for s in paper],
                color=color,
                marker=marker,
                markerfacecolor="none",
                linestyle="--",
                label=f"paper: {name}",
            )
    recipe = results.get("recipe", {})
    ax.set_xlabel("share of artificial layers")
    ax.set_ylabel("test accuracy (%)")
    ax.set_xlim(-0.05, 1.05)
    first = (results.get("rows") or [{}])[0].get("settings", {})
    budget = (
        f"{results.get('profile', 'full')} profile, {first.get('epochs')} epochs, T = {first.get('steps')}"
    )
    ax.set_title(
        f"{recipe.get('paper_table', '')} {recipe.get('title', '')}\n(ours: {budget}; "
        f"paper: {150 if recipe.get('dataset') == 'cifar10' else 100} epochs, T = 25)".strip(),
        fontsize=9,
    )
    return _png(fig, ax)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (energy, accuracy) points that no other point beats on both (less or equal
    energy and higher accuracy, or less energy and equal accuracy), by energy."""
    front: list[tuple[float, float]] = []
    for e, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or a > front[-1][1]:
            front.append((e, a))
    return front


def plot_energy(results: Mapping[str, Any], energy_model: str = DEFAULT_ENERGY_MODEL) -> bytes:
    """PNG bytes: our test accuracy against the energy per image under ``energy_model``
    (log scale), one point per row, labelled with its architecture, and the rows'
    Pareto front (grey steps)."""
    summaries = [
        s
        for s in (summarize_row(r, energy_model) for r in results.get("rows", []))
        if s["acc_mean"] is not None and s["energy_uj"]
    ]
    fig, ax = _axes()
    front = pareto_front([(s["energy_uj"], s["acc_mean"]) for s in summaries])
    if len(front) > 1:
        ax.step(
            [e for e, _ in front],
            [a for _, a in front],
            where="post",
            color="grey",
            alpha=0.6,
            linewidth=1,
            label="Pareto front",
        )
    for name, color, items in _grouped(summaries):
        ax.errorbar(
            [s["energy_uj"] for s in items],
            [s["acc_mean"] for s in items],
            yerr=[s["acc_std"] or 0.0 for s in items],
            color=color,
            linestyle="none",
            marker="*" if name == "pure ANN" else "o",
            capsize=3,
            label=name,
        )
        for s in items:
            ax.annotate(
                s["arch"],
                (s["energy_uj"], s["acc_mean"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    recipe = results.get("recipe", {})
    ax.set_xscale("log")
    ax.set_xlabel(f"estimated energy per image (uJ, log scale), model {energy_model!r}")
    ax.set_ylabel("test accuracy (%)")
    note = textwrap.fill(energy_note(energy_model), 120)
    ax.set_title(f"{recipe.get('paper_table', '')} {recipe.get('title', '')}\n({note})".strip(), fontsize=6)
    return _png(fig, ax)


def plot_rates(results: Mapping[str, Any]) -> bytes:
    """PNG bytes: one panel per spiking row (its first seed), the validation firing rate
    (spikes per neuron per step) of each SL after every epoch, on a log scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for row in results.get("rows", []):
        seeds = [s for s in row.get("seeds", []) if s.get("val_rates")]
        if seeds:
            panels.append((row, seeds[0]["val_rates"]))
    cols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / cols))
    fig = Figure(figsize=(4.2 * cols, 2.9 * nrows), dpi=100)
    FigureCanvasAgg(fig)
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no spiking row has finished an epoch yet", ha="center", va="center")
        ax.set_axis_off()
    for k, (row, history) in enumerate(panels):
        ax = fig.add_subplot(nrows, cols, k + 1)
        for j, key in enumerate(history[-1]):
            ys = [max(h.get(key, 0.0), 1e-5) for h in history]
            ax.plot(range(1, len(ys) + 1), ys, color=_COLORS[j % len(_COLORS)], label=key, marker=".")
        ax.set_yscale("log")
        ax.set_ylim(1e-5, 1.5)
        ax.set_title(f"row {row['row']}: {row['label']}"[:60], fontsize=7)
        ax.set_xlabel("epoch", fontsize=7)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("spikes / neuron / step", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=5, loc="lower left")
    recipe = results.get("recipe", {})
    fig.suptitle(
        f"{recipe.get('paper_table', '')} {recipe.get('title', '')}".strip()
        + "\nvalidation firing rate per spiking layer (0 drawn at 1e-5)",
        fontsize=8,
    )
    return _png_bytes(fig)


def write_report(
    out: str | Path,
    results: Mapping[str, Any],
    *,
    json_too: bool = True,
    energy_model: str = DEFAULT_ENERGY_MODEL,
) -> dict[str, Path]:
    """Write ``results.json`` (unless ``json_too`` is False), ``results.csv``, ``table.md``,
    ``accuracy.png``, ``energy.png`` and ``rates.png`` into ``out``, each atomically; the
    table, the CSV and ``energy.png`` show the energy under ``energy_model`` (results.json
    holds every model's). Returns the paths."""
    out = Path(out)
    names = ("results.json", "results.csv", "table.md", "accuracy.png", "energy.png", "rates.png")
    paths = {name: out / name for name in names}
    if json_too:
        atomic_write_json(paths["results.json"], results)
    table = render_table(results, energy_model)  # an unknown model or missing counts fail before the rest
    atomic_write_text(paths["results.csv"], write_csv(results, energy_model))
    atomic_write_text(paths["table.md"], table)
    atomic_write_bytes(paths["accuracy.png"], plot_accuracy(results))
    atomic_write_bytes(paths["energy.png"], plot_energy(results, energy_model))
    atomic_write_bytes(paths["rates.png"], plot_rates(results))
    return paths


def load_results(directory: str | Path) -> dict[str, Any]:
    """Read ``DIR/results.json`` (or a path to the file itself)."""
    path = Path(directory)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run `hnn-bridge recipe ... --out DIR` first)")
    results = read_json(path)
    if not isinstance(results, dict) or "rows" not in results:
        raise ValueError(f"{path}: not an hnn-bridge results file")
    _price_new_models(results, path.parent / "checkpoints")
    return results


def _price_new_models(results: Mapping[str, Any], checkpoints: Path) -> None:
    """Add to every seed that recorded exact counts the energy under models added since
    (its per-layer counts are in ``checkpoints/JOB.json``)."""
    from .energy import ENERGY_MODELS, counts_from_record, energy_pj

    for row in results.get("rows", []):
        for seed in row.get("seeds", []):
            energy = seed.get("energy")
            missing = [m for m in ENERGY_MODELS if isinstance(energy, dict) and m not in energy]
            job = checkpoints / f"{seed.get('job')}.json"
            if not missing or not job.is_file():
                continue
            record = (read_json(job).get("test") or {}).get("ops") or {}
            if record.get("counts"):
                layers = counts_from_record(record)
                energy.update({m: energy_pj(m, layers) / 1e6 for m in missing})

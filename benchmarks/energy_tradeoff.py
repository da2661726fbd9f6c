"""The paper's trade-off on the energy axis, from committed results files (issue 31, item 4).

The committed runs predate exact counts: their results hold each row's total ACs per
test image (measured mean input rate x dense MACs x T) and, for later runs, every SL's
validation firing rate per epoch. This script rebuilds each row's network and counts it
with `hnn_bridge.ops.assumed_counts` at those rates:

- input rate of a spike-fed layer right after an SL: that SL's output rate at the best
  epoch (validation); behind a max pooling (first guess 1 - (1 - r)^4, independent
  spikes in a 2 x 2 window) or fed by the coder (first guess 0.5), or in a row recorded
  without rates: the guesses scaled by one factor so that the row's recorded ACs (test
  set, rate x dense MACs x T) are reached; where the measured rates alone exceed those
  ACs, all rates are scaled by one factor to them (validation to test);
- SL output rates: the validation rates at the best epoch, else the row's mean input rate;
- values fed to layers: all non-zero (dense MACs).

Each spike then has the real fan-out of its position (uniform over positions). A
results file written by this version records the exact energies measured on the test
set, which are shown instead for the models it holds. Prints one Markdown table per
results file: accuracy, and energy per image under every model. With ``--plots DIR`` it
also writes, per results file and energy model, the accuracy-energy plot of its rows with
their Pareto front (``DIR/<folder>-<model>.png``, the plot of `hnn-bridge report`).

    python benchmarks/energy_tradeoff.py docs/full-budget/table1a docs/cpu/table1b ...
    python benchmarks/energy_tradeoff.py --plots docs/notes/energy docs/cpu/table1b-t16
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

from hnn_bridge.builder import build
from hnn_bridge.data import describe_dataset
from hnn_bridge.energy import ENERGY_MODELS, energy_pj
from hnn_bridge.ops import assumed_counts
from hnn_bridge.report import load_results, plot_energy


def _build(row: dict):
    """The row's network with the settings its results file recorded."""
    s = row["settings"]
    return build(
        row["arch"],
        coder=row["coder"],
        steps=s.get("steps") or 1,
        input_shape=describe_dataset(s["dataset"])[0],
        input_mode=s.get("input_mode", "direct"),
        neuron=s.get("neuron"),
        training=row["training"],
        activation=None if s.get("activation", "auto") == "auto" else s["activation"],
        norm=s.get("norm", "none"),
        bias_placement=s.get("bias_placement", "before_filter"),
    )


def _rows(directory: Path):
    results = load_results(directory)
    for row in results["rows"]:
        seeds = [s for s in row["seeds"] if s.get("status") == "ok" and s.get("test_acc") is not None]
        if seeds:
            yield row, seeds


def _row_counts(model, seed: dict):
    """(counts, input rates, output rates) of one seed of a row (see the module docstring)."""
    steps = model.steps or 1
    spiking = [i for i, x in enumerate(model.layers) if x.part == "SL"]
    fed = [i for i in spiking if model.layers[i].fed_by == "spikes"]
    history = seed.get("val_rates") or []
    best = history[seed["best_epoch"] - 1] if len(history) >= seed["best_epoch"] > 0 else {}
    out = {}
    if best:
        values = list(best.values())
        out = {i: values[k] for k, i in enumerate(spiking) if k < len(values)}
    acs = seed.get("acs") or 0.0
    known, prior = {}, {}  # rates taken as measured; first guesses of the others
    for i in fed:
        before = [j for j in spiking if j < i]
        if not (before and before[-1] in out):
            prior[i] = 0.5  # fed by the coder's spikes (or no rates recorded)
            continue
        r, pooled = out[before[-1]], False
        for j in range(before[-1] + 1, i):  # max pooling of independent spikes in a k x k window
            if model.layers[j].part == "pool":
                area = (model.layers[j - 1].out_shape[-1] // model.layers[j].out_shape[-1]) ** 2
                r, pooled = 1.0 - (1.0 - r) ** area, True
        (prior if pooled else known)[i] = r

    def dense(rates: dict) -> float:
        return sum(r * model.layers[i].macs * steps for i, r in rates.items())

    left = acs - dense(known)
    if prior and left > 0:  # the guessed rates take, in proportion, what the recorded ACs leave
        rate = {**known, **{i: min(1.0, r * left / dense(prior)) for i, r in prior.items()}}
    else:  # all rates scaled by one factor to the recorded test ACs
        every = {**known, **prior}
        rate = {i: min(1.0, r * acs / dense(every)) for i, r in every.items()} if dense(every) else every
    rate = {i: rate[i] for i in fed}
    mean_in = statistics.fmean(rate.values()) if rate else 0.0
    out_rate = {i: out.get(i, mean_in) for i in spiking}
    return assumed_counts(model, rate, out_rate), rate, out_rate


def main(dirs: list[str], plots: Path | None = None) -> None:
    for d in dirs:
        print(f"\n### {d}\n")
        print(
            "| # | network | coder | training | T | acc. % | in rates | ops uJ | "
            + " | ".join(f"{m} uJ" for m in ENERGY_MODELS if m != "ops")
            + " | recorded ops uJ |"
        )
        print("|---|---|---|---|---|---|---|---|" + "---|" * (len(ENERGY_MODELS) - 1) + "---|")
        try:
            rows = list(_rows(Path(d)))
        except (OSError, ValueError) as err:
            print(f"(skipped: {err})")
            continue
        results = copy.deepcopy(load_results(Path(d)))
        by_job = {(r["row"], s.get("seed_index")): s for r in results["rows"] for s in r["seeds"]}
        for row, seeds in rows:
            model = _build(row)
            energies = {m: [] for m in ENERGY_MODELS}
            rates = []
            for seed in seeds:
                counts, rate, _ = _row_counts(model, seed)
                rates.append(rate)
                recorded = seed.get("energy") or {}  # exact, measured on the test set (this version's runs)
                for m in ENERGY_MODELS:
                    energies[m].append(recorded[m] if m in recorded else energy_pj(m, counts) / 1e6)
                by_job[row["row"], seed.get("seed_index")]["energy"] = {
                    m: energies[m][-1] for m in ENERGY_MODELS
                }
            acc = statistics.fmean(100 * s["test_acc"] for s in seeds)
            shown = (
                ", ".join(
                    f"{model.layers[i].token} {statistics.fmean(r[i] for r in rates):.3f}" for i in rates[0]
                )
                or "–"
            )
            recorded = statistics.fmean(s["energy_uj"] for s in seeds if s.get("energy_uj") is not None)
            steps = model.steps or "–"
            cells = " | ".join(f"{statistics.fmean(energies[m]):.3f}" for m in ENERGY_MODELS if m != "ops")
            print(
                f"| {row['row']} | {row['arch']} | {row['coder'] or 'none'} | {row['training']} | {steps} | "
                f"{acc:.2f} | {shown} | {statistics.fmean(energies['ops']):.3f} | {cells} | {recorded:.3f} |"
            )

        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
            for m in ENERGY_MODELS:
                (plots / f"{Path(d).name}-{m}.png").write_bytes(plot_energy(results, m))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", help="run folders with a results.json")
    parser.add_argument(
        "--plots", type=Path, default=None, help="write one accuracy-energy plot per model here"
    )
    args = parser.parse_args()
    main(args.dirs, args.plots)

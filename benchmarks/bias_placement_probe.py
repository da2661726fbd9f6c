"""Does the bias placement matter for a recipe row? Both builds of the row from one seed
(the same initial weights, biases and batch-norm parameters; only where the bias or the
norm's shift enters differs: ``after_filter``, Fang et al.'s form, or ``before_filter``,
the runs before 2026-12-06), run on the same real images in training mode (batch-norm
batch statistics, as training sees them, dropout off). Prints, per spiking layer, the
firing rate under each placement and the share of spike slots that differ, and the share
of images whose argmax prediction differs.

    python benchmarks/bias_placement_probe.py --data-dir ../shared/datasets --table table1b --profile cpu
    python benchmarks/bias_placement_probe.py --data-dir ../shared/datasets --table table1a --rows 1-3

A row whose spiking layers all take direct input has nothing to filter: both builds are
then the same network (0 differing slots). Note: a measurement at initialisation; it says
whether the two are different networks, not how far apart their trained accuracies end.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from hnn_bridge.data import load_dataset, split_622
from hnn_bridge.recipe import build_row, load_recipe, parse_rows


def _spikes(model, x: torch.Tensor) -> list[torch.Tensor]:
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, k=k: seen.__setitem__(k, out.detach()))
        for k, m in model.neurons.items()
    ]
    try:
        with torch.no_grad():
            counts = model(x)
    finally:
        for h in hooks:
            h.remove()
    return [seen[k] for k in sorted(seen)] + [counts]


def _train_mode_without_dropout(model) -> None:
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout) or type(m).__name__ == "TimeSharedDropout":
            m.eval() if isinstance(m, torch.nn.Dropout) else setattr(m, "p", 0.0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--table", default="table1b")
    p.add_argument("--profile", default="full")
    p.add_argument("--rows", default=None, help="1-based rows, e.g. 1-3 (default: every spiking row)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(a.table).configure(profile=a.profile)
    recipe = recipe.select(parse_rows(a.rows, len(recipe.rows)))
    dataset = recipe.rows[0].settings.dataset
    ds = load_dataset(dataset, a.data_dir)
    pick = split_622(ds.labels, seed=0).val[: a.images]
    x = ds.images[pick].float() / 255
    print(f"{a.table} ({a.profile}), {len(pick)} validation images of {dataset}, seed {a.seed}")
    print(
        f"{'row':<4} {'network':<44} {'layer':>5} {'rate after':>11} {'rate before':>12} {'slots differ':>13}"
    )
    for row in recipe.rows:
        if row.coder is None:
            continue
        built = {}
        for placement in ("after_filter", "before_filter"):
            torch.manual_seed(a.seed)
            model = build_row(replace(row, settings=replace(row.settings, bias_placement=placement)))
            _train_mode_without_dropout(model)
            torch.manual_seed(a.seed + 1)  # the same coder noise for both
            built[placement] = _spikes(model, x)
        after, before = built["after_filter"], built["before_filter"]
        for k, (s_a, s_b) in enumerate(zip(after[:-1], before[:-1])):
            differ = float((s_a != s_b).float().mean())
            print(
                f"{row.index:<4} {row.arch:<44} {k:>5} {float(s_a.mean()):>11.4f} {float(s_b.mean()):>12.4f} "
                f"{100 * differ:>12.2f}%"
            )
        changed = float((after[-1].argmax(1) != before[-1].argmax(1)).float().mean())
        print(f"{'':<4} {'':<44} {'out':>5} argmax prediction differs on {100 * changed:.1f}% of the images")


if __name__ == "__main__":
    main()

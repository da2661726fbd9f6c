"""A CIFAR-10 CNN training step with the spike-fed 3x3 convolutions sparse
(``HNN_BRIDGE_SPARSE_CONV=1``, `hnn_bridge.kernels.spike_conv.SpikeConv2d`) against the
dense path (unset: ``F.conv2d``).

Usage: ``python benchmarks/spike_conv_step.py [--threads N] [--repeats 7] [--rows "pure SNN,1 AL"]``.
Builds the rows of `hnn_bridge.bench.cnn.CNN_ARCHS` as the cnn suite does (T = 8, batch
32, batch norm, duplicate coding, the table1b cpu recipe's neuron), two copies of the same
weights per row, and times one training step (`hnn_bridge.bench.cnn._step_call`: forward,
cross entropy, backward, Adam) of each in one process, taking turns
(`hnn_bridge.bench.timing.interleave`). Prints the firing rate at the input of each
spike-fed convolution (at initialisation: not the trained nets' ~3%) and a Markdown table
of medians and sparse / dense ratios.
"""

from __future__ import annotations

import copy
import os
import statistics
from typing import Callable

from _ab import run_ab


def _with_sparse(on: bool, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        if on:
            os.environ["HNN_BRIDGE_SPARSE_CONV"] = "1"
        else:
            os.environ.pop("HNN_BRIDGE_SPARSE_CONV", None)
        return call()

    return run


def input_rates(model, x) -> list[float]:
    """Mean input of each spike-fed convolution (a copy of ``model``, training mode)."""
    import torch

    from hnn_bridge.builder import _spike_fed_convs

    model = copy.deepcopy(model).train()
    convs = sorted(_spike_fed_convs(model.sl, model.neurons.values()))
    rates: list[float] = []
    hooks = [
        model.sl[i].module.register_forward_pre_hook(lambda m, a: rates.append(float(a[0].mean())))
        for i in convs
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return rates


def measure(rows: list[str], *, steps: int, batch: int, repeats: int, warmup: int) -> list[dict]:
    import torch

    from hnn_bridge.bench import cnn
    from hnn_bridge.bench.timing import interleave
    from hnn_bridge.builder import build
    from hnn_bridge.kernels.spike_conv import spike_conv_unavailable_reason

    why = spike_conv_unavailable_reason()
    if why is not None:
        raise SystemExit(f"the sparse path does not run here: {why}")
    cpu = torch.device("cpu")
    results = []
    for label in rows:
        torch.manual_seed(0)
        model = build(
            cnn.CNN_ARCHS[label],
            coder="duplicate",
            steps=steps,
            input_shape=(3, 32, 32),
            neuron=cnn._recipe_neuron(),
            norm="batch",
        )
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        rates = input_rates(model, x)
        sparse, dense = model, copy.deepcopy(model)
        calls = {
            name: cnn._step_call(m, x, y, "32", cpu) for name, m in (("sparse", sparse), ("dense", dense))
        }
        calls = {name: _with_sparse(name == "sparse", call) for name, call in calls.items()}
        samples = interleave(calls, repeats=repeats, warmup=warmup, device=cpu)
        os.environ.pop("HNN_BRIDGE_SPARSE_CONV", None)
        results.append({"row": label, "arch": cnn.CNN_ARCHS[label], "rates": rates, "step": samples})
    return results


def render(results: list[dict]) -> str:
    from hnn_bridge.bench.markdown import table

    lines = []
    for r in results:
        sparse = statistics.median(r["step"]["sparse"])
        dense = statistics.median(r["step"]["dense"])
        wins = sum(s < d for s, d in zip(r["step"]["sparse"], r["step"]["dense"]))
        lines.append(
            [
                f"{r['row']}: training step",
                ", ".join(f"{v:.3f}" for v in r["rates"]),
                f"{dense * 1e3:.1f}",
                f"{sparse * 1e3:.1f}",
                f"{sparse / dense:.3f}x",
                f"{wins} of {len(r['step']['sparse'])}",
            ]
        )
    header = [
        "row",
        "input rates of the spike-fed convs (init)",
        "dense ms (median)",
        "sparse ms (median)",
        "sparse / dense",
        "rounds sparse faster",
    ]
    return table(header, lines)


def main() -> None:
    run_ab(__doc__, measure, render, json_out=False)


if __name__ == "__main__":
    main()

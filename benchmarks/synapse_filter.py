"""The compiled synapse filter (``HNN_BRIDGE_NATIVE_FILTER=1``, `hnn_bridge.kernels.synapse_filter`)
against the ATen loop it replaces (``HNN_BRIDGE_NATIVE_FILTER=0``), issue 36.

Usage: ``python benchmarks/synapse_filter.py [--threads N] [--repeats 7] [--rows "pure SNN,1 AL"]``.
Times in one process, taking turns (`hnn_bridge.bench.timing.interleave`), new path against
old path:

- the filter alone (the CIFAR recipes' dual exponential synapse), forward and backward
  (``torch.autograd.grad``), and the forward alone under ``torch.no_grad()``, on
  [8, 32, 32, 32, 32] and [8, 32, 64, 16, 16] (T, batch, channels, height, width);
- the rows of `hnn_bridge.bench.cnn.CNN_ARCHS` built as the cnn suite builds them (T = 8,
  batch 32, batch norm, duplicate coding, the recipes' neuron; two copies of the same
  weights): one training step (`hnn_bridge.bench.cnn._step_call`: forward, cross entropy,
  backward, Adam) and the forward as evaluation runs it (`hnn_bridge.bench.cnn._infer_call`).

Prints a Markdown table of medians and new / old ratios; ``--json FILE`` writes the samples too.
"""

from __future__ import annotations

import copy
import os
import statistics
from typing import Callable

from _ab import run_ab

ENV = "HNN_BRIDGE_NATIVE_FILTER"
SHAPES = ((8, 32, 32, 32, 32), (8, 32, 64, 16, 16))


def _with_filter(on: bool, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        os.environ[ENV] = "1" if on else "0"
        return call()

    return run


def _filter_calls(shape: tuple[int, ...], params, grad: bool) -> dict[str, Callable[[], object]]:
    import torch

    from hnn_bridge.functional import synapse_filter

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).requires_grad_(grad)
    g = torch.randn(shape, generator=gen)

    def call() -> object:
        if not grad:
            with torch.no_grad():
                return synapse_filter(x, params)
        return torch.autograd.grad(synapse_filter(x, params), x, g)

    return {name: _with_filter(name == "new", call) for name in ("new", "old")}


def measure(rows: list[str], *, steps: int, batch: int, repeats: int, warmup: int) -> list[dict]:
    import torch

    from hnn_bridge.bench import cnn
    from hnn_bridge.bench.timing import interleave
    from hnn_bridge.builder import build
    from hnn_bridge.kernels.synapse_filter import filter_unavailable_reason

    cpu = torch.device("cpu")
    os.environ[ENV] = "1"
    why = filter_unavailable_reason()
    if why is not None:
        raise SystemExit(f"the compiled filter does not run here: {why}")
    params = cnn._recipe_neuron()
    results = []
    for shape in SHAPES:
        for grad in (True, False):
            label = f"filter {list(shape)}: {'forward + backward' if grad else 'forward (no_grad)'}"
            samples = interleave(
                _filter_calls(shape, params, grad), repeats=repeats, warmup=warmup, device=cpu
            )
            results.append({"row": label, "samples": samples})
    for row in rows:
        torch.manual_seed(0)
        model = build(
            cnn.CNN_ARCHS[row],
            coder="duplicate",
            steps=steps,
            input_shape=(3, 32, 32),
            neuron=params,
            norm="batch",
        )
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        models = {"new": model, "old": copy.deepcopy(model)}
        for kind in ("step", "forward"):
            if kind == "step":
                calls = {name: cnn._step_call(m, x, y, "32", cpu) for name, m in models.items()}
            else:
                calls = {name: cnn._infer_call(m, x, "32", cpu) for name, m in models.items()}
            calls = {name: _with_filter(name == "new", call) for name, call in calls.items()}
            samples = interleave(calls, repeats=repeats, warmup=warmup, device=cpu)
            what = "training step" if kind == "step" else "forward (eval, no_grad)"
            results.append({"row": f"{row}: {what}", "samples": samples})
    return results


def render(results: list[dict]) -> str:
    from hnn_bridge.bench.markdown import table

    lines = []
    for r in results:
        new, old = r["samples"]["new"], r["samples"]["old"]
        wins = sum(a < b for a, b in zip(new, old))
        med_new, med_old = statistics.median(new), statistics.median(old)
        lines.append(
            [
                r["row"],
                f"{med_old * 1e3:.1f}",
                f"{med_new * 1e3:.1f}",
                f"{med_new / med_old:.3f}x",
                f"{wins} of {len(new)}",
            ]
        )
    header = [
        "what",
        "ATen loop ms (median)",
        "compiled ms (median)",
        "compiled / loop",
        "rounds compiled faster",
    ]
    return table(header, lines)


def main() -> None:
    run_ab(__doc__, measure, render)


if __name__ == "__main__":
    main()

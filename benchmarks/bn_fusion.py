"""A CIFAR-10 CNN training step and forward with the batch norm folded into the neuron
(``HNN_BRIDGE_FUSE_BN=1``, `hnn_bridge.kernels.bn_neuron`) against the plain path
(``HNN_BRIDGE_FUSE_BN=0``: ``SeqOp(BatchNorm)`` then `IIRNeuron`).

Usage: ``python benchmarks/bn_fusion.py [--threads N] [--repeats 7] [--rows "pure SNN,1 AL"]``.
Builds the rows of `hnn_bridge.bench.cnn.CNN_ARCHS` as the cnn suite does (T = 8, batch
32, batch norm, duplicate coding, the recipes' neuron), two copies of the same weights
per row, and times in one process, taking turns (`hnn_bridge.bench.timing.interleave`):
one training step (`hnn_bridge.bench.cnn._step_call`: forward, cross entropy, backward,
Adam) and the forward alone as evaluation runs it (eval mode, ``torch.no_grad()``).
Prints a Markdown table of medians and fused / plain ratios; ``--json FILE`` writes the
samples too.
"""

from __future__ import annotations

import copy
import os
import statistics
from typing import Callable

from _ab import run_ab


def _with_fusion(on: bool, call: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        os.environ["HNN_BRIDGE_FUSE_BN"] = "1" if on else "0"
        return call()

    return run


def measure(rows: list[str], *, steps: int, batch: int, repeats: int, warmup: int) -> list[dict]:
    import torch

    from hnn_bridge.bench import cnn
    from hnn_bridge.bench.timing import interleave
    from hnn_bridge.builder import build
    from hnn_bridge.kernels.bn_neuron import fusion_unavailable_reason

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
        fused, plain = model, copy.deepcopy(model)
        os.environ["HNN_BRIDGE_FUSE_BN"] = "1"
        why = fusion_unavailable_reason()
        if why is not None:
            raise SystemExit(f"the fused path does not run here: {why}")
        result = {"row": label, "arch": cnn.CNN_ARCHS[label]}
        for kind in ("step", "forward"):
            if kind == "step":
                calls = {
                    name: cnn._step_call(m, x, y, "32", cpu)
                    for name, m in (("fused", fused), ("plain", plain))
                }
            else:
                calls = {
                    name: cnn._infer_call(m, x, "32", cpu) for name, m in (("fused", fused), ("plain", plain))
                }
            calls = {name: _with_fusion(name == "fused", call) for name, call in calls.items()}
            samples = interleave(calls, repeats=repeats, warmup=warmup, device=cpu)
            result[kind] = samples  # in round order: sample i of each ran in round i
        results.append(result)
    return results


def render(results: list[dict]) -> str:
    from hnn_bridge.bench.markdown import table

    lines = []
    for r in results:
        for kind in ("step", "forward"):
            fused = statistics.median(r[kind]["fused"])
            plain = statistics.median(r[kind]["plain"])
            wins = sum(f < p for f, p in zip(r[kind]["fused"], r[kind]["plain"]))
            lines.append(
                [
                    f"{r['row']}: {'training step' if kind == 'step' else 'forward (eval, no_grad)'}",
                    f"{plain * 1e3:.1f}",
                    f"{fused * 1e3:.1f}",
                    f"{fused / plain:.3f}x",
                    f"{wins} of {len(r[kind]['fused'])}",
                ]
            )
    header = ["row", "plain ms (median)", "fused ms (median)", "fused / plain", "rounds fused faster"]
    return table(header, lines)


def main() -> None:
    run_ab(__doc__, measure, render)


if __name__ == "__main__":
    main()

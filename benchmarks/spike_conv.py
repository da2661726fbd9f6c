"""The spike-fed 3x3 convolution (`hnn_bridge.kernels.spike_conv`) against torch's dense one
(``F.conv2d`` / ``torch.nn.grad.conv2d_weight``, oneDNN on the CPU), forward and weight
gradient, on the spiking convolutions of the pure SNN CIFAR-10 row at T = 8, batch 32.

Usage: ``python benchmarks/spike_conv.py [--threads 1 2] [--repeats 9] [--json FILE]``.

The layer shapes come from building the row as `hnn_bridge.bench.cnn` does (forward hooks
on its weight ops, `cnn.floor_ops`): every convolution but the first, which reads the
duplicate-coded image, not spikes. Each reads the spikes of the spiking layer before it,
max-pooled where a P2 sits between. Its input is drawn as independent Bernoulli spikes at
each rate: the trained net's (``--results``: the last epoch's validation firing rate of
the layer before; after a 2x2 max pooling the rate lies between that rate r and 4 r, both
are timed) and 0.01, 0.05, 0.1, 0.2, 0.5.

Per layer and thread count all contenders take turns in one `timing.interleave` (the
dense ones once: they do not depend on the rate; a short pause after them, not reported,
so that OpenMP's spinning threads do not land on the next contender); freed memory stays
in the heap, as in training (`kernels.heap`). Printed as Markdown: the medians with the
ratio sparse / dense (below 1: sparse is faster), the break-even rate (where the sparse
time, linear between the timed rates, first meets the dense one), and the forward plus
weight gradient of all three layers at the trained rates.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "cpu" / "table1b-t16-fang" / "results.json"
GRID = (0.01, 0.05, 0.1, 0.2, 0.5)
PAUSE_S = 0.02


def spike_fed_convs(arch: str, steps: int, batch: int) -> list[dict]:
    """The spiking row's convolutions that read spikes: module, input shape, and the label
    of the spiking layer whose spikes they read (``"3:S64C3"``) and whether pooled."""
    from hnn_bridge.bench import cnn
    from hnn_bridge.builder import build

    model = build(
        arch,
        coder="duplicate",
        steps=steps,
        input_shape=(3, 32, 32),
        neuron=cnn._recipe_neuron(),
        norm="batch",
    )
    ops = [
        op for op in cnn.floor_ops(model, torch.rand(batch, 3, 32, 32)) if isinstance(op["module"], nn.Conv2d)
    ]
    tokens = arch.split("-")
    convs = [i for i, t in enumerate(tokens) if "C" in t]
    if len(ops) != len(convs) or not ops[0]["first"]:
        raise RuntimeError(f"expected {len(convs)} convolutions in {arch}, the first reading the image")
    found = []
    for op, at in zip(ops[1:], convs[1:]):
        m = op["module"]
        if (m.kernel_size, m.stride, m.padding, m.dilation, m.groups) != ((3, 3), (1, 1), (1, 1), (1, 1), 1):
            raise RuntimeError(f"layer {at + 1} ({tokens[at]}) is not a 3x3, stride-1, padding-1 convolution")
        before = max(i for i in range(at) if tokens[i].startswith("S"))
        found.append(
            {
                "layer": f"{at + 1}:{tokens[at]}",
                "module": m,
                "shape": op["shape"],
                "source": f"{before + 1}:{tokens[before]}",
                "pooled": any(tokens[i].startswith("P") for i in range(before + 1, at)),
            }
        )
    return found


def trained_rates(path: Path, arch: str) -> dict[str, float]:
    """The last epoch's validation firing rates of the first row of ``arch`` (first seed)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    for row in data["rows"]:
        if row.get("arch") == arch:
            return dict(row["seeds"][0]["val_rates"][-1])
    raise KeyError(f"no row {arch} in {path}")


def rates_for(conv: dict, measured: dict[str, float]) -> list[tuple[float, str]]:
    r = measured[conv["source"]]
    if conv["pooled"]:
        return [
            (r, f"trained: {conv['source']}, pooled: at least"),
            (min(1.0, 4 * r), "pooled: at most 4 r"),
        ]
    return [(r, f"trained: {conv['source']}")]


def spikes(shape, rate: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).float()


def time_layer(conv: dict, rates: list[float], repeats: int, warmup: int) -> dict:
    from hnn_bridge.bench.timing import interleave, summarize
    from hnn_bridge.kernels.spike_conv import METHODS, spike_conv2d, spike_conv2d_weight

    m = conv["module"]
    n, cin, h, w = conv["shape"]
    weight = m.weight.detach().clone()
    bias = None if m.bias is None else m.bias.detach().clone()
    go = torch.randn((n, weight.shape[0], h, w), generator=torch.Generator().manual_seed(1))
    dense_x = spikes(conv["shape"], rates[0], 2)
    calls = {
        "dense forward": lambda: F.conv2d(dense_x, weight, bias, padding=1),
        "dense weight grad": lambda: torch.nn.grad.conv2d_weight(dense_x, weight.shape, go, padding=1),
        # after oneDNN's parallel region, OpenMP's threads spin for a while and took a
        # core from whichever kernel ran next on 2 threads (measured: +6 ms on the
        # contender after the dense ones); a pause lets them sleep, and is not reported
        "pause": lambda: time.sleep(PAUSE_S),
    }
    inputs = {}
    for k, rate in enumerate(rates):
        x = inputs[rate] = spikes(conv["shape"], rate, 3 + k)
        for method in METHODS:
            calls[f"{method} {rate}"] = lambda x=x, method=method: spike_conv2d(
                x, weight, bias, method=method
            )
        calls[f"weight grad {rate}"] = lambda x=x: spike_conv2d_weight(x, go)
    # the contenders compute the same thing (checked once, loosely: the tests bound it)
    x = inputs[rates[0]]
    ref = F.conv2d(x, weight, bias, padding=1)
    for method in METHODS:
        assert torch.allclose(spike_conv2d(x, weight, bias, method=method), ref, rtol=1e-4, atol=1e-4)
    ref_w = torch.nn.grad.conv2d_weight(x, weight.shape, go, padding=1)
    assert torch.allclose(spike_conv2d_weight(x, go), ref_w, rtol=1e-4, atol=1e-3)
    samples = interleave(calls, repeats=repeats, warmup=warmup)
    stats = {name: summarize(s) for name, s in samples.items() if name != "pause"}
    return {
        "medians": {name: st.median for name, st in stats.items()},
        "iqr": {name: st.iqr for name, st in stats.items()},
        "actual_rates": {rate: float(x.mean()) for rate, x in inputs.items()},
    }


def break_even(points: list[tuple[float, float]], dense: float) -> str:
    """Where the sparse time (linear between timed rates) first meets ``dense``."""
    points = sorted(points)
    if points[0][1] >= dense:
        return f"< {points[0][0]:.2f}"
    for (r0, t0), (r1, t1) in zip(points, points[1:]):
        if t0 < dense <= t1:
            return f"{r0 + (dense - t0) * (r1 - r0) / (t1 - t0):.2f}"
    return f"> {points[-1][0]:.2f}"


def render(result: dict) -> str:
    from hnn_bridge.kernels.spike_conv import METHODS

    methods = list(METHODS)
    head = (
        "| layer | input -> Cout | threads | rate | dense fwd ms | "
        + " | ".join(f"{m} ms (ratio)" for m in methods)
        + " | dense wgrad ms | sparse wgrad ms (ratio) |"
    )
    lines = [head, "|---|---|---|---|" + "---:|" * (len(methods) + 3)]
    even = [
        "| layer | threads | "
        + " | ".join(f"break-even rate, forward {m}" for m in methods)
        + " | break-even rate, weight grad |",
        "|---|---|" + "---:|" * (len(methods) + 1),
    ]
    for row in result["layers"]:
        shape = "x".join(map(str, row["shape"]))
        for threads, timed in row["timings"].items():
            med = timed["medians"]
            df, dw = med["dense forward"], med["dense weight grad"]
            for rate, note in sorted(row["rates"]):
                label = f"{rate:.3f}" + (f" ({note})" if note else "")
                fwd = " | ".join(
                    f"{1e3 * med[f'{m} {rate}']:.1f} ({med[f'{m} {rate}'] / df:.2f})" for m in methods
                )
                wg = med[f"weight grad {rate}"]
                lines.append(
                    f"| {row['layer']} | {shape} -> {row['cout']} | {threads} | {label} | {1e3 * df:.1f} |"
                    f" {fwd} | {1e3 * dw:.1f} | {1e3 * wg:.1f} ({wg / dw:.2f}) |"
                )
            cells = [
                break_even([(r, med[f"{kind} {r}"]) for r, _ in row["rates"]], dense)
                for kind, dense in [*((m, df) for m in methods), ("weight grad", dw)]
            ]
            even.append(f"| {row['layer']} | {threads} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + "\n".join(even) + "\n\n" + render_totals(result) + "\n"


def render_totals(result: dict) -> str:
    """Forward + weight gradient of all the spike-fed convolutions at the trained rates
    (the pooled layer at either bound), dense against sparse (`spike_conv2d`'s default
    forward method)."""
    import inspect

    from hnn_bridge.kernels.spike_conv import spike_conv2d

    method = inspect.signature(spike_conv2d).parameters["method"].default
    lines = [
        f"| threads | pooled input at | dense fwd + wgrad ms | sparse ({method}) fwd + wgrad ms | ratio |",
        "|---|---|---:|---:|---:|",
    ]
    threads_list = list(result["layers"][0]["timings"])
    for threads in threads_list:
        for bound in (0, -1):
            dense = sparse = 0.0
            for row in result["layers"]:
                med = row["timings"][threads]["medians"]
                trained = [r for r, note in row["rates"] if note]
                rate = trained[bound]
                dense += med["dense forward"] + med["dense weight grad"]
                sparse += med[f"{method} {rate}"] + med[f"weight grad {rate}"]
            label = "r (least)" if bound == 0 else "4 r (most)"
            lines.append(
                f"| {threads} | {label} | {1e3 * dense:.1f} | {1e3 * sparse:.1f} | {sparse / dense:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, help="also write the medians here")
    args = parser.parse_args()

    from hnn_bridge.bench.cnn import CNN_ARCHS
    from hnn_bridge.bench.timing import machine_info
    from hnn_bridge.kernels.heap import reuse_freed_memory
    from hnn_bridge.kernels.spike_conv import spike_conv_unavailable_reason

    reuse_freed_memory()  # as `hnn-bridge bench` and training run: freed tensors stay in the heap

    if spike_conv_unavailable_reason() is not None:
        sys.exit(f"spike_conv kernel unavailable: {spike_conv_unavailable_reason()}")
    arch = CNN_ARCHS["pure SNN"]
    torch.manual_seed(0)
    measured = trained_rates(args.results, arch)
    layers = []
    for conv in spike_fed_convs(arch, args.steps, args.batch):
        rates = rates_for(conv, measured) + [(r, "") for r in GRID]
        row = {
            "layer": conv["layer"],
            "shape": list(conv["shape"]),
            "cout": conv["module"].out_channels,
            "rates": rates,
            "timings": {},
        }
        for threads in args.threads:
            torch.set_num_threads(threads)
            timed = time_layer(conv, [r for r, _ in rates], args.repeats, args.warmup)
            row["timings"][threads] = timed
            print(f"# timed {conv['layer']} on {threads} thread(s)", file=sys.stderr, flush=True)
        layers.append(row)
    result = {
        "arch": arch,
        "steps": args.steps,
        "batch": args.batch,
        "machine": machine_info(),
        "layers": layers,
    }
    result["machine"]["load_average_after"] = os.getloadavg()
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

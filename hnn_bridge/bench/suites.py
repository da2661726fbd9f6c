"""The neuron and network suites of `hnn-bridge bench`, each measured in one interleaved
run, and `render` for every suite but cnn's.

- `neuron_suite`: the neuron alone on ``[T, B, N]``: forward+backward (and a no-grad
  forward) of our backends next to SpikingJelly's stock ``LIFNode`` and snnTorch's stock
  ``Leaky`` loop;
- `network_suite`: whole networks (the paper's MLP and a CNN) at a given T and batch, ours
  per backend next to the same network written the SpikingJelly way and the snnTorch way,
  plus ablations of ours;
- the epoch suite (`hnn_bridge.bench.epoch`) and the CNN suite (`hnn_bridge.bench.cnn`)
  have their own modules.

Each returns a JSON-ready dict with ``suite``, ``config``, ``rows`` and ``targets``; the
ratio columns divide each of our rows by the two stock baselines of the same suite
(`contenders.add_ratios`). `render` turns it into a Markdown table.
"""

from __future__ import annotations

import gc
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backends import make_neuron
from ..params import IIRParams
from . import baselines
from .contenders import SJ, SNNTORCH, add_ratios, contender_names, ratio_targets, result_row, seed_all
from .markdown import measured_on, mib, ms, ratio, table
from .timing import interleave, machine_info, peak_memory, saved_tensor_bytes, summarize

__all__ = [
    "DEFAULT_ARCHS",
    "SJ",
    "SNNTORCH",
    "network_suite",
    "neuron_suite",
    "render",
]

#: The paper's MLP (Table 1a) and a CNN of Table 1b with spiking convolutions.
DEFAULT_ARCHS = ("A784-S500-S10", "A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10")


# ----------------------------------------------------------------------------- neuron


def neuron_suite(
    *,
    steps: int = 25,
    batch: int = 64,
    neurons: int = 500,
    backends: Sequence[str] = ("reference", "spikingjelly", "snntorch"),
    repeats: int = 20,
    warmup: int = 3,
    device: str = "cpu",
    params: IIRParams | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward+backward of one neuron layer on ``[steps, batch, neurons]`` float32 inputs.

    Every contender gets the same input (N(0.5, 1) currents) and the same output gradient;
    a call is ``torch.autograd.grad(layer(x), x, g)`` for a fresh leaf ``x``. Also timed:
    the forward alone under ``torch.no_grad()`` (the evaluation path).
    """
    dev = torch.device(device)
    params = params or IIRParams()
    names, skipped = contender_names(backends, dev)
    seed_all(seed)
    x0 = (torch.randn(steps, batch, neurons) + 0.5).to(dev)
    g = torch.randn(steps, batch, neurons).to(dev)
    layers: dict[str, nn.Module] = {f"ours: {b}": make_neuron(b, params).to(dev) for b in names}
    layers["SpikingJelly LIFNode"] = baselines.SJLIFLayer(params).to(dev)
    layers["snnTorch Leaky loop"] = baselines.LeakyLoopLayer(params).to(dev)
    groups = {name: ("ours", None) for name in layers}
    backend_of = {f"ours: {b}": b for b in names}
    groups["SpikingJelly LIFNode"] = ("baseline", SJ)
    groups["snnTorch Leaky loop"] = ("baseline", SNNTORCH)

    def train_call(layer: nn.Module) -> Callable[[], object]:
        def call() -> object:
            x = x0.detach().requires_grad_()
            return torch.autograd.grad(layer(x), x, g)

        return call

    def eval_call(layer: nn.Module) -> Callable[[], object]:
        def call() -> object:
            with torch.no_grad():
                return layer(x0)

        return call

    train = interleave(
        {n: train_call(m) for n, m in layers.items()}, repeats=repeats, warmup=warmup, device=dev
    )
    evals = interleave(
        {n: eval_call(m) for n, m in layers.items()}, repeats=repeats, warmup=warmup, device=dev
    )
    rows = []
    for name, layer in layers.items():
        group, tag = groups[name]
        with torch.no_grad():
            rate = float(layer(x0).float().mean())
        peak = peak_memory(train_call(layer), dev)
        saved = saved_tensor_bytes(lambda: layer(x0.detach().requires_grad_()))
        rows.append(
            result_row(
                name,
                group,
                baseline=tag,
                backend=backend_of.get(name),
                fwd_bwd=summarize(train[name]).as_dict(),
                fwd_eval=summarize(evals[name]).as_dict(),
                saved_bytes=saved,
                peak_bytes=peak,
                saved_bytes_per_neuron_step=saved / (steps * batch * neurons),
                rate=rate,
            )
        )
    add_ratios(rows, "fwd_bwd.median")
    shape = f"[{steps}, {batch}, {neurons}]"
    return {
        "suite": "neuron",
        "config": {
            "steps": steps,
            "batch": batch,
            "neurons": neurons,
            "repeats": repeats,
            "warmup": warmup,
            "device": str(dev),
            "params": params.as_dict(),
            "skipped": skipped,
            "dtype": "float32",
        },
        "machine": machine_info(dev),
        "rows": rows,
        "targets": ratio_targets("neuron", rows, shape),
    }


# ----------------------------------------------------------------------------- network


def _input_shape(arch: str) -> tuple[int, int, int]:
    return (3, 32, 32) if "C" in arch.upper() else (1, 28, 28)


def network_suite(
    *,
    archs: Sequence[str] = DEFAULT_ARCHS,
    steps: int = 25,
    batch: int = 64,
    backends: Sequence[str] = ("reference", "spikingjelly", "snntorch"),
    repeats: int = 10,
    warmup: int = 2,
    device: str = "cpu",
    params: IIRParams | None = None,
    ablations: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Forward+backward (cross entropy on the spike counts, gradients of all weights) of
    whole networks with duplicate coding, and their no-grad forward.

    Per architecture: ours on every backend; with ``ablations``, ours (reference) with the
    first SL weighed on all T copies, and with per-step weight ops; the same network the
    SpikingJelly way (`baselines.SJMultiStepNet`) and the snnTorch way
    (`baselines.SNNTorchLoopNet`). All start from the same weights.
    """
    from ..builder import build

    dev = torch.device(device)
    params = params or IIRParams()
    names, skipped = contender_names(backends, dev)
    results = []
    for arch in archs:
        shape = _input_shape(arch)
        seed_all(seed)
        ref = build(arch, coder="duplicate", steps=steps, input_shape=shape, neuron=params)
        models: dict[str, tuple[nn.Module, str, Optional[str]]] = {}
        for b in names:
            m = ref if b == "reference" else baselines.with_neurons(ref, lambda p, b=b: make_neuron(b, p))
            models[f"ours: {b}"] = (m, "ours", None)
        backend_of = {f"ours: {b}": b for b in names}
        if ablations:
            if ref.first_op is not None:
                models["ours: reference, first SL weighed T times"] = (
                    baselines.unhoisted(ref),
                    "ablation",
                    None,
                )
            models["ours: reference, per-step weight ops"] = (baselines.per_step_ops(ref), "ablation", None)
        models["SpikingJelly LIFNode net"] = (baselines.SJMultiStepNet(ref), "baseline", SJ)
        models["snnTorch Leaky loop net"] = (baselines.SNNTorchLoopNet(ref), "baseline", SNNTORCH)
        for m, _, _ in models.values():
            m.to(dev)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, *shape, generator=gen).to(dev)
        y = torch.randint(0, 10, (batch,), generator=gen).to(dev)

        def train_call(model: nn.Module) -> Callable[[], object]:
            weights = [p for p in model.parameters() if p.requires_grad]

            def call() -> object:
                model.train()
                return torch.autograd.grad(F.cross_entropy(model(x), y), weights)

            return call

        def eval_call(model: nn.Module) -> Callable[[], object]:
            def call() -> object:
                model.eval()
                with torch.no_grad():
                    return model(x)

            return call

        train = interleave(
            {n: train_call(m) for n, (m, _, _) in models.items()}, repeats=repeats, warmup=warmup, device=dev
        )
        evals = interleave(
            {n: eval_call(m) for n, (m, _, _) in models.items()}, repeats=repeats, warmup=warmup, device=dev
        )
        rows = []
        for name, (model, group, tag) in models.items():
            weights = list(model.parameters())
            model.train()
            peak = peak_memory(train_call(model), dev)
            saved = saved_tensor_bytes(lambda: model(x), exclude=weights)
            rows.append(
                result_row(
                    name,
                    group,
                    baseline=tag,
                    backend=backend_of.get(name),
                    fwd_bwd=summarize(train[name]).as_dict(),
                    fwd_eval=summarize(evals[name]).as_dict(),
                    saved_bytes=saved,
                    peak_bytes=peak,
                )
            )
        add_ratios(rows, "fwd_bwd.median")
        results.append({"arch": arch, "input_shape": list(shape), "rows": rows})
        del models
        gc.collect()
    return {
        "suite": "network",
        "config": {
            "archs": list(archs),
            "steps": steps,
            "batch": batch,
            "repeats": repeats,
            "warmup": warmup,
            "device": str(dev),
            "params": params.as_dict(),
            "coder": "duplicate",
            "skipped": skipped,
        },
        "machine": machine_info(dev),
        "networks": results,
        "rows": [dict(r, arch=n["arch"]) for n in results for r in n["rows"]],
        "targets": [],
    }


# ----------------------------------------------------------------------------- tables


def _timing_table(rows: list[dict[str, Any]], extra: bool) -> str:
    header = [
        "contender",
        "fwd+bwd ms (median)",
        "IQR ms",
        "eval fwd ms",
        "ours/SJ",
        "ours/snnTorch",
        "saved MiB",
        "peak MiB",
    ]
    if extra:
        header += ["saved B/neuron-step", "firing rate"]
    lines = []
    for r in rows:
        line = [
            r["name"],
            ms(r["fwd_bwd"]),
            f"{r['fwd_bwd']['iqr'] * 1e3:.2f}",
            ms(r["fwd_eval"]),
            ratio(r.get("ratio_sj")),
            ratio(r.get("ratio_snntorch")),
            mib(r["saved_bytes"]),
            mib(r["peak_bytes"]),
        ]
        if extra:
            line += [f"{r['saved_bytes_per_neuron_step']:.1f}", f"{r['rate']:.3f}"]
        lines.append(line)
    return table(header, lines)


def _targets_text(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        verdict = "met" if t["met"] else "NOT met"
        lines.append(
            f"- {t['contender']} / {'SpikingJelly LIFNode' if t['versus'] == SJ else 'snnTorch Leaky'}: "
            f"{t['ratio']:.2f}x (target <= {t['limit']:.2f}x at {t['at']}): {verdict}"
        )
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    """A Markdown section for one suite's result."""
    suite, c = result["suite"], result["config"]
    parts = []
    if suite == "neuron":
        parts.append(
            f"### Neuron alone, [T, B, N] = [{c['steps']}, {c['batch']}, {c['neurons']}], float32, "
            f"{c['device']}: {c['repeats']} repeats after {c['warmup']} warm-up, interleaved"
        )
        parts.append(_timing_table(result["rows"], extra=True))
    elif suite == "network":
        parts.append(
            f"### Networks, duplicate coding, T = {c['steps']}, batch {c['batch']}, {c['device']}: "
            f"{c['repeats']} repeats after {c['warmup']} warm-up, interleaved"
        )
        for net in result["networks"]:
            parts.append(f"**{net['arch']}** (input {'x'.join(map(str, net['input_shape']))})\n")
            parts.append(_timing_table(net["rows"], extra=False))
    else:
        parts.append(
            f"### One training epoch: {c['recipe']} row {c['row']} ({c['label']}), T = "
            f"{c['settings']['steps']}, batch {c['settings']['batch_size']}, {c['train_images']:,} "
            f"training images; {c['note']}; {c['device']}"
        )
        header = [
            "contender",
            "epoch s (median step x batches)",
            "epoch s (sum)",
            "step ms (median)",
            "IQR ms",
            "ours/SJ",
            "ours/snnTorch",
            "peak MiB",
            "saved MiB",
            "mean loss",
            "train acc",
        ]
        lines = [
            [
                r["name"],
                f"{r['epoch_median_s']:.1f}",
                f"{r['epoch_s']:.1f}",
                ms(r["step"]),
                f"{r['step']['iqr'] * 1e3:.2f}",
                ratio(r.get("ratio_sj")),
                ratio(r.get("ratio_snntorch")),
                mib(r["peak_bytes"]),
                mib(r["saved_bytes"]),
                f"{r['mean_loss']:.4f}",
                f"{r['train_acc']:.4f}",
            ]
            for r in result["rows"]
        ]
        parts.append(table(header, lines))
    if c.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{s['backend']} ({s['reason']})" for s in c["skipped"]))
    if result.get("targets"):
        parts.append("Targets:\n" + _targets_text(result["targets"]))
    parts.append(measured_on(result["machine"]))
    return "\n\n".join(parts)

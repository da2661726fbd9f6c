"""`hnn-bridge bench --suite cnn`: one training step of the paper's CIFAR-10 CNN rows next to
the same networks written the SpikingJelly way and the snnTorch way, and next to the floor.

A training step is `contenders.train_step` (forward, cross entropy on the spike counts,
backward, Adam), the step of `hnn_bridge.training.loop.train_model`, with the CIFAR
recipes' settings: batch norm after every weight op, duplicate coding, no dropout, the
recipes' neuron. Every contender starts from the same weights and trains on the same
batch; the contenders take turns (`timing.interleave`), medians are reported.

**The floor** is what any implementation must spend: the convolutions and matrix products
of the network alone, as plain ``F.conv2d`` / ``F.linear`` forward and backward (to the
weights and, except for the network's first op, to the input) on the very shapes they
see in our step (recorded with forward hooks: B rows for ALs and for the first SL's
weight op of a duplicate-coded train, T x B rows inside the spiking part), plus one Adam
step over the same parameters. ``floor share`` = floor time / step time: 1.0 would mean
that nothing but the FLOPs costs time. With ``precisions`` other than ``32`` our step and
the floor are also timed under that autocast.

**Memory**: ``peak_bytes`` is the peak memory of one more training step of each contender,
measured apart after the timings (so the optimizer states exist) with `timing.peak_memory`
(CUDA: ``max_memory_allocated``; CPU: glibc's in-use heap; None where it cannot be read),
above what was allocated before the step; ``ratio_sj_peak`` / ``ratio_snntorch_peak`` are
ours over the stock nets', like the time ratios.

**Inference** (`_infer_call`): the forward alone, as evaluation runs it
(`hnn_bridge.training.loop.evaluate`): batch norm in eval mode, under ``torch.no_grad()``
(so autograd records nothing and our neuron keeps no membrane sequence), under the row's
autocast; every contender alike. Rows carry its time (``infer``, interleaved like the
steps, and ``infer_images_per_s``), its peak memory (``infer_peak_bytes``, measured apart)
and the ratios ``ratio_<baseline>_infer`` / ``ratio_<baseline>_infer_peak``.

``profile=True`` adds a `torch.profiler` breakdown of our step's self time by category
(`CATEGORIES`).
"""

from __future__ import annotations

import copy
import gc
import math
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import make_neuron
from ..params import IIRParams
from ..precision import autocast
from . import baselines
from .contenders import FUSED, SJ, SNNTORCH, add_ratios, contender_names, result_row, seed_all, train_step
from .markdown import measured_on, mib, ratio, table
from .timing import interleave, machine_info, peak_memory, summarize

__all__ = ["CATEGORIES", "CNN_ARCHS", "categorize", "cnn_suite", "floor_ops", "render_cnn"]

#: The paper's CIFAR-10 rows (Tables 1b-3b): label -> architecture.
CNN_ARCHS = {
    "pure SNN": "S32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10",
    "1 AL": "A32C3-S32C3-S64C3-P2-S64C3-P2-S512-S10",
    "3 ALs": "A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10",
    "5 ALs": "A32C3-A32C3-A64C3-P2-A64C3-P2-S512-S10",
    "pure ANN": "A32C3-A32C3-A64C3-P2-A64C3-P2-A512-A10",
}
#: Issue 8's targets, for these rows at T = 8: floor share >= 0.6, ours / SJ <= 0.5.
TARGET_ROWS, TARGET_STEPS, FLOOR_TARGET, SJ_TARGET = ("pure SNN", "1 AL"), 8, 0.6, 0.5

#: Profiler categories: (category, substrings of an op's name), first match wins.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    # the batch norm folded into the neuron's C loop (`kernels.bn_neuron`), forward and the
    # neuron's part of backward (the batch norm's backward is ATen's: "batch norm")
    ("neuron with batch norm", ("BNSpikes",)),
    # the compiled synapse filter (`kernels.synapse_filter`) and the sparse spike convolution
    ("synapse filter", ("NativeSynapseFilter", "_FilterTranspose")),
    ("convolution", ("SpikeConv2d",)),
    # our neuron's Functions (the native C loops run inside them) and the surrogate's exp
    ("neuron", ("IIRSpikes", "IIRMultiStep", "ErfcSpike", "aten::exp")),
    ("convolution", ("conv",)),
    ("linear", ("addmm", "aten::mm", "aten::bmm", "aten::linear", "matmul")),
    ("batch norm", ("batch_norm",)),
    ("pooling", ("pool", "_MaxPool2x2")),
    ("optimizer", ("_foreach", "addcdiv", "addcmul", "lerp", "Optimizer", "aten::sqrt")),
    (
        "copies and reshapes",
        (
            "copy_",
            "contiguous",
            "clone",
            "aten::cat",
            "aten::stack",
            "aten::to",
            "_to_copy",
            "expand",
            "reshape",
            "view",
            "permute",
            "fill_",
            "zero_",
        ),
    ),
)


def categorize(events: Sequence[tuple[str, float]]) -> dict[str, float]:
    """Sum self times over `CATEGORIES` (the rest is ``other``)."""
    totals = {name: 0.0 for name, _ in CATEGORIES}
    totals["other"] = 0.0
    for name, seconds in events:
        for category, patterns in CATEGORIES:
            if any(p in name for p in patterns):
                totals[category] += seconds
                break
        else:
            totals["other"] += seconds
    return totals


def _recipe_neuron() -> IIRParams:
    from ..recipe import load_recipe

    return load_recipe("table1b").configure(profile="cpu").rows[0].settings.neuron


def floor_ops(model: nn.Module, x: Tensor) -> list[dict[str, Any]]:
    """The weight ops of one training forward of ``model`` on ``x``, in call order: the
    module and its input shape (first: whether it reads the network's input)."""
    seen: list[dict[str, Any]] = []
    hooks = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(
                module.register_forward_hook(
                    lambda m, inputs, _out: seen.append({"module": m, "shape": tuple(inputs[0].shape)})
                )
            )
    try:
        model.train()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    for i, op in enumerate(seen):
        op["first"] = i == 0
    return seen


def _floor_call(op: dict[str, Any], device: torch.device, precision: str) -> Callable[[], object]:
    m = op["module"]
    w = m.weight.detach().clone().requires_grad_()
    b = None if m.bias is None else m.bias.detach().clone().requires_grad_()
    x = torch.rand(op["shape"], device=device).requires_grad_(not op["first"])
    if isinstance(m, nn.Conv2d):

        def fwd() -> Tensor:
            return F.conv2d(x, w, b, m.stride, m.padding, m.dilation, m.groups)
    else:

        def fwd() -> Tensor:
            return F.linear(x, w, b)

    with autocast(precision, device):
        g = torch.ones_like(fwd())
    inputs = [t for t in (x, w, b) if t is not None and t.requires_grad]

    def call() -> object:
        with autocast(precision, device):
            out = fwd()
        return torch.autograd.grad(out, inputs, g)

    return call


def _adam_call(model: nn.Module) -> Callable[[], object]:
    params = [p.detach().clone().requires_grad_() for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(params, lr=1e-4)
    return opt.step


def _step_call(
    model: nn.Module, x: Tensor, y: Tensor, precision: str, device: torch.device
) -> Callable[[], object]:
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)

    def call() -> object:
        model.train()
        if precision == "32":
            return train_step(model, opt, x, y)
        with autocast(precision, device):
            out = model(x)
            loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return call


def _infer_call(model: nn.Module, x: Tensor, precision: str, device: torch.device) -> Callable[[], Tensor]:
    """The forward alone, as `hnn_bridge.training.loop.evaluate` runs it: ``model.eval()``
    (batch norm uses its running statistics), ``torch.no_grad()``, the row's autocast."""

    def call() -> Tensor:
        model.eval()
        with torch.no_grad(), autocast(precision, device):
            return model(x)

    return call


def _profile(call: Callable[[], object], steps: int, device: torch.device) -> dict[str, float]:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    call()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            call()
    events = [(e.key, e.self_cpu_time_total / 1e6 / steps) for e in prof.key_averages()]
    return categorize(events)


def _stock_model(ref: nn.Module, make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """A stock baseline net with torch's own MaxPool2d (ours has a native CPU path)."""
    from ..pooling import MaxPool2d

    net = make(ref)
    for parent in net.modules():
        for name, child in parent.named_children():
            if isinstance(child, MaxPool2d):
                setattr(parent, name, nn.MaxPool2d(child.kernel_size, child.stride))
    return net


def cnn_suite(
    *,
    archs: Optional[Sequence[str]] = None,
    steps: int = 8,
    batch: int = 32,
    backends: Sequence[str] = ("reference", "spikingjelly", "snntorch"),
    precisions: Sequence[str] = ("32",),
    repeats: int = 7,
    warmup: int = 2,
    device: str = "cpu",
    profile: bool = False,
    profile_steps: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """Time one training step of each CNN row for every contender and the floor.

    ``archs``: labels of `CNN_ARCHS` or architecture strings (default: all five rows).
    """
    from ..builder import build
    from ..notation import parse_arch

    dev = torch.device(device)
    params = _recipe_neuron()
    names, skipped = contender_names(backends, dev)
    chosen = [(a, CNN_ARCHS[a]) if a in CNN_ARCHS else (a, a) for a in (archs or list(CNN_ARCHS))]
    networks = []
    for label, arch in chosen:
        seed_all(seed)
        spiking = any(spec.spiking for spec in parse_arch(arch))
        ref = build(
            arch,
            coder="duplicate" if spiking else None,
            steps=steps,
            input_shape=(3, 32, 32),
            neuron=params,
            norm="batch",
        ).to(dev)
        gen = torch.Generator().manual_seed(seed)
        x = torch.rand(batch, 3, 32, 32, generator=gen).to(dev)
        y = torch.randint(0, 10, (batch,), generator=gen).to(dev)
        models: dict[str, tuple[nn.Module, str, Optional[str], Optional[str], str]] = {}
        for b in names if spiking else names[:1]:
            m = (
                copy.deepcopy(ref)
                if b == "reference" or not spiking
                else baselines.with_neurons(ref, lambda p, b=b: make_neuron(b, p))
            )
            for prec in precisions:
                name = f"ours: {b}" + ("" if prec == "32" else f", {prec}")
                models[name] = (m if prec == "32" else copy.deepcopy(m), "ours", None, b, prec)
        if spiking:
            models["SpikingJelly LIFNode net"] = (
                _stock_model(ref, baselines.SJMultiStepNet),
                "baseline",
                SJ,
                None,
                "32",
            )
            models["snnTorch Leaky loop net"] = (
                _stock_model(ref, baselines.SNNTorchLoopNet),
                "baseline",
                SNNTORCH,
                None,
                "32",
            )
        calls = {n: _step_call(m.to(dev), x, y, prec, dev) for n, (m, _, _, _, prec) in models.items()}
        ops = floor_ops(copy.deepcopy(ref), x)
        floor_calls: dict[str, Callable[[], object]] = {}
        for prec in precisions:
            for i, op in enumerate(ops):
                floor_calls[f"{prec}/op{i}"] = _floor_call(op, dev, prec)
        floor_calls["adam"] = _adam_call(ref)
        infer_calls = {n: _infer_call(m, x, prec, dev) for n, (m, _, _, _, prec) in models.items()}
        times = interleave(calls, repeats=repeats, warmup=warmup, device=dev)
        infer_times = interleave(infer_calls, repeats=repeats, warmup=warmup, device=dev)
        floor_times = interleave(floor_calls, repeats=repeats, warmup=warmup, device=dev)
        adam = summarize(floor_times["adam"]).median
        floors = {
            prec: sum(summarize(floor_times[f"{prec}/op{i}"]).median for i in range(len(ops))) + adam
            for prec in precisions
        }
        rows = []
        for name, (_, group, tag, backend, prec) in models.items():
            stats = summarize(times[name]).as_dict()
            infer = summarize(infer_times[name]).as_dict()
            rows.append(
                result_row(
                    name,
                    group,
                    baseline=tag,
                    backend=backend,
                    precision=prec,
                    step=stats,
                    images_per_s=batch / stats["median"],
                    floor_share=floors[prec] / stats["median"],
                    peak_bytes=peak_memory(calls[name], dev),
                    infer=infer,
                    infer_images_per_s=batch / infer["median"],
                    infer_peak_bytes=peak_memory(infer_calls[name], dev),
                )
            )
        add_ratios(rows, "step.median")
        add_ratios(rows, "peak_bytes", "peak")
        add_ratios(rows, "infer.median", "infer")
        add_ratios(rows, "infer_peak_bytes", "infer_peak")
        breakdown = None
        if profile:
            first = next(n for n, v in models.items() if v[1] == "ours")
            breakdown = _profile(calls[first], profile_steps, dev)
        networks.append(
            {
                "label": label,
                "arch": arch,
                "rows": rows,
                "breakdown": breakdown,
                "floor": {
                    prec: {"seconds": floors[prec], "images_per_s": batch / floors[prec]}
                    for prec in precisions
                },
                "floor_ops": [
                    {
                        "op": type(op["module"]).__name__,
                        "input": list(op["shape"]),
                        "input_grad": not op["first"],
                        "ms": {
                            prec: summarize(floor_times[f"{prec}/op{i}"]).median * 1e3 for prec in precisions
                        },
                    }
                    for i, op in enumerate(ops)
                ],
                "adam_ms": adam * 1e3,
            }
        )
        del models, calls, infer_calls, floor_calls
        gc.collect()
    return {
        "suite": "cnn",
        "config": {
            "archs": [a for _, a in chosen],
            "steps": steps,
            "batch": batch,
            "repeats": repeats,
            "warmup": warmup,
            "device": str(dev),
            "precisions": list(precisions),
            "norm": "batch",
            "coder": "duplicate",
            "params": params.as_dict(),
            "skipped": skipped,
        },
        "machine": machine_info(dev),
        "networks": networks,
        "rows": [dict(r, arch=n["arch"]) for n in networks for r in n["rows"]],
        "targets": _cnn_targets(networks, steps),
    }


def _cnn_targets(networks: list[dict[str, Any]], steps: int) -> list[dict[str, Any]]:
    out = []
    for net in networks:
        if net["label"] not in TARGET_ROWS:
            continue
        ours = [
            r
            for r in net["rows"]
            if r["group"] == "ours" and r["precision"] == "32" and r["backend"] in FUSED
        ]
        if not ours:
            continue
        best = min(ours, key=lambda r: r["step"]["median"])
        at = f"{net['label']}, T={steps}" + (
            "" if steps == TARGET_STEPS else f" (the target is set at T={TARGET_STEPS})"
        )
        out.append(
            {
                "contender": best["name"],
                "what": "floor share",
                "value": best["floor_share"],
                "limit": FLOOR_TARGET,
                "met": best["floor_share"] >= FLOOR_TARGET,
                "at": at,
            }
        )
        if best.get("ratio_sj") is not None:
            out.append(
                {
                    "contender": best["name"],
                    "what": "ours / SpikingJelly",
                    "value": best["ratio_sj"],
                    "limit": SJ_TARGET,
                    "met": best["ratio_sj"] <= SJ_TARGET,
                    "at": at,
                }
            )
    return out


#: The memory columns of both tables: peak MiB of one call, ours over the stock nets'.
_PEAK_HEADER = ("peak MiB", "peak ours/SJ", "peak ours/snnTorch")


def _peak_cells(row: dict[str, Any], key: str, suffix: str) -> list[str]:
    return [mib(row[key]), ratio(row.get(f"ratio_sj_{suffix}")), ratio(row.get(f"ratio_snntorch_{suffix}"))]


def render_cnn(result: dict[str, Any]) -> str:
    """Markdown: per network, the step table (with the step's peak memory) and the floor,
    the inference table (forward only) and, if profiled, the breakdown."""
    c, m = result["config"], result["machine"]
    parts = [
        f"### CNN training step (forward, backward, Adam), batch norm, duplicate coding, T = {c['steps']}, "
        f"batch {c['batch']}, {c['device']}: {c['repeats']} repeats after {c['warmup']} warm-up, "
        "interleaved; peak memory of one call, measured apart"
    ]
    for net in result["networks"]:
        parts.append(f"**{net['label']}: {net['arch']}**\n")
        header = [
            "contender",
            "step ms (median)",
            "IQR ms",
            "images/s",
            "floor share",
            "ours/SJ",
            "ours/snnTorch",
            *_PEAK_HEADER,
        ]
        lines = [
            [
                r["name"],
                f"{r['step']['median'] * 1e3:.1f}",
                f"{r['step']['iqr'] * 1e3:.1f}",
                f"{r['images_per_s']:.1f}",
                f"{r['floor_share']:.2f}",
                ratio(r.get("ratio_sj")),
                ratio(r.get("ratio_snntorch")),
                *_peak_cells(r, "peak_bytes", "peak"),
            ]
            for r in net["rows"]
        ]
        for prec, f in net["floor"].items():
            lines.append(
                [
                    f"floor ({prec}): weight ops + Adam alone",
                    f"{f['seconds'] * 1e3:.1f}",
                    "",
                    f"{f['images_per_s']:.1f}",
                    "1.00",
                    *[""] * 5,
                ]
            )
        parts.append(table(header, lines))
        infer_header = ["contender", "forward ms (median)", "IQR ms", "images/s", "ours/SJ", "ours/snnTorch"]
        infer_lines = [
            [
                r["name"],
                f"{r['infer']['median'] * 1e3:.1f}",
                f"{r['infer']['iqr'] * 1e3:.1f}",
                f"{r['infer_images_per_s']:.1f}",
                ratio(r.get("ratio_sj_infer")),
                ratio(r.get("ratio_snntorch_infer")),
                *_peak_cells(r, "infer_peak_bytes", "infer_peak"),
            ]
            for r in net["rows"]
        ]
        parts.append(
            "Inference (forward only, batch norm in eval mode, under torch.no_grad()):\n\n"
            + table(infer_header + list(_PEAK_HEADER), infer_lines)
        )
        if net.get("breakdown"):
            total = sum(net["breakdown"].values()) or math.nan
            rows = [
                [k, f"{v * 1e3:.1f}", f"{v / total:.0%}"]
                for k, v in sorted(net["breakdown"].items(), key=lambda kv: -kv[1])
            ]
            parts.append(
                "Profile of ours (self CPU time per step):\n\n" + table(["category", "ms", "share"], rows)
            )
    if c.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{s['backend']} ({s['reason']})" for s in c["skipped"]))
    if result["targets"]:
        parts.append(
            "Targets:\n"
            + "\n".join(
                f"- {t['contender']}, {t['what']}: {t['value']:.2f} (target "
                f"{'>=' if t['what'] == 'floor share' else '<='} "
                f"{t['limit']:.2f} at {t['at']}): {'met' if t['met'] else 'NOT met'}"
                for t in result["targets"]
            )
        )
    parts.append(
        "The stock nets normalise with the same BatchNorm modules (snnTorch's loop: per step, on B rows) "
        "and pool with torch's MaxPool2d; their neurons do less work per step than the IIR neuron "
        "(no synapse or reset filter)."
    )
    parts.append(measured_on(m))
    return "\n\n".join(parts)

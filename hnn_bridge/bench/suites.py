"""The three benchmark suites of `hnn-bridge bench`, each measured in one interleaved run.

- `neuron_suite`: the neuron alone on ``[T, B, N]``: forward+backward (and a no-grad
  forward) of our backends next to SpikingJelly's stock ``LIFNode`` and snnTorch's stock
  ``Leaky`` loop;
- `network_suite`: whole networks (the paper's MLP and a CNN) at a given T and batch, ours
  per backend next to the same network written the SpikingJelly way and the snnTorch way,
  plus ablations of ours;
- `epoch_suite`: one training epoch of a recipe row, every contender running the
  training step of `hnn_bridge.training.loop.train_model` (Adam, cross entropy on the
  spike counts) on the same batches, interleaved batch by batch.

Each returns a JSON-ready dict with ``suite``, ``config``, ``rows`` and ``targets``; the
ratio columns divide each of our rows by the two stock baselines of the same suite.
`render` turns it into a Markdown table.
"""

from __future__ import annotations

import copy
import gc
import math
import time
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends import BACKENDS, make_neuron
from ..params import IIRParams
from . import baselines
from .timing import interleave, machine_info, peak_memory, saved_tensor_bytes, summarize

__all__ = [
    "DEFAULT_ARCHS",
    "SJ",
    "SNNTORCH",
    "epoch_suite",
    "network_suite",
    "neuron_suite",
    "render",
]

SJ = "sj"
SNNTORCH = "snntorch"
#: The paper's MLP (Table 1a) and a CNN of Table 1b with spiking convolutions.
DEFAULT_ARCHS = ("A784-S500-S10", "A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10")
#: The targets of issue 5 (ours / theirs, medians, same run): (suite, baseline, limit).
TARGETS = {
    "neuron": [(SJ, 1.0), (SNNTORCH, 0.7)],
    "epoch": [(SNNTORCH, 1.0 / 3.0)],
}


def _row(name: str, group: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "group": group, **extra}


def _available(backend: str, device: torch.device) -> Optional[str]:
    """Why ``backend`` cannot run here, or None."""
    if backend == "spikingjelly-cupy":
        if device.type != "cuda":
            return "needs CUDA"
        try:
            from hnn_bridge.adapters.cupy_kernels import cupy_unavailable_reason

            return cupy_unavailable_reason()
        except Exception as err:  # noqa: BLE001 - reported, not raised
            return str(err)
    return None


def _contender_names(backends: Sequence[str], device: torch.device) -> tuple[list[str], list[dict[str, Any]]]:
    keep, skipped = [], []
    for b in backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
        why = _available(b, device)
        if why:
            skipped.append({"backend": b, "reason": why})
        else:
            keep.append(b)
    return keep, skipped


def _ratios(rows: list[dict[str, Any]], key: str) -> None:
    """Add ``ratio_sj`` / ``ratio_snntorch`` (this row's ``key`` over the baseline's) to our rows."""
    base = {r["baseline"]: r for r in rows if r["group"] == "baseline"}
    for r in rows:
        if r["group"] == "baseline":
            continue
        for tag in (SJ, SNNTORCH):
            b = base.get(tag)
            r[f"ratio_{tag}"] = None if b is None or not _get(b, key) else _get(r, key) / _get(b, key)


def _get(row: dict[str, Any], key: str) -> float:
    value = row
    for part in key.split("."):
        value = value[part]
    return float(value)


#: Our backends that run the fused torch Function (the targets are about these).
FUSED = ("reference", "spikingjelly")


def _targets(suite: str, rows: list[dict[str, Any]], shape_note: str) -> list[dict[str, Any]]:
    out = []
    for tag, limit in TARGETS.get(suite, []):
        for r in rows:
            if r["group"] != "ours" or r.get("backend") not in FUSED or r.get(f"ratio_{tag}") is None:
                continue
            out.append({
                "contender": r["name"], "versus": tag, "ratio": r[f"ratio_{tag}"], "limit": limit,
                "met": r[f"ratio_{tag}"] <= limit, "at": shape_note,
            })
    return out


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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
    names, skipped = _contender_names(backends, dev)
    _seeded(seed)
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

    train = interleave({n: train_call(m) for n, m in layers.items()}, repeats=repeats, warmup=warmup, device=dev)
    evals = interleave({n: eval_call(m) for n, m in layers.items()}, repeats=repeats, warmup=warmup, device=dev)
    rows = []
    for name, layer in layers.items():
        group, tag = groups[name]
        with torch.no_grad():
            rate = float(layer(x0).float().mean())
        peak = peak_memory(train_call(layer), dev)
        saved = saved_tensor_bytes(lambda: layer(x0.detach().requires_grad_()))
        rows.append(_row(
            name, group, baseline=tag, backend=backend_of.get(name), fwd_bwd=summarize(train[name]).as_dict(),
            fwd_eval=summarize(evals[name]).as_dict(), saved_bytes=saved, peak_bytes=peak,
            saved_bytes_per_neuron_step=saved / (steps * batch * neurons), rate=rate,
        ))
    _ratios(rows, "fwd_bwd.median")
    shape = f"[{steps}, {batch}, {neurons}]"
    return {
        "suite": "neuron",
        "config": {"steps": steps, "batch": batch, "neurons": neurons, "repeats": repeats, "warmup": warmup,
                   "device": str(dev), "params": params.as_dict(), "skipped": skipped, "dtype": "float32"},
        "machine": machine_info(dev),
        "rows": rows,
        "targets": _targets("neuron", rows, shape),
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
    names, skipped = _contender_names(backends, dev)
    results = []
    for arch in archs:
        shape = _input_shape(arch)
        _seeded(seed)
        ref = build(arch, coder="duplicate", steps=steps, input_shape=shape, neuron=params)
        models: dict[str, tuple[nn.Module, str, Optional[str]]] = {}
        for b in names:
            m = ref if b == "reference" else baselines.with_neurons(ref, lambda p, b=b: make_neuron(b, p))
            models[f"ours: {b}"] = (m, "ours", None)
        backend_of = {f"ours: {b}": b for b in names}
        if ablations:
            if ref.first_op is not None:
                models["ours: reference, first SL weighed T times"] = (baselines.unhoisted(ref), "ablation", None)
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

        train = interleave({n: train_call(m) for n, (m, _, _) in models.items()}, repeats=repeats, warmup=warmup,
                           device=dev)
        evals = interleave({n: eval_call(m) for n, (m, _, _) in models.items()}, repeats=repeats, warmup=warmup,
                           device=dev)
        rows = []
        for name, (model, group, tag) in models.items():
            weights = list(model.parameters())
            model.train()
            peak = peak_memory(train_call(model), dev)
            saved = saved_tensor_bytes(lambda: model(x), exclude=weights)
            rows.append(_row(name, group, baseline=tag, backend=backend_of.get(name),
                             fwd_bwd=summarize(train[name]).as_dict(),
                             fwd_eval=summarize(evals[name]).as_dict(), saved_bytes=saved, peak_bytes=peak))
        _ratios(rows, "fwd_bwd.median")
        results.append({"arch": arch, "input_shape": list(shape), "rows": rows})
        del models
        gc.collect()
    return {
        "suite": "network",
        "config": {"archs": list(archs), "steps": steps, "batch": batch, "repeats": repeats, "warmup": warmup,
                   "device": str(dev), "params": params.as_dict(), "coder": "duplicate", "skipped": skipped},
        "machine": machine_info(dev),
        "networks": results,
        "rows": [dict(r, arch=n["arch"]) for n in results for r in n["rows"]],
        "targets": [],
    }


# ----------------------------------------------------------------------------- epoch


class _Limited:
    """The first ``limit`` batches of an epoch of `TensorBatches` (all when limit is None)."""

    def __init__(self, batches: Any, limit: Optional[int]) -> None:
        self.batches, self.limit = batches, limit

    def __len__(self) -> int:
        n = len(self.batches)
        return n if self.limit is None else min(n, self.limit)

    def epoch_batches(self, epoch: int):
        for i, item in enumerate(self.batches.epoch_batches(epoch)):
            if self.limit is not None and i >= self.limit:
                return
            yield item


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor) -> tuple[float, int]:
    """One step of `hnn_bridge.training.loop.train_model`'s epoch loop (same calls)."""
    from ..training.loop import score_batch

    out = model(x)
    loss = F.cross_entropy(out, y)
    value = float(loss.detach())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value, score_batch(out.detach(), y)[0]


def load_recipe_row(recipe: str, row: int, overrides: dict[str, Any]):
    from ..recipe import load_recipe

    r = load_recipe(recipe).configure(overrides=overrides).select([row])
    return r.rows[0]


def epoch_suite(
    *,
    recipe: str = "table1a",
    row: int = 3,
    steps: Optional[int] = 25,
    batch: Optional[int] = 64,
    backends: Sequence[str] = ("reference", "spikingjelly", "snntorch"),
    dataset: Optional[str] = None,
    data_dir: Optional[str] = None,
    limit_batches: Optional[int] = None,
    warmup: int = 2,
    device: str = "cpu",
    ablations: bool = True,
    memory_steps: int = 2,
    seed: int = 0,
    progress: Optional[Callable[[str], None]] = None,
) -> dict[str, Any]:
    """One training epoch of a recipe row (default: Table 1(a), A784-S500-S10 with duplicate
    coding, simultaneous; T = 25, batch 64, Adam lr 1e-3, dropout 0.3, on the 42,000
    training images of the 6:2:2 split of MNIST).

    Every contender has its own copy of the same initial weights and its own Adam, and
    runs `train_model`'s step on the same batches; the contenders take turns batch by batch
    (the first one rotating), so load from other processes hits all alike. Reported: the
    epoch time as median step time x batches + data time, and as the sum of the measured
    steps + data time; the ratios use the median steps. With ``limit_batches`` only the
    first batches run and the totals are scaled to the whole epoch, and flagged so.
    Peak memory: the largest of ``memory_steps`` training steps measured apart (after the
    timed run, so the optimizer states exist).
    """
    from ..data import TensorBatches, load_dataset, split_622

    dev = torch.device(device)
    overrides: dict[str, Any] = {}
    if steps is not None:
        overrides["steps"] = steps
    if batch is not None:
        overrides["batch_size"] = batch
    if dataset is not None:
        overrides["dataset"] = dataset
    spec = load_recipe_row(recipe, row, overrides)
    s = spec.settings
    names, skipped = _contender_names(backends, dev)

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    ds = load_dataset(s.dataset, data_dir)
    split = split_622(ds.labels, seed=s.split_seed)
    loader = TensorBatches(ds.images, ds.labels, split.train, batch_size=s.batch_size, shuffle=True, seed=seed,
                           device=dev, preload=dev.type == "cuda")
    batches = _Limited(loader, limit_batches)
    full_batches = len(loader)

    from ..recipe import build_row

    _seeded(seed)
    ref = build_row(spec)
    if spec.training == "separate":
        ref.freeze_als()
    models: dict[str, tuple[nn.Module, str, Optional[str]]] = {}
    for b in names:
        m = ref if b == "reference" else baselines.with_neurons(ref, lambda p, b=b: make_neuron(b, p))
        models[f"ours: {b}"] = (m, "ours", None)
    backend_of = {f"ours: {b}": b for b in names}
    if ablations and ref.first_op is not None:
        models["ours: reference, first SL weighed T times"] = (baselines.unhoisted(ref), "ablation", None)
    models["SpikingJelly LIFNode net"] = (baselines.SJMultiStepNet(ref), "baseline", SJ)
    models["snnTorch Leaky loop net"] = (baselines.SNNTorchLoopNet(ref), "baseline", SNNTORCH)
    opts = {}
    for name, (m, _, _) in models.items():
        m.to(dev).train()
        opts[name] = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=s.lr)

    clock_cuda = dev.type == "cuda"

    def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
        if clock_cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        result = fn()
        if clock_cuda:
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0, result

    order = list(models)
    first = None
    step_times: dict[str, list[float]] = {n: [] for n in order}
    losses: dict[str, list[float]] = {n: [] for n in order}
    correct: dict[str, int] = {n: 0 for n in order}
    data_time = 0.0
    seen = 0
    it = iter(batches.epoch_batches(0))
    i = 0
    while True:
        dt, item = timed(lambda: next(it, None))
        if item is None:
            break
        data_time += dt
        x, y = item
        if first is None:
            first = (x, y)
            for name in order:  # not counted: first-call costs (allocations, MKL set-up)
                spare = copy.deepcopy(models[name][0])
                spare_opt = torch.optim.Adam([p for p in spare.parameters() if p.requires_grad], lr=0.0)
                for _ in range(warmup):
                    _train_step(spare, spare_opt, x, y)
                del spare, spare_opt
        k = i % len(order)
        for name in order[k:] + order[:k]:
            m, _, _ = models[name]
            seconds, (loss, hits) = timed(lambda: _train_step(m, opts[name], x, y))
            step_times[name].append(seconds)
            losses[name].append(loss)
            correct[name] += hits
        seen += len(y)
        i += 1
        if progress is not None and (i % 50 == 0 or i == len(batches)):
            say(f"  epoch suite: batch {i}/{len(batches)}")
    if first is None:
        raise ValueError("the epoch has no batches")
    measured = i
    scale = full_batches / measured
    rows = []
    for name, (model, group, tag) in models.items():
        steps_s = sum(step_times[name])
        epoch_s = (steps_s + data_time) * scale
        step_stats = summarize(step_times[name])
        epoch_median_s = step_stats.median * full_batches + data_time * scale
        x, y = first
        weights = list(model.parameters())
        peaks = [peak_memory(lambda: _train_step(model, opts[name], x, y), dev) for _ in range(memory_steps)]
        saved = saved_tensor_bytes(lambda: F.cross_entropy(model(x), y), exclude=weights)
        peak = None if any(p is None for p in peaks) else max(peaks)
        rows.append(_row(
            name, group, baseline=tag, backend=backend_of.get(name), epoch_s=epoch_s, epoch_median_s=epoch_median_s,
            steps_s=steps_s * scale, data_s=data_time * scale, step=step_stats.as_dict(), saved_bytes=saved,
            peak_bytes=peak,
            mean_loss=sum(losses[name]) / len(losses[name]), train_acc=correct[name] / max(seen, 1),
        ))
    _ratios(rows, "step.median")
    for r in rows:  # the ratio of the measured totals, for reference
        base = {b["baseline"]: b for b in rows if b["group"] == "baseline"}
        if r["group"] != "baseline":
            for tag in (SJ, SNNTORCH):
                r[f"ratio_{tag}_total"] = r["epoch_s"] / base[tag]["epoch_s"] if tag in base else None
    estimated = measured < full_batches
    note = (f"{s.dataset}: {measured} of {full_batches} batches measured, epoch time scaled x{scale:.2f}"
            if estimated else f"{s.dataset}: full epoch, {full_batches} batches")
    return {
        "suite": "epoch",
        "config": {
            "recipe": recipe, "row": row, "label": spec.label, "arch": spec.arch, "coder": spec.coder,
            "training": spec.training, "settings": s.as_dict(), "train_images": int(split.train.numel()),
            "batches_per_epoch": full_batches, "batches_measured": measured, "estimated": estimated,
            "note": note, "warmup_steps": warmup, "device": str(dev), "skipped": skipped,
            "loop": "hnn_bridge.training.loop.train_model's step: forward, cross entropy, zero_grad, "
                    "backward, Adam step, score_batch",
        },
        "machine": machine_info(dev),
        "rows": rows,
        "targets": _targets("epoch", rows, f"{spec.arch}, T={s.steps}, batch {s.batch_size}, {note}"),
    }


# ----------------------------------------------------------------------------- tables


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['median'] * 1e3:.2f}"


def _mb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value / 2**20:.2f}"


def _ratio(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.2f}x"


def _table(header: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def _timing_table(rows: list[dict[str, Any]], extra: bool) -> str:
    header = ["contender", "fwd+bwd ms (median)", "IQR ms", "eval fwd ms", "ours/SJ", "ours/snnTorch",
              "saved MiB", "peak MiB"]
    if extra:
        header += ["saved B/neuron-step", "firing rate"]
    lines = []
    for r in rows:
        line = [r["name"], _ms(r["fwd_bwd"]), f"{r['fwd_bwd']['iqr'] * 1e3:.2f}", _ms(r["fwd_eval"]),
                _ratio(r.get("ratio_sj")), _ratio(r.get("ratio_snntorch")), _mb(r["saved_bytes"]),
                _mb(r["peak_bytes"])]
        if extra:
            line += [f"{r['saved_bytes_per_neuron_step']:.1f}", f"{r['rate']:.3f}"]
        lines.append(line)
    return _table(header, lines)


def _targets_text(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"- {t['contender']} / {'SpikingJelly LIFNode' if t['versus'] == SJ else 'snnTorch Leaky'}: "
                     f"{t['ratio']:.2f}x (target <= {t['limit']:.2f}x at {t['at']}): {verdict}")
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    """A Markdown section for one suite's result."""
    suite, c = result["suite"], result["config"]
    m = result["machine"]
    where = f"{m['cpu']}, {m['cpu_cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
    if m.get("load_average"):
        where += f", load average {m['load_average'][0]:.1f} at the end"
    if m.get("gpu"):
        where = f"{m['gpu']}; " + where
    parts = []
    if suite == "neuron":
        parts.append(f"### Neuron alone, [T, B, N] = [{c['steps']}, {c['batch']}, {c['neurons']}], float32, "
                     f"{c['device']}: {c['repeats']} repeats after {c['warmup']} warm-up, interleaved")
        parts.append(_timing_table(result["rows"], extra=True))
    elif suite == "network":
        parts.append(f"### Networks, duplicate coding, T = {c['steps']}, batch {c['batch']}, {c['device']}: "
                     f"{c['repeats']} repeats after {c['warmup']} warm-up, interleaved")
        for net in result["networks"]:
            parts.append(f"**{net['arch']}** (input {'x'.join(map(str, net['input_shape']))})\n")
            parts.append(_timing_table(net["rows"], extra=False))
    else:
        parts.append(f"### One training epoch: {c['recipe']} row {c['row']} ({c['label']}), T = "
                     f"{c['settings']['steps']}, batch {c['settings']['batch_size']}, {c['train_images']:,} "
                     f"training images; {c['note']}; {c['device']}")
        header = ["contender", "epoch s (median step x batches)", "epoch s (sum)", "step ms (median)", "IQR ms",
                  "ours/SJ", "ours/snnTorch", "peak MiB", "saved MiB", "mean loss", "train acc"]
        lines = [[r["name"], f"{r['epoch_median_s']:.1f}", f"{r['epoch_s']:.1f}", _ms(r["step"]),
                  f"{r['step']['iqr'] * 1e3:.2f}",
                  _ratio(r.get("ratio_sj")), _ratio(r.get("ratio_snntorch")), _mb(r["peak_bytes"]),
                  _mb(r["saved_bytes"]), f"{r['mean_loss']:.4f}", f"{r['train_acc']:.4f}"] for r in result["rows"]]
        parts.append(_table(header, lines))
    if c.get("skipped"):
        parts.append("Skipped: " + "; ".join(f"{s['backend']} ({s['reason']})" for s in c["skipped"]))
    if result.get("targets"):
        parts.append("Targets:\n" + _targets_text(result["targets"]))
    parts.append(f"_Measured {m['date']} on {where}._")
    return "\n\n".join(parts)

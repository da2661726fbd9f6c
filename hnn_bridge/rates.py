"""Measured firing rates and exact operation tallies, the inputs of the counts in `hnn_bridge.ops`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from .builder import HybridNet


@contextmanager
def recording_input_rates(model: HybridNet) -> Iterator[dict[int, float]]:
    """Record, during the forward passes inside the block, the mean presynaptic firing rate
    (spikes per neuron per time step) of every SL fed by spikes; the yielded dict, keyed by
    the layer's index in ``model.layers``, is filled when the block ends."""
    totals: dict[int, list[float]] = {}
    handles = []
    for i, info in enumerate(model.layers):
        if info.part != "SL" or info.fed_by != "spikes":
            continue
        totals[i] = [0.0, 0.0]

        def hook(_module, inputs, _output, acc=totals[i]):
            acc[0] += float(inputs[0].sum(dtype=torch.float64))
            acc[1] += inputs[0].numel()

        handles.append(model.weight_ops[i].register_forward_hook(hook))
    rates: dict[int, float] = {}
    try:
        yield rates
    finally:
        for h in handles:
            h.remove()
        rates.update({i: (s / n if n else 0.0) for i, (s, n) in totals.items()})


@torch.no_grad()
def measure_input_rates(model: HybridNet, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[int, float]:
    """`recording_input_rates` over one evaluation pass (``model.eval()``) of ``batches``."""
    was_training = model.training
    model.eval()
    try:
        with recording_input_rates(model) as rates:
            for x, _ in batches:
                model(x)
    finally:
        model.train(was_training)
    return rates


def layer_key(model: HybridNet, index: int) -> str:
    """How logs name a layer: its 1-based position in the architecture and its token
    (``"5:S64C3"``), unique even where a token repeats."""
    return f"{index + 1}:{model.layers[index].token}"


@contextmanager
def recording_spike_rates(model: HybridNet) -> Iterator[dict[str, list[float]]]:
    """Count, during the forward passes inside the block, the output spikes of every SL:
    the yielded dict maps `layer_key` to [spikes, neuron-steps] (sums, so that data
    parallel processes can add theirs); the rate is their quotient."""
    totals: dict[str, list[float]] = {}
    handles = []
    for i, neuron in getattr(model, "neurons", {}).items():
        acc = totals.setdefault(layer_key(model, i), [0.0, 0.0])

        def hook(_module, _inputs, output, acc=acc):
            acc[0] += float(output.detach().sum(dtype=torch.float64))
            acc[1] += output.numel()

        handles.append(neuron.register_forward_hook(hook))
    try:
        yield totals
    finally:
        for h in handles:
            h.remove()


def spike_rates(totals: Mapping[str, list[float]]) -> dict[str, float]:
    """Rates (spikes per neuron per step) from `recording_spike_rates` totals."""
    return {k: (s / n if n else 0.0) for k, (s, n) in totals.items()}


@contextmanager
def recording_counts(model: HybridNet) -> Iterator[dict[str, Any]]:
    """Record, during the forward passes inside the block, what `hnn_bridge.ops.exact_counts`
    needs: the images seen, for every weight op the non-zero values fed to it and the
    synapses they reach (each input position with its own fan-out, `ops.fanout_map`), and
    the output spikes of every SL. The yielded dict holds sums (so that data-parallel
    processes can add theirs): ``images``, ``inputs`` {layer: [events, synapses]},
    ``spikes`` {layer: spikes}, ``in_size`` {layer: values per image and evaluation}."""
    from .ops import fanout_map

    tally: dict[str, Any] = {"images": 0, "inputs": {}, "spikes": {}, "in_size": {}}
    fanouts: dict[int, Any] = {}
    handles = []

    def count_images(_module, inputs):
        tally["images"] += inputs[0].shape[0]

    handles.append(model.register_forward_pre_hook(count_images))
    for i, op in model.weight_ops.items():
        tally["inputs"][i] = [0.0, 0.0]

        def on_input(module, inputs, i=i):
            x = inputs[0].detach()
            nonzero = x != 0
            tally["in_size"][i] = x[0].numel()
            if i not in fanouts:
                fan = fanout_map(module, tuple(x.shape[1:]))
                fanouts[i] = fan if isinstance(fan, int) else fan.to(x.device)
            fan = fanouts[i]
            acc = tally["inputs"][i]
            if isinstance(fan, int):
                events = float(nonzero.sum(dtype=torch.float64))
                acc[0] += events
                acc[1] += events * fan
            else:
                per_position = nonzero.sum(dim=(0, 1), dtype=torch.float64)
                acc[0] += float(per_position.sum())
                acc[1] += float((per_position * fan).sum())

        handles.append(op.register_forward_pre_hook(on_input))
    for i, neuron in getattr(model, "neurons", {}).items():
        tally["spikes"][i] = 0.0

        def on_spikes(_module, _inputs, output, i=i):
            tally["spikes"][i] += float(output.detach().sum(dtype=torch.float64))

        handles.append(neuron.register_forward_hook(on_spikes))
    try:
        yield tally
    finally:
        for h in handles:
            h.remove()

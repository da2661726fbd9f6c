"""Measured firing rates, the input of the accumulate count in `hnn_bridge.ops`."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

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

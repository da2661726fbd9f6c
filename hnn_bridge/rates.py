"""Measured firing rates, the input of the accumulate count in `hnn_bridge.ops`."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from .builder import HybridNet


@torch.no_grad()
def measure_input_rates(model: HybridNet, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[int, float]:
    """Mean presynaptic firing rate (spikes per neuron per time step) of every SL fed by
    spikes, keyed by its index in ``model.layers``, over the images of ``batches``."""
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
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {i: (s / n if n else 0.0) for i, (s, n) in totals.items()}

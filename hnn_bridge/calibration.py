"""Data-driven initialisation of the spiking layers: scale each SL's weights until it fires.

The paper names no weight initialisation. With PyTorch's default one (uniform, std
1/sqrt(3 fan_in)) and Fang et al.'s neuron (lambda = 0, V_th = 1) the deeper SLs of the
paper's CNNs do not fire at all at the start, on real CIFAR-10 images: no spike reaches
the output, every count ties at zero and no gradient flows (`tests/test_calibration.py`
shows it). `calibrate_firing` therefore scales the weights of each SL, from the input
side on, by the factor at which that layer's mean firing rate on a batch of training
images reaches a target (bisection on a log scale); biases are kept. Recipes switch it
on with ``init_rate``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .builder import HybridNet


def _output_rate(model: HybridNet, index: int, x: Tensor) -> float:
    total = [0.0, 0]

    def hook(_module, _inputs, output):
        total[0] += float(output.sum(dtype=torch.float64))
        total[1] += output.numel()

    handle = model.neurons[index].register_forward_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return total[0] / max(total[1], 1)


@torch.no_grad()
def calibrate_firing(
    model: HybridNet, x: Tensor, target: float, *, iters: int = 12, max_scale: float = 256.0
) -> dict[int, float]:
    """Scale the weights of every SL (in order) so that it fires at about ``target`` spikes
    per neuron and step on the images ``x`` [B, C, H, W]; returns layer index -> factor.

    The factor of each layer is searched in [1/max_scale, max_scale] by ``iters`` halvings
    of its log; a layer that stays below the target even at ``max_scale`` keeps that.
    Runs in eval mode (no dropout); coders draw from torch's global RNG as usual.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"calibrate_firing: target firing rate must be in (0, 1), got {target}")
    was_training = model.training
    model.eval()
    scales: dict[int, float] = {}
    try:
        for index in sorted(model.neurons):
            weight = model.weight_ops[index].weight
            base = weight.detach().clone()
            lo, hi = -math.log2(max_scale), math.log2(max_scale)

            def rate_at(log_scale: float) -> float:
                weight.copy_(base * 2.0**log_scale)
                return _output_rate(model, index, x)

            if rate_at(hi) >= target:
                for _ in range(iters):
                    mid = (lo + hi) / 2
                    if rate_at(mid) < target:
                        lo = mid
                    else:
                        hi = mid
            weight.copy_(base * 2.0**hi)
            scales[index] = 2.0**hi
    finally:
        model.train(was_training)
    return scales

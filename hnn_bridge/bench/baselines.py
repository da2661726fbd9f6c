"""What `hnn-bridge bench` compares our networks with, written as their users write them.

Stock neurons, as layers mapping ``[T, B, ...]`` to spikes from zero state per call:

- `SJLIFLayer`: SpikingJelly's ``LIFNode`` in multi-step mode (its own CPU/CUDA operator);
- `LeakyLoopLayer`: snnTorch's ``Leaky`` stepped over T in a Python loop.

After a call every layer drops its state (as `hnn_bridge.backends` does for ours):
a stock ``Leaky`` otherwise keeps its last membrane tensor, and with it the whole graph
of the call, until its next call.

Their constants follow the IIR neuron's where they have one (threshold, and the membrane
time constant tau_m as SpikingJelly's ``tau`` and snnTorch's ``beta = e^(-1/tau_m)``);
everything else is the library's default (SpikingJelly: hard reset to 0 and the sigmoid
surrogate; snnTorch: reset by subtraction and the arctan surrogate). Neither has a
synapse filter or a reset filter: they do less work per step than the IIR neuron.

Whole networks, from a built `HybridNet` (same weights, same layer shapes):

- `with_neurons`: the same network with every IIR neuron replaced (e.g. by a stock one);
- `SJMultiStepNet`: as SpikingJelly's multi-step examples write it: the coded train
  materialised as ``[T, B, ...]`` and every SL weight op applied to all T x B rows (the
  first one included: no once-per-image shortcut for duplicate coding), stock LIFNode;
- `SNNTorchLoopNet`: as snnTorch's tutorials write it: ALs once per image, then a Python
  loop over T in which every SL weight op (the first one too) and a stock ``Leaky`` run
  on one step ``[B, ...]``; spike counts summed over T;

and two ablations of our network, to measure what a speed measure gives:

- `unhoisted`: the first SL's weight op runs on all T copies of a duplicate-coded train
  instead of once per image;
- `per_step_ops`: every SL weight op runs T times on ``[B, ...]`` instead of once on
  ``[T x B, ...]``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..builder import HybridNet, SeqOp, TimeSharedDropout
from ..neuron import PostFilterBias, SynapseFilter
from ..params import IIRParams

__all__ = [
    "LeakyLoopLayer",
    "PerStepOp",
    "SJLIFLayer",
    "SJMultiStepNet",
    "SNNTorchLoopNet",
    "is_neuron",
    "per_step_ops",
    "unhoisted",
    "with_neurons",
]


def is_neuron(module: nn.Module) -> bool:
    """An IIR neuron layer of any backend (they all carry ``params``; a `SynapseFilter`
    carries them too, but is no neuron)."""
    return isinstance(getattr(module, "params", None), IIRParams) and not isinstance(module, SynapseFilter)


class SJLIFLayer(nn.Module):
    """SpikingJelly's stock ``LIFNode`` (multi-step), from zero state on every call."""

    def __init__(self, params: IIRParams) -> None:
        super().__init__()
        from spikingjelly.activation_based import neuron

        self.node = neuron.LIFNode(
            tau=float(params.tau_m), v_threshold=float(params.v_threshold), step_mode="m"
        )

    def forward(self, x: Tensor) -> Tensor:
        self.node.reset()
        try:
            return self.node(x)
        finally:
            self.node.reset()


def _leaky(params: IIRParams) -> nn.Module:
    import snntorch

    return snntorch.Leaky(beta=math.exp(-1.0 / params.tau_m), threshold=float(params.v_threshold))


class LeakyLoopLayer(nn.Module):
    """snnTorch's stock ``Leaky`` stepped over T in a Python loop, from zero state."""

    def __init__(self, params: IIRParams) -> None:
        super().__init__()
        self.lif = _leaky(params)

    def forward(self, x: Tensor) -> Tensor:
        mem = self.lif.init_leaky()
        spikes = []
        for x_t in x:
            spk, mem = self.lif(x_t, mem)
            spikes.append(spk)
        self.lif.reset_mem()  # Leaky keeps its last mem, and with it this call's graph
        return torch.stack(spikes)


def with_neurons(model: HybridNet, make: Callable[[IIRParams], nn.Module]) -> HybridNet:
    """A deep copy of ``model`` with every IIR neuron layer replaced by ``make(params)``
    and its `SynapseFilter` modules dropped (a stock neuron has no synapse filter; the
    bias after it stays, as the bias of the weight op would be)."""
    model = copy.deepcopy(model)
    model.sl = nn.Sequential(
        *(make(m.params) if is_neuron(m) else m for m in model.sl if not isinstance(m, SynapseFilter))
    )
    return model


def unhoisted(model: HybridNet) -> HybridNet:
    """A deep copy of ``model`` whose first SL weight op runs on every step of the coded
    train (``[T x B, ...]`` rows) instead of once per image."""
    model = copy.deepcopy(model)
    if model.first_op is not None:
        model.sl = nn.Sequential(SeqOp(model.first_op), *model.sl)
        model.first_op = None
    return model


class PerStepOp(nn.Module):
    """Apply a per-sample module to each of the T steps of ``[T, B, ...]`` separately."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([self.module(x_t) for x_t in x])


def per_step_ops(model: HybridNet) -> HybridNet:
    """A deep copy of ``model`` whose SL weight ops run T times on ``[B, ...]``."""
    model = copy.deepcopy(model)
    model.sl = nn.Sequential(*(PerStepOp(m.module) if isinstance(m, SeqOp) else m for m in model.sl))
    return model


def SJMultiStepNet(model: HybridNet) -> HybridNet:  # noqa: N802 - reads as a class
    """The network as SpikingJelly's multi-step examples write it (see the module doc)."""
    return with_neurons(unhoisted(model), SJLIFLayer)


class _StepDropout(nn.Module):
    """Dropout for one step ``[B, ...]`` whose mask is drawn at the first step of a
    sequence and reused for the others (`TimeSharedDropout`, stepped)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.mask: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.mask is None:
            self.mask = torch.empty_like(x).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * self.mask


class SNNTorchLoopNet(nn.Module):
    """The network of a `HybridNet` as snnTorch's tutorials write it (see the module doc).

    Shares no tensors with ``model``: the weights are copied.
    """

    def __init__(self, model: HybridNet) -> None:
        super().__init__()
        if model.coder is None:
            raise ValueError(f"{model.arch!r} has no spiking layers")
        model = copy.deepcopy(model)
        self.arch = model.arch
        self.al = model.al
        self.coder = model.coder
        layers: list[nn.Module] = []
        if model.first_op is not None:
            layers.append(model.first_op)
        for m in model.sl:
            if isinstance(m, SeqOp):
                layers.append(m.module)
            elif is_neuron(m):
                layers.append(_leaky(m.params))
            elif isinstance(m, TimeSharedDropout):
                layers.append(_StepDropout(m.p))
            elif isinstance(m, PostFilterBias):
                layers.append(m)  # broadcasts over one step [B, ...] as over [T, B, ...]
            elif isinstance(m, SynapseFilter):
                continue  # a stock Leaky has no synapse filter
            else:
                raise TypeError(f"SNNTorchLoopNet: no per-step form for {type(m).__name__}")
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        import snntorch

        coded = self.coder(self.al(x))
        mems = {}
        for i, layer in enumerate(self.layers):
            if isinstance(layer, snntorch.Leaky):
                mems[i] = layer.init_leaky()
            elif isinstance(layer, _StepDropout):
                layer.mask = None
        counts = None
        for t in range(coded.shape[0]):
            h = coded[t]
            for i, layer in enumerate(self.layers):
                if i in mems:
                    h, mems[i] = layer(h, mems[i])
                else:
                    h = layer(h)
            counts = h if counts is None else counts + h
        for i, layer in enumerate(self.layers):
            if isinstance(layer, _StepDropout):
                layer.mask = None
            elif i in mems:
                layer.reset_mem()  # Leaky keeps its last mem, and with it this call's graph
        return counts

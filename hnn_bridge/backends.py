"""Neuron backends for `build`: the same IIR LIF layer on the torch core, SpikingJelly or snnTorch.

Every backend maps a time-first current ``[T, B, ...]`` to spikes ``[T, B, ...]`` from
zero state on every call, with bit-identical spikes (they all evaluate the arithmetic of
`hnn_bridge.functional.iir.charge`), so one set of weights gives the same spikes on every
backend; `copy_weights` moves the weights of one built model into another.

- ``"reference"``: `hnn_bridge.IIRNeuron` (the fused autograd Function of the core);
- ``"spikingjelly"``: `hnn_bridge.adapters.spikingjelly.IIRNode`, multi-step mode,
  reset around every call;
- ``"spikingjelly-cupy"``: the same node on its CuPy kernels (float32, CUDA, needs cupy);
- ``"snntorch"``: `hnn_bridge.adapters.snntorch.IIRLeaky` stepped over T with explicit state.

The adapters are imported only when their backend is asked for.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .neuron import IIRNeuron
from .params import IIRParams

__all__ = ["BACKENDS", "make_neuron", "copy_weights", "SpikingJellyLayer", "SNNTorchLayer"]

BACKENDS = ("reference", "spikingjelly", "spikingjelly-cupy", "snntorch")


class SpikingJellyLayer(nn.Module):
    """A SpikingJelly `IIRNode` used as a stateless layer: ``forward(x)`` on ``[T, B, ...]``
    starts from zero state (the node is reset before and after the call). The node runs in
    multi-step mode; after ``functional.set_step_mode(model, "s")`` it is stepped over T."""

    def __init__(self, params: IIRParams, backend: str = "torch") -> None:
        super().__init__()
        from hnn_bridge.adapters.spikingjelly import IIRNode

        self.node = IIRNode.from_params(params, step_mode="m", backend=backend)

    @property
    def params(self) -> IIRParams:
        return self.node.params

    def forward(self, x: Tensor) -> Tensor:
        node = self.node
        node.reset()
        try:
            if node.step_mode == "s":
                return torch.stack([node(x_t) for x_t in x])
            return node(x)
        finally:
            self.node.reset()  # drop the final state (it references this call's graph)


class SNNTorchLayer(nn.Module):
    """An snnTorch `IIRLeaky` stepped over T with explicit state: ``forward(x)`` on
    ``[T, B, ...]`` starts from zero state and stacks the spikes of every step."""

    def __init__(self, params: IIRParams) -> None:
        super().__init__()
        from hnn_bridge.adapters.snntorch import IIRLeaky

        self.neuron = IIRLeaky.from_params(params)

    @property
    def params(self) -> IIRParams:
        return self.neuron.params

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"IIRLeaky expects a floating-point tensor [T, ...], got dtype {x.dtype}")
        if x.dim() < 1 or x.shape[0] < 1:
            raise ValueError(
                f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {tuple(x.shape)}"
            )
        from hnn_bridge.functional.iir import IIRState

        state = IIRState.zeros_like(x[0])
        spikes = []
        for x_t in x:
            spk, state = self.neuron(x_t, state)
            spikes.append(spk)
        self.neuron.reset_mem()  # drop the final state (it references this call's graph)
        return torch.stack(spikes)


def make_neuron(backend: str, params: IIRParams) -> nn.Module:
    """A spiking layer mapping ``[T, B, ...]`` currents to spikes, from zero state per call.

    Raises ValueError for an unknown backend (naming the known ones) and RuntimeError for
    ``"spikingjelly-cupy"`` without CUDA or cupy.
    """
    if backend == "reference":
        return IIRNeuron.from_params(params)
    if backend == "spikingjelly":
        return SpikingJellyLayer(params, backend="torch")
    if backend == "spikingjelly-cupy":
        return SpikingJellyLayer(params, backend="cupy")
    if backend == "snntorch":
        return SNNTorchLayer(params)
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Load the state_dict of `src` into `dst` (e.g. one architecture built on two backends).

    The neurons of every backend hold no saved state, so two builds of the same
    architecture have the same keys. Raises ValueError naming the keys only one side has
    and those whose shapes differ; `dst` is left untouched then. Returns `dst`.
    """
    source, target = src.state_dict(), dst.state_dict()
    only_dst = [k for k in target if k not in source]
    only_src = [k for k in source if k not in target]
    shapes = [
        f"{k} {tuple(source[k].shape)} -> {tuple(target[k].shape)}"
        for k in target
        if k in source and source[k].shape != target[k].shape
    ]
    if only_dst or only_src or shapes:
        problems = []
        if only_src:
            problems.append(f"only in the source: {', '.join(only_src)}")
        if only_dst:
            problems.append(f"only in the target: {', '.join(only_dst)}")
        if shapes:
            problems.append(f"different shapes: {', '.join(shapes)}")
        raise ValueError(f"copy_weights: the models do not match ({'; '.join(problems)})")
    dst.load_state_dict(source)
    return dst

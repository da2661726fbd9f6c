"""The IIR LIF neuron as a native SpikingJelly node (`IIRNode`).

Supported SpikingJelly: ``>=2.0,<2.1`` (the 2.x `BaseNode`/`MemoryModule` with explicit-state
functional forwards). The node keeps its five states as SpikingJelly memories, so
``functional.reset_net`` clears them, ``functional.detach_net`` detaches them and
``functional.set_step_mode`` switches it between single-step (``"s"``) and multi-step
(``"m"``) mode.

Example::

    import torch
    from spikingjelly.activation_based import functional, layer
    from hnn_bridge.adapters.spikingjelly import IIRNode

    net = torch.nn.Sequential(layer.Linear(784, 100), IIRNode(tau_m=4.0, tau_s=1.0))
    functional.set_step_mode(net, "m")
    spikes = net(torch.rand(25, 8, 784))      # [T, B, ...] -> [T, B, 100]
    functional.reset_net(net)
"""

from __future__ import annotations

from dataclasses import fields
from typing import Optional

import torch
from torch import Tensor

from spikingjelly.activation_based import neuron as sj_neuron

from hnn_bridge.functional.iir import IIRState, iir_multistep, iir_step
from hnn_bridge.params import IIRParams

__all__ = ["IIRNode", "BACKENDS", "SPIKINGJELLY_VERSIONS"]

#: Backends of `IIRNode` (multi-step mode; single-step mode always runs `iir_step`).
BACKENDS = ("torch", "cupy")
#: The SpikingJelly versions this adapter is written and tested for.
SPIKINGJELLY_VERSIONS = ">=2.0,<2.1"

# SpikingJelly memory names in registration order (BaseNode registers "v" first).
_MEMORIES = ("v", "p1", "p2", "r", "o")


class IIRNode(sj_neuron.BaseNode):
    """A layer of IIR LIF neurons (eq. 1a-1f, 5, 6) as a SpikingJelly 2.x node.

    Keyword arguments are those of `hnn_bridge.IIRNeuron` (see `IIRParams`), plus:

    Args:
        step_mode: ``"m"`` (input ``[T, N, ...]``, the default) or ``"s"`` (input
            ``[N, ...]``, one time step per call).
        backend: multi-step implementation: ``"torch"`` (the fused autograd Function of
            the core; CPU and GPU) or ``"cupy"`` (CuPy kernels, float32 on CUDA; see
            `hnn_bridge.adapters.cupy_kernels`). Both give bit-identical spikes.
        store_v_seq: in multi-step mode keep the membrane potentials ``[T, N, ...]`` of
            the last call in ``self.v_seq`` (in single-step mode they accumulate until
            ``reset()``, as in SpikingJelly).

    State: the memories ``v`` (V[t-1]), ``p1`` (p[t-1]), ``p2`` (p[t-2]), ``r`` (R[t-1])
    and ``o`` (O[t-1]) persist across calls, in both step modes, until
    ``functional.reset_net`` (or ``reset()``); a second call continues where the first
    stopped. They start as the float 0.0 and take the input's shape on first use; an
    input of another shape starts from zero state again.
    """

    def __init__(
        self,
        *,
        v_threshold: float = 1.0,
        sigma: float = 0.4,
        tau_m: float = 4.0,
        tau_s: float = 1.0,
        membrane_decay: Optional[float] = None,
        reset_decay: Optional[float] = None,
        synapse: str = "dual_exp",
        detach_reset: bool = False,
        step_mode: str = "m",
        backend: str = "torch",
        store_v_seq: bool = False,
    ) -> None:
        params = IIRParams(
            v_threshold=v_threshold,
            sigma=sigma,
            tau_m=tau_m,
            tau_s=tau_s,
            membrane_decay=membrane_decay,
            reset_decay=reset_decay,
            synapse=synapse,
            detach_reset=detach_reset,
        )
        if backend not in BACKENDS:
            raise ValueError(f"IIRNode: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")
        if backend == "cupy":
            from .cupy_kernels import require_cupy

            require_cupy()
        super().__init__(
            v_threshold=float(params.v_threshold),
            v_reset=None,
            surrogate_function=None,
            detach_reset=bool(params.detach_reset),
            step_mode=step_mode,
            store_v_seq=store_v_seq,
        )
        for name in _MEMORIES[1:]:
            self.register_memory(name, 0.0)
        self.params = params
        self.backend = backend

    @classmethod
    def from_params(cls, params: IIRParams, **kwargs) -> "IIRNode":
        """An IIRNode with the settings of `params`; `kwargs` are step_mode, backend, store_v_seq."""
        return cls(**params.as_dict(), **kwargs)

    def supported_step_mode(self):
        return ("s", "m")

    # -- state ----------------------------------------------------------------------------

    @property
    def state(self) -> IIRState:
        """The current memories as an `IIRState` (floats 0.0 before the first call)."""
        m = self._memories
        return IIRState(m["p1"], m["p2"], m["r"], m["v"], m["o"])

    def materialize_states(self, inputs, states, step_mode):
        """Memories in `_MEMORIES` order -> tensors shaped like one time step of the input.

        In multi-step mode unset (float) or mismatched states become None, which the
        multistep Functions read as zeros without allocating them.
        """
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        if all(isinstance(s, Tensor) and s.shape == x.shape for s in states):
            return tuple(
                s if s.dtype == x.dtype and s.device == x.device else s.to(dtype=x.dtype, device=x.device)
                for s in states
            )
        # Unset (after reset) or shaped for another input: start from zero state.
        if step_mode == "m":
            return (None,) * len(states)
        zero = torch.zeros_like(x)
        return (zero,) * len(states)

    def detach(self):
        """Detach the memories from the graph (out of place: some are views of V / spikes)."""
        for name, value in self._memories.items():
            if isinstance(value, Tensor):
                self._memories[name] = value.detach()
        if isinstance(self.v_seq, Tensor):
            self.v_seq = self.v_seq.detach()

    # -- forward --------------------------------------------------------------------------

    def single_step_functional_forward(self, inputs, states, **kwargs):
        v, p1, p2, r, o = states
        o_new, st = iir_step(inputs[0], IIRState(p1, p2, r, v, o), self.params)
        return (o_new,), (st.v, st.p1, st.p2, st.r, st.o)

    def _multistep(self, x_seq: Tensor, states) -> tuple[Tensor, Tensor, IIRState]:
        v, p1, p2, r, o = states
        start = None if all(s is None for s in states) else IIRState(p1, p2, r, v, o)
        if self.backend == "cupy":
            from .cupy_kernels import cupy_multistep

            return cupy_multistep(x_seq, self.params, start)
        return iir_multistep(x_seq, self.params, start)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        spikes, _, st = self._multistep(inputs[0], states)
        return (spikes,), (st.v, st.p1, st.p2, st.r, st.o)

    def multi_step_forward(self, x_seq: Tensor, *args, **kwargs):
        if not torch.is_floating_point(x_seq):
            raise TypeError(f"IIRNode expects a floating-point tensor [T, N, ...], got dtype {x_seq.dtype}")
        if x_seq.dim() < 1 or x_seq.shape[0] < 1:
            raise ValueError(f"IIRNode: expected a time-first tensor [T, N, ...] with T >= 1, got shape {tuple(x_seq.shape)}")
        states = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
        spikes, volts, st = self._multistep(x_seq, states)
        m = self._memories
        m["v"], m["p1"], m["p2"], m["r"], m["o"] = st.v, st.p1, st.p2, st.r, st.o
        self.v_seq = volts if self.store_v_seq else None
        return spikes

    def single_step_forward(self, x: Tensor, *args, **kwargs):
        if not torch.is_floating_point(x):
            raise TypeError(f"IIRNode expects a floating-point tensor [N, ...], got dtype {x.dtype}")
        return super().single_step_forward(x, *args, **kwargs)

    def extra_repr(self) -> str:
        defaults = IIRParams()
        changed = [
            f"{f.name}={getattr(self.params, f.name)!r}"
            for f in fields(IIRParams)
            if getattr(self.params, f.name) != getattr(defaults, f.name)
        ]
        return ", ".join(changed + [f"step_mode={self.step_mode!r}", f"backend={self.backend!r}"])

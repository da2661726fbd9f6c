"""`IIRNeuron`: the IIR LIF neuron (eq. 1a-1f, 5, 6) as a stateless time-first module."""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor, nn

from .functional import iir_spikes
from .params import IIRParams


class IIRNeuron(nn.Module):
    """A layer of IIR LIF neurons over a time-first input ``[T, ...]``.

    ``forward(x)`` starts from zero state on every call and returns the spikes, same
    shape and dtype as ``x``. The whole sequence runs as one fused autograd Function
    with hand-written BPTT (see `hnn_bridge.functional.iir`); without a graph to record
    (``torch.no_grad()``, or an input that needs no gradient) it saves nothing and keeps
    no membrane sequence. Keyword arguments are
    those of `IIRParams`; ``None`` decays mean e^(-1/tau_m).
    """

    def __init__(
        self,
        *,
        v_threshold: float = 1.0,
        sigma: float = 0.4,
        tau_m: float = 4.0,
        tau_s: float = 1.0,
        membrane_decay: float | None = None,
        reset_decay: float | None = None,
        synapse: str = "dual_exp",
        detach_reset: bool = False,
    ) -> None:
        super().__init__()
        self.params = IIRParams(
            v_threshold=v_threshold,
            sigma=sigma,
            tau_m=tau_m,
            tau_s=tau_s,
            membrane_decay=membrane_decay,
            reset_decay=reset_decay,
            synapse=synapse,
            detach_reset=detach_reset,
        )

    @classmethod
    def from_params(cls, params: IIRParams) -> "IIRNeuron":
        return cls(**params.as_dict())

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"IIRNeuron expects a floating-point tensor [T, ...], got dtype {x.dtype}")
        return iir_spikes(x, self.params)

    def extra_repr(self) -> str:
        defaults = IIRParams()
        changed = [
            f"{f.name}={getattr(self.params, f.name)!r}"
            for f in fields(IIRParams)
            if getattr(self.params, f.name) != getattr(defaults, f.name)
        ]
        return ", ".join(changed)

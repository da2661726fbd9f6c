"""`IIRNeuron`: the IIR LIF neuron (eq. 1a-1f, 5, 6) as a stateless time-first module,
and the two pieces of a spiking layer in Fang et al.'s form: `SynapseFilter` (eq. 1d)
and `PostFilterBias` (their bias, added after the filter)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .functional import iir_spikes, synapse_filter
from .params import IIRParams, merge_settings


def bias_shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    """A post-filter bias shape: an int n -> (n,) (a dense layer), else the tuple, which
    broadcasts against one time step without its batch dimension, e.g. (C, 1, 1)."""
    dims = (shape,) if isinstance(shape, int) and not isinstance(shape, bool) else tuple(shape)
    if not dims or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims):
        raise ValueError(
            f"post_filter_bias must be a positive int (units of a dense layer) or a tuple of them "
            f"such as (C, 1, 1) for a convolution of C channels, got {shape!r}"
        )
    return dims


class IIRNeuron(nn.Module):
    """A layer of IIR LIF neurons over a time-first input ``[T, ...]``.

    ``forward(x)`` starts from zero state on every call and returns the spikes, same
    shape and dtype as ``x``. The whole sequence runs as one fused autograd Function
    with hand-written BPTT (see `hnn_bridge.functional.iir`); without a graph to record
    (``torch.no_grad()``, or an input that needs no gradient) it saves nothing and keeps
    no membrane sequence.

    ``params`` (an `IIRParams`, default all defaults) holds the neuron's constants; the
    keyword arguments `NEURON_KEYS` (``v_threshold``, ``sigma``, ``tau_m``, ``tau_s``,
    ``membrane_decay``, ``reset_decay``, ``synapse``, ``detach_reset``) override its fields
    and are validated by it; ``None`` decays mean e^(-1/tau_m).

    ``post_filter_bias``: the shape of a learnable bias (``self.bias``, zeros at first)
    added after the synapse filter, where Fang et al. add theirs: ``500`` for 500 units,
    ``(C, 1, 1)`` for C channels of a convolution. None (the default): the neuron has no
    bias, and a bias of the weight op before it is part of the current and so filtered.
    """

    def __init__(
        self,
        params: IIRParams | None = None,
        *,
        post_filter_bias: int | Sequence[int] | None = None,
        **overrides: Any,
    ) -> None:
        super().__init__()
        self.params = IIRParams(**merge_settings("IIRNeuron", params, overrides))
        if post_filter_bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.zeros(bias_shape(post_filter_bias)))

    @classmethod
    def from_params(cls, params: IIRParams, **kwargs: Any) -> "IIRNeuron":
        return cls(params, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_floating_point(x):
            raise TypeError(f"IIRNeuron expects a floating-point tensor [T, ...], got dtype {x.dtype}")
        return iir_spikes(x, self.params, bias=self.bias)

    def extra_repr(self) -> str:
        changed = [f"{k}={v!r}" for k, v in self.params.overrides().items()]
        if self.bias is not None:
            changed.append(f"post_filter_bias={tuple(self.bias.shape)}")
        return ", ".join(changed)


class SynapseFilter(nn.Module):
    """The synapse filter of eq. 1d alone, on a time-first ``[T, ...]`` sequence from zero
    state (`hnn_bridge.functional.synapse_filter`); no parameters.

    In a spiking layer built in Fang et al.'s form it follows the weight op (by linearity
    the same as filtering the presynaptic spikes before it, as their axon layer does) and
    precedes the bias or batch norm and a neuron with ``synapse="none"``.
    """

    def __init__(self, params: IIRParams) -> None:
        super().__init__()
        self.params = params

    def forward(self, x: Tensor) -> Tensor:
        return synapse_filter(x, self.params)

    def extra_repr(self) -> str:
        p = self.params
        taus = "" if p.synapse == "none" else f", tau_m={p.tau_m!r}, tau_s={p.tau_s!r}"
        return f"synapse={p.synapse!r}{taus}"


class PostFilterBias(nn.Module):
    """A learnable per-neuron bias added to a time-first ``[T, B, *shape]`` current after
    its synapse filter: Fang et al.'s I = W F + b (their layers' ``bias=True``).

    ``bias`` has the shape of the weight op's own bias, (units,) or (channels,); it is
    broadcast over the positions of a convolution.
    """

    def __init__(self, bias: Tensor, spatial_dims: int = 0) -> None:
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.spatial_dims = spatial_dims

    @classmethod
    def like(cls, op: nn.Linear | nn.Conv2d) -> "PostFilterBias":
        """The bias of ``op`` (initialised by PyTorch's rule for ``op``), moved here;
        ``op`` is left without a bias."""
        if op.bias is None:
            raise ValueError(f"{type(op).__name__} has no bias to move after the synapse filter")
        module = cls(op.bias, spatial_dims=op.weight.dim() - 2)
        op.register_parameter("bias", None)
        return module

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bias.view(*self.bias.shape, *(1,) * self.spatial_dims)

    def extra_repr(self) -> str:
        return f"{self.bias.shape[0]}" + (f", spatial_dims={self.spatial_dims}" if self.spatial_dims else "")

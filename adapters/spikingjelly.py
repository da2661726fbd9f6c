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

Drop-in for SpikingJelly's own code: `IIRNode` accepts the keyword arguments that
SpikingJelly's model zoo passes to every ``spiking_neuron`` (``surrogate_function``,
``detach_reset``, ``v_threshold``, ``v_reset``, ``step_mode``, ``backend``,
``store_v_seq``), e.g. ``spiking_resnet.spiking_resnet18(spiking_neuron=IIRNode,
surrogate_function=surrogate.Erf(), detach_reset=True)``. Which path runs:

- ``surrogate_function=None`` (eq. 6 with ``sigma``) or ``surrogate.Erf(alpha)``, which *is*
  eq. 6 with sigma = 1 / (sqrt(2) alpha): the fused multistep Function (``backend="torch"``)
  or the CuPy kernels (``backend="cupy"``);
- any other SpikingJelly surrogate (``ATan``, ``Sigmoid``, ...): the per-step autograd path
  (`iir_multistep_reference`), which calls the surrogate on V - V_th for the gradient; the
  spikes are the same Heaviside (eq. 1f). It is slower, and with ``backend="cupy"`` it
  still runs in PyTorch (a warning says so).

``v_reset`` must be None: the IIR neuron resets through its reset filter, never to a value.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional, Union

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
from torch import Tensor

from hnn_bridge.functional.iir import (
    IIRState,
    iir_multistep,
    iir_multistep_reference,
    iir_step,
    state_dtype,
    with_post_filter_bias,
)
from hnn_bridge.neuron import bias_shape
from hnn_bridge.params import IIRParams, merge_settings

__all__ = ["IIRNode", "BACKENDS", "SPIKINGJELLY_VERSIONS", "erf_sigma"]

#: Backends of `IIRNode` (multi-step mode; single-step mode always runs `iir_step`).
BACKENDS = ("torch", "cupy")
#: The SpikingJelly versions this adapter is written and tested for.
SPIKINGJELLY_VERSIONS = ">=2.0,<2.1"

# SpikingJelly memory names in registration order (BaseNode registers "v" first).
_MEMORIES = ("v", "p1", "p2", "r", "o")


def erf_sigma(alpha: float) -> float:
    """The sigma of eq. 6 equal to SpikingJelly's ``surrogate.Erf(alpha)``.

    Erf's gradient alpha / sqrt(pi) * exp(-alpha^2 x^2) is eq. 6,
    exp(-x^2 / (2 sigma^2)) / (sqrt(2 pi) sigma), for sigma = 1 / (sqrt(2) alpha).
    """
    if isinstance(alpha, Tensor):
        alpha = alpha.item()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < math.inf:
        raise ValueError(f"IIRNode: surrogate.Erf needs alpha > 0, got {alpha!r}")
    return 1.0 / (math.sqrt(2.0) * float(alpha))


def _resolve_surrogate(surrogate_function, sigma: Optional[float]) -> tuple[float, Optional[Callable]]:
    """(sigma of eq. 6, None) for the fused path, or (default sigma, function) for the
    per-step path with another surrogate."""
    if surrogate_function is None:
        return (IIRParams.sigma if sigma is None else sigma), None
    if not callable(surrogate_function):
        raise TypeError(
            f"IIRNode: surrogate_function must be callable, got {type(surrogate_function).__name__}"
        )
    name = type(surrogate_function).__name__
    if getattr(surrogate_function, "spiking", True) is False:
        raise ValueError(
            f"IIRNode: surrogate_function={name}(spiking=False) cannot be honoured: the IIR neuron always "
            f"fires Heaviside spikes (eq. 1f); use {name}(spiking=True)"
        )
    if isinstance(surrogate_function, sj_surrogate.Erf):
        mapped = erf_sigma(surrogate_function.alpha)
        if sigma is not None and sigma != mapped:
            raise ValueError(
                f"IIRNode: sigma={sigma!r} disagrees with "
                f"surrogate_function=Erf(alpha={surrogate_function.alpha!r}), "
                f"which means sigma = 1 / (sqrt(2) alpha) = {mapped!r}; pass one of them"
            )
        return mapped, None
    if sigma is not None:
        raise ValueError(
            f"IIRNode: sigma={sigma!r} has no effect with surrogate_function={name}: sigma is the width of "
            f"eq. 6, which {name} replaces; pass one of them (surrogate.Erf(alpha) is eq. 6 with "
            f"sigma = 1 / (sqrt(2) alpha))"
        )
    return IIRParams.sigma, surrogate_function


class IIRNode(sj_neuron.BaseNode):
    """A layer of IIR LIF neurons (eq. 1a-1f, 5, 6) as a SpikingJelly 2.x node.

    ``params`` and the keyword arguments `hnn_bridge.params.NEURON_KEYS` are those of
    `hnn_bridge.IIRNeuron` (an `IIRParams` and overrides of its fields; ``sigma=None``
    means its default, 0.4), plus:

    Args:
        surrogate_function: None (eq. 6 with ``sigma``), ``surrogate.Erf(alpha)`` (eq. 6
            with sigma = 1 / (sqrt(2) alpha); fused path) or any other SpikingJelly
            surrogate (its gradient on V - V_th replaces eq. 6; per-step autograd path,
            see the module docstring). Fixed at construction.
        v_reset: must be None (SpikingJelly's soft reset); the IIR neuron resets through
            its reset filter R (eq. 1c). Anything else is a ValueError.
        step_mode: ``"m"`` (input ``[T, N, ...]``, the default) or ``"s"`` (input
            ``[N, ...]``, one time step per call).
        backend: multi-step implementation: ``"torch"`` (the fused autograd Function of
            the core; CPU and GPU) or ``"cupy"`` (CuPy kernels, float32 on CUDA; see
            `hnn_bridge.adapters.cupy_kernels`). Both give bit-identical spikes.
        store_v_seq: in multi-step mode keep the membrane potentials ``[T, N, ...]`` of
            the last call in ``self.v_seq`` (in single-step mode they accumulate until
            ``reset()``, as in SpikingJelly).
        post_filter_bias: the shape of a learnable bias (``self.bias``, zeros at first)
            added after the synapse filter, where Fang et al. add theirs: ``500`` for 500
            units, ``(C, 1, 1)`` for C channels. None (default): no bias of its own; the
            bias of a ``layer.Linear`` before it is part of the current and is filtered.

    State: the memories ``v`` (V[t-1]), ``p1`` (p[t-1]), ``p2`` (p[t-2]), ``r`` (R[t-1])
    and ``o`` (O[t-1]) persist across calls, in both step modes, until
    ``functional.reset_net`` (or ``reset()``); a second call continues where the first
    stopped. They start as the float 0.0 and take the input's shape on first use; an
    input of another shape starts from zero state again.
    """

    def __init__(
        self,
        params: Optional[IIRParams] = None,
        *,
        surrogate_function: Optional[Callable[[Tensor], Tensor]] = None,
        v_reset: Optional[float] = None,
        step_mode: str = "m",
        backend: str = "torch",
        store_v_seq: bool = False,
        post_filter_bias: Optional[Union[int, tuple[int, ...]]] = None,
        **overrides: Any,
    ) -> None:
        given = merge_settings("IIRNode", params, overrides)
        if v_reset is not None:
            raise ValueError(
                f"IIRNode: v_reset={v_reset!r} cannot be honoured: the IIR neuron resets through its reset "
                f"filter (R[t] = theta*R[t-1] + O[t-1], V[t] -= V_th*R[t], eq. 1c), never to a fixed value; "
                f"use v_reset=None, and reset_decay to shape the reset"
            )
        sigma, custom = _resolve_surrogate(surrogate_function, given.pop("sigma", None))
        params = IIRParams(**given, sigma=sigma)
        if backend not in BACKENDS:
            raise ValueError(
                f"IIRNode: backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}"
            )
        if backend == "cupy":
            from .cupy_kernels import require_cupy

            require_cupy()
            if custom is not None:
                warnings.warn(
                    f"IIRNode: surrogate_function={type(custom).__name__} runs the per-step PyTorch path; "
                    f"the CuPy kernels implement eq. 6 only (surrogate_function=None or surrogate.Erf)",
                    stacklevel=2,
                )
        super().__init__(
            v_threshold=float(params.v_threshold),
            v_reset=None,
            surrogate_function=surrogate_function,
            detach_reset=bool(params.detach_reset),
            step_mode=step_mode,
            store_v_seq=store_v_seq,
        )
        for name in _MEMORIES[1:]:
            self.register_memory(name, 0.0)
        self.params = params
        self.backend = backend
        if post_filter_bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = torch.nn.Parameter(torch.zeros(bias_shape(post_filter_bias)))
        # The surrogate module itself is self.surrogate_function (a submodule, as in SpikingJelly).
        self._per_step = custom is not None

    @property
    def path(self) -> str:
        """Which multi-step implementation runs: ``"fused"`` (torch), ``"cupy"`` or
        ``"per-step"`` (another surrogate than eq. 6)."""
        if self._per_step:
            return "per-step"
        return "cupy" if self.backend == "cupy" else "fused"

    @classmethod
    def from_params(cls, params: IIRParams, **kwargs: Any) -> "IIRNode":
        """An IIRNode with the settings of `params`; `kwargs` are step_mode, backend,
        store_v_seq (a ``surrogate_function`` other than Erf would conflict with
        ``params.sigma``). The same as ``IIRNode(params, **kwargs)``."""
        return cls(params, **kwargs)

    @property
    def _surrogate(self) -> Optional[Callable[[Tensor], Tensor]]:
        """The surrogate of the per-step path, or None for eq. 6."""
        return self.surrogate_function if self._per_step else None

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
        dtype = state_dtype(x.dtype)  # float32 for half-precision (autocast) input
        if all(isinstance(s, Tensor) and s.shape == x.shape for s in states):
            return tuple(
                s if s.dtype == dtype and s.device == x.device else s.to(dtype=dtype, device=x.device)
                for s in states
            )
        # Unset (after reset) or shaped for another input: start from zero state.
        if step_mode == "m":
            return (None,) * len(states)
        zero = torch.zeros_like(x, dtype=dtype)
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
        o_new, st = iir_step(
            inputs[0], IIRState(p1, p2, r, v, o), self.params, surrogate=self._surrogate, bias=self.bias
        )
        return (o_new,), (st.v, st.p1, st.p2, st.r, st.o)

    def _multistep(self, x_seq: Tensor, states) -> tuple[Tensor, Tensor, IIRState]:
        v, p1, p2, r, o = states
        start = None if all(s is None for s in states) else IIRState(p1, p2, r, v, o)
        if self._per_step:
            return iir_multistep_reference(
                x_seq, self.params, start, surrogate=self.surrogate_function, bias=self.bias
            )
        if self.backend == "cupy":
            from .cupy_kernels import cupy_multistep

            if self.bias is not None:
                return with_post_filter_bias(x_seq, self.params, start, self.bias, cupy_multistep)
            return cupy_multistep(x_seq, self.params, start)
        return iir_multistep(x_seq, self.params, start, bias=self.bias)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        spikes, _, st = self._multistep(inputs[0], states)
        return (spikes,), (st.v, st.p1, st.p2, st.r, st.o)

    def multi_step_forward(self, x_seq: Tensor, *args, **kwargs):
        if not torch.is_floating_point(x_seq):
            raise TypeError(f"IIRNode expects a floating-point tensor [T, N, ...], got dtype {x_seq.dtype}")
        if x_seq.dim() < 1 or x_seq.shape[0] < 1:
            raise ValueError(
                "IIRNode: expected a time-first tensor [T, N, ...] with T >= 1, got shape "
                f"{tuple(x_seq.shape)}"
            )
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
        changed = [f"{k}={v!r}" for k, v in self.params.overrides().items()]
        custom = [f"surrogate_function={self.surrogate_function!r}"] if self._per_step else []
        custom += [f"post_filter_bias={tuple(self.bias.shape)}"] if self.bias is not None else []
        return ", ".join(changed + custom + [f"step_mode={self.step_mode!r}", f"backend={self.backend!r}"])

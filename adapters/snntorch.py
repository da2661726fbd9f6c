"""The IIR LIF neuron as a native snnTorch neuron (`IIRLeaky`) and the erfc surrogate.

Supported snnTorch: ``>=1.0,<1.1``.

`IIRLeaky` runs one time step per call, like `snntorch.Leaky`, with the arithmetic of the
torch core (`hnn_bridge.functional.iir_step`), so a loop over T gives exactly the spikes
of `hnn_bridge.IIRNeuron` and of the SpikingJelly node. It fires at ``V >= V_th``
(eq. 1f; snnTorch's own neurons fire at ``V > V_th``).

Two ways to use it, as with snnTorch's neurons:

- explicit state: ``state = lif.init_iirleaky()`` then ``spk, state = lif(x, state)`` per
  step; ``state`` is an `IIRState` ``(p1, p2, r, v, o)`` = (p[t-1], p[t-2], R[t-1],
  V[t-1], O[t-1]) and ``state.v`` is the membrane potential (snnTorch's ``mem``);
- hidden state: ``IIRLeaky(init_hidden=True)`` inside ``nn.Sequential``; ``forward(x)``
  returns the spikes (``(spk, mem)`` with ``output=True``).

Resetting: `snntorch.utils.reset(net)` and ``snntorch.Leaky.reset_hidden()`` /
``detach_hidden()`` (which `IIRLeaky` inherits, being a `snntorch.Leaky`) clear or
detach all five states. Like every snnTorch reset helper they act on *every* instance of
the class in the process, and `snntorch.utils.reset` only looks at the direct children of
``net``. `reset` and `detach` of this module act on the neurons inside one module only,
at any depth.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Optional

import snntorch
import torch
from torch import Tensor, nn

from hnn_bridge.functional.iir import IIRState, iir_step
from hnn_bridge.functional.surrogate import surrogate_grad
from hnn_bridge.params import IIRParams

__all__ = ["IIRLeaky", "ErfcSurrogate", "erfc_surrogate", "reset", "detach", "SNNTORCH_VERSIONS"]

#: The snnTorch versions this adapter is written and tested for.
SNNTORCH_VERSIONS = ">=1.0,<1.1"

_STATE_BUFFERS = ("p1", "p2", "r", "mem", "o")
# snnTorch registers these constants as buffers; they derive from the constructor's
# arguments, so IIRLeaky keeps them out of the state_dict (a model then has the same keys
# on every backend).
_CONSTANT_BUFFERS = ("beta", "threshold", "graded_spikes_factor", "reset_mechanism_val")


class ErfcSurrogate(torch.autograd.Function):
    """snnTorch-style spike function with the erfc-derived surrogate of eq. 5-6.

    **Forward:** Heaviside of the shifted membrane ``U - U_thr`` with U(0) = 1, i.e. a
    spike when ``U >= U_thr`` (eq. 1f). **Backward:** the Gaussian density of eq. 6,
    ``exp(-(U - U_thr)^2 / (2 sigma^2)) / (sqrt(2 pi) sigma)``, the derivative of the
    firing probability ``erfc((U_thr - U) / (sqrt(2) sigma)) / 2`` of a noisy LIF neuron.
    """

    @staticmethod
    def forward(ctx, input_: Tensor, sigma: float) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(input_)
        ctx.sigma = sigma
        return (input_ >= 0).to(input_.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        (input_,) = ctx.saved_tensors
        return grad_output * surrogate_grad(input_, 0.0, ctx.sigma), None


def erfc_surrogate(sigma: float = 0.4):
    """The erfc surrogate (eq. 5-6) enclosed with its width sigma, in the style of
    `snntorch.surrogate` (``spike_grad=erfc_surrogate(0.4)`` works on any snnTorch neuron,
    e.g. ``snntorch.Leaky(beta=0.9, spike_grad=erfc_surrogate())``)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"erfc_surrogate: sigma must be a number > 0, got {sigma!r}")
    sigma = float(sigma)

    def inner(x: Tensor) -> Tensor:
        return ErfcSurrogate.apply(x, sigma)

    inner.sigma = sigma  # type: ignore[attr-defined]
    return inner


def _fit(state: IIRState, x: Tensor) -> IIRState:
    """`state` on x's device/dtype, or zeros when any entry is shaped for another input."""
    if all(isinstance(s, Tensor) and s.shape == x.shape for s in state):
        if all(s.dtype == x.dtype and s.device == x.device for s in state):
            return state
        return IIRState(*(s.to(dtype=x.dtype, device=x.device) for s in state))
    return IIRState.zeros_like(x)


class IIRLeaky(snntorch.Leaky):
    """A layer of IIR LIF neurons (eq. 1a-1f, 5, 6) as an snnTorch neuron, one step per call.

    Keyword arguments are those of `hnn_bridge.IIRNeuron` (see `IIRParams`), plus
    snnTorch's ``init_hidden`` and ``output``.

    ``forward(input_, state=None)``:

    - ``init_hidden=False`` returns ``(spk, state)`` with ``state`` an `IIRState`
      ``(p1, p2, r, v, o)``; pass it back on the next step. ``state=None`` continues from
      the state the module holds (as ``snntorch.Leaky`` does with ``mem=None``); a state
      shaped for another input (e.g. the empty one of `init_iirleaky`) means zeros.
    - ``init_hidden=True`` keeps the state in the module and returns ``spk``, or
      ``(spk, mem)`` with ``output=True``; passing ``state`` is then a TypeError.

    The state lives in the buffers ``p1``, ``p2``, ``r``, ``mem`` (V) and ``o``, not saved
    in the ``state_dict``. Assigning ``mem`` from outside (as snnTorch's ``reset_hidden``,
    ``reset_mem`` and ``init_leaky`` do) starts the neuron afresh at that membrane
    potential: p1, p2, r and o become zero on the next step. Detaching ``mem`` in place (as
    ``detach_hidden`` does) detaches the other four states on the next step too. The
    spike function is `hnn_bridge.functional.surrogate.spike`, the same Heaviside and
    eq. 6 surrogate as `erfc_surrogate`, which is set as ``spike_grad``.
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
        init_hidden: bool = False,
        output: bool = False,
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
        super().__init__(
            beta=params.lam,
            threshold=params.v_threshold,
            spike_grad=erfc_surrogate(params.sigma),
            init_hidden=init_hidden,
            output=output,
            reset_mechanism="subtract",
        )
        self.params = params
        for name in _CONSTANT_BUFFERS:
            if name in self._buffers:
                self._non_persistent_buffers_set.add(name)

    @classmethod
    def from_params(cls, params: IIRParams, **kwargs) -> "IIRLeaky":
        """An IIRLeaky with the settings of `params`; `kwargs` are init_hidden, output."""
        return cls(**params.as_dict(), **kwargs)

    # -- state ----------------------------------------------------------------------------

    def _init_mem(self) -> None:  # called by snntorch.Leaky.__init__
        empty = torch.zeros(0)
        for name in _STATE_BUFFERS:
            self.register_buffer(name, empty, False)
        self.__dict__["_mem_written"] = empty

    def _store(self, state: IIRState) -> None:
        b = self._buffers
        b["p1"], b["p2"], b["r"], b["mem"], b["o"] = state.p1, state.p2, state.r, state.v, state.o
        self.__dict__["_mem_written"] = state.v

    @property
    def v(self) -> Tensor:
        """The membrane potential V (snnTorch's ``mem``)."""
        return self.mem

    @property
    def state(self) -> IIRState:
        """The state the module holds, as an `IIRState` (p1, p2, r, v, o)."""
        self._sync()
        b = self._buffers
        return IIRState(b["p1"], b["p2"], b["r"], b["mem"], b["o"])

    def _sync(self) -> None:
        """Apply what snnTorch's helpers did to ``mem`` (replace / detach_) to all states."""
        b = self._buffers
        mem = b["mem"]
        if mem is not self._mem_written:
            zero = torch.zeros_like(mem)
            b["p1"] = b["p2"] = b["r"] = b["o"] = zero
            self.__dict__["_mem_written"] = mem
        elif not mem.requires_grad and any(b[n].requires_grad for n in ("p1", "p2", "r", "o")):
            for n in ("p1", "p2", "r", "o"):
                b[n] = b[n].detach()

    def reset_mem(self):
        """Set all five states to zero (the shape of the last input); returns ``mem``."""
        zero = torch.zeros_like(self._buffers["mem"])
        self._store(IIRState(zero, zero, zero, zero, zero))
        return zero

    def init_iirleaky(self) -> IIRState:
        """Reset the held state and return a zero `IIRState` to start an explicit-state loop
        (the IIR counterpart of ``snntorch.Leaky.init_leaky``)."""
        self.reset_mem()
        return self.state

    def init_leaky(self):
        """snnTorch's name: resets all five states and returns ``mem`` (zeros)."""
        return self.reset_mem()

    def detach_states(self) -> None:
        """Detach all five states from the graph (out of place)."""
        b = self._buffers
        for n in _STATE_BUFFERS:
            b[n] = b[n].detach()
        self.__dict__["_mem_written"] = b["mem"]

    @classmethod
    def reset_hidden(cls) -> None:
        """Zero the states of every IIRLeaky instance (snnTorch semantics: process-wide)."""
        for inst in cls.instances:
            if isinstance(inst, IIRLeaky):
                inst.reset_mem()

    @classmethod
    def detach_hidden(cls) -> None:
        """Detach the states of every IIRLeaky instance (snnTorch semantics: process-wide)."""
        for inst in cls.instances:
            if isinstance(inst, IIRLeaky):
                inst.detach_states()

    def _apply(self, fn, *args, **kwargs):
        held = self._buffers["mem"] is self._mem_written
        out = super()._apply(fn, *args, **kwargs)
        if held:  # .to()/.cuda()/.half() replaced the buffers: not an outside reset
            self.__dict__["_mem_written"] = self._buffers["mem"]
        return out

    # -- forward --------------------------------------------------------------------------

    def forward(self, input_: Tensor, state: Optional[IIRState] = None):
        if state is not None:
            if self.init_hidden:
                raise TypeError("`state` should not be passed as an argument while `init_hidden=True`")
            start = _fit(IIRState(*state), input_)
        else:
            self._sync()
            b = self._buffers
            start = _fit(IIRState(b["p1"], b["p2"], b["r"], b["mem"], b["o"]), input_)
        spk, new = iir_step(input_, start, self.params)
        if new.v is input_:  # degenerate settings (V = x): keep snnTorch's mem.detach_() off the caller's tensor
            new = new._replace(v=new.v.clone())
        self._store(new)
        if self.init_hidden:
            return (spk, new.v) if self.output else spk
        return spk, new

    def extra_repr(self) -> str:
        defaults = IIRParams()
        changed = [
            f"{f.name}={getattr(self.params, f.name)!r}"
            for f in fields(IIRParams)
            if getattr(self.params, f.name) != getattr(defaults, f.name)
        ]
        flags = [f"{n}=True" for n in ("init_hidden", "output") if getattr(self, n)]
        return ", ".join(changed + flags)


def reset(module: nn.Module) -> nn.Module:
    """Zero the hidden states of the snnTorch neurons inside `module` only (any depth).

    IIRLeaky clears all five states; other snnTorch neurons get their ``reset_mem()``.
    Unlike `snntorch.utils.reset`, neurons of other models are left alone.
    """
    for m in module.modules():
        if isinstance(m, IIRLeaky):
            m.reset_mem()
        elif isinstance(m, snntorch.SpikingNeuron) and callable(getattr(m, "reset_mem", None)):
            m.reset_mem()
    return module


def detach(module: nn.Module) -> nn.Module:
    """Detach the hidden states of the snnTorch neurons inside `module` only (any depth),
    e.g. between chunks of truncated BPTT."""
    for m in module.modules():
        if isinstance(m, IIRLeaky):
            m.detach_states()
        elif isinstance(m, snntorch.SpikingNeuron):
            for name, buf in list(m._buffers.items()):
                if buf is not None and buf.requires_grad:
                    m._buffers[name] = buf.detach()
    return module

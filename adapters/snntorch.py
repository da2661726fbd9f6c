"""The IIR LIF neuron as a native snnTorch neuron (`IIRLeaky`) and the erfc surrogate.

Supported snnTorch: ``>=1.0,<1.1``.

`IIRLeaky` runs one time step per call, like `snntorch.Leaky`, with the arithmetic of the
torch core (`hnn_bridge.functional.iir_step`), so a loop over T gives exactly the spikes
of `hnn_bridge.IIRNeuron` and of the SpikingJelly node. It fires at ``V >= V_th``
(eq. 1f; snnTorch's own neurons fire at ``V > V_th``).

It is a drop-in for ``snntorch.Leaky``: swap the constructor and snnTorch code runs as
it is. Three ways to use it:

- snnTorch's explicit state: ``mem = lif.init_leaky()`` then ``spk, mem = lif(cur, mem)``
  per step, ``mem`` a tensor (V) that stacks. The other four states (p[t-1], p[t-2],
  R[t-1], O[t-1]) are held in the module and continue as long as ``mem`` is the tensor
  the module returned (or a detached view of it, e.g. ``mem.detach()``); any other tensor
  is a new starting membrane potential, with the other four states zero;
- the full state: ``state = lif.init_iirleaky()`` then ``spk, state = lif(x, state)``;
  ``state`` is an `IIRState` ``(p1, p2, r, v, o)`` = (p[t-1], p[t-2], R[t-1], V[t-1],
  O[t-1]) and ``state.v`` is the membrane potential (snnTorch's ``mem``);
- hidden state: ``IIRLeaky(init_hidden=True)`` inside ``nn.Sequential``; ``forward(x)``
  returns the spikes (``(spk, mem)`` with ``output=True``).

snnTorch's constructor arguments, where they mean something here: ``beta`` (the membrane
decay lambda, eq. 1a), ``threshold`` (V_th), ``spike_grad`` (any snnTorch surrogate: its
gradient on V - V_th replaces eq. 6; the spikes stay the Heaviside of eq. 1f; our
`erfc_surrogate` is eq. 6 itself), ``init_hidden``, ``output``. The others are accepted
at their defaults only (``reset_mechanism="subtract"``, ``learn_beta=False``, ...); any
value the IIR neuron cannot honour is a ValueError naming the argument and what to use
instead. ``IIRLeaky(beta=b)`` keeps the IIR synapse and reset filters; with
``synapse="none", reset_decay=0.0`` it follows snnTorch's ``Leaky(beta=b)`` equations
(still firing at ``V >= V_th``).

Resetting: `snntorch.utils.reset(net)` and ``snntorch.Leaky.reset_hidden()`` /
``detach_hidden()`` (which `IIRLeaky` inherits, being a `snntorch.Leaky`) clear or
detach all five states; so do ``lif.init_leaky()`` and ``lif.reset_mem()``. Like every
snnTorch reset helper they act on *every* instance of the class in the process, and
`snntorch.utils.reset` only looks at the direct children of ``net``. `reset` and `detach`
of this module act on the neurons inside one module only, at any depth.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Union

import snntorch
import torch
from torch import Tensor, nn

from hnn_bridge.functional import ErfcSpike
from hnn_bridge.functional.iir import IIRState, iir_step, state_dtype
from hnn_bridge.neuron import bias_shape
from hnn_bridge.params import IIRParams, merge_settings

__all__ = ["IIRLeaky", "erfc_surrogate", "reset", "detach", "SNNTORCH_VERSIONS"]

#: The snnTorch versions this adapter is written and tested for.
SNNTORCH_VERSIONS = ">=1.0,<1.1"

_STATE_BUFFERS = ("p1", "p2", "r", "mem", "o")
# snnTorch registers these constants as buffers; they derive from the constructor's
# arguments, so IIRLeaky keeps them out of the state_dict (a model then has the same keys
# on every backend).
_CONSTANT_BUFFERS = ("beta", "threshold", "graded_spikes_factor", "reset_mechanism_val")


class _Eq6Surrogate:
    """``spike_grad`` of eq. 6 with width ``sigma``: the core's `ErfcSpike` at V_th = 0 (snnTorch
    passes the shifted membrane U - U_thr): a spike where ``U >= U_thr`` (eq. 1f), and the
    Gaussian density of eq. 6 as its gradient.

    A module-level class rather than snnTorch's closure, so that a model holding it can
    be pickled whole (``torch.save(net)``) and deep-copied."""

    is_eq6 = True  # IIRLeaky(spike_grad=...) reads sigma from it
    __name__ = "erfc_surrogate"

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def __call__(self, x: Tensor) -> Tensor:
        return ErfcSpike.apply(x, 0.0, self.sigma)

    def __repr__(self) -> str:
        return f"erfc_surrogate(sigma={self.sigma!r})"


def erfc_surrogate(sigma: float = IIRParams.sigma) -> _Eq6Surrogate:
    """The erfc surrogate (eq. 5-6) with its width sigma, in the style of
    `snntorch.surrogate` (``spike_grad=erfc_surrogate(0.4)`` works on any snnTorch neuron,
    e.g. ``snntorch.Leaky(beta=0.9, spike_grad=erfc_surrogate())``)."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"erfc_surrogate: sigma must be a number > 0, got {sigma!r}")
    return _Eq6Surrogate(float(sigma))


def _reject(name: str, value: Any, why: str, instead: str) -> ValueError:
    return ValueError(f"IIRLeaky: {name}={value!r} cannot be honoured: {why}; use {instead}")


# snnTorch arguments accepted at their defaults only: name -> (default, why, instead).
_FIXED = {
    "surrogate_disable": (
        False,
        "the spike function always carries a surrogate gradient",
        "surrogate_disable=False (choose the gradient with spike_grad; run inference under torch.no_grad())",
    ),
    "inhibition": (
        False,
        "the IIR neuron has no lateral inhibition",
        "inhibition=False and apply winner-take-all to the spikes after the layer",
    ),
    "learn_beta": (
        False,
        "the membrane decay is a constant of the IIR filter (eq. 1a)",
        "learn_beta=False with beta (or membrane_decay) a fixed number",
    ),
    "learn_threshold": (
        False,
        "the threshold V_th is a constant of the IIR neuron (eq. 1a, 1e)",
        "learn_threshold=False with threshold (or v_threshold) a fixed number",
    ),
    "state_quant": (
        False,
        "the IIR states are not quantized",
        "state_quant=False, and quantize the layer before the neuron (its weights or output) instead",
    ),
    "graded_spikes_factor": (
        1.0,
        "the IIR neuron fires spikes of 1 (eq. 1f)",
        "graded_spikes_factor=1.0 and scale the spikes after the layer",
    ),
    "learn_graded_spikes_factor": (
        False,
        "the IIR neuron fires spikes of 1 (eq. 1f)",
        "learn_graded_spikes_factor=False and scale the spikes after the layer with a parameter",
    ),
    "reset_delay": (
        True,
        "the IIR reset acts from the next step on (R[t] = theta*R[t-1] + O[t-1], eq. 1c)",
        "reset_delay=True (the default)",
    ),
}


def _is_default(value: Any, default: Any) -> bool:
    if isinstance(value, Tensor):
        return value.numel() == 1 and value.item() == default
    return isinstance(value, (bool, int, float)) and value == default


def _check_fixed(**given: Any) -> None:
    """Raise the ValueError of `_FIXED` for the first argument not at its default."""
    for name, value in given.items():
        default, why, instead = _FIXED[name]
        if not _is_default(value, default):
            raise _reject(name, value, why, instead)


def _number(name: str, value: Union[float, Tensor]) -> float:
    """A Python float from a number or a one-element tensor (snnTorch allows tensors)."""
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"IIRLeaky: {name} must be one number, got a tensor of shape {tuple(value.shape)}: the IIR "
                f"neuron has one {name} per layer; use a float"
            )
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"IIRLeaky: {name} must be a finite number, got {value!r}")
    return float(value)


def _alias(snn_name: str, snn_value: Any, iir_name: str, iir_value: Any) -> Any:
    """The one of snnTorch's name and ours that is given (None = not given)."""
    if snn_value is None:
        return iir_value
    value = _number(snn_name, snn_value)
    if iir_value is not None and iir_value != value:
        raise ValueError(
            f"IIRLeaky: {snn_name}={value!r} and {iir_name}={iir_value!r} name the same setting; pass "
            "one of them"
        )
    return value


def _resolve_spike_grad(
    spike_grad: Optional[Callable], sigma: Optional[float]
) -> tuple[float, Optional[Callable]]:
    """(sigma of eq. 6, None) or (default sigma, another surrogate for `spike_with`)."""
    if spike_grad is None:
        return (IIRParams.sigma if sigma is None else sigma), None
    if not callable(spike_grad):
        raise TypeError(f"IIRLeaky: spike_grad must be callable, got {type(spike_grad).__name__}")
    if getattr(spike_grad, "is_eq6", False):
        if sigma is not None and sigma != spike_grad.sigma:
            raise ValueError(
                f"IIRLeaky: sigma={sigma!r} disagrees with spike_grad=erfc_surrogate({spike_grad.sigma!r}); "
                f"pass one of them"
            )
        return spike_grad.sigma, None
    if sigma is not None:
        raise ValueError(
            f"IIRLeaky: sigma={sigma!r} has no effect with "
            f"spike_grad={getattr(spike_grad, '__name__', spike_grad)!r}: "
            f"sigma is the width of eq. 6, which spike_grad replaces; pass one of them "
            f"(spike_grad=erfc_surrogate(sigma) is eq. 6)"
        )
    return IIRParams.sigma, spike_grad


def _fit(state: IIRState, x: Tensor) -> IIRState:
    """`state` on x's device in the neuron's `state_dtype` (float32 for half-precision
    input), or zeros when any entry is shaped for another input."""
    if all(isinstance(s, Tensor) and s.shape == x.shape for s in state):
        dtype = state_dtype(x.dtype)
        if all(s.dtype == dtype and s.device == x.device for s in state):
            return state
        return IIRState(*(s.to(dtype=dtype, device=x.device) for s in state))
    return IIRState.zeros_like(x)


class IIRLeaky(snntorch.Leaky):
    """A layer of IIR LIF neurons (eq. 1a-1f, 5, 6) as an snnTorch neuron, one step per call.

    ``params`` (keyword only: snnTorch's first positional argument is ``beta``) and the
    keyword arguments `hnn_bridge.params.NEURON_KEYS` are those of `hnn_bridge.IIRNeuron`
    (an `IIRParams` and overrides of its fields; ``v_threshold`` and ``sigma`` None mean
    their defaults, 1.0 and 0.4), plus snnTorch's ``Leaky`` arguments:

    Args:
        beta: the membrane decay lambda (eq. 1a), a number in [0, 1] (or a one-element
            tensor); the same as ``membrane_decay`` (pass one of them).
        threshold: V_th; the same as ``v_threshold``.
        spike_grad: an snnTorch surrogate (``snntorch.surrogate.atan()``, ...): its gradient
            on V - V_th replaces eq. 6 (per-step autograd, as always here); the forward stays
            the Heaviside of eq. 1f with U(0) = 1. ``erfc_surrogate(sigma)`` (or None) is
            eq. 6 itself.
        init_hidden, output: as in snnTorch.
        post_filter_bias: the shape of a learnable bias (``self.bias``, zeros at first)
            added after the synapse filter, where Fang et al. add theirs: ``500`` for 500
            units, ``(C, 1, 1)`` for C channels. None (default): no bias of its own; the
            bias of an ``nn.Linear`` before it is part of the current and is filtered.
        reset_mechanism: ``"subtract"`` only (the IIR reset filter subtracts V_th*R[t]).
        surrogate_disable, inhibition, learn_beta, learn_threshold, state_quant,
        graded_spikes_factor, learn_graded_spikes_factor, reset_delay: accepted at their
            snnTorch defaults only; anything else is a ValueError that says what to use.

    ``forward(input_, state=None)``; with ``init_hidden=False`` the second argument and the
    second result are of the same kind:

    - a tensor ``mem`` (snnTorch's ``spk, mem = lif(cur, mem)``, ``mem`` from
      ``init_leaky()`` or the last call) returns ``(spk, mem)``; the other four states are
      held in the module (see the module docstring);
    - an `IIRState` ``(p1, p2, r, v, o)`` returns ``(spk, state)``; a state shaped for
      another input (e.g. the empty one of `init_iirleaky`) means zeros;
    - None continues from the state the module holds and returns ``(spk, mem)``, as
      ``snntorch.Leaky`` does.

    With ``init_hidden=True`` the state stays in the module and forward returns ``spk``,
    or ``(spk, mem)`` with ``output=True``; passing a state is then a TypeError.

    The state lives in the buffers ``p1``, ``p2``, ``r``, ``mem`` (V) and ``o``, not saved
    in the ``state_dict``. Assigning ``mem`` from outside (as snnTorch's ``reset_hidden``
    does) starts the neuron afresh at that membrane potential: p1, p2, r and o become
    zero on the next step. Detaching ``mem`` in place (as ``detach_hidden`` does) detaches
    the other four states on the next step too.
    """

    def __init__(
        self,
        beta: Optional[Union[float, Tensor]] = None,
        *,
        threshold: Optional[Union[float, Tensor]] = None,
        spike_grad: Optional[Callable[[Tensor], Tensor]] = None,
        surrogate_disable: bool = False,
        init_hidden: bool = False,
        inhibition: bool = False,
        learn_beta: bool = False,
        learn_threshold: bool = False,
        reset_mechanism: str = "subtract",
        state_quant: Any = False,
        output: bool = False,
        graded_spikes_factor: Union[float, Tensor] = 1.0,
        learn_graded_spikes_factor: bool = False,
        reset_delay: bool = True,
        params: Optional[IIRParams] = None,
        post_filter_bias: Optional[Union[int, tuple[int, ...]]] = None,
        **overrides: Any,
    ) -> None:
        given = merge_settings("IIRLeaky", params, overrides)
        _check_fixed(
            surrogate_disable=surrogate_disable,
            inhibition=inhibition,
            learn_beta=learn_beta,
            learn_threshold=learn_threshold,
            state_quant=state_quant,
            graded_spikes_factor=graded_spikes_factor,
            learn_graded_spikes_factor=learn_graded_spikes_factor,
            reset_delay=reset_delay,
        )
        if reset_mechanism != "subtract":
            raise _reject(
                "reset_mechanism",
                reset_mechanism,
                "the IIR neuron resets by subtraction through its reset filter "
                "(R[t] = theta*R[t-1] + O[t-1], V[t] -= V_th*R[t], eq. 1c)",
                "reset_mechanism='subtract' (the default), with reset_decay=0.0 for snnTorch's one-step "
                "subtraction",
            )
        if beta is not None:
            beta = _number("beta", beta)
            if not 0.0 <= beta <= 1.0:
                raise ValueError(
                    f"IIRLeaky: beta (the membrane decay, eq. 1a) must be in [0, 1], got {beta!r}"
                )
        given["membrane_decay"] = _alias("beta", beta, "membrane_decay", given.get("membrane_decay"))
        v_threshold = _alias("threshold", threshold, "v_threshold", given.pop("v_threshold", None))
        if v_threshold is not None:
            given["v_threshold"] = v_threshold
        sigma, custom = _resolve_spike_grad(spike_grad, given.pop("sigma", None))
        params = IIRParams(**given, sigma=sigma)
        super().__init__(
            beta=params.lam,
            threshold=params.v_threshold,
            spike_grad=erfc_surrogate(params.sigma) if custom is None else custom,
            init_hidden=init_hidden,
            output=output,
            reset_mechanism="subtract",
        )
        self.params = params
        #: The surrogate replacing eq. 6 (an snnTorch ``spike_grad``), or None.
        self.custom_grad: Optional[Callable[[Tensor], Tensor]] = custom
        for name in _CONSTANT_BUFFERS:
            if name in self._buffers:
                self._non_persistent_buffers_set.add(name)
        if post_filter_bias is None:
            self.register_parameter("bias", None)
        else:
            self.bias = nn.Parameter(torch.zeros(bias_shape(post_filter_bias)))

    @classmethod
    def from_params(cls, params: IIRParams, **kwargs: Any) -> "IIRLeaky":
        """An IIRLeaky with the settings of `params`; `kwargs` are init_hidden, output. The
        same as ``IIRLeaky(params=params, **kwargs)``."""
        return cls(params=params, **kwargs)

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

    def __getstate__(self):
        """For ``copy.deepcopy`` and pickling (``torch.save(net)``): the held states as
        snnTorch's helpers left them (`_sync`) and without this step's graph."""
        self._sync()
        state = dict(self.__dict__)
        state["_buffers"] = {k: v.detach() if isinstance(v, Tensor) else v for k, v in self._buffers.items()}
        state["_mem_written"] = state["_buffers"]["mem"]
        return state

    def _apply(self, fn, *args, **kwargs):
        held = self._buffers["mem"] is self._mem_written
        out = super()._apply(fn, *args, **kwargs)
        if held:  # .to()/.cuda()/.half() replaced the buffers: not an outside reset
            self.__dict__["_mem_written"] = self._buffers["mem"]
        return out

    # -- forward --------------------------------------------------------------------------

    def _start_from_mem(self, mem: Tensor) -> IIRState:
        """The state before a step given snnTorch's ``mem``: the held p1, p2, r, o when
        ``mem`` is the held membrane (or a view of it, e.g. ``mem.detach()``; detached
        ones detach them too), else zeros beside ``mem``."""
        b = self._buffers
        held = b["mem"]
        same = mem is held or (
            mem.shape == held.shape
            and mem.dtype == held.dtype
            and mem.device == held.device
            and mem.stride() == held.stride()
            and mem.data_ptr() == held.data_ptr()
        )
        if not same:
            zero = torch.zeros_like(mem)
            return IIRState(zero, zero, zero, mem, zero)
        p1, p2, r, o = (b[n] for n in ("p1", "p2", "r", "o"))
        if not mem.requires_grad:
            p1, p2, r, o = p1.detach(), p2.detach(), r.detach(), o.detach()
        return IIRState(p1, p2, r, mem, o)

    def forward(self, input_: Tensor, state: Optional[Union[Tensor, IIRState]] = None):
        if state is not None and self.init_hidden:
            raise TypeError("`mem` (or `state`) should not be passed as an argument while `init_hidden=True`")
        full_state = state is not None and not isinstance(state, Tensor)
        if full_state:
            start = IIRState(*state)
        elif state is not None:
            start = self._start_from_mem(state)
        else:
            self._sync()
            b = self._buffers
            start = IIRState(b["p1"], b["p2"], b["r"], b["mem"], b["o"])
        spk, new = iir_step(
            input_, _fit(start, input_), self.params, surrogate=self.custom_grad, bias=self.bias
        )
        if (
            new.v is input_
        ):  # degenerate settings (V = x): keep snnTorch's mem.detach_() off the caller's tensor
            new = new._replace(v=new.v.clone())
        self._store(new)
        if self.init_hidden:
            return (spk, new.v) if self.output else spk
        return (spk, new) if full_state else (spk, new.v)

    def extra_repr(self) -> str:
        changed = [f"{k}={v!r}" for k, v in self.params.overrides().items()]
        flags = [f"{n}=True" for n in ("init_hidden", "output") if getattr(self, n)]
        grad = (
            [f"spike_grad={getattr(self.custom_grad, '__name__', self.custom_grad)!r}"]
            if self.custom_grad
            else []
        )
        bias = [f"post_filter_bias={tuple(self.bias.shape)}"] if self.bias is not None else []
        return ", ".join(changed + bias + grad + flags)


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

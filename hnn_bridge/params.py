"""Parameters of the IIR LIF neuron (paper eq. 1a-1f, 5, 6; Fang et al., 2020).

`IIRParams` is the one place where the neuron's keyword arguments are validated and
turned into filter coefficients; the torch core, the SpikingJelly node, the snnTorch
neuron and the CuPy kernel all read their constants from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

SYNAPSES = ("dual_exp", "first_order", "none")


@dataclass(frozen=True)
class IIRParams:
    """Constants of one layer of IIR LIF neurons.

    Args:
        v_threshold: firing threshold V_th (eq. 1a, 1e).
        sigma: width of the erfc-derived surrogate gradient (eq. 5, 6).
        tau_m: membrane time constant, in time steps.
        tau_s: synaptic time constant, in time steps.
        membrane_decay: lambda of eq. 1a; ``None`` means e^(-1/tau_m).
        reset_decay: theta of eq. 1c; ``None`` means e^(-1/tau_m).
        synapse: the filter on the input current: ``"dual_exp"`` (second order,
            Fang et al.), ``"first_order"`` (exp(-1/tau_s)) or ``"none"``.
        detach_reset: stop the gradient through the reset path (eq. 1c).
    """

    v_threshold: float = 1.0
    sigma: float = 0.4
    tau_m: float = 4.0
    tau_s: float = 1.0
    membrane_decay: float | None = None
    reset_decay: float | None = None
    synapse: str = "dual_exp"
    detach_reset: bool = False

    def __post_init__(self) -> None:
        for name in ("v_threshold", "sigma", "tau_m", "tau_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"IIR neuron: {name} must be a finite number, got {value!r}")
        for name in ("sigma", "tau_m", "tau_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"IIR neuron: {name} must be > 0, got {getattr(self, name)!r}")
        for name in ("membrane_decay", "reset_decay"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0
            ):
                raise ValueError(
                    f"IIR neuron: {name} must be in [0, 1] or None (meaning e^(-1/tau_m)), got {value!r}"
                )
        if self.synapse not in SYNAPSES:
            raise ValueError(
                f"IIR neuron: synapse must be one of {', '.join(map(repr, SYNAPSES))}, got {self.synapse!r}"
            )
        if self.synapse == "dual_exp" and self.tau_m == self.tau_s:
            raise ValueError(
                "IIR neuron: the dual_exp synapse needs tau_m != tau_s (its gain "
                "e^(-1/tau_m) - e^(-1/tau_s) is zero otherwise)"
            )

    @classmethod
    def from_any(cls, value: "IIRParams | Mapping[str, Any] | None") -> "IIRParams":
        """Accept an `IIRParams`, a mapping of its keyword arguments, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            known = set(cls.__dataclass_fields__)
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(
                    f"IIR neuron: unknown setting(s) {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(sorted(known))}"
                )
            return cls(**value)
        raise TypeError(f"neuron settings must be IIRParams, a dict or None, got {type(value).__name__}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def overrides(self) -> dict[str, Any]:
        """The fields whose values differ from their defaults (what a neuron's repr shows)."""
        defaults = IIRParams()
        return {k: v for k, v in self.as_dict().items() if v != getattr(defaults, k)}

    @property
    def lam(self) -> float:
        """Membrane decay lambda (eq. 1a)."""
        return math.exp(-1.0 / self.tau_m) if self.membrane_decay is None else float(self.membrane_decay)

    @property
    def theta(self) -> float:
        """Reset-filter decay theta (eq. 1c)."""
        return math.exp(-1.0 / self.tau_m) if self.reset_decay is None else float(self.reset_decay)

    @property
    def synapse_coefficients(self) -> tuple[float, float, float]:
        """(a1, a2, b) of p[t] = a1*p[t-1] + a2*p[t-2] + b*x[t] for the chosen synapse."""
        if self.synapse == "none":
            return 0.0, 0.0, 1.0
        if self.synapse == "first_order":
            return math.exp(-1.0 / self.tau_s), 0.0, 1.0
        em, es = math.exp(-1.0 / self.tau_m), math.exp(-1.0 / self.tau_s)
        return em + es, -math.exp(-(self.tau_m + self.tau_s) / (self.tau_m * self.tau_s)), em - es


#: The neuron's keyword arguments: the fields of `IIRParams`, in order. Every neuron module
#: (`hnn_bridge.IIRNeuron`, the SpikingJelly and snnTorch adapters) takes these, and only
#: these, as overrides of an optional `IIRParams`.
NEURON_KEYS: tuple[str, ...] = tuple(f.name for f in fields(IIRParams))


def merge_settings(
    owner: str, params: IIRParams | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The neuron settings a module was given, as keyword arguments of `IIRParams`: every
    field of ``params`` (nothing when None), with ``overrides`` on top. The module decides
    what a missing key means (usually the field's default) and then builds `IIRParams`.

    A key of ``overrides`` that is not in `NEURON_KEYS` is a TypeError worded as Python
    words any unexpected keyword argument of ``owner``'s constructor.
    """
    for key in overrides:
        if key not in NEURON_KEYS:
            raise TypeError(f"{owner}.__init__() got an unexpected keyword argument {key!r}")
    base = {} if params is None else IIRParams.from_any(params).as_dict()
    return {**base, **overrides}

"""Experimental: the IIR LIF neuron as a SpikingJelly ``FlexSN`` (Triton kernels on CUDA).

`flexsn_iir_node` wraps the core's one-step arithmetic (`charge` + the erfc spike) as a
pure FlexSN core with five states (p1, p2, r, v, o). On CPU FlexSN loops over T in torch
and reproduces the reference bit for bit (tested). On CUDA SpikingJelly traces the core
into Triton forward/backward kernels; whether those kernels reproduce the reference
spikes exactly (Triton may contract multiply-adds into FMAs) has to be checked on a GPU,
which ``benchmarks/gpu_check.py`` does. Until that check passes this is *not* offered as
an `IIRNode` backend.
"""

from __future__ import annotations

from spikingjelly.activation_based.neuron.flexsn import FlexSN

from hnn_bridge.functional.iir import Coefficients, charge
from hnn_bridge.functional.surrogate import spike
from hnn_bridge.params import IIRParams

__all__ = ["flexsn_iir_node", "iir_flexsn_core"]


def iir_flexsn_core(params: IIRParams):
    """The pure one-step function ``core(x, p1, p2, r, v, o) -> (spike, p, p1, r, v, spike)``."""
    k = Coefficients.of(params)
    detach_reset = params.detach_reset

    def iir_core(x, p1, p2, r, v, o):
        o_prev = o.detach() if detach_reset else o
        p, r_new, v_new = charge(x, p1, p2, r, v, o_prev, k)
        s = spike(v_new, k.v_threshold, k.sigma)
        return s, p, p1, r_new, v_new, s

    return iir_core


def flexsn_iir_node(params: IIRParams | None = None, step_mode: str = "m") -> FlexSN:
    """A FlexSN node running the IIR neuron; states persist until ``functional.reset_net``."""
    return FlexSN(core=iir_flexsn_core(IIRParams.from_any(params)), num_states=5, step_mode=step_mode)

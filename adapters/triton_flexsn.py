"""Experimental: the IIR LIF neuron as a SpikingJelly ``FlexSN`` (Triton kernels on CUDA).

`flexsn_iir_node` wraps one step of the neuron (eq. 1d, 1c, 1a, then the erfc spike of
eq. 1f with the surrogate of eq. 6) as a pure FlexSN core with five states
(p1, p2, r, v, o). On CPU FlexSN loops over T in torch and reproduces the reference bit
for bit (tested). On CUDA SpikingJelly traces the core (``make_fx`` and AOT autograd, on
fake tensors) into Triton forward/backward kernels; whether those kernels reproduce the
reference spikes exactly (Triton may contract multiply-adds into FMAs) has to be checked
on a GPU, which ``tools/device/gpu_check.py`` does. Until that check passes this is *not*
offered as an `IIRNode` backend.

The core runs `hnn_bridge.functional.iir.traceable_charge`: `charge`'s arithmetic with
the coefficients as Python floats, since `charge`'s own multiplies take cached 0-dim CPU
tensors, which the fake-tensor tracer rejects (``Please convert all Tensors to
FakeTensors``). A Python float is rounded to the tensor's dtype as that tensor is, so the
products are the same (tested against `charge` bit for bit).
"""

from __future__ import annotations

from spikingjelly.activation_based.neuron.flexsn import FlexSN

from hnn_bridge.functional.iir import Coefficients, traceable_charge
from hnn_bridge.functional.surrogate import spike
from hnn_bridge.params import IIRParams

__all__ = ["flexsn_iir_node", "iir_flexsn_core", "traceable_charge"]


def iir_flexsn_core(params: IIRParams):
    """The pure one-step function ``core(x, p1, p2, r, v, o) -> (spike, p, p1, r, v, spike)``.

    It closes over floats only (FlexSN rejects a core that captures tensors)."""
    k = Coefficients.of(params)
    detach_reset = params.detach_reset

    def iir_core(x, p1, p2, r, v, o):
        o_prev = o.detach() if detach_reset else o
        p, r_new, v_new = traceable_charge(x, p1, p2, r, v, o_prev, k)
        s = spike(v_new, k.v_threshold, k.sigma)
        return s, p, p1, r_new, v_new, s

    return iir_core


def flexsn_iir_node(params: IIRParams | None = None, step_mode: str = "m") -> FlexSN:
    """A FlexSN node running the IIR neuron; states persist until ``functional.reset_net``."""
    return FlexSN(core=iir_flexsn_core(IIRParams.from_any(params)), num_states=5, step_mode=step_mode)

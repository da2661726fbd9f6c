"""Pure functions of the IIR LIF neuron (Fang et al., 2020; paper eq. 1, 5, 6).

The equations and their entry points; the fused executor that `iir_multistep` and
`iir_spikes` run (and its autograd Function `IIRMultiStep`, exported here too) lives in
`hnn_bridge.kernels`.
"""

from ..kernels.fused import IIRMultiStep
from .iir import (
    Coefficients,
    IIRState,
    charge,
    iir_multistep,
    iir_multistep_reference,
    iir_spikes,
    iir_step,
    post_filter_current,
    state_dtype,
    synapse_filter,
    with_post_filter_bias,
)
from .surrogate import ErfcSpike, firing_probability, heaviside, spike, spike_with, surrogate_grad

__all__ = [
    "Coefficients",
    "ErfcSpike",
    "IIRMultiStep",
    "IIRState",
    "charge",
    "firing_probability",
    "heaviside",
    "iir_multistep",
    "iir_multistep_reference",
    "iir_spikes",
    "iir_step",
    "post_filter_current",
    "spike",
    "spike_with",
    "state_dtype",
    "surrogate_grad",
    "synapse_filter",
    "with_post_filter_bias",
]

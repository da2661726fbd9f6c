"""Pure functions of the IIR LIF neuron (Fang et al., 2020; paper eq. 1, 5, 6)."""

from .iir import (
    Coefficients,
    IIRMultiStep,
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

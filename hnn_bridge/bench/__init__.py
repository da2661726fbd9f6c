"""Benchmarks of `hnn-bridge bench`: time and memory of our neuron, networks and a training
epoch next to SpikingJelly's stock LIFNode and snnTorch's stock Leaky (see `suites`, `epoch`
and `cnn`; `contenders` and `markdown` hold what they share)."""

from .epoch import epoch_suite
from .suites import network_suite, neuron_suite, render
from .timing import Stats, interleave, machine_info, peak_memory, saved_tensor_bytes, summarize

__all__ = [
    "Stats",
    "epoch_suite",
    "interleave",
    "machine_info",
    "network_suite",
    "neuron_suite",
    "peak_memory",
    "render",
    "saved_tensor_bytes",
    "summarize",
]

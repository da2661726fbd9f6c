"""hnn-bridge: hybrid ANN-SNN networks (Muramatsu & Yu, 2021) with the IIR LIF neuron
of Fang et al. (2020), for PyTorch, SpikingJelly and snnTorch.

The straight path: architecture string -> `parse_arch` -> `build` -> training -> report.
"""

from .backends import BACKENDS, copy_weights
from .builder import HybridNet, build
from .coders import DuplicateCoder, GaussianCoder, PoissonCoder, make_coder
from .errors import ArchError, ConfigError
from .neuron import IIRNeuron
from .notation import LayerSpec, parse_arch
from .params import IIRParams

__version__ = "0.1.0"

__all__ = [
    "ArchError",
    "BACKENDS",
    "ConfigError",
    "DuplicateCoder",
    "GaussianCoder",
    "HybridNet",
    "IIRNeuron",
    "IIRParams",
    "LayerSpec",
    "PoissonCoder",
    "__version__",
    "build",
    "copy_weights",
    "make_coder",
    "parse_arch",
]

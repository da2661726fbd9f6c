"""hnn-bridge: hybrid ANN-SNN networks (Muramatsu & Yu, 2021) with the IIR LIF neuron
of Fang et al. (2020), for PyTorch, SpikingJelly and snnTorch."""

from .neuron import IIRNeuron
from .params import IIRParams

__version__ = "0.1.0"

__all__ = ["IIRNeuron", "IIRParams", "__version__"]

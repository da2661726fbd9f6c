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
from .ops import count_ops
from .params import IIRParams

__version__ = "0.1.0"


def __getattr__(name: str):
    """`export_nir` / `import_nir` load on first use, so that `import hnn_bridge` works
    without the optional extra ``nir`` (they say how to install it when it is missing)."""
    if name == "export_nir":
        from .nir_export import export_nir

        return export_nir
    if name == "import_nir":
        from .nir_import import import_nir

        return import_nir
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "count_ops",
    "export_nir",
    "import_nir",
    "make_coder",
    "parse_arch",
]

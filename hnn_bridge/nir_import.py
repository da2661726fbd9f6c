"""`import_nir`: a NIR graph of the exact IIR subgraph (`hnn_bridge.nir_export`) back to
a spiking network on any of our backends, with the same spikes.

The importer reads the graph's structure: flatten, weight ops, pooling, and each IIR
neuron as written by ``export_nir(mode="exact")`` (weight op -> up to two first-order
synapse filters -> membrane, fed back by the reset cycle Threshold -> LI/I -> Scale, and
a Threshold just below V_th). The neuron constants come from the membrane node's
``hnn_bridge_neuron`` metadata where present (exact, so the rebuilt network computes
eq. 1 with the very same coefficients), checked against the nodes' own parameters;
without it they are recovered from the nodes (a = 1 - dt/tau), equal up to rounding.

NIR ``Affine`` nodes are mapped here, not by nirtorch: nirtorch 2.6's default Affine
mapping leaves a random bias in the layer (fixed upstream in NIRTorch PR #55).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .nir_export import EXACT_DT, require_nir, threshold_below
from .params import IIRParams

_NEURON_NODES = ("LIF", "CubaLIF", "IF", "CubaLI")


class SumPool2d(nn.Module):
    """NIR's sum pooling: the sum over each window (exact for spike counts)."""

    def __init__(
        self, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
    ) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(x, self.kernel_size, self.stride, self.padding, divisor_override=1)


class Threshold(nn.Module):
    """NIR's Threshold: 1 where x > threshold, else 0, in x's dtype."""

    def __init__(self, threshold: Tensor) -> None:
        super().__init__()
        self.register_buffer("threshold", threshold)

    def forward(self, x: Tensor) -> Tensor:
        return (x > self.threshold).to(x.dtype)


class NIRNetwork(nn.Module):
    """The imported spiking part: ``forward(x)`` maps the coded train ``[T, B, ...]`` to
    the output layer's spikes ``[T, B, ...]``; ``sl`` holds the layers in order,
    ``neurons`` the neuron modules (spikes ``[T, B, ...]``), ``metadata`` the graph's."""

    def __init__(self, sl: nn.Sequential, neurons: list[nn.Module], metadata: dict[str, Any]) -> None:
        super().__init__()
        self.sl = sl
        self.neurons = neurons
        self.metadata = metadata

    def forward(self, x: Tensor) -> Tensor:
        return self.sl(x)


def _read(graph_or_path: Any) -> Any:
    nir = require_nir()
    if isinstance(graph_or_path, nir.NIRGraph):
        return graph_or_path
    if isinstance(graph_or_path, (str, os.PathLike)):
        path = os.fspath(graph_or_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"import_nir: no such file {path!r}")
        try:
            return nir.read(path)
        except Exception as exc:
            raise ValueError(f"import_nir: {path!r} is not a NIR file ({type(exc).__name__}: {exc})") from exc
    raise TypeError(
        f"import_nir needs a nir.NIRGraph or a path to a .nir file, got {type(graph_or_path).__name__}"
    )


def _uniform(node_name: str, what: str, values: np.ndarray) -> float:
    flat = np.unique(np.asarray(values, dtype=np.float64))
    if flat.size != 1:
        raise ValueError(
            f"import_nir: node {node_name!r} has per-neuron {what}; the IIR neuron needs one value"
        )
    return float(flat[0])


def _integrator_constants(name: str, node: Any, dt: float) -> tuple[float, float]:
    """(pole, gain) of an LI or I under forward Euler at ``dt`` (module docstring of
    `hnn_bridge.nir_export`); an LI's v_leak is read apart."""
    nir = require_nir()
    if isinstance(node, nir.I):
        return 1.0, _uniform(name, "r", node.r) * dt
    tau = _uniform(name, "tau", node.tau)
    return 1.0 - dt / tau, _uniform(name, "r", node.r) * dt / tau


class _Graph:
    def __init__(self, graph: Any) -> None:
        self.nir = require_nir()
        self.graph = graph
        self.nodes: dict[str, Any] = graph.nodes
        self.succ: dict[str, list[str]] = {k: [] for k in self.nodes}
        self.pred: dict[str, list[str]] = {k: [] for k in self.nodes}
        for a, b in graph.edges:
            for n in (a, b):
                if n not in self.nodes:
                    raise ValueError(f"import_nir: an edge names {n!r}, which is not a node of the graph")
            self.succ[a].append(b)
            self.pred[b].append(a)

    def kind(self, name: str) -> str:
        return type(self.nodes[name]).__name__

    def is_weight(self, name: str) -> bool:
        return isinstance(self.nodes[name], (self.nir.Affine, self.nir.Linear, self.nir.Conv2d))

    def is_integrator(self, name: str) -> bool:
        return isinstance(self.nodes[name], (self.nir.LI, self.nir.I))

    def is_membrane(self, name: str) -> bool:
        """An integrator fed back by a Scale (the reset cycle of the exact subgraph)."""
        return self.is_integrator(name) and any(
            isinstance(self.nodes[p], self.nir.Scale) for p in self.pred[name]
        )

    def is_bias_source(self, name: str) -> bool:
        """A zero-weight op whose only successor is a membrane: the bias c of an I membrane."""
        node = self.nodes[name]
        return (
            self.is_weight(name)
            and not np.any(node.weight)
            and len(self.succ[name]) == 1
            and self.is_membrane(self.succ[name][0])
        )

    def only(self, name: str, options: list[str], what: str) -> str:
        if len(options) != 1:
            raise ValueError(
                f"import_nir: node {name!r} ({self.kind(name)}) has {len(options)} {what}; "
                "only the chains that export_nir writes can be imported"
            )
        return options[0]

    def main_successor(self, name: str) -> str:
        return self.only(name, [s for s in self.succ[name] if not self.is_bias_source(s)], "successors")


def import_nir(
    graph_or_path: Any, *, backend: str = "reference", dtype: torch.dtype | None = None
) -> NIRNetwork:
    """A NIR graph (``nir.NIRGraph`` or a path to a file that ``nir.write`` made) of the
    exact IIR subgraph, rebuilt as a `NIRNetwork` on ``backend`` (see
    `hnn_bridge.backends.BACKENDS`).

    ``dtype``: of the rebuilt weights; default the graph's metadata ``dtype``, else that
    of its first weight op.

    Raises:
        ImportError: ``nir`` is not installed.
        FileNotFoundError / ValueError: no such file, or a file that is not NIR.
        ValueError: a node this importer cannot rebuild (named): the standard neurons of
            ``mode="lif"`` exports, subgraphs, branches that ``export_nir`` never writes.
    """
    graph = _read(graph_or_path)
    g = _Graph(graph)
    meta = dict(graph.metadata or {})
    dt = float(meta.get("dt", EXACT_DT))
    inputs = [k for k, n in g.nodes.items() if isinstance(n, g.nir.Input)]
    if len(inputs) != 1:
        raise ValueError(f"import_nir: the graph needs exactly one Input node, it has {len(inputs)}")
    start = inputs[0]
    if dtype is None:
        first = next((n for n in g.nodes.values() if hasattr(n, "weight")), None)
        named = str(meta.get("dtype", ""))
        dtype = {"float32": torch.float32, "float64": torch.float64}.get(named) or (
            torch.float64
            if first is not None and np.asarray(first.weight).dtype == np.float64
            else torch.float32
        )
    from .backends import make_neuron
    from .builder import SeqOp
    from .neuron import PostFilterBias, SynapseFilter

    modules: list[nn.Module] = []
    neurons: list[nn.Module] = []
    cur = g.main_successor(start)
    while not isinstance(g.nodes[cur], g.nir.Output):
        node, kind = g.nodes[cur], g.kind(cur)
        if kind == "Flatten":
            end = int(node.end_dim)
            modules.append(SeqOp(nn.Flatten(int(node.start_dim) + 1, end if end < 0 else end + 1)))
        elif kind == "SumPool2d":
            modules.append(SeqOp(SumPool2d(_ints(node.kernel_size), _ints(node.stride), _ints(node.padding))))
        elif kind == "Threshold":
            modules.append(Threshold(torch.as_tensor(np.asarray(node.threshold), dtype=dtype)))
        elif g.is_weight(cur):
            op = _weight_module(cur, node, dtype)
            filters, membrane = _filter_chain(g, cur)
            params, bias = _neuron(g, filters, membrane, dt, dtype)
            modules.append(SeqOp(op))
            if params.synapse != "none":
                modules.append(SynapseFilter(params))
            if bias is not None:
                modules.append(PostFilterBias(bias, spatial_dims=op.weight.dim() - 2))
            neuron = make_neuron(backend, replace(params, synapse="none"))
            modules.append(neuron)
            neurons.append(neuron)
            cur = _spike_of(g, membrane)
        elif kind in _NEURON_NODES:
            raise _standard_neuron(cur, kind)
        else:
            raise ValueError(
                f"import_nir: cannot import node {cur!r} of type {kind} at this place in the graph"
            )
        cur = g.main_successor(cur)
    return NIRNetwork(nn.Sequential(*modules), neurons, meta)


def _standard_neuron(name: str, kind: str) -> ValueError:
    return ValueError(
        f"import_nir: node {name!r} is a standard {kind} neuron (a lossy export_nir(mode='lif') graph "
        "or another tool's); this importer rebuilds the exact IIR subgraph only: import such a graph "
        "with snntorch.import_nir or spikingjelly's nir_exchange"
    )


def _ints(v) -> tuple[int, int]:
    arr = np.atleast_1d(np.asarray(v)).astype(int)
    return (int(arr[0]), int(arr[-1]))


def _weight_module(name: str, node: Any, dtype: torch.dtype) -> nn.Module:
    """nn.Linear / nn.Conv2d with the node's weights (and bias, unless the exporter marked
    the op as bias-free)."""
    nir = require_nir()
    has_bias = bool(node.metadata.get("hnn_bridge_has_bias", True)) and not isinstance(node, nir.Linear)
    weight = torch.as_tensor(np.asarray(node.weight), dtype=dtype)
    if isinstance(node, nir.Conv2d):
        padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
        op: nn.Module = nn.Conv2d(
            weight.shape[1] * int(node.groups),
            weight.shape[0],
            tuple(weight.shape[2:]),
            stride=_ints(node.stride),
            padding=padding,
            dilation=_ints(node.dilation),
            groups=int(node.groups),
            bias=has_bias,
            dtype=dtype,
        )
    else:
        op = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, dtype=dtype)
    with torch.no_grad():
        op.weight.copy_(weight)
        if has_bias:
            op.bias.copy_(torch.as_tensor(np.asarray(node.bias), dtype=dtype))
    return op.requires_grad_(True)


def _filter_chain(g: _Graph, weight: str) -> tuple[list[str], str]:
    """The synapse integrators after a weight op, and the membrane they end in."""
    filters: list[str] = []
    cur = g.main_successor(weight)
    while not g.is_membrane(cur):
        if g.kind(cur) in _NEURON_NODES:
            raise _standard_neuron(cur, g.kind(cur))
        if not g.is_integrator(cur) or len(filters) == 2:
            raise ValueError(
                f"import_nir: after weight op {weight!r} came node {cur!r} ({g.kind(cur)}); an IIR neuron "
                "is up to two LI/I synapse filters, then a membrane LI/I fed back by a reset cycle"
            )
        filters.append(cur)
        cur = g.main_successor(cur)
    return filters, cur


def _reset_of(g: _Graph, membrane: str) -> tuple[str, str, str]:
    """(spike Threshold, reset integrator, reset Scale) of a membrane."""
    scale = g.only(
        membrane, [p for p in g.pred[membrane] if isinstance(g.nodes[p], g.nir.Scale)], "reset Scales"
    )
    reset = g.only(scale, g.pred[scale], "predecessors")
    spike = g.only(reset, g.pred[reset], "predecessors")
    if not g.is_integrator(reset) or not isinstance(g.nodes[spike], g.nir.Threshold):
        raise ValueError(f"import_nir: the reset cycle of {membrane!r} is not Threshold -> LI/I -> Scale")
    if spike not in g.succ[membrane]:
        raise ValueError(f"import_nir: the reset cycle of {membrane!r} does not start at its Threshold")
    return spike, reset, scale


def _spike_of(g: _Graph, membrane: str) -> str:
    """The spike node, whose main successor (not the reset) is the next layer."""
    spike, reset, _ = _reset_of(g, membrane)
    rest = [s for s in g.succ[spike] if s != reset and not g.is_bias_source(s)]
    # main_successor(spike) is taken by the caller: hide the reset edge from it
    g.succ[spike] = rest
    return spike


def _neuron(
    g: _Graph, filters: list[str], membrane: str, dt: float, dtype: torch.dtype
) -> tuple[IIRParams, Tensor | None]:
    """IIRParams and post-filter bias c of one neuron, from metadata (exact) or nodes."""
    spike, reset, scale = _reset_of(g, membrane)
    poles = [_integrator_constants(f, g.nodes[f], dt) for f in filters]
    lam, gain = _integrator_constants(membrane, g.nodes[membrane], dt)
    theta, reset_gain = _integrator_constants(reset, g.nodes[reset], dt)
    v_th = -_uniform(scale, "scale", g.nodes[scale].scale)
    tol = 1e-5 if dtype == torch.float32 else 1e-9
    for name, value in ((membrane, gain), (reset, reset_gain)):
        if not math.isclose(value, 1.0, rel_tol=tol):
            raise ValueError(
                f"import_nir: integrator {name!r} has gain {value!r}; the IIR membrane and reset need 1"
            )
    meta = g.nodes[membrane].metadata
    if "hnn_bridge_neuron" in meta:
        params = IIRParams(**json.loads(str(meta["hnn_bridge_neuron"])))
    else:
        params = _params_from_nodes(membrane, poles, lam, theta, v_th)
    _check(membrane, params, poles, lam, theta, v_th, tol)
    expected = threshold_below(params.v_threshold, dtype)
    got = _uniform(spike, "threshold", g.nodes[spike].threshold)
    if not math.isclose(got, float(expected), rel_tol=tol):
        raise ValueError(
            f"import_nir: Threshold {spike!r} is {got!r}, not just below V_th = {params.v_threshold!r}"
        )
    bias = _post_bias(g, membrane, lam, dt, dtype)
    return params, bias


def _params_from_nodes(
    membrane: str, poles: list[tuple[float, float]], lam: float, theta: float, v_th: float
) -> IIRParams:
    """IIRParams from node values: the synapse kind from the number of filters, taus
    from the poles (tau = -1/ln(pole))."""

    def tau(pole: float) -> float:
        if not 0.0 < pole < 1.0:
            raise ValueError(f"import_nir: a synapse pole of {membrane!r} is {pole!r}; it must lie in (0, 1)")
        return -1.0 / math.log(pole)

    common = {
        "v_threshold": v_th,
        "membrane_decay": min(max(lam, 0.0), 1.0),
        "reset_decay": min(max(theta, 0.0), 1.0),
    }
    if not poles:
        return IIRParams(synapse="none", **common)
    if len(poles) == 1:
        return IIRParams(synapse="first_order", tau_s=tau(poles[0][0]), **common)
    return IIRParams(synapse="dual_exp", tau_m=tau(poles[0][0]), tau_s=tau(poles[1][0]), **common)


def _check(
    membrane: str,
    params: IIRParams,
    poles: list[tuple[float, float]],
    lam: float,
    theta: float,
    v_th: float,
    tol: float,
) -> None:
    """The metadata's constants must be those of the nodes (a graph edited after export
    would otherwise import as something else than it says)."""
    em, es = math.exp(-1.0 / params.tau_m), math.exp(-1.0 / params.tau_s)
    want = {"none": [], "first_order": [(es, 1.0)], "dual_exp": [(em, em - es), (es, 1.0)]}[params.synapse]
    pairs = [(f"synapse {k}", a, b) for k, (pa, pb) in enumerate(zip(poles, want)) for a, b in zip(pa, pb)]
    pairs += [("lambda", lam, params.lam), ("theta", theta, params.theta), ("V_th", v_th, params.v_threshold)]
    if len(poles) != len(want) or any(not math.isclose(a, b, rel_tol=tol, abs_tol=tol) for _, a, b in pairs):
        raise ValueError(
            f"import_nir: the nodes of neuron {membrane!r} disagree with its hnn_bridge_neuron metadata "
            f"({params}); was the graph edited after export?"
        )


def _post_bias(g: _Graph, membrane: str, lam: float, dt: float, dtype: torch.dtype) -> Tensor | None:
    """The bias c after the filter, per unit or channel: the metadata's exact copy, else
    the membrane LI's v_leak * (1 - lambda) or the bias of a zero-weight source op."""
    node = g.nodes[membrane]
    if "hnn_bridge_bias_after_filter" in node.metadata:
        return torch.as_tensor(np.asarray(node.metadata["hnn_bridge_bias_after_filter"]), dtype=dtype)
    sources = [p for p in g.pred[membrane] if g.is_bias_source(p)]
    if sources:
        return torch.as_tensor(np.asarray(g.nodes[sources[0]].bias), dtype=dtype)
    if isinstance(node, g.nir.LI) and np.any(node.v_leak):
        leak = np.asarray(node.v_leak, dtype=np.float64) * (1.0 - lam)
        per = leak.reshape(leak.shape[0], -1)
        if not np.all(per == per[:, :1]):
            raise ValueError(f"import_nir: the leak of {membrane!r} varies within a channel")
        return torch.as_tensor(per[:, 0], dtype=dtype)
    return None

"""`export_nir`: the spiking part of a `HybridNet` as a NIR graph (Neuromorphic
Intermediate Representation, PyPI ``nir``), so that other simulators and hardware can
run it. Needs the optional extra: ``pip install 'hnn-bridge[nir]'``.

What goes into the graph: everything after the coder, for one time step of the coded
train: flatten, the weight ops (NIR ``Affine``/``Linear``/``Conv2d``), the neurons and
P2 pooling. The graph's ``Input`` is the coded train at one step (`nir_input` makes it
from images); the AL prefix and the coder stay in PyTorch (``model.al``, ``model.coder``):
NIR has no ReLU or sigmoid, and no random coder.

``mode="exact"`` writes the IIR neuron of eq. 1 as a NIR subgraph, exactly, under
forward-Euler discretisation with dt = 1 time step (an ``LI`` with time constant tau,
resistance r and leak voltage v_leak then runs v[t] = a v[t-1] + (1 - a)(v_leak + r I[t])
with a = 1 - dt/tau; an ``I`` runs v[t] = v[t-1] + dt r I[t]):

- the synapse filter (eq. 1d): p = b x / ((1 - e_m z^-1)(1 - e_s z^-1)) factors into two
  first-order filters, ``LI`` (pole e_m, gain b) then ``LI`` (pole e_s, gain 1);
  ``first_order`` is one ``LI`` (pole e_s), ``none`` none;
- the membrane (eq. 1a): an ``LI`` with pole lambda and gain 1; the bias after the
  filter (Fang et al.'s I = W F + b, or a batch norm's shift) is its leak voltage
  c / (1 - lambda); lambda = 1 takes an ``I`` and the bias comes from a zero-weight
  ``Affine``/``Conv2d`` whose bias is c, fed by the layer's input;
- the spike (eq. 1e, 1f): a ``Threshold`` at the largest number of the network's dtype
  below V_th, since NIR's threshold fires at v > threshold and eq. 1f at V >= V_th;
- the reset (eq. 1c): a cycle ``Threshold`` -> ``LI`` (pole theta, gain 1) -> ``Scale``
  (-V_th) -> membrane. An interpreter that feeds a cycle's previous output back in
  supplies the one-step delay of O[t-1] wherever it cuts the cycle.
  theta = 1 takes an ``I``.

A batch norm (eval mode, running statistics) is folded: before the filter into the
weight op's weights and bias, after it into the weights (the filter is linear) and the
bias c. P2 max pooling of binary spikes is ``SumPool2d`` then ``Threshold(0.5)``, exact.

``mode="lif"`` writes the nearest standard neurons for consumers that cannot run the
exact graph (snnTorch's and SpikingJelly's importers): ``CubaLIF`` (with tau_syn = dt,
a current without memory, where the layer has no filter), at snnTorch's dt = 1e-4.
It is lossy: it drops one pole of the
dual exponential (keeps the slower one, with the DC gain), moves the post-filter bias
before the synaptic filter (same steady state) and turns the decaying subtractive reset
of eq. 1c into a hard reset to zero; docs/notes/2026-12-06-nir.md gives the measured
spike mismatch.

Not in NIR, in either mode: the surrogate gradient (sigma, eq. 6), ``detach_reset``
(training only), the coders and the AL prefix, dropout (inactive in eval mode). The
graph's metadata says so (``not_in_graph``) and carries the neuron constants exactly
(``hnn_bridge_neuron`` on each membrane node), from which `import_nir` rebuilds the
same network bit for bit.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError
from .params import IIRParams

MODES = ("exact", "lif")
#: the time step of the exact graph; the lif graph uses snnTorch's exporter's dt
EXACT_DT = 1.0
LIF_DT = 1e-4
FORMAT = "hnn-bridge-nir/1"
NOT_IN_GRAPH = (
    "the surrogate gradient (sigma, eq. 6) and detach_reset (training only); the coder "
    "and the artificial layers before it (the graph's input is the coded train at one "
    "time step); dropout (inactive in eval mode)"
)
INSTALL_HINT = (
    "NIR support needs the optional extra: pip install 'hnn-bridge[nir]' (the packages nir and nirtorch)"
)


def require_nir():
    """The ``nir`` module, or ImportError saying how to install it."""
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(INSTALL_HINT) from exc
    return nir


def threshold_below(v_threshold: float, dtype: torch.dtype) -> np.ndarray:
    """The largest number of ``dtype`` below V_th (as ``dtype`` rounds it): NIR's
    ``v > t`` at this t is eq. 1f's ``V >= V_th`` for every V of that dtype."""
    np_dtype = _np_dtype(dtype)
    vth = np_dtype.type(v_threshold)
    return np.nextafter(vth, np_dtype.type(-np.inf))


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"export_nir: the network must be float32 or float64, got {dtype}")
    return np.dtype("float32" if dtype == torch.float32 else "float64")


def _array(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().copy()


def nir_input(model: nn.Module, images: Tensor) -> Tensor:
    """The coded train ``[T, B, ...]`` that the exported graph takes, one step at a time:
    the AL prefix and the coder of ``model`` applied to ``images`` ``[B, C, H, W]``."""
    with torch.no_grad():
        return model.coder(model.al(images))


@dataclass
class _Layer:
    """One spiking layer as it is gathered from the modules of ``model.sl``."""

    weight: Tensor | None = None
    bias: Tensor | None = None  # in the weight op, before the filter
    conv: nn.Conv2d | None = None
    in_shape: tuple[int, ...] = ()
    post_bias: Tensor | None = None  # c, after the filter, per unit or channel
    filtered: bool = False  # a SynapseFilter module has been passed
    modules: list[str] = field(default_factory=list)


@dataclass
class _GraphBuilder:
    """Nodes and edges of the graph under construction, and the node feeding the next."""

    nir: Any
    dtype: torch.dtype
    mode: str
    nodes: dict[str, Any] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    last: str = "input"

    def add(self, name: str, node: Any, *, after: str | None = None) -> str:
        self.nodes[name] = node
        self.edges.append((self.last if after is None else after, name))
        return name

    def chain(self, name: str, node: Any) -> None:
        self.last = self.add(name, node)

    def full(self, value, shape: tuple[int, ...]) -> np.ndarray:
        return np.full(shape, value, dtype=_np_dtype(self.dtype))


def _fold_norm(norm: nn.Module, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """A batch norm in eval mode after a weight op (W, b), folded: y = x*alpha + beta'
    with alpha = gamma / sqrt(var + eps), beta' = beta - mean*alpha (PyTorch's own eval
    formula); returns (W*alpha, b*alpha + beta')."""
    if norm.running_mean is None:
        raise ConfigError(f"export_nir: {norm} keeps no running statistics, so it cannot be folded")
    invstd = 1.0 / torch.sqrt(norm.running_var + norm.eps)
    alpha = invstd * norm.weight if norm.affine else invstd
    shift = (norm.bias if norm.affine else 0.0) - norm.running_mean * alpha
    view = (-1,) + (1,) * (weight.dim() - 1)
    new_bias = shift if bias is None else bias * alpha + shift
    return weight * alpha.view(view), new_bias


def _modules_in_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the spiking part in execution order, SeqOp wrappers opened."""
    from .builder import SeqOp

    out: list[tuple[str, nn.Module]] = []
    parts = ([("first_op", model.first_op)] if model.first_op is not None else []) + [("sl", model.sl)]
    for prefix, seq in parts:
        for name, m in seq.named_children():
            out.append((f"{prefix}.{name}", m.module if isinstance(m, SeqOp) else m))
    return out


def export_nir(model: nn.Module, mode: str = "exact") -> Any:
    """The spiking part of a built or trained `HybridNet` as a ``nir.NIRGraph``.

    Args:
        model: a `hnn_bridge.HybridNet` with spiking layers, in eval mode.
        mode: ``"exact"``: the IIR neuron as an exact NIR subgraph (module docstring);
            ``"lif"``: the nearest standard neurons (``CubaLIF``), lossy.

    Raises:
        ImportError: ``nir`` is not installed (says how to install it).
        TypeError: ``model`` is not a `HybridNet`.
        ConfigError: a pure ANN, a model in training mode, a mode not in `MODES`, or a
            layer that NIR cannot express (named).
    """
    nir = require_nir()
    from .builder import HybridNet

    if not isinstance(model, HybridNet):
        raise TypeError(
            f"export_nir needs a hnn_bridge.HybridNet (from hnn_bridge.build), got {type(model).__name__}"
        )
    if mode not in MODES:
        raise ConfigError(f"unknown NIR export mode {mode!r}; choose one of {', '.join(MODES)}")
    if model.coder is None:
        raise ConfigError(f"{model.arch!r} is a pure ANN: it has no spiking part to export to NIR")
    if model.training:
        raise ConfigError(
            "export_nir exports the network as it runs in eval mode (batch norm running "
            "statistics, no dropout): call model.eval() first"
        )
    ops = [m for m in (model.weight_ops[i] for i, info in enumerate(model.layers) if info.part == "SL")]
    dtype = ops[0].weight.dtype
    _np_dtype(dtype)
    with torch.no_grad():
        a = model.al(torch.zeros(1, *model.settings["input_shape"], dtype=dtype, device=ops[0].weight.device))
        probe = model.coder(a)[0]  # one step of the coded train, [1, ...]
    g = _GraphBuilder(nir, dtype, mode)
    g.nodes["input"] = nir.Input(input_type={"input": np.array(probe.shape[1:])})
    neuron_index = {id(m): i for i, m in model.neurons.items()}
    binary = model.coder.binary  # what the next module receives: spikes (0/1) or values
    layer = _Layer()
    x = probe
    with torch.no_grad():
        for name, m in _modules_in_order(model):
            label = f"{name} ({type(m).__name__})"
            if id(m) in neuron_index:
                i = neuron_index[id(m)]
                if getattr(m, "bias", None) is not None:
                    c = m.bias.detach().reshape(-1)
                    layer.post_bias = c if layer.post_bias is None else layer.post_bias + c
                _emit_layer(
                    g, f"l{i}", model.layers[i].token, layer, model.synapse_params(i), tuple(x.shape[1:])
                )
                layer, binary = _Layer(), True
                continue
            x = _gather(g, layer, name, label, m, x, binary)
    g.nodes["output"] = nir.Output(output_type={"output": np.array(x.shape[1:])})
    g.edges.append((g.last, "output"))
    metadata = {
        "format": FORMAT,
        "mode": mode,
        "dt": EXACT_DT if mode == "exact" else LIF_DT,
        "discretisation": "forward_euler",
        "dtype": str(dtype).removeprefix("torch."),
        "arch": model.arch,
        "steps": int(model.steps),
        "coder": str(model.settings.get("coder")),
        "spike_rule": "eq. 1f fires at V >= V_th; each Threshold is the largest number of dtype below V_th",
        "not_in_graph": NOT_IN_GRAPH,
    }
    if mode == "lif":
        metadata["lossy"] = (
            "nearest standard neurons: one pole of the dual-exponential synapse dropped, the "
            "post-filter bias moved before the synaptic filter, hard reset to zero instead of eq. 1c"
        )
    return nir.NIRGraph(nodes=g.nodes, edges=g.edges, metadata=metadata)


def _gather(
    g: _GraphBuilder, layer: _Layer, name: str, label: str, m: nn.Module, x: Tensor, binary: bool
) -> Tensor:
    """Take one module of the spiking part into ``layer`` (or straight into the graph:
    flatten, pooling); returns the probe after it."""
    from .builder import TimeSharedDropout
    from .neuron import PostFilterBias, SynapseFilter

    nir = g.nir
    if isinstance(m, (TimeSharedDropout, nn.Dropout, nn.Identity)):
        return x
    if isinstance(m, nn.Flatten):
        if layer.weight is not None:
            raise ConfigError(f"export_nir: {label} after a weight op inside one layer cannot be exported")
        g.chain(
            f"{name.replace('.', '_')}_flatten",
            nir.Flatten(
                input_type={"input": np.array(x.shape[1:])},
                start_dim=m.start_dim - 1,
                end_dim=m.end_dim if m.end_dim < 0 else m.end_dim - 1,
            ),
        )
        return m(x)
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        if layer.weight is not None:
            raise ConfigError(f"export_nir: two weight ops in one layer ({label}) cannot be exported")
        layer.weight = m.weight.detach().clone()
        layer.bias = None if m.bias is None else m.bias.detach().clone()
        layer.conv = m if isinstance(m, nn.Conv2d) else None
        layer.in_shape = tuple(x.shape[1:])
        return m(x)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if layer.weight is None:
            raise ConfigError(f"export_nir: {label} without a weight op before it cannot be folded")
        if not layer.filtered:  # before the filter: into the weight op
            layer.weight, layer.bias = _fold_norm(m, layer.weight, layer.bias)
        else:  # after the (linear) filter: its scale into the weights, its shift is c
            layer.weight, shift = _fold_norm(m, layer.weight, None)
            if layer.bias is not None:  # a bias before a filter and a norm after it: not built
                raise ConfigError(f"export_nir: {label} follows a filtered bias; this layer cannot be folded")
            layer.post_bias = shift if layer.post_bias is None else layer.post_bias + shift
        return x if layer.filtered else m(x)
    if isinstance(m, SynapseFilter):
        layer.filtered = True
        return x
    if isinstance(m, PostFilterBias):
        c = m.bias.detach().clone()
        layer.post_bias = c if layer.post_bias is None else layer.post_bias + c
        return x
    if isinstance(m, nn.MaxPool2d):
        return _pool(g, name, label, m, x, binary)
    raise ConfigError(f"export_nir: NIR has no primitive for {label}; this network cannot be exported")


def _pool(g: _GraphBuilder, name: str, label: str, m: nn.MaxPool2d, x: Tensor, binary: bool) -> Tensor:
    """P2 max pooling of binary spikes: SumPool2d then Threshold(0.5), exact (the max of
    0/1 values is 1 exactly where their sum is at least 1)."""
    nir = g.nir
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = _pair(m.padding)
    if not binary:
        raise ConfigError(
            f"export_nir: NIR has no max pooling; {label} pools real values (before the first "
            "spiking layer), where SumPool2d + Threshold(0.5) is not exact"
        )
    if _pair(m.dilation) != (1, 1) or m.ceil_mode or p != (0, 0):
        raise ConfigError(
            f"export_nir: {label} has dilation, padding or ceil_mode, which SumPool2d cannot express"
        )
    y = m(x)
    stem = name.replace(".", "_")
    g.chain(
        f"{stem}_sumpool", nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p))
    )
    g.chain(f"{stem}_max", nir.Threshold(threshold=g.full(0.5, tuple(y.shape[1:]))))
    return y


def _pair(v) -> tuple[int, int]:
    return tuple(int(u) for u in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _broadcast(values: Tensor | None, shape: tuple[int, ...], dtype: torch.dtype) -> np.ndarray:
    """A per-unit (dense) or per-channel (conv) vector as an array of the layer's shape."""
    if values is None:
        return np.zeros(shape, dtype=_np_dtype(dtype))
    v = values.detach().to(dtype).reshape(-1, *(1,) * (len(shape) - 1))
    return _array(v.expand(shape))


def _weight_node(g: _GraphBuilder, name: str, layer: _Layer, weight: Tensor, bias: Tensor | None) -> Any:
    nir = g.nir
    meta = {"hnn_bridge_has_bias": bias is not None}
    if layer.conv is None:
        if bias is None:
            return nir.Linear(weight=_array(weight), metadata=meta)
        return nir.Affine(weight=_array(weight), bias=_array(bias), metadata=meta)
    conv = layer.conv
    b = bias if bias is not None else torch.zeros(weight.shape[0], dtype=weight.dtype)
    return nir.Conv2d(
        input_shape=layer.in_shape[1:],
        weight=_array(weight),
        stride=_pair(conv.stride),
        padding=_pair(conv.padding),
        dilation=_pair(conv.dilation),
        groups=conv.groups,
        bias=_array(b),
        metadata=meta,
    )


def _filter_poles(params: IIRParams) -> list[tuple[float, float]]:
    """(pole, gain) of the first-order factors of the synapse filter (eq. 1d)."""
    if params.synapse == "none":
        return []
    es = math.exp(-1.0 / params.tau_s)
    if params.synapse == "first_order":
        return [(es, 1.0)]
    em = math.exp(-1.0 / params.tau_m)
    return [(em, em - es), (es, 1.0)]


def _integrator(
    g: _GraphBuilder,
    pole: float,
    gain: float,
    shape: tuple[int, ...],
    leak: Tensor | None = None,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """v[t] = pole*v[t-1] + gain*I[t] (+ leak per step) as an LI, or an I for pole 1."""
    nir = g.nir
    meta = metadata or {}
    if pole == 1.0:
        return nir.I(r=g.full(gain / EXACT_DT, shape), metadata=meta)
    one_minus = 1.0 - pole
    v_leak = _broadcast(leak, shape, g.dtype) / one_minus if leak is not None else g.full(0.0, shape)
    return nir.LI(
        tau=g.full(EXACT_DT / one_minus, shape),
        r=g.full(gain / one_minus, shape),
        v_leak=v_leak.astype(_np_dtype(g.dtype)),
        metadata=meta,
    )


def _emit_layer(
    g: _GraphBuilder, stem: str, token: str, layer: _Layer, params: IIRParams, shape: tuple[int, ...]
) -> None:
    if layer.weight is None:
        raise ConfigError(f"export_nir: spiking layer {token!r} has no weight op")
    if g.mode == "lif":
        _emit_lif(g, stem, token, layer, params, shape)
    else:
        _emit_exact(g, stem, token, layer, params, shape)


def _emit_exact(
    g: _GraphBuilder, stem: str, token: str, layer: _Layer, params: IIRParams, shape: tuple[int, ...]
) -> None:
    """Weight op -> synapse LIs -> membrane <- reset cycle; -> Threshold (module docstring)."""
    nir = g.nir
    layer_input = g.last
    g.chain(f"{stem}_weight", _weight_node(g, stem, layer, layer.weight, layer.bias))
    for n, (pole, gain) in enumerate(_filter_poles(params)):
        g.chain(f"{stem}_synapse{n + 1}", _integrator(g, pole, gain, shape))
    c = layer.post_bias
    meta: dict[str, Any] = {"hnn_bridge_neuron": json.dumps(params.as_dict()), "hnn_bridge_layer": token}
    if c is not None:
        meta["hnn_bridge_bias_after_filter"] = _array(c.to(g.dtype))
    lam = params.lam
    membrane = f"{stem}_membrane"
    g.chain(membrane, _integrator(g, lam, 1.0, shape, leak=c if lam != 1.0 else None, metadata=meta))
    if c is not None and lam == 1.0:  # an I has no leak: a zero-weight op with bias c feeds it
        zero = torch.zeros_like(layer.weight)
        if layer.conv is not None:
            zero = zero[:, :, :1, :1]
            src = _Layer(conv=nn.Conv2d(1, 1, 1), in_shape=layer.in_shape)
        else:
            src = _Layer()
        g.add(f"{stem}_bias", _weight_node(g, stem, src, zero, c.to(g.dtype)), after=layer_input)
        g.edges.append((f"{stem}_bias", membrane))
    spike = f"{stem}_spike"
    g.chain(spike, nir.Threshold(threshold=g.full(threshold_below(params.v_threshold, g.dtype), shape)))
    g.add(f"{stem}_reset", _integrator(g, params.theta, 1.0, shape), after=spike)
    g.add(f"{stem}_reset_scale", nir.Scale(scale=g.full(-params.v_threshold, shape)), after=f"{stem}_reset")
    g.edges.append((f"{stem}_reset_scale", membrane))


def _emit_lif(
    g: _GraphBuilder, stem: str, token: str, layer: _Layer, params: IIRParams, shape: tuple[int, ...]
) -> None:
    """The nearest standard neuron (lossy, module docstring), at snnTorch's dt."""
    nir = g.nir
    if params.lam >= 1.0:
        raise ConfigError(
            f"export_nir(mode='lif'): layer {token!r} has membrane decay lambda = 1 (no leak), "
            "which LIF/CubaLIF cannot express with a finite time constant; use mode='exact'"
        )
    poles = _filter_poles(params)
    if len(poles) == 2:  # keep the slower pole; the DC gain of the dropped one goes into the weights
        (p1, g1), (p2, _) = poles
        alpha, scale = max(p1, p2), g1 / (1.0 - min(p1, p2))
    elif poles:
        alpha, scale = poles[0][0], 1.0
    else:  # no filter: a synaptic current without memory (tau_syn = dt), as LIF but importable everywhere
        alpha, scale = 0.0, 1.0
    weight = layer.weight * scale
    bias = None if layer.bias is None else layer.bias * scale
    if layer.post_bias is not None:  # c after the filter -> c (1 - alpha) before it: same steady state
        pre = layer.post_bias * (1.0 - alpha)
        bias = pre if bias is None else bias + pre
    if layer.conv is not None and bias is None:
        bias = torch.zeros(weight.shape[0], dtype=weight.dtype)
    g.chain(f"{stem}_weight", _weight_node(g, stem, layer, weight, bias))
    tau_mem = LIF_DT / (1.0 - params.lam)
    thr = g.full(threshold_below(params.v_threshold, g.dtype), shape)
    meta = {"hnn_bridge_layer": token, "hnn_bridge_lossy": True}
    tau_syn = LIF_DT / (1.0 - alpha)

    def f64(value: float) -> np.ndarray:  # time constants in float64: importers compare them with dt
        return np.full(shape, value, dtype=np.float64)

    node = nir.CubaLIF(
        tau_syn=f64(tau_syn),
        tau_mem=f64(tau_mem),
        r=f64(tau_mem / LIF_DT),
        v_leak=f64(0.0),
        v_threshold=thr,
        v_reset=g.full(0.0, shape),
        w_in=f64(tau_syn / LIF_DT),
        metadata=meta,
    )
    g.chain(f"{stem}_lif", node)

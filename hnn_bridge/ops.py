"""Operation counts of one inference (the paper's energy argument, §1).

Two counters:

- `count_ops(model, rate)`: the analytical estimate from the layer shapes and an assumed
  (or measured mean) presynaptic firing rate: ACs = rate x (dense-equivalent MACs) x T.
  It assumes that every spike reaches a full k x k fan-out, which a spike at the border
  of a padded convolution does not: `describe` uses it where nothing was measured.
- `exact_counts(model, tally)`: per-layer counts from what a forward pass really fed to
  every weight op (`hnn_bridge.rates.recording_counts` records it):

  * dense MACs: every multiply-accumulate a dense op executes (k x k per output
    position, padding included, as PyTorch and SpikingJelly's ``MACCounter`` count);
  * effective MACs: one per non-zero input value and real synapse it reaches (zero
    inputs such as ReLU zeros are skipped, padding reaches nothing), as NeuroBench's
    ``SynapticOperations`` counts them;
  * ACs (synaptic operations): one per input spike and real synapse it reaches, with
    the fan-out of its own position (padding, stride), after pooling; SpikingJelly's
    ``SynOpCounter`` counts the same;
  * neuron updates: per neuron and step, the multiplies, adds and state words of
    eq. 1 with the layer's own settings (`neuron_cost`).

ALs and SLs fed by real values perform MACs (once per image, or at every step; a
duplicate-coded train is weighed once), SLs fed by spikes perform ACs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .builder import HybridNet
from .params import IIRParams

# Horowitz (ISSCC 2014), 45 nm, float32: the paper-comparable default (the "ops" energy model)
PJ_PER_MAC = 4.6
PJ_PER_AC = 0.9
ENERGY_NOTE = f"energy at 45 nm, float32: {PJ_PER_MAC} pJ per MAC, {PJ_PER_AC} pJ per AC (Horowitz 2014)"


@dataclass(frozen=True)
class LayerOps:
    index: int
    token: str
    part: str
    macs: float
    acs: float
    input_rate: float | None  # presynaptic firing rate used for the ACs


@dataclass(frozen=True)
class OpsReport:
    layers: list[LayerOps]

    @property
    def macs(self) -> float:
        return sum(r.macs for r in self.layers)

    @property
    def acs(self) -> float:
        return sum(r.acs for r in self.layers)

    @property
    def energy_pj(self) -> float:
        return self.macs * PJ_PER_MAC + self.acs * PJ_PER_AC


def count_ops(model: HybridNet, rate: float | Mapping[int, float] = 0.1) -> OpsReport:
    """Estimate one image's operations from the layer shapes. ``rate`` is the presynaptic
    firing rate of every spike-fed layer, or a mapping from layer index (into
    ``model.layers``) to its measured input rate; layers missing from the mapping are an
    error. ACs = rate x dense MACs x T (full fan-out for every spike: see the module
    docstring; `exact_counts` counts the real fan-out)."""
    steps = model.steps or 1
    rows = []
    for i, info in enumerate(model.layers):
        macs = acs = 0.0
        in_rate = None
        if info.part == "AL":
            macs = info.macs
        elif info.part == "SL" and info.fed_by == "values":
            macs = info.macs * (steps if info.per_step else 1)
        elif info.part == "SL":
            if isinstance(rate, Mapping):
                if i not in rate:
                    raise KeyError(f"no measured input firing rate for layer {i} ({info.token})")
                in_rate = float(rate[i])
            else:
                in_rate = float(rate)
            if not 0.0 <= in_rate <= 1.0:
                raise ValueError(f"firing rate must be in [0, 1], got {in_rate} for layer {i} ({info.token})")
            acs = in_rate * info.macs * steps
        rows.append(LayerOps(i, info.token, info.part, macs, acs, in_rate))
    return OpsReport(rows)


# ----------------------------------------------------------------- neuron updates


@dataclass(frozen=True)
class NeuronCost:
    """What one IIR neuron does per time step (eq. 1), on top of the synaptic
    accumulations into its input, for one layer's settings.

    Counted as a neuromorphic core would run eq. 1: the weighted input x[t] is
    accumulated by the synaptic operations straight into the state it enters (p[t] with
    a synapse filter, V[t] without one), the filter gain b is folded into the weights,
    and a binary reset input adds V_th once per spike.

    - synapse ``dual_exp``: p[t] = a1 p[t-1] + a2 p[t-2] (+ x[t]): 2 mul, 1 add; two state
      words read, one written (p[t] overwrites p[t-2]); ``first_order``: 1 mul, one word
      read and written; ``none``: nothing (x[t] goes to V directly).
    - membrane (eq. 1a) V[t] = lam V[t-1] + p[t]: a multiply unless lam is 0 or 1, an add
      of p[t] when there is a synapse state and lam != 0; V is read and written once per
      step (as SpikingJelly's Lemaire counter does for IF and LIF nodes).
    - reset (eq. 1c, 1b): theta = 0: R[t] = O[t-1] is the last output bit, so V -= V_th
      is one add per spike and no state; theta > 0: R[t] = theta R[t-1] + O[t-1] is one
      multiply per step, one add per spike, one word read and written, and V -= V_th R[t]
      one add per step (and a multiply unless V_th = 1).
    - the threshold comparison (eq. 1f) is not counted, as in Lemaire et al. 2022.
    """

    mul_per_step: int
    add_per_step: int
    add_per_spike: int
    state_words: int  # words per neuron besides V
    reads_per_step: int  # words read per neuron and step, V included
    writes_per_step: int  # words written per neuron and step, V included


def neuron_cost(params: IIRParams) -> NeuronCost:
    """The `NeuronCost` of eq. 1 under ``params`` (the layer's effective settings)."""
    syn_words = {"dual_exp": 2, "first_order": 1, "none": 0}[params.synapse]
    syn_mul = syn_words
    syn_add = 1 if params.synapse == "dual_exp" else 0
    syn_writes = 1 if syn_words else 0
    lam, theta = params.lam, params.theta
    mem_mul = 0 if lam in (0.0, 1.0) else 1
    mem_add = 1 if syn_words and lam != 0.0 else 0
    if theta == 0.0:
        reset_mul, reset_add, reset_words = 0, 0, 0
    else:
        reset_mul = 1 + (0 if params.v_threshold == 1.0 else 1)
        reset_add, reset_words = 1, 1
    return NeuronCost(
        mul_per_step=syn_mul + mem_mul + reset_mul,
        add_per_step=syn_add + mem_add + reset_add,
        add_per_spike=1,
        state_words=syn_words + reset_words,
        reads_per_step=1 + syn_words + reset_words,
        writes_per_step=1 + syn_writes + reset_words,
    )


def layer_neuron_params(model: HybridNet, index: int) -> IIRParams:
    """The effective eq. 1 settings of SL ``index`` (`HybridNet.synapse_params`: with its
    synapse filter wherever that runs, none for the first SL under direct input, §4.2)."""
    info = model.layers[index]
    if info.part != "SL":
        raise ValueError(f"layer {index} ({info.token}) is not a spiking layer")
    return model.synapse_params(index)


# ----------------------------------------------------------------- exact counts


def fanout_map(op: nn.Module, in_shape: tuple[int, ...]) -> Tensor | int:
    """Synapses that one input value of ``op`` reaches: an int for a dense op (its
    output width), for a convolution a float64 [H, W] map over input positions (output
    channels per group x output positions whose window holds that input position:
    fewer at a padded border, fewer or more with a stride)."""
    if isinstance(op, nn.Linear):
        return op.out_features
    if isinstance(op, nn.Conv2d) and isinstance(op.padding, tuple) and op.padding_mode == "zeros":
        _, h, w = in_shape
        ones_in = torch.ones(1, 1, h, w, dtype=torch.float64)
        kernel = torch.ones(1, 1, *op.kernel_size, dtype=torch.float64)
        out = torch.nn.functional.conv2d(
            ones_in, kernel, stride=op.stride, padding=op.padding, dilation=op.dilation
        )
        reach = torch.nn.grad.conv2d_input(
            (1, 1, h, w),
            kernel,
            torch.ones_like(out),
            stride=op.stride,
            padding=op.padding,
            dilation=op.dilation,
        )
        return reach[0, 0] * (op.out_channels // op.groups)
    raise TypeError(
        f"cannot count the synapses of {op!r}: exact counts cover nn.Linear and nn.Conv2d with "
        "zero padding given as numbers (padding_mode='zeros')"
    )


@dataclass(frozen=True)
class LayerCounts:
    """Exact per-image counts of one layer (`exact_counts`). Sums over the T steps."""

    index: int
    token: str
    part: str  # "input", "AL", "SL" or "pool"
    op: str  # "dense", "conv", "pool" or "input"
    fed_by: str
    evaluations: int  # of the weight op per image: 1, or T
    in_size: int  # values fed per evaluation
    out_size: int  # outputs (neurons) per evaluation
    weights: int  # weight-op parameters (weights and bias)
    kernel_area: int  # k x k of a convolution, 1 for a dense op
    out_channels: int
    dense_macs: float  # all evaluations
    macs: float  # performed MACs: dense_macs when fed by values, else 0
    effective_macs: float  # non-zero input values x real fan-out (fed by values)
    acs: float  # input spikes x real fan-out (fed by spikes)
    input_events: float  # non-zero inputs over all evaluations
    bias_adds: float
    steps: int  # T of the neuron, 0 for a non-spiking layer
    out_spikes: float
    neuron: NeuronCost | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LayerCounts":
        d = dict(d)
        d["neuron"] = None if d.get("neuron") is None else NeuronCost(**d["neuron"])
        return cls(**d)

    @property
    def neuron_steps(self) -> float:
        return float(self.out_size * self.steps)


def exact_counts(model: HybridNet, tally: Mapping[str, Any]) -> list[LayerCounts]:
    """Per-image `LayerCounts` of every token from a `hnn_bridge.rates.recording_counts`
    tally: ``images``, ``inputs`` (layer -> [non-zero inputs, their synapses reached]),
    ``spikes`` (SL -> output spikes), all sums over the recorded images, and ``in_size``
    (layer -> values one image feeds its weight op per evaluation)."""
    images = tally["images"]
    if not images:
        raise ValueError("no image was recorded: run the model inside recording_counts first")
    steps = model.steps or 1
    rows = []
    for i, info in enumerate(model.layers):
        evals = steps if info.part == "SL" and info.per_step else 1
        out_size = math.prod(info.out_shape)
        has_op = i in model.weight_ops
        events, reached = (x / images for x in tally["inputs"][i]) if has_op else (0.0, 0.0)
        op = model.weight_ops.get(i)
        kernel = math.prod(op.kernel_size) if isinstance(op, nn.Conv2d) else 1
        in_size = tally["in_size"].get(i, 0)
        spiking = info.part == "SL"
        by_spikes = has_op and info.fed_by == "spikes"
        dense = float(info.macs * evals)
        rows.append(
            LayerCounts(
                index=i,
                token=info.token,
                part=info.part,
                op=info.op,
                fed_by=info.fed_by,
                evaluations=evals,
                in_size=in_size,
                out_size=out_size if has_op or spiking else 0,
                weights=sum(p.numel() for p in op.parameters()) if has_op else 0,
                kernel_area=kernel,
                out_channels=info.out_shape[0] if has_op else 0,
                dense_macs=dense if has_op else 0.0,
                macs=0.0 if by_spikes or not has_op else dense,
                effective_macs=0.0 if by_spikes else reached,
                acs=reached if by_spikes else 0.0,
                input_events=events,
                bias_adds=float(out_size * evals) if has_op else 0.0,
                steps=steps if spiking else 0,
                out_spikes=tally["spikes"].get(i, 0.0) / images if spiking else 0.0,
                neuron=neuron_cost(layer_neuron_params(model, i)) if spiking else None,
            )
        )
    return rows


def ops_summary(model: HybridNet, tally: Mapping[str, Any]) -> dict[str, Any]:
    """What a results file records about one test pass: per-image dense and effective
    MACs, exact ACs, the energy (uJ) under every energy model (`hnn_bridge.energy`), the
    mean input rate of every spike-fed layer and the per-layer counts."""
    from .energy import ENERGY_MODELS, energy_pj

    layers = exact_counts(model, tally)
    rates = {
        f"{info.token}#{i}": (row.input_events / (row.in_size * row.evaluations) if row.in_size else 0.0)
        for i, (info, row) in enumerate(zip(model.layers, layers))
        if info.part == "SL" and info.fed_by == "spikes"
    }
    macs = sum(r.macs for r in layers)
    acs = sum(r.acs for r in layers)
    energies = {name: energy_pj(name, layers) / 1e6 for name in ENERGY_MODELS}
    return {
        "macs": macs,
        "acs": acs,
        "energy_uj": energies["ops"],
        "dense_macs": sum(r.dense_macs for r in layers),
        "effective_macs": sum(r.effective_macs for r in layers),
        "neuron_updates": sum(r.neuron_steps for r in layers),
        "out_spikes": sum(r.out_spikes for r in layers),
        "energy": energies,
        "input_rates": rates,
        "counts": [r.as_dict() for r in layers],
    }


def assumed_counts(
    model: HybridNet, rate: float | Mapping[int, float], out_rate: float | Mapping[int, float] | None = None
) -> list[LayerCounts]:
    """`LayerCounts` without a forward pass, for `describe`: every value fed to a layer
    non-zero, every spike-fed layer's inputs firing at ``rate`` (spikes per neuron and
    step; or a mapping layer index -> its rate) uniformly over the positions, each spike
    with the real fan-out of its position, and every SL's outputs at ``out_rate`` (the
    same as ``rate`` when None)."""
    out_rate = rate if out_rate is None else out_rate

    def pick(rates: float | Mapping[int, float], i: int) -> float:
        r = float(rates[i]) if isinstance(rates, Mapping) else float(rates)
        if not 0.0 <= r <= 1.0:
            raise ValueError(
                f"firing rate must be in [0, 1], got {r} for layer {i} ({model.layers[i].token})"
            )
        return r

    steps = model.steps or 1
    tally: dict[str, Any] = {"images": 1, "inputs": {}, "spikes": {}, "in_size": {}}
    shape = tuple(model.settings["input_shape"])
    for i, info in enumerate(model.layers):
        op = model.weight_ops.get(i)
        if op is not None:
            in_shape = (op.in_features,) if isinstance(op, nn.Linear) else (op.in_channels, *shape[-2:])
            fan = fanout_map(op, in_shape)
            size = math.prod(in_shape)
            evals = steps if info.part == "SL" and info.per_step else 1
            share = pick(rate, i) if info.fed_by == "spikes" else 1.0
            reached = fan * size if isinstance(fan, int) else float(fan.sum()) * in_shape[0]
            tally["inputs"][i] = [share * size * evals, share * reached * evals]
            tally["in_size"][i] = size
        if info.part == "SL":
            tally["spikes"][i] = pick(out_rate, i) * math.prod(info.out_shape) * steps
        shape = info.out_shape
    return exact_counts(model, tally)

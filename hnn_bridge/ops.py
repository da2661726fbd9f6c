"""Operation counts and energy estimate of one inference (the paper's energy argument, §1).

- ALs: multiply-accumulates (MACs), once per image;
- SLs fed by real values (the first SL after duplicate or Gaussian coding): MACs at
  every step, or once per image when the coded train is constant (duplicate coding:
  the weighted input is computed once and held for T steps);
- SLs fed by spikes: accumulates (ACs), one per presynaptic spike and synapse, i.e.
  rate x (MACs of the dense-equivalent op) x T, with `rate` the presynaptic firing rate.

Energy at 45 nm, float32 (Horowitz, ISSCC 2014): 4.6 pJ per MAC, 0.9 pJ per AC. Neuron
state updates, pooling and coders are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from .builder import HybridNet

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
    """Count one image's operations. ``rate`` is the presynaptic firing rate of every
    spike-fed layer, or a mapping from layer index (into ``model.layers``) to its
    measured input rate; layers missing from the mapping are an error."""
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


def ops_summary(model: HybridNet, rates: Mapping[int, float]) -> dict[str, object]:
    """Per-image MACs, ACs and energy (uJ) at measured input rates, for results files."""
    report = count_ops(model, rates)
    return {"macs": report.macs, "acs": report.acs, "energy_uj": report.energy_pj / 1e6,
            "input_rates": {model.layers[i].token + f"#{i}": r for i, r in sorted(rates.items())}}

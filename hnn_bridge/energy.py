"""Energy models as named data: per-image energy from the exact counts of `hnn_bridge.ops`.

Every constant and its source is in this file; `ENERGY_MODELS` names the models:

- ``"ops"`` (the default, comparable with the paper's and the field's usual figure):
  Horowitz (ISSCC 2014), 45 nm, float32: 4.6 pJ per MAC, 0.9 pJ per AC; MACs are the
  dense MACs of the layers fed by real values, ACs the exact synaptic operations of
  the layers fed by spikes. Neuron updates and memory are not counted.
- ``"simple"``: SpikingJelly 2.0's simple composite model (``estimate_simple_energy``):
  the ``ops`` prices plus 24.96 pJ per byte of weights and biases read and of neuron
  state read and written every step, whatever the memory's size; the IIR neuron's
  multiplies and adds priced as MACs and ACs.
- ``"lemaire"``: the memory-aware analytical model of Lemaire et al. 2022 ("An
  analytical estimation of spiking neural networks energy efficiency", ICONIP 2022,
  arXiv 2210.13107) in the form SpikingJelly 2.0 implements it
  (``op_counter.estimate_lemaire_energy``): 32-bit integer arithmetic (0.1 pJ per add,
  3.1 pJ per multiply), address computations, and SRAM reads and writes of inputs,
  weights, outputs and neuron state, each priced per byte by the size of the memory
  that holds it (interpolated between 8 kB, 32 kB and 1 MB levels). One image at a
  time (batch 1), 4-byte words, 1000-message spike FIFOs between layers.

  Where this model departs from SpikingJelly's on purpose (`tests/test_energy.py`
  measures each):

  * a spike's synaptic operations and weight, address and potential accesses use the
    real fan-out of its position (SpikingJelly: C_out x k x k for every spike of a
    convolution, padding ignored);
  * the IIR neuron updates its own state (eq. 1): the multiplies and adds of
    `hnn_bridge.ops.NeuronCost` and one read and write per state word and step, each
    state word in a memory of its own of the layer's size; SpikingJelly counts a LIF
    node's leak as one MAC and one potential word, and knows no other neuron;
  * the outputs of ALs are written to memory in a hybrid network too (SpikingJelly
    drops them from any network that holds a spiking neuron).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .errors import ConfigError
from .ops import ENERGY_NOTE, PJ_PER_AC, PJ_PER_MAC, LayerCounts


class EnergyModelError(ConfigError):
    """An unknown energy model, or a layer that a model cannot count."""


# --- Lemaire et al. 2022, as SpikingJelly 2.0 sets it (LemaireEnergyCostConfig) ---
LEMAIRE_PJ_ADD = 0.1  # 32-bit integer add, 45 nm (Horowitz 2014)
LEMAIRE_PJ_MUL = 3.1  # 32-bit integer multiply, 45 nm (Horowitz 2014)
LEMAIRE_WORD_BYTES = 4
# (memory size in bytes, pJ per byte accessed): 10 / 20 / 100 pJ per 32-bit access of an
# 8 kB / 32 kB / 1 MB SRAM (Lemaire et al. 2022 after Horowitz 2014), linear in between,
# from 0 at 0 bytes, constant above 1 MB
LEMAIRE_MEMORY_LEVELS = (
    (0.0, 0.0),
    (8 * 1024.0, 10.0 / 4),
    (32 * 1024.0, 20.0 / 4),
    (1024 * 1024.0, 100.0 / 4),
)
LEMAIRE_FIFO_MESSAGES = 1000  # spike FIFO between layers, in messages (the paper's experiments)


def memory_pj_per_byte(size_bytes: float) -> float:
    """Lemaire's cost of one byte accessed in an SRAM of ``size_bytes`` (`LEMAIRE_MEMORY_LEVELS`)."""
    levels = LEMAIRE_MEMORY_LEVELS
    size = max(levels[0][0], min(size_bytes, levels[-1][0]))
    for (x0, y0), (x1, y1) in zip(levels, levels[1:]):
        if size <= x1:
            return y0 + (y1 - y0) / (x1 - x0) * (size - x0)
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class EnergyModel:
    """A named energy model: ``terms(layer)`` gives one layer's energy in pJ per image, by term."""

    name: str
    title: str
    note: str
    terms: Callable[[LayerCounts], dict[str, float]]


def _ops_terms(c: LayerCounts) -> dict[str, float]:
    return {"mac": c.macs * PJ_PER_MAC, "ac": c.acs * PJ_PER_AC}


def _access(words: float, memory_words: float) -> float:
    """pJ of ``words`` 4-byte accesses to a memory of ``memory_words`` words."""
    return words * LEMAIRE_WORD_BYTES * memory_pj_per_byte(memory_words * LEMAIRE_WORD_BYTES)


def _lemaire_terms(c: LayerCounts) -> dict[str, float]:
    """One layer under Lemaire et al. 2022 (see the module docstring). Terms: ``ops``
    (arithmetic), ``addressing``, ``inout`` (input reads, output writes), ``params``
    (weight and bias reads), ``potential`` (membrane), ``state`` (the IIR neuron's
    other state words)."""
    t = {"ops": 0.0, "addressing": 0.0, "inout": 0.0, "params": 0.0, "potential": 0.0, "state": 0.0}
    fifo = LEMAIRE_FIFO_MESSAGES
    if c.in_size:  # a weight op
        per_eval_out = c.out_size
        t["ops"] += c.bias_adds * LEMAIRE_PJ_ADD
        if c.fed_by == "spikes":
            t["ops"] += c.acs * LEMAIRE_PJ_ADD
            t["addressing"] += c.acs * LEMAIRE_PJ_ADD
            if c.op == "conv":
                t["addressing"] += 2 * c.input_events * (LEMAIRE_PJ_MUL + LEMAIRE_PJ_ADD)
            t["inout"] += _access(c.input_events, fifo)
            t["params"] += _access(c.acs + c.bias_adds, c.weights)
            t["potential"] += 2 * _access(c.acs, per_eval_out)
        else:
            t["ops"] += c.macs * (LEMAIRE_PJ_MUL + LEMAIRE_PJ_ADD)
            extra = c.out_channels * c.kernel_area if c.op == "conv" else 0  # kernel addresses
            t["addressing"] += (c.in_size + per_eval_out + extra) * c.evaluations * LEMAIRE_PJ_ADD
            read = c.in_size if c.op == "dense" else c.dense_macs / c.evaluations
            t["inout"] += _access(read * c.evaluations, c.in_size)
            t["params"] += _access(c.dense_macs + c.bias_adds, c.weights)
            if c.part != "SL":  # an AL's outputs are written; an SL's go into the potentials
                t["inout"] += _access(per_eval_out * c.evaluations, per_eval_out)
    if c.neuron is not None:
        n, steps = c.out_size, c.steps
        cost = c.neuron
        t["ops"] += (cost.mul_per_step * n * steps) * LEMAIRE_PJ_MUL
        t["ops"] += (cost.add_per_step * n * steps + cost.add_per_spike * c.out_spikes) * LEMAIRE_PJ_ADD
        t["potential"] += 2 * _access(n * steps, n)
        t["state"] += (cost.reads_per_step - 1 + cost.writes_per_step - 1) * _access(n * steps, n)
        t["inout"] += _access(c.out_spikes, fifo)
    return t


# --- SpikingJelly 2.0's simple composite model (SimpleEnergyCostConfig.fp32) ---
SIMPLE_PJ_PER_BYTE = 24.96  # 3.12 pJ per bit of SRAM access, as cited by STEP (SpikingJelly's default)


def _simple_terms(c: LayerCounts) -> dict[str, float]:
    """SpikingJelly's ``estimate_simple_energy``: Horowitz compute plus 24.96 pJ per byte
    of weights and biases read and of neuron state read and written each step. Terms:
    ``mac``, ``ac`` (Horowitz prices) and ``memory``. Arithmetic as counted here: the
    weight ops' MACs and ACs, one add per bias use, and the IIR neuron's multiplies (as
    MACs) and adds of `hnn_bridge.ops.NeuronCost` (SpikingJelly counts every element of
    every tensor operation of its own neuron code instead)."""
    t = {"mac": c.macs * PJ_PER_MAC, "ac": (c.acs + c.bias_adds) * PJ_PER_AC, "memory": 0.0}
    word = LEMAIRE_WORD_BYTES
    if c.in_size:
        weight_uses = c.acs if c.fed_by == "spikes" else c.dense_macs
        t["memory"] += (weight_uses + c.bias_adds) * word * SIMPLE_PJ_PER_BYTE
    if c.neuron is not None:
        n_steps = c.out_size * c.steps
        t["mac"] += c.neuron.mul_per_step * n_steps * PJ_PER_MAC
        t["ac"] += (c.neuron.add_per_step * n_steps + c.neuron.add_per_spike * c.out_spikes) * PJ_PER_AC
        t["memory"] += (
            (c.neuron.reads_per_step + c.neuron.writes_per_step) * n_steps * word * SIMPLE_PJ_PER_BYTE
        )
    return t


ENERGY_MODELS: dict[str, EnergyModel] = {
    "ops": EnergyModel(
        "ops", "compute only (Horowitz 2014)", f"{ENERGY_NOTE}; no memory, no neuron updates", _ops_terms
    ),
    "lemaire": EnergyModel(
        "lemaire",
        "memory-aware (Lemaire et al. 2022)",
        f"Lemaire et al. 2022: 32-bit integer ops ({LEMAIRE_PJ_ADD} pJ add, {LEMAIRE_PJ_MUL} pJ mul), "
        "addressing, "
        "SRAM reads and writes of inputs, weights, outputs and neuron state priced by memory size "
        "(2.5 / 5 / 25 pJ per byte at 8 kB / 32 kB / 1 MB), IIR neuron updates (eq. 1)",
        _lemaire_terms,
    ),
    "simple": EnergyModel(
        "simple",
        "compute and memory (SpikingJelly 2.0's simple model)",
        f"45 nm, float32: {PJ_PER_MAC} pJ per MAC, {PJ_PER_AC} pJ per AC (Horowitz 2014) and "
        f"{SIMPLE_PJ_PER_BYTE} pJ "
        "per byte of weights and biases read and of neuron state read and written each step, at any "
        "memory size; "
        "IIR neuron updates (eq. 1)",
        _simple_terms,
    ),
}
DEFAULT_ENERGY_MODEL = "ops"


def energy_model(name: str) -> EnergyModel:
    """The model named ``name``; an unknown name raises `EnergyModelError` listing the known ones."""
    try:
        return ENERGY_MODELS[name]
    except KeyError:
        raise EnergyModelError(
            f"unknown energy model {name!r}; choose one of {', '.join(ENERGY_MODELS)}"
        ) from None


_COUNTABLE = {"input", "dense", "conv", "pool"}


def layer_terms(name: str, layers: Sequence[LayerCounts]) -> list[dict[str, float]]:
    """Per-layer energy terms (pJ per image) under the model ``name``. Pooling and the
    weightless input token cost nothing in either model (max pooling of spikes is an OR
    on the way to the next layer's FIFO). A layer kind the model cannot count raises
    `EnergyModelError` naming the layer and the model."""
    model = energy_model(name)
    out = []
    for c in layers:
        if c.op not in _COUNTABLE:
            raise EnergyModelError(
                f"energy model {name!r} cannot count layer {c.index + 1} ({c.token!r}, a {c.op!r} layer)"
            )
        out.append(model.terms(c))
    return out


def energy_pj(name: str, layers: Sequence[LayerCounts]) -> float:
    """Energy per image (pJ) under the model ``name``."""
    return sum(sum(t.values()) for t in layer_terms(name, layers))


def energy_note(name: str) -> str:
    """One line naming the model and its constants, for tables and plots."""
    m = energy_model(name)
    return f"energy model {m.name!r}, {m.title}: {m.note}"


def counts_from_record(record: Mapping[str, object]) -> list[LayerCounts]:
    """The `LayerCounts` stored in a results file's ``ops`` record."""
    return [LayerCounts.from_dict(d) for d in record["counts"]]  # type: ignore[union-attr]

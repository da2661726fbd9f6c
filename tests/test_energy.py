"""Exact operation counts and the energy models (`hnn_bridge.ops`, `hnn_bridge.rates`,
`hnn_bridge.energy`), cross-checked against the field's own tools: SpikingJelly 2.0's
``op_counter`` (``SynOpCounter``, ``MACCounter``, ``estimate_lemaire_energy``) and
NeuroBench's ``SynapticOperations`` (skipped where NeuroBench is not installed: its
PyPI requirements pull torchaudio, which would replace the pinned torch, so it is not
in the ``test`` extra; ``pip install --no-deps neurobench`` adds it)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from hnn_bridge import build
from hnn_bridge.cli import main
from hnn_bridge.energy import (
    ENERGY_MODELS,
    LEMAIRE_FIFO_MESSAGES,
    EnergyModelError,
    counts_from_record,
    energy_model,
    energy_pj,
    layer_terms,
    memory_pj_per_byte,
)
from hnn_bridge.ops import (
    LayerCounts,
    assumed_counts,
    count_ops,
    exact_counts,
    fanout_map,
    neuron_cost,
    ops_summary,
)
from hnn_bridge.params import IIRParams
from hnn_bridge.rates import recording_counts

# the paper's MLP and CNN shapes, scaled down; pure SNN and hybrid, every coder
NETS = [
    ("S64-S32-S10", "poisson", (1, 8, 8)),
    ("A64-A32-S32-S10", "duplicate", (1, 8, 8)),
    ("A64-S32-S10", "gaussian", (1, 8, 8)),
    ("S8C3-P2-S16C3-S10", "poisson", (1, 8, 8)),
    ("A8C3-S16C3-P2-S10", "duplicate", (3, 8, 8)),
    ("A8C3-P2-S16C3-S10", "gaussian", (3, 8, 8)),
]
IF_NEURON = dict(membrane_decay=1.0, reset_decay=0.0, synapse="none")  # = IFNode(v_reset=None)


def _net(arch: str, coder: str, shape: tuple[int, ...], steps: int = 6, neuron=None) -> nn.Module:
    torch.manual_seed(0)
    model = build(arch, coder=coder, steps=steps, input_shape=shape, neuron=neuron).eval()
    for i, op in model.weight_ops.items():  # fire enough to count: larger weights in SLs
        if model.layers[i].part == "SL":
            with torch.no_grad():
                op.weight.mul_(3.0)
    return model


def _counted(model: nn.Module, x: torch.Tensor) -> list[LayerCounts]:
    with torch.no_grad(), recording_counts(model) as tally:
        model(x)
    return exact_counts(model, tally)


def _brute_force_synapses(x: torch.Tensor, conv: nn.Conv2d) -> float:
    """Synapses reached by the non-zero inputs of ``conv``, by walking every input, every
    output channel and every kernel offset (float64, independent of `fanout_map`)."""
    n, c, h, w = x.shape
    k, (s, _), (p, _) = conv.kernel_size[0], conv.stride, conv.padding
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    total = 0.0
    for b, ci, i, j in torch.nonzero(x).tolist():
        for di in range(k):
            for dj in range(k):
                oi, oj = i + p - di, j + p - dj
                if oi % s == 0 and oj % s == 0 and 0 <= oi // s < ho and 0 <= oj // s < wo:
                    total += conv.out_channels
    return total


# ------------------------------------------------------------------ exact counts


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_fanout_map_is_the_real_reach_of_every_position(stride: int, padding: int) -> None:
    conv = nn.Conv2d(2, 5, 3, stride=stride, padding=padding)
    x = (torch.rand(3, 2, 7, 7) < 0.3).double()
    fan = fanout_map(conv, (2, 7, 7))
    assert float((x.sum((0, 1)) * fan).sum()) == _brute_force_synapses(x, conv)
    if (stride, padding) == (1, 1):  # a corner reaches 2 x 2 outputs, the centre 3 x 3
        assert (fan[0, 0].item(), fan[3, 3].item()) == (4 * 5, 9 * 5)


def test_recorded_acs_of_a_spiking_cnn_equal_a_brute_force_count() -> None:
    model = _net("S8C3-P2-S16C3-S10", "poisson", (1, 8, 8))
    seen = {}
    model.weight_ops[2].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].clone()))
    counts = _counted(model, torch.rand(2, 1, 8, 8))
    # layer 2 (S16C3) is fed by the pooled spikes of S8C3: 4 x 4 maps, padded borders
    assert counts[2].acs == _brute_force_synapses(seen["x"], model.weight_ops[2]) / 2
    assert counts[2].input_events == float(seen["x"].sum()) / 2
    # the old estimate, mean rate x dense MACs x T, runs high on the padded convolution
    rate = counts[2].input_events / (counts[2].in_size * counts[2].evaluations)
    assert count_ops(model, {0: 0.5, 2: rate, 3: 0.5}).layers[2].acs == pytest.approx(
        counts[2].acs * (16 / 9), rel=0.35
    )
    assert count_ops(model, {0: 0.5, 2: rate, 3: 0.5}).layers[2].acs > counts[2].acs


@pytest.mark.parametrize("arch,coder,shape", NETS)
def test_macs_and_acs_equal_spikingjelly_op_counter(arch: str, coder: str, shape: tuple[int, ...]) -> None:
    """Our dense MACs and exact ACs per image against SpikingJelly's MACCounter and
    SynOpCounter on the same batch: equal to the last operation."""
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    model = _net(arch, coder, shape)
    x = torch.rand(4, *shape)
    torch.manual_seed(1)
    counts = _counted(model, x)
    macs, synops = MACCounter(), SynOpCounter()
    torch.manual_seed(1)  # the same Poisson and Gaussian draws
    with torch.no_grad(), DispatchCounterMode([macs, synops]):
        model(x)
    assert sum(c.acs for c in counts) * 4 == synops.get_total()
    assert sum(c.macs for c in counts) * 4 == macs.get_total()
    assert sum(c.acs for c in counts) > 0 and (coder == "poisson" or sum(c.macs for c in counts) > 0)


@pytest.mark.parametrize("arch,coder,shape", NETS)
def test_effective_counts_equal_neurobench_synaptic_operations(
    arch: str, coder: str, shape: tuple[int, ...]
) -> None:
    """Effective MACs (zero inputs skipped) and ACs against NeuroBench 2.3's
    SynapticOperations. Its 'Dense' counts every input with the real fan-out (padding
    reaches nothing), where our dense MACs count k x k per output as executed: it equals
    our effective MACs + ACs with every input non-zero (`assumed_counts` at rate 1)."""
    pytest.importorskip("neurobench", reason="NeuroBench is not installed (pip install --no-deps neurobench)")
    from neurobench.metrics.workload import SynapticOperations
    from neurobench.models import TorchModel

    model = _net(arch, coder, shape)
    x = torch.rand(4, *shape)
    torch.manual_seed(1)
    counts = _counted(model, x)
    wrapped = TorchModel(model)
    wrapped.register_hooks()
    torch.manual_seed(1)
    with torch.no_grad():
        preds = wrapped(x)
    nb = SynapticOperations()(wrapped, preds, (x, None))
    assert nb["Effective_ACs"] == pytest.approx(sum(c.acs for c in counts), rel=1e-12)
    assert nb["Effective_MACs"] == pytest.approx(sum(c.effective_macs for c in counts), rel=1e-12)
    every = assumed_counts(model, 1.0)
    assert nb["Dense"] == pytest.approx(sum(c.effective_macs + c.acs for c in every), rel=1e-12)


def test_effective_macs_skip_relu_zeros() -> None:
    model = _net("A64-A32-S10", "duplicate", (1, 8, 8))
    seen = {}
    model.weight_ops[2].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].clone()))
    counts = _counted(model, torch.rand(3, 1, 8, 8))
    nonzero = float((seen["x"] != 0).sum()) / 3
    assert 0 < nonzero < 32  # some ReLU zeros
    assert counts[2].effective_macs == nonzero * 10
    assert counts[2].macs == counts[2].dense_macs == 32 * 10  # weighed once: the train is constant


# ------------------------------------------------------------------ neuron updates


@pytest.mark.parametrize(
    "settings,expected",
    [
        # IF (lambda = 1, theta = 0, no filter): one add per spike (the reset), V read and written
        (IF_NEURON, (0, 0, 1, 0, 1, 1)),
        # Fang's MNIST neuron: lambda = 0 saves the membrane product and the add of p
        (dict(membrane_decay=0.0), (2 + 0 + 1, 1 + 0 + 1, 1, 3, 4, 3)),
        # the design defaults: dual_exp, lambda = theta = e^(-1/4)
        ({}, (2 + 1 + 1, 1 + 1 + 1, 1, 3, 4, 3)),
        # a first-order synapse and V_th != 1 (the reset product V_th R[t] costs a multiply)
        (dict(synapse="first_order", v_threshold=0.5), (1 + 1 + 2, 0 + 1 + 1, 1, 2, 3, 3)),
        # no synapse, leaky membrane, theta = 0: the LIF-like case
        (dict(synapse="none", reset_decay=0.0), (1, 0, 1, 0, 1, 1)),
    ],
)
def test_neuron_cost_follows_eq_1(settings: dict, expected: tuple[int, ...]) -> None:
    c = neuron_cost(IIRParams(**settings))
    assert (
        c.mul_per_step,
        c.add_per_step,
        c.add_per_spike,
        c.state_words,
        c.reads_per_step,
        c.writes_per_step,
    ) == expected


def test_first_sl_with_direct_input_has_no_synapse_cost() -> None:
    model = _net("A64-S32-S10", "duplicate", (1, 8, 8))
    counts = _counted(model, torch.rand(2, 1, 8, 8))
    assert counts[1].neuron == neuron_cost(IIRParams(synapse="none"))
    assert counts[2].neuron == neuron_cost(IIRParams())
    assert counts[1].neuron_steps == 32 * 6


# ------------------------------------------------------------------ energy models


def _sj_if_mlp(model: nn.Module) -> nn.Module:
    from spikingjelly.activation_based import layer, neuron

    sj = nn.Sequential(
        layer.Linear(64, 32, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
        layer.Linear(32, 10, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
    )
    sj[0].load_state_dict(model.weight_ops[1].state_dict())
    sj[2].load_state_dict(model.weight_ops[2].state_dict())
    return sj


def test_lemaire_model_equals_spikingjelly_estimate_lemaire_energy_on_an_if_mlp() -> None:
    """lambda = 1, theta = 0, no synapse filter: our neuron is IFNode(v_reset=None), spike
    for spike; every Lemaire term of ours equals SpikingJelly's (one image)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import estimate_lemaire_energy

    model = _net("S64-S32-S10", "poisson", (1, 8, 8), steps=8, neuron=IF_NEURON)
    seen = {}
    model.weight_ops[1].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].clone()))
    model.neurons[2].register_forward_hook(lambda m, i, o: seen.setdefault("out", o.clone()))
    counts = _counted(model, torch.rand(1, 1, 8, 8))
    sj = _sj_if_mlp(model)
    spikes = seen["x"].reshape(8, 1, 64)
    with torch.no_grad():
        assert torch.equal(sj(spikes), seen["out"])  # the same network
    functional.reset_net(sj)
    report = estimate_lemaire_energy(sj, spikes)
    assert report.counts["synop"] == sum(c.acs for c in counts) > 0
    ours = {k: sum(t[k] for t in layer_terms("lemaire", counts)) for k in layer_terms("lemaire", counts)[0]}
    assert ours["state"] == 0.0
    assert ours["ops"] == pytest.approx(report.breakdown_pj["ops_pj"], rel=1e-12)
    assert ours["addressing"] == pytest.approx(report.breakdown_pj["addressing_pj"], rel=1e-12)
    assert ours["inout"] == pytest.approx(report.breakdown_pj["inout_pj"], rel=1e-12)
    assert ours["params"] == pytest.approx(report.breakdown_pj["params_pj"], rel=1e-12)
    assert ours["potential"] == pytest.approx(report.breakdown_pj["potential_pj"], rel=1e-12)
    assert energy_pj("lemaire", counts) == pytest.approx(report.total_pj, rel=1e-12)


def test_simple_model_equals_spikingjelly_estimate_simple_energy_on_an_if_mlp() -> None:
    """The memory term (weights and biases read, neuron state read and written per step,
    24.96 pJ per byte) equals SpikingJelly's; the AC count differs by a named convention:
    SpikingJelly counts every element of its IF node's tensor operations (charge, threshold
    subtraction, reset: 3 per neuron and step) and no bias add, we count one add per bias
    use and one reset per spike (the charge is the synaptic accumulation itself)."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.op_counter import estimate_simple_energy

    model = _net("S64-S32-S10", "poisson", (1, 8, 8), steps=8, neuron=IF_NEURON)
    seen = {}
    model.weight_ops[1].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].clone()))
    counts = _counted(model, torch.rand(1, 1, 8, 8))
    sj = _sj_if_mlp(model)
    functional.reset_net(sj)
    report = estimate_simple_energy(sj, seen["x"].reshape(8, 1, 64))
    ours = {k: sum(t[k] for t in layer_terms("simple", counts)) for k in ("mac", "ac", "memory")}
    assert ours["memory"] == pytest.approx(report.breakdown_pj["memory_pj"], rel=1e-12)
    assert ours["mac"] == report.counts["mac"] == 0
    synops, neuron_steps = sum(c.acs for c in counts), sum(c.neuron_steps for c in counts)
    assert report.counts["ac"] == synops + 3 * neuron_steps
    assert ours["ac"] == pytest.approx(
        0.9 * (synops + sum(c.bias_adds for c in counts) + sum(c.out_spikes for c in counts)), rel=1e-12
    )


def test_lemaire_model_on_a_spiking_cnn_differs_from_spikingjelly_by_the_border_fanout_only() -> None:
    """SpikingJelly's Lemaire counter gives every spike of a convolution C_out x k x k
    synapses (padding ignored); ours the real fan-out. With SpikingJelly's fan-out put
    into our counts, every term equals its; with ours, the total is lower."""
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.op_counter import LemaireEnergyConfig, estimate_lemaire_energy

    model = _net("S4C3-S8C3-S10", "poisson", (1, 6, 6), steps=8, neuron=IF_NEURON)
    seen = {}
    model.weight_ops[0].register_forward_pre_hook(lambda m, i: seen.setdefault("x", i[0].clone()))
    model.neurons[2].register_forward_hook(lambda m, i, o: seen.setdefault("out", o.clone()))
    counts = _counted(model, torch.rand(1, 1, 6, 6))
    sj = nn.Sequential(
        layer.Conv2d(1, 4, 3, padding=1, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
        layer.Conv2d(4, 8, 3, padding=1, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
        layer.Flatten(step_mode="m"),
        layer.Linear(8 * 36, 10, step_mode="m"),
        neuron.IFNode(v_reset=None, step_mode="m"),
    )
    for j, i in ((0, 0), (2, 1), (5, 2)):
        sj[j].load_state_dict(model.weight_ops[i].state_dict())
    spikes = seen["x"].reshape(8, 1, 1, 6, 6)
    with torch.no_grad():
        assert torch.equal(sj(spikes), seen["out"])
    functional.reset_net(sj)
    with pytest.warns(RuntimeWarning, match="Flatten"):  # a reshape: no energy in either model
        report = estimate_lemaire_energy(sj, spikes, config=LemaireEnergyConfig(strict=False))
    theirs = [
        dataclasses.replace(c, acs=c.input_events * c.out_channels * c.kernel_area) if c.op == "conv" else c
        for c in counts
    ]
    assert report.counts["synop"] == sum(c.acs for c in theirs)
    assert energy_pj("lemaire", theirs) == pytest.approx(report.total_pj, rel=1e-12)
    assert sum(c.acs for c in counts) < sum(c.acs for c in theirs)
    assert energy_pj("lemaire", counts) < report.total_pj


def test_the_iir_neurons_extra_state_under_lemaire() -> None:
    """The term SpikingJelly has no counterpart for: the synapse and reset state words of
    eq. 1, one read and write per word and step, each in a memory of the layer's size."""
    model = _net("S64-S32-S10", "poisson", (1, 8, 8), steps=8)  # the design defaults
    counts = _counted(model, torch.rand(1, 1, 8, 8))
    terms = layer_terms("lemaire", counts)
    for c, t in zip(counts, terms):
        if c.part == "SL":
            words = c.neuron.reads_per_step + c.neuron.writes_per_step - 2
            per_access = 4 * memory_pj_per_byte(4 * c.out_size)
            assert t["state"] == pytest.approx(words * c.out_size * c.steps * per_access, rel=1e-12)
    # layer 1 takes direct input (no filter): only the reset word; layer 2: p[t-1], p[t-2], R
    assert (counts[1].neuron.state_words, counts[2].neuron.state_words) == (1, 3)


def test_memory_cost_interpolates_lemaires_levels() -> None:
    assert memory_pj_per_byte(0) == 0.0
    assert memory_pj_per_byte(8 * 1024) == 2.5
    assert memory_pj_per_byte(20 * 1024) == pytest.approx(2.5 + 2.5 * 12 / 24)
    assert memory_pj_per_byte(32 * 1024) == 5.0
    assert memory_pj_per_byte(4 * 1024 * 1024) == 25.0  # constant above 1 MB
    assert LEMAIRE_FIFO_MESSAGES == 1000


def test_ops_model_is_horowitz_compute_only() -> None:
    model = _net("A8C3-S16C3-P2-S10", "duplicate", (3, 8, 8))
    counts = _counted(model, torch.rand(2, 3, 8, 8))
    assert energy_pj("ops", counts) == pytest.approx(
        sum(c.macs for c in counts) * 4.6 + sum(c.acs for c in counts) * 0.9, rel=1e-12
    )


def test_results_record_round_trips_every_model() -> None:
    model = _net("S8C3-P2-S16C3-S10", "poisson", (1, 8, 8))
    with torch.no_grad(), recording_counts(model) as tally:
        model(torch.rand(3, 1, 8, 8))
    record = json.loads(json.dumps(ops_summary(model, tally)))
    assert set(record["energy"]) == set(ENERGY_MODELS)
    layers = counts_from_record(record)
    for name in ENERGY_MODELS:
        assert record["energy"][name] == pytest.approx(energy_pj(name, layers) / 1e6, rel=1e-12)
    assert record["energy_uj"] == record["energy"]["ops"]
    assert record["acs"] == sum(c.acs for c in layers) > 0
    # the pooled 8 x 4 x 4 spikes of S8C3 at each of the 6 steps feed S16C3
    assert record["input_rates"]["S16C3#2"] == pytest.approx(
        layers[2].input_events / (8 * 4 * 4 * 6), rel=1e-12
    )


# ------------------------------------------------------------------ errors


def test_unknown_energy_model_and_uncountable_layer_are_named() -> None:
    with pytest.raises(
        EnergyModelError, match=r"^unknown energy model 'horowitz'; choose one of ops, lemaire, simple$"
    ):
        energy_model("horowitz")
    model = _net("S64-S32-S10", "poisson", (1, 8, 8))
    counts = assumed_counts(model, 0.1)
    odd = [*counts[:2], dataclasses.replace(counts[2], op="recurrent")]
    with pytest.raises(
        EnergyModelError,
        match=r"^energy model 'lemaire' cannot count layer 3 \('S10', a 'recurrent' layer\)$",
    ):
        layer_terms("lemaire", odd)
    bad = CliRunner().invoke(main, ["describe", "S64-S10", "--input-shape", "1x8x8", "--energy-model", "x"])
    assert bad.exit_code == 2 and "'x' is not one of 'ops', 'lemaire', 'simple'" in bad.output


def _old_results() -> dict:
    seed = {
        "seed_index": 0,
        "status": "ok",
        "test_acc": 0.9,
        "macs": 1000.0,
        "acs": 2000.0,
        "energy_uj": 1000 * 4.6e-6 + 2000 * 0.9e-6,
        "epochs_run": 1,
        "best_epoch": 1,
    }
    return {
        "recipe": {"name": "t", "title": "t"},
        "seeds": 1,
        "rows": [
            {
                "row": 1,
                "label": "S64-S10",
                "arch": "S64-S10",
                "coder": "poisson",
                "training": "simultaneous",
                "al_share": 0.0,
                "paper": None,
                "status": "ok",
                "seeds": [seed],
                "settings": {
                    "dataset": "mnist",
                    "epochs": 1,
                    "steps": 4,
                    "batch_size": 8,
                    "lr": 1e-3,
                    "dropout": 0.0,
                },
            }
        ],
    }


def test_an_old_results_file_keeps_its_ops_estimate_and_refuses_other_models(tmp_path) -> None:
    (tmp_path / "results.json").write_text(json.dumps(_old_results()))
    ok = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert (
        "ACs: rows recorded before exact counts estimate them as measured mean input rate x dense MACs x T"
        in ok.output
    )
    bad = CliRunner().invoke(main, ["report", str(tmp_path), "--energy-model", "lemaire"])
    assert bad.exit_code == 1
    assert (
        "this results file was written before exact operation counts were recorded, so it holds no energy "
        "under the 'lemaire' model"
    ) in bad.output
    assert "run the recipe again into a new --out with this version" in bad.output


def test_report_picks_the_energy_model(tmp_path) -> None:
    results = _old_results()
    seed = results["rows"][0]["seeds"][0]
    seed["energy"] = {"ops": 0.0064, "lemaire": 0.25}
    (tmp_path / "results.json").write_text(json.dumps(results))
    out = CliRunner().invoke(main, ["report", str(tmp_path), "--energy-model", "lemaire"])
    assert out.exit_code == 0, out.output
    assert "energy (uJ, lemaire)" in out.output and "| 0.250 |" in out.output
    assert "energy model 'lemaire', memory-aware (Lemaire et al. 2022)" in out.output
    assert "ACs: exact, every input spike of the test set" in out.output
    csv = (tmp_path / "results.csv").read_text().splitlines()
    assert csv[1].split(",")[-3:] == ["", "lemaire", "True"] and ",0.25," in csv[1]


def test_describe_prints_the_per_layer_breakdown() -> None:
    out = (
        CliRunner()
        .invoke(
            main,
            [
                "describe",
                "S64-S32-S10",
                "--coder",
                "poisson",
                "--input-shape",
                "1x8x8",
                "-T",
                "4",
                "--rate",
                "0.25",
                "--energy-model",
                "lemaire",
            ],
        )
        .output
    )
    model = build("S64-S32-S10", coder="poisson", steps=4, input_shape=(1, 8, 8))
    counts = assumed_counts(model, 0.25)
    assert counts[1].acs == 0.25 * 64 * 4 * 32 and counts[2].out_spikes == 0.25 * 10 * 4
    total = energy_pj("lemaire", counts)
    assert f"energy {total / 1e6:.4g} uJ per image (lemaire)" in out
    assert "energy by term (pJ per image), model 'lemaire':" in out
    terms = layer_terms("lemaire", counts)[2]
    assert (" 2  S10      " + " ".join(f"{terms[n]:>12,.0f}" for n in terms)) in out
    assert math.isclose(sum(sum(t.values()) for t in layer_terms("lemaire", counts)), total)


def test_assumed_counts_take_a_rate_per_layer() -> None:
    model = build("S8C3-P2-S16C3-S10", coder="poisson", steps=4, input_shape=(1, 8, 8))
    uniform = assumed_counts(model, 0.2)
    per_layer = assumed_counts(model, {0: 0.2, 2: 0.2, 3: 0.2}, {0: 0.2, 2: 0.2, 3: 0.2})
    assert uniform == per_layer
    mixed = assumed_counts(model, {0: 0.5, 2: 0.1, 3: 0.0}, 0.3)
    # S16C3 on 8 x 4 x 4 pooled spikes: each with its position's reach (corners 4, edges 6, inside 9 outputs)
    assert mixed[2].acs == 0.1 * 4 * 8 * 16 * (4 * 4 + 8 * 6 + 4 * 9)
    assert mixed[3].acs == 0.0 and mixed[3].out_spikes == 0.3 * 10 * 4
    with pytest.raises(ValueError, match=r"firing rate must be in \[0, 1\], got 1.5 for layer 2 \(S16C3\)"):
        assumed_counts(model, {0: 0.5, 2: 1.5, 3: 0.1})


@pytest.mark.parametrize("placement", ["after_filter", "before_filter"])
@pytest.mark.parametrize("input_mode", ["direct", "axon"])
def test_layer_settings_agree_with_the_built_network(placement: str, input_mode: str) -> None:
    """The neuron constants counted per SL (read from the settings) are those the network
    runs, wherever its synapse filter sits (`HybridNet.synapse_params`)."""
    from hnn_bridge.ops import layer_neuron_params

    model = build(
        "A64-S32-S16-S10",
        input_shape=(1, 8, 8),
        input_mode=input_mode,
        bias_placement=placement,
        neuron=dict(membrane_decay=0.0, synapse="first_order"),
    )
    for i in model.neurons:
        assert layer_neuron_params(model, i) == model.synapse_params(i)
    assert (layer_neuron_params(model, 1).synapse == "none") == (input_mode == "direct")


def test_pareto_front_keeps_the_rows_nothing_beats() -> None:
    from hnn_bridge.report import pareto_front

    points = [
        (187.4, 64.5),
        (65.1, 54.0),
        (84.8, 57.9),
        (86.4, 59.2),
        (180.9, 61.1),
        (748.3, 57.1),
        (65.1, 53.0),
        (180.9, 61.1),
    ]
    assert pareto_front(points) == [(65.1, 54.0), (84.8, 57.9), (86.4, 59.2), (180.9, 61.1), (187.4, 64.5)]
    assert pareto_front([]) == []


def test_report_prices_a_model_added_after_the_run_from_its_checkpoint_counts(tmp_path) -> None:
    model = _net("S64-S32-S10", "poisson", (1, 8, 8))
    with torch.no_grad(), recording_counts(model) as tally:
        model(torch.rand(2, 1, 8, 8))
    record = ops_summary(model, tally)
    results = _old_results()
    seed = results["rows"][0]["seeds"][0]
    seed.update(job="row1-s0", energy={"ops": record["energy"]["ops"]})
    (tmp_path / "results.json").write_text(json.dumps(results))
    bad = CliRunner().invoke(main, ["report", str(tmp_path), "--energy-model", "lemaire"])
    assert bad.exit_code == 1
    assert (
        "recorded before the energy model 'lemaire' existed and its per-layer counts "
        "(checkpoints/row1-s0.json) are not beside it"
    ) in bad.output
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "row1-s0.json").write_text(json.dumps({"test": {"ops": record}}))
    ok = CliRunner().invoke(main, ["report", str(tmp_path), "--energy-model", "lemaire"])
    assert ok.exit_code == 0, ok.output
    assert f"| {record['energy']['lemaire']:.3f} |" in ok.output

"""Our networks against Fang et al.'s own layer equations (issue 30).

The oracle below is written from the documented arithmetic of Fang et al.'s layer code
(`Snow-Crash/snn-iir`, `snn_lib/snn_layers.py`), not from ours, in float64:

- ``dual_exp_iir_layer`` (the axon): psp[t] = a1 psp[t-1] + a2 psp[t-2] + b1 x[t] on the
  presynaptic signal, a1 = e^(-1/tau_m) + e^(-1/tau_s), a2 = -e^(-(tau_m+tau_s)/(tau_m tau_s)),
  b1 = e^(-1/tau_m) - e^(-1/tau_s), zero initial state;
- ``neuron_layer`` / ``conv2d_layer``: I = W psp + b (an ``nn.Linear`` / conv with bias on
  the filtered signal), V = decay_v V + I - reset (membrane filter on) or V = I - reset
  (off), spike = max(0, sign(V - 1)), i.e. V > 1, and reset = reset_decay reset +
  spike (reset_v = 1), so the reset subtracted at step t holds the spikes up to t-1;
- direct input: a ``neuron_layer`` fed the input itself, without an axon before it.

Their spike rule fires at V > V_th; the paper's eq. 1f, and ours, at V >= V_th. The two
differ only where V lands exactly on the threshold, which the last tests construct.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hnn_bridge.adapters.snntorch import IIRLeaky
from hnn_bridge.adapters.spikingjelly import IIRNode
from spikingjelly.activation_based import functional as sj_functional

from hnn_bridge import build
from hnn_bridge.backends import copy_weights
from hnn_bridge.neuron import IIRNeuron
from hnn_bridge.recipe import Settings

TAU_M, TAU_S, STEPS = 4.0, 1.0, 25
THETA = math.exp(-1.0 / TAU_M)


# ------------------------------------------------------------------------ the oracle


def fang_axon(x_seq: torch.Tensor) -> torch.Tensor:
    """dual_exp_iir_layer over [T, ...] (float64)."""
    a1 = math.exp(-1 / TAU_M) + math.exp(-1 / TAU_S)
    a2 = -math.exp(-(TAU_M + TAU_S) / (TAU_M * TAU_S))
    b1 = math.exp(-1 / TAU_M) - math.exp(-1 / TAU_S)
    prev1 = prev2 = torch.zeros_like(x_seq[0])
    out = []
    for x in x_seq:
        psp = a1 * prev1 + a2 * prev2 + b1 * x
        out.append(psp)
        prev1, prev2 = psp, prev1
    return torch.stack(out)


def fang_neurons(weighted: torch.Tensor, membrane_filter: bool) -> torch.Tensor:
    """neuron_cell over [T, ...] of weighted inputs I = W psp + b (float64)."""
    v = reset = torch.zeros_like(weighted[0])
    spikes = []
    for i in weighted:
        v = v * THETA + i - reset if membrane_filter else i - reset
        spike = torch.clamp(torch.sign(v - 1.0), min=0.0)  # max(0, sign(V - 1)): V > 1
        reset = reset * THETA + spike * 1.0
        spikes.append(spike)
    return torch.stack(spikes)


def fang_network(x: torch.Tensor, layers, *, axon_first: bool, membrane_filter: bool) -> list[torch.Tensor]:
    """Their layers on an image batch x [B, ...] presented at every step; ``layers`` is a
    list of (kind, weight, bias) with kind "dense" or "conv" (3 x 3, padding 1). Returns
    the spikes [T, B, ...] of every layer."""
    signal = x.unsqueeze(0).expand(STEPS, *x.shape).to(torch.float64)
    outputs = []
    for i, (kind, weight, bias) in enumerate(layers):
        psp = signal if i == 0 and not axon_first else fang_axon(signal)
        if kind == "dense":
            weighted = torch.stack([F.linear(p.flatten(1), weight, bias) for p in psp])
        else:
            weighted = torch.stack([F.conv2d(p, weight, bias, padding=1) for p in psp])
        signal = fang_neurons(weighted, membrane_filter)
        outputs.append(signal)
    return outputs


# ------------------------------------------------------------------------ our side


def _ours(
    arch: str,
    shape,
    *,
    input_mode: str,
    membrane_filter: bool,
    backend: str = "reference",
    bias_placement: str = "after_filter",
):
    neuron = dict(
        tau_m=TAU_M,
        tau_s=TAU_S,
        membrane_decay=THETA if membrane_filter else 0.0,
        reset_decay=THETA,
        synapse="dual_exp",
        v_threshold=1.0,
        sigma=0.4,
    )
    return (
        build(
            arch,
            coder="duplicate",
            steps=STEPS,
            input_shape=shape,
            input_mode=input_mode,
            neuron=neuron,
            backend=backend,
            bias_placement=bias_placement,
        )
        .double()
        .eval()
    )


def _set_weights(model, seed: int, scale: float, bias_scale: float):
    """Random weights and biases of every SL (in layer order) -> [(kind, W, b)] for the oracle."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for index in sorted(model.neurons):
        op = model.weight_ops[index]
        weight = (torch.rand(op.weight.shape, generator=g, dtype=torch.float64) - 0.35) * scale
        bias = (torch.rand(op.weight.shape[0], generator=g, dtype=torch.float64) - 0.5) * bias_scale
        with torch.no_grad():
            op.weight.copy_(weight)
            target = op.bias if op.bias is not None else model.biases[index].bias
            target.copy_(bias)
        layers.append(("conv" if op.weight.dim() == 4 else "dense", weight, bias))
    return layers


def _spikes_of(model, x: torch.Tensor) -> list[torch.Tensor]:
    seen = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, k=k: seen.__setitem__(k, out.detach()))
        for k, m in model.neurons.items()
    ]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return [seen[k] for k in sorted(seen)]


def _compare(
    arch, shape, *, input_mode, membrane_filter, seed=0, scale=0.25, bias_scale=1.0, backend="reference"
):
    model = _ours(arch, shape, input_mode=input_mode, membrane_filter=membrane_filter, backend=backend)
    layers = _set_weights(model, seed, scale, bias_scale)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    ours = _spikes_of(model, x)
    theirs = fang_network(x, layers, axon_first=input_mode == "axon", membrane_filter=membrane_filter)
    return ours, theirs


def _assert_identical(ours, theirs):
    assert len(ours) == len(theirs)
    for k, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, (k, a.shape, b.shape)
        assert 0.02 < b.mean() < 0.97, f"layer {k} fires at {float(b.mean()):.3f}: choose other weights"
        assert torch.equal(a, b), f"layer {k}: {int((a != b).sum())} of {a.numel()} spike slots differ"


# ------------------------------------------------------------------------ tests


@pytest.mark.parametrize("membrane_filter", [False, True], ids=["lambda0", "membrane-filter"])
@pytest.mark.parametrize("input_mode", ["axon", "direct"])
def test_mlp_with_biases_equals_fang_layers_spike_for_spike(input_mode, membrane_filter):
    # their snn_mlp_1 (784-500-500-10, axon input, dual-exponential synapse), at a smaller input
    scale = {("axon", False): 0.3, ("axon", True): 0.3, ("direct", False): 0.4, ("direct", True): 0.15}
    ours, theirs = _compare(
        "S64-S40-S30-S10",
        (1, 8, 8),
        input_mode=input_mode,
        membrane_filter=membrane_filter,
        scale=scale[input_mode, membrane_filter],
    )
    _assert_identical(ours, theirs)
    assert any(s.sum(0).max() >= 3 for s in theirs)  # neurons fire repeatedly: the reset path is exercised


@pytest.mark.parametrize("input_mode", ["axon", "direct"])
def test_spiking_convolution_with_biases_equals_fang_conv2d_layer(input_mode):
    ours, theirs = _compare(
        "S6C3-S5C3-S10",
        (2, 6, 6),
        input_mode=input_mode,
        membrane_filter=False,
        scale=0.5 if input_mode == "axon" else 0.9,
        seed=3,
    )
    _assert_identical(ours, theirs)


@pytest.mark.parametrize("backend", ["spikingjelly", "snntorch"])
def test_every_backend_gives_the_fang_spikes(backend):
    ours, theirs = _compare(
        "S64-S40-S10", (1, 8, 8), input_mode="axon", membrane_filter=False, scale=0.3, backend=backend, seed=5
    )
    _assert_identical(ours, theirs)


def test_the_bias_before_the_filter_is_another_network():
    """The placement of every run before 2026-12-06: equal to Fang's without biases, not with."""
    shape = (1, 8, 8)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    old = _ours(
        "S64-S40-S10", shape, input_mode="axon", membrane_filter=False, bias_placement="before_filter"
    )
    assert not old.filters and not old.biases
    layers = _set_weights(_ours("S64-S40-S10", shape, input_mode="axon", membrane_filter=False), 2, 0.3, 1.0)
    for bias_scale, equal in ((0.0, True), (1.0, False)):
        with torch.no_grad():
            for (_, weight, bias), index in zip(layers, sorted(old.neurons)):
                old.weight_ops[index].weight.copy_(weight)
                old.weight_ops[index].bias.copy_(bias * bias_scale)
        theirs = fang_network(
            x, [(k, w, b * bias_scale) for k, w, b in layers], axon_first=True, membrane_filter=False
        )
        assert all(torch.equal(a, b) for a, b in zip(_spikes_of(old, x), theirs)) is equal


def test_a_filtered_bias_settles_at_the_filter_gain():
    """Why the placement matters: a constant bias c through the filter enters at b1 c and
    settles at c b1 / (1 - a1 - a2) = 2.9388 c for tau_m = 4, tau_s = 1 (issue 30); our
    filter, run alone, gives the same sequence."""
    from hnn_bridge.functional import synapse_filter
    from hnn_bridge.params import IIRParams

    c = torch.ones(200, 1, dtype=torch.float64)
    filtered = fang_axon(c)
    assert float(filtered[0]) == pytest.approx(0.4109, abs=1e-4)
    assert float(filtered[-1]) == pytest.approx(2.9388, abs=1e-4)
    assert float(filtered[STEPS - 1]) == pytest.approx(2.9320, abs=1e-4)  # at T = 25 not yet settled
    assert torch.allclose(
        synapse_filter(c, IIRParams(tau_m=TAU_M, tau_s=TAU_S)), filtered, rtol=1e-15, atol=0
    )


@pytest.mark.parametrize("make", ["IIRNeuron", "IIRNode", "IIRLeaky"])
def test_drop_in_neurons_offer_fang_post_filter_bias(make):
    """``post_filter_bias``: a bias-free weight op then our neuron gives Fang's layer."""
    torch.manual_seed(0)
    weight = (torch.rand(30, 20, dtype=torch.float64) - 0.3) * 0.4
    bias = torch.rand(30, dtype=torch.float64) - 0.5
    x_seq = (torch.rand(STEPS, 4, 20, dtype=torch.float64) < 0.4).to(torch.float64)  # presynaptic spikes
    theirs = fang_neurons(torch.stack([F.linear(p, weight, bias) for p in fang_axon(x_seq)]), False)
    current = torch.stack([F.linear(s, weight) for s in x_seq])  # no bias in the weight op
    kwargs = dict(tau_m=TAU_M, tau_s=TAU_S, membrane_decay=0.0, reset_decay=THETA, post_filter_bias=30)
    if make == "IIRNeuron":
        neuron = IIRNeuron(**kwargs).double()
        with torch.no_grad():
            neuron.bias.copy_(bias)
        ours = neuron(current)
    elif make == "IIRNode":
        neuron = IIRNode(**kwargs).double()
        with torch.no_grad():
            neuron.bias.copy_(bias)
        ours = neuron(current)
        sj_functional.reset_net(neuron)
    else:
        neuron = IIRLeaky(**kwargs).double()
        with torch.no_grad():
            neuron.bias.copy_(bias)
        mem, steps = neuron.init_leaky(), []
        for cur in current:
            spk, mem = neuron(cur, mem)
            steps.append(spk)
        ours = torch.stack(steps)
    assert 0.05 < float(theirs.mean()) < 0.9
    assert torch.equal(ours, theirs)
    # the default (no post-filter bias) filters a bias inside the current: another layer
    plain = {"IIRNeuron": IIRNeuron, "IIRNode": IIRNode, "IIRLeaky": IIRLeaky}[make]
    assert plain(tau_m=TAU_M).bias is None


def test_post_filter_bias_gets_its_gradient():
    neuron = IIRNeuron(post_filter_bias=(3, 1, 1), membrane_decay=0.0).double()
    x = torch.randn(STEPS, 2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    neuron(x).sum().backward()
    assert neuron.bias.grad.shape == (3, 1, 1) and neuron.bias.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"post_filter_bias must be a positive int .* got 0"):
        IIRNeuron(post_filter_bias=0)


def test_threshold_boundary_ours_fires_at_equality_fang_does_not():
    """eq. 1f: U(0) = 1, so V = V_th exactly fires here; Fang's max(0, sign(V - 1)) does not."""
    weighted = torch.full(
        (3, 1, 1), 1.0, dtype=torch.float64
    )  # V[0] = 1.0 exactly (direct input, lambda = 0)
    theirs = fang_neurons(weighted, membrane_filter=False)
    ours = IIRNeuron(synapse="none", membrane_decay=0.0, reset_decay=THETA).double()(weighted)
    assert theirs.flatten().tolist() == [0.0, 0.0, 0.0]
    assert ours.flatten().tolist() == [1.0, 0.0, 0.0]  # fired at V = 1, then the reset holds V below 1
    above = torch.nextafter(weighted, torch.tensor(2.0, dtype=torch.float64))
    assert torch.equal(
        IIRNeuron(synapse="none", membrane_decay=0.0).double()(above)[0],
        fang_neurons(above, membrane_filter=False)[0],
    )


def test_placement_is_recorded_and_old_runs_keep_their_fingerprint():
    new, old = Settings(), Settings(bias_placement="before_filter")
    assert new.bias_placement == "after_filter"
    assert "bias_placement" not in old.identity()  # fingerprints of runs before the change are unchanged
    assert new.identity()["bias_placement"] == "after_filter"  # so --resume never mixes the two
    a = _ours("S64-S40-S10", (1, 8, 8), input_mode="axon", membrane_filter=False)
    b = _ours("S64-S40-S10", (1, 8, 8), input_mode="axon", membrane_filter=False, backend="snntorch")
    copy_weights(a, b)  # the same keys on every backend
    assert a.settings["bias_placement"] == "after_filter"


# Output counts of these nets as the builder before 2026-12-06 (commit 2b83f97) built them,
# computed with that code: bias_placement="before_filter" must rebuild them exactly, so
# that the checkpoints of every earlier run load into the same network.
_OLD_BUILDER = {
    ("S64-S40-S10", (1, 8, 8), "axon", "none"): (
        ["first_op.0.bias", "first_op.0.weight", "sl.1.module.bias", "sl.1.module.weight"],
        [
            [0, 9, 1, 0, 9, 3, 0, 8, 9, 9],
            [0, 9, 1, 1, 7, 3, 0, 7, 9, 6],
            [2, 9, 2, 2, 7, 3, 1, 7, 8, 6],
            [0, 9, 4, 1, 8, 2, 0, 8, 7, 8],
        ],
    ),
    ("S64-S40-S10", (1, 8, 8), "direct", "none"): (
        ["first_op.0.bias", "first_op.0.weight", "sl.1.module.bias", "sl.1.module.weight"],
        [
            [1, 7, 2, 2, 7, 2, 1, 6, 7, 6],
            [2, 6, 2, 3, 6, 2, 2, 6, 7, 5],
            [3, 7, 3, 4, 5, 2, 3, 5, 6, 5],
            [1, 7, 3, 2, 6, 2, 1, 6, 6, 6],
        ],
    ),
    ("S4C3-P2-S6C3-S10", (2, 8, 8), "direct", "batch"): (
        [
            "first_op.0.bias",
            "first_op.0.weight",
            "first_op.1.bias",
            "first_op.1.num_batches_tracked",
            "first_op.1.running_mean",
            "first_op.1.running_var",
            "first_op.1.weight",
            "sl.2.module.bias",
            "sl.2.module.weight",
            "sl.3.module.bias",
            "sl.3.module.num_batches_tracked",
            "sl.3.module.running_mean",
            "sl.3.module.running_var",
            "sl.3.module.weight",
            "sl.6.module.bias",
            "sl.6.module.weight",
            "sl.7.module.bias",
            "sl.7.module.num_batches_tracked",
            "sl.7.module.running_mean",
            "sl.7.module.running_var",
            "sl.7.module.weight",
        ],
        [
            [6, 2, 5, 7, 0, 2, 5, 9, 4, 5],
            [0, 3, 1, 0, 6, 2, 1, 9, 6, 2],
            [5, 2, 10, 6, 0, 9, 6, 0, 2, 5],
            [0, 4, 5, 9, 10, 0, 5, 2, 8, 10],
        ],
    ),
}


@pytest.mark.parametrize("key", list(_OLD_BUILDER), ids=lambda k: f"{k[0]}-{k[2]}-{k[3]}")
def test_before_filter_rebuilds_the_networks_of_earlier_runs(key):
    arch, shape, mode, norm = key
    keys, counts = _OLD_BUILDER[key]
    result = {}
    for placement in ("before_filter", "after_filter"):
        torch.manual_seed(0)
        model = build(
            arch,
            steps=10,
            input_shape=shape,
            input_mode=mode,
            norm=norm,
            neuron={"v_threshold": 0.5},
            bias_placement=placement,
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.add_(0.3)
        x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            result[placement] = (sorted(model.state_dict()), model.train()(x).tolist())
    assert result["before_filter"] == (keys, [[float(c) for c in row] for row in counts])
    # the new form differs wherever an SL has a filter (here: every net has one after its first SL)
    assert result["after_filter"][1] != result["before_filter"][1]


@pytest.mark.parametrize("synapse", ["dual_exp", "first_order", "none"])
def test_synapse_filter_alone_is_the_recurrence_of_each_synapse(synapse):
    from hnn_bridge.functional import synapse_filter
    from hnn_bridge.params import IIRParams

    params = IIRParams(synapse=synapse, tau_m=TAU_M, tau_s=2.0)
    a1, a2, b = params.synapse_coefficients
    x = torch.randn(12, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    p1 = p2 = torch.zeros_like(x[0])
    want = []
    for x_t in x:
        p1, p2 = a1 * p1 + a2 * p2 + b * x_t, p1
        want.append(p1)
    assert torch.allclose(synapse_filter(x, params), torch.stack(want), rtol=1e-14, atol=1e-14)
    # without a filter the current is passed on as it is: no copy, no pass over it
    assert (synapse_filter(x, params) is x) == (synapse == "none")


@pytest.mark.parametrize("synapse", ["dual_exp", "first_order"])
def test_without_biases_both_placements_are_one_network(synapse):
    """By linearity F(W x) = W F(x): with every bias zero the two placements give the same
    spikes, for each synapse kind (with biases they differ: the tests above)."""
    shape = (1, 8, 8)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    counts = []
    for placement in ("after_filter", "before_filter"):
        torch.manual_seed(3)
        model = (
            build(
                "S64-S40-S10",
                coder="duplicate",
                steps=STEPS,
                input_shape=shape,
                input_mode="axon",
                neuron=dict(synapse=synapse, tau_s=2.0, membrane_decay=0.0, v_threshold=0.3),
                bias_placement=placement,
            )
            .double()
            .eval()
        )
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
        counts.append(_spikes_of(model, x))
    assert counts[0][-1].sum() > 0 and all(0.02 < float(s.mean()) < 0.97 for s in counts[0][:-1])
    assert all(torch.equal(a, b) for a, b in zip(*counts))

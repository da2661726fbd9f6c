"""One set of weights, the same spikes on every backend: `build(..., backend=...)` for the
reference core, SpikingJelly (multi-step, and single-step after `set_step_mode(model, "s")`)
and snnTorch (looped over T), plus `make_neuron` and `copy_weights`."""

import pytest
import torch
from helpers import SYNAPSES, rel_err
from hnn_bridge.adapters.snntorch import IIRLeaky
from hnn_bridge.adapters.spikingjelly import IIRNode
from spikingjelly.activation_based import functional
from torch import nn

import hnn_bridge
from hnn_bridge import IIRNeuron, IIRParams, build
from hnn_bridge.backends import BACKENDS, SNNTorchLayer, SpikingJellyLayer, copy_weights, make_neuron

CPU_BACKENDS = ["reference", "spikingjelly", "snntorch"]
NEURON_TYPES = (IIRNeuron, SpikingJellyLayer, SNNTorchLayer)

# (arch, input shape, weight std): a hybrid MLP and a hybrid CNN, small enough to be fast.
NETS = {
    "mlp": ("A64-A48-S32-S10", (1, 8, 8), 0.5),
    "cnn": ("A4C3-P2-S6C3-S8C3-P2-S10", (1, 12, 12), 0.6),
}


def build_all(arch, shape, std, T, synapse, input_mode="direct", coder="duplicate"):
    torch.manual_seed(0)
    ref = build(
        arch,
        backend="reference",
        steps=T,
        input_shape=shape,
        neuron={"synapse": synapse},
        input_mode=input_mode,
        coder=coder,
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if name.endswith("weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    models = {"reference": ref}
    for backend in CPU_BACKENDS[1:]:
        m = build(
            arch,
            backend=backend,
            steps=T,
            input_shape=shape,
            neuron={"synapse": synapse},
            input_mode=input_mode,
            coder=coder,
        )
        models[backend] = copy_weights(ref, m)
    single = build(
        arch,
        backend="spikingjelly",
        steps=T,
        input_shape=shape,
        neuron={"synapse": synapse},
        input_mode=input_mode,
        coder=coder,
    )
    functional.set_step_mode(single, "s")  # IIRNode stepped over T by single-step calls
    assert all(m.node.step_mode == "s" for m in single.modules() if isinstance(m, SpikingJellyLayer))
    models["spikingjelly-single-step"] = copy_weights(ref, single)
    return models


def run(model, x, g, seed=0):
    """Forward and backward; returns per-layer spikes, output, input and weight gradients."""
    spikes = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: spikes.append(o.detach()))
        for m in model.modules()
        if isinstance(m, NEURON_TYPES)
    ]
    x = x.clone().requires_grad_()
    torch.manual_seed(seed)  # coders that sample draw the same numbers on every backend
    out = model(x)
    (out * g).sum().backward()
    for h in hooks:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return spikes, out.detach(), x.grad, grads


def assert_same(models, x, g):
    results = {b: run(m, x, g) for b, m in models.items()}
    ref_spikes, ref_out, ref_gx, ref_grads = results["reference"]
    assert len(ref_spikes) >= 2
    for s in ref_spikes[:-1]:  # hidden layers are neither silent nor saturated
        assert 0 < s.mean() < 0.95
    for backend, (spikes, out, gx, grads) in results.items():
        assert len(spikes) == len(ref_spikes)
        for s, r in zip(spikes, ref_spikes):
            assert torch.equal(s, r), backend
        assert torch.equal(out, ref_out), backend
        assert rel_err(gx, ref_gx) < 1e-6, backend
        for name, gr in ref_grads.items():
            assert rel_err(grads[name], gr) < 1e-6, (backend, name)


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("T", [1, 5, 25])
@pytest.mark.parametrize("synapse", SYNAPSES)
def test_same_spikes_and_gradients_on_every_backend(net, T, synapse):
    arch, shape, std = NETS[net]
    models = build_all(arch, shape, std, T, synapse, input_mode="axon" if T == 5 else "direct")
    x = torch.rand(4, *shape)
    g = torch.randn(4, 10)
    assert_same(models, x, g)


def test_same_spikes_with_a_sampling_coder_and_all_spiking_layers():
    models = build_all("A64-A48-S32-S10", (1, 8, 8), 0.5, 8, "dual_exp", coder="gaussian")
    assert_same(models, torch.rand(3, 1, 8, 8), torch.randn(3, 10))
    spiking_only = build_all("S6C3-P2-S8C3-S10", (1, 10, 10), 0.8, 6, "first_order")
    assert_same(spiking_only, torch.rand(3, 1, 10, 10), torch.randn(3, 10))


def test_make_neuron_gives_each_backend_and_starts_from_zero_each_call():
    params = IIRParams(synapse="first_order", tau_m=3.0)
    x = torch.randn(7, 2, 5) * 2
    ref = IIRNeuron.from_params(params)(x)
    for backend in CPU_BACKENDS:
        neuron = make_neuron(backend, params)
        assert neuron.params == params
        assert torch.equal(neuron(x), ref) and torch.equal(neuron(x), ref), backend
        assert list(neuron.state_dict()) == []
    assert isinstance(make_neuron("spikingjelly", params).node, IIRNode)
    assert isinstance(make_neuron("snntorch", params).neuron, IIRLeaky)
    assert BACKENDS == ("reference", "spikingjelly", "spikingjelly-cupy", "snntorch")


def test_unknown_backend_is_rejected_with_the_known_ones():
    with pytest.raises(ValueError) as info:
        make_neuron("norse", IIRParams())
    assert str(info.value) == (
        "unknown backend 'norse'; choose one of reference, spikingjelly, spikingjelly-cupy, snntorch"
    )
    with pytest.raises(hnn_bridge.ConfigError, match="unknown backend 'norse'"):
        build("A64-S10", backend="norse", input_shape=(1, 8, 8))


def test_copy_weights_names_the_mismatched_keys():
    a = build("A64-S32-S10", input_shape=(1, 8, 8), steps=2)
    b = build("A64-S16-S10", input_shape=(1, 8, 8), steps=2, backend="snntorch")
    c = build("A64-A20-S10", input_shape=(1, 8, 8), steps=2)
    before = {k: v.clone() for k, v in b.state_dict().items()}
    with pytest.raises(ValueError) as info:
        copy_weights(a, b)
    msg = str(info.value)
    assert msg.startswith("copy_weights: the models do not match (different shapes: ")
    assert "first_op.0.weight (32, 64) -> (16, 64)" in msg
    assert all(torch.equal(v, before[k]) for k, v in b.state_dict().items())  # untouched
    with pytest.raises(ValueError) as info:
        copy_weights(a, c)
    assert str(info.value) == (
        "copy_weights: the models do not match (only in the source: sl.1.module.weight, sl.3.bias; "
        "only in the target: al.1.weight, al.1.bias; different shapes: first_op.0.weight (32, 64) -> "
        "(10, 20), "
        "first_op.0.bias (32,) -> (10,))"
    )
    d = build("A64-S32-S10", input_shape=(1, 8, 8), steps=2, backend="spikingjelly")
    assert copy_weights(a, d) is d
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in d.state_dict().items())


def test_copy_weights_to_plain_modules():
    src, dst = nn.Linear(3, 2), nn.Linear(3, 2)
    copy_weights(src, dst)
    assert torch.equal(src.weight, dst.weight)

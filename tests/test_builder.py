"""`build`: every table architecture, the coder rules, and what runs once vs T times."""

import math
import re

import pytest
import torch
from test_notation import CIFAR_ARCHS, MNIST_ARCHS
from torch import nn

from hnn_bridge import ConfigError, build
from hnn_bridge.builder import SeqOp, TimeSharedDropout
from hnn_bridge.neuron import IIRNeuron

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)


def _coders(arch):
    if "S" not in arch:
        return [None]
    out = ["duplicate", "poisson"]
    if "A" in arch:
        out.append("gaussian")
    return out


@pytest.mark.parametrize("arch", MNIST_ARCHS)
def test_table_mlps_give_class_scores(arch):
    x = torch.rand(3, *MNIST)
    for coder in _coders(arch):
        training = "separate" if coder == "poisson" and "A500" in arch else "simultaneous"
        model = build(arch, coder=coder, steps=4, input_shape=MNIST, training=training)
        assert model(x).shape == (3, 10)


@pytest.mark.parametrize("arch", CIFAR_ARCHS)
def test_table_cnns_give_class_scores(arch):
    x = torch.rand(2, *CIFAR)
    for coder in _coders(arch):
        training = "separate" if coder == "poisson" and arch.startswith("A") else "simultaneous"
        model = build(arch, coder=coder, steps=2, input_shape=CIFAR, training=training)
        out = model(x)
        assert out.shape == (2, 10)
        if model.spiking_output:  # spike counts: integers in [0, T]
            assert torch.equal(out, out.round()) and out.min() >= 0 and out.max() <= 2


def test_mlp_layer_sizes_follow_the_reference_code():
    model = build("A784-A500-A10", input_shape=MNIST)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 500), (500, 10)]
    hybrid = build("A784-S500-S10", coder="duplicate", input_shape=MNIST)
    linears = [m for m in hybrid.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 500), (500, 10)]


@pytest.mark.parametrize(
    "arch, kwargs, message",
    [
        ("A784-S500-S10", {"coder": "poisson", "training": "simultaneous"}, None),
        (
            "A784-A500-S10",
            {"coder": "poisson", "training": "simultaneous"},
            "poisson coding is not differentiable, so its ALs cannot be trained with the SLs: use "
            "training='separate' "
            "(pre-trained, frozen ALs) or an all-S spec (§3.1, §3.3)",
        ),
        (
            "A784-A500-S10",
            {"coder": "gaussian", "training": "separate"},
            "gaussian coding cannot use separate training: its last AL has twice the units (mu, ln "
            "sigma), so the "
            "pre-trained ANN's weights do not fit (§3.3); use simultaneous",
        ),
        (
            "A784-A500-A10",
            {"coder": "duplicate"},
            "'A784-A500-A10' is all artificial (a plain ANN): it has no coder; pass coder=None",
        ),
        (
            "S784-S500-S10",
            {"coder": "gaussian"},
            "gaussian coding needs an artificial layer to produce (mu, ln sigma); 'S784-S500-S10' is "
            "all spiking and "
            "codes the input itself: use duplicate or poisson",
        ),
        (
            "A784-A500-S10",
            {"coder": "morse"},
            "unknown coder 'morse'; choose one of duplicate, gaussian, poisson",
        ),
        ("A784-A500-S10", {"steps": 0}, "steps (T) must be an integer >= 1, got 0"),
        ("A784-A500-S10", {"backend": "nest"}, None),
        (
            "A784-A500-S10",
            {"input_mode": "dendrite"},
            "unknown input_mode 'dendrite'; choose one of direct, axon",
        ),
        (
            "A784-A500-S10",
            {"coder": None},
            "'A784-A500-S10' has spiking layers: choose a coder (duplicate, gaussian, poisson)",
        ),
        (
            "A784-A500-A10",
            {"coder": None, "training": "separate"},
            "'A784-A500-A10' is a pure ANN: separate training needs spiking layers",
        ),
        (
            "S8C3-P2-P2-P2-P2-S10",
            {"input_shape": (1, 8, 8), "coder": "duplicate"},
            "pooling 'P2' needs an image of at least 2x2, but the layer before gives 1x1",
        ),
    ],
)
def test_forbidden_combinations_raise_config_error(arch, kwargs, message):
    if message is None and kwargs.get("coder") == "poisson":
        # an input-layer-only AL part has no weights to train: Poisson is allowed
        assert build(arch, input_shape=MNIST, **kwargs)(torch.rand(1, *MNIST)).shape == (1, 10)
        return
    with pytest.raises(ConfigError) as err:
        build(arch, input_shape=kwargs.pop("input_shape", MNIST), **kwargs)
    if message is not None:
        assert str(err.value) == message
    else:
        assert str(err.value).startswith("unknown backend 'nest'; choose one of reference")


def test_default_coder_is_duplicate_and_plain_ann_has_none():
    assert build("A784-A500-S10").settings["coder"] == "duplicate"
    ann = build("A784-A500-A10")
    assert ann.coder is None and ann.settings["coder"] is None


def _count_calls(module):
    calls = []
    module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    return calls


def test_als_run_once_per_image_and_sls_on_all_rows_at_once():
    model = build("A32C3-A32C3-A64C3-P2-S64C3-P2-S512-S10", coder="gaussian", steps=5, input_shape=CIFAR)
    al_calls = _count_calls(model.al[0])
    convs = [m for m in model.sl.modules() if isinstance(m, nn.Conv2d)]
    sl_calls = _count_calls(convs[0])
    model(torch.rand(3, *CIFAR))
    assert al_calls == [torch.Size([3, 3, 32, 32])]
    assert sl_calls == [torch.Size([15, 64, 16, 16])]  # one call over T x B rows


def test_duplicate_coding_weighs_the_constant_train_once_with_the_same_spikes():
    torch.manual_seed(0)
    model = build("A784-A500-S100-S10", coder="duplicate", steps=8, input_shape=MNIST)
    first = model.first_op[-1]
    calls = _count_calls(first)
    x = torch.rand(4, *MNIST)
    counts = model(x)
    assert calls == [torch.Size([4, 500])]
    # the T-times path: code, then weigh every step
    seq = model.coder(model.al(x))
    spikes = model.sl(SeqOp(model.first_op)(seq))
    assert torch.equal(spikes.sum(0), counts)


def test_direct_input_skips_the_synapse_filter_of_the_first_sl_only():
    direct = build("A784-S500-S10", coder="duplicate", input_shape=MNIST)
    axon = build("A784-S500-S10", coder="duplicate", input_shape=MNIST, input_mode="axon")
    synapses = lambda m: [m.synapse_params(i).synapse for i in sorted(m.neurons)]
    assert synapses(direct) == ["none", "dual_exp"]
    assert synapses(axon) == ["dual_exp", "dual_exp"]
    # after_filter (the default): a filtered layer's filter is a module of its own and its
    # neuron has none; before_filter: the filter is inside the neuron
    inside = lambda m: [n.params.synapse for n in m.modules() if isinstance(n, IIRNeuron)]
    assert inside(direct) == ["none", "none"] and inside(axon) == ["none", "none"]
    old = build(
        "A784-S500-S10",
        coder="duplicate",
        input_shape=MNIST,
        input_mode="axon",
        bias_placement="before_filter",
    )
    assert inside(old) == synapses(old) == ["dual_exp", "dual_exp"] and not old.filters


def test_neuron_settings_reach_every_spiking_layer():
    model = build("S784-S500-S10", neuron={"v_threshold": 0.5, "membrane_decay": 0.0}, input_shape=MNIST)
    params = [n.params for n in model.modules() if isinstance(n, IIRNeuron)]
    assert [p.v_threshold for p in params] == [0.5, 0.5]
    assert [p.membrane_decay for p in params] == [0.0, 0.0]
    with pytest.raises(ValueError, match="IIR neuron: unknown setting\\(s\\) 'tau'"):
        build("S784-S500-S10", neuron={"tau": 2.0})


def test_gaussian_coding_passes_gradients_to_the_als():
    torch.manual_seed(1)
    model = build("A784-A500-S10", coder="gaussian", steps=6, input_shape=MNIST, neuron={"v_threshold": 0.2})
    model(torch.rand(8, *MNIST)).sum().backward()
    grads = [p.grad for p in model.al.parameters()]
    assert len(grads) == 2 and all(g is not None and g.abs().sum() > 0 for g in grads)
    head = build("A784-S500-S10", coder="gaussian", steps=4, input_shape=MNIST, neuron={"v_threshold": 0.2})
    head(torch.rand(8, *MNIST)).sum().backward()
    assert head.al[1].out_features == 2 * 784  # learnable (mu, ln sigma) head from the input
    assert head.al[1].weight.grad.abs().sum() > 0


def test_separate_learning_copies_and_freezes_the_als():
    torch.manual_seed(2)
    ann = build("A784-A500-A10", input_shape=MNIST, activation="sigmoid")
    hnn = build("A784-A500-S10", coder="poisson", training="separate", input_shape=MNIST)
    hnn.load_als_from(ann)
    hnn.freeze_als()
    assert torch.equal(hnn.al[1].weight, ann.al[1].weight)
    assert all(not p.requires_grad for p in hnn.al.parameters())
    assert all(p.requires_grad for p in hnn.sl.parameters())
    hnn.train()
    assert not hnn.al.training and hnn.sl.training


def test_time_shared_dropout_uses_one_mask_for_all_steps():
    torch.manual_seed(3)
    drop = TimeSharedDropout(0.5).train()
    out = drop(torch.ones(6, 4, 10))
    assert torch.equal(out[0], out[5]) and set(out.unique().tolist()) == {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(2, 3)), torch.ones(2, 3))


@pytest.mark.parametrize(
    "arch,shape", [("A784-A500-S10", MNIST), ("A784-S500-S10", MNIST), ("A32C3-S32C3-P2-S10", (3, 32, 32))]
)
def test_gaussian_mu_passes_the_al_activation_and_ln_sigma_stays_linear(arch, shape):
    torch.manual_seed(3)
    model = build(arch, coder="gaussian", steps=3, input_shape=shape)
    x = torch.rand(4, *shape)
    seen = {}
    model.coder.register_forward_hook(lambda _m, inputs, _o: seen.update(a=inputs[0]))
    model(x)
    op = model.weight_ops[max(i for i, info in enumerate(model.layers) if info.part == "AL")]
    linear = op(x.flatten(1) if isinstance(op, torch.nn.Linear) else x)  # the last AL's op alone
    n = linear.shape[1] // 2
    assert torch.equal(seen["a"][:, :n], torch.relu(linear[:, :n]))  # mu: ReLU, as every AL output
    assert torch.equal(seen["a"][:, n:], linear[:, n:])  # ln sigma: linear, free to be negative
    assert (linear[:, n:] < 0).any()


@pytest.mark.parametrize("arch,shape", [("A784-A500-S10", MNIST), ("A32C3-S32C3-P2-S10", (3, 32, 32))])
def test_gaussian_dropout_drops_mu_only_and_never_ln_sigma(arch, shape):
    torch.manual_seed(5)
    model = build(arch, coder="gaussian", steps=3, input_shape=shape, dropout=0.5).train()
    x = torch.rand(8, *shape)
    seen = {}
    model.coder.register_forward_hook(lambda _m, inputs, _o: seen.update(a=inputs[0]))
    model(x)
    op = model.weight_ops[max(i for i, info in enumerate(model.layers) if info.part == "AL")]
    linear = op(model.al[:-2](x))  # the last AL's op on what the layers before it give
    n = linear.shape[1] // 2
    mu, log_sigma = seen["a"][:, :n], seen["a"][:, n:]
    relu = torch.relu(linear[:, :n])
    kept = mu != 0
    assert torch.allclose(mu[kept], 2 * relu[kept])  # inverted dropout at p = 0.5 on mu
    assert ((relu > 0) & ~kept).any()  # some positive mu were dropped
    assert torch.equal(log_sigma, linear[:, n:])  # ln sigma: neither dropped nor rescaled


@pytest.mark.parametrize(
    "arch,shape", [("A784-A500-S10", MNIST), ("A784-S500-S10", MNIST), ("A32C3-S32C3-P2-S10", (3, 32, 32))]
)
def test_gaussian_sigma0_starts_ln_sigma_at_its_log_and_leaves_mu_alone(arch, shape):
    torch.manual_seed(4)
    default = build(arch, coder="gaussian", steps=3, input_shape=shape)
    torch.manual_seed(4)
    model = build(arch, coder="gaussian", steps=3, input_shape=shape, gaussian_sigma0=0.05)
    head = model.weight_ops[max(i for i, info in enumerate(model.layers) if info.part == "AL")]
    ref = default.weight_ops[max(i for i, info in enumerate(default.layers) if info.part == "AL")]
    n = head.bias.numel() // 2
    assert torch.equal(head.bias[n:], torch.full((n,), math.log(0.05)))
    assert torch.equal(head.bias[:n], ref.bias[:n]) and torch.equal(head.weight, ref.weight)
    assert model.settings["gaussian_sigma0"] == 0.05


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            {"coder": "duplicate", "gaussian_sigma0": 0.1},
            "gaussian_sigma0 = 0.1 needs coder='gaussian' (the coder is 'duplicate')",
        ),
        (
            {"coder": "gaussian", "gaussian_sigma0": -1.0},
            "gaussian_sigma0 must be a finite number >= 0 (0: default init), got -1.0",
        ),
    ],
)
def test_gaussian_sigma0_errors(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build("A784-A500-S10", input_shape=MNIST, **kwargs)

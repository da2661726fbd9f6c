"""The batch norm folded into the IIR neuron (`hnn_bridge.kernels.bn_neuron`) against the
plain path, ``SeqOp(BatchNorm)`` then `IIRNeuron` (ATen's batch norm, then the native
neuron): spikes, V, gradients and running statistics bit for bit, in evaluation mode
(running statistics) and in training mode (batch statistics computed as ATen computes
them, `batch_stats`), the transform also given ATen's own statistics; the threaded
split; where the fused pair runs in a `HybridNet` and where the plain path does; a short
training run that learns the same.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hnn_bridge import builder
from hnn_bridge.builder import build
from hnn_bridge.functional.iir import Coefficients
from hnn_bridge.kernels import bn_neuron as bnn
from hnn_bridge.kernels import native
from hnn_bridge.kernels.fused import fused_forward
from hnn_bridge.neuron import IIRNeuron
from hnn_bridge.params import IIRParams

# without the C path there is nothing to fuse; a torch build whose batch norm the probe
# cannot reproduce fails test_transform_mode_reproduces_atens_batch_norm instead of skipping
pytestmark = pytest.mark.skipif(
    native.native_unavailable_reason() is not None,
    reason=f"native neuron unavailable: {native.native_unavailable_reason()}",
)

#: the CIFAR recipes' neuron after a batch norm (after_filter: no synapse), and one with
#: the synapse filter and a leaky membrane (before_filter), so every term kind runs
PARAMS = {
    "cifar": IIRParams(membrane_decay=0.0, reset_decay=math.exp(-0.25), synapse="none"),
    "filtered": IIRParams(tau_s=2.0, v_threshold=0.8),
}
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(autouse=True)
def _fusion_on(monkeypatch):
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "1")


def _bits(a, b) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def _data(shape, seed):
    """y [T, B, C, ...] with per-channel offsets and scales, as a weight op gives."""
    g = torch.Generator().manual_seed(seed)
    c, tail = shape[2], [1] * (len(shape) - 3)
    scale = torch.rand(c, *tail, generator=g) * 3 + 0.05
    return torch.randn(shape, generator=g) * scale + torch.randn(c, *tail, generator=g) * 2


def _norm(c, dims, seed, **kwargs):
    g = torch.Generator().manual_seed(seed)
    bn = (nn.BatchNorm2d if dims == 5 else nn.BatchNorm1d)(c, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
            bn.bias.copy_(torch.randn(c, generator=g) * 0.3)
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.randn(c, generator=g))
            bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.01)
    return bn


def _plain(y, bn, k):
    """(spikes, V) of the plain path: ATen's batch norm over all T x B rows, then the neuron."""
    x = bn(y.reshape(-1, *y.shape[2:])).reshape(y.shape)
    spikes, volts, *_ = fused_forward(x, k)
    return spikes, volts


SHAPES = [(5, 3, 8, 6, 7), (5, 7, 40)]


def test_transform_mode_reproduces_atens_batch_norm():
    # the probe found how this torch build rounds alpha, beta and y * alpha + beta, and
    # that its batch statistics are ATen's
    mode = bnn.transform_mode()
    assert isinstance(mode, bnn.Mode) and mode.exact_stats


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_eval_mode_equals_the_plain_path_bit_for_bit(shape, name):
    k = Coefficients.of(PARAMS[name])
    y = _data(shape, 1)
    bn = _norm(shape[2], len(shape), 2).eval()
    want_s, want_v = _plain(y, bn, k)
    alpha, beta = bnn.bn_terms(bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps, from_var=True)
    spikes, volts = bnn.bn_neuron_forward(y, alpha, beta, k, keep_volts=True)
    assert _bits(volts, want_v) and _bits(spikes, want_s)
    assert 0 < want_s.mean() < 1  # the neurons both fire and stay silent


def test_chunks_over_threads_find_their_channels():
    # 3 threads over 2 x 16 x 47 x 47 neurons per step: chunk edges fall inside a channel's plane
    k = Coefficients.of(PARAMS["filtered"])
    y = _data((3, 2, 16, 47, 47), 21)
    bn = _norm(16, 5, 22).eval()
    want_s, want_v = _plain(y, bn, k)
    alpha, beta = bnn.bn_terms(bn.running_mean, bn.running_var, bn.weight, bn.bias, eps=bn.eps, from_var=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        assert len(native._chunks(y[0].numel())) == 3
        assert y[0].numel() // 3 % (47 * 47) != 0
        spikes, volts = bnn.bn_neuron_forward(y, alpha, beta, k, keep_volts=True)
        stats = bnn.batch_stats(y.view(6, 16, -1), 1e-5)
    finally:
        torch.set_num_threads(threads)
    assert _bits(volts, want_v) and _bits(spikes, want_s)
    one = bnn.batch_stats(y.view(6, 16, -1), 1e-5)
    assert all(_bits(a, b) for a, b in zip(stats, one))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", sorted(PARAMS))
def test_training_forward_given_atens_statistics_is_bit_exact(shape, name):
    # ATen's batch mean and invstd fed to the fused transform: the same neuron input
    k = Coefficients.of(PARAMS[name])
    y = _data(shape, 3)
    bn = _norm(shape[2], len(shape), 4)
    rows = y.reshape(-1, *y.shape[2:])
    out, mean, invstd = torch.native_batch_norm(rows, bn.weight, bn.bias, None, None, True, 0.1, bn.eps)
    want_s, want_v, *_ = fused_forward(out.reshape(y.shape), k)
    alpha, beta = bnn.bn_terms(mean, invstd, bn.weight, bn.bias)
    spikes, volts = bnn.bn_neuron_forward(y, alpha, beta, k, keep_volts=True)
    assert _bits(volts, want_v) and _bits(spikes, want_s)


@pytest.mark.parametrize("shape", [(8, 4, 13, 16, 16), (3, 5, 20, 7, 9), (4, 6, 24, 11)])
def test_batch_statistics_are_atens_bit_for_bit(shape):
    # 13 and 20 channels: groups of 8 chains plus a partial one; (4, 6, 24, 11) a BatchNorm1d on [T, B, C, L]
    y = _data(shape, 5)
    rows = y.reshape(-1, *y.shape[2:])
    bn = _norm(shape[2], len(shape), 6, momentum=0.3)
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    _, mean, invstd = torch.native_batch_norm(
        rows, None, None, bn.running_mean, bn.running_var, True, 0.3, 1e-5
    )
    got_mean, var_sum, got_invstd = bnn.batch_stats(y.view(rows.shape[0], shape[2], -1), 1e-5)
    bnn._update_running(rm, rv, got_mean, var_sum, 0.3, rows.numel() // shape[2])
    assert _bits(got_mean, mean) and _bits(got_invstd, invstd)
    assert _bits(rm, bn.running_mean) and _bits(rv, bn.running_var)


def _grads(y, bn, k, fused):
    """(spikes, grad y, grad weight, grad bias, running mean, running var) of one call."""
    y = y.clone().requires_grad_()
    if fused:
        assert bnn.fusable(y, bn)
        out = bnn.BNSpikes.apply(y, bn.weight, bn.bias, bn, k, False)
    else:
        out = IIRNeuron(PARAMS_OF[k])(bn(y.reshape(-1, *y.shape[2:])).reshape(y.shape))
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad(out, (y, bn.weight, bn.bias), g)
    return (out, *grads, bn.running_mean.clone(), bn.running_var.clone())


PARAMS_OF = {Coefficients.of(p): p for p in PARAMS.values()}


@pytest.mark.parametrize("shape", [(8, 4, 16, 16, 16), (5, 3, 8, 6, 7), (4, 6, 24, 11)])
@pytest.mark.parametrize("name", sorted(PARAMS))
@pytest.mark.parametrize("training", [True, False])
def test_spikes_gradients_and_running_statistics_equal_the_plain_path(shape, name, training):
    k = Coefficients.of(PARAMS[name])
    y = _data(shape, 13)
    bn = _norm(shape[2], len(shape), 14).train(training)
    fused_bn, plain_bn = copy.deepcopy(bn), copy.deepcopy(bn)
    got, want = _grads(y, fused_bn, k, True), _grads(y, plain_bn, k, False)
    assert all(_bits(a, b) for a, b in zip(got, want))
    assert int(fused_bn.num_batches_tracked) == int(plain_bn.num_batches_tracked) == int(training)
    assert 0 < want[0].mean() < 1


@pytest.mark.parametrize("options", [{"affine": False}, {"track_running_stats": False}])
@pytest.mark.parametrize("training", [True, False])
def test_norms_without_affine_terms_or_running_statistics(options, training):
    k = Coefficients.of(PARAMS["cifar"])
    y = _data((4, 3, 8, 5, 6), 17)
    bn = _norm(8, 5, 18, **options).train(training)
    results = []
    for fused in (True, False):
        m, x = copy.deepcopy(bn), y.clone().requires_grad_()
        if fused:
            assert bnn.fusable(x, m)
            out = bnn.bn_iir_spikes(x, m, k, detach_reset=False)
        else:
            out = IIRNeuron(PARAMS["cifar"])(m(x.reshape(-1, 8, 5, 6)).reshape(x.shape))
        (grad,) = torch.autograd.grad(
            out, x, torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
        )
        results.append((out, grad, *(b for b in m.buffers() if b.is_floating_point())))
    assert all(_bits(a, b) for a, b in zip(*results))


@pytest.mark.parametrize("eps", [1e-5, 0.0])
@pytest.mark.parametrize("training", [True, False])
def test_a_constant_channel_and_eps_zero(training, eps):
    # a channel of one value: var = 0, invstd = 1 / sqrt(eps); eps = 0 (evaluation only:
    # ATen refuses it in training, and so the fused pair leaves it to ATen)
    k = Coefficients.of(PARAMS["cifar"])
    y = _data((4, 3, 8, 5, 6), 19)
    y[:, :, 3] = 0.25
    bn = _norm(8, 5, 20, eps=eps).train(training)
    if training and eps == 0.0:
        assert not bnn.fusable(y, bn)
        with pytest.raises(ValueError, match="eps must be positive"):
            _plain(y, bn, k)
        return
    assert bnn.fusable(y, bn)
    got = bnn.bn_iir_spikes(y, copy.deepcopy(bn), k, detach_reset=False)
    assert torch.equal(got, _plain(y, bn, k)[0])


@pytest.mark.parametrize("momentum", [0.1, None])
def test_running_statistics_follow_batch_norms_update(momentum):
    k = Coefficients.of(PARAMS["cifar"])
    bn = _norm(8, 5, 8, momentum=momentum)
    ref = copy.deepcopy(bn)
    for step in range(3):
        y = _data((4, 3, 8, 5, 5), 10 + step)
        want = _plain(y, ref, k)[0]
        assert torch.equal(bnn.bn_iir_spikes(y, bn, k, detach_reset=False), want)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    assert _bits(bn.running_mean, ref.running_mean) and _bits(bn.running_var, ref.running_var)


def test_one_value_per_row_runs_the_plain_path_in_training_mode():
    # BatchNorm1d on [T, B, F]: ATen sums such statistics another way; eval mode still fuses
    y = _data((5, 7, 40), 15)
    bn = _norm(40, 3, 16)
    assert not bnn.fusable(y, bn)
    assert bnn.fusable(y, bn.eval())
    assert not bnn.fusable(y, nn.BatchNorm1d(40, track_running_stats=False).eval())


CNN = "S8C3-S8C3-P2-S8C3-P2-S4"


def _cnn(placement="after_filter", seed=0):
    torch.manual_seed(seed)
    return build(
        CNN,
        coder="duplicate",
        steps=4,
        input_shape=(3, 8, 8),
        neuron=IIRParams(membrane_decay=0.0, reset_decay=math.exp(-0.25)),
        norm="batch",
        bias_placement=placement,
    )


def _count_fused(monkeypatch):
    calls = []
    real = builder.bn_iir_spikes

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(builder, "bn_iir_spikes", counting)
    return calls


@pytest.mark.parametrize("placement", ["after_filter", "before_filter"])
def test_hybridnet_runs_the_fused_pair_and_matches_the_plain_path(placement, monkeypatch):
    calls = _count_fused(monkeypatch)
    net = _cnn(placement)
    plain = copy.deepcopy(net)
    keys = list(net.state_dict())
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "1")
    net.eval()
    with torch.no_grad():
        got = net(x)
    assert len(calls) == 3  # the spiking layers after the first one (whose norm is in first_op)
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "0")
    plain.eval()
    with torch.no_grad():
        want = plain(x)
    assert len(calls) == 3
    assert torch.equal(got, want)
    assert list(net.state_dict()) == keys


def test_on_by_default(monkeypatch):
    monkeypatch.delenv("HNN_BRIDGE_FUSE_BN")
    assert bnn.fuse_bn_enabled() and bnn.fusion_unavailable_reason() is None
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "0")
    assert not bnn.fuse_bn_enabled()


def test_the_plain_path_runs_where_the_pair_does_not_apply(monkeypatch):
    calls = _count_fused(monkeypatch)
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "1")
    net = _cnn()
    x = torch.rand(4, 3, 8, 8)
    net(x)
    assert len(calls) == 2  # training: the two conv layers; the dense one's BatchNorm1d runs apart
    net.eval()
    norm = next(m for m in net.sl if isinstance(m, builder.SeqOp) and isinstance(m.module, nn.BatchNorm2d))
    handle = norm.module.register_forward_hook(lambda *args: None)
    net(x)
    assert len(calls) == 4  # the hooked norm ran apart, the other two fused
    handle.remove()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    assert len(calls) == 4
    net.double()(x.double())
    assert len(calls) == 4
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "0")
    assert bnn.fusion_unavailable_reason() == "disabled by HNN_BRIDGE_FUSE_BN=0"
    net.float()(x)
    assert len(calls) == 4


def _synthetic(n, seed):
    """Four classes: which quadrant of an 8 x 8 image is bright, under noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 3, 8, 8, generator=g) * 0.5
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, 4 * r : 4 * r + 4, 4 * q : 4 * q + 4] += 0.5
    return x, y


def _train(net, steps, x, y):
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    losses = []
    net.train()
    for s in range(steps):
        sl = slice(16 * (s % 4), 16 * (s % 4) + 16)
        loss = F.cross_entropy(net(x[sl]), y[sl])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    net.eval()
    with torch.no_grad():
        accuracy = float((net(x).argmax(1) == y).float().mean())
    return losses, accuracy


def test_a_short_training_run_learns_the_same(monkeypatch):
    calls = _count_fused(monkeypatch)
    x, y = _synthetic(64, 3)
    net = _cnn(seed=4)
    plain = copy.deepcopy(net)
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "1")
    got = _train(net, 12, x, y)
    assert len(calls) == 2 * 12 + 3  # two fused pairs per training step, three in the evaluation
    monkeypatch.setenv("HNN_BRIDGE_FUSE_BN", "0")
    want = _train(plain, 12, x, y)
    assert len(calls) == 2 * 12 + 3
    assert want[0][-1] < 0.5 * want[0][0] and want[1] >= 0.75  # it learns
    assert got == want  # the same losses and accuracy, exactly
    assert all(
        _bits(a, b)
        for a, b in zip(net.state_dict().values(), plain.state_dict().values())
        if a.is_floating_point()
    )

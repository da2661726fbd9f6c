"""The spike-fed 3x3 convolution (`hnn_bridge.kernels.spike_conv`) against a float64
reference of ``F.conv2d`` and ``torch.nn.grad.conv2d_weight``.

The kernel sums in another order than any dense convolution, so it is compared with the
float64 result of the same float32 values, within the bound of float32 summation: a sum
of n float32 terms, added one by one or in any tree, is within gamma_n * sum |term_i| of
the exact sum, gamma_n = n u / (1 - n u), u = 2^-24 (Higham, Accuracy and Stability of
Numerical Algorithms, 2nd ed., eq. 4.4 and §4.3). Per output element, n is its number of
terms (its active inputs, plus the bias) and sum |term_i| is the convolution of the input
with |weight| plus |bias|, both computed in float64 (whose own error, below gamma_n of
float64 times the same sum, is added to the bound). Where a sum has at most two terms
(no input active, or one) the result must be exactly the correctly rounded float32 value.
"""

import re

import pytest
import torch
import torch.nn.functional as F

from hnn_bridge.kernels import spike_conv
from hnn_bridge.kernels.spike_conv import METHODS, spike_conv2d, spike_conv2d_weight

pytestmark = pytest.mark.skipif(
    spike_conv.spike_conv_unavailable_reason() is not None,
    reason=f"spike_conv kernel unavailable: {spike_conv.spike_conv_unavailable_reason()}",
)

U32, U64 = 2.0**-24, 2.0**-53
RATES = (0.0, 0.03, 0.1, 0.5, 1.0)
# (N, Cin, H, W, Cout): batch 1 and several, square and not, odd sizes, 1 x 1 images,
# Cout covering every block of the kernel (64, 32, 16, 8 channels and a scalar tail), and
# widths and channel counts around the 8 x 8 blocks of its transposes.
SHAPES = (
    (1, 3, 5, 7, 8),
    (3, 5, 7, 9, 13),
    (2, 4, 1, 1, 16),
    (2, 32, 8, 8, 64),
    (1, 6, 6, 4, 24),
    (9, 3, 4, 5, 100),
    (2, 2, 3, 3, 5),
    (2, 9, 10, 11, 24),
    (1, 8, 17, 16, 72),
)


def _gamma(n, u):
    return n * u / (1 - n * u)


def _spikes(shape, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).float()


def _weights(cout, cin, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(cout, cin, 3, 3, generator=gen), torch.randn(cout, generator=gen)


def _assert_within(got, exact, n_terms, abs_sum):
    bound = (_gamma(n_terms, U32) + _gamma(n_terms, U64)) * abs_sum
    err = (got.double() - exact).abs()
    worst = (err - bound).max().item()
    assert worst <= 0, f"error {err.max().item():.3g} exceeds the bound by {worst:.3g}"


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_forward_within_the_summation_bound(shape, rate, method, with_bias):
    n, cin, h, w, cout = shape
    x = _spikes((n, cin, h, w), rate, 1)
    weight, bias = _weights(cout, cin, 2)
    b = bias if with_bias else None
    got = spike_conv2d(x, weight, b, method=method)
    assert got.shape == (n, cout, h, w) and got.dtype == torch.float32 and got.is_contiguous()
    xd, wd = x.double(), weight.double()
    bd = bias.double() if with_bias else None
    exact = F.conv2d(xd, wd, bd, padding=1)
    active = F.conv2d(xd, torch.ones_like(wd), padding=1)
    abs_sum = F.conv2d(xd, wd.abs(), bd.abs() if with_bias else None, padding=1)
    _assert_within(got, exact, active + int(with_bias), abs_sum)
    if rate == 0.0:  # no term: exactly the bias, or zeros
        want = bias.view(1, cout, 1, 1).expand_as(got) if with_bias else torch.zeros_like(got)
        assert torch.equal(got, want)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_weight_gradient_within_the_summation_bound(shape, rate):
    n, cin, h, w, cout = shape
    x = _spikes((n, cin, h, w), rate, 3)
    g = torch.randn((n, cout, h, w), generator=torch.Generator().manual_seed(4))
    got = spike_conv2d_weight(x, g)
    assert got.shape == (cout, cin, 3, 3) and got.dtype == torch.float32 and got.is_contiguous()
    xd, gd = x.double(), g.double()
    size = (cout, cin, 3, 3)
    exact = torch.nn.grad.conv2d_weight(xd, size, gd, padding=1)
    active = torch.nn.grad.conv2d_weight(xd, size, torch.ones_like(gd), padding=1)
    abs_sum = torch.nn.grad.conv2d_weight(xd, size, gd.abs(), padding=1)
    _assert_within(got, exact, active, abs_sum)
    if rate == 0.0:
        assert torch.equal(got, torch.zeros(size))


def test_the_float32_convolutions_agree_within_the_bound():
    """The kernel and torch's own float32 convolution, on the first spiking conv's
    channels: both within the bound of the float64 result, so within twice it of each other."""
    x = _spikes((4, 32, 12, 12), 0.04, 5)
    weight, bias = _weights(64, 32, 6)
    got, dense = spike_conv2d(x, weight, bias), F.conv2d(x, weight, bias, padding=1)
    xd = x.double()
    n_terms = F.conv2d(xd, torch.ones(64, 32, 3, 3, dtype=torch.float64), padding=1) + 1
    abs_sum = F.conv2d(xd, weight.double().abs(), bias.double().abs(), padding=1)
    bound = 2 * (_gamma(n_terms, U32) + _gamma(n_terms, U64)) * abs_sum
    assert ((got.double() - dense.double()).abs() <= bound).all()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_one_active_input_gives_the_rounded_sums_exactly(method):
    n, cin, h, w, cout = 3, 4, 5, 6, 13
    weight, bias = _weights(cout, cin, 7)
    g = torch.randn((n, cout, h, w), generator=torch.Generator().manual_seed(8))
    for where in [(1, 2, 0, 0), (0, 3, 2, 3), (2, 0, 4, 5), (1, 1, 0, 5)]:
        x = torch.zeros(n, cin, h, w)
        x[where] = 1.0
        got = spike_conv2d(x, weight, bias, method=method)
        # at most two float32 terms per element: float64 adds them exactly
        want = F.conv2d(x.double(), weight.double(), bias.double(), padding=1).float()
        assert torch.equal(got, want), where
        # each weight-gradient entry is one grad_output value, or 0 outside the image
        got_w = spike_conv2d_weight(x, g)
        want_w = torch.nn.grad.conv2d_weight(x.double(), weight.shape, g.double(), padding=1).float()
        assert torch.equal(got_w, want_w), where
        assert got_w.count_nonzero() > 0


def test_the_result_does_not_depend_on_the_thread_count():
    x = _spikes((19, 8, 6, 7), 0.2, 9)
    weight, bias = _weights(40, 8, 10)
    g = torch.randn((19, 40, 6, 7), generator=torch.Generator().manual_seed(11))
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append((spike_conv2d(x, weight, bias), spike_conv2d_weight(x, g)))
    finally:
        torch.set_num_threads(threads)
    for out, gw in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(gw, results[0][1])


def test_non_contiguous_inputs():
    x = _spikes((2, 7, 5, 6), 0.3, 12)
    weight, bias = _weights(9, 7, 13)
    g = torch.randn((2, 9, 5, 6), generator=torch.Generator().manual_seed(14))
    x_cl = x.to(memory_format=torch.channels_last)
    w_t = weight.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_cl.is_contiguous() and not w_t.is_contiguous()
    assert torch.equal(spike_conv2d(x_cl, w_t, bias), spike_conv2d(x, weight, bias))
    assert torch.equal(
        spike_conv2d_weight(x_cl, g.transpose(0, 1).contiguous().transpose(0, 1)), spike_conv2d_weight(x, g)
    )


def test_empty_inputs():
    weight, bias = _weights(4, 3, 15)
    assert spike_conv2d(torch.zeros(0, 3, 5, 5), weight, bias).shape == (0, 4, 5, 5)
    assert torch.equal(
        spike_conv2d_weight(torch.zeros(0, 3, 5, 5), torch.zeros(0, 4, 5, 5)), torch.zeros(4, 3, 3, 3)
    )


def _raises(exc, message, fn, *args, **kwargs):
    with pytest.raises(exc, match="^" + re.escape(message) + "$"):
        fn(*args, **kwargs)


def test_errors_name_what_is_not_covered():
    x = torch.zeros(2, 3, 5, 5)
    weight, bias = _weights(4, 3, 16)
    _raises(TypeError, "spike_conv2d: x must be float32, got torch.float64", spike_conv2d, x.double(), weight)
    _raises(
        TypeError, "spike_conv2d: weight must be float32, got torch.float16", spike_conv2d, x, weight.half()
    )
    _raises(TypeError, "spike_conv2d: x must be a tensor, got list", spike_conv2d, [0.0], weight)
    _raises(
        ValueError,
        "spike_conv2d covers 3x3 kernels (stride 1, padding 1) only; weight has shape (4, 3, 5, 5)",
        spike_conv2d,
        x,
        torch.zeros(4, 3, 5, 5),
    )
    _raises(
        ValueError, "spike_conv2d: x must have 4 dimensions, got shape (3, 5, 5)", spike_conv2d, x[0], weight
    )
    _raises(ValueError, "spike_conv2d: weight has 3 input channels, x has 2", spike_conv2d, x[:, :2], weight)
    _raises(
        ValueError, "spike_conv2d: bias has 3 values for 4 output channels", spike_conv2d, x, weight, bias[:3]
    )
    _raises(
        ValueError,
        f"spike_conv2d: method must be one of {sorted(METHODS)}, got 'dense'",
        spike_conv2d,
        x,
        weight,
        method="dense",
    )
    _raises(
        ValueError,
        "spike_conv2d_weight: grad_output of shape (2, 4, 5, 4) does not match x of shape (2, 3, 5, 5) "
        "(stride 1, padding 1: same N, H, W)",
        spike_conv2d_weight,
        x,
        torch.zeros(2, 4, 5, 4),
    )
    _raises(
        TypeError,
        "spike_conv2d_weight: grad_output must be float32, got torch.float64",
        spike_conv2d_weight,
        x,
        torch.zeros(2, 4, 5, 5, dtype=torch.float64),
    )


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("value", [0.5, -1.0, 2.0, float("nan")])
def test_values_other_than_0_and_1_are_refused(method, value):
    x = (torch.rand(3, 4, 5, 6, generator=torch.Generator().manual_seed(17)) < 0.3).float()
    x[2, 1, 3, 4] = value
    x[2, 3, 0, 0] = 0.25  # later in memory: the first one is named
    weight, _ = _weights(8, 4, 18)
    message = f"x must hold spikes, only 0 and 1; x[2, 1, 3, 4] = {value!r}"
    _raises(ValueError, f"spike_conv2d: {message}", spike_conv2d, x, weight, method=method)
    _raises(ValueError, f"spike_conv2d_weight: {message}", spike_conv2d_weight, x, torch.zeros(3, 8, 5, 6))


def test_a_build_without_avx_gives_the_same_bits(tmp_path, monkeypatch):
    """Without -march=native (no AVX: the scalar 8 x 8 transpose, vectors lowered to SSE or
    scalars) every lane adds in the same order: the same results, bit for bit."""
    from hnn_bridge.kernels.build import build_library, source_text

    flags = tuple(f for f in spike_conv.FLAGS if not f.startswith("-march"))
    portable = spike_conv.load(
        build_library(source_text("spike_conv.c"), flags, "spike_conv_plain", folder=tmp_path)
    )
    x = _spikes((3, 12, 9, 19), 0.2, 19)
    weight, bias = _weights(72, 12, 20)
    g = torch.randn((3, 72, 9, 19), generator=torch.Generator().manual_seed(21))
    want = [spike_conv2d(x, weight, bias, method=m) for m in sorted(METHODS)] + [spike_conv2d_weight(x, g)]
    monkeypatch.setitem(spike_conv._state, "lib", portable)
    got = [spike_conv2d(x, weight, bias, method=m) for m in sorted(METHODS)] + [spike_conv2d_weight(x, g)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))

"""Behaviour that a mutation sample (docs/notes/2026-12-06-mutation-testing.md) found
untested outside the neuron's numerics: the Poisson coder's comparison (§3.2.3: a[t] = 1
exactly when the uniform draw u[t] < rate), the post-filter bias's shape check and the
final state the neuron returns with that bias (the synapse filter's own p[T-1], p[T-2],
eq. 1a), and the loss `evaluate` reports by default (eq. 2b: cross entropy of the spike
counts with scale 1), SpikingJelly's Erf alpha and input checks, and the operation
count's default and boundary input rate."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hnn_bridge.adapters.spikingjelly import IIRNode, erf_sigma
from torch import nn

from hnn_bridge import build, count_ops
from hnn_bridge.coders import make_coder
from hnn_bridge.functional import IIRState, iir_multistep, iir_multistep_reference
from hnn_bridge.neuron import IIRNeuron
from hnn_bridge.params import IIRParams
from hnn_bridge.training import evaluate

# ----------------------------------------------------------------------------- Poisson coder


def test_poisson_spikes_exactly_where_the_draw_is_below_the_rate() -> None:
    """Replaying the generator: a rate equal to its own draw does not spike (u < rate is
    strict), rate 0 never spikes, rate 1 always does."""
    steps, shape = 6, (3, 40)
    torch.manual_seed(5)
    u = torch.rand((steps, *shape))
    rates = torch.cat([u[0][:1], torch.zeros(1, 40), torch.ones(1, 40)])
    torch.manual_seed(5)
    a = make_coder("poisson", steps)(rates)
    assert torch.equal(a, (u < rates).float())
    assert a[0, 0].sum() == 0  # at step 0 the first row's rate equals its draw: no spike
    assert a[:, 1].sum() == 0 and a[:, 2].sum() == steps * 40
    assert 0 < a[1:, 0].sum() < (steps - 1) * 40


# ----------------------------------------------------------------------------- post-filter bias


@pytest.mark.parametrize("bad", [(), (True,), (2.5,), (3, 0), (4, -1), 0, -2])
def test_post_filter_bias_shape_must_be_positive_ints(bad) -> None:
    with pytest.raises(ValueError, match="post_filter_bias must be a positive int"):
        IIRNeuron(post_filter_bias=bad)


def test_post_filter_bias_shapes_that_are_accepted() -> None:
    assert tuple(IIRNeuron(post_filter_bias=4).bias.shape) == (4,)
    assert tuple(IIRNeuron(post_filter_bias=(3, 1, 1)).bias.shape) == (3, 1, 1)


@pytest.mark.parametrize("steps", [1, 2, 3, 5])
@pytest.mark.parametrize("with_state", [False, True])
def test_final_state_with_a_post_filter_bias_equals_the_reference(steps: int, with_state: bool) -> None:
    """Fused path vs the per-step reference in float64: spikes, V and the whole final
    state (p[T-1] and p[T-2] are the filter's own, without the bias), so that a sequence
    cut in two and continued from the state is the same as one run."""
    params = IIRParams(synapse="dual_exp", tau_m=3.0, tau_s=1.5, v_threshold=0.8)
    gen = torch.Generator().manual_seed(steps)
    x = torch.randn(steps, 2, 7, generator=gen, dtype=torch.float64)
    bias = torch.randn(7, generator=gen, dtype=torch.float64)
    state = (
        IIRState(
            *(torch.randn(2, 7, generator=gen, dtype=torch.float64) * 0.3 for _ in range(4)),
            (torch.rand(2, 7, generator=gen) > 0.5).double(),
        )
        if with_state
        else None
    )
    got = iir_multistep(x, params, state, bias=bias)
    want = iir_multistep_reference(x, params, state, bias=bias)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-12)
    for name, a, b in zip(("p1", "p2", "r", "v", "o"), got[2], want[2]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_a_sequence_cut_in_two_with_a_bias_continues_exactly() -> None:
    params = IIRParams(synapse="dual_exp", tau_m=4.0, tau_s=2.0, v_threshold=0.6)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, 5, generator=gen, dtype=torch.float64)
    bias = torch.randn(5, generator=gen, dtype=torch.float64) * 0.2
    whole = iir_multistep(x, params, bias=bias)
    first = iir_multistep(x[:3], params, bias=bias)
    second = iir_multistep(x[3:], params, first[2], bias=bias)
    assert torch.equal(torch.cat([first[0], second[0]]), whole[0])
    torch.testing.assert_close(torch.cat([first[1], second[1]]), whole[1], rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- evaluate's loss


class CountsAreTheInput(nn.Module):
    steps = 4

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w


def test_evaluate_reports_the_mean_cross_entropy_of_the_counts() -> None:
    counts = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0], [2.0, 2.0, 4.0], [0.0, 4.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 0])
    batches = [(counts[:3], labels[:3]), (counts[3:], labels[3:])]
    metrics = evaluate(CountsAreTheInput(), batches)
    assert metrics.loss == pytest.approx(float(F.cross_entropy(counts, labels)), rel=1e-6)
    assert metrics.loss != pytest.approx(math.log(3))  # not the loss of all-zero logits
    assert (metrics.acc, metrics.n) == (0.5, 4)
    scaled = evaluate(CountsAreTheInput(), batches, logit_scale=0.5)
    assert scaled.loss == pytest.approx(float(F.cross_entropy(0.5 * counts, labels)), rel=1e-6)
    assert scaled.acc == metrics.acc


# ----------------------------------------------------------------------------- SpikingJelly


def test_erf_alpha_gives_sigma_and_bad_alphas_are_refused() -> None:
    """sigma = 1 / (sqrt(2) alpha) (eq. 6 equals Erf's gradient); alpha must be a finite
    positive number."""
    assert erf_sigma(2.0) == 1.0 / (math.sqrt(2.0) * 2.0) and erf_sigma(torch.tensor(4.0)) == erf_sigma(4)
    for bad in (0, 0.0, -1.0, math.inf, math.nan, True, "2"):
        with pytest.raises(ValueError, match="alpha > 0"):
            erf_sigma(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(), (0, 3)])
def test_spikingjelly_node_refuses_an_input_without_time_steps(shape: tuple[int, ...]) -> None:
    node = IIRNode(step_mode="m")
    with pytest.raises(ValueError, match="time-first tensor"):
        node(torch.zeros(shape))


# ----------------------------------------------------------------------------- operation counts


def test_count_ops_default_rate_and_a_rate_of_zero() -> None:
    """The assumed presynaptic rate is 0.1 unless given; a rate of 0 is valid (no ACs)."""
    model = build("A784-S20-S10", steps=4)
    default, tenth, zero = count_ops(model), count_ops(model, 0.1), count_ops(model, 0.0)
    assert [(r.macs, r.acs) for r in default.layers] == [(r.macs, r.acs) for r in tenth.layers]
    assert default.acs == pytest.approx(0.1 * 20 * 10 * 4)
    assert zero.acs == 0.0 and zero.macs == default.macs

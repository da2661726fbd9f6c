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


@pytest.mark.parametrize("synapse", ["none", "first_order", "dual_exp"])
@pytest.mark.parametrize("graph", [False, True])
def test_final_state_does_not_alias_the_callers_tensors(synapse: str, graph: bool) -> None:
    """For T = 1 the fused executor's p[T-1] can be x[0] itself (synapse "none": p = 1 * x)
    and p[T-2] the given p[t-1]; the returned state owns its memory (float64 runs the ATen
    path, where those are views or the input tensors), so a per-sample reset of the state
    in place, as a streaming loop does when one sequence ends, leaves the caller's input
    and initial state as they were, with and without a graph."""
    params = IIRParams(synapse=synapse, reset_decay=0.0, v_threshold=0.5)
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(1, 2, 3, generator=gen, dtype=torch.float64, requires_grad=graph)
    state = IIRState(*(torch.rand(2, 3, generator=gen, dtype=torch.float64) for _ in range(5)))
    x_before, state_before = x.detach().clone(), [s.clone() for s in state]
    _, _, final = iir_multistep(x, params, state)
    assert final.p2 is not state.p1 and final.p1.data_ptr() != x.data_ptr()
    with torch.no_grad():
        for s in final:
            s[0] = 0.0  # sample 0's sequence ended: restart it from zero state
    assert torch.equal(x.detach(), x_before)
    assert [torch.equal(a, b) for a, b in zip(state, state_before)] == [True] * 5


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
    # any alpha > 0, a small one (a wide surrogate) too
    assert erf_sigma(0.5) == 1.0 / (math.sqrt(2.0) * 0.5) and erf_sigma(1) == 1.0 / math.sqrt(2.0)
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


def _hybrid_with_spike_fed_layers() -> nn.Module:
    """A12 (an AL fed by values), S10 (the first SL, fed by the duplicate-coded values once
    per image), S8 and S6 (fed by spikes at every step): weights made positive so that
    every layer fires, neither never nor always."""
    torch.manual_seed(0)
    model = build("A16-A12-S10-S8-S6", coder="duplicate", steps=4, input_shape=(1, 4, 4)).eval()
    with torch.no_grad():
        for op in model.weight_ops.values():
            op.weight.abs_().mul_(0.8)
    return model


def test_exact_input_rates_are_those_of_the_spike_fed_sls_counted_by_hand() -> None:
    """`ops_summary`'s input rates (issue 31): one per SL fed by spikes (not the AL, not the
    first SL, which the coded values feed), each the share of non-zero values among all
    that reached its weight op, counted here from the op's own inputs."""
    from hnn_bridge.ops import ops_summary
    from hnn_bridge.rates import recording_counts

    model = _hybrid_with_spike_fed_layers()
    fed: dict[int, list[torch.Tensor]] = {i: [] for i in model.weight_ops}
    for i, op in model.weight_ops.items():
        op.register_forward_pre_hook(lambda _m, inputs, i=i: fed[i].append(inputs[0].detach().clone()))
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), recording_counts(model) as tally:
        model(x)
    summary = ops_summary(model, tally)
    by_hand = {i: float((torch.cat(v) != 0).sum()) / torch.cat(v).numel() for i, v in fed.items()}
    assert [model.layers[i].token for i in (1, 2, 3, 4)] == ["A12", "S10", "S8", "S6"]
    assert summary["input_rates"] == {"S8#3": pytest.approx(by_hand[3]), "S6#4": pytest.approx(by_hand[4])}
    # the two rates differ and are neither 0 nor 1: a rate of another layer would show
    assert 0 < by_hand[3] < 1 and 0 < by_hand[4] < 1 and by_hand[3] != by_hand[4]
    assert torch.cat(fed[3]).shape == (4 * 5, 10)  # fed at each of the T = 4 steps


def test_assumed_input_events_of_a_per_step_sl_count_every_step() -> None:
    """`assumed_counts` (what `describe` prints): an SL fed by spikes at each of the T steps
    receives rate x inputs x T events per image, with rate x inputs x fan-out x T ACs;
    a layer fed by values once per image receives every input once."""
    from hnn_bridge.ops import assumed_counts

    steps, rate = 4, 0.25
    poisson = build("S64-S32-S10", coder="poisson", steps=steps, input_shape=(1, 8, 8))
    counts = assumed_counts(poisson, rate)
    # layer 0 is the input (64 Poisson-coded values); S32 and S10 are fed by spikes at every step
    assert [(c.token, c.evaluations, c.in_size) for c in counts] == [
        ("S64", 1, 0),
        ("S32", steps, 64),
        ("S10", steps, 32),
    ]
    assert [c.input_events for c in counts] == [0.0, 0.25 * 64 * 4, 0.25 * 32 * 4]
    assert [c.acs for c in counts] == [0.0, 0.25 * 64 * 4 * 32, 0.25 * 32 * 4 * 10]

    hybrid = build("A16-A12-S10-S8", coder="duplicate", steps=steps, input_shape=(1, 4, 4))
    counts = assumed_counts(hybrid, rate)
    assert [(c.evaluations, c.input_events) for c in counts] == [
        (1, 0.0),  # the input layer: no weight op
        (1, 16.0),  # A12: every input value once
        (1, 12.0),  # S10: the coded values once (a constant train is weighed once)
        (steps, 0.25 * 10 * 4),  # S8: spikes at every step
    ]


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize("name", ["membrane_decay", "reset_decay"])
@pytest.mark.parametrize("bad", [True, False, "0.5", 1.5, -0.1])
def test_decays_must_be_numbers_in_the_unit_interval(name: str, bad) -> None:
    """A bool, a string or a value outside [0, 1] is refused with the setting's name."""
    with pytest.raises(ValueError) as info:
        IIRParams(**{name: bad})
    assert str(info.value) == (
        f"IIR neuron: {name} must be in [0, 1] or None (meaning e^(-1/tau_m)), got {bad!r}"
    )


@pytest.mark.parametrize("shape", [(0,), (0, 3)])
def test_the_neuron_refuses_zero_time_steps(shape: tuple[int, ...]) -> None:
    """T = 0 is refused with the shape named, on the fused path and the reference alike."""
    x = torch.zeros(shape)
    want = f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {shape}"
    for run in (iir_multistep, iir_multistep_reference):
        with pytest.raises(ValueError) as info:
            run(x, IIRParams())
        assert str(info.value) == want


def test_a_half_precision_state_is_widened_in_the_core() -> None:
    """`iir_multistep` on a bfloat16 input from a bfloat16 state computes in float32
    (`state_dtype`), as on both converted by hand: spikes and final state bit for bit."""
    from hnn_bridge.functional import state_dtype

    gen = torch.Generator().manual_seed(3)
    x = (torch.rand(4, 2, 6, generator=gen) * 1.2).to(torch.bfloat16)
    state = IIRState(*(torch.rand(2, 6, generator=gen).to(torch.bfloat16) for _ in range(5)))
    widened = IIRState(*(s.to(state_dtype(x.dtype)) for s in state))
    spikes, _, final = iir_multistep(x, IIRParams(), state)
    # the input widened by hand too: a sequence that changes over time stays one
    ref_spikes, _, ref_final = iir_multistep(x.float(), IIRParams(), widened)
    ref_spikes = ref_spikes.to(torch.bfloat16)
    assert torch.equal(spikes, ref_spikes) and spikes.sum() > 0
    assert all(a.dtype == torch.float32 and torch.equal(a, b) for a, b in zip(final, ref_final))


def test_spikingjelly_node_keeps_no_membrane_sequence_by_default() -> None:
    """``store_v_seq`` is False by default, as in SpikingJelly: no [T, ...] membrane kept."""
    node = IIRNode(step_mode="m")
    node(torch.rand(5, 2, 3))
    assert node.store_v_seq is False and getattr(node, "v_seq", None) is None
    stored = IIRNode(step_mode="m", store_v_seq=True)
    stored(torch.rand(5, 2, 3))
    assert stored.v_seq.shape == (5, 2, 3)


@pytest.mark.parametrize(
    "op",
    [
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"),
        nn.Conv2d(1, 2, 3, padding="same"),
        nn.Conv1d(1, 2, 3),
    ],
    ids=["reflect", "circular", "same", "conv1d"],
)
def test_fanout_of_an_op_the_exact_counts_do_not_cover_is_refused(op: nn.Module) -> None:
    """A border that is not zeros reaches other input positions than the zero-padded map
    says; the counts refuse such an op instead of counting it as zero-padded."""
    from hnn_bridge.ops import fanout_map

    with pytest.raises(TypeError) as err:
        fanout_map(op, (1, 5, 5))
    assert str(err.value) == (
        f"cannot count the synapses of {op!r}: exact counts cover nn.Linear and nn.Conv2d with "
        "zero padding given as numbers (padding_mode='zeros')"
    )


def test_fanout_of_zero_padded_and_dense_ops_counted_by_hand() -> None:
    from hnn_bridge.ops import fanout_map

    assert fanout_map(nn.Linear(7, 5), (7,)) == 5
    # 3 x 3, padding 1, on 4 x 4: a corner input lies in 4 windows, an edge one in 6, an inner one in 9
    reach = fanout_map(nn.Conv2d(2, 3, 3, padding=1), (2, 4, 4))
    want = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]], dtype=torch.float64) * 3
    assert torch.equal(reach, want)


def test_exact_counts_kernel_area_is_one_for_a_dense_op_and_k_squared_for_a_conv() -> None:
    from hnn_bridge.ops import exact_counts
    from hnn_bridge.rates import recording_counts

    model = build("A4C3-S6C3-P2-S5", coder="duplicate", steps=3, input_shape=(1, 6, 6))
    with recording_counts(model) as tally:
        model(torch.rand(2, 1, 6, 6))
    rows = {r.token: r for r in exact_counts(model, tally)}
    assert rows["A4C3"].kernel_area == rows["S6C3"].kernel_area == 9
    assert rows["S5"].kernel_area == 1
    # T steps for the spiking rows, none for the artificial one and the pooling
    assert [rows[t].steps for t in ("A4C3", "S6C3", "P2", "S5")] == [0, 3, 0, 3]
    # outputs: a weight op's or a neuron's values; a pooling adds no unit of its own
    assert [rows[t].out_size for t in ("A4C3", "S6C3", "P2", "S5")] == [4 * 36, 6 * 36, 0, 5]
    # a bias add per output value and evaluation (the duplicate-coded first SL: once per
    # image, S5: every step); a pooling has no weight op and adds none
    assert [rows[t].bias_adds for t in ("A4C3", "S6C3", "P2", "S5")] == [4.0 * 36, 6.0 * 36, 0.0, 5.0 * 3]


@pytest.mark.parametrize("synapse", ["none", "first_order", "dual_exp"])
@pytest.mark.parametrize("decays", [(0.0, 0.0), (1.0, 1.0), (0.6, 0.3)], ids=["zero", "one", "between"])
def test_traceable_charge_equals_charge_bit_for_bit(synapse: str, decays: tuple[float, float]) -> None:
    """The step that SpikingJelly's FlexSN traces (coefficients as Python floats) is
    `charge` itself: coefficients of 0 (term dropped), 1 (multiply skipped) and others,
    with and without a post-filter bias, in float32 and float64."""
    from hnn_bridge.functional.iir import Coefficients, charge, traceable_charge

    lam, theta = decays
    k = Coefficients.of(IIRParams(synapse=synapse, membrane_decay=lam, reset_decay=theta, v_threshold=0.7))
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        x, p1, p2, r, v = (torch.randn(4, 5, generator=gen, dtype=dtype) for _ in range(5))
        o = (torch.rand(4, 5, generator=gen) < 0.5).to(dtype)
        for bias in (None, torch.randn(5, generator=gen, dtype=dtype)):
            want = charge(x, p1, p2, r, v, o, k, bias)
            got = traceable_charge(x, p1, p2, r, v, o, k, bias)
            for a, b in zip(got, want):
                assert torch.equal(a, b)
            # and the equations themselves (eq. 1d, 1c, 1a), one rounding per operation
            p = k.a1 * p1 + k.a2 * p2 + k.b * x
            r_new = k.theta * r + o
            v_new = k.lam * v + (p if bias is None else p + bias) - k.v_threshold * r_new
            assert torch.allclose(got[0], p, rtol=1e-6, atol=1e-6)
            assert torch.allclose(got[1], r_new, rtol=1e-6, atol=1e-6)
            assert torch.allclose(got[2], v_new, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(), (6,), (3, 2), (2, 3, 2)], ids=["0-dim", "1-d", "2-d", "3-d"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_widened_half_input_constant_over_time_stays_a_stride_0_view(shape, half) -> None:
    """A half-precision current constant over time (duplicate coding under autocast:
    ``current.unsqueeze(0).expand(T, ...)``) is widened to float32 once and stays a
    stride-0 view over T, so the fused executor's constant-input path still applies; a
    0-dim tensor (no time axis) is widened as it is."""
    from hnn_bridge.functional.iir import widened

    gen = torch.Generator().manual_seed(0)
    if shape == ():
        x = torch.randn((), generator=gen).to(half)
        out = widened(x)
        assert out.dtype == torch.float32 and out.shape == () and torch.equal(out, x.float())
        return
    base = torch.randn(shape[1:], generator=gen).to(half)
    x = base.unsqueeze(0).expand(shape[0], *shape[1:])
    out = widened(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert torch.equal(out, x.float())
    assert out.stride(0) == 0
    changing = torch.randn(shape, generator=gen).to(half)  # not constant: every step its own
    assert torch.equal(widened(changing), changing.float())


@pytest.mark.parametrize("synapse", ["none", "dual_exp"])
def test_iir_multistep_takes_a_single_neuron_sequence(synapse: str) -> None:
    """x_seq of shape [T] (one neuron, no batch dimension) is a valid sequence for the
    functional core as for `IIRNode`: spikes and V equal the reference loop's."""
    params = IIRParams(synapse=synapse, v_threshold=0.5)
    x = torch.rand(7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    spikes, volts, _ = iir_multistep(x, params)
    want_spikes, want_volts, _ = iir_multistep_reference(x, params)
    assert spikes.shape == (7,) and torch.equal(spikes, want_spikes) and torch.equal(volts, want_volts)
    assert 0 < int(spikes.sum()) < 7


@pytest.mark.parametrize("shape", [(), (0,), (0, 3)], ids=["0-dim", "T=0", "T=0-batch"])
def test_a_sequence_without_steps_is_refused_by_every_entry(shape) -> None:
    """A 0-dim tensor has no time axis and T = 0 has no step: the functional core, the
    synapse filter and the reference loop refuse both with the same message."""
    from hnn_bridge.functional import synapse_filter

    x = torch.zeros(shape)
    msg = f"IIR neuron: expected a time-first tensor [T, ...] with T >= 1, got shape {shape}"
    for call in (iir_multistep, synapse_filter, iir_multistep_reference):
        with pytest.raises(ValueError) as err:
            call(x, IIRParams(synapse="dual_exp"))
        assert str(err.value) == msg, call.__name__

"""`hnn-bridge describe`: layers, coder position, operation counts."""

import pytest
from click.testing import CliRunner

from hnn_bridge import build
from hnn_bridge.cli import main
from hnn_bridge.ops import PJ_PER_AC, PJ_PER_MAC, count_ops


def test_describe_mlp_counts_macs_once_per_image():
    result = CliRunner().invoke(main, ["describe", "A784-A500-S10"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert (
        lines[0] == "A784-A500-S10   input 1x28x28   coder duplicate, T=25, input direct, backend reference"
    )
    assert any(l.split()[:4] == ["1", "A500", "AL", "500"] and "392,000" in l for l in lines)
    coder_line = next(i for i, l in enumerate(lines) if "duplicate coder" in l)
    assert "A500" in lines[coder_line - 1] and "S10" in lines[coder_line + 1]
    # 784*500 AL MACs + 500*10 MACs of the first SL, weighed once (constant train)
    assert "MACs 397,000   ACs 0" in result.output


def test_describe_counts_accumulates_at_the_given_rate():
    result = CliRunner().invoke(
        main, ["describe", "S784-S500-S10", "--coder", "poisson", "--rate", "0.2", "-T", "10"]
    )
    assert result.exit_code == 0, result.output
    # ACs = rate x (784*500 + 500*10) x T
    assert f"ACs {0.2 * (784 * 500 + 500 * 10) * 10:,.0f}" in result.output
    assert "assumed presynaptic firing rate of 0.2" in result.output


def test_ops_and_energy_for_a_cnn():
    model = build("A32C3-S64C3-P2-S10", coder="gaussian", steps=4, input_shape=(3, 8, 8))
    ops = count_ops(model, rate=0.5)
    conv_a = 3 * 64 * 9 * 64  # doubled for (mu, ln sigma)
    conv_s = 32 * 64 * 9 * 64 * 4  # fed by Gaussian values at every step
    dense_s = 0.5 * (64 * 4 * 4 * 10) * 4
    assert (ops.macs, ops.acs) == (conv_a + conv_s, dense_s)
    assert ops.energy_pj == (conv_a + conv_s) * PJ_PER_MAC + dense_s * PJ_PER_AC


def test_describe_errors_are_one_line_without_traceback():
    result = CliRunner().invoke(main, ["describe", "A784-S500-A10"])
    assert result.exit_code == 2
    assert "Error: 'A10' follows a spiking layer" in result.output
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(main, ["describe", "A784-S10", "--input-shape", "3by32"])
    assert bad.exit_code == 2 and "'3by32' is not CxHxW, e.g. 3x32x32" in bad.output


def test_measured_rates_feed_the_accumulate_count():
    import torch

    from hnn_bridge.rates import measure_input_rates

    torch.manual_seed(0)
    model = build("S784-S50-S10", coder="poisson", steps=6, input_shape=(1, 28, 28))
    images = torch.rand(20, 1, 28, 28)
    rates = measure_input_rates(model, [(images[:10], None), (images[10:], None)])
    assert sorted(rates) == [1, 2]
    # the Poisson train's rate is the pixel mean; the hidden layer's is its spike mean
    assert abs(rates[1] - images.mean().item()) < 0.01
    assert 0 < rates[2] < 1
    ops = count_ops(model, rates)
    assert ops.acs == pytest.approx(rates[1] * 784 * 50 * 6 + rates[2] * 50 * 10 * 6, rel=1e-12)
    assert model.training is True


def test_describe_with_batch_norm_counts_its_parameters_but_no_operations():
    args = ["describe", "A32C3-S32C3-P2-S10", "--input-shape", "3x32x32", "-T", "8"]
    plain = CliRunner().invoke(main, args).output
    normed = CliRunner().invoke(main, [*args, "--norm", "batch"]).output
    assert "norm batch" in normed.splitlines()[0] and "norm" not in plain.splitlines()[0]
    # BN adds weight and bias per channel (32 + 32 + 10 channels); MACs and ACs are unchanged.
    # The SL S10 has a synapse filter (the S32C3 takes direct input): with bias_placement
    # after_filter its BN's shift is the bias after the filter, and its Linear loses the
    # bias it would have had (10 fewer parameters)
    assert "parameters 92,074   MACs 10,321,920   ACs 65,536" in plain
    assert "parameters 92,212   MACs 10,321,920   ACs 65,536" in normed
    assert " 0  A32C3    AL     32x32x32           960 " in normed
    assert "a batch norm folds into the weight op before it, so it adds no operation" in normed

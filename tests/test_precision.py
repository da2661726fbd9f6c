"""Mixed precision (`hnn_bridge.precision`, ``--precision 32|bf16|16``).

The bound tested here: the IIR neuron computes its state and surrogate in float32 whatever
its input dtype, so under autocast it gives bit for bit the float32 neuron's spikes on the
upcast currents (zero flips; a neuron whose state were bfloat16 would flip spikes). Low
precision therefore enters only through the currents of the weight ops; in a network the
first spiking layer flips at most 0.5% of its spike entries (0.11-0.16% measured on the
paper's CIFAR-10 CNNs), deeper layers diverge further (a flipped spike changes the next
layer's current by a whole weight), and the end-to-end bound is on what training learns.
"""

import json
import math
import re

import pytest
import torch
from click.testing import CliRunner
from helpers import currents, one_thread  # noqa: F401  (a fixture)
from hnn_bridge.adapters.snntorch import IIRLeaky
from hnn_bridge.adapters.spikingjelly import IIRNode

import hnn_bridge as hb
from hnn_bridge import precision as prec
from hnn_bridge.cli import main
from hnn_bridge.errors import ConfigError
from hnn_bridge.functional import iir_multistep, iir_multistep_reference, iir_spikes, iir_step
from hnn_bridge.functional.iir import Coefficients, IIRState
from hnn_bridge.params import IIRParams
from hnn_bridge.recipe import Recipe, RecipeError, load_recipe

HALF = [torch.bfloat16, torch.float16]
PARAMS = IIRParams(membrane_decay=0.8, tau_s=2.0, reset_decay=0.7)


def _half_input(dtype, requires_grad=True):
    x = currents(8, 6, 40, seed=3).to(dtype)
    return x.requires_grad_(requires_grad)


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("entry", ["spikes", "multistep", "reference", "step"])
def test_half_input_neuron_is_the_float32_neuron_on_the_upcast_currents(dtype, entry):
    x = _half_input(dtype)
    x32 = x.detach().float().requires_grad_()
    # the gradient reaching half spikes is half itself (the next weight op's), so draw it so
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype).float()

    def run(inp):
        if entry == "spikes":
            return iir_spikes(inp, PARAMS), None
        if entry == "multistep":
            s, v, st = iir_multistep(inp, PARAMS)
            return s, (v, st)
        if entry == "reference":
            s, v, st = iir_multistep_reference(inp, PARAMS)
            return s, (v, st)
        state, out = IIRState.zeros_like(inp[0]), []
        for x_t in inp:
            o, state = iir_step(x_t, state, PARAMS)
            out.append(o)
        return torch.stack(out), (None, state)

    spikes, extra = run(x)
    spikes32, extra32 = run(x32)
    assert spikes.dtype == dtype
    assert torch.equal(spikes.float(), spikes32) and spikes32.sum() > 0
    if extra is not None:
        volts, state = extra
        if volts is not None:
            assert volts.dtype == torch.float32 and torch.equal(volts, extra32[0])
        assert all(s.dtype == torch.float32 for s in state)
        assert all(torch.equal(a, b) for a, b in zip(state, extra32[1]))
    (spikes.float() * g).sum().backward()
    (spikes32 * g).sum().backward()
    assert x.grad.dtype == dtype and torch.equal(x.grad, x32.grad.to(dtype))


def test_duplicate_coded_half_input_keeps_the_constant_over_time_path():
    c = currents(1, 6, 40, seed=4)[0].bfloat16().requires_grad_()
    c32 = c.detach().float().requires_grad_()
    s = iir_spikes(c.unsqueeze(0).expand(8, 6, 40), PARAMS)
    s32 = iir_spikes(c32.unsqueeze(0).expand(8, 6, 40), PARAMS)
    assert torch.equal(s.float(), s32)
    s.float().sum().backward()
    s32.sum().backward()
    assert torch.equal(c.grad, c32.grad.bfloat16())


def _bf16_state_neuron(x_seq: torch.Tensor, params: IIRParams) -> torch.Tensor:
    """What the neuron would do with its state in bfloat16 (eq. 1a-1f, every product and
    sum rounded to bfloat16): the alternative the float32 state rules out."""
    k = Coefficients.of(params)
    z = torch.zeros_like(x_seq[0], dtype=torch.bfloat16)
    p1, p2, r, v, o, out = z, z, z, z, z, []
    for x in x_seq.bfloat16():
        p = k.a1 * p1 + k.a2 * p2 + k.b * x
        r = k.theta * r + o
        v = k.lam * v + p - k.v_threshold * r
        o = (v >= k.v_threshold).to(torch.bfloat16)
        p1, p2 = p, p1
        out.append(o)
    return torch.stack(out).float()


def test_a_bfloat16_state_would_flip_spikes_that_the_float32_state_keeps():
    x = currents(25, 64, 200, seed=5, scale=0.6, shift=0.25).bfloat16()
    ours = iir_spikes(x, PARAMS).float()
    exact = iir_spikes(x.float(), PARAMS)
    assert torch.equal(ours, exact)
    flips = (_bf16_state_neuron(x, PARAMS) != exact).float().mean().item()
    assert flips > 1e-3  # measured 0.4%: more than the float32 state's zero


def test_adapters_keep_float32_state_under_half_input():
    x = _half_input(torch.bfloat16, requires_grad=False)
    want = iir_spikes(x.float(), PARAMS)
    node = IIRNode(membrane_decay=0.8, tau_s=2.0, reset_decay=0.7, step_mode="m")
    got = node(x)
    assert got.dtype == torch.bfloat16 and torch.equal(got.float(), want)
    assert node.v.dtype == torch.float32
    single = IIRNode(membrane_decay=0.8, tau_s=2.0, reset_decay=0.7, step_mode="s")
    assert torch.equal(torch.stack([single(x_t) for x_t in x]).float(), want)
    assert single.v.dtype == torch.float32
    lif = IIRLeaky(beta=0.8, tau_s=2.0, reset_decay=0.7)
    mem = lif.init_leaky()
    out = []
    for x_t in x:
        spk, mem = lif(x_t, mem)
        out.append(spk)
    assert mem.dtype == torch.float32 and torch.equal(torch.stack(out).float(), want)


@pytest.mark.skipif(not prec.cpu_has_bf16(), reason="needs a CPU with AVX-512 BF16 or AMX")
@pytest.mark.usefixtures("one_thread")
def test_first_spiking_layer_of_a_bf16_cnn_flips_at_most_half_a_percent():
    torch.manual_seed(0)
    model = hb.build(
        "S16C3-S16C3-P2-S32C3-P2-S64-S10",
        steps=8,
        input_shape=(3, 32, 32),
        norm="batch",
        neuron=dict(membrane_decay=0.0, reset_decay=math.exp(-0.25)),
    )
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = model.sl[0]
    seen = []
    handle = first.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().float()))
    with torch.no_grad():
        model(x)
        with prec.autocast("bf16", "cpu"):
            out = model(x)
    handle.remove()
    flips = (seen[0] != seen[1]).float().mean().item()
    assert seen[1].mean() > 0.01 and 0 < flips <= 0.005
    # the first SL (direct input) has no filter: its neuron gets the bf16 current and its
    # spikes come back in bf16; the last SL filters apart from its neuron (Fang et al.'s
    # form): the neuron's input, p + bias, is the float32 filter state, so are the spikes
    assert first(torch.rand(2, 4, 16, 32, 32, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert out.dtype == torch.float32


def test_check_precision_names_what_works(monkeypatch):
    prec.check_precision("32", "cpu")
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "precision 16 (float16 with a GradScaler) is for CUDA devices; on the CPU use --precision bf16 "
            "(where the processor supports it) or 32"
        ),
    ):
        prec.check_precision("16", "cpu")
    with pytest.raises(ConfigError, match=re.escape("unknown precision '64'; choose one of 32, bf16, 16")):
        prec.check_precision("64", "cpu")
    monkeypatch.setattr(prec, "cpu_has_bf16", lambda: False)
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "precision bf16 needs a CPU with AVX-512 BF16 or AMX instructions, which this one lacks"
        ),
    ):
        prec.check_precision("bf16", "cpu")


def test_autocast_and_scaler_per_precision():
    with prec.autocast("32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    with prec.autocast("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert prec.grad_scaler("16", "cpu") is None and prec.grad_scaler("bf16", "cuda") is None


def test_recipe_precision_setting():
    single = Recipe.single(
        "A784-S500-S10", coder="duplicate", training="simultaneous", base=load_recipe("table1a")
    )
    row = single.configure(quick=True, overrides={"precision": "bf16"}).rows[0]
    assert row.settings.precision == "bf16"
    # a fingerprint holds it only when it is not 32, so runs saved before it existed resume
    assert row.settings.identity()["precision"] == "bf16"
    assert "precision" not in single.configure(quick=True).rows[0].settings.identity()
    assert single.configure(quick=True, overrides={"precision": 16}).rows[0].settings.precision == "16"
    with pytest.raises(RecipeError, match=re.escape("expected one of '32', 'bf16', '16', got '8'")):
        single.configure(quick=True, overrides={"precision": "8"})


def test_cli_rejects_a_precision_the_device_cannot_do(tmp_path):
    result = CliRunner().invoke(
        main, ["train", "A784-S20-S10", "--quick", "--precision", "16", "--out", str(tmp_path / "run")]
    )
    assert result.exit_code != 0
    assert "precision 16 (float16 with a GradScaler) is for CUDA devices" in result.output
    assert not (tmp_path / "run").exists()
    bad = CliRunner().invoke(main, ["recipe", "table1a", "--precision", "8"])
    assert bad.exit_code == 2 and "'8' is not one of '32', 'bf16', '16'" in bad.output


@pytest.mark.skipif(not prec.cpu_has_bf16(), reason="needs a CPU with AVX-512 BF16 or AMX")
@pytest.mark.usefixtures("one_thread")
def test_bf16_training_run_learns_and_records_its_precision(tmp_path):
    """A short real run (mnist-5k, --quick settings, 2 epochs) under bf16 autocast learns as
    the float32 run does: both above 80% held-out, within 3 points of each other."""
    accs = {}
    for p in ("32", "bf16"):
        out = tmp_path / p
        result = CliRunner().invoke(
            main, ["train", "A784-S100-S10", "--quick", "--epochs", "2", "--precision", p, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        row = json.loads((out / "results.json").read_text())["rows"][0]
        assert row["settings"]["precision"] == p
        accs[p] = row["seeds"][0]["test_acc_argmax"]
    assert min(accs.values()) > 0.8 and abs(accs["32"] - accs["bf16"]) < 0.03


@pytest.mark.skipif(
    not torch.cuda.is_available() or __import__("importlib.util").util.find_spec("cupy") is None,
    reason="needs a CUDA device and cupy: float16 with a GradScaler is CUDA only",
)
def test_cuda_float16_autocast_with_grad_scaler_on_the_cupy_backend():
    """``--precision 16`` on CUDA: under float16 autocast the cupy network gives the torch
    backend's spike counts bit for bit (both neurons widen the half currents to float32),
    its GradScaler makes the same decisions (a step skipped on overflow halves the scale
    and leaves the weights alone) and the step it takes moves the weights alike."""
    from helpers import rel_err

    from hnn_bridge.backends import copy_weights

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(32, 1, 8, 8, generator=gen) * 3.0).cuda()
    y = torch.randint(0, 10, (32,), generator=gen).cuda()
    models = {
        b: hb.build("A64-S48-S10", backend=b, input_shape=(1, 8, 8), steps=8).cuda()
        for b in ("spikingjelly", "spikingjelly-cupy")
    }
    copy_weights(models["spikingjelly"], models["spikingjelly-cupy"])
    before = [p.detach().clone() for p in models["spikingjelly"].parameters()]
    results = []
    for model in models.values():
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        scaler = prec.grad_scaler("16", "cuda")
        scales = [scaler.get_scale()]
        for _ in range(4):  # until a step is taken; a skipped one leaves the weights as they were
            opt.zero_grad()
            with prec.autocast("16", "cuda"):
                counts = model(x)
                loss = torch.nn.functional.cross_entropy(counts.float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            scales.append(scaler.get_scale())
            if scales[-1] >= scales[-2]:
                break
        results.append((counts.detach(), [p.detach().clone() for p in model.parameters()], scales))
    (counts_t, weights_t, scales_t), (counts_c, weights_c, scales_c) = results
    assert counts_t.sum() > 0 and torch.equal(counts_c, counts_t)
    assert scales_c == scales_t and scales_t[-1] >= scales_t[-2]  # the same decisions, and a step taken
    assert any(not torch.equal(a, b) for a, b in zip(weights_c, before))
    assert all(rel_err(a, b) < 1e-4 for a, b in zip(weights_c, weights_t))

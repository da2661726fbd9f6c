"""Evaluation and rate measurement run the forward only: under torch.no_grad(), batch norm
in eval mode, no graph and no membrane sequence kept, with the training forward's outputs
bit for bit and a lower peak memory."""

import pytest
import torch
from helpers import one_thread  # noqa: F401  (a fixture)
from torch import nn

import hnn_bridge as hb
from hnn_bridge.bench.timing import peak_memory
from hnn_bridge.kernels import fused
from hnn_bridge.rates import measure_input_rates
from hnn_bridge.training.loop import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")
ARCH = "S8C3-S8C3-P2-S10"


def _net_and_batch(batch: int = 4, steps: int = 4):
    torch.manual_seed(0)
    model = hb.build(ARCH, coder="duplicate", steps=steps, input_shape=(1, 12, 12), norm="batch")
    x = torch.rand(batch, 1, 12, 12)
    y = torch.randint(0, 10, (batch,))
    with torch.no_grad():
        for m in model.modules():  # a shift after each batch norm: every layer spikes (rates ~0.1-0.3)
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.bias.fill_(1.0)
        model.train()(x)  # batch norm's running statistics away from their initial 0 and 1
    return model, x, y


@pytest.fixture
def spy(monkeypatch):
    """Every module's call (autograd on, module in training mode, output needs grad) and
    every fused neuron forward (keep_volts, a V sequence returned)."""
    calls, kernels = [], []
    original = fused.fused_forward

    def fused_forward(*args, **kwargs):
        out = original(*args, **kwargs)
        kernels.append((kwargs.get("keep_volts", True), out[1] is not None))
        return out

    monkeypatch.setattr(fused, "fused_forward", fused_forward)

    def watch(model: nn.Module):
        def hook(module, _inputs, output):
            grad = isinstance(output, torch.Tensor) and (output.requires_grad or output.grad_fn is not None)
            calls.append((type(module).__name__, torch.is_grad_enabled(), module.training, grad))

        return [m.register_forward_hook(hook) for m in model.modules()]

    return calls, kernels, watch


@pytest.mark.parametrize("path", ["evaluate", "measure_input_rates"])
def test_evaluation_paths_record_no_graph_and_keep_no_membrane_sequence(spy, path):
    calls, kernels, watch = spy
    model, x, y = _net_and_batch()
    kernels.clear()
    handles = watch(model)
    if path == "evaluate":
        metrics = evaluate(model, [(x, y)])
        assert metrics.n == 4
    else:
        rates = measure_input_rates(model, [(x, None)])
        assert sorted(rates) == [1, 3]  # the SLs fed by spikes: the second S8C3 and S10
    for h in handles:
        h.remove()
    assert any(name == "BatchNorm2d" for name, *_ in calls)
    assert all(
        grad_on is False and training is False and grad is False for _, grad_on, training, grad in calls
    )
    assert kernels and all(keep is False and volts is False for keep, volts in kernels)
    assert model.training is True  # left as it was found

    # the spy sees a graph where there is one: the training forward keeps the V sequence of
    # the SLs fed by spikes (the duplicate-coded first SL's input is constant: V is recomputed)
    calls.clear(), kernels.clear()
    handles = watch(model)
    model.eval()(x)
    for h in handles:
        h.remove()
    assert any(grad for *_, grad in calls) and kernels == [(False, False), (True, True), (True, True)]


def test_evaluation_forward_equals_the_graph_forward_bit_for_bit_and_peaks_lower():
    model, x, y = _net_and_batch(batch=16, steps=8)
    seen = []
    handle = model.register_forward_hook(lambda _m, _i, out: seen.append(out))
    evaluate(model, [(x, y)])
    handle.remove()
    (inferred,) = seen
    assert inferred.requires_grad is False and inferred.grad_fn is None

    model.eval()  # the same weights and running statistics, with autograd recording
    recorded = model(x)
    assert recorded.grad_fn is not None
    assert 0 < inferred.sum() < inferred.numel() * 8  # some spikes, not all
    assert torch.equal(inferred, recorded.detach())

    forward_only = peak_memory(lambda: evaluate(model, [(x, y)]))
    with_graph = peak_memory(lambda: model(x))
    assert 0 < forward_only < with_graph

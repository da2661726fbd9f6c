"""Firing-rate calibration of the SL weights (`hnn_bridge.calibration`)."""

import pytest
import torch

from hnn_bridge import build
from hnn_bridge.calibration import calibrate_firing
from hnn_bridge.rates import measure_input_rates

CNN = "S16C3-S16C3-P2-S32C3-P2-S64-S10"
SHAPE = (3, 16, 16)
NEURON = {"membrane_decay": 0.0}  # Fang et al.'s setting, as in the CIFAR recipes


def _rates(model, x):
    """Output firing rate of every SL and the output counts."""
    spikes = {}

    def record(k):
        def hook(_module, _inputs, output):
            spikes[k] = output.mean().item()

        return hook

    handles = [n.register_forward_hook(record(k)) for k, n in model.neurons.items()]
    with torch.no_grad():
        counts = model(x)
    for h in handles:
        h.remove()
    return spikes, counts


def test_default_init_leaves_deep_layers_silent_and_calibration_makes_them_fire():
    torch.manual_seed(0)
    x = torch.rand(16, *SHAPE)
    model = build(CNN, steps=6, input_shape=SHAPE, neuron=NEURON)
    before, counts = _rates(model, x)
    assert counts.sum() == 0  # no output spike at all: every count ties at zero
    scales = calibrate_firing(model, x, target=0.1)
    assert sorted(scales) == sorted(model.neurons) and all(s > 1 for s in scales.values())
    assert max(before.values()) < 0.05 and min(before.values()) == 0.0
    after, counts = _rates(model, x)
    assert all(0.07 <= r <= 0.13 for r in after.values()), after  # every SL fires near 0.1
    assert counts.sum() > 0
    # the rates feed the accumulate count: the layers after a pooling see more spikes
    inputs = measure_input_rates(model, [(x, None)])
    assert all(r > 0.05 for r in inputs.values())


def test_calibration_keeps_biases_and_als_and_mode():
    torch.manual_seed(1)
    x = torch.rand(8, *SHAPE)
    model = build("A16C3-P2-S32C3-P2-S10", steps=4, input_shape=SHAPE, neuron=NEURON)
    al = {k: v.clone() for k, v in model.al.state_dict().items()}
    biases = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("bias")}
    assert list(model.biases) == [4]  # S10's bias, after its synapse filter (PostFilterBias)
    model.train()
    calibrate_firing(model, x, target=0.2)
    assert model.training
    assert all(torch.equal(v, model.al.state_dict()[k]) for k, v in al.items())
    assert all(torch.equal(b, model.state_dict()[k]) for k, b in biases.items())


def test_target_must_be_a_rate():
    model = build("S784-S10")
    with pytest.raises(ValueError, match=r"target firing rate must be in \(0, 1\), got 1.5"):
        calibrate_firing(model, torch.rand(2, 1, 28, 28), target=1.5)

"""build(norm=...): batch normalisation after every weight op, the same on every CPU backend."""

import pytest
import torch
from torch import nn

import hnn_bridge as hb

CNN = "A8C3-P2-S8C3-P2-S16-S10"


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_none_adds_no_module():
    assert _bn_count(hb.build(CNN, input_shape=(3, 16, 16), norm="none")) == 0


@pytest.mark.parametrize("arch, expected", [
    (CNN, 4),                              # AL conv, SL conv, SL dense, output SL
    ("A8C3-P2-A16-A10", 2),                # the logits of an artificial output get none
    ("A784-A50-S10", 2),
])
def test_batch_after_every_weight_op(arch, expected):
    shape = (1, 28, 28) if arch.startswith("A784") else (3, 16, 16)
    model = hb.build(arch, input_shape=shape, norm="batch", coder=None if "S" not in arch else "duplicate")
    assert _bn_count(model) == expected


def test_unknown_norm_is_a_clear_error():
    with pytest.raises(hb.ConfigError, match=r"^unknown norm 'layer'; choose one of none, batch$"):
        hb.build(CNN, input_shape=(3, 16, 16), norm="layer")


@pytest.mark.parametrize("coder", ["duplicate", "gaussian"])
def test_same_spikes_and_grads_on_every_cpu_backend(coder):
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    outs = []
    ref = hb.build(CNN, coder=coder, steps=5, input_shape=(3, 16, 16), norm="batch")
    for backend in ("reference", "spikingjelly", "snntorch"):
        model = hb.build(CNN, coder=coder, steps=5, input_shape=(3, 16, 16), norm="batch", backend=backend)
        hb.copy_weights(ref, model)
        torch.manual_seed(1)
        out = model(x)  # training mode: batch statistics over T x B rows
        out.sum().backward()
        outs.append((out.detach(), [p.grad.clone() for p in model.parameters()],
                     [b.clone() for n, b in model.named_buffers() if "running" in n]))
    for out, grads, bufs in outs[1:]:
        assert torch.equal(out, outs[0][0])
        assert all(torch.allclose(g, g0, rtol=1e-5, atol=1e-7) for g, g0 in zip(grads, outs[0][1]))
        assert all(torch.equal(b, b0) for b, b0 in zip(bufs, outs[0][2]))


def test_frozen_als_keep_their_statistics():
    ann = hb.build("A8C3-P2-A8C3-P2-A16-A10", coder=None, input_shape=(3, 16, 16), norm="batch")
    hnn = hb.build("A8C3-P2-A8C3-P2-S16-S10", steps=3, input_shape=(3, 16, 16), norm="batch", training="separate")
    hnn.load_als_from(ann)
    hnn.freeze_als()
    before = {k: v.clone() for k, v in hnn.al.state_dict().items()}
    hnn.train()
    hnn(torch.rand(4, 3, 16, 16))
    assert all(torch.equal(v, before[k]) for k, v in hnn.al.state_dict().items())

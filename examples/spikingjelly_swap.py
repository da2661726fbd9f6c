"""The IIR neuron in SpikingJelly code: the code of docs/tutorials/spikingjelly.md.

python examples/spikingjelly_swap.py
"""

from __future__ import annotations

# --8<-- [start:network]
import torch
import torch.nn.functional as F
from hnn_bridge.adapters.spikingjelly import IIRNode
from spikingjelly.activation_based import functional, layer, surrogate

torch.manual_seed(0)
net = torch.nn.Sequential(
    layer.Conv2d(1, 8, 3, padding=1),
    layer.BatchNorm2d(8),
    layer.MaxPool2d(2),
    IIRNode(),
    layer.Conv2d(8, 16, 3, padding=1),
    layer.BatchNorm2d(16),
    layer.MaxPool2d(2),
    IIRNode(),
    layer.Flatten(),
    layer.Linear(16 * 7 * 7, 10),
    layer.BatchNorm1d(10),
    IIRNode(),
)
functional.set_step_mode(net, "m")  # every layer takes [T, B, ...]
T = 8
x = torch.rand(32, 1, 28, 28)
x_seq = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)  # [T, B, C, H, W]: the image at every step
counts = net(x_seq).sum(0)  # [B, 10] spike counts over T
functional.reset_net(net)  # before the next batch
# --8<-- [end:network]


# --8<-- [start:train]
labels = torch.randint(0, 10, (32,))
optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
losses = []
for step in range(15):
    loss = F.cross_entropy(net(x_seq).sum(0), labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    functional.reset_net(net)
    losses.append(loss.item())
print(f"loss {losses[0]:.2f} -> {losses[-1]:.2f}")
# --8<-- [end:train]


# --8<-- [start:surrogates]
paths = {
    name: IIRNode(surrogate_function=fn).path
    for name, fn in [("default", None), ("Erf", surrogate.Erf()), ("ATan", surrogate.ATan())]
}
print(paths)
# --8<-- [end:surrogates]


# --8<-- [start:model-zoo]
from spikingjelly.activation_based.model import spiking_resnet

resnet = spiking_resnet.spiking_resnet18(
    spiking_neuron=IIRNode,  # was: neuron.LIFNode
    surrogate_function=surrogate.Erf(),
    detach_reset=True,
    num_classes=10,
)
functional.set_step_mode(resnet, "m")
out = resnet(torch.rand(2, 2, 3, 32, 32))  # [T, B, C, H, W] -> [T, B, 10]
out.sum().backward()
functional.reset_net(resnet)
# --8<-- [end:model-zoo]


# --8<-- [start:same-spikes]
from hnn_bridge import IIRNeuron

current = torch.randn(T, 4, 50, dtype=torch.float64)
node = IIRNode()
node_spikes = node(current)
functional.reset_net(node)
core_spikes = IIRNeuron()(current)
print("identical:", torch.equal(node_spikes, core_spikes))
# --8<-- [end:same-spikes]

"""The IIR neuron in snnTorch code: the code of docs/tutorials/snntorch.md.

python examples/snntorch_swap.py
"""

from __future__ import annotations

import snntorch as snn
import snntorch.functional as SF

# --8<-- [start:tutorial-net]
import torch
from hnn_bridge.adapters.snntorch import IIRLeaky


class Net(torch.nn.Module):
    def __init__(self, num_steps: int = 10):
        super().__init__()
        self.num_steps = num_steps
        self.fc1 = torch.nn.Linear(784, 100)
        self.lif1 = IIRLeaky()  # was: snn.Leaky(beta=0.9)
        self.fc2 = torch.nn.Linear(100, 10)
        self.lif2 = IIRLeaky()  # was: snn.Leaky(beta=0.9)

    def forward(self, x):
        mem1, mem2 = self.lif1.init_leaky(), self.lif2.init_leaky()
        spk_rec, mem_rec = [], []
        for step in range(self.num_steps):
            spk1, mem1 = self.lif1(self.fc1(x), mem1)
            spk2, mem2 = self.lif2(self.fc2(spk1), mem2)
            spk_rec.append(spk2)
            mem_rec.append(mem2)
        return torch.stack(spk_rec), torch.stack(mem_rec)


# --8<-- [end:tutorial-net]


# --8<-- [start:train]
from hnn_bridge.data import TensorBatches, load_dataset, split_622

digits = load_dataset("mnist-5k")
split = split_622(digits.labels, seed=0)
torch.manual_seed(0)
net = Net()
optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
loss_fn = SF.ce_rate_loss()
batches = TensorBatches(digits.images, digits.labels, split.train, batch_size=64, seed=0)
for epoch in range(2):
    batches.set_epoch(epoch)
    for x, y in batches:
        spk_rec, mem_rec = net(x.flatten(1))
        loss = loss_fn(spk_rec, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

x_val = digits.images[split.val].float().flatten(1) / 255
with torch.no_grad():
    spk_rec, _ = net(x_val)
accuracy = SF.accuracy_rate(spk_rec, digits.labels[split.val])
print(f"validation accuracy {accuracy:.1%}")
# --8<-- [end:train]


# --8<-- [start:same-spikes]
cur = torch.rand(25, 8, 10, dtype=torch.float64) * 0.6
plain = IIRLeaky(beta=0.9, synapse="none", reset_decay=0.0)
stock = snn.Leaky(beta=0.9)
mem_ours, mem_stock = plain.init_leaky(), stock.init_leaky()
ours, theirs = [], []
for t in range(25):
    spk, mem_ours = plain(cur[t], mem_ours)
    ours.append(spk)
    spk, mem_stock = stock(cur[t], mem_stock)
    theirs.append(spk)
same_spikes = torch.equal(torch.stack(ours), torch.stack(theirs).to(torch.float64))
print("same spikes as snn.Leaky:", same_spikes)
# --8<-- [end:same-spikes]


# --8<-- [start:refused]
try:
    IIRLeaky(reset_mechanism="zero")
except ValueError as err:
    message = str(err)
print(message)
# --8<-- [end:refused]


# --8<-- [start:sequential]
import snntorch.utils

seq = torch.nn.Sequential(
    torch.nn.Flatten(),
    torch.nn.Linear(784, 100),
    IIRLeaky(init_hidden=True),
    torch.nn.Linear(100, 10),
    IIRLeaky(init_hidden=True, output=True),
)
x = torch.rand(8, 1, 28, 28)
snntorch.utils.reset(seq)
counts = torch.stack([seq(x)[0] for _ in range(25)]).sum(0)  # [8, 10] spike counts
snntorch.utils.reset(seq)
again = torch.stack([seq(x)[0] for _ in range(25)]).sum(0)
print("reset gives the same counts again:", torch.equal(counts, again))
# --8<-- [end:sequential]


# --8<-- [start:our-reset]
from hnn_bridge.adapters.snntorch import reset

reset(seq)
after_our_reset = torch.stack([seq(x)[0] for _ in range(25)]).sum(0)
print("same counts after hnn_bridge's reset:", torch.equal(counts, after_our_reset))
# --8<-- [end:our-reset]


# --8<-- [start:copy-save]
import copy
import io

snntorch.utils.reset(seq)
twin = copy.deepcopy(seq)  # a copy of the whole model

fresh = torch.nn.Sequential(
    torch.nn.Flatten(),
    torch.nn.Linear(784, 100),
    IIRLeaky(init_hidden=True),
    torch.nn.Linear(100, 10),
    IIRLeaky(init_hidden=True, output=True),
)
fresh.load_state_dict(seq.state_dict())  # the weights only

buffer = io.BytesIO()
torch.save(seq, buffer)  # the whole model
buffer.seek(0)
loaded = torch.load(buffer, weights_only=False)

outputs = []
for model in (seq, twin, fresh, loaded):
    reset(model)
    outputs.append(torch.stack([model(x)[0] for _ in range(25)]).sum(0))
print("all four give the same counts:", all(torch.equal(outputs[0], o) for o in outputs))
# --8<-- [end:copy-save]


# --8<-- [start:richer-api]
lif = IIRLeaky(synapse="first_order", tau_s=2.0)
state = lif.init_iirleaky()
for t in range(5):
    spk_t, state = lif(torch.rand(8, 10), state)  # state.v: the membrane potential
# --8<-- [end:richer-api]

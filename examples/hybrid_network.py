"""Build and train a hybrid network: the code of docs/tutorials/hybrid-network.md.

Run it from any folder (it writes runs/first there):

    python examples/hybrid_network.py
"""

from __future__ import annotations

import shlex
import subprocess
import sys

#: The commands that the page shows, as a shell runs them.
DESCRIBE = "hnn-bridge describe A784-A100-S10 --coder duplicate"
TRAIN = "hnn-bridge train A784-A100-S10 --quick --epochs 1 --steps 4 --out runs/first"


def hnn_bridge(command: str) -> str:
    """Run an ``hnn-bridge ...`` command line with this Python's package; its output."""
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, "-m", "hnn_bridge", *argv[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


describe = hnn_bridge(DESCRIBE)
print(describe)
print(hnn_bridge(TRAIN))


# --8<-- [start:results]
from hnn_bridge.report import load_results

results = load_results("runs/first")
seed = results["rows"][0]["seeds"][0]
print(
    f"test accuracy {seed['test_acc']:.1%} (strict), {seed['test_acc_argmax']:.1%} (argmax), "
    f"ties {seed['test_tie_rate']:.1%}"
)
# --8<-- [end:results]


# --8<-- [start:from-python]
import torch
import torch.nn.functional as F

import hnn_bridge as hb
from hnn_bridge.data import TensorBatches, load_dataset, split_622

digits = load_dataset("mnist-5k")  # uint8 [5000, 1, 28, 28], no download
split = split_622(digits.labels, seed=0)  # 3,000 / 1,000 / 1,000, stratified


def fit(model: torch.nn.Module, epochs: int) -> None:
    """Adam on the cross entropy of the model's scores, as the paper trains (§3.1)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-3)
    batches = TensorBatches(digits.images, digits.labels, split.train, batch_size=64, seed=0)
    for epoch in range(epochs):
        batches.set_epoch(epoch)
        model.train()
        for x, y in batches:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def evaluate(model: torch.nn.Module) -> tuple[float, float]:
    """Argmax accuracy and tie rate on the validation images."""
    model.eval()
    x = digits.images[split.val].float() / 255
    y = digits.labels[split.val]
    with torch.no_grad():
        scores = model(x)
    tied = (scores == scores.max(1, keepdim=True).values).sum(1) > 1
    return (scores.argmax(1) == y).float().mean().item(), tied.float().mean().item()


torch.manual_seed(0)
model = hb.build(
    "A784-A100-S10", coder="duplicate", steps=8, neuron={"membrane_decay": 0.0}
)  # Fang et al.'s MNIST setting
fit(model, epochs=2)
accuracy, ties = evaluate(model)
print(f"simultaneous: argmax {accuracy:.1%}, ties {ties:.1%}")
# --8<-- [end:from-python]


# --8<-- [start:separate]
torch.manual_seed(0)
ann = hb.build("A784-A100-A10")  # the pure ANN: no coder, no SLs
fit(ann, epochs=2)
ann_accuracy, _ = evaluate(ann)

hybrid = hb.build(
    "A784-A100-S10", coder="duplicate", steps=8, training="separate", neuron={"membrane_decay": 0.0}
)
hybrid.load_als_from(ann)
hybrid.freeze_als()
fit(hybrid, epochs=3)
separate_accuracy, _ = evaluate(hybrid)
print(f"ANN {ann_accuracy:.1%}, separate HNN {separate_accuracy:.1%}")
# --8<-- [end:separate]


# --8<-- [start:backends]
x = digits.images[split.test[:100]].float() / 255
model.eval()
with torch.no_grad():
    reference = model(x)
same = {}
for backend in ("spikingjelly", "snntorch"):
    twin = hb.build(
        "A784-A100-S10", coder="duplicate", steps=8, backend=backend, neuron={"membrane_decay": 0.0}
    )
    hb.copy_weights(model, twin)
    twin.eval()
    with torch.no_grad():
        same[backend] = torch.equal(reference, twin(x))
print("identical spike counts:", same)
# --8<-- [end:backends]

"""Train a hybrid network on your own images: the code of docs/tutorials/your-images.md.

Run it from any folder (it writes my-images/, my-images.toml and runs/ there):

    python examples/your_images.py
"""

from __future__ import annotations

import shlex
import subprocess
import sys

#: The commands that the page shows, as a shell runs them.
RUN = "hnn-bridge recipe my-images.toml --quick --out runs/my-images"
TRAIN = "hnn-bridge train A784-A100-S3 --dataset imagefolder:my-images --epochs 1 --steps 4 --out runs/one"


def hnn_bridge(command: str) -> str:
    """Run an ``hnn-bridge ...`` command line with this Python's package; its output."""
    argv = shlex.split(command)
    done = subprocess.run([sys.executable, "-m", "hnn_bridge", *argv[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{command} failed:\n{done.stdout}{done.stderr}")
    return done.stdout


# --8<-- [start:folder]
from pathlib import Path

from PIL import Image

from hnn_bridge.data import read_mnist_5k

# Stand-in for your own photos: 100 handwritten digits of each of three classes.
images, labels, _ = read_mnist_5k()
for digit in ("0", "1", "7"):
    folder = Path("my-images") / digit
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images[labels == int(digit)][:100]):
        Image.fromarray(image[0].numpy()).save(folder / f"{i:03d}.png")
# --8<-- [end:folder]

# --8<-- [start:look]
from hnn_bridge.data import load_dataset

mine = load_dataset("imagefolder:my-images")
print(mine)  # Dataset(name='imagefolder:my-images', n=300, input_shape=(1, 28, 28), ...)
print(mine.classes)  # ['0', '1', '7']: the folder names, sorted; label = position
# --8<-- [end:look]

# --8<-- [start:recipe]
Path("my-images.toml").write_text("""
[recipe]
name = "my-images"
title = "Three digits, ANN against hybrid"
dataset = "imagefolder:my-images"    # relative to the folder you run hnn-bridge in

[defaults]
epochs = 30
lr = 1e-3
steps = 25
batch_size = 32

[defaults.neuron]
membrane_decay = 0.0                 # Fang et al.'s MNIST setting

[quick]
epochs = 3
steps = 4

[[rows]]
arch = "A784-A100-A3"                # the pure ANN: 3 outputs, one per class folder
coder = "none"
training = "simultaneous"

[[rows]]
arch = "A784-A100-S3"                # the hybrid network: a spiking output layer
coder = "duplicate"
training = "simultaneous"
""")
# --8<-- [end:recipe]

print(hnn_bridge(RUN))

# --8<-- [start:results]
from hnn_bridge.report import load_results

for row in load_results("runs/my-images")["rows"]:
    seed = row["seeds"][0]
    print(f"{row['arch']:14} test accuracy {seed['test_acc_argmax']:.1%}, ties {seed['test_tie_rate']:.1%}")
# --8<-- [end:results]

one_network = hnn_bridge(TRAIN)
print(one_network)

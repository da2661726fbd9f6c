"""Small helpers shared by the tests."""

import pytest
import torch

SYNAPSES = ["dual_exp", "first_order", "none"]


def rel_err(a, b) -> float:
    """max |a - b| / max |b| (tensors or array-likes)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def currents(T, *shape, seed=0, scale=1.5, shift=0.3):
    """Reproducible random input currents [T, *shape] ~ N(shift, scale^2)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(T, *shape, generator=gen) * scale + shift


# A two-row recipe on 500 embedded digits (seconds per run): a separately trained row (its pure
# ANN twin is pre-trained first) and a Gaussian-coded one; tests vary it with str.replace.
TINY_RECIPE = """
[recipe]
name = "tiny"
dataset = "mnist"

[defaults]
dataset = "mnist-5k"
subset = 500
epochs = 2
steps = 4
lr = 1e-3
batch_size = 50
dropout = 0.2

[[rows]]
arch = "A784-A32-S10"
coder = "duplicate"
training = "separate"

[[rows]]
arch = "A784-A32-S10"
label = "gaussian"
coder = "gaussian"
training = "simultaneous"
"""


@pytest.fixture(scope="module")
def one_thread():
    """Small networks: one intra-op thread is fastest and does not slow to a crawl on a shared
    CPU (two OpenMP threads on a busy 2-core machine took 10x longer). Use with
    ``pytestmark = pytest.mark.usefixtures("one_thread")`` after importing it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torchrun(nproc: int, *target: str) -> list[str]:
    """The command ``torchrun --nproc_per_node NPROC TARGET...`` (this Python's
    ``torch.distributed.run``) on a free local port: its agent hosts the rendezvous store."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        *target,
    ]

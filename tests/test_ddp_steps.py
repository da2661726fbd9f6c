"""The training loop's data-parallel steps on a tiny network, 2 gloo processes (about 15 s
of CPU time, most of it the two processes starting; docs/notes/2026-12-06-mutation-testing.md,
"The last real gaps").

`tests/test_distributed.py` runs whole recipes under torchrun (MNIST, 30 s and more, the
resume test marked slow); here `train_model` itself runs in two processes that join the
process group as torchrun's would (``WORLD_SIZE``, ``RANK``, ... set by hand), on
synthetic 4 x 4 images, with batch norm and dropout (whose masks each rank draws from its
own random stream):

- the network trains on the CPU with its batch norms as they are (`SyncBatchNorm` is for
  CUDA only: on CPU tensors it raises);
- every rank validates with rank 0's batch-norm statistics, the weights that are saved;
- resumed after epoch 2 from the state saved there (rank 0's, as the runner saves it,
  holding every rank's RNG state), with each process's RNG moved elsewhere first, the
  run equals the uninterrupted one bit for bit: weights, log (without the times), best
  epoch and metrics;
- the per-layer spike totals of `validate`, summed over the two processes, equal one
  process's totals over the two shards, layer by layer, and their quotients are the
  log's ``val_rates``."""

from __future__ import annotations

import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from helpers import torchrun

from hnn_bridge import build
from hnn_bridge.data import TensorBatches
from hnn_bridge.rates import spike_rates
from hnn_bridge.training.distributed import SINGLE
from hnn_bridge.training.loop import TrainOptions, validate

ARCH, SHAPE, STEPS, CLASSES = "A16-A12-S10-S8-S6", (1, 4, 4), 4, 6
N_TRAIN, N_VAL, BATCH = 48, 22, 4  # per-rank batch 4: a global batch of 8


def make_model() -> torch.nn.Module:
    """The same initial weights every time; the global RNG is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build(ARCH, coder="duplicate", steps=STEPS, input_shape=SHAPE, dropout=0.2, norm="batch")
    with torch.no_grad():  # every SL fires at a rate between 0 and 1 from the start
        for op in model.weight_ops.values():
            op.weight.add_(0.15)
    return model


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (N_TRAIN + N_VAL, *SHAPE), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, CLASSES, (N_TRAIN + N_VAL,), generator=gen)
    return images, labels


def batches(rank: int, world: int) -> tuple[TensorBatches, TensorBatches]:
    images, labels = make_data()
    train = TensorBatches(
        images, labels, torch.arange(N_TRAIN), batch_size=BATCH, seed=3, rank=rank, world_size=world
    )
    val = TensorBatches(
        images,
        labels,
        torch.arange(N_TRAIN, N_TRAIN + N_VAL),
        batch_size=5,
        shuffle=False,
        rank=rank,
        world_size=world,
    )
    return train, val


OPTIONS = TrainOptions(epochs=3, lr=0.02, lr_milestones=(2,), lr_gamma=0.5)

# what each process runs: the test module's helpers, train_model under the process group
WORKER = r"""
import io, json, sys
import torch
import torch.nn.functional as F
sys.path.insert(0, sys.argv[2])
from test_ddp_steps import OPTIONS, batches, make_model
from hnn_bridge.training.distributed import all_gather_objects, from_env, teardown
from hnn_bridge.training.loop import Progress, train_model, validate

out = sys.argv[1]
dist = from_env()
train, val = batches(dist.rank, dist.world_size)
torch.manual_seed(0)
model = make_model()
saved = {}

def keep(state):  # the runner saves rank 0's snapshot; every rank resumes from that file
    buf = io.BytesIO()
    torch.save(state, buf)
    saved[state["epoch"]] = all_gather_objects(buf.getvalue(), dist)[0]

class Losses(Progress):  # the loss value each batch reports, the same on every rank
    def __init__(self):
        self.values = []

    def batch(self, index, loss):
        self.values.append(loss)


class Recorded:  # the training batches, with each batch's labels kept
    def __init__(self, inner):
        self.inner, self.labels = inner, []

    def __len__(self):
        return len(self.inner)

    def epoch_batches(self, epoch):
        for x, y in self.inner.epoch_batches(epoch):
            self.labels.append(y)
            yield x, y


outputs, reported, recorded = [], Losses(), Recorded(train)
hook = model.register_forward_hook(lambda m, i, o: outputs.append(o.detach().float()) if m.training else None)
whole = train_model(
    model, list(model.parameters()), recorded, val, OPTIONS, dist=dist, on_epoch=keep, progress=reported
)
hook.remove()
scale = OPTIONS.logit_scale
local = [(float(F.cross_entropy(scale * o, y)), len(y)) for o, y in zip(outputs, recorded.labels)]
types = sorted({type(m).__name__ for m in model.modules() if "Norm" in type(m).__name__})
_, totals = validate(model, val, 0, OPTIONS, dist)
weights = all_gather_objects({k: v.clone() for k, v in model.state_dict().items()}, dist)
losses = {"reported": all_gather_objects(reported.values, dist), "local": all_gather_objects(local, dist)}

torch.manual_seed(1000 + dist.rank)  # each process's RNG elsewhere: the resume must restore it
again = make_model()
state = torch.load(io.BytesIO(saved[2]), weights_only=False)
resumed = train_model(again, list(again.parameters()), train, val, OPTIONS, dist=dist, state=state)
if dist.is_main:
    torch.save(
        {"whole": whole, "resumed": resumed, "weights": weights, "totals": totals, "norms": types,
         "losses": losses, "rng_ranks": len(state["rng_ranks"])},
        out,
    )
teardown(dist, wait=True)
"""

_EXIT_ABORT = "terminate called without an active exception"
_TORCHRUN_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ddp-steps")
    script, out = tmp / "worker.py", tmp / "out.pt"
    script.write_text(WORKER)
    # torchrun, as users launch DDP: its agent hosts the rendezvous store, so neither rank
    # can leave while the other still tears its process group down
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"  # a rank that aborts prints where its threads were
    proc = subprocess.run(
        torchrun(2, str(script), str(out), str(Path(__file__).parent)),
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=240,
    )
    if proc.returncode != 0 and out.exists() and _EXIT_ABORT in proc.stderr:
        # Both ranks finished training and met at teardown's barrier (rank 0 had written
        # its results before it), then one aborted while leaving: seen twice in full CI
        # suites on 2 cores, never alone (docs/notes/2026-12-06-mutation-testing.md). What
        # these tests check is in the results; the abort is reported, not judged.
        warnings.warn(f"a rank aborted after the run had finished: {_EXIT_ABORT}", RuntimeWarning)
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return torch.load(out, weights_only=False)


def _without_seconds(log: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in log]


def test_batch_norm_stays_batch_norm_on_the_cpu(ddp_run) -> None:
    assert ddp_run["norms"] == ["BatchNorm1d"]


def test_every_rank_validates_the_weights_rank_0_saves(ddp_run) -> None:
    """DDP copies rank 0's buffers to the others at the start of each training forward
    only; after the epoch's last batch each process's batch norms have updated their
    running statistics with its own shard. `train_model` copies rank 0's again before
    validating, so every rank evaluates the weights that are saved."""
    w0, w1 = ddp_run["weights"]
    assert w0.keys() == w1.keys() and any("running_mean" in k for k in w0)
    assert [k for k in w0 if not torch.equal(w0[k], w1[k])] == []
    assert all(torch.equal(w0[k], ddp_run["whole"]["model"][k]) for k in w0)


def test_resumed_under_two_processes_equals_the_uninterrupted_run(ddp_run) -> None:
    whole, resumed = ddp_run["whole"], ddp_run["resumed"]
    assert ddp_run["rng_ranks"] == 2 and resumed["epoch"] == whole["epoch"] == 3
    assert _without_seconds(resumed["log"]) == _without_seconds(whole["log"])
    assert resumed["best_epoch"] == whole["best_epoch"] and resumed["best_val"] == whole["best_val"]
    for part in ("model", "best_model"):
        assert resumed[part].keys() == whole[part].keys()
        for key in whole[part]:
            assert torch.equal(resumed[part][key], whole[part][key]), (part, key)


def test_validation_spike_totals_are_summed_per_layer(ddp_run) -> None:
    """Each layer's [spikes, neuron-steps] summed over the ranks equal one process's over
    the two shards with the saved weights, layer by layer, and the log's last
    ``val_rates`` are their quotients."""
    expected: dict[str, list[float]] = {}
    for rank, weights in enumerate(ddp_run["weights"]):
        model = make_model()
        model.load_state_dict(weights)
        _, val = batches(rank, 2)
        _, totals = validate(model, val, 0, OPTIONS, SINGLE)
        for key, (spikes, steps) in totals.items():
            acc = expected.setdefault(key, [0.0, 0.0])
            acc[0] += spikes
            acc[1] += steps
    got = ddp_run["totals"]
    assert list(got) == list(expected) == ["3:S10", "4:S8", "5:S6"]
    assert {k: list(v) for k, v in got.items()} == expected
    # neuron-steps: units x T x the 22 validation images; spikes differ from layer to layer
    assert [v[1] for v in expected.values()] == [10 * 4 * 22, 8 * 4 * 22, 6 * 4 * 22]
    rates = spike_rates(expected)
    assert all(0 < r < 1 for r in rates.values()) and len(set(rates.values())) == 3
    assert ddp_run["whole"]["log"][-1]["val_rates"] == rates


def test_each_batch_reports_the_global_batch_mean_loss(ddp_run) -> None:
    """Every process reports (and checks for NaN) the same loss: the mean over the global
    batch, i.e. each process's own batch mean weighted by its batch size."""
    reported, local = ddp_run["losses"]["reported"], ddp_run["losses"]["local"]
    assert reported[0] == reported[1] and len(reported[0]) == len(local[0]) == 3 * N_TRAIN // (2 * BATCH)
    for value, (l0, n0), (l1, n1) in zip(reported[0], local[0], local[1]):
        assert value == pytest.approx((l0 * n0 + l1 * n1) / (n0 + n1), rel=1e-6)
    assert any(abs(l0 - l1) > 1e-3 for (l0, _), (l1, _) in zip(local[0], local[1]))  # the shards differ

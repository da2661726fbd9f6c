"""The training loop's bookkeeping against an independent computation, and resuming at every
epoch boundary against the uninterrupted run (§4.1).

A network that cannot learn (Adam with lr = 0 on a network whose output is its input:
the rows of the data set are the spike counts themselves) makes every logged training
number computable by hand: the training loss (eq. 2, cross entropy of the counts), the
strict accuracy (ties are wrong), the shares of silent and saturated outputs and the
classes that never fired. The wall time is the sum of the epochs' times; progress numbers
the epochs from 1 and a resumed run continues the numbering.

Resuming: a small hybrid network with dropout and Gaussian coding (both draw from the
global RNG), a learning-rate schedule and the test set scored every epoch, stopped after
each epoch k and resumed from the state saved there, ends with the same log, best epoch,
best and final weights bit for bit as the run that was never stopped."""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hnn_bridge import build
from hnn_bridge.data import TensorBatches, load_dataset, split_622
from hnn_bridge.training import Progress, train_model


def _train(model: nn.Module, train: Any, val: Any, *, epochs: int, lr: float, **kw: Any) -> dict[str, Any]:
    """`train_model` over all of ``model``'s parameters (options as a `TrainOptions` where
    the loop takes one; the keyword form before it)."""
    milestones = kw.pop("lr_milestones", ())
    try:
        from hnn_bridge.training.loop import TrainOptions  # type: ignore[attr-defined]
    except ImportError:
        return train_model(
            model, list(model.parameters()), train, val, epochs=epochs, lr=lr, lr_milestones=milestones, **kw
        )
    return train_model(
        model,
        list(model.parameters()),
        train,
        val,
        TrainOptions(epochs=epochs, lr=lr, lr_milestones=milestones),
        **kw,
    )


# ----------------------------------------------------------------------------- bookkeeping

STEPS = 4


class CountsAreTheInput(nn.Module):
    """A spiking output (``steps`` = T) whose spike counts are its input rows; its one
    parameter is zero and stays zero at lr = 0."""

    steps = STEPS

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.w


class Rows:
    """The rows in ``batch``-sized batches, in an order drawn from the epoch number."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
        self.x, self.y, self.batch = x, y, batch

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch)

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.y), generator=torch.Generator().manual_seed(100 + epoch))
        for i in range(0, len(order), self.batch):
            yield self.x[order[i : i + self.batch]], self.y[order[i : i + self.batch]]


# (counts of 5 classes over T = 4 steps, label): right, wrong, tied, silent, saturated
ROWS = [
    ([3, 1, 0, 0, 0], 0),
    ([0, 0, 4, 1, 0], 2),
    ([1, 2, 0, 0, 0], 1),
    ([2, 0, 0, 1, 0], 3),
    ([2, 2, 0, 0, 0], 0),
    ([0, 0, 0, 0, 0], 0),
    ([0, 0, 0, 0, 0], 3),
    ([0, 3, 3, 0, 0], 2),
    ([0, 0, 1, 4, 0], 3),
    ([1, 0, 0, 0, 0], 0),
]
SATURATED = ([4, 4, 4, 4, 4], 1)


def _expected(x: torch.Tensor, y: torch.Tensor, rows: Rows, epoch: int) -> dict[str, Any]:
    """The epoch's training numbers computed by hand from the rows."""
    loss_sum = 0.0
    for xb, yb in rows.epoch_batches(epoch):  # the batch means, weighted by the batch sizes
        loss_sum += float(F.cross_entropy(xb.float(), yb)) * len(yb)
    right = 0
    for counts, label in zip(x.tolist(), y.tolist()):
        top = max(counts)
        right += counts[label] == top and counts.count(top) == 1
    n = len(y)
    return {
        "train_loss": loss_sum / n,
        "train_acc": right / n,
        "train_out_silent": sum(max(c) == 0 for c in x.tolist()) / n,
        "train_out_saturated": sum(min(c) == STEPS for c in x.tolist()) / n,
        "train_out_dead": [k for k in range(x.shape[1]) if int(x[:, k].max()) == 0],
    }


class Recorder(Progress):
    def __init__(self) -> None:
        self.epochs: list[tuple[int, int, int]] = []
        self.batches: list[int] = []

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.epochs.append((epoch, epochs, batches))

    def batch(self, index: int, loss: float) -> None:
        self.batches.append(index)


#: class 4 fires once, on one row: it is not dead
ONCE = ([0, 0, 2, 0, 1], 2)


@pytest.mark.parametrize(
    "saturated, extra",
    [(False, []), (True, [SATURATED]), (False, [ONCE])],
    ids=["a-dead-class", "a-saturated-row", "a-class-firing-once"],
)
def test_training_numbers_of_a_network_that_cannot_learn(saturated: bool, extra: list) -> None:
    table = ROWS + extra
    x = torch.tensor([r for r, _ in table], dtype=torch.float32)
    y = torch.tensor([label for _, label in table])
    train, val = Rows(x, y, batch=3), Rows(x, y, batch=4)
    progress = Recorder()
    model = CountsAreTheInput()
    state = _train(model, train, val, epochs=3, lr=0.0, progress=progress)
    assert float(model.w.detach()) == 0.0  # nothing was learnt: every epoch sees the same counts
    log = state["log"]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    for epoch, record in enumerate(log):
        want = _expected(x, y, train, epoch)
        assert record["train_loss"] == pytest.approx(want["train_loss"], rel=1e-12)
        for key in ("train_acc", "train_out_silent", "train_out_saturated", "train_out_dead"):
            assert record[key] == want[key], (epoch, key)
        assert record["val_acc"] == want["train_acc"]  # the same rows, scored by the same rule
    assert log[0]["train_out_dead"] == ([] if extra else [4])
    assert state["wall_s"] == pytest.approx(sum(r["seconds"] for r in log), rel=0, abs=1e-9)
    assert progress.epochs == [(e, 3, len(train)) for e in (1, 2, 3)]
    assert progress.batches == [1, 2, 3, 4] * 3


def test_a_resumed_run_continues_the_epoch_numbers_and_the_wall_time() -> None:
    x = torch.tensor([r for r, _ in ROWS], dtype=torch.float32)
    y = torch.tensor([label for _, label in ROWS])
    saved: list[dict[str, Any]] = []
    _train(
        CountsAreTheInput(),
        Rows(x, y, 3),
        Rows(x, y, 5),
        epochs=3,
        lr=0.0,
        on_epoch=lambda s: saved.append(copy.deepcopy(s)),
    )
    first = saved[0]
    assert first["wall_s"] == pytest.approx(first["log"][0]["seconds"], rel=0, abs=1e-9)
    progress = Recorder()
    state = _train(
        CountsAreTheInput(),
        Rows(x, y, 3),
        Rows(x, y, 5),
        epochs=3,
        lr=0.0,
        progress=progress,
        state=copy.deepcopy(first),
    )
    assert progress.epochs == [(2, 3, 4), (3, 3, 4)]
    assert [r["epoch"] for r in state["log"]] == [1, 2, 3]
    assert state["log"][0] == first["log"][0]
    assert state["wall_s"] == pytest.approx(sum(r["seconds"] for r in state["log"]), rel=0, abs=1e-9)

    # a state saved without its wall time (an older checkpoint) counts only the new epochs
    older = {k: v for k, v in copy.deepcopy(first).items() if k != "wall_s"}
    state = _train(CountsAreTheInput(), Rows(x, y, 3), Rows(x, y, 5), epochs=3, lr=0.0, state=older)
    assert state["wall_s"] == pytest.approx(sum(r["seconds"] for r in state["log"][1:]), rel=0, abs=1e-9)


class EtaRecorder(Progress):
    def __init__(self) -> None:
        self.etas: list[float] = []

    def end_epoch(self, record: Any, eta_s: float) -> None:
        self.etas.append(eta_s)


def test_the_time_left_is_the_mean_epoch_so_far_times_the_epochs_left() -> None:
    """After epoch e of E the progress line's estimate is (E - e) x the wall time so far / e;
    a resumed run's wall time includes the epochs before the stop."""
    x = torch.tensor([r for r, _ in ROWS], dtype=torch.float32)
    y = torch.tensor([label for _, label in ROWS])
    saved: list[dict[str, Any]] = []
    progress = EtaRecorder()
    state = _train(
        CountsAreTheInput(),
        Rows(x, y, 3),
        Rows(x, y, 5),
        epochs=4,
        lr=0.0,
        progress=progress,
        on_epoch=lambda s: saved.append(copy.deepcopy(s)),
    )
    seconds = [r["seconds"] for r in state["log"]]
    assert all(s > 0 for s in seconds)
    want = [(4 - e) * sum(seconds[:e]) / e for e in (1, 2, 3, 4)]
    assert progress.etas == pytest.approx(want, rel=1e-9, abs=1e-12) and progress.etas[-1] == 0.0

    progress = EtaRecorder()
    state = _train(
        CountsAreTheInput(),
        Rows(x, y, 3),
        Rows(x, y, 5),
        epochs=4,
        lr=0.0,
        progress=progress,
        state=copy.deepcopy(saved[1]),
    )
    seconds = [r["seconds"] for r in state["log"]]
    assert progress.etas == pytest.approx([(4 - e) * sum(seconds[:e]) / e for e in (3, 4)], rel=1e-9)


class NanInEpoch(Rows):
    """Rows whose second epoch's second batch is NaN, after a pause of `PAUSE` seconds."""

    PAUSE = 0.05

    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (xb, yb) in enumerate(super().epoch_batches(epoch)):
            if epoch == 1 and i == 1:
                time.sleep(self.PAUSE)
                xb = torch.full_like(xb, float("nan"))
            yield xb, yb


def test_a_non_finite_loss_keeps_the_finished_epochs_and_the_wall_time_so_far() -> None:
    from hnn_bridge.training.loop import NonFiniteLoss

    x = torch.tensor([r for r, _ in ROWS], dtype=torch.float32)
    y = torch.tensor([label for _, label in ROWS])
    started = time.perf_counter()
    with pytest.raises(NonFiniteLoss, match=r"non-finite training loss \(nan\) in epoch 2, batch 2;") as err:
        _train(CountsAreTheInput(), NanInEpoch(x, y, 3), Rows(x, y, 5), epochs=3, lr=0.0)
    elapsed = time.perf_counter() - started
    finished = err.value.finished
    assert (err.value.epoch, err.value.batch) == (2, 2) and finished["epoch"] == 1
    assert [r["epoch"] for r in finished["log"]] == [1] and finished["best_epoch"] == 1
    # the first epoch's time plus the stopped epoch's, which paused before its NaN batch
    assert finished["log"][0]["seconds"] + NanInEpoch.PAUSE <= finished["wall_s"] <= elapsed


class NanAtOnce(Rows):
    def epoch_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for xb, yb in super().epoch_batches(epoch):
            yield torch.full_like(xb, float("nan")), yb


def test_a_non_finite_loss_in_the_first_epoch_has_no_best_epoch() -> None:
    """Stopped before any epoch finished: best epoch 0 (the 1-based epochs start at 1),
    no validation metrics, an empty log."""
    from hnn_bridge.training.loop import NonFiniteLoss

    x = torch.tensor([r for r, _ in ROWS], dtype=torch.float32)
    y = torch.tensor([label for _, label in ROWS])
    with pytest.raises(NonFiniteLoss, match=r"in epoch 1, batch 1; stopped, keeping the 0 finished") as err:
        _train(CountsAreTheInput(), NanAtOnce(x, y, 3), Rows(x, y, 5), epochs=2, lr=0.0)
    finished = err.value.finished
    assert finished["epoch"] == 0 and finished["best_epoch"] == 0
    assert finished["best_val"] is None and finished["log"] == [] and finished["wall_s"] >= 0.0


@pytest.mark.parametrize(
    "saved_with, resumed_with", [((1,), ()), ((), (1,))], ids=["schedule-dropped", "schedule-added"]
)
def test_resuming_with_or_without_a_schedule_loads_only_what_both_have(saved_with, resumed_with) -> None:
    """A state saved with a learning-rate schedule resumes into a run without one (the
    saved scheduler state is not needed) and a state without one into a run with one
    (its scheduler starts as constructed); ``train_model`` called directly, as the runner
    refuses a resume whose settings differ."""
    x = torch.tensor([r for r, _ in ROWS], dtype=torch.float32)
    y = torch.tensor([label for _, label in ROWS])
    saved: list[dict[str, Any]] = []
    common = dict(epochs=3, lr=0.1)
    _train(
        CountsAreTheInput(),
        Rows(x, y, 3),
        Rows(x, y, 5),
        lr_milestones=saved_with,
        on_epoch=lambda s: saved.append(copy.deepcopy(s)),
        **common,
    )
    assert (saved[0]["scheduler"] is None) == (saved_with == ())
    state = _train(
        CountsAreTheInput(),
        Rows(x, y, 3),
        Rows(x, y, 5),
        lr_milestones=resumed_with,
        state=copy.deepcopy(saved[0]),
        **common,
    )
    # dropped: the optimizer's saved learning rate (0.1 x 0.1 after the milestone) stays;
    # added: a fresh schedule counts its milestone from the resume, one step per epoch
    want = [0.1, 0.1 * 0.1, 0.1 * 0.1] if resumed_with == () else [0.1, 0.1, 0.1 * 0.1]
    assert [r["lr"] for r in state["log"]] == pytest.approx(want, rel=1e-12)


# ----------------------------------------------------------------------------- resume at every epoch


@pytest.fixture(scope="module")
def digits() -> tuple[TensorBatches, TensorBatches, TensorBatches]:
    ds = load_dataset("mnist-5k")
    pick = split_622(ds.labels, seed=0, ratios=(300, len(ds) - 300, 0)).train
    images, labels = ds.images[pick], ds.labels[pick]
    split = split_622(labels, seed=0)
    return (
        TensorBatches(images, labels, split.train, batch_size=32, seed=4),
        TensorBatches(images, labels, split.val, batch_size=64, shuffle=False),
        TensorBatches(images, labels, split.test, batch_size=64, shuffle=False),
    )


def _hybrid() -> nn.Module:
    torch.manual_seed(7)
    return build("A784-A24-S10", coder="gaussian", steps=4, dropout=0.3)


def _without_seconds(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in log]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


EPOCHS = 4


def test_resuming_after_every_epoch_equals_the_uninterrupted_run(digits) -> None:
    train, val, test = digits
    kw = dict(epochs=EPOCHS, lr=3e-3, lr_milestones=(2,), test_batches=test)
    saved: list[dict[str, Any]] = []
    model = _hybrid()
    torch.manual_seed(11)
    straight = _train(model, train, val, on_epoch=lambda s: saved.append(copy.deepcopy(s)), **kw)
    final = copy.deepcopy(model.state_dict())
    assert [s["epoch"] for s in saved] == list(range(1, EPOCHS + 1))
    log = straight["log"]
    assert len({r["train_loss"] for r in log}) == EPOCHS and math.isfinite(log[-1]["train_loss"])
    assert {r["lr"] for r in log} == {3e-3, 3e-3 * 0.1}  # the schedule's step is in the saved state
    for k in range(1, EPOCHS):
        torch.manual_seed(1000 + k)  # whatever the RNG holds before, the saved state's stream is restored
        resumed_model = _hybrid()
        resumed = _train(resumed_model, train, val, state=copy.deepcopy(saved[k - 1]), **kw)
        assert _without_seconds(resumed["log"]) == _without_seconds(log), k
        assert resumed["log"][:k] == saved[k - 1]["log"], k  # earlier epochs kept as they were logged
        assert (resumed["epoch"], resumed["best_epoch"], resumed["best_val"]) == (
            straight["epoch"],
            straight["best_epoch"],
            straight["best_val"],
        ), k
        assert _same_weights(resumed["best_model"], straight["best_model"]), k
        assert _same_weights(resumed_model.state_dict(), final), k


class _NotData:
    """An arbitrary object: a checkpoint that pickles one is not a file `torch_save` wrote."""


def test_checkpoints_load_tensors_and_plain_data_only(tmp_path) -> None:
    """`torch_load` reads what `torch_save` writes and refuses a file that would run
    arbitrary unpickling (``weights_only=True``)."""
    import pickle

    from hnn_bridge.training.checkpoint import torch_load, torch_save

    good = {"epoch": 3, "weights": torch.arange(4.0), "log": [{"val_acc": 0.5}]}
    torch_save(good, tmp_path / "good.pt")
    loaded = torch_load(tmp_path / "good.pt")
    assert loaded["epoch"] == 3 and loaded["log"] == good["log"]
    assert torch.equal(loaded["weights"], good["weights"])
    torch.save({"epoch": 3, "thing": _NotData()}, tmp_path / "bad.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch_load(tmp_path / "bad.pt")

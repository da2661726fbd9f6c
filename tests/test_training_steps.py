"""The steps of `loop.train_model`, each on its own: the epoch tally, the best-validation
record, the optimizers and their schedule, a state saved and resumed, the test pass that
leaves the RNG alone, and a non-finite loss stopping the epoch."""

from __future__ import annotations

import math

import pytest
import torch

from hnn_bridge import build
from hnn_bridge.data import TensorBatches
from hnn_bridge.training.distributed import SINGLE
from hnn_bridge.training.loop import (
    EpochTally,
    Metrics,
    NonFiniteLoss,
    Optimizers,
    Progress,
    TrainingRecord,
    TrainOptions,
    epoch_record,
    evaluate,
    resume,
    score_on_test,
    snapshot,
    train_epoch,
    train_model,
)


def _batches(n: int = 48, batch: int = 16, seed: int = 0) -> TensorBatches:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 4, 4), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 4, (n,), generator=gen)
    return TensorBatches(images, labels, torch.arange(n), batch_size=batch, shuffle=True, seed=seed)


def _net(coder: str = "duplicate") -> torch.nn.Module:
    torch.manual_seed(0)
    return build(
        "A16-A8-S6-S4" if coder == "gaussian" else "A16-S8-S4", coder=coder, steps=3, input_shape=(1, 4, 4)
    )


def _metrics(acc: float) -> Metrics:
    return Metrics(acc, acc, 0.0, 0.0, 1.0, 10)


def test_epoch_tally_counts_hits_silent_saturated_and_dead_classes():
    tally = EpochTally(steps=3)
    tally.add(torch.tensor([[0.0, 0, 0, 0], [3, 3, 3, 3], [1, 0, 2, 0]]), torch.tensor([0, 1, 2]), loss=0.5)
    tally.add(torch.tensor([[2.0, 0, 1, 0]]), torch.tensor([0]), loss=2.0)
    assert (tally.correct, tally.seen, tally.silent, tally.saturated) == (2, 4, 1, 1)  # ties count as wrong
    assert tally.loss_sum == pytest.approx(0.5 * 3 + 2.0)
    assert tally.output_shares() == (0.25, 0.25)
    assert tally.fired.tolist() == [3, 1, 3, 1]
    assert tally.dead_classes() == []
    tally.add(torch.zeros(2, 4), torch.tensor([1, 1]), loss=1.0)
    assert tally.dead_classes() == [] and tally.silent == 3
    quiet = EpochTally(steps=3)
    quiet.add(torch.tensor([[1.0, 0, 2, 0]]), torch.tensor([2]), loss=1.0)
    assert quiet.dead_classes() == [1, 3]
    ann = EpochTally(steps=None)
    ann.add(torch.tensor([[0.5, -1.0]]), torch.tensor([0]), loss=1.0)
    assert ann.output_shares() == (None, None) and ann.dead_classes() is None and ann.correct == 1


def test_epoch_record_reads_the_tally_and_the_scores():
    tally = EpochTally(steps=3)
    tally.add(torch.tensor([[3.0, 0], [0, 0]]), torch.tensor([0, 1]), loss=1.5)
    line = epoch_record(4, tally, _metrics(0.5), _metrics(0.25), 1e-3, 2.0, True, {"1:S8": (10, 100)})
    assert (line.epoch, line.train_loss, line.train_acc, line.val_acc, line.lr, line.best) == (
        4,
        1.5,
        0.5,
        0.5,
        1e-3,
        True,
    )
    assert (line.train_out_silent, line.train_out_saturated, line.train_out_dead) == (0.5, 0.0, [1])
    assert line.val_rates == {"1:S8": 0.1} and line.test_acc == 0.25
    assert epoch_record(1, tally, _metrics(0.5), None, 1e-3, 2.0, False, {}).test_acc is None


def test_record_keeps_the_first_best_epoch_as_a_copy():
    model = _net()
    record = TrainingRecord(best_model={})
    assert record.update(1, _metrics(0.5), model) and record.best_epoch == 1
    kept = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert not record.update(2, _metrics(0.5), model)  # equal is not better: the first stays
    assert record.best_epoch == 1 and all(torch.equal(record.best_model[k], v) for k, v in kept.items())
    assert record.update(3, _metrics(0.6), model) and record.best_val["acc"] == 0.6
    finished = record.finished(3, 9.0)
    assert finished["epoch"] == 3 and finished["best_epoch"] == 3 and finished["wall_s"] == 9.0


def test_optimizers_follow_the_milestones_and_need_no_scaler_on_the_cpu():
    params = [torch.nn.Parameter(torch.ones(2))]
    plain = Optimizers.make(params, TrainOptions(epochs=3, lr=0.1))
    assert plain.scheduler is None and plain.scaler is None
    opts = Optimizers.make(params, TrainOptions(epochs=3, lr=0.1, lr_milestones=(1, 2), lr_gamma=0.5))
    lrs = []
    for _ in range(3):
        lrs.append(opts.optimizer.param_groups[0]["lr"])
        opts.step((params[0] ** 2).sum())
        opts.scheduler.step()
    assert lrs == [0.1, 0.05, 0.025] and params[0].grad is not None


def test_a_snapshot_resumes_into_fresh_objects_exactly():
    model, train, val = _net(), _batches(), _batches(32, seed=1)
    options = TrainOptions(epochs=1, lr=1e-2, lr_milestones=(5,))
    state = train_model(model, list(model.parameters()), train, val, options)
    torch.manual_seed(123)  # the RNG moves on; resume puts it back
    fresh = _net()
    opts = Optimizers.make(list(fresh.parameters()), options)
    record = resume(state, fresh, opts, SINGLE)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert torch.equal(torch.get_rng_state(), state["rng"]["cpu"])
    assert (record.best_epoch, record.log, record.wall) == (
        state["best_epoch"],
        state["log"],
        state["wall_s"],
    )
    assert record.log is not state["log"] and record.best_model is not state["best_model"]
    again = snapshot(1, fresh, opts, record, "cpu", SINGLE)
    assert again["optimizer"]["state"][0]["step"] == state["optimizer"]["state"][0]["step"] == len(train)
    assert again["scheduler"] == state["scheduler"] and set(again) == set(state)


def test_the_test_pass_leaves_the_rng_where_it_was():
    model, test = _net("gaussian"), _batches(32, seed=2)
    options = TrainOptions(epochs=1, lr=1e-3)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    evaluate(model, test.epoch_batches(0))
    assert not torch.equal(torch.get_rng_state(), before)  # the Gaussian coder draws noise
    torch.manual_seed(7)
    scores = score_on_test(model, test, options, SINGLE)
    assert torch.equal(torch.get_rng_state(), before) and scores.n == 32


def test_a_non_finite_loss_stops_the_epoch_before_any_step():
    model = build("A16-A8-A4", input_shape=(1, 4, 4))
    with torch.no_grad():
        model.state_dict()[next(k for k in model.state_dict() if k.endswith("weight"))].fill_(math.nan)
    options = TrainOptions(epochs=1, lr=1e-3)
    opts = Optimizers.make(list(model.parameters()), options)
    seen = []

    def stop(batch: int, value: float) -> NonFiniteLoss:
        seen.append((batch, value))
        return NonFiniteLoss(1, batch, value, {})

    with pytest.raises(NonFiniteLoss, match="batch 1"):
        train_epoch(
            model, _batches(), 0, opts, options, steps=None, dist=SINGLE, progress=Progress(), stop=stop
        )
    assert len(seen) == 1 and seen[0][0] == 1 and math.isnan(seen[0][1])
    assert not opts.optimizer.state  # no Adam step was taken

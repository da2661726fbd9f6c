"""Train one network (§4.1): Adam, cross entropy on the output, the best-validation epoch.

The loss is cross entropy on what the network returns: for a spiking output layer the
spike counts summed over the T steps, which is eq. 2 (softmax over the counts); for a
pure ANN the logits. After every epoch the network is evaluated on the validation set
(``model.eval()``, ``torch.no_grad()``), and the weights of the epoch with the best
validation accuracy are kept: those are the ones evaluated on test (§4.1).

Accuracy with spike-count ties: the class with the highest count is the prediction only
when that count is unique. When several classes share the top count (including the
all-silent output, every count zero) the image counts as wrong (the strict rule,
``acc``); the share of such images is ``tie_rate``. ``acc_argmax`` is the optimistic
accuracy that breaks ties by the lowest class index, as ``torch.argmax`` does.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..precision import autocast, grad_scaler
from ..rates import recording_spike_rates, spike_rates
from .checkpoint import rng_state, set_rng_state
from .distributed import SINGLE, DistContext, all_gather_objects, all_reduce_sum, rank_seed

__all__ = [
    "TIE_RULE",
    "EpochRecord",
    "EpochTally",
    "Metrics",
    "NonFiniteLoss",
    "Optimizers",
    "Progress",
    "TrainOptions",
    "TrainingRecord",
    "data_parallel",
    "epoch_record",
    "evaluate",
    "resume",
    "score_batch",
    "score_on_test",
    "snapshot",
    "train_epoch",
    "train_model",
    "validate",
]

TIE_RULE = (
    "Accuracy counts a prediction as correct only when the true class has the unique highest "
    "output (spike count); images whose top count is shared by several classes, including an "
    "all-silent output, count as wrong. 'tie rate' is the share of such test images; "
    "'argmax acc.' breaks ties by the lowest class index instead (torch.argmax), an upper bound."
)


@dataclass(frozen=True)
class Metrics:
    """Accuracy of one pass over a data set (fractions in [0, 1])."""

    acc: float  # strict rule: ties are wrong
    acc_argmax: float  # ties broken by the lowest index
    tie_rate: float  # several classes share the top output
    silent_rate: float  # every output is zero (no output spike)
    loss: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochRecord:
    """One line of the per-epoch log."""

    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_acc: float
    val_acc_argmax: float
    val_tie_rate: float
    lr: float
    seconds: float
    best: bool  # this epoch's weights became the best so far
    # spiking output only (None for an ANN): shares of this epoch's training images whose
    # output was silent (no spike at all) or saturated (every class fired at every step)
    train_out_silent: float | None = None
    train_out_saturated: float | None = None
    # spikes per neuron per step of every SL on the validation set, by `rates.layer_key`
    val_rates: dict[str, float] | None = None
    # only with ``test_batches`` (`train_model`): this epoch's weights on the test set, for
    # reporting the best *test* epoch beside the best-validation one (never used to select)
    test_acc: float | None = None
    test_acc_argmax: float | None = None
    test_tie_rate: float | None = None
    # spiking output only: the classes whose output neuron fired on no training image of
    # the epoch (never predicted; their neurons get almost no surrogate gradient)
    train_out_dead: list[int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite training loss. Carries what finished before it: the epoch
    records, the best-validation weights and metrics so far."""

    def __init__(self, epoch: int, batch: int, value: float, finished: Mapping[str, Any]) -> None:
        super().__init__(
            f"non-finite training loss ({value}) in epoch {epoch}, batch {batch}; "
            f"stopped, keeping the {epoch - 1} finished epoch(s)"
        )
        self.epoch = epoch
        self.batch = batch
        self.value = value
        self.finished = finished


class Progress:
    """Receives progress events; the default does nothing (see `training.progress`)."""

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None: ...

    def batch(self, index: int, loss: float) -> None: ...

    def end_epoch(self, record: EpochRecord, eta_s: float) -> None: ...

    def close(self) -> None: ...


def score_batch(out: Tensor, y: Tensor) -> tuple[int, int, int, int]:
    """(correct by the strict rule, correct by argmax, ties, silent) for one batch."""
    top = out.max(dim=1, keepdim=True).values
    at_top = out == top
    tied = at_top.sum(dim=1) > 1
    silent = (out == 0).all(dim=1)
    argmax = out.argmax(dim=1)
    hit = argmax == y
    return int((hit & ~tied).sum()), int(hit.sum()), int(tied.sum()), int(silent.sum())


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    dist: DistContext | None = None,
    precision: str = "32",
    logit_scale: float = 1.0,
) -> Metrics:
    """Accuracy (strict tie rule and argmax), tie rate and loss over ``batches``.

    ``precision`` (`hnn_bridge.precision.PRECISIONS`): the forward runs under that autocast,
    as in training; the device is the model's. ``logit_scale`` scales a spiking output in
    the loss only (as in `train_model`); the accuracies do not depend on it.

    Under DDP (``dist`` with several processes) each process passes its own share of the
    set and the counts are summed over all processes (every process gets the same
    `Metrics`); ``model`` is the unwrapped module (no gradient synchronisation here).
    """
    was_training = model.training
    model.eval()
    strict = argmax = ties = silent = n = 0
    loss = 0.0
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    scale = _loss_scale(model, logit_scale)
    try:
        for x, y in batches:
            with autocast(precision, device):
                out = model(x)
            loss += float(F.cross_entropy(scale * out.float(), y, reduction="sum"))
            s, a, t, z = score_batch(out, y)
            strict, argmax, ties, silent, n = strict + s, argmax + a, ties + t, silent + z, n + len(y)
    finally:
        model.train(was_training)
    if dist is not None and dist.distributed:
        strict, argmax, ties, silent, n, loss = all_reduce_sum([strict, argmax, ties, silent, n, loss], dist)
        strict, argmax, ties, silent, n = (int(round(v)) for v in (strict, argmax, ties, silent, n))
    if n == 0:
        return Metrics(0.0, 0.0, 0.0, 0.0, math.nan, 0)
    return Metrics(strict / n, argmax / n, ties / n, silent / n, loss / n, n)


def _loss_scale(model: nn.Module, logit_scale: float) -> float:
    """``logit_scale`` for a spiking output (counts over T steps), 1 for an ANN's logits."""
    return logit_scale if getattr(model, "steps", None) is not None else 1.0


def _cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (for gathering RNG states)."""
    if isinstance(obj, Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


def _clone(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


@dataclass(frozen=True)
class TrainOptions:
    """What `train_model` trains with (a recipe row's settings of the same names).

    ``lr_milestones`` / ``lr_gamma``: a `MultiStepLR` (none without milestones).
    ``precision`` (``"32"``, ``"bf16"``, ``"16"``; `hnn_bridge.precision`): forward and loss
    run under `torch.autocast` of that dtype (validation too), backward and Adam outside
    it, as in PyTorch's AMP recipe; ``"16"`` on CUDA adds a GradScaler, saved with the
    state. The neuron keeps its state in float32 (`hnn_bridge.functional.iir`).
    ``logit_scale``: for a spiking output the loss is the cross entropy of ``logit_scale``
    x the spike counts (eq. 2b: 1); a pure ANN's logits are used as they are.
    """

    epochs: int
    lr: float
    lr_milestones: Sequence[int] = ()
    lr_gamma: float = 0.1
    device: torch.device | str = "cpu"
    precision: str = "32"
    logit_scale: float = 1.0


@dataclass
class Optimizers:
    """Adam over the trained parameters, its `MultiStepLR` (None without milestones) and
    the float16 GradScaler (None unless ``precision="16"`` on CUDA)."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any

    @classmethod
    def make(cls, params: Sequence[nn.Parameter], options: TrainOptions) -> "Optimizers":
        optimizer = torch.optim.Adam(params, lr=options.lr)
        scaler = grad_scaler(options.precision, options.device)
        milestones = list(options.lr_milestones)
        scheduler = (
            torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, options.lr_gamma)
            if milestones
            else None
        )
        return cls(optimizer, scheduler, scaler)

    def step(self, loss: Tensor) -> None:
        """zero_grad, backward and the Adam step (through the scaler when there is one)."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


@dataclass
class TrainingRecord:
    """What the finished epochs left: their log (`EpochRecord` dicts), the best-validation
    epoch (1-based, 0 before any), its metrics and weights, and the wall time."""

    best_model: dict[str, Tensor]
    best_epoch: int = 0
    best_acc: float = -1.0
    best_val: dict[str, Any] | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    wall: float = 0.0

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "TrainingRecord":
        """The record a saved state holds (copies: the state stays as it was)."""
        best_val = dict(state["best_val"]) if state.get("best_val") else None
        return cls(
            best_model=_clone(state["best_model"]),
            best_epoch=int(state["best_epoch"]),
            best_acc=best_val["acc"] if best_val else -1.0,
            best_val=best_val,
            log=[dict(r) for r in state["log"]],
            wall=float(state.get("wall_s", 0.0)),
        )

    def update(self, epoch: int, val: Metrics, model: nn.Module) -> bool:
        """Keep ``model``'s weights when epoch ``epoch``'s validation accuracy beats the best
        so far (strictly: the first of equal epochs stays); return whether it did."""
        improved = val.acc > self.best_acc
        if improved:
            self.best_epoch, self.best_acc, self.best_val = epoch, val.acc, val.as_dict()
            self.best_model = _clone(model.state_dict())
        return improved

    def finished(self, epoch: int, wall: float) -> dict[str, Any]:
        """What `NonFiniteLoss` carries when epoch ``epoch`` + 1 stops after ``wall`` seconds."""
        return {
            "epoch": epoch,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "best_model": self.best_model,
            "log": self.log,
            "wall_s": wall,
        }


@dataclass
class EpochTally:
    """Sums over one epoch's training batches: loss x rows, strict hits, rows; for a
    spiking output (``steps`` = T) the rows whose output was silent or saturated (every
    class at every step) and, per class, the rows on which its output neuron fired."""

    steps: int | None
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    silent: int = 0
    saturated: int = 0
    fired: Tensor | None = None

    def add(self, out: Tensor, y: Tensor, loss: float) -> None:
        """Count one batch: its outputs ``out`` [B, classes], labels and mean loss."""
        self.loss_sum += loss * len(y)
        self.correct += score_batch(out.detach(), y)[0]
        self.seen += len(y)
        if self.steps is not None:
            self.silent += int((out == 0).all(dim=1).sum())
            self.saturated += int((out == self.steps).all(dim=1).sum())
            hits = (out.detach() > 0).sum(dim=0)
            self.fired = hits if self.fired is None else self.fired + hits

    def all_reduce(self, dist: DistContext) -> None:
        """Sum every process's tally (DDP): sum of (global batch mean) x rows over all rows."""
        self.correct, self.seen, self.loss_sum, self.silent, self.saturated = all_reduce_sum(
            [self.correct, self.seen, self.loss_sum, self.silent, self.saturated], dist
        )
        self.correct, self.seen = int(round(self.correct)), int(round(self.seen))
        if self.fired is not None:
            self.fired = torch.tensor(all_reduce_sum(self.fired.tolist(), dist))

    def output_shares(self) -> tuple[float | None, float | None]:
        """The shares of silent and of saturated rows (None, None for an ANN)."""
        if self.steps is None:
            return None, None
        return self.silent / max(self.seen, 1), self.saturated / max(self.seen, 1)

    def dead_classes(self) -> list[int] | None:
        """The classes whose output neuron fired on no row (None for an ANN)."""
        return None if self.fired is None else torch.nonzero(self.fired == 0).flatten().tolist()


def data_parallel(model: nn.Module, device: torch.device | str, dist: DistContext) -> nn.Module:
    """What the training forward/backward runs through: ``model`` itself, or under DDP a
    `DistributedDataParallel` around it (batch norms made `SyncBatchNorm` first on CUDA)."""
    if not dist.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    if dev.type == "cuda":  # batch statistics over the global batch, as in one process
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # replaces the BN children in place
    return DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)


def rank0_buffers(model: nn.Module, dist: DistContext) -> None:
    """Copy rank 0's buffers (batch norms' running statistics) to every process. DDP does
    so at the start of each training forward only, so after an epoch's last batch each
    CPU process holds its own update (on CUDA, `SyncBatchNorm` keeps them equal); then
    validation and the test pass evaluate everywhere the weights that rank 0 saves."""
    import torch.distributed as tdist

    for buf in model.buffers():
        tdist.broadcast(buf, 0)


def resume(state: Mapping[str, Any], model: nn.Module, opts: Optimizers, dist: DistContext) -> TrainingRecord:
    """Load a saved state into ``model`` and ``opts`` and restore the RNG: each process's own
    stream when it was saved by as many processes, else the saved stream (and under DDP a
    new stream per rank drawn from it); return its `TrainingRecord`."""
    model.load_state_dict(state["model"])
    opts.optimizer.load_state_dict(state["optimizer"])
    if opts.scheduler is not None and state.get("scheduler") is not None:
        opts.scheduler.load_state_dict(state["scheduler"])
    ranks = state.get("rng_ranks")
    if dist.distributed and ranks is not None and len(ranks) == dist.world_size:
        set_rng_state(ranks[dist.rank])
    else:
        set_rng_state(state["rng"])
        if dist.distributed:  # saved with another number of processes: a new stream per rank
            torch.manual_seed(rank_seed(int(torch.randint(0, 2**62, ())), dist.rank))
    record = TrainingRecord.from_state(state)
    if opts.scaler is not None and state.get("scaler") is not None:
        opts.scaler.load_state_dict(state["scaler"])
    return record


def snapshot(
    epoch: int,
    model: nn.Module,
    opts: Optimizers,
    record: TrainingRecord,
    device: torch.device | str,
    dist: DistContext,
) -> dict[str, Any]:
    """The training state after ``epoch`` finished epochs, as saved and resumed (under DDP
    a collective: every process calls it, and it holds every process's RNG state)."""
    snap = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opts.optimizer.state_dict(),
        "scheduler": opts.scheduler.state_dict() if opts.scheduler is not None else None,
        "rng": rng_state(device),
        "best_epoch": record.best_epoch,
        "best_val": record.best_val,
        "best_model": record.best_model,
        "log": record.log,
        "wall_s": record.wall,
        "scaler": opts.scaler.state_dict() if opts.scaler is not None else None,
    }
    if dist.distributed:  # every process's RNG state (collective: all processes call snapshot)
        ranks = all_gather_objects(_cpu(snap["rng"]), dist)
        snap.update(rng=ranks[0], rng_ranks=ranks, world_size=dist.world_size)
    return snap


def train_epoch(
    net: nn.Module,
    train_batches: Any,
    epoch: int,
    opts: Optimizers,
    options: TrainOptions,
    *,
    steps: int | None,
    dist: DistContext,
    progress: Progress,
    stop: Callable[[int, float], NonFiniteLoss],
) -> EpochTally:
    """One pass over epoch ``epoch``'s (0-based) training batches: forward and loss under
    autocast, the optimizer step, the tally. Under DDP the loss is the global batch's
    mean (all-reduced), so that a non-finite loss on any process stops all of them:
    ``stop(batch, value)`` gives the error raised then (1-based batch)."""
    scale = options.logit_scale if steps is not None else 1.0
    tally = EpochTally(steps)
    for i, (x, y) in enumerate(train_batches.epoch_batches(epoch)):
        with autocast(options.precision, options.device):
            out = net(x)
            loss = F.cross_entropy(scale * out.float(), y)
        value = float(loss.detach())
        if dist.distributed:  # the global batch's mean loss, the same on every process
            total, count = all_reduce_sum([value * len(y), len(y)], dist)
            value = total / count if count else math.nan
        if not math.isfinite(value):
            raise stop(i + 1, value)
        opts.step(loss)
        tally.add(out, y, value)
        progress.batch(i + 1, value)
    return tally


def validate(
    model: nn.Module, val_batches: Any, epoch: int, options: TrainOptions, dist: DistContext
) -> tuple[Metrics, dict[str, Any]]:
    """`evaluate` on epoch ``epoch``'s validation batches, with every SL's spikes and
    neuron-steps (`rates.recording_spike_rates`), summed over the processes under DDP."""
    with recording_spike_rates(model) as totals:
        val = evaluate(
            model,
            val_batches.epoch_batches(epoch),
            dist if dist.distributed else None,
            options.precision,
            options.logit_scale,
        )
    if dist.distributed and totals:  # every process's spikes and neuron-steps
        summed = all_reduce_sum([v for pair in totals.values() for v in pair], dist)
        totals = {k: summed[2 * j : 2 * j + 2] for j, k in enumerate(totals)}
    return val, totals


def score_on_test(model: nn.Module, test_batches: Any, options: TrainOptions, dist: DistContext) -> Metrics:
    """`evaluate` on the test set, leaving the global RNG (coder noise) as it found it, so
    that training goes on bit for bit as without this pass."""
    saved_rng = rng_state(options.device)
    test = evaluate(
        model,
        test_batches.epoch_batches(0),
        dist if dist.distributed else None,
        options.precision,
        options.logit_scale,
    )
    set_rng_state(saved_rng)
    return test


def epoch_record(
    epoch: int,
    tally: EpochTally,
    val: Metrics,
    test: Metrics | None,
    lr: float,
    seconds: float,
    best: bool,
    totals: Mapping[str, Any],
) -> EpochRecord:
    """The log line of epoch ``epoch`` (1-based) from its tally, validation and test scores."""
    seen = max(tally.seen, 1)
    return EpochRecord(
        epoch,
        tally.loss_sum / seen,
        tally.correct / seen,
        val.acc,
        val.acc_argmax,
        val.tie_rate,
        lr,
        seconds,
        best,
        *tally.output_shares(),
        spike_rates(totals) or None,
        *((test.acc, test.acc_argmax, test.tie_rate) if test is not None else ()),
        train_out_dead=tally.dead_classes(),
    )


def train_model(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    train_batches: Any,
    val_batches: Any,
    options: TrainOptions,
    *,
    state: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    progress: Progress | None = None,
    dist: DistContext | None = None,
    test_batches: Any = None,
) -> dict[str, Any]:
    """Train ``params`` of ``model`` with Adam as ``options`` say; return the final state.

    Per epoch: `train_epoch`, the scheduler's step, `validate`, with ``test_batches``
    `score_on_test` (logged as ``test_acc`` ..., for a report's best *test* epoch; the
    selection stays on validation and the training is the same bit for bit), then the
    best-validation weights (`TrainingRecord.update`) and the log line (`epoch_record`).
    ``train_batches`` / ``val_batches`` have ``epoch_batches(epoch)`` (`TensorBatches`);
    the training order of epoch k depends only on the batches' seed and k.

    ``state`` (a `snapshot`, as returned here or passed to ``on_epoch(state)`` after every
    epoch, where the runner saves it) resumes after its last finished epoch (`resume`):
    the result is the same bit for bit as an uninterrupted run on the same machine. The
    state has ``epoch`` (finished epochs), ``best_epoch``, ``best_val`` (`Metrics` as a
    dict), ``best_model`` (a state dict), ``log`` (`EpochRecord` dicts) and ``wall_s``.

    Data parallel (``dist`` from `distributed.from_env` with several processes, each
    calling this with its shard of ``train_batches``, batch_size = global batch / world
    size, and its share of ``val_batches``): the forward/backward runs through
    `data_parallel`, which starts every process from rank 0's weights and averages the
    gradients; ``model`` stays unwrapped, so state dicts keep their keys. Validation
    counts and the logged train loss/accuracy are summed over the processes, so the best
    epoch and the returned state are the same on every process. Batch norms become
    `SyncBatchNorm` on CUDA; on the CPU (gloo) each process normalises with its shard's
    statistics and the running statistics are rank 0's. Each process reseeds torch's RNG
    with `distributed.rank_seed` (torch's initial seed, rank), so dropout masks and coder
    noise differ across processes; resuming with as many processes continues each stream.

    Raises:
        NonFiniteLoss: a NaN or infinite loss; ``.finished`` holds the epochs before it.
    """
    progress = progress or Progress()
    dist = dist or SINGLE
    steps = getattr(model, "steps", None)  # T of a spiking output (counts in 0..T), else None
    net = data_parallel(model, options.device, dist)
    opts = Optimizers.make(params, options)
    start = 0
    record = TrainingRecord(best_model=_clone(model.state_dict()))
    if state is not None:
        record = resume(state, model, opts, dist)
        start = int(state["epoch"])
    elif dist.distributed:
        torch.manual_seed(rank_seed(torch.initial_seed(), dist.rank))

    for epoch in range(start, options.epochs):
        t0 = time.perf_counter()
        model.train()
        progress.start_epoch(epoch + 1, options.epochs, len(train_batches))
        lr = opts.optimizer.param_groups[0]["lr"]

        def stop(batch: int, value: float, epoch: int = epoch, t0: float = t0) -> NonFiniteLoss:
            finished = record.finished(epoch, record.wall + time.perf_counter() - t0)
            return NonFiniteLoss(epoch + 1, batch, value, finished)

        tally = train_epoch(
            net, train_batches, epoch, opts, options, steps=steps, dist=dist, progress=progress, stop=stop
        )
        if dist.distributed:
            tally.all_reduce(dist)
            rank0_buffers(model, dist)
        if opts.scheduler is not None:
            opts.scheduler.step()
        val, totals = validate(model, val_batches, epoch, options, dist)
        test = score_on_test(model, test_batches, options, dist) if test_batches is not None else None
        improved = record.update(epoch + 1, val, model)
        seconds = time.perf_counter() - t0
        record.wall += seconds
        line = epoch_record(epoch + 1, tally, val, test, lr, seconds, improved, totals)
        record.log.append(line.as_dict())
        progress.end_epoch(line, (options.epochs - epoch - 1) * record.wall / len(record.log))
        if on_epoch is not None:
            on_epoch(snapshot(epoch + 1, model, opts, record, options.device, dist))
    return snapshot(max(start, options.epochs), model, opts, record, options.device, dist)

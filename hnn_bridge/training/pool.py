"""``--jobs N``: the independent (row, seed) jobs of a recipe run in worker processes.

`schedule` decides the order: every pure ANN that a separate row needs goes first (each
once, as the job of the row that needs it first in the sequential order); the rows that
need it wait for it and are queued when it finishes, given its result so that they reuse
it exactly as a sequential run does; every other job is queued at the start, so a worker
never waits for an ANN that its job does not need. `run_parallel` runs the schedule and
puts results, logs and report files together in the sequential order.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..kernels.heap import reuse_freed_memory
from ..recipe import Recipe, RowSpec
from .jobs import Job, row_job
from .progress import ConsoleReporter, Reporter

if TYPE_CHECKING:  # the runner imports this module
    from .runner import RecipeRun, RunOptions

__all__ = ["Schedule", "job_worker", "run_parallel", "schedule", "workers_ignore_ctrl_c"]


@dataclass
class Schedule:
    """The jobs of a ``--jobs`` run: ``order`` (row, seed index, job) as a sequential run
    takes them; ``twins`` the pure ANNs that separate rows need (name -> (job, the row
    that needs it first)); ``queued`` (job, row) to submit at the start, twins first;
    ``waiting`` the (row, job) pairs that wait for each twin."""

    order: list[tuple[RowSpec, int, Job]]
    twins: dict[str, tuple[Job, RowSpec]] = field(default_factory=dict)
    queued: list[tuple[Job, RowSpec]] = field(default_factory=list)
    waiting: dict[str, list[tuple[RowSpec, Job]]] = field(default_factory=dict)


def schedule(recipe: Recipe, seeds: int, needs_twin: Callable[[Job], bool]) -> Schedule:
    """The `Schedule` of ``seeds`` seeds of every row; ``needs_twin(job)`` says whether a
    separate row's ALs have weights to pre-train (A784-S500-S10 has none)."""
    plan = Schedule([(row, k, row_job(row, k)) for row in recipe.rows for k in range(seeds)])
    first: dict[str, tuple[Job, RowSpec]] = {}  # pure ANN -> (job, row) where a sequential run trains it
    needed: list[str] = []  # pure ANNs that separate rows need
    for row, _k, job in plan.order:
        if job.twin is not None and needs_twin(job):
            first.setdefault(job.twin.name, (job.twin, row))
            needed += [job.twin.name] if job.twin.name not in needed else []
        if job.kind == "ann":
            first.setdefault(job.name, (job, row))
    plan.twins = {name: first[name] for name in needed}
    plan.queued = list(plan.twins.values())
    for row, _k, job in plan.order:
        if job.name in plan.twins:  # a pure-ANN row that is also a separate row's ANN
            continue
        if job.twin is not None and job.twin.name in plan.twins:
            plan.waiting.setdefault(job.twin.name, []).append((row, job))
        else:
            plan.queued.append((job, row))
    return plan


def run_parallel(
    run: "RecipeRun",
    recipe: Recipe,
    options: "RunOptions",
    on_results: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    """`runner.run_recipe`'s jobs in ``options.jobs`` worker processes (see `schedule`)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    plan = schedule(recipe, options.seeds, run.needs_twin)
    order, twins = plan.order, plan.twins
    workers = max(1, min(options.jobs, len(order)))
    threads = max(1, (os.cpu_count() or 1) // workers)
    worker_options = replace(options, reporter=Reporter())
    console = isinstance(options.reporter, ConsoleReporter)
    run.reporter.note(
        f"running {len(order)} job(s) in {workers} worker processes ({threads} thread(s) each)"
        + (
            f"; {len(twins)} pure ANN(s) for separate learning first, the rows that need them after"
            if twins
            else ""
        )
    )
    finished: dict[tuple[int, int], dict[str, Any]] = {}

    def done_so_far() -> dict[int, list[dict[str, Any]]]:
        done: dict[int, list[dict[str, Any]]] = {}
        for row, k, _job in order:
            if (row.index, k) in finished:
                done.setdefault(row.index, []).append(finished[(row.index, k)])
        return done

    def collect(result: dict[str, Any], logs: dict[str, list[dict[str, Any]]]) -> None:
        run.job_results.setdefault(result["job"], result)
        for name, rows in logs.items():
            run.logs.setdefault(name, rows)
        run.write_epoch_log()

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads,))
    pending: set[Any] = set()

    def submit(job: Job, row: RowSpec, known: dict[str, dict[str, Any]]) -> None:
        with workers_ignore_ctrl_c():  # the pool may start a worker on submit
            pending.add(pool.submit(job_worker, recipe, worker_options, job, row, known, console))

    try:
        waiting = plan.waiting
        for job, row in plan.queued:
            submit(job, row, {})
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            pending.difference_update(ready)
            for future in ready:
                result, logs = future.result()
                collect(result, logs)
                for row, job in waiting.pop(result["job"], []):
                    submit(job, row, {result["job"]: result})
                for row, k, job in order:
                    if job.name == result["job"]:
                        finished[(row.index, k)] = result
                if on_results is not None:
                    on_results(run.results(done_so_far(), finished=False))
    except BaseException:
        # taken before shutdown, which sets the pool's process table to None
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:  # stop running jobs too
            process.terminate()
        raise
    pool.shutdown()
    ordered: dict[str, list[dict[str, Any]]] = {}  # epochs.csv in the sequential order
    for _row, _k, job in order:
        for name in ([job.twin.name] if job.twin is not None else []) + [job.name]:
            if name in run.logs:
                ordered.setdefault(name, run.logs[name])
    run.logs = {**ordered, **{k: v for k, v in run.logs.items() if k not in ordered}}
    run.write_epoch_log()
    results = run.results(done_so_far(), finished=True)
    if on_results is not None:
        on_results(results)
    return results


@contextmanager
def workers_ignore_ctrl_c() -> Iterator[None]:
    """Ignore SIGINT in this process while the pool starts workers (it starts them on submit).

    A terminal's Ctrl-C goes to the whole process group; a worker caught in the middle of
    starting up would print an import traceback. Workers inherit the ignored signal, so
    Ctrl-C reaches this process only, whose clean-up in `run_parallel` stops them (a
    Ctrl-C during the few milliseconds of a submit is dropped).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_WORKER_DATA: dict[tuple[str, int, int], Any] = {}  # datasets loaded by this worker process


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    reuse_freed_memory()


def job_worker(
    recipe: Recipe,
    options: "RunOptions",
    job: Job,
    row: RowSpec,
    known: dict[str, dict[str, Any]],
    console: bool,
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Run one job in a ``--jobs`` worker; return its result and epoch-log rows. Progress:
    one line per finished epoch (no live bar), prefixed with the job's title."""
    from .runner import RecipeRun

    if console:
        options = replace(options, reporter=ConsoleReporter(live=False))
    run = RecipeRun(recipe, options)
    run.data = _WORKER_DATA
    run.load_data([row, job.row])
    run.write_epochs = False  # the parent writes epochs.csv
    run.job_results.update(known)
    result = run.run_job(job, row)
    return result, run.logs

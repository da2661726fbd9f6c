"""Progress on the terminal: one live line per training (epoch, bar, loss, validation
accuracy, time left) on a TTY; one line per epoch otherwise (logs, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .loop import EpochRecord, Progress

__all__ = ["ConsoleReporter", "Reporter", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Reporter:
    """Where the runner sends progress: `job` opens a `Progress` per training, `note`
    prints a message. The base class is silent."""

    def job(self, title: str) -> Progress:
        return Progress()

    def note(self, message: str) -> None: ...


class _Line(Progress):
    def __init__(self, title: str, stream: TextIO, live: bool) -> None:
        self.title = title
        self.stream = stream
        self.live = live
        self.epoch = self.epochs = self.batches = 0
        self.epoch_start = 0.0
        self.epoch_times: list[float] = []
        self.last_draw = 0.0
        self.val: float | None = None
        self.loss_sum = 0.0
        self.width = 0

    def start_epoch(self, epoch: int, epochs: int, batches: int) -> None:
        self.epoch, self.epochs, self.batches = epoch, epochs, batches
        self.epoch_start = time.perf_counter()
        self.loss_sum = 0.0

    def _eta(self, done: int) -> float:
        elapsed = time.perf_counter() - self.epoch_start
        per_epoch = (
            sum(self.epoch_times) / len(self.epoch_times)
            if self.epoch_times
            else elapsed / max(done, 1) * max(self.batches, 1)
        )
        rest_of_epoch = elapsed / max(done, 1) * (self.batches - done)
        return rest_of_epoch + (self.epochs - self.epoch) * per_epoch

    def _draw(self, text: str) -> None:
        pad = max(0, self.width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self.width = len(text)

    def batch(self, index: int, loss: float) -> None:
        self.loss_sum += loss
        now = time.perf_counter()
        if not self.live or (now - self.last_draw < 0.1 and index < self.batches):
            return
        self.last_draw = now
        share = index / max(self.batches, 1)
        bar = "#" * int(20 * share) + "." * (20 - int(20 * share))
        val = "" if self.val is None else f"  val {100 * self.val:.2f}%"
        self._draw(
            f"{self.title} | epoch {self.epoch}/{self.epochs} [{bar}] {100 * share:3.0f}% "
            f"loss {self.loss_sum / index:.4f}{val}  left {format_seconds(self._eta(index))}"
        )

    def end_epoch(self, record: EpochRecord, eta_s: float) -> None:
        self.epoch_times.append(record.seconds)
        self.val = record.val_acc
        text = (
            f"{self.title} | epoch {record.epoch}/{self.epochs} loss {record.train_loss:.4f} "
            f"val {100 * record.val_acc:.2f}% (ties {100 * record.val_tie_rate:.1f}%)"
            f"{' *' if record.best else ''}  {format_seconds(record.seconds)}, left {format_seconds(eta_s)}"
        )
        if self.live:
            self._draw(text)
            self.stream.write("\n")
            self.width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.live and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


class ConsoleReporter(Reporter):
    """Progress lines on ``stream`` (default stderr); live ``\\r`` updates only on a TTY."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live

    def job(self, title: str) -> Progress:
        return _Line(title, self.stream, self.live)

    def note(self, message: str) -> None:
        self.stream.write(message + "\n")
        self.stream.flush()

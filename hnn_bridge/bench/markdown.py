"""The Markdown pieces of the bench reports: tables, cell formats and the machine line."""

from __future__ import annotations

from typing import Any, Mapping, Optional

__all__ = ["measured_on", "mib", "ms", "ratio", "table"]


def ms(stats: Mapping[str, float]) -> str:
    """The median of a `timing.Stats` dict (seconds) in milliseconds."""
    return f"{stats['median'] * 1e3:.2f}"


def mib(value: Optional[float]) -> str:
    """Bytes in MiB; ``n/a`` when not measured."""
    return "n/a" if value is None else f"{value / 2**20:.2f}"


def ratio(value: Optional[float]) -> str:
    """A ratio as ``1.23x``; empty when there is none."""
    return "" if value is None else f"{value:.2f}x"


def table(header: list[str], lines: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def measured_on(machine: Mapping[str, Any]) -> str:
    """The closing line of a report: date, GPU, CPU, cores, torch and its threads, load."""
    m = machine
    where = f"{m['cpu']}, {m['cpu_cores']} cores, torch {m['torch']} ({m['torch_threads']} threads)"
    if m.get("load_average"):
        where += f", load average {m['load_average'][0]:.1f} at the end"
    if m.get("gpu"):
        where = f"{m['gpu']}; " + where
    return f"_Measured {m['date']} on {where}._"

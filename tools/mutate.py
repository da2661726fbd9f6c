#!/usr/bin/env python3
"""Mutation testing of hnn-bridge: single-point mutants, the tests that cover each, a score.

Each mutant changes one operator, constant or keyword at one place in a source file:
in Python code (found with ``tokenize``: comparisons, arithmetic, ``and``/``or``,
``not``, ``True``/``False``, ``is``/``in``, small numeric constants) and in the C and
CUDA kernel sources (``hnn_bridge/kernels/iir_native.c`` and ``iir_kernels.cu``, or C in a
raw triple-quoted Python string: comparisons, ``+ - * /``, ``&&``/``||``,
``IIR_ADD``/``IIR_SUB``, ``0.0f``/``1.0f``, which
a Python mutation tool does not see), and method names in Python (``.ge(`` to ``.gt(``,
``.add_`` to ``.sub_``, ``.detach()`` to ``.clone()``, ...). For every mutant the target's tests run (pytest,
``-x``, fastest killers first); a failing or timed-out run kills the mutant.

Nothing in the working tree is touched: the tree is exported (``git archive HEAD``, or the
working tree's files with ``--worktree``) to a temporary folder, each worker mutates its
own copy there and writes the original text back after every run (in a ``finally``), and
the folder is removed at the end. The copy is imported through ``PYTHONPATH`` (ahead of
the editable install) with ``hnn_bridge/adapters`` linked to ``adapters/``; compiled
neurons go to a private ``XDG_CACHE_HOME``.

Usage (from the repository root)::

    nice -n 19 .venv/bin/python tools/mutate.py                  # 25 random mutants a target, 2 workers
    nice -n 19 .venv/bin/python tools/mutate.py --all            # every mutant: hours on 2 cores
    nice -n 19 .venv/bin/python tools/mutate.py core kernels     # some targets
    .venv/bin/python tools/mutate.py --list                      # the mutants, no tests run
    .venv/bin/python tools/mutate.py core --only fused.py:227     # mutants on one line
    (--only takes FILE:LINE or FILE:LINE:COL, comma-separated)

It prints each mutant's fate as it is known and at the end the score per target and overall
and the list of survivors (``--json FILE`` writes them too). Exit status 0 when the
score is at least ``--fail-under`` (default 0).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Queue
from typing import Iterable, Optional

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Target:
    """A group of source files, the functions of them to mutate (None: all code) and the
    tests that cover them (run in this order, so list quick killers first)."""

    name: str
    files: tuple[str, ...]
    tests: tuple[str, ...]
    functions: Optional[tuple[str, ...]] = None  # qualified names (Class.method) or names
    skip_functions: tuple[str, ...] = ()


NEURON_TESTS = (
    "tests/test_mutants.py",
    "tests/test_neuron.py",
    "tests/test_properties.py",
    "tests/test_native.py",
    "tests/test_backend_parity.py",
    "tests/test_fang_oracle.py",
)

TARGETS = (
    Target(
        "coders",
        ("hnn_bridge/coders.py",),
        ("tests/test_coders.py", "tests/test_mutants.py", "tests/test_mutation_gaps.py"),
    ),
    Target(
        "core",
        (
            "hnn_bridge/functional/iir.py",
            "hnn_bridge/functional/surrogate.py",
            "hnn_bridge/params.py",
            "hnn_bridge/neuron.py",
            "hnn_bridge/kernels/fused.py",
            "hnn_bridge/kernels/denormals.py",
        ),
        NEURON_TESTS + ("tests/test_mutation_gaps.py",),
        # thread-count tuning: no effect on any value by design (see the note)
        skip_functions=("one_thread", "_openmp", "one_thread_per_step"),
    ),
    Target(
        "native",
        (
            "hnn_bridge/kernels/native.py",
            "hnn_bridge/kernels/iir_native.c",
            "hnn_bridge/kernels/bn_neuron.py",
            "hnn_bridge/kernels/synapse_filter.py",
            "hnn_bridge/kernels/synapse_filter.c",
        ),
        (
            "tests/test_native_chunks.py",
            "tests/test_bn_fusion.py",
            "tests/test_synapse_filter_native.py",
            *NEURON_TESTS,
        ),
        # compiler discovery, cache folders and thread chunking: no effect on values; the
        # 2x2 max pooling (Python and C) is the P2 layer's, tested by tests/test_norm.py etc.
        skip_functions=(
            "_library",
            "native_unavailable_reason",
            "_run",
            "native_maxpool2_forward",
            "native_maxpool2_backward",
            "iir_native_maxpool2_forward",
            "iir_native_maxpool2_backward",
        ),
    ),
    Target(
        "kernels",
        ("hnn_bridge/kernels/iir_kernels.cu", "adapters/cupy_kernels.py", "hnn_bridge/kernels/build.py"),
        (
            "tests/test_kernel_build.py",
            "tests/test_mutants.py",
            "tests/test_cupy.py",
            "tests/test_properties.py",
        ),
        # the CUDA launch path runs only on a GPU (tests/test_cupy.py there); a .cu file is all in scope
        functions=(
            "_forward_scalars",
            "_backward_scalars",
            "_check_b",
            "CKernels",
            "compile_c_kernels",
            "c_compiler",
            "build_library",
        ),
    ),
    Target(
        "snntorch",
        ("adapters/snntorch.py",),
        (
            "tests/test_adapter_state.py",
            "tests/test_mutants.py",
            "tests/test_adapters_snntorch.py",
            "tests/test_dropin_snntorch.py",
            "tests/test_properties.py",
            "tests/test_fang_oracle.py",
            "tests/test_tutorials.py",
        ),
    ),
    Target(
        "spikingjelly",
        ("adapters/spikingjelly.py",),
        (
            "tests/test_adapter_state.py",
            "tests/test_adapters_spikingjelly.py",
            "tests/test_dropin_spikingjelly.py",
            "tests/test_properties.py",
            "tests/test_fang_oracle.py",
            "tests/test_mutation_gaps.py",
        ),
    ),
    Target(
        "ops",
        ("hnn_bridge/ops.py",),
        ("tests/test_energy.py", "tests/test_describe.py", "tests/test_mutation_gaps.py"),
    ),
    Target("split", ("hnn_bridge/data/split.py",), ("tests/test_split_exact.py", "tests/test_data.py")),
    Target(
        "tie-rule",
        ("hnn_bridge/training/loop.py",),
        ("tests/test_mutants.py", "tests/test_mutation_gaps.py", "tests/test_training.py"),
        functions=("score_batch", "evaluate"),
    ),
    Target(
        "resume",
        ("hnn_bridge/training/loop.py", "hnn_bridge/training/checkpoint.py"),
        (
            "tests/test_resume_exact.py",
            "tests/test_ddp_steps.py",
            "tests/test_training.py",
            "tests/test_faults.py",
        ),
        # train_model and its steps (loop.py since issue 34), the checkpoint functions
        functions=(
            "train_model",
            "Optimizers",
            "TrainingRecord",
            "EpochTally",
            "data_parallel",
            "rank0_buffers",
            "resume",
            "snapshot",
            "train_epoch",
            "validate",
            "score_on_test",
            "epoch_record",
            "_clone",
            "_cpu",
            "save_checkpoint",
            "load_checkpoint",
            "torch_load",
            "atomic_save",
            "checkpoint_state",
        ),
    ),
)

# Planted mutants: realistic single bugs written by hand (the five survivors of issue 32
# first), each a unique snippet of a file and its replacement; ``--planted`` runs them.
PLANTED = (
    (
        "core",
        "hnn_bridge/kernels/fused.py",
        "torch.ge(v, vth, out=s_out[t])",
        "torch.gt(v, vth, out=s_out[t])",
    ),
    (
        "kernels",
        "hnn_bridge/kernels/iir_kernels.cu",
        "o = (v_new >= vth) ? 1.0f : 0.0f;",
        "o = (v_new > vth) ? 1.0f : 0.0f;",
    ),
    ("snntorch", "adapters/snntorch.py", "beta=params.lam,", "beta=params.theta,"),
    (
        "snntorch",
        "adapters/snntorch.py",
        "        return self.reset_mem()\n",
        "        return torch.zeros_like(self._buffers['mem'])\n",
    ),
    (
        "coders",
        "hnn_bridge/coders.py",
        "eps = torch.randn((self.steps, *mu.shape),",
        "eps = torch.randn((self.steps, 1, *mu.shape[1:]),",
    ),
    (
        "native",
        "hnn_bridge/kernels/iir_native.c",
        "EACH O[j] = V[j] >= vth ? 1.0f : 0.0f;",
        "EACH O[j] = V[j] > vth ? 1.0f : 0.0f;",
    ),
    (
        "native",
        "hnn_bridge/kernels/iir_native.c",
        "if (detach_reset) EACH CO[j] = 0.0f;",
        "if (0) EACH CO[j] = 0.0f;",
    ),
    ("kernels", "hnn_bridge/kernels/iir_kernels.cu", "c_o = detach_reset ? 0.0f : g_r_t;", "c_o = g_r_t;"),
    ("core", "hnn_bridge/kernels/fused.py", "[(k.theta, r), (1.0, o)]", "[(k.lam, r), (1.0, o)]"),
    (
        "core",
        "hnn_bridge/kernels/fused.py",
        "out.mul_(-0.5 / (k.sigma * k.sigma))",
        "out.mul_(-1.0 / (k.sigma * k.sigma))",
    ),
    ("core", "hnn_bridge/kernels/fused.py", "c_o = zero if detach_reset else g_r_t", "c_o = g_r_t"),
    (
        "core",
        "hnn_bridge/params.py",
        "if self.reset_decay is None else float(self.reset_decay)",
        "if self.membrane_decay is None else float(self.reset_decay)",
    ),
    ("core", "hnn_bridge/params.py", "em + es, -math.exp(", "em + es, math.exp("),
    (
        "spikingjelly",
        "adapters/spikingjelly.py",
        'm["v"], m["p1"], m["p2"], m["r"], m["o"] = st.v, st.p1, st.p2, st.r, st.o',
        'm["v"], m["p1"], m["p2"], m["r"], m["o"] = st.v, st.p2, st.p1, st.r, st.o',
    ),
    (
        "tie-rule",
        "hnn_bridge/training/loop.py",
        "tied = at_top.sum(dim=1) > 1",
        "tied = at_top.sum(dim=1) >= 1",
    ),
    (
        "tie-rule",
        "hnn_bridge/training/loop.py",
        "silent = (out == 0).all(dim=1)",
        "silent = (out == 0).any(dim=1)",
    ),
)

# -- mutants ------------------------------------------------------------------------------

PY_SWAPS = {
    ">=": [">"],
    ">": [">="],
    "<=": ["<"],
    "<": ["<="],
    "==": ["!="],
    "!=": ["=="],
    "+": ["-"],
    "-": ["+"],
    "*": ["/"],
    "/": ["*"],
    "//": ["/"],
    "%": ["*"],
    "+=": ["-="],
    "-=": ["+="],
    "*=": ["/="],
    "and": ["or"],
    "or": ["and"],
    "True": ["False"],
    "False": ["True"],
    "is": ["is not"],
    "in": ["not in"],
}
# method and function names, as `.name(`: comparisons, arithmetic, detaching
CALL_SWAPS = {
    "ge": "gt",
    "gt": "ge",
    "le": "lt",
    "lt": "le",
    "eq": "ne",
    "ne": "eq",
    "add": "sub",
    "sub": "add",
    "add_": "sub_",
    "sub_": "add_",
    "mul": "div",
    "mul_": "div_",
    "clamp_min": "clamp_max",
    "clamp_max": "clamp_min",
    "maximum": "minimum",
    "minimum": "maximum",
    "exp": "expm1",
    "exp_": "expm1_",
    "detach": "clone",
    "zeros_like": "ones_like",
    "zeros": "ones",
}
# C, inside the kernel strings; patterns keep clear of pointers, -> and #include <...>
C_SWAPS = [
    (r"(?<=\s)>=(?=\s)", ">"),
    (r"(?<=\s)<=(?=\s)", "<"),
    (r"(?<=\s)>(?=\s)", ">="),
    (r"(?<=\s)<(?=\s)", "<="),
    (r"(?<=\s)==(?=\s)", "!="),
    (r"(?<=\s)!=(?=\s)", "=="),
    (r"(?<=\s)\+(?=\s)", "-"),
    (r"(?<=\s)-(?=\s)", "+"),
    (r"(?<=\s)\*(?=\s)", "/"),
    (r"&&", "||"),
    (r"\|\|", "&&"),
    (r"\bIIR_ADD\(", "IIR_SUB("),
    (r"\bIIR_SUB\(", "IIR_ADD("),
    (r"\b1\.0f\b", "0.0f"),
    (r"\b0\.0f\b", "1.0f"),
    (r"\+\+t\b", "--t"),
    (r"--t\b", "++t"),
    (r"(?<=[\s(])!(?=\w)", ""),
    (r"\bt > 0\b", "t >= 0"),
]
_UNARY_BEFORE = {
    "(",
    "[",
    "{",
    ",",
    "=",
    ":",
    "return",
    "lambda",
    "**",
    "*",
    "/",
    "+",
    "-",
    "<",
    ">",
    "<=",
    ">=",
    "==",
    "!=",
    "and",
    "or",
    "not",
    "in",
    "if",
    "else",
    "->",
    "yield",
    "+=",
    "-=",
    "*=",
    "/=",
}


@dataclass
class Mutant:
    target: str
    file: str
    line: int
    col: int
    old: str
    new: str
    kind: str  # "py", "call" (a method or function name) or "c"
    text: str = field(repr=False, default="")  # the source line, for the report
    status: str = "pending"  # killed / survived / timeout / error
    seconds: float = 0.0

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"

    def describe(self) -> str:
        return f"{self.where} [{self.kind}] {self.old!r} -> {self.new!r}: {self.text.strip()[:110]}"


def _function_spans(source: str) -> dict[str, tuple[int, int]]:
    """Qualified name -> (first, last) line of every function, class and module-level
    assignment (for the kernel strings) in `source`."""
    spans: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                spans[name] = (first, child.end_lineno or child.lineno)
                visit(child, name + ".")
            elif isinstance(child, ast.Assign) and not prefix:
                for t in child.targets:
                    if isinstance(t, ast.Name):
                        spans[t.id] = (child.lineno, child.end_lineno or child.lineno)

    visit(ast.parse(source), "")
    return spans


def _docstring_lines(source: str) -> set[int]:
    """Lines of docstrings (never mutated)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = getattr(node, "body", [])
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                lines.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    return lines


def _in_scope(line: int, spans: dict[str, tuple[int, int]], target: Target) -> bool:
    def inside(names: Iterable[str]) -> bool:
        for name in names:
            for key, (a, b) in spans.items():
                if (key == name or key.endswith("." + name) or key.startswith(name + ".")) and a <= line <= b:
                    return True
        return False

    if target.functions is not None and not inside(target.functions):
        return False
    return not inside(target.skip_functions)


def _number_mutations(tok: str) -> list[str]:
    try:
        value = ast.literal_eval(tok)
    except (ValueError, SyntaxError):
        return []
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    if isinstance(value, int):
        return ["1"] if value == 0 else ["0"] if value == 1 else [str(value + 1)]
    if value == 0.0:
        return ["1.0"]
    if value == 1.0:
        return ["0.0"]
    return [repr(value * 2)]


_C_STRING = re.compile(r'^[rR]?"""')


def _c_mutants(target: Target, rel: str, tok: tokenize.TokenInfo, lines: list[str]) -> list[Mutant]:
    """Mutants inside a kernel source string (a raw triple-quoted string of C)."""
    body_start = tok.string.index('"""') + 3
    return _c_text_mutants(target, rel, tok.string, body_start, len(tok.string) - 3, tok.start, lines)


def _c_text_mutants(
    target: Target,
    rel: str,
    text: str,
    body_start: int,
    body_end: int,
    start: tuple[int, int],
    lines: list[str],
) -> list[Mutant]:
    """Mutants in ``text[body_start:body_end]``, C code; ``text`` begins at (line, column)
    ``start`` of the file whose lines are ``lines``."""
    out = []
    row, col = start
    # (line, col) of each offset of the token text
    positions = []
    r, c = row, col
    for ch in text:
        positions.append((r, c))
        if ch == "\n":
            r, c = r + 1, 0
        else:
            c += 1
    body = text[body_start:body_end]
    # blank out comments and preprocessor lines of the CUDA-only branch: never compiled here
    masked = re.sub(r"/\*.*?\*/", lambda m: " " * len(m.group()), body, flags=re.S)
    masked = re.sub(r"//[^\n]*", lambda m: " " * len(m.group()), masked)
    masked = re.sub(
        r"^[ \t]*#[^\n]*(\\\n[^\n]*)*", lambda m: re.sub(r"[^\n]", " ", m.group()), masked, flags=re.M
    )
    for name in target.skip_functions:  # a C function to leave alone: blank its body
        head = re.search(r"\b" + re.escape(name) + r"\(", masked)
        if head:
            start = masked.find("{", head.end())
            depth, end = 0, start
            for end in range(start, len(masked)):
                depth += {"{": 1, "}": -1}.get(masked[end], 0)
                if depth == 0:
                    break
            masked = (
                masked[: head.start()]
                + re.sub(r"[^\n]", " ", masked[head.start() : end + 1])
                + masked[end + 1 :]
            )
    for pattern, repl in C_SWAPS:
        for m in re.finditer(pattern, masked):
            offset = body_start + m.start()
            line, column = positions[offset]
            out.append(Mutant(target.name, rel, line, column, m.group(), repl, "c", lines[line - 1]))
    return out


def mutants_of(target: Target, tree: Path = ROOT) -> list[Mutant]:
    """The mutants of `target` in the files under `tree`."""
    found: list[Mutant] = []
    for rel in target.files:
        source = (tree / rel).read_text()
        lines = source.splitlines(keepends=True)
        if rel.endswith((".c", ".cu")):  # a kernel source file: all of it is C
            found.extend(_c_text_mutants(target, rel, source, 0, len(source), (1, 0), lines))
            continue
        spans = _function_spans(source)
        docs = _docstring_lines(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
        significant = [
            t
            for t in tokens
            if t.type
            not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT)
        ]
        for i, tok in enumerate(significant):
            line = tok.start[0]
            if line > len(lines) or not _in_scope(line, spans, target):
                continue
            if tok.type == tokenize.STRING:
                if (
                    _C_STRING.match(tok.string)
                    and "\n" in tok.string
                    and ("#include" in tok.string or "IIR_" in tok.string)
                ):
                    found.extend(_c_mutants(target, rel, tok, lines))
                continue
            if line in docs or lines[line - 1].lstrip().startswith("@"):
                continue  # docstrings and decorators
            prev = significant[i - 1].string if i else ""
            nxt = significant[i + 1].string if i + 1 < len(significant) else ""
            s = tok.string
            if tok.type == tokenize.NUMBER:
                for new in _number_mutations(s):
                    found.append(Mutant(target.name, rel, line, tok.start[1], s, new, "py", lines[line - 1]))
                continue
            if tok.type == tokenize.NAME and s in CALL_SWAPS and nxt == "(" and prev == ".":
                found.append(
                    Mutant(target.name, rel, line, tok.start[1], s, CALL_SWAPS[s], "call", lines[line - 1])
                )
                continue
            if tok.type == tokenize.NAME and s == "not" and nxt != "in" and prev != "is":
                found.append(Mutant(target.name, rel, line, tok.start[1], "not ", "", "py", lines[line - 1]))
                continue
            if s not in PY_SWAPS:
                continue
            if s in ("-", "+", "*") and (prev in _UNARY_BEFORE or i == 0):
                continue  # unary minus/plus, *args and keyword-only markers
            if s == "is" and nxt == "not":
                found.append(
                    Mutant(target.name, rel, line, tok.start[1], "is not", "is", "py", lines[line - 1])
                )
                continue
            if s == "in" and prev == "not":
                continue
            if s == "in" and _is_for_in(significant, i):
                continue
            for new in PY_SWAPS[s]:
                found.append(Mutant(target.name, rel, line, tok.start[1], s, new, "py", lines[line - 1]))
    return found


def _is_for_in(tokens: list[tokenize.TokenInfo], i: int) -> bool:
    """The ``in`` of a ``for ... in`` (a loop or comprehension), not a membership test."""
    depth = 0
    for j in range(i - 1, -1, -1):
        s = tokens[j].string
        if s in (")", "]", "}"):
            depth += 1
        elif s in ("(", "[", "{"):
            if depth == 0:
                return False
            depth -= 1
        elif depth == 0 and s == "for":
            return True
        elif depth == 0 and tokens[j].type == tokenize.NEWLINE:
            return False
        if tokens[j].start[0] < tokens[i].start[0] - 3:
            return False
    return False


def planted(tree: Path, targets: Iterable[Target]) -> list[Mutant]:
    """The `PLANTED` mutants of `targets` (each snippet must occur exactly once)."""
    names = {t.name for t in targets}
    found = []
    for target, rel, old, new in PLANTED:
        if target not in names:
            continue
        source = (tree / rel).read_text()
        if source.count(old) != 1:
            raise ValueError(f"planted mutant {old!r} occurs {source.count(old)} times in {rel}")
        line = source[: source.index(old)].count("\n") + 1
        found.append(Mutant(target, rel, line, 0, old, new, "planted", source.splitlines()[line - 1]))
    return found


def apply(source: str, m: Mutant) -> str:
    if m.kind == "planted":
        return source.replace(m.old, m.new, 1)
    lines = source.splitlines(keepends=True)
    line = lines[m.line - 1]
    if line[m.col : m.col + len(m.old)] != m.old:
        raise ValueError(f"mutant {m.where} does not match {m.old!r}: {line!r}")
    lines[m.line - 1] = line[: m.col] + m.new + line[m.col + len(m.old) :]
    return "".join(lines)


# -- running ------------------------------------------------------------------------------


def export_tree(dest: Path, worktree: bool) -> None:
    """The repository's tracked files (HEAD, or the working tree's) into `dest`."""
    dest.mkdir(parents=True)
    if worktree:
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True, capture_output=True).stdout
        for rel in filter(None, files.decode().split("\0")):
            src = ROOT / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for sub in ("adapters", "recipes"):
        link = dest / "hnn_bridge" / sub
        if not link.exists():
            link.symlink_to(Path("..") / sub)


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float, python: str) -> tuple[str, float]:
    env = dict(
        os.environ,
        PYTHONPATH=str(tree),
        XDG_CACHE_HOME=str(tree / ".cache"),
        OMP_NUM_THREADS="1",
        PYTHONDONTWRITEBYTECODE="1",
        HYPOTHESIS_PROFILE="mutation",
    )
    env.pop("HNN_BRIDGE_NATIVE", None)
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _RUNNING.add(proc)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "timeout", time.monotonic() - start
    finally:
        if proc.poll() is None:  # interrupted
            proc.kill()
        _RUNNING.discard(proc)
    # any non-zero exit (a failed test, a crash, a collection error) fails the suite
    return ("survived" if code == 0 else "killed"), time.monotonic() - start


#: Random mutants per target when neither --all, --only nor --planted is given: 10 targets
#: x 25 = 250 mutants, about 35 minutes on 2 cores (2026-12-06); --all takes hours.
DEFAULT_SAMPLE = 25

_RUNNING: set[subprocess.Popen] = set()
_STOPPING: list[bool] = [False]  # set on an interrupt: the tests being stopped judge nothing


def wilson_interval(killed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``killed / n`` (95% for z = 1.96): where
    the score of all mutants lies, judged from a random sample of them."""
    p = killed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _place(where: str) -> tuple[str, int, Optional[int]]:
    """``FILE:LINE`` or ``FILE:LINE:COL`` (as the report prints a mutant) -> (FILE, LINE, COL or None)."""
    parts = where.strip().split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), int(parts[-2]), int(parts[-1])
    return ":".join(parts[:-1]), int(parts[-1]), None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "targets", nargs="*", help=f"targets (default all): {', '.join(t.name for t in TARGETS)}"
    )
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (default 2)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--only",
        help="only mutants at FILE:LINE or FILE:LINE:COL (FILE may be a suffix; several: comma-separated)",
    )
    parser.add_argument("--worktree", action="store_true", help="mutate the working tree's files, not HEAD")
    parser.add_argument(
        "--skip-baseline",
        action="store_true",
        help="do not run each target's tests unmutated first (then every run gets --timeout; "
        "use only when those tests are known to pass on HEAD, else every mutant counts as killed)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per mutant with --skip-baseline")
    parser.add_argument(
        "--timeout-factor", type=float, default=3.0, help="timeout = factor x baseline + 30 s"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help=f"random mutants per target (default {DEFAULT_SAMPLE}; --all, --only, --planted: every one)",
    )
    parser.add_argument(
        "--all", action="store_true", help="every mutant of the targets (1,200 or so: hours on 2 cores)"
    )
    parser.add_argument("--planted", action="store_true", help="run the hand-written PLANTED mutants only")
    parser.add_argument("--kinds", help="only these kinds of mutants: py, call, c (comma-separated)")
    parser.add_argument(
        "--always", help="with --sample: also every mutant whose source line matches this regex"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the sample (default: today's date, YYYYMMDD)"
    )
    parser.add_argument("--json", help="write every mutant and its status to this file")
    parser.add_argument("--fail-under", type=float, default=0.0, help="exit 1 below this score (percent)")
    args = parser.parse_args(argv)

    names = {t.name: t for t in TARGETS}
    unknown = [n for n in args.targets if n not in names]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(names)}")
    targets = [names[n] for n in args.targets] if args.targets else list(TARGETS)

    # a background job inherits SIGINT ignored; SIGTERM too should stop cleanly
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    python = sys.executable
    base = Path(tempfile.mkdtemp(prefix="hnn-mutate-"))
    interrupted = False
    started = time.monotonic()
    try:
        snapshot = base / "snapshot"
        export_tree(snapshot, args.worktree)
        missing = [f for t in targets for f in t.tests if not (snapshot / f).is_file()]
        if missing:  # a missing test file would "kill" every mutant
            print(f"test files missing in the exported tree: {', '.join(sorted(set(missing)))}", flush=True)
            return 2
        if args.planted:
            mutants = planted(snapshot, targets)
        else:
            mutants = [m for t in targets for m in mutants_of(t, snapshot)]
        if args.kinds:
            mutants = [m for m in mutants if m.kind in args.kinds.split(",")]
        if args.only:
            places = [_place(w) for w in args.only.split(",")]
            mutants = [
                m
                for m in mutants
                if any(m.file.endswith(f) and m.line == n and c in (None, m.col) for f, n, c in places)
            ]
        sample = 0 if args.all or args.only or args.planted else args.sample
        sample = DEFAULT_SAMPLE if sample is None else sample
        if sample:
            seed = int(time.strftime("%Y%m%d")) if args.seed is None else args.seed
            print(f"sample: {sample} mutants per target, seed {seed} (the same draw: --seed {seed})")
            rng = random.Random(seed)
            always = re.compile(args.always) if args.always else None
            chosen = []
            for t in targets:
                mine = [m for m in mutants if m.target == t.name]
                must = [m for m in mine if always is not None and always.search(m.text)]
                rest = [m for m in mine if m not in must]
                chosen += sorted(
                    must + rng.sample(rest, min(sample, len(rest))),
                    key=lambda m: (m.file, m.line, m.col),
                )
            mutants = chosen
        if args.list:
            for m in mutants:
                print(f"{m.target:12s} {m.describe()}")
            print(f"{len(mutants)} mutants")
            return 0
        trees: Queue[Path] = Queue()
        for j in range(args.jobs):
            tree = base / f"w{j}"
            shutil.copytree(snapshot, tree, symlinks=True)
            trees.put(tree)
        baseline: dict[str, float] = {}
        for t in targets if not args.skip_baseline else ():
            tree = trees.get()
            status, seconds = run_tests(tree, t.tests, 3600, python)
            trees.put(tree)
            if status != "survived":
                print(
                    f"baseline of target {t.name} fails ({' '.join(t.tests)}); fix the tests first",
                    flush=True,
                )
                return 2
            baseline[t.name] = seconds
            print(
                f"baseline {t.name}: {seconds:.0f} s, {sum(m.target == t.name for m in mutants)} mutants",
                flush=True,
            )

        def one(m: Mutant) -> Mutant:
            tree = trees.get()
            path = tree / m.file
            original = path.read_text()
            try:
                path.write_text(apply(original, m))
                timeout = (
                    args.timeout_factor * baseline[m.target] + 30 if m.target in baseline else args.timeout
                )
                m.status, m.seconds = run_tests(tree, names[m.target].tests, timeout, python)
                if _STOPPING[0]:  # stopped by the interrupt, not failed: not run
                    m.status = "pending"
            finally:
                path.write_text(original)
                trees.put(tree)
            return m

        pool = ThreadPoolExecutor(args.jobs)
        try:
            order = list(mutants)
            if sample:  # a sampled run in random order: an interrupted run still covers every target
                random.Random(args.seed).shuffle(order)
            futures = [pool.submit(one, m) for m in order]
            for n, fut in enumerate(as_completed(futures), 1):
                m = fut.result()
                print(f"{m.status.upper():8s} {m.seconds:5.0f} s  {m.describe()}", flush=True)
                if n % 20 == 0:
                    print(f"... {n}/{len(mutants)} mutants, {time.monotonic() - started:.0f} s", flush=True)
        except KeyboardInterrupt:
            interrupted = True
        finally:  # on an interrupt: drop the queued mutants, stop the running tests
            _STOPPING[0] = interrupted
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in list(_RUNNING):
                proc.kill()
            pool.shutdown(wait=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    if interrupted:
        print(f"\ninterrupted: {sum(m.status == 'pending' for m in mutants)} mutants not run, left out below")
        mutants = [m for m in mutants if m.status != "pending"]
    print("\nscore per target (killed / mutants):")
    total_killed = 0
    for t in targets:
        mine = [m for m in mutants if m.target == t.name]
        killed = sum(m.status in ("killed", "timeout") for m in mine)
        total_killed += killed
        if mine:
            print(f"  {t.name:12s} {killed:4d} / {len(mine):4d}  {100.0 * killed / len(mine):5.1f}%")
    score = 100.0 * total_killed / max(1, len(mutants))
    print(f"  {'all':12s} {total_killed:4d} / {len(mutants):4d}  {score:5.1f}%")
    if sample and mutants:
        lo, hi = wilson_interval(total_killed, len(mutants))
        print(
            f"  the score of every mutant, from this sample: {100 * lo:.1f}% to {100 * hi:.1f}% (95%, Wilson)"
        )
    print(f"time: {time.monotonic() - started:.0f} s with {args.jobs} workers")
    survivors = [m for m in mutants if m.status == "survived"]
    if survivors:
        print("\nsurvivors:")
        for m in sorted(survivors, key=lambda m: (m.file, m.line, m.col)):
            print(f"  {m.describe()}")
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(m) for m in mutants], indent=1))
    return 0 if score >= args.fail_under else 1


if __name__ == "__main__":
    sys.exit(main())

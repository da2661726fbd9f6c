"""Which C compiler builds the CUDA kernel source as C (`compile_c_kernels`), and what a
failed build says: an explicit ``compiler`` first, then ``$CC``, then ``gcc``, then ``cc``
on PATH; none of them gives FileNotFoundError naming the missing compiler; a compiler that
fails gives RuntimeError with the compiler's own messages, as text.

The compilers here are stand-ins (shell scripts that print their name to stderr and fail),
so no test compiles anything and each runs in milliseconds."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from hnn_bridge.adapters.cupy_kernels import compile_c_kernels


def _fake_compiler(folder: Path, name: str) -> Path:
    """An executable ``folder/name`` that writes ``<name> refused: ...`` to stderr, exits 1."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!/bin/sh\necho '{name} refused: kernel build stopped here' >&2\nexit 1\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _work(tmp_path: Path) -> str:
    (tmp_path / "work").mkdir(exist_ok=True)
    return str(tmp_path / "work")


def _which_ran(tmp_path: Path) -> str:
    """Build in ``tmp_path/work``; the stand-in compiler that ran, from its message."""
    with pytest.raises(RuntimeError) as err:
        compile_c_kernels(_work(tmp_path), None)
    message = str(err.value)
    assert "b'" not in message  # the compiler's output is decoded text
    tail = message.rstrip().splitlines()[-1]
    assert tail.endswith(" refused: kernel build stopped here"), message
    return tail.split(" refused")[0]


@pytest.fixture
def path_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH is one empty folder (returned) and $CC is unset."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))
    monkeypatch.delenv("CC", raising=False)
    return folder


def test_gcc_is_preferred_to_cc_and_cc_is_the_fallback(path_only: Path, tmp_path: Path) -> None:
    _fake_compiler(path_only, "cc")
    assert _which_ran(tmp_path) == "cc"
    _fake_compiler(path_only, "gcc")
    assert _which_ran(tmp_path) == "gcc"
    (path_only / "cc").unlink()
    assert _which_ran(tmp_path) == "gcc"


def test_cc_variable_comes_before_path_and_an_explicit_compiler_before_both(
    path_only: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_compiler(path_only, "gcc")
    monkeypatch.setenv("CC", str(_fake_compiler(tmp_path / "elsewhere", "my-cc")))
    assert _which_ran(tmp_path) == "my-cc"
    explicit = _fake_compiler(tmp_path / "other", "explicit-cc")
    with pytest.raises(RuntimeError, match="explicit-cc refused: kernel build stopped here"):
        compile_c_kernels(_work(tmp_path), str(explicit))


def test_no_compiler_is_a_file_not_found_error_saying_so(path_only: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no C compiler"):
        compile_c_kernels(_work(tmp_path))
    _fake_compiler(path_only, "gcc")  # a compiler on PATH does not stand in for a missing explicit one
    with pytest.raises(FileNotFoundError, match="no C compiler"):
        compile_c_kernels(_work(tmp_path), str(tmp_path / "no-such-cc"))
    assert not os.path.exists(tmp_path / "no-such-cc")


@pytest.mark.parametrize(
    "array",
    [
        np.zeros(4, dtype=np.float64),
        np.zeros((4, 4), dtype=np.float32)[:, ::2],
        np.zeros(4, dtype=np.float16),
    ],
    ids=["float64", "strided", "float16"],
)
def test_c_build_takes_float32_c_contiguous_arrays_only(array: np.ndarray) -> None:
    """The C build's driver hands raw pointers to C code that reads float32 rows: any
    other array is refused before a pointer is taken."""
    from hnn_bridge.adapters.cupy_kernels import CKernels

    with pytest.raises(AssertionError, match="float32 C-contiguous arrays only"):
        CKernels._p(array)
    assert CKernels._p(None) is None
    assert CKernels._p(np.zeros(3, dtype=np.float32)) is not None

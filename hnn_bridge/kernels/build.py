"""The one build helper of the neuron's C sources: compiler, source files, library cache.

The sources are files of this package (``iir_native.c``, ``iir_kernels.cu``), shipped in
the wheel as package data and read with `source_text`. `build_library` compiles a source
text with a C compiler into a shared library whose file name carries a hash of the text,
the flags and the compiler, so that a library is built once per machine and a changed
source gets a library of its own. Without a folder it caches in ``$XDG_CACHE_HOME/hnn_bridge``
(``~/.cache/hnn_bridge``), else in a private folder under the temporary directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from importlib.resources import files
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["CompilerNotFound", "build_library", "c_compiler", "source_text"]


class CompilerNotFound(FileNotFoundError):
    """No C compiler: neither ``$CC`` nor ``gcc`` nor ``cc`` runs here."""


def source_text(name: str) -> str:
    """The text of the source file ``name`` of this package (e.g. ``"iir_native.c"``)."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def c_compiler(explicit: Optional[str] = None) -> str:
    """The C compiler: ``explicit``, else ``$CC``, else ``gcc`` or ``cc`` on PATH.
    Raises `CompilerNotFound` when it does not run here."""
    cc = explicit or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None or shutil.which(cc) is None:
        raise CompilerNotFound("no C compiler (gcc or cc) on PATH")
    return cc


def _cache_folders() -> list[Path]:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(root) / "hnn_bridge", Path(tempfile.gettempdir()) / f"hnn_bridge-{os.getuid()}"]


def build_library(
    source: str,
    flags: Sequence[str],
    name: str,
    *,
    libs: Sequence[str] = (),
    folder: Optional[str | os.PathLike[str]] = None,
    compiler: Optional[str] = None,
) -> Path:
    """``source`` (C) compiled with ``compiler`` (`c_compiler`) and ``flags`` into
    ``lib{name}-{hash}.so``, linked with ``libs`` (e.g. ``-lm``); returns its path.

    In ``folder`` when given, else in the first writable cache folder; an existing library
    of the same hash is reused. The file appears atomically, so processes building the
    same library at once are safe. Raises `CompilerNotFound` without a compiler and
    RuntimeError (with the compiler's messages) when compiling fails.
    """
    cc = c_compiler(compiler)
    tag = hashlib.sha256("\0".join([source, *flags, *libs, cc]).encode()).hexdigest()[:16]
    for place in [Path(folder)] if folder is not None else _cache_folders():
        lib = place / f"lib{name}-{tag}.so"
        if lib.exists():
            return lib
        try:
            place.mkdir(parents=True, exist_ok=True)
            work = tempfile.mkdtemp(dir=place)
        except OSError:
            continue
        try:
            src, out = os.path.join(work, f"{name}.c"), os.path.join(work, "lib.so")
            Path(src).write_text(source, encoding="utf-8")
            cmd = [cc, *flags, "-o", out, src, *libs]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                messages = done.stderr.strip()[:2000]
                raise RuntimeError(f"compiling {name}.c failed ({' '.join(cmd)}):\n{messages}")
            os.replace(out, lib)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return lib
    raise RuntimeError(f"no writable folder to build lib{name} in")

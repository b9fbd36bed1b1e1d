"""Collect the ``synth.json`` and ``pnr.json`` of ``dlu gen --synth [--pnr ecp5]`` output
directories into one markdown table (``make bench`` writes ``build/bench/hw.md``).

Usage: ``python -m rtl_gen.hwbench DIR... --out FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HEADER = ("| output | config digest | LUT4 (generic) | flip-flops | memory bits | compute unit LUT4 | "
          "peak 8-bit MACs/cycle | per 1000 LUT4: core / compute unit | ECP5 Fmax (MHz) | ECP5 LUT / FF / DP16KD / DSP "
          "| critical path |")


def row(d: Path) -> str:
    """One table row of output directory ``d`` (``-`` where a file or figure is absent)."""
    syn = json.loads((d / "synth.json").read_text()) if (d / "synth.json").exists() else None
    pnr = json.loads((d / "pnr.json").read_text()) if (d / "pnr.json").exists() else None
    if syn is None and pnr is None:
        raise ValueError(f"hwbench: {d} has neither synth.json nor pnr.json (run dlu gen --synth / --pnr)")
    cells = [d.name, (syn or pnr)["config_digest"]]
    if syn:
        t, cu, dens = syn["total"], syn["compute_unit"], syn["macs_per_cycle_8bit_per_1000_lut4"]
        cells += [t["luts"], t["flip_flops"], t["memory_bits"], cu["luts"] if cu else "-",
                  syn["peak_macs_per_cycle_8bit"] or "-", f"{dens['core'] or '-'} / {dens['compute_unit'] or '-'}"]
    else:
        cells += ["-"] * 6
    if pnr:
        cp = pnr["critical_path"]
        cells += [pnr["fmax_mhz"], f"{pnr['luts']} / {pnr['ffs']} / {pnr['brams']} / {pnr['dsps']}",
                  f"`{cp.get('start', '?')}` -> `{cp.get('end', '?')}` ({cp.get('delay_ns', '?')} ns, "
                  f"{cp.get('carry_cells', '?')} carry cells)"]
    else:
        cells += ["-"] * 3
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtl_gen.hwbench", description=__doc__)
    ap.add_argument("dirs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        rows = [row(d) for d in args.dirs]
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        print(f"hwbench: error: {exc}", file=sys.stderr)
        return 2
    sep = "|" + "---|" * HEADER.count(" | ") + "---|"
    text = "\n".join([HEADER, sep, *rows]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())

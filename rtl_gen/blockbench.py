"""Fmax and area of single blocks: each wrapped in registers and placed and routed on its own.

A block's every input is registered before it and every output after it, so the routed
critical path is a register-to-register path through the block (how issue 15 measured its
table). ``python -m rtl_gen.blockbench BLOCK... --out DIR`` writes ``DIR/BLOCK/pnr.json`` and
prints one line per block; ``--list`` names the blocks.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class Registered(wiring.Component):
    """``block`` with a register on every input and every output (same signature as ``block``)."""

    def __init__(self, block: wiring.Component) -> None:
        self.block = block
        super().__init__(block.signature)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.block = self.block
        for (path, member, outer), (_, _, inner) in zip(self.signature.flatten(self),
                                                         self.block.signature.flatten(self.block), strict=True):
            reg = Signal.like(outer, name="r_" + "_".join(str(p) for p in path))
            if member.flow == In:
                m.d.sync += reg.eq(outer)
                m.d.comb += inner.eq(reg)
            else:
                m.d.sync += reg.eq(inner)
                m.d.comb += outer.eq(reg)
        return m


class PlainMacs(wiring.Component):
    """``n`` plain signed 8 x 8 multiply-accumulates into 32-bit accumulators (the baseline)."""

    def __init__(self, n: int = 4) -> None:
        self.n = n
        super().__init__({"a": In(8 * n), "b": In(8 * n), "clear": In(1), "acc": Out(32 * n)})

    def elaborate(self, platform) -> Module:
        m = Module()
        for i in range(self.n):
            acc = Signal(signed(32), name=f"acc{i}")
            p = self.a[8 * i:8 * i + 8].as_signed() * self.b[8 * i:8 * i + 8].as_signed()
            m.d.sync += acc.eq(Mux(self.clear, 0, acc) + p)
            m.d.comb += self.acc[32 * i:32 * i + 32].eq(acc)
        return m


def blocks() -> dict[str, Callable[[], wiring.Component]]:
    """Block name -> constructor (the tiny preset where a block takes a configuration)."""
    from hw.compute_unit import ComputeUnit
    from hw.requantizer import Requantizer
    from hw.simd_mac import SimdMacLane
    from hw.statistics import StatisticsBlock
    from reference.config import PRESETS
    from reference.formats import Width

    tiny = PRESETS["tiny"]
    return {
        "compute-unit-tiny": lambda: ComputeUnit(tiny),
        "statistics-tiny": lambda: StatisticsBlock(tiny),
        "lane": lambda: SimdMacLane(),
        "lane-w8": lambda: SimdMacLane((Width.W8,)),
        "requantizer-80": lambda: Requantizer(80),
        "plain-macs-4": lambda: PlainMacs(4),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rtl_gen.blockbench", description=__doc__)
    ap.add_argument("blocks", nargs="*")
    ap.add_argument("--out", type=Path, default=Path("build/blockbench"))
    ap.add_argument("--freq", type=float, default=100.0)
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    known = blocks()
    if args.list or not args.blocks:
        print("\n".join(known))
        return 0
    bad = [b for b in args.blocks if b not in known]
    if bad:
        print(f"blockbench: error: unknown block(s) {', '.join(bad)}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    import tempfile

    from amaranth.back import verilog

    from .pnr import ToolError, place_and_route, write_json

    for name in args.blocks:
        d = args.out / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "block.v").write_text(verilog.convert(Registered(known[name]()), name="block", emit_src=False))
        try:
            with tempfile.TemporaryDirectory(prefix="dlu-blockbench-") as work:
                res = place_and_route(d / "block.v", Path(work), top="block", freq_mhz=args.freq)
        except ToolError as exc:
            print(f"blockbench: error: {name}: {exc}", file=sys.stderr)
            return 1
        write_json(d / "pnr.json", {"block": name, **res.as_dict()})
        cp = res.critical_path
        print(f"{name}: Fmax {res.fmax_mhz} MHz, {res.luts} LUT, {res.ffs} FF, {res.dsps} DSP; "
              f"{cp.get('start')} -> {cp.get('end')} ({cp.get('carry_cells')} carry cells)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

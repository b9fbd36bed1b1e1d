"""Utilization bounds of a simulated command stream: what hiding transfers can buy, and what not.

The cycle simulator's stream runs on today's in-order core, where LOAD/STORE do not overlap
compute (:func:`reference.isa.cycles` of every command add up). Two changes are proposed to
raise utilization (issue 14): transfers that run concurrently with compute, and MATMULs laid out
so that the longer of M and N runs along the lanes. This module measures, for a stream that
exists, the most each could give; it models no hardware, it only recounts the stream's cycles:

- ``hidden``: every LOAD/STORE cycle hidden behind compute (an upper bound of any DMA overlap or
  double buffering: the compute, setup and drain cycles stay);
- ``oriented``: each MATMUL in the orientation that needs fewer output beats: ``a[M, K] x b[K, N]``
  takes ``M * ceil(N / V) * K`` cycles, its transpose ``b^T x a^T`` takes ``N * ceil(M / V) * K``
  (``V`` values per beat at the command's width); the transfers stay serial;
- ``oriented_hidden``: both.

Utilization is MACs over ``peak * cycles``, as in :meth:`sim.core.Counters.utilization`.
``python -m sim.bounds TRACE`` prints the four figures of a trace's schedule on its core (or
``--spad-words`` / ``--spad-banks`` for another scratchpad).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass

from reference.config import CoreConfig
from reference.formats import Width
from reference.isa import Ctl
from reference.ops import Op

from .core import SimCommand


@dataclass(frozen=True)
class UtilizationBounds:
    """Cycles of a stream as scheduled and under the bounds of the module docstring.

    Members
    -------
    peak_macs_per_cycle
        The datapath's MACs per cycle the utilization is measured against.
    macs
        Useful multiply-accumulates of the stream.
    cycles
        The stream's cycles (the sum of its commands').
    transfer_cycles
        Cycles of its LOAD/STORE commands.
    orientation_saving
        Cycles the better orientation of each MATMUL saves.
    """

    peak_macs_per_cycle: int
    macs: int
    cycles: int
    transfer_cycles: int
    orientation_saving: int

    def _util(self, cycles: int) -> float:
        return self.macs / (self.peak_macs_per_cycle * cycles) if cycles else 0.0

    @property
    def utilization(self) -> float:
        return self._util(self.cycles)

    @property
    def hidden(self) -> float:
        return self._util(self.cycles - self.transfer_cycles)

    @property
    def oriented(self) -> float:
        return self._util(self.cycles - self.orientation_saving)

    @property
    def oriented_hidden(self) -> float:
        return self._util(self.cycles - self.transfer_cycles - self.orientation_saving)


def utilization_bounds(cmds: list[SimCommand], cfg: CoreConfig, peak_macs_per_cycle: int) -> UtilizationBounds:
    """The :class:`UtilizationBounds` of ``cmds`` on a core of ``cfg``.

    Raises
    ------
    ValueError
        ``peak_macs_per_cycle`` is not positive, or a MATMUL has no width.
    """
    if peak_macs_per_cycle < 1:
        raise ValueError(f"peak_macs_per_cycle={peak_macs_per_cycle} is not positive")
    cycles = transfer = saving = macs = 0
    for c in cmds:
        cycles += c.cycles
        macs += c.macs
        if c.cmd.opcode in (Ctl.LOAD, Ctl.STORE):
            transfer += c.cycles
        elif c.cmd.opcode == Op.MATMUL:
            if c.width is None:
                raise ValueError(f"MATMUL of {c.layer} {c.pass_.value} has no width")
            v = cfg.values_per_beat(c.width)
            m, n, k = c.cmd.m, c.cmd.n, c.cmd.k
            saving += c.repeat * max(0, m * -(-n // v) * k - n * -(-m // v) * k)
    return UtilizationBounds(peak_macs_per_cycle, macs, cycles, transfer, saving)


def main(argv: list[str] | None = None) -> int:
    from reference.trace import TraceError, read_trace

    from .core import CycleSim, NotExecutable

    p = argparse.ArgumentParser(prog="python -m sim.bounds", description=__doc__.splitlines()[0])
    p.add_argument("trace", help="trace directory (dlu train --trace-iters ...)")
    p.add_argument("--spad-words", type=int, help="words per scratchpad bank (default: the trace's core)")
    p.add_argument("--spad-banks", type=int, help="scratchpad banks (default: the trace's core)")
    a = p.parse_args(argv)
    try:
        trace = read_trace(a.trace)
        cfg = trace.cfg
        if a.spad_words is not None or a.spad_banks is not None:
            cfg = dataclasses.replace(cfg, **{k: v for k, v in (("spad_words", a.spad_words),
                                                                ("spad_banks", a.spad_banks)) if v is not None})
        res = CycleSim(cfg).run(trace, execute=False)
    except (OSError, TraceError, NotExecutable, ValueError, TypeError) as exc:
        print(f"sim.bounds: {exc}", file=sys.stderr)
        return 1
    cmds = res.commands
    widths = sorted({c.width.bits for c in cmds if c.width is not None and c.macs})
    peak = res.cfg.peak_macs_per_cycle(Width.from_bits(widths[0])) if widths else res.cfg.lanes
    b = utilization_bounds(cmds, res.cfg, peak)
    print(f"cycles {b.cycles:,} (transfers {b.transfer_cycles:,}, MATMUL orientation would save "
          f"{b.orientation_saving:,}), peak {peak} MACs/cycle")
    print(f"utilization {b.utilization:.3f} | transfers hidden <= {b.hidden:.3f} | MATMULs oriented "
          f"<= {b.oriented:.3f} | both <= {b.oriented_hidden:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

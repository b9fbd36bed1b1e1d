"""The RTL engine of ``dlu replay --engine rtl`` and ``--check``: interface, word layout, comparison.

**Not available yet.** Running commands on the Verilated core through cocotb needs the cocotb
harness the verification engineer is building; until it lands, :func:`run_rtl` raises
:class:`RtlNotAvailable` and ``dlu replay --engine rtl`` / ``--check`` exit with that message.
What is here and tested:

- the contract :func:`run_rtl` must fulfil (arguments, :class:`RtlCommandResult`);
- :func:`pack_rows` / :func:`unpack_rows`: tensors as scratchpad words exactly as
  :mod:`reference.isa` lays them out (the payload of LOAD and the read-back of STORE);
- :func:`compare_iteration`: the ``--check`` comparison of RTL results against the simulator's
  command stream and the trace (cycles per command, then per record the output integers and
  the statistics), stopping at the first difference with a readable message.

cocotb and ``hw`` are imported only inside :func:`run_rtl`, never at import time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference.config import CoreConfig
from reference.formats import Width
from reference.isa import Ctl
from reference.stats import OpStats
from reference.trace import IterationTrace, OpRecord

from .core import SimScheduleIteration


class RtlNotAvailable(RuntimeError):
    """The RTL engine cannot run (the cocotb harness is not integrated yet)."""


@dataclass(frozen=True)
class RtlCommandResult:
    """What the RTL did for one command of a :class:`sim.core.SimScheduleIteration`.

    Members
    -------
    index
        Position of the command in the iteration's stream.
    cycles
        Clock cycles from the cycle the command left the FIFO to the cycle the core was ready
        for the next one (what :func:`reference.isa.cycles` predicts).
    out
        Compute commands: the ``[m, n]`` integers written to the destination (read back from
        the scratchpad); None for other commands.
    stats
        Compute commands: the statistics the command added to its destination's database entry.
    """

    index: int
    cycles: int
    out: np.ndarray | None = None
    stats: OpStats | None = None


def ensure_available() -> None:
    """Raise :class:`RtlNotAvailable` unless the RTL engine can run (today: always raises)."""
    raise RtlNotAvailable("the RTL engine is not available yet: the cocotb harness for the Verilated core is not "
                          "integrated (see docs/simulator.md); use --engine sim")


def run_rtl(cfg: CoreConfig, sched: SimScheduleIteration, it: IterationTrace, build_dir: str | Path,
            start: int = 0, count: int | None = None) -> list[RtlCommandResult]:
    """Run commands ``start .. start+count`` of ``sched`` on the Verilated core; one result per command.

    The harness must load the settings register, database and generator state of ``it`` at
    its start (``settings_at_start``, ``db_at_start``, ``rng_at_start``), feed each LOAD with
    the words of the tensor it moves (:func:`pack_rows`) and apply the iteration's setting
    writes before the commands that follow them (``sched.steps`` gives each command's record).

    Raises
    ------
    RtlNotAvailable
        Always, until the cocotb harness is integrated.
    """
    ensure_available()
    raise AssertionError("unreachable")


def pack_rows(data: np.ndarray, width: Width, cfg: CoreConfig) -> np.ndarray:
    """Scratchpad words of a ``[rows, cols]`` tensor: uint32 array ``[rows * ceil(cols / V), lanes]``.

    Word ``r * ceil(cols / V) + c`` holds values ``c*V .. c*V+V-1`` of row ``r``, value ``j`` of
    the word at bits ``[j*W, (j+1)*W)`` in two's complement (lane ``l`` holds bits
    ``[32*l, 32*l+32)``); unused values are 0.
    """
    data = np.asarray(data, dtype=np.int64)
    rows, cols = data.shape
    v = cfg.values_per_beat(width)
    wpr = -(-cols // v)
    padded = np.zeros((rows, wpr * v), dtype=np.int64)
    padded[:, :cols] = data
    u = (padded & ((1 << width.bits) - 1)).astype(np.uint64).reshape(rows * wpr, cfg.lanes, 32 // width.bits)
    shifts = (np.arange(32 // width.bits, dtype=np.uint64) * np.uint64(width.bits))
    return np.bitwise_or.reduce(u << shifts, axis=2).astype(np.uint32)


def unpack_rows(words: np.ndarray, rows: int, cols: int, width: Width, cfg: CoreConfig) -> np.ndarray:
    """Inverse of :func:`pack_rows`: the ``[rows, cols]`` signed integers."""
    per = 32 // width.bits
    w = np.asarray(words, dtype=np.uint64).reshape(-1, cfg.lanes, 1)
    vals = (w >> (np.arange(per, dtype=np.uint64) * np.uint64(width.bits))) & np.uint64((1 << width.bits) - 1)
    vals = vals.astype(np.int64).reshape(rows, -1)[:, :cols]
    return np.where(vals >= 1 << (width.bits - 1), vals - (1 << width.bits), vals)


def to_int_words(packed: np.ndarray) -> list[int]:
    """Words of :func:`pack_rows` as Python integers of ``lanes * 32`` bits (lane ``l`` at bits ``[32l, 32l+32)``)."""
    return [sum(int(x) << (32 * lane) for lane, x in enumerate(row)) for row in np.asarray(packed)]


class RtlMismatch(AssertionError):
    """The RTL and the simulator (or the trace) differ; the message says where and how."""


def compare_iteration(sched: SimScheduleIteration, it: IterationTrace, rtl: list[RtlCommandResult]) -> None:
    """Raise :class:`RtlMismatch` at the first difference between RTL results and sim/trace.

    Checks, in command order: the number of results, each command's cycles; then per compute
    record whose commands all ran, the rows the commands wrote (concatenated in tile order)
    against the trace's output and the summed statistics against the trace's.
    """
    by_index = {r.index: r for r in rtl}
    for r in rtl:
        if not 0 <= r.index < len(sched.commands):
            raise RtlMismatch(f"iteration {sched.iteration}: RTL result for command {r.index}, the stream has "
                              f"{len(sched.commands)}")
        c = sched.commands[r.index]
        if r.cycles != c.cycles:
            raise RtlMismatch(f"iteration {sched.iteration} command {r.index} ({c.kind}, record {c.record}, "
                              f"{c.layer} {c.pass_.value}): RTL took {r.cycles} cycles, sim {c.cycles}")
    records: dict[int, list[int]] = {}
    for i, c in enumerate(sched.commands):
        if c.cmd.opcode not in tuple(Ctl):
            records.setdefault(c.record, []).append(i)
    for k, idx in sorted(records.items()):
        if not all(i in by_index for i in idx):
            continue
        rec = it.records[k]
        if not isinstance(rec, OpRecord):
            continue
        outs = [by_index[i].out for i in idx]
        if any(o is None for o in outs):
            raise RtlMismatch(f"iteration {sched.iteration} record {k}: RTL returned no output for a compute command")
        got = np.concatenate(outs, axis=0)
        want = rec.out.data
        if got.shape != want.shape:
            raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name}): RTL output shape "
                              f"{got.shape}, trace {want.shape}")
        bad = np.argwhere(got != want)
        if len(bad):
            r0, c0 = (int(x) for x in bad[0])
            raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name} -> tid {rec.dst}): "
                              f"{len(bad)} value(s) differ; first at [{r0}, {c0}]: RTL {int(got[r0, c0])}, "
                              f"trace {int(want[r0, c0])}")
        hist = sum(by_index[i].stats.hist for i in idx)  # type: ignore[union-attr]
        tot = {f: sum(getattr(by_index[i].stats, f) for i in idx) for f in ("zeros", "overflow", "underflow", "total")}
        for f, v in tot.items():
            if v != getattr(rec.stats, f):
                raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name}): statistics {f}: RTL {v}, "
                                  f"trace {getattr(rec.stats, f)}")
        if not np.array_equal(hist, rec.stats.hist):
            b = int(np.argmax(hist != rec.stats.hist))
            raise RtlMismatch(f"iteration {sched.iteration} record {k} ({rec.op.name}): histogram bin {b}: RTL "
                              f"{int(hist[b])}, trace {int(rec.stats.hist[b])}")

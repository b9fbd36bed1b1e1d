"""RTL engine contract: not available yet (clear error), word layout, and the --check comparison."""

from __future__ import annotations

import numpy as np
import pytest

from reference.formats import Width
from reference.isa import Ctl
from reference.stats import OpStats
from reference.trace import OpRecord
from sim.core import CycleSim
from sim.rtl_engine import (
    RtlCommandResult,
    RtlMismatch,
    RtlNotAvailable,
    compare_iteration,
    pack_rows,
    run_rtl,
    to_int_words,
    unpack_rows,
)
from tests.sim.tracegen import TINY, small_trace


def test_rtl_engine_says_it_is_not_available():
    trace = small_trace(0)
    sched = CycleSim().run(trace, execute=False).iterations[0]
    with pytest.raises(RtlNotAvailable, match="not available yet"):
        run_rtl(TINY, sched, trace.iterations[0], "build/rtl")


def test_pack_rows_by_hand():
    # tiny: 2 lanes; at 16 bits a word holds 4 values, two per 32-bit lane, value j at bits [16j, 16j+16).
    words = pack_rows(np.array([[1, -2, 3, 4, 5]]), Width.W16, TINY)
    assert words.shape == (2, 2)
    assert words.tolist() == [[0xFFFE0001, 0x00040003], [0x00000005, 0]]
    assert to_int_words(words) == [0x00040003_FFFE0001, 0x5]


@pytest.mark.parametrize("width", list(Width))
@pytest.mark.parametrize("seed", [0, 1])
def test_pack_unpack_round_trip(width, seed):
    rng = np.random.default_rng(seed)
    lim = 1 << (width.bits - 1)
    x = rng.integers(-lim, lim, (7, 13))
    w = pack_rows(x, width, TINY)
    assert w.shape == (7 * -(-13 // TINY.values_per_beat(width)), TINY.lanes)
    assert np.array_equal(unpack_rows(w, 7, 13, width, TINY), x)


def _perfect(trace, sched, it):
    """What a correct RTL would return: sim cycles, trace outputs split as the tiles, trace stats on the first tile."""
    out = []
    for i, c in enumerate(sched.commands):
        if c.cmd.opcode in tuple(Ctl):
            out.append(RtlCommandResult(i, c.cycles))
            continue
        rec = it.records[c.record]
        tiles = [j for j, d in enumerate(sched.commands) if d.record == c.record and d.cmd.opcode not in tuple(Ctl)]
        row0 = sum(sched.commands[j].cmd.m for j in tiles[:tiles.index(i)])
        stats = rec.stats if i == tiles[0] else OpStats.empty(TINY)
        out.append(RtlCommandResult(i, c.cycles, rec.out.data[row0:row0 + c.cmd.m], stats))
    return out


def test_compare_accepts_a_correct_rtl_and_stops_at_the_first_difference():
    trace = small_trace(2)
    sched, it = CycleSim().run(trace, execute=False).iterations[0], trace.iterations[0]
    good = _perfect(trace, sched, it)
    compare_iteration(sched, it, good)
    slow = list(good)
    slow[5] = RtlCommandResult(5, good[5].cycles + 1, good[5].out, good[5].stats)
    with pytest.raises(RtlMismatch, match=f"command 5 .*RTL took {good[5].cycles + 1} cycles, sim {good[5].cycles}"):
        compare_iteration(sched, it, slow)
    k = next(i for i, c in enumerate(sched.commands) if c.cmd.opcode not in tuple(Ctl) and c.cmd.m > 3)
    bad = list(good)
    data = good[k].out.copy()
    data[2, 1] += 1
    bad[k] = RtlCommandResult(k, good[k].cycles, data, good[k].stats)
    rec = it.records[sched.commands[k].record]
    assert isinstance(rec, OpRecord)
    with pytest.raises(RtlMismatch, match=r"1 value\(s\) differ; first at \["):
        compare_iteration(sched, it, bad)
    st = list(good)
    s = good[k].stats
    st[k] = RtlCommandResult(k, good[k].cycles, good[k].out, OpStats(s.hist, s.zeros + 1, s.overflow, s.underflow,
                                                                       s.total))
    with pytest.raises(RtlMismatch, match="statistics zeros"):
        compare_iteration(sched, it, st)

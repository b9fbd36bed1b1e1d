"""sim.bounds: the utilization bounds recount a stream's cycles exactly."""

from __future__ import annotations

import pytest

from reference.formats import Width
from reference.isa import Command, Ctl
from reference.ops import Op
from sim.bounds import main, utilization_bounds
from sim.core import CycleSim, Pass, SimCommand
from tests.sim.tracegen import TINY, small_trace


def _c(cmd: Command, cycles: int, macs: int = 0, width: Width | None = Width.W8, repeat: int = 1) -> SimCommand:
    return SimCommand(cmd, cycles, 0, 0, "l", Pass.FORWARD, width, macs=macs, repeat=repeat)


def test_bounds_of_a_hand_built_stream():
    assert TINY.values_per_beat(Width.W8) == 8  # the hand counts below assume V = 8
    cmds = [
        _c(Command(Ctl.LOAD, k=10), 16, width=None),
        # M=64, N=2, K=3: 64 * ceil(2/8) * 3 = 192 beat cycles; transposed 2 * ceil(64/8) * 3 = 48
        _c(Command(Op.MATMUL, m=64, n=2, k=3), 198, macs=384),
        # M=2, N=64, K=3 is already the better orientation (48 against 192): no saving
        _c(Command(Op.MATMUL, m=2, n=64, k=3), 54, macs=384),
        # two merged M=16, N=1, K=5 (16 * 5 = 80 each; transposed 1 * 2 * 5 = 10): saving 2 * 70
        _c(Command(Op.MATMUL, m=16, n=1, k=5), 2 * 86, macs=2 * 80, repeat=2),
        _c(Command(Ctl.STORE, k=4), 20, width=None),
    ]
    b = utilization_bounds(cmds, TINY, 8)
    assert (b.macs, b.cycles, b.transfer_cycles, b.orientation_saving) == (928, 460, 36, 144 + 140)
    assert b.utilization == pytest.approx(928 / (8 * 460))
    assert b.hidden == pytest.approx(928 / (8 * 424))
    assert b.oriented == pytest.approx(928 / (8 * 176))
    assert b.oriented_hidden == pytest.approx(928 / (8 * 140))


def test_bounds_of_a_simulated_trace_are_ordered_and_count_its_transfers():
    res = CycleSim().run(small_trace(0), execute=False)
    b = utilization_bounds(res.commands, res.cfg, res.cfg.lanes)
    assert b.cycles == res.counters.cycles and b.transfer_cycles == res.counters.transfer_cycles > 0
    assert b.utilization == pytest.approx(res.counters.utilization(res.cfg.lanes))
    assert b.utilization < b.hidden <= b.oriented_hidden
    assert b.utilization <= b.oriented <= b.oriented_hidden


def test_bad_peak_and_bad_trace_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="peak_macs_per_cycle=0"):
        utilization_bounds([], TINY, 0)
    assert main([str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sim.bounds: ")

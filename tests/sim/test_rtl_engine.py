"""RTL engine: word layout, the program the host runs, the --check comparison, and real runs on the
Verilated tiny core (every command's cycles, data and statistics against the trace; a corrupted
trace is caught)."""

from __future__ import annotations

import numpy as np
import pytest

from reference.formats import Width
from reference.isa import Accumulate, Ctl
from reference.stats import OpStats
from reference.trace import OpRecord
from sim.core import CycleSim, NotExecutable, schedule
from sim.rtl_engine import (
    RtlCommandResult,
    RtlMismatch,
    build_program,
    check_run,
    compare_iteration,
    from_int_words,
    pack_rows,
    run_rtl,
    to_int_words,
    unpack_rows,
)
from tests.sim.tracegen import TINY, ksplit_trace, small_trace


def test_pack_rows_by_hand():
    # tiny: 2 lanes; at 16 bits a word holds 4 values, two per 32-bit lane, value j at bits [16j, 16j+16).
    words = pack_rows(np.array([[1, -2, 3, 4, 5]]), Width.W16, TINY)
    assert words.shape == (2, 2)
    assert words.tolist() == [[0xFFFE0001, 0x00040003], [0x00000005, 0]]
    assert to_int_words(words) == [0x00040003_FFFE0001, 0x5]
    assert np.array_equal(from_int_words(to_int_words(words), TINY.lanes), words)


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


def test_every_transfer_names_the_rows_of_the_value_it_moves():
    trace = small_trace(3)
    for sch in schedule(trace, TINY):
        moved = [c for c in sch.commands if c.cmd.opcode in (Ctl.LOAD, Ctl.STORE)]
        assert moved, "the small trace has transfers"
        for c in moved:
            t = sch.tensors[c.vid]
            wpr = -(-t.shape[1] // TINY.values_per_beat(t.fmt.width))
            assert c.rows * wpr == c.cmd.k and 0 <= c.row0 and c.row0 + c.rows <= t.shape[0], c
        assert {c.rows for c in moved if c.rows < sch.tensors[c.vid].shape[0]}, "some transfer is a row tile"


def test_program_refuses_what_a_reset_core_cannot_start_from():
    trace = small_trace(4)
    later = type(trace)(trace.cfg, trace.seed, trace.threshold, trace.iterations[1:], trace.meta)
    with pytest.raises(NotExecutable, match="iteration 1 does not start from the generators' seeded state"):
        build_program(later, schedule(later, TINY), TINY, check=False)
    prog = build_program(trace, schedule(trace, TINY)[:1], TINY, check=True, limit=5)
    assert sum(s["op"] == "cmd" and not s["i"].endswith("x") for s in prog.steps) == 5
    assert [s for s in prog.steps if s["op"] == "setting"], "the start writes the settings register"


@pytest.fixture(scope="module")
def rtl_run():
    pytest.importorskip("cocotb")
    trace = small_trace(5, iterations=1)
    sched = schedule(trace, TINY)
    return trace, sched, run_rtl(trace, sched, TINY, check=True)


def test_rtl_matches_the_trace_command_by_command(rtl_run):
    trace, sched, run = rtl_run
    n = check_run(trace, sched, run)
    assert n == len(sched[0].commands)
    assert run.cycles >= sum(c.cycles for c in sched[0].commands)
    ops = {c.kind for c in sched[0].commands}
    assert {"MATMUL", "ADD", "RELU", "RELU_BACKWARD", "AXPY", "CONVERT", "MUL", "LOAD", "STORE"} <= ops
    assert run.settings_checks and all(w == {t: g & 0xFFF for t, g in got.items()}
                                       for _, _, w, got in run.settings_checks)


def test_rtl_check_catches_a_corrupted_trace(rtl_run):
    trace, sched, run = rtl_run
    it = trace.iterations[0]
    k = next(i for i, r in enumerate(it.records) if isinstance(r, OpRecord) and r.op.name == "RELU")
    rec = it.records[k]
    data = rec.out.data.copy()
    data[1, 2] += 1
    bad = type(rec.out)(data, rec.out.fmt)
    it.records[k] = type(rec)(**{**rec.__dict__, "out": bad})
    try:
        with pytest.raises(RtlMismatch, match=f"record {k} \\(RELU.*first at \\[1, 2\\]"):
            check_run(trace, sched, run)
    finally:
        it.records[k] = rec
    slow = run.results[0][3]
    run.results[0][3] = RtlCommandResult(slow.index, slow.cycles + 2, slow.out, slow.stats)
    try:
        with pytest.raises(RtlMismatch, match="command 3 .*RTL took"):
            check_run(trace, sched, run)
    finally:
        run.results[0][3] = slow


def test_rtl_checks_a_k_split_matmul_against_the_trace():
    """b larger than a bank: START, CONTINUE x 3, FINISH on the RTL's accumulator memory, the a chunks
    LOADed by columns; the finished result and statistics equal the trace's unsplit product."""
    pytest.importorskip("cocotb")
    trace = ksplit_trace(7)
    sched = schedule(trace, TINY)
    mm = [c.cmd for c in sched[0].commands if c.kind == "MATMUL"]
    assert [c.accumulate for c in mm] == [Accumulate.START] + [Accumulate.CONTINUE] * 3 + [Accumulate.FINISH]
    assert any(c.cols >= 0 for c in sched[0].commands if c.kind == "LOAD")
    run = run_rtl(trace, sched, TINY, check=True)
    assert check_run(trace, sched, run) == len(sched[0].commands)


def test_ksplit_rtl_long_k_on_the_tiny_core():
    """sim.ksplit_rtl: K = 1,000 in 16 chunks of one tiny bank, identical to the unsplit golden product."""
    pytest.importorskip("cocotb")
    from sim import ksplit_rtl

    out = ksplit_rtl.run(TINY, 1000, log=lambda s: None)
    assert out["chunks"] == 16


@pytest.mark.slow
def test_ksplit_rtl_k_96800_on_the_default_core():
    """Issue 14's target: AlexNet conv1's weight-gradient K (96,800, batch 32) on the default core."""
    pytest.importorskip("cocotb")
    from reference.config import PRESETS
    from sim import ksplit_rtl

    assert ksplit_rtl.run(PRESETS["default"], 96_800, log=lambda s: None)["chunks"] == 95


def test_rtl_starts_any_traced_iteration_from_the_traces_state(tmp_path):
    """Iterations 1 and 3 of a run (not 0, not contiguous) on the tiny core: the host writes each
    one's settings and generator states (RNG_STATE) and clears the database; the check compares
    everything, including the generator states read back after each iteration (seed 0)."""
    pytest.importorskip("cocotb")
    from reference.data import Dataset, load_digits_split
    from reference.train import IterSpec, Precision, TrainConfig, train
    from sim.core import fitting_config

    d = load_digits_split()
    small = Dataset("digits-128", d.x_train[:128], d.y_train[:128], d.x_test[:32], d.y_test[:32], d.image_hwc)
    core = tmp_path / "core.toml"
    core.write_text('preset = "tiny"\ntensor_ids = 64\n')  # the CNN needs more ids than tiny's 8
    trace = train(TrainConfig(precision=Precision.DFP8, epochs=1, seed=0, core=str(core),
                              trace_iters=IterSpec.parse("1,3")), small).trace
    cfg = fitting_config(trace)
    sched = schedule(trace, cfg)
    run = run_rtl(trace, sched, cfg, check=True)
    assert check_run(trace, sched, run) == sum(len(s.commands) for s in sched)
    assert [i for i, _, _ in run.rng_checks] == [1, 3]
    assert any(w != list(trace.iterations[0].rng_at_start) for _, w, _ in run.rng_checks), "the states moved"
    it, want, got = run.rng_checks[0]
    run.rng_checks[0] = (it, [want[0] ^ 1, *want[1:]], got)
    with pytest.raises(RtlMismatch, match="iteration 1: stochastic-rounding generator 0 ends at"):
        check_run(trace, sched, run)


MIXED = """[precision]
width = 8
[precision.weight]
width = 16
[precision.gradient]
width = 16
[precision.velocity]
width = 16
[precision.error]
rounding = "floor"
"""


@pytest.mark.slow
@pytest.mark.parametrize("model,precision,mixed,iters", [
    ("cnn", "dfp8", False, "0-1,4"), ("cnn", "dfp16", False, "2,5"), ("mlp", "dfp32", False, "1"),
    ("cnn", "dfp8", True, "1-2")])
def test_dlu_replay_check_on_the_default_core(tmp_path, capsys, model, precision, mixed, iters):
    """make regress: real training runs (seed 0) replayed on the default core with --check."""
    pytest.importorskip("cocotb")
    from dlu.cli import main

    args = ["train", "--model", model, "--precision", precision, "--epochs", "1", "--limit-train", "256",
            "--trace-iters", iters, "--out", str(tmp_path), "--name", "run", "--quiet", "--no-plots"]
    if mixed:
        (tmp_path / "mixed.toml").write_text(MIXED)
        args += ["--config", str(tmp_path / "mixed.toml")]
    assert main(args) == 0
    assert main(["replay", str(tmp_path / "run" / "trace"), "--check", "--quiet"]) == 0
    assert "identical to the simulator and the trace" in capsys.readouterr().out

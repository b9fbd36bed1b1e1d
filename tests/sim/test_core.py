"""Cycle simulator core: timing, legality, tiling, memory safety, bit-exact execution."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reference import isa
from reference.formats import DfpFormat, DfpTensor, RoundingMode, Width
from reference.isa import Accumulate, Ctl
from reference.ops import Op, add, axpy, matmul, relu_backward
from reference.rng import seed_states
from reference.stats import Database
from reference.trace import OpRecord, PolicyRecord, SettingRecord, TraceError, read_trace, replay_reference, write_trace
from sim.core import CycleSim, Pass, attribute, check_compatible, fitting_config, schedule
from tests.sim.tracegen import TINY, matmul_trace, oversize_trace, pressure_trace, small_trace

SEEDS = [0, 1, 7]


def _settings_timeline(it):
    """Settings register before each record, rebuilt from the trace alone (independent of sim)."""
    s = dict(it.settings_at_start)
    out = []
    for rec in it.records:
        out.append(dict(s))
        if isinstance(rec, SettingRecord):
            s[rec.tid] = rec.setting
        elif isinstance(rec, PolicyRecord):
            s.update(rec.changed)
    out.append(dict(s))
    return out


def test_single_matmul_cycles_by_hand():
    # tiny core: 2 lanes, V = 8 values of 8 bits per word; a[4,8] is 4 words, b[8,4] 8 words.
    res = CycleSim().run(matmul_trace())
    kinds = [c.kind for c in res.commands]
    assert kinds == ["LOAD", "LOAD", "MATMUL", "STORE", "POLICY_UPDATE"]
    # LOAD a: 2 + 4 + 4; LOAD b: 2 + 8 + 4; MATMUL: 2 + (4 beats * K=8) + 4; STORE d (live-out,
    # 4 words): 2 + 4 + 4; POLICY_UPDATE: 2 + (2 * 32 bins + 4) * 8 tensor ids.
    assert [c.cycles for c in res.commands] == [10, 14, 38, 10, 546]
    ctr = res.counters
    assert (ctr.cycles, ctr.compute_cycles, ctr.transfer_cycles, ctr.overhead_cycles) == (618, 32, 34, 552)
    assert (ctr.macs, ctr.values_analysed, ctr.bus_words) == (4 * 4 * 8, 16, 4 + 8 + 4)
    mm = res.commands[2].cmd
    banks = {a // TINY.spad_words for a in (mm.addr_a, mm.addr_b, mm.addr_d)}
    assert len(banks) == 3


@pytest.mark.parametrize("seed", SEEDS)
def test_replay_is_bit_exact_and_a_corrupted_trace_is_caught(seed, tmp_path):
    trace = read_trace(write_trace(small_trace(seed), tmp_path / "t"))
    rep = replay_reference(trace)
    res = CycleSim().run(trace)  # raises TraceError on any data/statistics/rng difference
    assert res.executed and rep.ops == sum(isinstance(r, OpRecord) for it in trace.iterations for r in it.records)
    k = next(i for i, r in enumerate(trace.iterations[1].records) if isinstance(r, OpRecord) and r.op == Op.RELU)
    data = trace.iterations[1].records[k].out.data
    data[3, 1] = data[3, 1] + 1 if data[3, 1] < 127 else data[3, 1] - 1
    with pytest.raises(TraceError, match=f"iteration 1 record {k}"):
        CycleSim().run(trace)
    assert CycleSim().run(trace, execute=False).counters == res.counters  # timing needs no data


@pytest.mark.parametrize("make", [small_trace, pressure_trace])
@pytest.mark.parametrize("seed", SEEDS)
def test_cycles_are_isa_cycles_and_counters_add_up(make, seed):
    trace = make(seed)
    res = CycleSim().run(trace)
    total = 0
    for it, sch in zip(trace.iterations, res.iterations, strict=True):
        timeline = _settings_timeline(it)
        for c, step in zip(sch.commands, sch.steps, strict=True):
            settings = timeline[step]
            isa.check_command(c.cmd, settings, TINY)
            assert c.cycles == isa.cycles(c.cmd, settings, TINY)
            total += c.cycles
    ctr = res.counters
    assert ctr.cycles == total
    assert ctr.compute_cycles + ctr.overhead_cycles + ctr.transfer_cycles == ctr.cycles
    # MACs and analysed values from the records' shapes: tiling must neither lose nor add work.
    macs = vals = 0
    for it in trace.iterations:
        for r in it.records:
            if isinstance(r, OpRecord):
                m, n = r.out.shape
                macs += m * n * r.srcs[0].shape[1] if r.op == Op.MATMUL else (m * n if r.op in (Op.MUL, Op.AXPY)
                                                                               else 0)
                vals += m * n
    assert (ctr.macs, ctr.values_analysed) == (macs, vals)


@pytest.mark.parametrize("seed", SEEDS)
def test_tiles_cover_the_rows_of_oversize_tensors(seed):
    trace = small_trace(seed, rows=100)
    res = CycleSim().run(trace, execute=False)
    for it, sch in zip(trace.iterations, res.iterations, strict=True):
        for k, r in enumerate(it.records):
            if not isinstance(r, OpRecord):
                continue
            cmds = [c.cmd for c in sch.commands if c.record == k and c.cmd.opcode == r.op]
            assert sum(c.m for c in cmds) == r.out.shape[0]
            if r.out.shape[0] * -(-r.out.shape[1] // TINY.values_per_beat(r.out.fmt.width)) > TINY.spad_words:
                assert len(cmds) > 1, f"record {k} ({r.op.name}) exceeds a bank but was not tiled"


@pytest.mark.parametrize("make", [small_trace, pressure_trace])
@pytest.mark.parametrize("seed", SEEDS)
def test_live_tensors_never_overlap(make, seed):
    """A tag memory: every word a command reads must hold the tensor id it expects, written earlier."""
    trace = make(seed)
    res = CycleSim().run(trace, execute=False)
    total = TINY.spad_banks * TINY.spad_words
    evictions = 0
    for it, sch in zip(trace.iterations, res.iterations, strict=True):
        timeline = _settings_timeline(it)
        tags = np.full(total, -1)
        for c, step in zip(sch.commands, sch.steps, strict=True):
            cmd, settings = c.cmd, timeline[step]
            if cmd.opcode == Ctl.LOAD:
                tags[cmd.addr_d:cmd.addr_d + cmd.k] = cmd.tid_d
            elif cmd.opcode == Ctl.STORE:
                assert (tags[cmd.addr_a:cmd.addr_a + cmd.k] == cmd.tid_a).all(), f"seed {seed}: STORE of clobbered data"
                evictions += 1
            elif cmd.opcode in set(Op):
                for role, (rows, cols) in isa.operand_shapes(cmd).items():
                    tid, addr = {"a": (cmd.tid_a, cmd.addr_a), "b": (cmd.tid_b, cmd.addr_b),
                                 "d": (cmd.tid_d, cmd.addr_d)}[role]
                    words = isa.tensor_words(rows, cols, settings[tid].fmt, TINY)
                    if role == "d":
                        tags[addr:addr + words] = tid
                    else:
                        assert (tags[addr:addr + words] == tid).all(), \
                            f"seed {seed}: record {c.record} {c.kind} reads {role} (tid {tid}) from clobbered words"
    assert evictions > 0


def test_pressure_trace_evicts_and_reloads():
    res = CycleSim().run(pressure_trace(0))
    loads = [c for c in res.commands if c.kind == "LOAD"]
    stores = [c for c in res.commands if c.kind == "STORE"]
    # Six 48-word host tensors in 4 banks of 64 words: more LOADs than tensors means one was
    # evicted and reloaded; a STORE before the last compute record (11) means a dirty result was
    # evicted, and its reload a LOAD of tid 6 or 7.
    assert len(loads) > 6
    assert any(c.record < 11 for c in stores)
    assert any(c.cmd.tid_d in (6, 7) for c in loads)


def test_oversize_matmul_b_is_split_over_k_into_accumulating_commands():
    """b [100, 4] at 8 bits (100 words) exceeds a tiny bank (64): two K chunks, START then FINISH,
    their operands LOADed chunk by chunk (a's columns, b's rows), one result."""
    trace = oversize_trace()
    res = CycleSim().run(trace)
    mm = [c for c in res.commands if c.kind == "MATMUL"]
    assert [c.cmd.accumulate for c in mm] == [Accumulate.START, Accumulate.FINISH]
    assert [c.cmd.k for c in mm] == [64, 36] and all((c.cmd.m, c.cmd.n) == (2, 4) for c in mm)
    loads = [c for c in res.commands if c.kind == "LOAD"]
    a_loads = [(c.row0, c.rows, c.col0, c.cols) for c in loads if c.cmd.tid_d == 0]
    b_loads = [(c.row0, c.rows, c.cols) for c in loads if c.cmd.tid_d == 1]
    assert a_loads == [(0, 2, 0, 64), (0, 2, 64, 36)]
    assert b_loads == [(0, 64, -1), (64, 36, -1)]
    # the grown scratchpad runs it unsplit, in fewer cycles
    grown = CycleSim(dataclasses.replace(TINY, spad_words=128)).run(trace)
    assert [c.cmd.accumulate for c in grown.commands if c.kind == "MATMUL"] == [Accumulate.SINGLE]
    assert fitting_config(trace).spad_words == 64


def test_k_split_with_a_small_accumulator_memory_tiles_the_rows():
    """acc_beats = 1: each row of the result is its own tile with its own K chunks; rows are STOREd."""
    res = CycleSim(dataclasses.replace(TINY, acc_beats=1)).run(oversize_trace())
    mm = [c.cmd for c in res.commands if c.kind == "MATMUL"]
    assert [(c.m, c.k, c.accumulate) for c in mm] == [(1, 64, Accumulate.START), (1, 36, Accumulate.FINISH)] * 2
    assert [(c.row0, c.rows) for c in res.commands if c.kind == "STORE" and c.cmd.tid_a == 2] == [(0, 1), (1, 1)]


def test_replay_core_may_differ_only_in_the_scratchpad():
    with pytest.raises(ValueError, match="lanes=4 differs"):
        check_compatible(TINY, dataclasses.replace(TINY, lanes=4))
    with pytest.raises(ValueError, match="widths=.8,. differs"):
        check_compatible(TINY, dataclasses.replace(TINY, widths=(8,)))
    assert check_compatible(TINY, dataclasses.replace(TINY, spad_banks=5)).spad_banks == 5


def test_fp32_counterpart_schedules_everything_at_32_bits():
    trace = small_trace(0)
    w32 = schedule(trace, width_override=Width.W32)
    w8 = schedule(trace)
    c32 = sum(c.cycles for it in w32 for c in it.commands)
    c8 = sum(c.cycles for it in w8 for c in it.commands)
    assert all(c.width in (None, Width.W32) for it in w32 for c in it.commands)
    assert c32 > c8  # 8 values per word at 32 bits instead of 32


def test_attribution_by_tensor_names():
    assert attribute(Op.MATMUL, "conv1.matmul", ["input", "conv1.weight"]) == ("conv1", Pass.FORWARD)
    assert attribute(Op.MATMUL, "relu3.out.err", ["fc2.out.err", "fc2.weight"]) == ("fc2", Pass.BACKWARD)
    assert attribute(Op.RELU_BACKWARD, "fc1.out.err", ["relu3.out.err", "fc1.out"]) == ("relu3", Pass.BACKWARD)
    assert attribute(Op.AXPY, "conv1.weight.grad", ["conv1.weight", "conv1.weight.grad"]) == ("conv1", Pass.UPDATE)
    assert attribute(Op.CONVERT, "conv1.weight@16", ["conv1.weight"]) == ("conv1", Pass.FORWARD)


@pytest.mark.parametrize("width", [Width.W8, Width.W16])
@pytest.mark.parametrize("seed", SEEDS)
def test_row_tiles_are_bit_exact_with_stochastic_rounding(width, seed):
    """The tiling claim of sim.core: row tiles give the same data, summed statistics and generator state."""
    rng = np.random.default_rng(seed)
    lim = 1 << (width.bits - 1)

    def t(rows, cols, frac):
        return DfpTensor(rng.integers(-lim, lim, (rows, cols)), DfpFormat(width, frac))

    out = DfpFormat(width, 3)
    cases = {
        "matmul": (lambda a, b, r: matmul(a, b, out, RoundingMode.STOCHASTIC, TINY, r), t(37, 12, 6), t(12, 11, 5),
                   False),
        "add": (lambda a, b, r: add(a, b, out, RoundingMode.STOCHASTIC, TINY, r), t(37, 11, 9), t(1, 11, 8), False),
        "relu_backward": (lambda a, b, r: relu_backward(a, b, out, RoundingMode.STOCHASTIC, TINY, r), t(37, 11, 7),
                          t(37, 11, 2), True),
        "axpy": (lambda a, b, r: axpy(-77, 9, a, b, out, RoundingMode.STOCHASTIC, TINY, r), t(37, 11, 6),
                 t(37, 11, 4), True),
    }
    for name, (fn, a, b, tile_b) in cases.items():
        r0 = seed_states(seed + 1, TINY.rng_slots)
        whole = fn(a, b, r0)
        db_whole, db_tiles = Database(TINY), Database(TINY)
        db_whole.accumulate(0, whole.stats)
        parts, r = [], r0
        for s in range(0, 37, 10):
            bt = DfpTensor(b.data[s:s + 10], b.fmt) if tile_b else b
            res = fn(DfpTensor(a.data[s:s + 10], a.fmt), bt, r)
            parts.append(res.out.data)
            db_tiles.accumulate(0, res.stats)
            r = res.rng
        assert np.array_equal(np.concatenate(parts), whole.out.data), f"{name} seed {seed}: data"
        assert db_tiles.read(0) == db_whole.read(0), f"{name} seed {seed}: statistics"
        assert np.array_equal(r, whole.rng), f"{name} seed {seed}: generator state"


def test_operands_the_core_could_not_read_are_reported():
    from reference.engine import Engine
    from reference.formats import TensorSetting
    from reference.trace import TraceRecorder
    from sim.core import NotExecutable

    def run(setup):
        eng = Engine(TINY)
        rec = TraceRecorder()
        eng.recorder = rec
        eng.set_setting(2, TensorSetting(DfpFormat(Width.W8, 4)))
        rec.begin_iteration(0, eng)
        x = DfpTensor(np.ones((2, 3), dtype=np.int64), DfpFormat(Width.W8, 4))
        setup(eng)
        eng.run(Op.RELU, 2, [x], [1])
        rec.end_iteration()
        return CycleSim().run(rec.trace(eng), execute=False)

    with pytest.raises(NotExecutable, match="operand tid 1 has no setting"):
        run(lambda eng: None)
    with pytest.raises(NotExecutable, match="operand tid 1 holds 8-bit data but its setting is 16-bit"):
        run(lambda eng: eng.set_setting(1, TensorSetting(DfpFormat(Width.W16, 4))))
    assert run(lambda eng: eng.set_setting(1, TensorSetting(DfpFormat(Width.W8, 4)))).counters.commands == 3


def test_reused_schedules_equal_fresh_ones_command_for_command():
    """``schedule(reuse=True)`` copies the schedule of a structurally equal earlier iteration: it must
    give exactly the commands (AXPY scalars included), steps, mismatch counts and data of scheduling
    every iteration afresh, at the trace's widths and for the fp32 counterpart (seed 0)."""
    from reference.data import load_digits_split
    from reference.formats import Width
    from reference.train import IterSpec, Precision, TrainConfig, train
    from sim.core import fitting_config, schedule

    d = load_digits_split()
    trace = train(TrainConfig(precision=Precision.DFP8, epochs=1, seed=0, trace_iters=IterSpec.parse("0-5")),
                  d).trace
    cfg = fitting_config(trace)
    for wo in (None, Width.W32):
        fresh, reused = schedule(trace, cfg, wo, reuse=False), schedule(trace, cfg, wo)
        assert [s.iteration for s in reused] == list(range(6))
        for a, b in zip(fresh, reused, strict=True):
            assert a.commands == b.commands and a.steps == b.steps and a.fmt_mismatches == b.fmt_mismatches
            assert all(x is y for x, y in zip(a.tensors, b.tensors, strict=True))
    # an iteration whose AXPY scalar differs from the schedule it reuses gets its own scalar
    from dataclasses import replace

    it = trace.iterations[4]
    k = next(i for i, r in enumerate(it.records) if getattr(r, "op", None) is not None and r.op.name == "AXPY")
    it.records[k] = replace(it.records[k], alpha=(3, 7))
    got = [c.cmd for c in schedule(trace, cfg)[4].commands if c.record == k]
    assert got and all((c.alpha, c.alpha_frac) == (3, 7) for c in got)
    assert [c.cmd for c in schedule(trace, cfg)[3].commands if c.record == k] != got

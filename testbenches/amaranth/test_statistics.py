"""StatisticsBlock against reference.stats.analyse accumulated over beats (saturating), with clear,
idle cycles, partial beats and values at every clamp edge."""

from __future__ import annotations

import dataclasses
import gc

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.statistics import VALUE_BITS, StatisticsBlock
from reference.config import PRESETS, CoreConfig
from reference.stats import OpStats, analyse

CFG = PRESETS["tiny"]
S = CFG.rng_slots


def add_sat(t: OpStats, s: OpStats, cfg: CoreConfig) -> OpStats:
    cmax = cfg.counter_max
    return OpStats(np.minimum(t.hist + s.hist, cmax), min(t.zeros + s.zeros, cmax),
                   min(t.overflow + s.overflow, cmax), min(t.underflow + s.underflow, cmax),
                   min(t.total + s.total, cmax))


def rand_value(rng: np.random.Generator) -> int:
    kind = rng.integers(0, 5)
    if kind == 0:
        return int(rng.choice([0, 0, -1, 1, -(1 << (VALUE_BITS - 1)), (1 << (VALUE_BITS - 1)) - 1, -2, 2]))
    bits = int(rng.integers(1, VALUE_BITS + 1))
    return int.from_bytes(rng.bytes(16), "little") % (1 << bits) - (1 << (bits - 1))


def random_beat(rng: np.random.Generator):
    # a prefix of the slots (a partial beat) or, as the ComputeUnit's lane order gives, any subset
    live = (1 << int(rng.integers(1, S + 1))) - 1 if rng.random() < 0.5 else int(rng.integers(1, 1 << S))
    acc = [rand_value(rng) for _ in range(S)]
    q = [0 if rng.random() < 0.4 else 1 for _ in range(S)]  # conversion results: zero or not
    over = [bool(rng.random() < 0.3) for _ in range(S)]
    under = [a != 0 and x == 0 for a, x in zip(acc, q, strict=True)]
    return live, acc, q, over, under


def run(dut: StatisticsBlock, cfg: CoreConfig, beats: list, f_acc: int, gaps: list[int], clear_at: set[int]):
    """Drive beats (idle gaps after each, 0 = back to back), strobing clear in the cycle before beat
    i for i in clear_at; return the counters seen LATENCY cycles after every beat's valid cycle."""
    trace = []  # counters at the start of every cycle
    beat_cycle = []

    def read(ctx) -> OpStats:
        return OpStats(np.array([int(x) for x in ctx.get(dut.hist)], dtype=np.int64), ctx.get(dut.zeros),
                       ctx.get(dut.overflow), ctx.get(dut.underflow), ctx.get(dut.total))

    async def tick(ctx):
        trace.append(read(ctx))
        await ctx.tick()

    async def tb(ctx):
        ctx.set(dut.f_acc, f_acc)
        for i, (live, acc, _, over, under) in enumerate(beats):
            if i in clear_at:
                ctx.set(dut.clear, 1)
                await tick(ctx)
                ctx.set(dut.clear, 0)
            ctx.set(dut.valid, 1)
            ctx.set(dut.live, live)
            ctx.set(dut.values, acc)
            ctx.set(dut.slot_overflow, sum(int(o) << j for j, o in enumerate(over)))
            ctx.set(dut.slot_underflow, sum(int(u) << j for j, u in enumerate(under)))
            beat_cycle.append(len(trace))
            await tick(ctx)
            ctx.set(dut.valid, 0)
            for _ in range(gaps[i]):
                await tick(ctx)
        for _ in range(StatisticsBlock.LATENCY + 1):
            await tick(ctx)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return [trace[c + StatisticsBlock.LATENCY] for c in beat_cycle]


def expected(beats, f_acc, cfg, clear_at):
    t = OpStats.empty(cfg)
    out = []
    for i, (live, acc, q, over, _) in enumerate(beats):
        if i in clear_at:
            t = OpStats.empty(cfg)
        sel = [j for j in range(S) if live >> j & 1]
        a = np.array([acc[j] for j in sel], dtype=object)
        t = add_sat(t, analyse(a, f_acc, np.array([q[j] for j in sel]), np.array([over[j] for j in sel]), cfg), cfg)
        out.append(t)
    return out


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_cfg():
    with pytest.raises(TypeError, match="cfg: expected a reference.config.CoreConfig, got 4"):
        StatisticsBlock(4)
    gc.collect()  # the half-built components warn when collected: here, where it is ignored


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_matches_analyse_over_beats(seed):
    rng = np.random.default_rng(seed)
    # f_acc spread so that exponents fall below, inside and above the histogram range
    f_acc = int(rng.choice([-40, -3, 0, 20, 60, 90]))
    beats = [random_beat(rng) for _ in range(40)]
    gaps = [int(rng.integers(0, 3)) for _ in beats]
    clear_at = {int(rng.integers(1, 40))}
    dut = StatisticsBlock(CFG)
    got = run(dut, CFG, beats, f_acc, gaps, clear_at)
    want = expected(beats, f_acc, CFG, clear_at)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"seed {seed} beat {i}: got {g.as_dict()} want {w.as_dict()}"


def test_every_bin_and_both_clamps():
    """One value per exponent from below the lowest bin to above the highest, incl. -1 and -2**k."""
    f_acc = 30  # exponents p - 30 for p in [-1, 63] run past both ends of [-24, 7]
    vals = []
    for p in range(-1, 2 * CFG.hist_bins):
        vals += [(1 << p) if p >= 0 else 0, -(1 << p) - 1 if p >= 0 else -1, -(1 << (p + 1)) if p >= 0 else -1]
    vals = [v for v in vals if -(1 << (VALUE_BITS - 1)) <= v < (1 << (VALUE_BITS - 1))]
    vals += [0] * (-len(vals) % S)
    beats = [((1 << S) - 1, vals[i:i + S], [1] * S, [False] * S, [False] * S) for i in range(0, len(vals), S)]
    got = run(StatisticsBlock(CFG), CFG, beats, f_acc, [0] * len(beats), set())
    want = expected(beats, f_acc, CFG, set())
    assert got[-1] == want[-1], f"got {got[-1].as_dict()} want {want[-1].as_dict()}"
    assert np.all(want[-1].hist > 0)
    assert want[-1].hist[0] > 1 and want[-1].hist[-1] > 1  # both clamps collected several exponents


def test_counters_saturate():
    """16-bit counters: every value in one bin, so hist, total and overflow pass 2**16 - 1."""
    cfg = dataclasses.replace(CFG, counter_bits=16)
    n_beats = cfg.counter_max // S + 2
    beat = ((1 << S) - 1, [3] * S, [1] * S, [True] * S, [False] * S)
    dut = StatisticsBlock(cfg)
    seen = {}

    async def tb(ctx):
        ctx.set(dut.f_acc, 0)
        ctx.set(dut.valid, 1)
        ctx.set(dut.live, (1 << S) - 1)
        ctx.set(dut.values, beat[1])
        ctx.set(dut.slot_overflow, (1 << S) - 1)
        for _ in range(n_beats):
            await ctx.tick()
        ctx.set(dut.valid, 0)
        for _ in range(StatisticsBlock.LATENCY):
            await ctx.tick()
        seen["hist"] = [int(x) for x in ctx.get(dut.hist)]
        seen["c"] = [ctx.get(dut.zeros), ctx.get(dut.overflow), ctx.get(dut.underflow), ctx.get(dut.total)]

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    want = OpStats.empty(cfg)
    one = analyse(np.array(beat[1]), 0, np.array(beat[2]), np.array(beat[3]), cfg)
    for _ in range(n_beats):
        want = add_sat(want, one, cfg)
    assert want.total == cfg.counter_max
    assert seen["hist"] == want.hist.tolist()
    assert seen["c"] == [want.zeros, want.overflow, want.underflow, want.total]


@pytest.mark.parametrize("n", [1, 2, 5, 8, 13])
def test_msb_position_tree_every_value(n):
    """The tree leading-sign detector against reference.stats.msb_position for every n-bit value."""
    from amaranth.hdl import Module, Signal, signed

    from hw.statistics import msb_position
    from reference.stats import msb_position as golden

    m = Module()
    v = Signal(signed(n))
    p = msb_position(m, v, "t")
    sim = Simulator(m)
    values = list(range(-(1 << (n - 1)), 1 << (n - 1)))
    seen = []

    async def bench(ctx):
        for x in values:
            ctx.set(v, x)
            seen.append(ctx.get(p))

    sim.add_testbench(bench)
    sim.run()
    assert seen == [int(g) for g in golden(np.array(values, dtype=np.int64))]

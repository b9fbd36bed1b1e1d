"""StatisticsBlock (``hw.statistics.StatisticsBlock``) at block level.

Netlist configs: ``tiny`` (32-bit counters) and ``tiny16`` (``tiny`` with ``counter_bits`` = 16,
so that every counter saturates within a few thousand beats).

Stimulus, every cycle: a beat or an idle cycle, rarely a ``clear``. A beat carries S 80-bit
values whose leading-sign position is spread over every bit 0..78 (and 0, -1, the most negative
and most positive 80-bit values), a random ``live`` mask (all, none, or random), ``f_acc`` over
the whole ``signed(10)`` range (so bins clamp at both ends) and requantizer flags as the
requantizer can raise them (overflow only for non-zero values; underflow only for non-zero
values).

Golden twin: per beat :func:`reference.stats.analyse` of the live values (its ``q`` built so that
``q == 0`` exactly where the underflow flag is set), accumulated with the saturating sums of
:meth:`reference.stats.Database.accumulate`. Timing from the block's contract: a beat presented
in cycle k is in the outputs from cycle k + LATENCY; a clear in cycle k zeroes the outputs from
k + 1 and discards the beats of cycles k - 1 and k. Outputs are compared every cycle, exactly.
"""

from __future__ import annotations

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ReadOnly

from testbenches.cocotb import tbutil

CONFIGS = ["tiny", "tiny16"]


def bench_config(name):
    import dataclasses

    from reference.config import load_config

    tiny = load_config("tiny")
    return {"tiny": tiny, "tiny16": dataclasses.replace(tiny, counter_bits=16)}[name]


def random_value(rng) -> int:
    r = rng.random()
    if r < 0.1:
        return rng.choice([0, -1, 1, -(1 << 79), (1 << 79) - 1])
    p = rng.randint(0, 78)
    v = rng.randint(1 << p, (1 << (p + 1)) - 1)
    return v if rng.random() < 0.5 else ~v  # ~v has the same leading-sign position


@cocotb.test(timeout_time=500_000_000, timeout_unit="ns")
async def statistics_match_reference(dut):
    from hw.statistics import StatisticsBlock
    from reference.stats import Database, OpStats, analyse

    rng, _ = tbutil.test_rng("statistics_match_reference", dut._log)
    cfg = tbutil.core_config()
    S = cfg.rng_slots
    lat = StatisticsBlock.LATENCY
    comp = StatisticsBlock(cfg)
    vlay = comp.signature.members["values"].shape
    tb = tbutil.Clocked(dut)
    for sig in ("valid", "values", "live", "f_acc", "slot_overflow", "slot_underflow", "clear"):
        getattr(dut, sig).value = 0
    await tb.reset()
    # the counters reset to 0 only by clear (or reset): start with a clear
    await tb.falling()
    dut.clear.value = 1
    await tb.falling()
    dut.clear.value = 0

    beats: list[OpStats | None] = []  # per driven cycle: the beat's statistics, or None
    clears: list[bool] = []
    db = Database(cfg)  # entry 0 is the running sum; cleared like the block

    def expected(t: int) -> OpStats:
        """Outputs at cycle t: beats j <= t - lat after the last clear c <= t - 1 (j > c)."""
        last_clear = max((c for c in range(min(t, len(clears))) if clears[c]), default=-1)
        acc = Database(cfg)
        for j in range(last_clear + 1, t - lat + 1):
            if 0 <= j < len(beats) and beats[j] is not None:
                acc.accumulate(0, beats[j])
        return acc.read(0)

    # An incremental version of expected() (the direct one is quadratic), checked against it
    # at every clear.
    cur = OpStats.empty(cfg)
    pending_from = 0
    hist_layout = comp.signature.members["hist"].shape
    n = tbutil.iterations(3000)
    for t in range(n):
        # inputs of cycle t change on its falling edge; registered outputs read in the same step
        await tb.falling()
        # first quarter: clears now and then; then none, with full beats, so counters saturate
        late = t >= n // 4
        clear = not late and rng.random() < 0.01
        dut.clear.value = int(clear)
        clears.append(clear)
        if rng.random() < 0.8:
            vals = [random_value(rng) for _ in range(S)]
            live = rng.choice([(1 << S) - 1, 0, rng.getrandbits(S), 1, 1 << (S - 1)])
            if late and rng.random() < 0.8:
                live = (1 << S) - 1
            f_acc = rng.choice([0, -512, 511, rng.randint(-128, 127), rng.randint(-512, 511)])
            ovf = [int(v != 0 and rng.random() < 0.2) for v in vals]
            unf = [int(v != 0 and not o and rng.random() < 0.2) for v, o in zip(vals, ovf, strict=True)]
            dut.values.value = tbutil.pack(vlay, vals)
            dut.live.value = live
            dut.f_acc.value = f_acc
            dut.slot_overflow.value = sum(b << j for j, b in enumerate(ovf))
            dut.slot_underflow.value = sum(b << j for j, b in enumerate(unf))
            dut.valid.value = 1
            idx = [j for j in range(S) if live >> j & 1]
            acc = np.array([vals[j] for j in idx], dtype=object)
            q = np.array([0 if unf[j] else 1 for j in idx], dtype=np.int64)
            over = np.array([bool(ovf[j]) for j in idx], dtype=bool)
            beats.append(analyse(acc, f_acc, q, over, cfg))
        else:
            dut.valid.value = 0
            beats.append(None)
        await ReadOnly()
        # the expectation at cycle t, incrementally (expected() is the direct definition)
        if t >= 1 and clears[t - 1]:
            cur = OpStats.empty(cfg)
            pending_from = t  # beats of cycles t-2 and t-1 are discarded
        while pending_from <= t - lat:
            if beats[pending_from] is not None:
                db.entries[0] = cur
                db.accumulate(0, beats[pending_from])
                cur = db.read(0)
            pending_from += 1
        if t >= 1 and clears[t - 1]:
            assert cur == expected(t)
        got = OpStats(np.array(tbutil.unpack(hist_layout, int(dut.hist.value)), dtype=np.int64),
                      int(dut.zeros.value), int(dut.overflow.value), int(dut.underflow.value), int(dut.total.value))
        assert got == cur, f"cycle {t}: statistics outputs {got.as_dict()}, expected {cur.as_dict()}"
    dut._log.info("%d cycles, %d beats, %d clears checked; final %s", n, sum(b is not None for b in beats),
                  sum(clears), cur.as_dict())


def _run(config, record_property, iters, sim=None):
    from testbenches.cocotb import harness

    StatisticsBlock = harness.require("hw.statistics", "StatisticsBlock")
    cfg = bench_config(config)
    bdir = harness.build_dir(config, "statistics", sim)
    src = harness.elaborate(lambda: StatisticsBlock(cfg), "statistics_block", bdir)
    harness.run(module="testbenches.cocotb.test_statistics", top="statistics_block", config=config,
                block="statistics", sources=[src], record_property=record_property, cfg=cfg,
                extra_env={"DLU_ITERS": str(iters)}, sim=sim)


@pytest.mark.parametrize("config", ["tiny16"])
def test_statistics(config, record_property):
    """Quick tier: 16-bit counters, which also saturate."""
    _run(config, record_property, iters=16_000)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("rep", range(4))
def test_statistics_many_seeds(config, rep, record_property):
    _run(config, record_property, iters=40_000)

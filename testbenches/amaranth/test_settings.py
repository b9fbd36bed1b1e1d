"""SettingsRegister (encoding, illegal codes) and PolicyController (next_frac) against reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.database import DistributionDatabase
from hw.settings import PolicyController, SettingsRegister
from reference.config import PRESETS, CoreConfig
from reference.engine import Engine
from reference.formats import SETTING_BITS, DfpFormat, RoundingMode, TensorSetting
from reference.isa import IllegalCommand, decode_setting, policy_cycles_per_tid
from reference.stats import OpStats, PolicyParams

from .test_database import random_stats, stats_const

CFG = PRESETS["tiny"]


def legal(word: int, cfg: CoreConfig = CFG) -> bool:
    try:
        decode_setting(word, cfg)
    except IllegalCommand:
        return False
    return True


def run(dut, tb):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


def test_constructor_errors():
    with pytest.raises(TypeError, match="cfg: expected a reference.config.CoreConfig, got 3"):
        SettingsRegister(3)
    with pytest.raises(ValueError, match="read_ports: 0 is not an integer in"):
        SettingsRegister(CFG, read_ports=0)
    with pytest.raises(TypeError, match="cfg: expected"):
        PolicyController(None)


@pytest.mark.parametrize("cfg", [CFG, replace(CFG, widths=(8,)), replace(CFG, widths=(16, 32))],
                         ids=["all", "w8", "w16+32"])
def test_every_word_legal_written_illegal_rejected_without_corruption(cfg):
    """All 4096 words on entry 3: legal ones (reference.isa.decode_setting, so a width the core
    does not support is illegal) read back exactly, illegal ones pulse error and leave entry 3
    and its neighbours untouched."""
    dut = SettingsRegister(cfg)
    guard = TensorSetting(DfpFormat(cfg.widest, -7), RoundingMode.STOCHASTIC, False).encode()
    n_illegal = 0

    async def tb(ctx):
        nonlocal n_illegal
        for tid in (2, 4):
            ctx.set(dut.host.addr, tid)
            ctx.set(dut.host.wdata, guard)
            ctx.set(dut.host.we, 1)
            await ctx.tick()
        ctx.set(dut.host.we, 0)
        ctx.set(dut.host.addr, 3)
        await ctx.tick()
        assert ctx.get(dut.host.rdata.valid) == 0  # tid 3 not written yet: invalid
        current = None
        for word in range(1 << SETTING_BITS):
            ctx.set(dut.host.addr, 3)
            ctx.set(dut.host.wdata, word)
            ctx.set(dut.host.we, 1)
            await ctx.tick()
            ctx.set(dut.host.we, 0)
            ok = legal(word, cfg)
            assert ctx.get(dut.host.error) == (0 if ok else 1), f"word {word:#05x}"
            if ok:
                current = word
            else:
                n_illegal += 1
            assert ctx.get(dut.host.rdata.valid) == (current is not None)
            if current is not None:
                assert ctx.get(dut.host.rdata.setting).as_value().value == current, f"word {word:#05x}"
            for i, tid in enumerate((2, 4)):
                ctx.set(dut.rd[i].addr, tid)
                assert ctx.get(dut.rd[i].data.setting).as_value().value == guard
                assert ctx.get(dut.rd[i].data.valid) == 1
        ctx.set(dut.rd[2].addr, 0)
        assert ctx.get(dut.rd[2].data.valid) == 0

    run(dut, tb)
    # width 3 (1024 words), rounding 3 (of the rest), frac -64..-33 (of the rest): a real mix.
    assert n_illegal == sum(not legal(w, cfg) for w in range(1 << SETTING_BITS)) > 1500


class PolicyHarness(wiring.Component):
    """Settings + database + policy controller, connected as in the core."""

    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = cfg
        self.settings = SettingsRegister(cfg)
        self.db = DistributionDatabase(cfg)
        self.policy = PolicyController(cfg)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.settings = self.settings
        m.submodules.db = self.db
        m.submodules.policy = self.policy
        wiring.connect(m, self.policy.settings, self.settings.policy)
        wiring.connect(m, self.policy.db, self.db.policy)
        return m


def crafted_stats(cfg: CoreConfig) -> list[OpStats]:
    e = OpStats.empty(cfg)
    top = OpStats.empty(cfg)
    top.hist[-1] = 5
    top.total = 5
    bottom = OpStats.empty(cfg)
    bottom.hist[0] = cfg.counter_max
    bottom.total = cfg.counter_max
    zeros_only = OpStats.empty(cfg)
    zeros_only.zeros = zeros_only.total = 9
    spread = OpStats.empty(cfg)
    spread.hist[:] = cfg.counter_max
    spread.total = cfg.counter_max
    tail = OpStats.empty(cfg)  # one outlier far above a big mass: the threshold decides
    tail.hist[3] = 100_000
    tail.hist[20] = 6
    tail.total = 100_006
    return [e, top, bottom, zeros_only, spread, tail]


@pytest.mark.parametrize(("seed", "cfg"), [(11, CFG), (12, CFG), (13, CFG), (14, CFG), (17, CFG),
                                           (18, replace(CFG, widths=(16,))), (22, replace(CFG, widths=(8, 32)))],
                         ids=["11", "12", "13", "14", "17", "18-w16", "22-w8+32"])
def test_policy_update_matches_engine(seed, cfg):
    """Random settings (some auto, some fixed, some missing), random and crafted statistics,
    random thresholds incl. 0 and 2**16-1, random headroom and rise (incl. 0 and 3): settings and
    database after POLICY_UPDATE equal the reference Engine's, and the pass takes
    policy_cycles_per_tid(cfg) cycles per tensor id. Cores with fewer widths hold settings of
    their widths only."""
    rng = np.random.default_rng(seed)
    params = PolicyParams(int(rng.choice([0, 1, 66, 1000, 65535, int(rng.integers(0, 1 << 16))])),
                          int(rng.integers(0, 4)), int(rng.integers(0, 4)))
    threshold = params.encode()
    eng = Engine(cfg, threshold=threshold)
    crafted = crafted_stats(cfg)
    for tid in range(cfg.tensor_ids):
        if rng.random() < 0.85:
            w = cfg.supported_widths[int(rng.integers(0, len(cfg.widths)))]
            f = int(rng.choice([-32, 63, int(rng.integers(-32, 64))]))
            eng.settings[tid] = TensorSetting(DfpFormat(w, f), RoundingMode(int(rng.integers(0, 3))),
                                              bool(rng.random() < 0.75))
        if rng.random() < 0.8:
            s = crafted[tid % len(crafted)] if rng.random() < 0.4 else random_stats(rng, cfg)
            if s.total:
                eng.db.accumulate(tid, s)
    before = dict(eng.settings)
    db_before = {t: eng.db.read(t) for t in range(cfg.tensor_ids)}
    eng.update_formats()
    dut = PolicyHarness(cfg)

    async def tb(ctx):
        h = dut.settings.host
        for tid, s in before.items():
            ctx.set(h.addr, tid)
            ctx.set(h.wdata, s.encode())
            ctx.set(h.we, 1)
            await ctx.tick()
        ctx.set(h.we, 0)
        for tid in range(cfg.tensor_ids):
            ctx.set(dut.db.clear.tid, tid)
            ctx.set(dut.db.clear.en, 1)
            await ctx.tick()
        ctx.set(dut.db.clear.en, 0)
        for tid, s in db_before.items():
            if s.total:
                ctx.set(dut.db.commit.tid, tid)
                ctx.set(dut.db.commit.stats, stats_const(cfg, s))
                await ctx.tick()
                ctx.set(dut.db.commit.en, 1)
                await ctx.tick()
                ctx.set(dut.db.commit.en, 0)
        ctx.set(dut.policy.threshold, threshold)
        ctx.set(dut.policy.start, 1)
        await ctx.tick()
        ctx.set(dut.policy.start, 0)
        busy = 0
        while ctx.get(dut.policy.busy):
            busy += 1
            done = ctx.get(dut.policy.done)
            await ctx.tick()
            if done:
                assert ctx.get(dut.policy.busy) == 0
        assert busy == policy_cycles_per_tid(cfg) * cfg.tensor_ids
        for tid in range(cfg.tensor_ids):
            ctx.set(h.addr, tid)
            if tid in eng.settings:
                assert ctx.get(h.rdata.valid) == 1
                assert ctx.get(h.rdata.setting).as_value().value == eng.settings[tid].encode(), \
                    f"seed {seed} policy {params} tid {tid}"
            else:
                assert ctx.get(h.rdata.valid) == 0
            ctx.set(dut.db.host.addr, tid)
            await ctx.tick()
            got = ctx.get(dut.db.host.data)
            ref = eng.db.read(tid)
            assert [int(v) for v in got.hist] == ref.hist.tolist(), f"seed {seed} tid {tid}"
            assert int(got.total) == ref.total

    run(dut, tb)
    changed = sum(before[t] != eng.settings[t] for t in before)
    assert changed >= 1, f"seed {seed}: the stimulus changed no point position"

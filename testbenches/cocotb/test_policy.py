"""Settings register, distribution database and policy controller (POLICY_UPDATE) at block level.

DUT: :class:`PolicySubsystem`, a bench-only top that wires ``hw.settings.SettingsRegister``,
``hw.database.DistributionDatabase`` and ``hw.settings.PolicyController`` together exactly as
their port docs say and exposes their host, commit and clear ports.

Scoreboard (all exact): the settings register against
:meth:`reference.formats.TensorSetting.decode` (illegal words raise the error pulse and write
nothing); database entries against :meth:`reference.stats.Database.accumulate` (saturating
counters); a POLICY_UPDATE pass against :meth:`reference.engine.Engine.update_formats`
(:func:`reference.stats.next_frac` per auto tensor id with statistics, then the entry cleared);
its duration against ``reference.isa.cycles`` for POLICY_UPDATE minus the setup cycles.
"""

from __future__ import annotations

import cocotb
import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from testbenches.cocotb import fcov, tbutil

CONFIGS = ["tiny", "tiny_lowexp", "tiny_highexp"]


def bench_config(name):
    """The tiny preset, and two variants whose histogram ranges make the policy clamp F.

    At ``tiny`` (bins 2**-24 .. 2**7) the policy's F = W - 2 - e* never leaves [-32, 63], so the
    clamps are only reachable with another ``hist_min_exp``."""
    import dataclasses

    from reference.config import load_config

    tiny = load_config("tiny")
    return {"tiny": tiny, "tiny_lowexp": dataclasses.replace(tiny, hist_min_exp=-64),
            "tiny_highexp": dataclasses.replace(tiny, hist_min_exp=40)}[name]


def make_top(cfg):
    from hw.database import (
        DatabaseClearSignature,
        DatabaseCommitSignature,
        DatabaseHostSignature,
        DistributionDatabase,
    )
    from hw.settings import PolicyController, SettingsHostSignature, SettingsRegister
    from reference.stats import POLICY_BITS

    class PolicySubsystem(wiring.Component):
        def __init__(self):
            self.cfg = cfg
            super().__init__({
                "host": In(SettingsHostSignature(cfg)),
                "commit": In(DatabaseCommitSignature(cfg)),
                "clear": In(DatabaseClearSignature(cfg)),
                "dbhost": In(DatabaseHostSignature(cfg)),
                "start": In(1),
                "threshold": In(POLICY_BITS),
                "busy": Out(1),
                "done": Out(1),
            })

        def elaborate(self, platform):
            m = Module()
            m.submodules.settings = s = SettingsRegister(cfg, read_ports=1)
            m.submodules.db = db = DistributionDatabase(cfg)
            m.submodules.policy = p = PolicyController(cfg)
            wiring.connect(m, wiring.flipped(self.host), s.host)
            wiring.connect(m, wiring.flipped(self.commit), db.commit)
            wiring.connect(m, wiring.flipped(self.clear), db.clear)
            wiring.connect(m, wiring.flipped(self.dbhost), db.host)
            wiring.connect(m, p.settings, s.policy)
            wiring.connect(m, p.db, db.policy)
            m.d.comb += [p.start.eq(self.start), p.threshold.eq(self.threshold),
                         self.busy.eq(p.busy), self.done.eq(p.done)]
            return m

    return PolicySubsystem()


# ------------------------------------------------------------------------------------------
# cocotb side
# ------------------------------------------------------------------------------------------
class TB(tbutil.Clocked):
    def __init__(self, dut):
        super().__init__(dut)
        from hw.database import entry_layout
        from hw.settings import setting_port_layout

        self.cfg = tbutil.core_config()
        self.entry = entry_layout(self.cfg)
        self.sport = setting_port_layout()
        for sig in ("host__we", "host__addr", "host__wdata", "commit__en", "commit__tid", "commit__stats",
                    "clear__en", "clear__tid", "dbhost__addr", "start", "threshold"):
            getattr(dut, sig).value = 0

    async def write_setting(self, tid: int, word: int) -> bool:
        """Write one entry; returns whether the error pulse was seen."""
        d = self.dut
        await self.falling()
        d.host__addr.value, d.host__wdata.value, d.host__we.value = tid, word, 1
        await self.falling()
        d.host__we.value = 0
        from cocotb.triggers import ReadOnly

        await ReadOnly()
        return bool(int(d.host__error.value))

    async def read_setting(self, tid: int) -> dict:
        from cocotb.triggers import ReadOnly

        await self.falling()
        self.dut.host__addr.value = tid
        await ReadOnly()
        return tbutil.unpack(self.sport, int(self.dut.host__rdata.value))

    async def clear_entry(self, tid: int):
        d = self.dut
        await self.falling()
        d.clear__tid.value, d.clear__en.value = tid, 1
        await self.falling()
        d.clear__en.value = 0

    async def commit(self, tid: int, stats) -> None:
        d = self.dut
        await self.falling()
        d.commit__tid.value = tid
        d.commit__stats.value = tbutil.pack(self.entry, stats_dict(stats))
        await self.falling()
        d.commit__en.value = 1
        await self.falling()
        d.commit__en.value = 0

    async def read_entry(self, tid: int) -> dict:
        from cocotb.triggers import ReadOnly

        await self.falling()
        self.dut.dbhost__addr.value = tid
        await self.falling()
        await ReadOnly()
        return tbutil.unpack(self.entry, int(self.dut.dbhost__data.value))

    async def policy(self, threshold: int) -> int:
        """Run one pass; returns the number of cycles ``busy`` was high."""
        from cocotb.triggers import ReadOnly

        d = self.dut
        await self.falling()
        d.threshold.value, d.start.value = threshold, 1
        await self.falling()
        d.start.value = 0
        busy = 0
        dones = 0
        from reference.isa import policy_cycles_per_tid

        for _ in range((policy_cycles_per_tid(self.cfg) + 2) * self.cfg.tensor_ids + 10):
            await ReadOnly()
            busy += int(d.busy.value)
            dones += int(d.done.value)
            await self.falling()
        assert dones == 1, f"done pulsed {dones} times in one POLICY_UPDATE pass"
        return busy


def stats_dict(s) -> dict:
    return {"hist": [int(x) for x in s.hist], "zeros": s.zeros, "overflow": s.overflow,
            "underflow": s.underflow, "total": s.total}


def random_stats(rng, cfg):
    """Statistics of one plausible command: total = non-zeros + zeros, over/underflow <= total.

    Shapes: a few occupied bins, a spread, one bin only, or counters near saturation."""
    from reference.stats import OpStats

    cmax = cfg.counter_max
    kind = rng.choice(["few", "spread", "one", "huge", "empty_hist"])
    hist = np.zeros(cfg.hist_bins, dtype=np.int64)
    if kind == "few":
        for _ in range(rng.randint(1, 4)):
            hist[rng.randrange(cfg.hist_bins)] += rng.randint(1, 2000)
    elif kind == "spread":
        c = rng.randrange(cfg.hist_bins)
        for i in range(cfg.hist_bins):
            hist[i] = max(0, int(1000 * 2.0 ** (-abs(i - c))) + rng.randint(-2, 2))
    elif kind == "one":
        hist[rng.choice([0, cfg.hist_bins - 1, rng.randrange(cfg.hist_bins)])] = rng.randint(1, 5)
    elif kind == "huge":  # two of these saturate the counters they hit
        for i in range(cfg.hist_bins):
            if rng.random() < 0.5:
                hist[i] = rng.randint(cmax // 2, cmax)
    zeros = rng.randint(0, 50) if kind != "empty_hist" else rng.randint(1, 50)
    if kind == "huge":
        zeros = rng.randint(cmax // 2, cmax)
    total = min(int(hist.sum()) + zeros, cmax)
    over = rng.randint(total // 2, total) if kind == "huge" else rng.randint(0, total)
    under = rng.randint(total // 2, total) if kind == "huge" else rng.randint(0, total)
    return OpStats(hist=hist, zeros=zeros, overflow=over, underflow=under, total=total)


def random_setting_word(rng) -> int:
    """Mostly legal settings-register words, some with each illegal field."""
    from reference.formats import FRAC_MAX, FRAC_MIN, DfpFormat, RoundingMode, TensorSetting, Width

    kind = rng.random()
    if kind < 0.15:
        return rng.randrange(1 << 12)  # anything, legal or not
    if kind < 0.25:
        w = TensorSetting(DfpFormat(Width.W8, 0)).encode()
        bad_frac = (w & ~(0x7F << 2)) | ((rng.randint(-64, -33) & 0x7F) << 2)
        return rng.choice([w | 3, (w & ~(3 << 9)) | (3 << 9), bad_frac])
    frac = rng.choice([FRAC_MIN, FRAC_MAX, 0, rng.randint(FRAC_MIN, FRAC_MAX)])
    return TensorSetting(DfpFormat(rng.choice(list(Width)), frac), rng.choice(list(RoundingMode)),
                         rng.random() < 0.8).encode()


async def check_db(tb, db, log):
    for tid in range(tb.cfg.tensor_ids):
        got = await tb.read_entry(tid)
        exp = stats_dict(db.read(tid))
        assert got == exp, f"database entry {tid}: expected {exp}, got {got}"


@cocotb.test(timeout_time=2_000_000, timeout_unit="ns")
async def policy_update_matches_reference(dut):
    """Random settings, commits and POLICY_UPDATE passes against reference.engine semantics."""
    from reference.formats import FRAC_MAX, FRAC_MIN, DfpFormat, TensorSetting
    from reference.isa import SETUP_CYCLES, Command, Ctl, cycles
    from reference.stats import Database, PolicyParams, next_frac

    rng, _ = tbutil.test_rng("policy_update_matches_reference", dut._log)
    tb = TB(dut)
    cfg = tb.cfg
    await tb.reset()
    for tid in range(cfg.tensor_ids):  # memory is not reset: CLEAR_STATS (all) first
        await tb.clear_entry(tid)
    db = Database(cfg)
    settings: dict[int, TensorSetting] = {}
    rounds = tbutil.iterations(6)
    for rnd in range(rounds):
        for _ in range(rng.randint(1, 2 * cfg.tensor_ids)):
            tid, word = rng.randrange(cfg.tensor_ids), random_setting_word(rng)
            try:
                legal = TensorSetting.decode(word)
            except ValueError:
                legal = None
            err = await tb.write_setting(tid, word)
            assert err == (legal is None), f"setting word {word:#05x} to tid {tid}: error pulse {err}"
            if legal is not None:
                settings[tid] = legal
            got = await tb.read_setting(tid)
            assert got["valid"] == int(tid in settings), f"tid {tid}: valid={got['valid']}"
            if tid in settings:
                assert got["setting"] == tbutil.unpack(tb.sport, tbutil.pack(tb.sport, {
                    "setting": {"width": int(settings[tid].fmt.width), "frac": settings[tid].fmt.frac,
                                "rounding": int(settings[tid].rounding), "auto": int(settings[tid].auto)},
                    "valid": 1}))["setting"], f"tid {tid}: read back {got}, expected {settings[tid]}"
        for _ in range(rng.randint(0, 3 * cfg.tensor_ids)):
            tid = rng.randrange(cfg.tensor_ids)
            if rng.random() < 0.05:
                await tb.clear_entry(tid)
                db.clear(tid)
                continue
            s = random_stats(rng, cfg)
            await tb.commit(tid, s)
            db.accumulate(tid, s)
        await check_db(tb, db, dut._log)
        params = PolicyParams(rng.choice([0, 1, 66, 65535, rng.randrange(1 << 16)]), rng.randrange(4),
                              rng.randrange(4))
        busy = await tb.policy(params.encode())
        exp_busy = cycles(Command(Ctl.POLICY_UPDATE), settings, cfg) - SETUP_CYCLES
        assert busy == exp_busy, f"POLICY_UPDATE busy for {busy} cycles, expected {exp_busy}"
        # reference: Engine.update_formats
        outcomes = []
        for tid in sorted(settings):
            s = settings[tid]
            if not s.auto or tid not in db.entries:
                outcomes.append("skipped")
                continue
            f = next_frac(db.entries[tid], s.fmt.width, s.fmt.frac, cfg, params.threshold, params.headroom,
                          params.rise)
            outcomes.append("clamped_min" if f == FRAC_MIN else "clamped_max" if f == FRAC_MAX
                            else "kept" if f == s.fmt.frac else "moved")
            settings[tid] = TensorSetting(DfpFormat(s.fmt.width, f), s.rounding, s.auto)
            db.clear(tid)
        for tid in range(cfg.tensor_ids):
            got = await tb.read_setting(tid)
            assert got["valid"] == int(tid in settings)
            if tid in settings:
                assert got["setting"]["frac"] == settings[tid].fmt.frac, (
                    f"round {rnd}, policy {params}: tid {tid} F expected {settings[tid].fmt.frac}, "
                    f"got {got['setting']['frac']}")
        await check_db(tb, db, dut._log)
        for o in outcomes:  # sampled only after the pass was checked
            fcov.sample_policy(o)
        dut._log.info("round %d: %d settings, policy %s, ok", rnd, len(settings), params)
    fcov.export(dut._log)


@pytest.mark.parametrize("config", CONFIGS[:1])
def test_policy(config, record_property):
    _run(config, record_property, iters=6)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS[1:])
def test_policy_clamp_configs(config, record_property):
    """The two configs whose histogram ranges make the policy clamp F (slow tier: extra builds)."""
    _run(config, record_property, iters=12)


def test_policy_icarus(record_property):
    """Smoke run on the second simulator."""
    _run("tiny", record_property, iters=2, sim="icarus")


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("rep", range(8))
def test_policy_many_seeds(config, rep, record_property):
    _run(config, record_property, iters=60)


def _run(config, record_property, iters, sim=None):
    from testbenches.cocotb import harness

    harness.require("hw.settings", "PolicyController")
    harness.require("hw.database", "DistributionDatabase")
    cfg = bench_config(config)
    bdir = harness.build_dir(config, "policy", sim)
    src = harness.elaborate(lambda: make_top(cfg), "policy_subsystem", bdir)
    harness.run(module="testbenches.cocotb.test_policy", top="policy_subsystem", config=config, block="policy",
                sources=[src], record_property=record_property, cfg=cfg,
                extra_env={"DLU_ITERS": str(iters)}, sim=sim)

"""Sequencer (with scratchpad, settings, database, policy controller and stream bridge) against
the command-level model built from reference: results, statistics, error codes, perf counters
and the exact cycle count of every command (reference.isa.cycles).

The ComputeUnit is replaced by a Python model of its contract (cu_model.py), so that the
sequencer's address generation, (un)packing, timing and statistics commit are tested alone.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.axi_stream import AxiStreamBridge
from hw.database import DistributionDatabase
from hw.scratchpad import Scratchpad
from hw.sequencer import Sequencer
from hw.settings import PolicyController, SettingsRegister
from reference import ops
from reference.config import PRESETS, CoreConfig
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import Command, Ctl, ErrorCode
from reference.ops import Op
from reference.stats import DEFAULT_POLICY_WORD
from testbenches.cocotb.core_model import CoreModel

from .cu_model import ComputeUnitModel
from .programs import Program, illegal_commands, random_compute, split_matmul

CFG = PRESETS["tiny"]
LATENCY = 2  # of the ComputeUnit model


class SeqHarness(wiring.Component):
    def __init__(self, cfg: CoreConfig) -> None:
        self.cfg = cfg
        self.seq = Sequencer(cfg)
        self.spad = Scratchpad(cfg)
        self.settings = SettingsRegister(cfg)
        self.db = DistributionDatabase(cfg)
        self.policy = PolicyController(cfg)
        self.bridge = AxiStreamBridge(cfg)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        s = self.seq
        for name in ("seq", "spad", "settings", "db", "policy", "bridge"):
            m.submodules[name] = getattr(self, name)
        for i in range(3):
            wiring.connect(m, s.settings_rd[i], self.settings.rd[i])
        for i in range(2):
            wiring.connect(m, s.spad_rd[i], self.spad.rd[i])
        wiring.connect(m, s.spad_wr, self.spad.wr)
        wiring.connect(m, s.db_commit, self.db.commit)
        wiring.connect(m, s.db_clear, self.db.clear)
        wiring.connect(m, self.policy.settings, self.settings.policy)
        wiring.connect(m, self.policy.db, self.db.policy)
        wiring.connect(m, self.bridge.load, s.load)
        wiring.connect(m, s.store, self.bridge.store)
        m.d.comb += [self.policy.start.eq(s.policy_start), s.policy_done.eq(self.policy.done),
                     # the THRESHOLD register's reset value, as in the core (and the model's)
                     self.policy.threshold.eq(DEFAULT_POLICY_WORD),
                     s.store_level.eq(self.bridge.store_level)]
        return m


def run_program(prog: Program, cfg: CoreConfig = CFG, seed: int = 0, stall_every: int = 0,
                backpressure_every: int = 0):
    """Run ``prog`` on the harness; return the observations and the model's."""
    h = SeqHarness(cfg)
    model = CoreModel(cfg)
    for tid, word in prog.settings.items():
        model.write_setting(tid, word)
    loads = deque(prog.loads)
    outcomes = []
    for c in prog.commands:
        outcomes.append(model.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None))
    cu = ComputeUnitModel(cfg, h.seq.cu, latency=LATENCY)
    obs = {"starts": [], "store": [], "irq": 0, "busy": []}
    load_words = deque(w for ws in prog.loads for w in ws)

    async def tb(ctx):
        st = h.settings.host
        for tid, word in prog.settings.items():
            ctx.set(st.addr, tid)
            ctx.set(st.wdata, word)
            ctx.set(st.we, 1)
            await ctx.tick()
        ctx.set(st.we, 0)
        # Unknown memory contents: clear the database as a program would.
        pre = [Command(Ctl.CLEAR_STATS, broadcast_b=True)]
        cycle = 0
        for c in pre + prog.commands:
            ctx.set(h.seq.cmds.payload, c.encode())
            ctx.set(h.seq.cmds.valid, 1)
            while True:
                ready = ctx.get(h.seq.cmds.ready)
                await ctx.tick()
                cycle += 1
                if ready:
                    break
        ctx.set(h.seq.cmds.valid, 0)
        for _ in range(100_000):
            if ctx.get(h.seq.ctl.done) and len(obs["starts"]) == len(prog.commands) + 1:
                break
            await ctx.tick()
        obs["clear_cycles"] = obs["starts"][1] - obs["starts"][0]
        obs["error"] = ctx.get(h.seq.ctl.error)
        obs["perf"] = [int(x) for x in ctx.get(h.seq.ctl.perf)]
        obs["settings"] = {}
        for tid in range(cfg.tensor_ids):
            ctx.set(st.addr, tid)
            if ctx.get(st.rdata.valid):
                obs["settings"][tid] = ctx.get(st.rdata.setting).as_value().value
            ctx.set(h.db.host.addr, tid)
            await ctx.tick()
            d = ctx.get(h.db.host.data)
            obs.setdefault("db", {})[tid] = ([int(v) for v in d.hist], int(d.zeros), int(d.overflow),
                                              int(d.underflow), int(d.total))

    async def monitor(ctx):
        cycle = 0
        ctx.set(h.bridge.m_axis_tready, 1)
        async for _clk, _rst, start, tv, tr, td, tl, irq, busy in ctx.tick().sample(
                h.seq.cmd_start, h.bridge.m_axis_tvalid, h.bridge.m_axis_tready, h.bridge.m_axis_tdata,
                h.bridge.m_axis_tlast, h.seq.ctl.irq_event, h.seq.ctl.busy):
            obs["busy"].append(busy)
            if start:
                obs["starts"].append(cycle)
            if tv and tr:
                obs["store"].append(td)
                obs.setdefault("tlast", []).append(tl)
            if backpressure_every:
                ctx.set(h.bridge.m_axis_tready, int(cycle % backpressure_every != 0))
            obs["irq"] += irq
            cycle += 1
            obs["cycle"] = cycle

    async def source(ctx):
        n = 0
        while True:
            n += 1
            stalled = stall_every and n % stall_every == 0
            if load_words and not stalled:
                ctx.set(h.bridge.s_axis_tdata, load_words[0])
                ctx.set(h.bridge.s_axis_tvalid, 1)
                ready = ctx.get(h.bridge.s_axis_tready)
                await ctx.tick()
                if ready:
                    load_words.popleft()
            else:
                ctx.set(h.bridge.s_axis_tvalid, 0)
                await ctx.tick()

    sim = Simulator(h)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(monitor)
    sim.add_testbench(source, background=True)
    sim.add_testbench(cu.run, background=True)
    sim.run()
    return obs, model, outcomes, cu


def check(prog: Program, obs, model: CoreModel, outcomes, tag: str, exact_cycles: bool = True) -> None:
    starts = obs["starts"][1:]  # the first command is the CLEAR_STATS of the harness
    busy = obs["busy"]
    last_end = next(i for i in range(starts[-1] + 1, len(busy)) if not busy[i])
    ends = starts[1:] + [last_end]
    got_cycles = [e - s for s, e in zip(starts, ends, strict=True)]
    want = [o.cycles for o in outcomes]
    if exact_cycles:
        assert got_cycles == want, f"{tag}: cycles {got_cycles} != {want}"
        assert obs["perf"][1] == 0, tag
    else:
        # A stream that is not ready stretches LOAD/STORE by exactly the counted stall cycles.
        assert all(g >= w for g, w in zip(got_cycles, want, strict=True)), f"{tag}: {got_cycles} < {want}"
        assert sum(got_cycles) - sum(want) == obs["perf"][1] > 0, f"{tag}: stalls {obs['perf'][1]}"
    assert obs["perf"][0] == sum(got_cycles) + obs["clear_cycles"], tag
    store_words = [w for o in outcomes if o.store_words is not None for w in o.store_words]
    store_masks = [w for o in outcomes if o.store_masks is not None for w in o.store_masks]
    assert len(obs["store"]) == len(store_words), tag
    # m_axis_tlast marks exactly the last word of every STORE.
    lasts = []
    for o in outcomes:
        if o.store_words is not None:
            lasts += [0] * (len(o.store_words) - 1) + [1]
    assert obs.get("tlast", []) == lasts, tag
    for i, (g, w, mk) in enumerate(zip(obs["store"], store_words, store_masks, strict=True)):
        assert g & mk == w & mk, f"{tag}: STORE word {i}: {g & mk:#x} != {w & mk:#x} (mask {mk:#x})"
    assert obs["error"] == model.error, f"{tag}: error {obs['error']} != {model.error!r}"
    assert obs["settings"] == {t: s.encode() for t, s in model.settings.items()}, tag
    for tid in range(model.cfg.tensor_ids):
        r = model.db.read(tid)
        assert obs["db"][tid] == (r.hist.tolist(), r.zeros, r.overflow, r.underflow, r.total), f"{tag} tid {tid}"
    assert obs["perf"][2] == model.perf_macs, tag
    assert obs["perf"][3] == model.perf_values, tag
    assert obs["irq"] == sum(c.irq for c in prog.commands), tag


def test_constructor_rejects_bad_cfg():
    with pytest.raises(TypeError, match="cfg: expected a reference.config.CoreConfig"):
        Sequencer(object())


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_each_op_matches_model_and_cycles(op, seed):
    rng = np.random.default_rng(1000 * int(op) + seed)
    prog = Program({})
    random_compute(rng, CFG, prog, 0, op)
    random_compute(rng, CFG, prog, 3, op)
    prog.commands.append(Command(Ctl.POLICY_UPDATE))
    obs, model, outcomes, _ = run_program(prog)
    check(prog, obs, model, outcomes, f"op {op.name} seed {seed}")


@pytest.mark.parametrize("wa", list(Width), ids=lambda w: f"a{w.bits}")
@pytest.mark.parametrize("wd", list(Width), ids=lambda w: f"d{w.bits}")
def test_convert_every_width_pair(wa, wd):
    """Narrow operands are read several beats per word and narrow results written as byte-enabled
    parts of a word: every (W_a, W_d) pair, three rows of several beats."""
    rng = np.random.default_rng(100 + 3 * int(wa) + int(wd))
    prog = Program({})
    for base in (0, 3):
        random_compute(rng, CFG, prog, base, Op.CONVERT, (wa, wd))
    obs, model, outcomes, _ = run_program(prog)
    check(prog, obs, model, outcomes, f"convert {wa.bits}->{wd.bits}")


@pytest.mark.parametrize("w", list(Width), ids=lambda w: f"w{w.bits}")
def test_matmul_every_width(w):
    """MATMUL reads A[m, k] from slot k % V of its word and broadcasts it to every slot."""
    rng = np.random.default_rng(200 + int(w))
    prog = Program({})
    for base in (0, 3):
        random_compute(rng, CFG, prog, base, Op.MATMUL, (w, w))
    obs, model, outcomes, _ = run_program(prog)
    check(prog, obs, model, outcomes, f"matmul w{w.bits}")


@pytest.mark.parametrize("stall_every,backpressure_every", [(3, 0), (0, 2), (2, 3)])
def test_stream_stalls_stretch_load_store_by_counted_cycles(stall_every, backpressure_every):
    rng = np.random.default_rng(300 + stall_every + 10 * backpressure_every)
    prog = Program({})
    random_compute(rng, CFG, prog, 0, Op.ADD, (Width.W8, Width.W8))
    random_compute(rng, CFG, prog, 3, Op.CONVERT, (Width.W32, Width.W8))
    obs, model, outcomes, _ = run_program(prog, stall_every=stall_every, backpressure_every=backpressure_every)
    check(prog, obs, model, outcomes, f"stalls {stall_every}/{backpressure_every}", exact_cycles=False)


def test_illegal_commands_set_first_error_skip_and_recover():
    s8 = TensorSetting(DfpFormat(Width.W8, 3), RoundingMode.NEAREST_EVEN, True).encode()
    for bad in illegal_commands(CFG, (0, 1, 2)):
        prog = Program({0: s8, 1: s8, 2: s8, 3: TensorSetting(DfpFormat(Width.W16, 0)).encode()})
        rng = np.random.default_rng(int(bad.opcode))
        prog.commands.append(bad)
        if bad.opcode == Ctl.LOAD:
            prog.loads.append([])  # an illegal LOAD takes no data
        random_compute(rng, CFG, prog, 4, Op.ADD)  # executes normally after the error
        obs, model, outcomes, _ = run_program(prog)
        assert outcomes[0].error != ErrorCode.NONE
        check(prog, obs, model, outcomes, f"illegal {bad}")


@pytest.mark.parametrize("w", list(Width), ids=lambda w: f"w{w.bits}")
@pytest.mark.parametrize("seed", [0, 1])
def test_k_split_matmul_matches_model_and_unsplit_product(w, seed):
    """START, CONTINUE..., FINISH: the partial sums stay in the compute unit's accumulator memory,
    only the finishing command writes, analyses and commits; result equals the unsplit product."""
    rng = np.random.default_rng(700 + 10 * int(w) + seed)
    prog = Program({})
    a, b, addr_d = split_matmul(rng, CFG, prog, 0, w, chunks=3)
    td = 2
    obs, model, outcomes, _ = run_program(prog)
    check(prog, obs, model, outcomes, f"split w{w.bits} seed {seed}")
    whole = CoreModel(CFG)
    for tid, word in prog.settings.items():
        whole.write_setting(tid, word)
    sd = whole.settings[td]
    want = ops.matmul(a, b, sd.fmt, sd.rounding, CFG, whole.rng)
    got = model.read_tensor(addr_d, a.shape[0], b.shape[1], sd.fmt)
    assert np.array_equal(got.data, want.out.data), f"split w{w.bits} seed {seed}"
    assert model.db.read(td).as_dict() == want.stats.as_dict()


ODD = CoreConfig(lanes=1, hist_bins=8, hist_min_exp=-4, tensor_ids=6, spad_words=32, spad_banks=3, counter_bits=16)


@pytest.mark.parametrize("seed", [0, 1])
def test_odd_configuration(seed):
    """One lane, 3 banks, 6 tensor ids, 8 bins, 16-bit counters (saturating quickly)."""
    rng = np.random.default_rng(500 + seed)
    prog = Program({})
    random_compute(rng, ODD, prog, 0)
    random_compute(rng, ODD, prog, 3)
    prog.commands.append(Command(Ctl.POLICY_UPDATE))
    obs, model, outcomes, _ = run_program(prog, cfg=ODD)
    check(prog, obs, model, outcomes, f"odd seed {seed}")

"""DLUCore end to end through its top-level ports only: AXI4-Lite registers (settings window,
CMD_PUSH, STATUS, CONTROL, DATABASE window, perf counters), AXI4-Stream LOAD/STORE, irq,
against the reference-built CoreModel, with exact cycle counts (reference.isa.cycles).

``with_compute_unit=False`` runs the system around the Python model of the ComputeUnit contract;
``True`` runs the real hw.compute_unit.ComputeUnit (skipped until that module exists).
"""

from __future__ import annotations

import importlib.util
from collections import deque
from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw import regmap
from hw.core import DLUCore
from reference import ops as ops_mod
from reference.config import PRESETS
from reference.formats import DfpFormat, RoundingMode, TensorSetting, Width
from reference.isa import Command, Ctl, ErrorCode
from reference.ops import Op
from testbenches.cocotb.core_model import CoreModel

from .axil import AxiLiteMaster
from .cu_model import ComputeUnitModel
from .programs import Program, random_compute, split_matmul

CFG = PRESETS["tiny"]
REGS = regmap.by_name(CFG)

def _cu_functional() -> bool:
    """The datapath engineer's ComputeUnit says in its docstring while it is only a port contract."""
    if importlib.util.find_spec("hw.compute_unit") is None:
        return False
    import hw.compute_unit

    return "NOT YET FUNCTIONAL" not in (hw.compute_unit.__doc__ or "")


VARIANTS = [pytest.param(False, id="cu_model"),
            pytest.param(True, id="compute_unit",
                         marks=pytest.mark.skipif(not _cu_functional(),
                                                  reason="hw/compute_unit.py is not functional yet"))]


def test_constructor_errors():
    with pytest.raises(TypeError, match="cfg: expected a reference.config.CoreConfig"):
        DLUCore("tiny")
    with pytest.raises(TypeError, match="with_compute_unit: expected a bool, got 1"):
        DLUCore(CFG, with_compute_unit=1)


def field(reg: str, name: str, value: int) -> int:
    f = REGS[reg].field(name)
    return (value >> f.lsb) & ((1 << f.width) - 1)


class Host:
    """Program-level host actions over the core's ports."""

    def __init__(self, dut, ctx) -> None:
        self.dut, self.ctx, self.bus = dut, ctx, AxiLiteMaster(dut)

    async def write(self, reg: str, value: int, index: int = 0, resp: int = 0) -> None:
        r = REGS[reg]
        got = await self.bus.write(self.ctx, r.offset + index * r.stride, value)
        assert got == resp, f"write of {value:#x} to {reg}[{index}]: BRESP {got}, expected {resp}"

    async def read(self, reg: str, index: int = 0) -> int:
        r = REGS[reg]
        return await self.bus.read(self.ctx, r.offset + index * r.stride)

    async def push(self, cmd: Command) -> None:
        await self.bus.push(self.ctx, REGS["CMD_PUSH"].offset, cmd.encode())

    async def wait_done(self, limit: int = 20_000) -> None:
        for _ in range(limit // 4):
            if field("STATUS", "done", await self.read("STATUS")):
                return
        raise AssertionError("core did not become done")

    async def db_entry(self, tid: int) -> list[int]:
        win = REGS["DATABASE"]
        wpc = regmap.words_per_counter(CFG)
        return [await self.bus.read(self.ctx, win.offset + tid * win.stride + c * 4 * wpc)
                for c in range(regmap.database_counters(CFG))]


def simulate(dut, tb, prog_loads: list[int] | deque, obs: dict, cu_seed: int = 0):
    # a deque is used as is, so that a testbench can feed the stream as it goes
    load_words = prog_loads if isinstance(prog_loads, deque) else deque(prog_loads)

    async def monitor(ctx):
        cycle = 0
        ctx.set(dut.m_axis_tready, 1)
        async for _clk, _rst, start, busy, tv, td, irq in ctx.tick().sample(
                dut.cmd_start, dut.busy, dut.m_axis_tvalid, dut.m_axis_tdata, dut.irq):
            if start:
                obs["starts"].append(cycle)
            if obs["starts"] and not busy and "end" not in obs["durations"].get(len(obs["starts"]), {}):
                obs["durations"].setdefault(len(obs["starts"]), {})["end"] = cycle - obs["starts"][-1]
            if tv:
                obs["store"].append(td)
            obs["irq_cycles"] += irq
            cycle += 1

    async def source(ctx):
        while True:
            if load_words:
                ctx.set(dut.s_axis_tdata, load_words[0])
                ctx.set(dut.s_axis_tvalid, 1)
                ready = ctx.get(dut.s_axis_tready)
                await ctx.tick()
                if ready:
                    load_words.popleft()
            else:
                ctx.set(dut.s_axis_tvalid, 0)
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.add_process(monitor)
    sim.add_testbench(source, background=True)
    if not dut.with_compute_unit:
        sim.add_testbench(ComputeUnitModel(CFG, dut.cu, latency=2, seed=cu_seed).run, background=True)
    sim.run()


def _ops_param(with_cu, seed, ops):
    return pytest.param(with_cu.values[0], seed, ops, marks=with_cu.marks,
                        id=f"{with_cu.id}-{seed}-{'+'.join(o.name for o in ops) if ops else 'random'}")


PROGRAMS = [_ops_param(v, s, None) for v in VARIANTS for s in (7, 8)] + [
    _ops_param(VARIANTS[1], 20 + int(op), (op, op)) for op in Op]


@pytest.mark.parametrize("with_cu,seed,ops", PROGRAMS)
def test_program_through_registers_matches_model(with_cu, seed, ops):
    """A random program queued through CMD_PUSH: STORE data, database window, settings after
    POLICY_UPDATE, perf counters and the exact cycles of every command. The per-op programs run
    the real ComputeUnit on two commands of that op (random widths, roundings, shapes)."""
    rng = np.random.default_rng(seed)
    prog = Program({})
    random_compute(rng, CFG, prog, 0, None if ops is None else ops[0])
    random_compute(rng, CFG, prog, 3, Op(int(rng.integers(0, 8))) if ops is None else ops[1])
    prog.commands.append(Command(Ctl.POLICY_UPDATE, irq=True))
    run_and_check(prog, with_cu, f"seed {seed}")


@pytest.mark.parametrize("with_cu", VARIANTS)
@pytest.mark.parametrize("w", list(Width), ids=lambda w: f"w{w.bits}")
def test_k_split_matmul_through_registers_matches_model(with_cu, w):
    """A MATMUL cut into four K chunks (START, CONTINUE, CONTINUE, FINISH) on the real ComputeUnit's
    accumulator memory: the stored result, database, counters and cycles of the model, whose
    result is checked against the unsplit product."""
    rng = np.random.default_rng(900 + int(w))
    prog = Program({})
    random_compute(rng, CFG, prog, 3, Op.MATMUL)  # an ordinary MATMUL before the sum
    before = (len(prog.commands), len(prog.loads))
    a, b, addr_d = split_matmul(rng, CFG, prog, 0, w, chunks=4, shape=(3, 13, CFG.values_per_beat(w) + 3))
    prog.commands.append(Command(Ctl.POLICY_UPDATE, irq=True))
    model = run_and_check(prog, with_cu, f"split w{w.bits}")
    whole = CoreModel(CFG)  # the program up to the split, then the unsplit product
    for tid, word in prog.settings.items():
        whole.write_setting(tid, word)
    loads = deque(prog.loads[:before[1]])
    for c in prog.commands[:before[0]]:
        whole.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None)
    s = whole.settings[2]
    want = ops_mod.matmul(a, b, s.fmt, s.rounding, CFG, whole.rng)
    got = model.read_tensor(addr_d, a.shape[0], b.shape[1], s.fmt)
    assert np.array_equal(got.data, want.out.data), f"split w{w.bits}"


def run_and_check(prog: Program, with_cu: bool, tag: str) -> CoreModel:
    """Run ``prog`` through the registers and compare everything with the model's; returns the model."""
    seed = tag
    model = CoreModel(CFG)
    for tid, w in prog.settings.items():
        model.write_setting(tid, w)
    loads = deque(prog.loads)
    outcomes = [model.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None) for c in prog.commands]
    dut = DLUCore(CFG, with_compute_unit=with_cu)
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}

    async def tb(ctx):
        h = Host(dut, ctx)
        assert await h.read("CONFIG_DIGEST") == int(CFG.digest()[:8], 16)
        await h.write("CONTROL", REGS["CONTROL"].field("irq_enable").mask)
        for tid, w in prog.settings.items():
            await h.write("SETTINGS", w, tid)
        await h.push(Command(Ctl.CLEAR_STATS, broadcast_b=True))
        for c in prog.commands:
            await h.push(c)
        await h.wait_done()
        st = await h.read("STATUS")
        assert field("STATUS", "error", st) == model.error == ErrorCode.NONE
        assert field("STATUS", "irq_pending", st) == 1
        for tid in range(CFG.tensor_ids):
            r = model.db.read(tid)
            assert await h.db_entry(tid) == r.hist.tolist() + [r.zeros, r.overflow, r.underflow, r.total], \
                f"seed {seed} tid {tid}"
            want = model.settings[tid].encode() | (1 << 31) if tid in model.settings else 0
            assert await h.read("SETTINGS", tid) == want, f"seed {seed} tid {tid}"
        perf = {}
        for name, _ in regmap.PERF_COUNTERS:
            perf[name] = await h.read(name, 0) | (await h.read(name, 1) << 32)
        obs["perf"] = perf

    simulate(dut, tb, [w for ws in prog.loads for w in ws], obs)
    # Commands arrive slower than they run (8 AXI writes each): each one's duration is from its
    # cmd_start to the first cycle busy is low, or to the next cmd_start if that comes first.
    starts = obs["starts"]
    got = []
    for j in range(1, len(starts)):  # starts[0] is the harness's CLEAR_STATS
        end = obs["durations"].get(j + 1, {}).get("end")
        nxt = starts[j + 1] - starts[j] if j + 1 < len(starts) else None
        got.append(min(x for x in (end, nxt) if x is not None))
    assert got == [o.cycles for o in outcomes], f"seed {seed}"
    want_store = [(w, mk) for o in outcomes if o.store_words is not None
                  for w, mk in zip(o.store_words, o.store_masks, strict=True)]
    assert len(obs["store"]) == len(want_store)
    for i, (g, (w, mk)) in enumerate(zip(obs["store"], want_store, strict=True)):
        assert g & mk == w & mk, f"seed {seed}: STORE word {i}"
    assert obs["perf"]["PERF_MACS"] == model.perf_macs
    assert obs["perf"]["PERF_VALUES"] == model.perf_values
    assert obs["perf"]["PERF_STALL"] == 0
    assert obs["irq_cycles"] > 0
    return model


@pytest.mark.parametrize("with_cu", VARIANTS)
def test_errors_soft_reset_and_recovery(with_cu):
    """An illegal setting and an illegal command set STATUS.error (first one kept); CONTROL
    clears it; a soft reset empties the FIFO and invalidates the settings; the core then runs
    a legal command correctly."""
    dut = DLUCore(CFG, with_compute_unit=with_cu)
    s8 = TensorSetting(DfpFormat(Width.W8, 2), RoundingMode.NEAREST_EVEN, False).encode()
    rng = np.random.default_rng(3)
    prog = Program({})
    random_compute(rng, CFG, prog, 0, Op.ADD, (Width.W8, Width.W8))
    model = CoreModel(CFG)
    for tid, w in prog.settings.items():
        model.write_setting(tid, w)
    loads = deque(prog.loads)
    outcomes = [model.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None) for c in prog.commands]
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}
    ctl = REGS["CONTROL"]

    async def tb(ctx):
        h = Host(dut, ctx)
        await h.write("SETTINGS", s8, 1)
        await h.write("SETTINGS", 3, 2, resp=2)  # width code 3: illegal (SLVERR)
        assert field("STATUS", "error", await h.read("STATUS")) == ErrorCode.BAD_SETTING
        await h.push(Command(15))  # BAD_OPCODE, but BAD_SETTING stays (first error)
        await h.wait_done()
        assert field("STATUS", "error", await h.read("STATUS")) == ErrorCode.BAD_SETTING
        await h.write("CONTROL", ctl.field("clear_error").mask)
        assert field("STATUS", "error", await h.read("STATUS")) == 0
        await h.push(Command(int(Op.ADD), tid_a=1, tid_b=1, tid_d=5))  # tid 5 has no setting
        await h.wait_done()
        assert field("STATUS", "error", await h.read("STATUS")) == ErrorCode.BAD_SETTING
        # Soft reset: settings invalid, error cleared, FIFO empty; memories keep their contents.
        await h.write("CONTROL", ctl.field("soft_reset").mask)
        assert await h.read("SETTINGS", 1) == 0
        st = await h.read("STATUS")
        assert field("STATUS", "error", st) == 0 and field("STATUS", "fifo_level", st) == 0
        for tid, w in prog.settings.items():
            await h.write("SETTINGS", w, tid)
        for c in prog.commands:
            await h.push(c)
        await h.wait_done()
        assert field("STATUS", "error", await h.read("STATUS")) == 0

    simulate(dut, tb, [w for ws in prog.loads for w in ws], obs)
    want = [(w, mk) for o in outcomes if o.store_words is not None
            for w, mk in zip(o.store_words, o.store_masks, strict=True)]
    assert [g & mk for g, (_, mk) in zip(obs["store"], want, strict=True)] == [w & mk for w, mk in want]



@pytest.mark.parametrize("with_cu", VARIANTS)
def test_matmul_k64_reaches_90_percent_of_peak(with_cu):
    """MATMUL [1, 64] x [64, V] at 8 bits: the measured cycles equal reference.isa.cycles and the
    useful MACs per cycle are >= 90% of the peak V (one full beat of MACs per cycle)."""
    from reference.formats import DfpTensor
    from reference.isa import cycles, macs

    rng = np.random.default_rng(64)
    v = CFG.values_per_beat(Width.W8)
    fa = DfpFormat(Width.W8, 4)
    settings = {0: TensorSetting(fa).encode(), 1: TensorSetting(fa).encode(),
                2: TensorSetting(DfpFormat(Width.W8, 0), RoundingMode.STOCHASTIC).encode()}
    a = DfpTensor(rng.integers(-128, 128, size=(1, 64)), fa)
    b = DfpTensor(rng.integers(-128, 128, size=(64, v)), fa)
    wa, wb = CoreModel.pack_rows(a, CFG), CoreModel.pack_rows(b, CFG)
    sw = CFG.spad_words
    mm = Command(int(Op.MATMUL), tid_d=2, tid_a=0, tid_b=1, addr_a=0, addr_b=sw, addr_d=2 * sw, m=1, n=v, k=64)
    prog = [Command(Ctl.LOAD, addr_d=0, k=len(wa)), Command(Ctl.LOAD, addr_d=sw, k=len(wb)), mm,
            Command(Ctl.STORE, addr_a=2 * sw, k=1)]
    model = CoreModel(CFG)
    for t, w in settings.items():
        model.write_setting(t, w)
    loads = deque([wa, wb])
    outcomes = [model.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None) for c in prog]
    dut = DLUCore(CFG, with_compute_unit=with_cu)
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}

    async def tb(ctx):
        h = Host(dut, ctx)
        for t, w in settings.items():
            await h.write("SETTINGS", w, t)
        for c in prog:
            await h.push(c)
        await h.wait_done()

    simulate(dut, tb, wa + wb, obs)
    j = 2  # the MATMUL
    dur = min(x for x in (obs["durations"].get(j + 1, {}).get("end"), obs["starts"][j + 1] - obs["starts"][j])
              if x is not None)
    model_settings = {t: TensorSetting.decode(w) for t, w in settings.items()}
    assert dur == outcomes[j].cycles == cycles(mm, model_settings, CFG)
    assert macs(mm) / dur >= 0.9 * CFG.peak_macs_per_cycle(Width.W8), f"{macs(mm)} MACs in {dur} cycles"
    assert obs["store"][0] & outcomes[3].store_masks[0] == outcomes[3].store_words[0] & outcomes[3].store_masks[0]


@pytest.mark.skipif(not _cu_functional(), reason="hw/compute_unit.py is not functional yet")
@pytest.mark.parametrize("seed", [11, 12])
def test_rng_state_window_starts_stochastic_rounding_from_written_states(seed):
    """Random generator states (one of them 0) written through RNG_STATE read back (0 as 1); a
    stochastic MATMUL at 8 bits and a stochastic MUL at 16 bits then STORE exactly what
    reference computes from those states, and RNG_STATE reads reference's final states; the
    results differ from those of the reset states; CONTROL.soft_reset returns the states to
    seed_states(0)."""
    from reference.formats import DfpTensor
    from reference.rng import seed_states

    rng = np.random.default_rng(seed)
    S = CFG.rng_slots
    win = REGS["RNG_STATE"]
    states = [int(x) for x in rng.integers(0, 1 << 32, size=S, dtype=np.uint64)]
    states[int(rng.integers(0, S))] = 0
    written = np.array([x or 1 for x in states], dtype=np.uint32)
    sw = CFG.spad_words
    v8, v16 = CFG.values_per_beat(Width.W8), CFG.values_per_beat(Width.W16)
    f8a, f8b, f16 = DfpFormat(Width.W8, 4), DfpFormat(Width.W8, 3), DfpFormat(Width.W16, 6)
    settings = {0: TensorSetting(f8a).encode(), 1: TensorSetting(f8b).encode(),
                2: TensorSetting(DfpFormat(Width.W8, 2), RoundingMode.STOCHASTIC).encode(),  # shift 5
                3: TensorSetting(f16).encode(),
                4: TensorSetting(DfpFormat(Width.W16, 4), RoundingMode.STOCHASTIC).encode()}  # shift 8
    a = DfpTensor(rng.integers(-12, 13, size=(2, 5)), f8a)
    b = DfpTensor(rng.integers(-12, 13, size=(5, v8)), f8b)
    x = DfpTensor(rng.integers(-1000, 1001, size=(1, 2 * v16 + 3)), f16)
    y = DfpTensor(rng.integers(-1000, 1001, size=(1, 2 * v16 + 3)), f16)
    loads = [CoreModel.pack_rows(t, CFG) for t in (a, b, x, y)]
    prog = [Command(Ctl.LOAD, addr_d=0, k=len(loads[0])), Command(Ctl.LOAD, addr_d=sw, k=len(loads[1])),
            Command(Ctl.LOAD, addr_d=16, k=len(loads[2])), Command(Ctl.LOAD, addr_d=sw + 16, k=len(loads[3])),
            Command(int(Op.MATMUL), tid_d=2, tid_a=0, tid_b=1, addr_a=0, addr_b=sw, addr_d=2 * sw,
                    m=2, n=v8, k=5),
            Command(int(Op.MUL), tid_d=4, tid_a=3, tid_b=3, addr_a=16, addr_b=sw + 16, addr_d=2 * sw + 16,
                    m=1, n=2 * v16 + 3),
            Command(Ctl.STORE, addr_a=2 * sw, k=2), Command(Ctl.STORE, addr_a=2 * sw + 16, k=3)]

    def run_model(start):
        model = CoreModel(CFG)
        model.rng = np.array(start, dtype=np.uint32)
        for t, w in settings.items():
            model.write_setting(t, w)
        q = deque(loads)
        outs = [model.execute(c, list(q.popleft()) if c.opcode == Ctl.LOAD else None) for c in prog]
        return model, [(w, mk) for o in outs if o.store_words is not None
                       for w, mk in zip(o.store_words, o.store_masks, strict=True)]

    model, want = run_model(written)
    _, from_reset = run_model(seed_states(0, S))
    assert [w & mk for w, mk in want] != [w & mk for w, mk in from_reset], "the states must matter here"
    assert model.error == ErrorCode.NONE
    dut = DLUCore(CFG)
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}
    got = {}

    async def tb(ctx):
        h = Host(dut, ctx)
        for j in rng.permutation(S):
            await h.write("RNG_STATE", states[j], int(j))
        got["read"] = [await h.read("RNG_STATE", j) for j in range(S)]
        for t, w in settings.items():
            await h.write("SETTINGS", w, t)
        for c in prog:
            await h.push(c)
        await h.wait_done()
        got["error"] = field("STATUS", "error", await h.read("STATUS"))
        got["final"] = [await h.read("RNG_STATE", j) for j in range(S)]
        await h.write("CONTROL", REGS["CONTROL"].field("soft_reset").mask)
        got["after_reset"] = [await h.read("RNG_STATE", j) for j in range(S)]

    simulate(dut, tb, [w for ws in loads for w in ws], obs)
    assert win.count == S
    assert got["read"] == [int(s) for s in written], f"seed {seed}"
    assert got["error"] == ErrorCode.NONE
    assert [g & mk for g, (_, mk) in zip(obs["store"], want, strict=True)] == [w & mk for w, mk in want], \
        f"seed {seed}"
    assert len(obs["store"]) == len(want)
    assert got["final"] == [int(s) for s in model.rng], f"seed {seed}"
    assert got["final"] != got["read"]
    assert got["after_reset"] == [int(s) for s in seed_states(0, S)]


@pytest.mark.skipif(not _cu_functional(), reason="hw/compute_unit.py is not functional yet")
def test_odd_configuration_with_compute_unit():
    """The real ComputeUnit in a core with one lane, 3 banks, 6 tensor ids, 8 bins, 16-bit counters."""
    from .test_sequencer import ODD

    rng = np.random.default_rng(77)
    prog = Program({})
    random_compute(rng, ODD, prog, 0)
    random_compute(rng, ODD, prog, 3, Op.MATMUL)
    model = CoreModel(ODD)
    for tid, w in prog.settings.items():
        model.write_setting(tid, w)
    loads = deque(prog.loads)
    outcomes = [model.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None) for c in prog.commands]
    dut = DLUCore(ODD)
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}
    regs = regmap.by_name(ODD)

    async def tb(ctx):
        bus = AxiLiteMaster(dut)
        for tid, w in prog.settings.items():
            await bus.write(ctx, regs["SETTINGS"].offset + 4 * tid, w)
        for c in [Command(Ctl.CLEAR_STATS, broadcast_b=True)] + prog.commands:
            await bus.push(ctx, regs["CMD_PUSH"].offset, c.encode())
        for _ in range(2000):
            if (await bus.read(ctx, regs["STATUS"].offset)) & regs["STATUS"].field("done").mask:
                break
        win = regs["DATABASE"]
        for tid in range(ODD.tensor_ids):
            r = model.db.read(tid)
            got = [await bus.read(ctx, win.offset + tid * win.stride + 4 * c) for c in range(ODD.hist_bins + 4)]
            assert got == r.hist.tolist() + [r.zeros, r.overflow, r.underflow, r.total], f"tid {tid}"

    simulate(dut, tb, [w for ws in prog.loads for w in ws], obs)  # real ComputeUnit: no model needed
    want = [(w, mk) for o in outcomes if o.store_words is not None
            for w, mk in zip(o.store_words, o.store_masks, strict=True)]
    assert [g & mk for g, (_, mk) in zip(obs["store"], want, strict=True)] == [w & mk for w, mk in want]


WIDTH_VARIANTS = {f"w{b}": replace(CFG, widths=(b,)) for b in (8, 16, 32)} | {"w16+32": replace(CFG, widths=(16, 32))}


@pytest.mark.skipif(not _cu_functional(), reason="hw/compute_unit.py is not functional yet")
@pytest.mark.parametrize("variant", list(WIDTH_VARIANTS))
def test_width_variant_computes_its_widths_and_flags_the_others(variant):
    """A tiny core with fewer widths (real ComputeUnit): a program at each supported width matches
    the model (STORE data, database, cycles); a settings write of every unsupported width sets
    STATUS.error = BAD_SETTING exactly when reference.isa.decode_setting rejects it, and leaves
    the entry as it was; the core then runs on."""
    from reference.isa import IllegalCommand, decode_setting

    cfg = WIDTH_VARIANTS[variant]
    rng = np.random.default_rng(90 + len(cfg.widths) + cfg.widths[0])
    prog = Program({})
    for i, w in enumerate(cfg.supported_widths):
        random_compute(rng, cfg, prog, 3 * i, None, (w, w))
    model = CoreModel(cfg)
    for tid, word in prog.settings.items():
        model.write_setting(tid, word)
    loads = deque(prog.loads)
    outcomes = [model.execute(c, list(loads.popleft()) if c.opcode == Ctl.LOAD else None) for c in prog.commands]
    dut = DLUCore(cfg)
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}
    ctl = REGS["CONTROL"]
    probes = []
    for w in Width:
        word = TensorSetting(DfpFormat(w, 3), RoundingMode.FLOOR, True).encode()
        try:
            decode_setting(word, cfg)
            probes.append((word, ErrorCode.NONE))
        except IllegalCommand as exc:
            probes.append((word, exc.code))
    assert [code for _, code in probes] == [ErrorCode.NONE if cfg.supports(w) else ErrorCode.BAD_SETTING
                                            for w in Width]

    async def tb(ctx):
        h = Host(dut, ctx)
        assert await h.read("CONFIG_DIGEST") == int(cfg.digest()[:8], 16)
        for tid, word in prog.settings.items():
            await h.write("SETTINGS", word, tid)
        await h.push(Command(Ctl.CLEAR_STATS, broadcast_b=True))
        for c in prog.commands:
            await h.push(c)
        await h.wait_done()
        assert field("STATUS", "error", await h.read("STATUS")) == ErrorCode.NONE
        for tid in range(cfg.tensor_ids):
            r = model.db.read(tid)
            assert await h.db_entry(tid) == r.hist.tolist() + [r.zeros, r.overflow, r.underflow, r.total], tid
        before = await h.read("SETTINGS", 0)
        for word, code in probes:
            await h.write("SETTINGS", word, 0, resp=0 if code == ErrorCode.NONE else 2)
            assert field("STATUS", "error", await h.read("STATUS")) == code, f"setting {word:#x}"
            want = (word | (1 << 31)) if code == ErrorCode.NONE else before
            assert await h.read("SETTINGS", 0) == want, f"setting {word:#x}"
            before = want
            await h.write("CONTROL", ctl.field("clear_error").mask)

    simulate(dut, tb, [w for ws in prog.loads for w in ws], obs)
    starts = obs["starts"]
    got = []
    for j in range(1, len(starts)):
        end = obs["durations"].get(j + 1, {}).get("end")
        nxt = starts[j + 1] - starts[j] if j + 1 < len(starts) else None
        got.append(min(x for x in (end, nxt) if x is not None))
    assert got == [o.cycles for o in outcomes]
    want = [(w, mk) for o in outcomes if o.store_words is not None
            for w, mk in zip(o.store_words, o.store_masks, strict=True)]
    assert [g & mk for g, (_, mk) in zip(obs["store"], want, strict=True)] == [w & mk for w, mk in want]


@pytest.mark.parametrize("timeout", [1, 23])
def test_load_timeout_ends_a_starved_load_and_the_core_recovers(timeout):
    """A LOAD whose stream delivers 2 of its 5 words: after LOAD_TIMEOUT stalled cycles it ends
    with STATUS.error = LOAD_TIMEOUT (reference.isa "LOAD timeout"), busy minus stalled cycles
    = timed_out_load_cycles(2), the 2 words are in the scratchpad and the other 3 unchanged;
    after clear_error the next LOAD and STORE run normally. Compared with CoreModel."""
    from reference.isa import LOAD_TIMEOUT_DEFAULT

    rng = np.random.default_rng(timeout)
    words = [int(x) for x in rng.integers(0, 1 << 62, size=12, dtype=np.uint64)]
    dut = DLUCore(CFG, with_compute_unit=False)
    model = CoreModel(CFG)
    model.load_timeout = timeout
    stream = deque(words[:5])
    obs = {"starts": [], "store": [], "irq_cycles": 0, "durations": {}}
    load = Command(Ctl.LOAD, addr_d=3, k=5)
    store = Command(Ctl.STORE, addr_a=3, k=5)
    expect = [model.execute(load, words[:5]), model.execute(load, words[5:7]), model.execute(store)]
    expect += [model.execute(load, words[7:12]), model.execute(store)]
    assert [o.error for o in expect] == [0, ErrorCode.LOAD_TIMEOUT, 0, 0, 0]

    async def tb(ctx):
        h = Host(dut, ctx)
        assert await h.read("LOAD_TIMEOUT") == LOAD_TIMEOUT_DEFAULT
        await h.write("LOAD_TIMEOUT", timeout)
        await h.push(load)
        await h.wait_done()
        await h.write("CONTROL", REGS["CONTROL"].field("clear_perf").mask)
        stream.extend(words[5:7])
        await h.push(load)
        await h.wait_done()
        st = await h.read("STATUS")
        assert field("STATUS", "error", st) == ErrorCode.LOAD_TIMEOUT
        assert field("STATUS", "busy", st) == 0
        busy = await h.read("PERF_BUSY")
        stall = await h.read("PERF_STALL")
        assert stall == timeout
        assert busy - stall == expect[1].cycles
        await h.push(store)
        await h.wait_done()
        assert field("STATUS", "error", await h.read("STATUS")) == ErrorCode.LOAD_TIMEOUT  # first error stays
        await h.write("CONTROL", REGS["CONTROL"].field("clear_error").mask)
        stream.extend(words[7:12])
        await h.push(load)
        await h.push(store)
        await h.wait_done()
        assert field("STATUS", "error", await h.read("STATUS")) == ErrorCode.NONE

    simulate(dut, tb, stream, obs)
    want = expect[2].store_words + expect[4].store_words
    assert want == words[5:7] + words[2:5] + words[7:12]
    assert obs["store"] == want

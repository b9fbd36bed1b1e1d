"""ComputeUnit against reference.ops: every op x width x rounding mode, beats built from reference
tensors as the sequencer builds them; outputs, OpStats and generator states compared exactly, with
idle cycles between operand beats and back-pressure on results; LATENCY and drain timing."""

from __future__ import annotations

import gc
from dataclasses import dataclass, replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.compute_unit import ComputeUnit
from reference import ops
from reference.config import PRESETS, CoreConfig
from reference.formats import DfpFormat, DfpTensor, RoundingMode, Width, acc_width
from reference.ops import Op
from reference.rng import seed_states
from reference.stats import OpStats

CFG = PRESETS["tiny"]
S = CFG.rng_slots
#: Width-restricted variants of the tiny preset: single widths and a pair without 8 bits.
VARIANTS = {name: replace(CFG, widths=ws) for name, ws in
            [("w8", (8,)), ("w16", (16,)), ("w32", (32,)), ("w16+32", (16, 32)), ("w8+32", (8, 32))]}


@dataclass
class Cmd:
    op: Op
    a: DfpTensor
    b: DfpTensor | None
    out_fmt: DfpFormat
    rounding: RoundingMode
    alpha: int = 0
    alpha_frac: int = 0


def controls(c: Cmd, cfg: CoreConfig) -> dict:
    """The command constants the sequencer derives (F_acc and shifts from reference.ops.align_terms)."""
    fmts = [c.a.fmt, c.out_fmt] + ([c.b.fmt] if c.b is not None else [])
    w = max(f.width for f in fmts)
    abits = acc_width(w)
    fa = c.a.fmt.frac
    a_shift = b_shift = 0
    z = np.zeros((1, 1), dtype=np.int64)
    if c.op in (Op.ADD, Op.SUB):
        _, f_acc = ops.align_terms([(z, c.a.fmt), (z, c.b.fmt)], abits)
        a_shift, b_shift = f_acc - fa, f_acc - c.b.fmt.frac
    elif c.op == Op.AXPY:
        fp = c.alpha_frac + fa
        _, f_acc = ops.align_terms([(z, (fp, 2 * w.bits)), (z, c.b.fmt)], abits)
        a_shift, b_shift = f_acc - fp, f_acc - c.b.fmt.frac
    elif c.op in (Op.MATMUL, Op.MUL):
        f_acc = fa + c.b.fmt.frac
    else:
        f_acc = fa
    return {"op": c.op, "width": w, "out_width": c.out_fmt.width, "rounding": c.rounding,
            "a_shift": a_shift, "b_shift": b_shift, "out_shift": f_acc - c.out_fmt.frac, "f_acc": f_acc,
            "alpha": c.alpha}


def operand_beats(c: Cmd, cfg: CoreConfig) -> list[tuple[list[int], list[int], int, int]]:
    """(a slots, b slots, count, last) per beat, in the sequencer's order."""
    w = controls(c, cfg)["width"]
    v = cfg.values_per_beat(w)
    S = cfg.rng_slots  # noqa: N806 (the slot count, as in the contract)
    a = c.a.data
    out = []
    if c.op == Op.MATMUL:
        m_, k_ = a.shape
        n_ = c.b.shape[1]
        for r in range(m_):
            for n0 in range(0, n_, v):
                cnt = min(v, n_ - n0)
                for k in range(k_):
                    bb = [int(x) for x in c.b.data[k, n0:n0 + cnt]]
                    out.append(([int(a[r, k])] * S, bb + [0] * (S - cnt), cnt, int(k == k_ - 1)))
        return out
    m_, n_ = a.shape
    for r in range(m_):
        for n0 in range(0, n_, v):
            cnt = min(v, n_ - n0)
            aa = [int(x) for x in a[r, n0:n0 + cnt]]
            if c.b is not None:
                bb = [int(x) for x in c.b.data[r if c.b.shape[0] > 1 else 0, n0:n0 + cnt]]
            else:
                bb = [0] * cnt
            out.append((aa + [0] * (S - cnt), bb + [0] * (S - cnt), cnt, 1))
    return out


def golden(c: Cmd, cfg: CoreConfig, rng: np.ndarray) -> ops.OpResult:
    args = (c.out_fmt, c.rounding, cfg, rng)
    if c.op == Op.MATMUL:
        return ops.matmul(c.a, c.b, *args)
    if c.op == Op.ADD:
        return ops.add(c.a, c.b, *args)
    if c.op == Op.SUB:
        return ops.sub(c.a, c.b, *args)
    if c.op == Op.MUL:
        return ops.mul(c.a, c.b, *args)
    if c.op == Op.AXPY:
        return ops.axpy(c.alpha, c.alpha_frac, c.a, c.b, *args)
    if c.op == Op.RELU:
        return ops.relu(c.a, *args)
    if c.op == Op.RELU_BACKWARD:
        return ops.relu_backward(c.a, c.b, *args)
    return ops.convert(c.a, *args)


def result_beats(out: np.ndarray, v: int) -> list[list[int]]:
    m_, n_ = out.shape
    return [[int(x) for x in out[r, n0:n0 + v]] for r in range(m_) for n0 in range(0, n_, v)]


def rand_tensor(rng: np.random.Generator, shape, fmt: DfpFormat) -> DfpTensor:
    lo, hi = fmt.min_int, fmt.max_int
    x = rng.integers(lo, hi, size=shape, endpoint=True)
    # extremes, zeros and small values
    pick = rng.random(shape)
    x = np.where(pick < 0.1, lo, x)
    x = np.where((pick >= 0.1) & (pick < 0.15), hi, x)
    x = np.where((pick >= 0.15) & (pick < 0.25), 0, x)
    x = np.where((pick >= 0.25) & (pick < 0.4), rng.integers(-3, 4, size=shape), x)
    return DfpTensor(x.astype(np.int64), fmt)


def make_cmd(rng: np.random.Generator, op: Op, w: Width, mode: RoundingMode, cfg: CoreConfig,
             w_in: Width | None = None, shape: tuple[int, int] | None = None, k: int = 3) -> Cmd:
    """A random command; output point positions chosen so that conversions drop bits (right shift),
    add none or shift left, and saturate in both directions."""
    v = cfg.values_per_beat(w)
    m_, n_ = shape or (2, v + 2)  # a partial beat in every row
    fa = int(rng.integers(-4, 12))
    fb = int(rng.integers(-4, 12))
    fa_fmt = DfpFormat(w_in or w, fa)
    b = None
    alpha, alpha_frac = 0, 0
    if op == Op.MATMUL:
        a = rand_tensor(rng, (m_, k), fa_fmt)
        b = rand_tensor(rng, (k, n_), DfpFormat(w, fb))
        f_acc = fa + fb
    else:
        a = rand_tensor(rng, (m_, n_), fa_fmt)
        if op in (Op.ADD, Op.SUB, Op.MUL, Op.AXPY, Op.RELU_BACKWARD):
            rows = 1 if (op in (Op.ADD, Op.MUL) and rng.random() < 0.5) else m_  # broadcast row
            # far-apart point positions now and then, so the alignment shifts right as well as left
            fb = fb + int(rng.choice([0, 0, 20, -20]))
            b = rand_tensor(rng, (rows, n_), DfpFormat(w, max(-32, min(63, fb))))
        if op == Op.AXPY:
            alpha_frac = int(rng.integers(0, 2 * w.bits))
            alpha = int(rng.integers(-(1 << (w.bits - 1)), 1 << (w.bits - 1)))
        f_acc = fa + (b.fmt.frac if op == Op.MUL else 0)
    shift = int(rng.choice([-3, 0, 1, 2, w.bits // 2, w.bits, w.bits + 5])) if mode != RoundingMode.STOCHASTIC \
        else int(rng.choice([1, 3, w.bits // 2, w.bits + 3, 20]))
    out_w = w if w_in is None else (w_in if w_in != w else w)
    fo = max(-32, min(63, f_acc - shift))
    return Cmd(op, a, b, DfpFormat(out_w, fo), mode, alpha, alpha_frac)


def run_commands(cmds: list[Cmd], cfg: CoreConfig, seed: int, p_idle: float, p_stall: float, tb_seed: int):
    """Drive every command through the DUT; return per command (result beats, OpStats, rng states),
    plus the cycle trace of (accepted, result-valid, busy) for timing checks."""
    dut = ComputeUnit(cfg)
    S = cfg.rng_slots  # noqa: N806
    rnd = np.random.default_rng(tb_seed)
    got = []
    timing = []

    def stats_of(ctx) -> OpStats:
        return OpStats(np.array([int(x) for x in ctx.get(dut.stats_hist)], dtype=np.int64),
                       ctx.get(dut.stats_zeros), ctx.get(dut.stats_overflow), ctx.get(dut.stats_underflow),
                       ctx.get(dut.stats_total))

    async def tb(ctx):
        ctx.set(dut.seed, seed)
        ctx.set(dut.seed_load, 1)
        await ctx.tick()
        ctx.set(dut.seed_load, 0)
        for c in cmds:
            ctl = controls(c, cfg)
            for name, val in ctl.items():
                ctx.set(getattr(dut, name), int(val))
            ctx.set(dut.stats_clear, 1)
            await ctx.tick()
            ctx.set(dut.stats_clear, 0)
            beats = operand_beats(c, cfg)
            wbits = Width(ctl["width"]).bits
            n_out = sum(b[3] for b in beats)
            res = []
            trace = []
            i = 0
            while len(res) < n_out:
                send = i < len(beats) and rnd.random() >= p_idle
                ctx.set(dut.operands.valid, int(send))
                if send:
                    a, b, cnt, last = beats[i]
                    # slots past count carry junk: the contract says they are ignored
                    junk = [int(x) for x in rnd.integers(-(1 << (wbits - 1)), 1 << (wbits - 1), size=2 * S)]
                    a = a[:cnt] + junk[cnt:S]
                    b = b[:cnt] + junk[S + cnt:]
                    ctx.set(dut.operands.payload, {"a": a, "b": b, "count": cnt, "last": last})
                ready = int(rnd.random() >= p_stall)
                ctx.set(dut.results.ready, ready)
                took = send and ctx.get(dut.operands.ready)
                rv = ctx.get(dut.results.valid)
                if rv and ready:
                    cnt = ctx.get(dut.results.payload.count)
                    q = [int(x) for x in ctx.get(dut.results.payload.q)]
                    res.append((q[:cnt], q[cnt:]))
                trace.append((int(bool(took)), rv, ctx.get(dut.busy)))
                if took:
                    i += 1
                await ctx.tick()
            ctx.set(dut.operands.valid, 0)
            ctx.set(dut.results.ready, 1)
            while ctx.get(dut.busy):
                trace.append((0, ctx.get(dut.results.valid), 1))
                await ctx.tick()
            trace.append((0, 0, 0))
            got.append((res, stats_of(ctx), [int(x) for x in ctx.get(dut.generators.states)]))
            timing.append(trace)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return got, timing


def check(cmds: list[Cmd], cfg: CoreConfig, seed: int, got, label: str) -> None:
    state = seed_states(seed, cfg.rng_slots)
    for i, (c, (res, st, rng_state)) in enumerate(zip(cmds, got, strict=True)):
        want = golden(c, cfg, state)
        state = want.rng
        ctl = controls(c, cfg)
        v = cfg.values_per_beat(ctl["width"])
        what = f"{label} cmd {i} {c.op.name} W{ctl['width'].bits} {c.rounding.name} out_shift {ctl['out_shift']}"
        assert [q for q, _ in res] == result_beats(want.out.data, v), what
        assert all(all(x == 0 for x in pad) for _, pad in res), f"{what}: slots past count not 0"
        assert st == want.stats, f"{what}: stats {st.as_dict()} want {want.stats.as_dict()}"
        assert rng_state == [int(x) for x in want.rng], f"{what}: generator states"


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_rejects_bad_cfg():
    with pytest.raises(TypeError, match="cfg: expected a reference.config.CoreConfig, got None"):
        ComputeUnit(None)
    gc.collect()  # the half-built components warn when collected: here, where it is ignored


@pytest.mark.parametrize("w", list(Width), ids=lambda w: f"W{w.bits}")
def test_every_op_and_rounding_mode(w):
    """8 ops x 3 rounding modes at one width, idle operand cycles and results back-pressure."""
    seed = 1000 + w
    rng = np.random.default_rng(seed)
    cmds = [make_cmd(rng, op, w, mode, CFG) for op in Op for mode in RoundingMode]
    got, _ = run_commands(cmds, CFG, seed=0xC0FFEE + w, p_idle=0.2, p_stall=0.25, tb_seed=seed)
    check(cmds, CFG, 0xC0FFEE + w, got, f"seed {seed}")
    # the sweep saturated, underflowed and rounded stochastically somewhere
    tot = [g[1] for g in got]
    assert sum(s.overflow for s in tot) > 0 and sum(s.underflow for s in tot) > 0


@pytest.mark.parametrize("w_in,w_out", [(Width.W8, Width.W16), (Width.W16, Width.W8), (Width.W8, Width.W32),
                                        (Width.W32, Width.W16)], ids=lambda w: f"W{w.bits}")
def test_convert_between_widths(w_in, w_out):
    """CONVERT runs at the wider of the two widths (W_op), every rounding mode."""
    seed = 2000 + 3 * w_in + w_out
    rng = np.random.default_rng(seed)
    w_op = max(w_in, w_out)
    cmds = []
    for mode in RoundingMode:
        c = make_cmd(rng, Op.CONVERT, w_op, mode, CFG, w_in=w_in)
        cmds.append(Cmd(c.op, c.a, None, DfpFormat(w_out, c.out_fmt.frac), mode))
    got, _ = run_commands(cmds, CFG, seed=seed, p_idle=0.1, p_stall=0.1, tb_seed=seed)
    check(cmds, CFG, seed, got, f"seed {seed}")


def test_matmul_long_k_extremes():
    """K = 70 of most-negative operands at 16 bits: sums beyond the product width, stochastic output."""
    seed = 3000
    rng = np.random.default_rng(seed)
    w = Width.W16
    k = 70
    a = DfpTensor(np.full((1, k), -(1 << 15), dtype=np.int64), DfpFormat(w, 3))
    b = DfpTensor(np.where(rng.random((k, 10)) < 0.5, -(1 << 15), (1 << 15) - 1).astype(np.int64),
                  DfpFormat(w, 2))
    cmds = [Cmd(Op.MATMUL, a, b, DfpFormat(w, 5 + 3 - 20), RoundingMode.STOCHASTIC),
            Cmd(Op.MATMUL, a, b, DfpFormat(w, -28), RoundingMode.NEAREST_EVEN)]
    got, _ = run_commands(cmds, CFG, seed=seed, p_idle=0.0, p_stall=0.3, tb_seed=seed)
    check(cmds, CFG, seed, got, f"seed {seed}")


def test_latency_and_drain_without_stalls():
    """Back to back beats: one accepted per cycle, results exactly LATENCY cycles after each last beat,
    and busy low (statistics final) LATENCY + STATS_LATENCY cycles after the last operand beat."""
    seed = 4000
    rng = np.random.default_rng(seed)
    cmds = [make_cmd(rng, Op.ADD, Width.W8, RoundingMode.NEAREST_EVEN, CFG, shape=(3, 40)),
            make_cmd(rng, Op.MATMUL, Width.W16, RoundingMode.FLOOR, CFG, shape=(2, 5), k=4)]
    got, timing = run_commands(cmds, CFG, seed=seed, p_idle=0.0, p_stall=0.0, tb_seed=seed)
    check(cmds, CFG, seed, got, f"seed {seed}")
    for c, trace in zip(cmds, timing, strict=True):
        beats = operand_beats(c, CFG)
        acc_cycles = [t for t, (took, _, _) in enumerate(trace) if took]
        assert acc_cycles == list(range(len(beats))), "an operand beat was refused without back-pressure"
        last_cycles = [t for t, b in zip(acc_cycles, beats, strict=True) if b[3]]
        res_cycles = [t for t, (_, rv, _) in enumerate(trace) if rv]
        assert res_cycles == [t + ComputeUnit.LATENCY for t in last_cycles]
        idle = next(t for t, (_, _, busy) in enumerate(trace) if t > acc_cycles[-1] and not busy)
        assert idle == acc_cycles[-1] + ComputeUnit.LATENCY + ComputeUnit.STATS_LATENCY


def random_sweep(cfg: CoreConfig, seed: int, n_cmds: int) -> None:
    rng = np.random.default_rng(seed)
    cmds = []
    for _ in range(n_cmds):
        op = Op(int(rng.integers(0, len(Op))))
        w = Width(int(rng.integers(0, 3)))
        mode = RoundingMode(int(rng.integers(0, 3)))
        v = cfg.values_per_beat(w)
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 2 * v + 4)))
        w_in = Width(int(rng.integers(0, w + 1))) if op == Op.CONVERT else None
        c = make_cmd(rng, op, w, mode, cfg, w_in=w_in, shape=shape, k=int(rng.integers(1, 80)))
        if op == Op.CONVERT and rng.random() < 0.5:  # narrowing conversion instead
            c = Cmd(c.op, DfpTensor(c.a.data, DfpFormat(w, c.a.fmt.frac)), None,
                    DfpFormat(w_in, c.out_fmt.frac), mode)
        cmds.append(c)
    p_idle, p_stall = float(rng.choice([0.0, 0.3])), float(rng.choice([0.0, 0.3]))
    got, _ = run_commands(cmds, cfg, seed=seed, p_idle=p_idle, p_stall=p_stall, tb_seed=seed)
    check(cmds, cfg, seed, got, f"seed {seed}")


VARIANT_CASES = [(name, w) for name, cfg in VARIANTS.items() for w in cfg.supported_widths]


@pytest.mark.parametrize(("variant", "w"), VARIANT_CASES, ids=[f"{n}-W{w.bits}" for n, w in VARIANT_CASES])
def test_width_variant_every_op_and_rounding_mode(variant, w):
    """A core with fewer widths (fewer slots, narrower lanes, accumulators and requantizers) computes
    every op x rounding mode at each width it supports, bit-exact, generators included."""
    cfg = VARIANTS[variant]
    assert cfg.rng_slots == cfg.values_per_beat(cfg.narrowest)
    seed = 7000 + 10 * list(VARIANTS).index(variant) + w
    rng = np.random.default_rng(seed)
    cmds = [make_cmd(rng, op, w, mode, cfg) for op in Op for mode in RoundingMode]
    got, _ = run_commands(cmds, cfg, seed=0xBEEF + w, p_idle=0.2, p_stall=0.25, tb_seed=seed)
    check(cmds, cfg, 0xBEEF + w, got, f"{variant} seed {seed}")


@pytest.mark.parametrize("variant", ["w16+32", "w8+32"])
def test_width_variant_convert_between_its_widths(variant):
    cfg = VARIANTS[variant]
    lo, hi = cfg.supported_widths
    seed = 7500 + lo
    rng = np.random.default_rng(seed)
    cmds = []
    for w_in, w_out in ((lo, hi), (hi, lo)):
        for mode in RoundingMode:
            c = make_cmd(rng, Op.CONVERT, hi, mode, cfg, w_in=w_in)
            cmds.append(Cmd(c.op, c.a, None, DfpFormat(w_out, c.out_fmt.frac), mode))
    got, _ = run_commands(cmds, cfg, seed=seed, p_idle=0.1, p_stall=0.1, tb_seed=seed)
    check(cmds, cfg, seed, got, f"{variant} seed {seed}")


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5000, 5008))
def test_random_command_sweep(seed):
    """Random ops, widths, modes, shapes (K up to 79), stalls and idle cycles on the tiny preset."""
    random_sweep(CFG, seed, 30)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [6000])
def test_random_commands_default_preset(seed):
    """The default preset's 8 lanes (32 slots, 8 generators per lane row)."""
    random_sweep(PRESETS["default"], seed, 12)

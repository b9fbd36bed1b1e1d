"""ComputeUnit (``hw.compute_unit.ComputeUnit``) at block level, through its operand/result streams.

Netlist config: ``tiny`` (2 lanes, 8 slots). Per command: a random operation, width, rounding
mode, point positions (including shifts beyond the accumulator), operand data with extremes, and
for CONVERT a different input width. The bench derives the command constants from
:mod:`reference` only (``f_acc`` and the alignment shifts from ``reference.ops.align_terms``,
``out_shift = f_acc - F_out``), feeds the operand beats in the documented order (MATMUL: one beat
per k with A[m, k] in every slot; other ops: one beat per output beat) with junk in the slots
past ``count``, and drains the result stream with seeded back-pressure while the source idles at
random.

Golden twin: the ``reference.ops`` function of the operation, with the generator states carried
from command to command exactly as ``reference.engine.Engine`` does. Compared exactly: every
result value, the zero slots past ``count``, and after ``busy`` falls the command's statistics
(``stats_*``) against the op's ``OpStats``.
"""

from __future__ import annotations

import cocotb
import numpy as np
import pytest
from cocotb.triggers import ReadOnly

from testbenches.cocotb import tbutil

CONFIGS = ["tiny"]


def random_ints(rng, n, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return [rng.choice([lo, hi, 0, -1, 1]) if rng.random() < 0.15 else
            (rng.randint(-8, 8) if rng.random() < 0.3 else rng.randint(lo, hi)) for _ in range(n)]


@cocotb.test(timeout_time=500_000_000, timeout_unit="ns")
async def compute_unit_matches_reference(dut):
    from hw.compute_unit import ComputeUnit
    from reference import ops
    from reference.formats import FRAC_MAX, FRAC_MIN, DfpFormat, DfpTensor, RoundingMode, Width, acc_width
    from reference.ops import Op
    from reference.rng import seed_states
    from reference.stats import OpStats

    rng, _ = tbutil.test_rng("compute_unit_matches_reference", dut._log)
    cfg = tbutil.core_config()
    S = cfg.rng_slots
    comp = ComputeUnit(cfg)
    olay = tbutil.payload_layout(comp, "operands")
    rlay = tbutil.payload_layout(comp, "results")
    hlay = comp.signature.members["stats_hist"].shape
    tb = tbutil.Clocked(dut)
    for sig in ("op", "width", "out_width", "rounding", "a_shift", "b_shift", "out_shift", "f_acc", "alpha",
                "seed", "seed_load", "stats_clear"):
        getattr(dut, sig).value = 0
    src = tbutil.StreamSource(tb, "operands", rng, idle=0.0)
    sink = tbutil.StreamSink(tb, "results", rng, stall=0.0)
    await tb.reset()
    seed = rng.getrandbits(32)
    await tb.falling()
    dut.seed.value, dut.seed_load.value = seed, 1
    await tb.falling()
    dut.seed_load.value = 0
    states = seed_states(seed, S)
    n_cmds = tbutil.iterations(60)
    for ci in range(n_cmds):
        src.idle = rng.choice([0.0, 0.3])
        sink.stall = rng.choice([0.0, 0.4])
        op = Op(rng.randrange(8))
        w = rng.choice(list(Width))
        w_in = rng.choice(list(Width)) if op == Op.CONVERT else w
        w_op = max(w, w_in)
        V = cfg.values_per_beat(w_op)
        rnd = RoundingMode(rng.randrange(3))
        m = rng.randint(1, 3)
        n = rng.choice([1, V, V + 1, rng.randint(1, 2 * V + 1)])
        k = rng.randint(1, 5) if op == Op.MATMUL else 1
        f_a = rng.choice([rng.randint(-4, 12), rng.randint(FRAC_MIN, FRAC_MAX)])
        f_b = rng.choice([f_a, rng.randint(FRAC_MIN, FRAC_MAX)])
        fa, fb = DfpFormat(w_in, f_a), DfpFormat(w, f_b)
        bcast = op in (Op.ADD, Op.SUB, Op.MUL) and rng.random() < 0.25
        a_shape = (m, k) if op == Op.MATMUL else (m, n)
        b_shape = (k, n) if op == Op.MATMUL else ((1 if bcast else m), n)
        a = DfpTensor(np.array(random_ints(rng, a_shape[0] * a_shape[1], fa.bits)).reshape(a_shape), fa)
        b = DfpTensor(np.array(random_ints(rng, b_shape[0] * b_shape[1], fb.bits)).reshape(b_shape), fb)
        abits = acc_width(w_op)
        alpha = alpha_frac = 0
        a_shift = b_shift = 0
        if op in (Op.MATMUL, Op.MUL):
            f_acc = f_a + f_b
        elif op in (Op.ADD, Op.SUB):
            _, f_acc = ops.align_terms([(a.data, fa), (b.data, fb)], abits)
            a_shift, b_shift = f_acc - f_a, f_acc - f_b
        elif op == Op.AXPY:
            alpha = random_ints(rng, 1, w.bits)[0]
            alpha_frac = rng.choice([0, rng.randint(0, w.bits), rng.randint(FRAC_MIN, FRAC_MAX)])
            _, f_acc = ops.align_terms([(a.data, (alpha_frac + f_a, 2 * w.bits)), (b.data, fb)], abits)
            a_shift, b_shift = f_acc - (alpha_frac + f_a), f_acc - f_b
        else:
            f_acc = f_a
        f_out = max(FRAC_MIN, min(FRAC_MAX, f_acc + rng.choice([0, rng.randint(-20, 20), rng.randint(-90, 40)])))
        out_fmt = DfpFormat(w, f_out)
        # the golden result
        if op == Op.MATMUL:
            res = ops.matmul(a, b, out_fmt, rnd, cfg, states)
        elif op in (Op.ADD, Op.SUB, Op.MUL):
            res = {Op.ADD: ops.add, Op.SUB: ops.sub, Op.MUL: ops.mul}[op](a, b, out_fmt, rnd, cfg, states)
        elif op == Op.AXPY:
            res = ops.axpy(alpha, alpha_frac, a, b, out_fmt, rnd, cfg, states)
        elif op == Op.RELU:
            res = ops.relu(a, out_fmt, rnd, cfg, states)
        elif op == Op.RELU_BACKWARD:
            res = ops.relu_backward(a, b, out_fmt, rnd, cfg, states)
        else:
            res = ops.convert(a, out_fmt, rnd, cfg, states)
        # command constants, then a stats clear
        await tb.falling()
        for name, v in (("op", int(op)), ("width", int(w_op)), ("out_width", int(w)), ("rounding", int(rnd)),
                        ("a_shift", a_shift), ("b_shift", b_shift), ("out_shift", f_acc - f_out),
                        ("f_acc", f_acc), ("alpha", alpha)):
            getattr(dut, name).value = v
        dut.stats_clear.value = 1
        await tb.falling()
        dut.stats_clear.value = 0
        # operand beats
        n_out = 0
        for r in range(m):
            for n0 in range(0, n, V):
                cnt = min(V, n - n0)
                n_out += 1
                for kk in range(k):
                    junk = [rng.randint(-(1 << 31), (1 << 31) - 1) for _ in range(S)]
                    if op == Op.MATMUL:
                        av = [int(a.data[r, kk])] * S
                        bv = [int(b.data[kk, n0 + j]) if j < cnt else junk[j] for j in range(S)]
                    else:
                        av = [int(a.data[r, n0 + j]) if j < cnt else junk[j] for j in range(S)]
                        br = 0 if b.shape[0] == 1 else r
                        bv = [int(b.data[br, n0 + j]) if j < cnt else junk[j] for j in range(S)]
                    src.send(tbutil.pack(olay, {"a": av, "b": bv, "count": cnt, "last": int(kk == k - 1)}))
        first = len(sink.items)
        for _ in range(20 * (n_out * k + 10)):
            if len(sink.items) - first >= n_out and src.empty:
                break
            await tb.falling()
        assert len(sink.items) - first == n_out, f"command {ci} {op.name}: {len(sink.items) - first} of {n_out} beats"
        idle = False
        for _ in range(50):
            await tb.falling()
            await ReadOnly()
            if not int(dut.busy.value):
                idle = True
                break
        assert idle, f"command {ci} {op.name}: busy stays high"
        # results
        beat = first
        desc = (f"command {ci}: {op.name} W_op={w_op.bits} out={out_fmt} {rnd.name} a={fa} b={fb} "
                f"m={m} n={n} k={k} bcast={bcast} alpha={alpha}/{alpha_frac} f_acc={f_acc}")
        for r in range(m):
            for n0 in range(0, n, V):
                cnt = min(V, n - n0)
                got = tbutil.unpack(rlay, sink.items[beat][1])
                beat += 1
                assert got["count"] == cnt, f"{desc}: row {r} col {n0}: count {got['count']}, expected {cnt}"
                want = [int(x) for x in res.out.data[r, n0:n0 + cnt]]
                assert got["q"][:cnt] == want, f"{desc}: row {r} cols {n0}..: got {got['q'][:cnt]}, expected {want}"
                assert all(x == 0 for x in got["q"][cnt:]), f"{desc}: slots past count not 0: {got['q']}"
        stats = OpStats(np.array(tbutil.unpack(hlay, int(dut.stats_hist.value)), dtype=np.int64),
                        int(dut.stats_zeros.value), int(dut.stats_overflow.value), int(dut.stats_underflow.value),
                        int(dut.stats_total.value))
        assert stats == res.stats, f"{desc}: statistics {stats.as_dict()}, expected {res.stats.as_dict()}"
        states = np.asarray(res.rng, dtype=np.uint32).copy()
        await tb.falling()
    dut._log.info("%d commands checked", n_cmds)


def _run(config, record_property, iters, sim=None):
    from reference.config import load_config
    from testbenches.cocotb import harness

    ComputeUnit = harness.require("hw.compute_unit", "ComputeUnit")
    cfg = load_config(config)
    bdir = harness.build_dir(config, "compute_unit", sim)
    src = harness.elaborate(lambda: ComputeUnit(cfg), "compute_unit", bdir)
    harness.run(module="testbenches.cocotb.test_compute_unit", top="compute_unit", config=config,
                block="compute_unit", sources=[src], record_property=record_property, cfg=cfg,
                extra_env={"DLU_ITERS": str(iters)}, sim=sim)


@pytest.mark.parametrize("config", CONFIGS)
def test_compute_unit(config, record_property):
    _run(config, record_property, iters=80)


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("rep", range(4))
def test_compute_unit_many_seeds(config, rep, record_property):
    _run(config, record_property, iters=800)

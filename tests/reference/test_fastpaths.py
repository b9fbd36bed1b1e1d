"""The fast paths of the golden model give exactly the results of the straightforward paths.

Issue #2 made dfp training faster with fused kernels; each is compared here, on seeded random
inputs and on the corner cases (exact ties, the most negative values, saturation, shifts of
every sign and size, every rounding mode incl. stochastic, every width), against the code it
replaced, which stays in the package as the definition:

- ``ops.convert_acc`` (int64 kernels, (hi, lo) pairs) vs ``ops.convert_acc_reference``
  (``round_shift``, ``saturate``/``requantize_left``, ``stats.analyse``);
- every op vs the same op built from ``align_terms``/``_int_matmul`` and the reference
  conversion;
- ``stats.next_frac``/``next_fracs`` vs the documented scan, ``stats.float_stats`` vs a
  per-value ``math.frexp`` definition;

Every random case derives from a printed seed, so a failure can be rerun alone.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference import ops
from reference.config import PRESETS, CoreConfig
from reference.formats import FRAC_MAX, FRAC_MIN, DfpFormat, DfpTensor, RoundingMode, Width, acc_width
from reference.ops import Op
from reference.rng import draw_beats, seed_states, xorshift32
from reference.stats import OpStats, float_stats, next_frac, next_fracs

CFG = CoreConfig()
TINY = PRESETS["tiny"]
SMALL_CNT = CoreConfig(counter_bits=16)  # counters that saturate on 2**16 values


def same(a: ops.OpResult, b: ops.OpResult) -> bool:
    return (np.array_equal(a.out.data, b.out.data) and a.out.data.dtype == b.out.data.dtype == np.int64
            and a.out.fmt == b.out.fmt and a.stats.as_dict() == b.stats.as_dict()
            and np.array_equal(a.rng, b.rng))


def corner_values(bits: int, rs: np.random.Generator, n: int) -> list[int]:
    """Values of at most ``bits`` bits (signed): extremes, powers of two +-1, ties for many shifts."""
    top = 1 << (bits - 1)
    vals = [0, 1, -1, 2, -2, top - 1, -top, -top + 1, top // 2, -top // 2]
    for k in range(0, bits - 1, max(1, bits // 24)):
        vals += [1 << k, -(1 << k), (1 << k) - 1, -(1 << k) + 1, 3 << k >> 1, -(3 << k >> 1)]
    for s in (1, 2, 5, 15, 16, 17, 30, 47):  # exact halves and quarters at shift s
        for q in (0, 1, 2, 3, -1, -2, -3, 5):
            v = (2 * q + 1) << (s - 1)
            if -top <= v < top:
                vals += [v, -v, v + 1, v - 1]
    vals += [int(x) for x in rs.integers(-top, top, n)] if bits <= 63 else \
        [int(rs.integers(-(1 << 62), 1 << 62)) << (bits - 63) | int(rs.integers(0, 1 << (bits - 63))) for _ in range(n)]
    return [v for v in vals if -top <= v < top]


def as_array(vals: list[int], cols: int) -> np.ndarray:
    rows = -(-len(vals) // cols)
    vals = vals + [0] * (rows * cols - len(vals))
    return np.array(vals, dtype=object).reshape(rows, cols)


SHIFTS = [-70, -40, -33, -20, -16, -9, -1, 0, 1, 2, 15, 16, 17, 18, 29, 30, 31, 32, 33, 34, 35, 40, 47, 48, 49,
          62, 63, 64, 79, 80, 81, 95, 140]


@pytest.mark.parametrize("op_width", list(Width))
@pytest.mark.parametrize("rounding", list(RoundingMode))
def test_convert_acc_equals_reference_on_corner_values(op_width, rounding):
    seed = 1000 * int(op_width) + int(rounding)
    rs = np.random.default_rng(seed)
    abits = acc_width(op_width)
    acc_obj = as_array(corner_values(abits, rs, 300), 13)
    for out_w in Width:
        if out_w.bits > op_width.bits:
            continue
        for shift in SHIFTS:
            f_out = int(rs.integers(FRAC_MIN, FRAC_MAX + 1))
            f_acc = f_out + shift
            fmt = DfpFormat(out_w, f_out)
            st = seed_states(int(rs.integers(0, 2**32)), CFG.rng_slots)
            ref = ops.convert_acc_reference(acc_obj, f_acc, abits, fmt, rounding, CFG, st, op_width)
            got = ops.convert_acc(acc_obj, f_acc, abits, fmt, rounding, CFG, st, op_width)
            assert same(got, ref), (seed, out_w, shift)
            # the (hi, lo) pair kernel directly, for every accumulator (object arrays beyond int64 included)
            hi = (acc_obj >> 32).astype(np.int64)
            lo = (acc_obj & ((1 << 32) - 1)).astype(np.int64)
            pair = ops._convert_pair(hi, lo, f_acc, abits, fmt, rounding, CFG, st, op_width)
            assert same(pair, ref), (seed, out_w, shift, "pair")
            if abits <= 48:
                small = ops._convert_int64(acc_obj.astype(np.int64), f_acc, abits, fmt, rounding, CFG, st, op_width)
                assert same(small, ref), (seed, out_w, shift, "int64")


@pytest.mark.parametrize("seed", range(6))
def test_convert_acc_int64_beyond_52_bits_and_saturating_counters(seed):
    rs = np.random.default_rng(seed)
    for _ in range(40):
        bits = int(rs.integers(1, 64))
        acc = rs.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(int(rs.integers(1, 300)), 7), dtype=np.int64)
        w = Width(int(rs.integers(0, 3)))
        fmt = DfpFormat(w, int(rs.integers(FRAC_MIN, FRAC_MAX + 1)))
        f_acc = fmt.frac + int(rs.choice(SHIFTS))
        rnd = RoundingMode(int(rs.integers(0, 3)))
        cfg = SMALL_CNT if rs.random() < 0.5 else TINY
        st = seed_states(int(rs.integers(0, 2**32)), cfg.rng_slots)
        got = ops.convert_acc(acc, f_acc, 80, fmt, rnd, cfg, st, Width.W32)
        ref = ops.convert_acc_reference(acc, f_acc, 80, fmt, rnd, cfg, st, Width.W32)
        assert same(got, ref), (seed, bits, f_acc, fmt, rnd)


def test_statistics_counters_saturate_like_analyse():
    cfg = SMALL_CNT
    acc = np.zeros((300, 300), dtype=np.int64)  # 90000 values > 2**16 - 1
    acc[:, :7] = 5
    acc[0, 0] = -(1 << 40)
    fmt = DfpFormat(Width.W8, 0)
    st = seed_states(1, cfg.rng_slots)
    got = ops.convert_acc(acc, 3, 48, fmt, RoundingMode.NEAREST_EVEN, cfg, st, Width.W16)
    ref = ops.convert_acc_reference(acc, 3, 48, fmt, RoundingMode.NEAREST_EVEN, cfg, st, Width.W16)
    assert same(got, ref)
    assert got.stats.total == cfg.counter_max and got.stats.zeros == cfg.counter_max


# -- the ops against their straightforward composition ----------------------------------------


def tensor(rs, width: Width, shape, frac=None) -> DfpTensor:
    f = DfpFormat(width, int(rs.integers(FRAC_MIN, FRAC_MAX + 1)) if frac is None else frac)
    kind = rs.integers(0, 3)
    if kind == 0:
        d = rs.integers(f.min_int, f.max_int + 1, shape)
    elif kind == 1:  # extremes
        d = rs.choice([f.min_int, f.max_int, 0, -1, 1, f.min_int + 1], shape)
    else:  # small values: nothing saturates, many ties after small shifts
        d = rs.integers(-4, 5, shape)
    return DfpTensor(d.astype(np.int64), f)


def reference_op(op: Op, srcs, out, rnd, cfg, rng, alpha=None) -> ops.OpResult:
    """Each op as it was written before the fast paths: exact accumulator, then convert_acc_reference."""
    w = max([t.fmt.width for t in srcs] + [out.width])
    abits = acc_width(w)
    if op == Op.MATMUL:
        a, b = srcs
        acc = ops._int_matmul(a.data, b.data, max(a.fmt.bits, b.fmt.bits))
        return ops.convert_acc_reference(acc, a.fmt.frac + b.fmt.frac, abits, out, rnd, cfg, rng, w)
    if op in (Op.ADD, Op.SUB):
        a, b = srcs
        (ta, tb), f_acc = ops.align_terms([(a.data, a.fmt), (b.data, b.fmt)], abits)
        acc = ta + tb if op == Op.ADD else ta - tb
        return ops.convert_acc_reference(np.broadcast_to(acc, a.shape), f_acc, abits, out, rnd, cfg, rng, w)
    if op == Op.MUL:
        a, b = srcs
        acc = np.broadcast_to(a.data.astype(object) * b.data.astype(object), a.shape)
        return ops.convert_acc_reference(acc, a.fmt.frac + b.fmt.frac, abits, out, rnd, cfg, rng, w)
    if op == Op.AXPY:
        x, y = srcs
        raw, frac = alpha
        prod = x.data.astype(object) * raw
        (tp, ty), f_acc = ops.align_terms([(prod, (frac + x.fmt.frac, 2 * w.bits)), (y.data, y.fmt)], abits)
        return ops.convert_acc_reference(tp + ty, f_acc, abits, out, rnd, cfg, rng, w)
    if op == Op.RELU:
        return ops.convert_acc_reference(np.maximum(srcs[0].data, 0), srcs[0].fmt.frac, abits, out, rnd, cfg, rng, w)
    if op == Op.RELU_BACKWARD:
        dy, x = srcs
        return ops.convert_acc_reference(np.where(x.data > 0, dy.data, 0), dy.fmt.frac, abits, out, rnd, cfg, rng, w)
    return ops.convert_acc_reference(srcs[0].data, srcs[0].fmt.frac, abits, out, rnd, cfg, rng, w)


def run_op(op: Op, srcs, out, rnd, cfg, rng, alpha=None) -> ops.OpResult:
    if op == Op.MATMUL:
        return ops.matmul(*srcs, out, rnd, cfg, rng)
    if op == Op.AXPY:
        return ops.axpy(alpha[0], alpha[1], *srcs, out, rnd, cfg, rng)
    fn = {Op.ADD: ops.add, Op.SUB: ops.sub, Op.MUL: ops.mul, Op.RELU: ops.relu,
          Op.RELU_BACKWARD: ops.relu_backward, Op.CONVERT: ops.convert}[op]
    return fn(*srcs, out, rnd, cfg, rng)


@pytest.mark.parametrize("op", list(Op))
@pytest.mark.parametrize("seed", range(4))
def test_ops_equal_their_reference_composition(op, seed):
    rs = np.random.default_rng([int(op), seed])
    for _ in range(30):
        wa, wb, wo = (Width(int(v)) for v in rs.integers(0, 3, 3))
        if op not in (Op.MATMUL, Op.CONVERT):
            wb = wa
        m, k, n = (int(v) for v in rs.integers(1, 40, 3))
        if op == Op.MATMUL:
            k = int(rs.choice([k, 64, 1024, 1025, 3000]))
            srcs = [tensor(rs, wa, (m, k)), tensor(rs, wb, (k, n))]
        elif op in (Op.ADD, Op.SUB, Op.MUL):
            srcs = [tensor(rs, wa, (m, n)), tensor(rs, wb, (1 if rs.random() < 0.3 else m, n))]
        elif op in (Op.AXPY, Op.RELU_BACKWARD):
            srcs = [tensor(rs, wa, (m, n)), tensor(rs, wb, (m, n))]
        else:
            srcs = [tensor(rs, wa, (m, n))]
        w = max([t.fmt.width for t in srcs] + [wo])
        alpha = None
        if op == Op.AXPY:
            lim = 1 << (w.bits - 1)
            alpha = (int(rs.choice([-lim, lim - 1, 1, -1, int(rs.integers(-lim, lim))])),
                     int(rs.integers(FRAC_MIN, FRAC_MAX + 1)))
        # output point positions around the accumulator's, so that shifts of every sign occur
        base = srcs[0].fmt.frac + (srcs[1].fmt.frac if op in (Op.MATMUL, Op.MUL) else 0)
        f_out = int(np.clip(base + int(rs.integers(-40, 40)), FRAC_MIN, FRAC_MAX))
        out = DfpFormat(wo, f_out)
        rnd = RoundingMode(int(rs.integers(0, 3)))
        cfg = TINY if rs.random() < 0.5 else CFG
        st = seed_states(int(rs.integers(0, 2**32)), cfg.rng_slots)
        got = run_op(op, srcs, out, rnd, cfg, st, alpha)
        ref = reference_op(op, srcs, out, rnd, cfg, st, alpha)
        assert same(got, ref), (op, seed, wa, wb, wo, out, rnd, alpha)


# -- generators, policy, float statistics ------------------------------------------------------


@pytest.mark.parametrize("n_beats", [1, 2, 255, 256, 257, 511, 513, 1500])
def test_draw_beats_across_table_blocks_equals_loop(n_beats):
    s0 = seed_states(n_beats * 7919, 32)
    for slots in (1, 8, 32):
        words, final = draw_beats(s0, n_beats, slots)
        s = s0.copy()
        for b in range(n_beats):
            s = xorshift32(s)
            assert np.array_equal(words[b], (s[:slots] >> 16).astype(np.int64)), (n_beats, slots, b)
        assert np.array_equal(final, s)


def scan_next_frac(hist, bits: int, current: int, cfg: CoreConfig, threshold: int) -> int:
    """The documented scan of :func:`reference.stats.next_frac`, in Python ints."""
    h = [int(v) for v in hist]
    n = sum(h)
    if n == 0:
        return current
    over, istar = 0, 0
    for i in range(len(h) - 1, -1, -1):
        if over * 2**16 > n * threshold:
            istar = i + 1
            break
        over += h[i]
    return max(FRAC_MIN, min(FRAC_MAX, bits - 2 - (cfg.hist_min_exp + istar)))


@pytest.mark.parametrize("seed", range(4))
def test_next_frac_equals_the_documented_scan(seed):
    rs = np.random.default_rng(seed)
    cases = []
    for _ in range(400):
        cb = int(rs.choice([16, 32, 48]))
        cfg = CoreConfig(counter_bits=cb, hist_bins=int(rs.choice([4, 64, 256])),
                         hist_min_exp=int(rs.integers(-128, 65)))
        nb = cfg.hist_bins
        kind = rs.integers(0, 4)
        if kind == 0:
            h = rs.integers(0, 1 << cb, nb)
        elif kind == 1:
            h = np.where(rs.random(nb) < 0.1, rs.integers(0, 100, nb), 0)
        elif kind == 2:
            h = np.zeros(nb, dtype=np.int64)
        else:  # an exact tie: over * 2**16 == n * threshold at the top bins
            h = np.zeros(nb, dtype=np.int64)
            h[-1], h[0] = 5, 65536 - 5
        thr = 5 if kind == 3 else int(rs.choice([0, 1, 66, 65535, int(rs.integers(0, 65536))]))
        w = Width(int(rs.integers(0, 3)))
        cur = int(rs.integers(FRAC_MIN, FRAC_MAX + 1))
        want = scan_next_frac(h, w.bits, cur, cfg, thr)
        assert next_frac(OpStats(h.astype(np.int64)), w, cur, cfg, thr) == want, (seed, h, thr)
        cases.append((cfg, h, w.bits, cur, thr, want))
    for cfg in {c[0] for c in cases}:  # many tensors at once
        group = [c for c in cases if c[0] == cfg and c[4] == 66] or [c for c in cases if c[0] == cfg][:1]
        thr = group[0][4]
        got = next_fracs(np.stack([c[1] for c in group]), np.array([c[2] for c in group]),
                         np.array([c[3] for c in group]), cfg, thr)
        assert got.tolist() == [scan_next_frac(c[1], c[2], c[3], cfg, thr) for c in group]


def float_bin(x: float, cfg: CoreConfig) -> int | None:
    if x == 0:
        return None
    m, ex = math.frexp(abs(x))
    e = ex - 1 - (1 if x < 0 and m == 0.5 else 0)
    return min(max(e - cfg.hist_min_exp, 0), cfg.hist_bins - 1)


@pytest.mark.parametrize("seed", range(3))
def test_float_stats_equals_per_value_definition(seed):
    rs = np.random.default_rng(seed)
    specials = [5e-324, -5e-324, -0.0, 0.0, 2.0**1023, -(2.0**1023), -1.0, -0.5, 0.5, 1.0, -0.75, 3.0, -(2.0**-60)]
    for _ in range(60):
        cfg = CoreConfig(hist_bins=int(rs.choice([4, 64, 256])), hist_min_exp=int(rs.integers(-128, 65)))
        x = np.concatenate([rs.standard_normal(int(rs.integers(0, 40))) * 2.0 ** int(rs.integers(-80, 80)),
                            rs.choice(specials, int(rs.integers(0, 20)))]).reshape(1, -1)
        st = float_stats(x, cfg)
        hist = [0] * cfg.hist_bins
        for v in x.ravel():
            b = float_bin(float(v), cfg)
            if b is not None:
                hist[b] += 1
        assert st.hist.tolist() == hist and st.zeros == int(np.sum(x == 0)) and st.total == x.size


@pytest.mark.parametrize("seed", range(4))
def test_large_arrays_fold_exponent_counts_like_analyse(seed):
    """From 2048 values on the histogram is folded from exponent counts: every clamp position."""
    rs = np.random.default_rng(100 + seed)
    for _ in range(12):
        bits = int(rs.choice([3, 20, 47, 70]))
        rows = int(rs.integers(2048 // 16, 4000 // 16))
        vals = corner_values(bits, rs, rows * 16)
        acc = as_array(vals[: rows * 16], 16)
        for cfg in (CFG, TINY, CoreConfig(hist_bins=4, hist_min_exp=60)):
            f_out = int(rs.integers(FRAC_MIN, FRAC_MAX + 1))
            f_acc = int(rs.integers(-100, 130))
            fmt = DfpFormat(Width(int(rs.integers(0, 3))), f_out)
            rnd = RoundingMode(int(rs.integers(0, 3)))
            st = seed_states(int(rs.integers(0, 2**32)), cfg.rng_slots)
            ref = ops.convert_acc_reference(acc, f_acc, 80, fmt, rnd, cfg, st, Width.W32)
            assert same(ops.convert_acc(acc, f_acc, 80, fmt, rnd, cfg, st, Width.W32), ref), (seed, bits, f_acc)
            hi = (acc >> 32).astype(np.int64)
            lo = (acc & ((1 << 32) - 1)).astype(np.int64)
            assert same(ops._convert_pair(hi, lo, f_acc, 80, fmt, rnd, cfg, st, Width.W32), ref), (seed, bits, f_acc)
            if bits <= 47:
                data = np.clip(acc.astype(np.int64), -(1 << 31), (1 << 31) - 1)
                x = DfpTensor(data, DfpFormat(Width.W32, f_acc % 60))
                assert same(ops.relu(x, fmt, rnd, cfg, st), reference_op(Op.RELU, [x], fmt, rnd, cfg, st))


@pytest.mark.parametrize("k", [1, 63, 64, 65, 2000])
@pytest.mark.parametrize("fill", ["min", "max", "mixed"])
def test_32bit_matmul_pairs_at_the_worst_case_magnitudes(k, fill):
    """Every product at +-2**62 and K up to the split bounds: the partial sums stay exact."""
    f = DfpFormat(Width.W32, 0)
    lo, hi = f.min_int, f.max_int
    rs = np.random.default_rng(k)
    vals = {"min": np.full((3, k), lo), "max": np.full((3, k), hi), "mixed": rs.choice([lo, hi, lo + 1, -1], (3, k))}
    a = DfpTensor(vals[fill], f)
    for b_rows in (np.full((k, 4), lo), rs.choice([lo, hi, 1, -1], (k, 4))):
        b = DfpTensor(b_rows, f)
        for out in (DfpFormat(Width.W32, -32), DfpFormat(Width.W32, -20), DfpFormat(Width.W8, -32)):
            st = seed_states(k, CFG.rng_slots)
            for rnd in RoundingMode:
                got = ops.matmul(a, b, out, rnd, CFG, st)
                assert same(got, reference_op(Op.MATMUL, [a, b], out, rnd, CFG, st)), (k, fill, out, rnd)
                bt, at = DfpTensor(b.data.T.copy(), f), DfpTensor(a.data.T.copy(), f)  # the other operand split
                assert same(ops.matmul(bt, at, out, rnd, CFG, st), reference_op(Op.MATMUL, [bt, at], out, rnd, CFG, st))


@pytest.mark.parametrize("out_w", list(Width))
def test_range_shortcut_at_its_boundary(out_w):
    """Large arrays whose largest exponent decides that nothing saturates: every shift around the
    boundary, values at +-2**L, all-(-1) arrays (m = 0), for both accumulator representations."""
    rs = np.random.default_rng(int(out_w))
    for top in (0, 1, 5, out_w.bits - 2, out_w.bits - 1, out_w.bits, 20, 40):
        edge = [-(1 << top), (1 << top) - 1, -1, 0] if top else [-1, 0]
        acc = np.array(edge * 512 + [int(v) for v in rs.integers(-(1 << top), 1 << top, 2048)], dtype=object)
        acc = acc.reshape(-1, 32)
        for shift in range(-out_w.bits - 2, top + 3):
            for rnd in RoundingMode:
                fmt = DfpFormat(out_w, 10)
                st = seed_states(top, CFG.rng_slots)
                ref = ops.convert_acc_reference(acc, 10 + shift, 80, fmt, rnd, CFG, st, Width.W32)
                assert same(ops.convert_acc(acc, 10 + shift, 80, fmt, rnd, CFG, st, Width.W32), ref), (top, shift, rnd)
                hi = (acc >> 32).astype(np.int64)
                lo = (acc & ((1 << 32) - 1)).astype(np.int64)
                got = ops._convert_pair(hi, lo, 10 + shift, 80, fmt, rnd, CFG, st, Width.W32)
                assert same(got, ref), (top, shift, rnd, "pair")
    a = np.full((64, 64), -1, dtype=np.int64)  # convert keeps its input intact when nothing changes
    x = DfpTensor(a, DfpFormat(out_w, 3))
    res = ops.convert(x, DfpFormat(out_w, 3), RoundingMode.NEAREST_EVEN, CFG, seed_states(1, CFG.rng_slots))
    assert res.out.data is not a and np.array_equal(res.out.data, a)


def test_next_fracs_beyond_48_bit_counts_takes_the_scan():
    rs = np.random.default_rng(9)
    cfg = CoreConfig(counter_bits=48)
    for _ in range(200):
        h = rs.integers(0, 1 << 55, cfg.hist_bins)  # sums stay below 2**63: the scan's int64 sum is exact
        h[rs.integers(0, cfg.hist_bins, 5)] = rs.integers(0, 3, 5)
        thr = int(rs.integers(0, 1 << 16))
        cur = int(rs.integers(FRAC_MIN, FRAC_MAX + 1))
        assert next_frac(OpStats(h), Width.W16, cur, cfg, thr) == scan_next_frac(h, 16, cur, cfg, thr)


def test_database_saturates_every_counter_on_its_own():
    """Counters that are not consistent with each other (as a hardware test drives them) saturate alone."""
    from reference.stats import Database

    cfg = CoreConfig(counter_bits=16, hist_bins=4)
    db = Database(cfg)
    rs = np.random.default_rng(4)
    want = {"hist": [0] * 4, "zeros": 0, "overflow": 0, "underflow": 0, "total": 0}
    for _ in range(30):
        s = OpStats(rs.integers(0, 30000, 4), *(int(v) for v in rs.integers(0, 30000, 4)))
        db.accumulate(3, s)
        d = s.as_dict()
        want = {k: ([min(a + b, cfg.counter_max) for a, b in zip(want[k], d[k], strict=True)] if k == "hist"
                    else min(want[k] + d[k], cfg.counter_max)) for k in want}
        assert db.read(3).as_dict() == want


@pytest.mark.parametrize("seed", range(6))
def test_32bit_matmul_product_choice_by_magnitude(seed):
    """One product, one operand split or both split, chosen from the operands' magnitudes: all exact."""
    rs = np.random.default_rng(300 + seed)
    f = DfpFormat(Width.W32, 5)
    for k in (1, 64, 65, 200, 2048, 65536 // 8):
        for abits, bbits in ((1, 31), (2, 20), (20, 20), (31, 2), (26, 32), (32, 32), (32, 1)):
            m, n = int(rs.integers(1, 4)), int(rs.integers(1, 4))
            a = DfpTensor(rs.integers(-(1 << (abits - 1)), 1 << (abits - 1), (m, k)), f)
            b = DfpTensor(rs.integers(-(1 << (bbits - 1)), 1 << (bbits - 1), (k, n)), f)
            out = DfpFormat(Width(int(rs.integers(0, 3))), int(rs.integers(-32, 20)))
            rnd = RoundingMode(int(rs.integers(0, 3)))
            st = seed_states(k + abits, CFG.rng_slots)
            assert same(ops.matmul(a, b, out, rnd, CFG, st), reference_op(Op.MATMUL, [a, b], out, rnd, CFG, st)), \
                (seed, k, abits, bbits)
    ones = DfpTensor(np.ones((1, 2048), dtype=np.int64), DfpFormat(Width.W32, 0))  # a bias gradient
    dy = DfpTensor(rs.choice([f.min_int, f.max_int], (2048, 8)), f)
    out = DfpFormat(Width.W32, -10)
    st = seed_states(1, CFG.rng_slots)
    assert same(ops.matmul(ones, dy, out, RoundingMode.NEAREST_EVEN, CFG, st),
                reference_op(Op.MATMUL, [ones, dy], out, RoundingMode.NEAREST_EVEN, CFG, st))

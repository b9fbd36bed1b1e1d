"""The compiled kernels of :mod:`reference.kernels` equal their NumPy twins bit for bit.

``ops._convert_fused`` (one compiled call: form the accumulator, bin it, round, saturate) is
compared with forming the same accumulator in NumPy and converting it with
``ops._convert_int64_numpy`` (the fused NumPy passes, themselves compared with the plain
reference conversion in ``test_fastpaths.py``), and the (hi, lo) pair kernel of 80-bit
accumulators likewise with ``ops._convert_pair_numpy``, for every kind of command, every rounding mode,
every width and shifts of every sign and size, on corner values (exact ties, the most negative
values, values that saturate) and seeded random ones. ``xorshift_beats`` is compared with the
documented one-step-per-beat loop in ``test_rng.py``; here its chaining and edge sizes.
"""

from __future__ import annotations

import numpy as np
import pytest

from reference import kernels, ops
from reference.config import CoreConfig
from reference.formats import FRAC_MAX, FRAC_MIN, DfpFormat, DfpTensor, RoundingMode, Width
from reference.rng import draw_beats, seed_states, xorshift32

CFG = CoreConfig()
SMALL_CNT = CoreConfig(counter_bits=16)  # counters that saturate on 2**16 values

SHIFTS = [-70, -40, -33, -20, -9, -1, 0, 1, 2, 15, 16, 17, 18, 24, 29, 30, 31, 32, 33, 47, 48, 49, 62, 63, 64, 79, 80,
          81, 95, 140]


def same(a: ops.OpResult, b: ops.OpResult) -> bool:
    return (np.array_equal(a.out.data, b.out.data) and a.out.data.dtype == b.out.data.dtype == np.int64
            and a.out.fmt == b.out.fmt and a.stats.as_dict() == b.stats.as_dict()
            and np.array_equal(a.rng, b.rng))


def corner(bits: int, rs: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """int64 values of at most ``bits`` bits: extremes, zeros, +-1, exact halves at many shifts, random."""
    top = 1 << (bits - 1)
    vals = [0, 0, 1, -1, top - 1, -top, -top + 1]
    for s in (1, 2, 5, 16, 17, 30):
        vals += [v for q in (0, 1, -1, -2, 3) for v in ((2 * q + 1) << (s - 1), -((2 * q + 1) << (s - 1)))
                 if -top <= v < top]
    n = shape[0] * shape[1]
    out = rs.integers(-top, top, n)
    out[rs.random(n) < 0.2] = 0
    k = min(len(vals), n)
    out[rs.permutation(n)[:k]] = vals[:k]
    return out.reshape(shape)


def numpy_twin(kind: int, a, b, alpha: int, da: int, db: int, sign: int, f_acc: int, out_fmt: DfpFormat,
               rounding: RoundingMode, cfg: CoreConfig, rng, op_width: Width) -> ops.OpResult:
    if kind == kernels.ACC:
        acc = a
    elif kind == kernels.SUM:
        acc = ops._shift_int64(a * alpha, da) + sign * ops._shift_int64(b, db)
    elif kind == kernels.RELU:
        acc = np.maximum(a, 0)
    elif kind == kernels.RELU_BACKWARD:
        acc = np.where(b > 0, a, 0)
    else:
        if kind == kernels.PAIR:
            hi, lo = a, b
        else:
            hi, lo = ops._pair_addsub(ops._pair_shifted(a * alpha, da), ops._pair_shifted(b, db), sign)
        hi, lo = (np.ascontiguousarray(np.broadcast_to(v, a.shape)) for v in (hi, lo))
        return ops._convert_pair_numpy(hi, lo, f_acc, 80, out_fmt, rounding, cfg, rng, op_width)
    acc = np.ascontiguousarray(np.broadcast_to(acc, a.shape))
    return ops._convert_int64_numpy(acc, f_acc, 48, out_fmt, rounding, cfg, rng, op_width)


KINDS = [kernels.ACC, kernels.SUM, kernels.RELU, kernels.RELU_BACKWARD, kernels.PAIR, kernels.PAIR_SUM]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rounding", list(RoundingMode))
@pytest.mark.parametrize("cfg", [CFG, SMALL_CNT], ids=["counters32", "counters16"])
def test_fused_conversion_equals_numpy_twin(kind, rounding, cfg):
    seed = 100 * kind + 10 * int(rounding) + (cfg is SMALL_CNT)
    rs = np.random.default_rng(seed)
    rng = seed_states(int(rs.integers(0, 2**32)), cfg.rng_slots)
    for case in range(40):
        op_width = Width(int(rs.integers(0, 3)))
        out_w = Width(int(rs.integers(0, int(op_width) + 1)))
        shape = (int(rs.integers(1, 70)), int(rs.integers(1, 90)))
        if case == 0 and cfg is SMALL_CNT:
            shape = (300, 250)  # more values than the 16-bit counters hold
        bits = int(rs.choice([3, 12, 30, 47, 51])) if kind == kernels.ACC else int(rs.choice([2, 8, 16, 20]))
        a = corner(bits, rs, shape)
        b = np.zeros((1, 1), dtype=np.int64)
        alpha = da = db = 0
        sign = 1
        if kind == kernels.SUM:
            b = corner(bits, rs, (1 if rs.random() < 0.4 else shape[0], shape[1]))
            alpha = int(rs.integers(-(1 << 15), 1 << 15)) if rs.random() < 0.5 else 1
            da, db = (int(v) for v in rs.integers(-70, 20, 2))
            sign = 1 if rs.random() < 0.5 else -1
        elif kind == kernels.RELU_BACKWARD:
            b = corner(bits, rs, shape)
        elif kind == kernels.PAIR:  # hi below 2**51, lo in [0, 2**32)
            a = corner(int(rs.choice([2, 20, 33, 52])), rs, shape)
            b = rs.integers(0, 1 << 32, shape)
            b[rs.random(shape) < 0.3] = 0
        elif kind == kernels.PAIR_SUM:  # 32-bit operands: the sum below 2**79
            a, b = corner(32, rs, shape), corner(32, rs, (1 if rs.random() < 0.4 else shape[0], shape[1]))
            alpha = int(rs.integers(-(1 << 31), 1 << 31)) if rs.random() < 0.7 else 1
            da, db = int(rs.integers(-70, 16)), int(rs.integers(-70, 46))
            sign = 1 if rs.random() < 0.5 else -1
        f_out = int(rs.integers(FRAC_MIN, FRAC_MAX + 1))
        shift = int(rs.choice(SHIFTS))
        out_fmt = DfpFormat(out_w, f_out)
        f_acc = f_out + shift
        got = ops._convert_fused(kind, a, f_acc, out_fmt, rounding, cfg, rng, op_width, b=b, alpha=alpha, da=da,
                                 db=db, sign=sign)
        want = numpy_twin(kind, a, b, alpha, da, db, sign, f_acc, out_fmt, rounding, cfg, rng, op_width)
        assert same(got, want), (seed, case, shape, shift, out_w)
        rng = got.rng


def test_pair_beyond_2_52_is_left_to_the_exact_path():
    """|hi| >= 2**52 (beyond every accumulator): the kernel declines and the NumPy path gives the result."""
    hi = np.array([[1, 1 << 52, -3]], dtype=np.int64)  # v = 2**32 + 5, 2**84, -3 * 2**32 + 7
    lo = np.array([[5, 0, 7]], dtype=np.int64)
    assert kernels.convert(kernels.PAIR, hi, 40, RoundingMode.FLOOR, None, 32, 0, 64, b=lo) is None
    words = seed_states(3, CFG.rng_slots)
    got = ops._convert_pair(hi, lo, 60, 80, DfpFormat(Width.W32, 20), RoundingMode.FLOOR, CFG, words, Width.W32)
    want = ops._convert_pair_numpy(hi, lo, 60, 80, DfpFormat(Width.W32, 20), RoundingMode.FLOOR, CFG, words,
                                   Width.W32)
    assert same(got, want) and got.out.data.tolist() == [[0, (1 << 31) - 1, -1]]  # floor(v / 2**40), saturated


def test_fused_conversion_reads_strided_operands():
    """Transposed and sliced operands (any memory layout) give the result of contiguous copies."""
    rs = np.random.default_rng(7)
    a = rs.integers(-(1 << 20), 1 << 20, (40, 30))
    words = seed_states(9, CFG.rng_slots)
    for view in (a.T, a[::2, 3:], a[:, ::-3]):
        for rounding in RoundingMode:
            got = ops._convert_fused(kernels.ACC, view, 20, DfpFormat(Width.W16, 4), rounding, CFG, words, Width.W16)
            want = ops._convert_fused(kernels.ACC, np.ascontiguousarray(view), 20, DfpFormat(Width.W16, 4),
                                      rounding, CFG, words, Width.W16)
            assert same(got, want)


def test_fused_conversion_counts_against_hand_computed_values():
    """Four values at 16 bits, shift 2, nearest even: each counter by hand."""
    a = np.array([[0, 6, -(1 << 20), 1]], dtype=np.int64)  # 6/4 = 1.5 -> 2; -2**18 saturates; 1/4 -> 0
    q, hist, zeros, overflow, underflow = kernels.convert(kernels.ACC, a, 2, RoundingMode.NEAREST_EVEN, None, 16,
                                                          0, 32)
    assert q.tolist() == [[0, 2, -(1 << 15), 0]]
    assert (zeros, overflow, underflow) == (1, 1, 1)
    # p(6) = 2, p(-2**20) = 19, p(1) = 0: bins 2, 19 and 0 with base 0
    assert np.flatnonzero(hist).tolist() == [0, 2, 19] and int(hist.sum()) == 3


@pytest.mark.parametrize("n_beats, slots", [(0, 4), (1, 0), (1, 32), (33, 8), (1000, 32)])
def test_xorshift_beats_steps_every_generator_once_per_beat(n_beats, slots):
    states = seed_states(0xDEADBEEF, 32)
    words, final = draw_beats(states, n_beats, slots)
    s = states.copy()
    for b in range(n_beats):
        s = xorshift32(s)
        assert np.array_equal(words[b], (s[:slots] >> 16).astype(np.int64))
    assert words.shape == (n_beats, slots) and words.dtype == np.int64
    assert np.array_equal(final, s) and final.dtype == np.uint32


@pytest.mark.parametrize("seed", range(4))
def test_32bit_matmul_kernels_equal_the_pair_product(seed):
    """32-bit products through split_pieces (K <= 2048), the three-product and the one-split parts
    (larger K) equal _matmul_pair converted by _convert_pair_numpy, at the most negative values."""
    rs = np.random.default_rng(500 + seed)
    f = DfpFormat(Width.W32, 7)
    for k in (1, 9, 144, 2048, 2049, 3000):
        for small_b in (False, True):
            m, n = int(rs.integers(1, 30)), int(rs.integers(1, 30))
            a = corner(32, rs, (m, k))
            b = corner(15 if small_b else 32, rs, (k, n))  # small b: only a is split beyond 2048
            out = DfpFormat(Width.W32, int(rs.integers(-20, 60)))
            rnd = RoundingMode(int(rs.integers(0, 3)))
            words = seed_states(int(rs.integers(0, 2**32)), CFG.rng_slots)
            got = ops.matmul(DfpTensor(a, f), DfpTensor(b, f), out, rnd, CFG, words)
            hi, lo = ops._matmul_pair(a, b)
            want = ops._convert_pair_numpy(hi, lo, 14, 80, out, rnd, CFG, words, Width.W32)
            assert same(got, want), (seed, k, small_b)


#: Values at the edges of the balanced 16-bit digits of ``kernels.split_pieces`` (low digit -2**15,
#: 2**15 - 1, carries into the high digit) and of the 32-bit range.
BALANCED = [0, 1, -1, 0x7FFF, 0x8000, -0x8000, -0x8001, 0xFFFF, 0x10000, 0x18000, -0x18000, (1 << 31) - 1,
            -(1 << 31), (1 << 31) - 0x8000, (1 << 31) - 0x8001, -(1 << 31) + 0x8000]


def with_values(x: np.ndarray, vals: list[int], rs: np.random.Generator) -> np.ndarray:
    x = x.copy().reshape(-1)
    k = min(len(vals), x.size)
    x[rs.permutation(x.size)[:k]] = rs.permutation(vals)[:k]
    return x.reshape(-1 if x.ndim == 1 else x.shape)


@pytest.mark.parametrize("seed", range(3))
def test_32bit_matmul_paths_equal_the_pair_product(seed, monkeypatch):
    """Every path of ``ops._matmul32`` equals _matmul_pair converted by _convert_pair_numpy: one product of
    operands with shared trailing zeros (an image's few bits high in the word), at every rounding mode and
    at shifts either side of the zeros; two balanced 16-bit pieces of the smaller operand, or of the larger
    one when only its cut is that short; three 11-bit pieces; with either operand the smaller. Each case
    checks that it took the path it is meant for."""
    taken: list[tuple[int, bool]] = []
    real = ops._plan

    def spy(*args):
        taken.append(real(*args))
        return taken[-1]

    monkeypatch.setattr(ops, "_plan", spy)
    rs = np.random.default_rng(900 + seed)
    fa, fb = DfpFormat(Width.W32, 30), DfpFormat(Width.W32, 20)  # F_acc = 50
    cases = []
    for m, k, n in ((300, 9, 8), (9, 300, 8), (8, 9, 300)):
        img = rs.integers(0, 17, (m, k)) << 26  # tz 26 (an odd pixel is almost sure to occur)
        img[0, 0] = 3 << 26
        cases.append(("tz", img, corner(32, rs, (k, n)), (1, None)))
        cases.append(("tz", corner(32, rs, (n, m)), img, (1, None)))
    for k in (1, 9, 100):
        for a_small in (True, False):
            m, n = (5, 40) if a_small else (40, 5)
            a = with_values(corner(32, rs, (m, k)), BALANCED, rs).reshape(m, k)
            b = with_values(corner(32, rs, (k, n)), BALANCED, rs).reshape(k, n)
            a[0, 0], b[0, 0] = -(1 << 31), (1 << 31) - 1  # whichever is cut, it needs pieces
            cases.append(("two", a, b, (2, True)))
    for a_small in (True, False):
        # the larger operand's L1 norms (about 512 * 2**30) forbid two pieces of the smaller one; the
        # smaller one's (about 512 * 2**24) allow two pieces of the larger
        m, k, n = (5, 512, 40) if a_small else (40, 512, 5)
        a, b = corner(32, rs, (m, k)), corner(32, rs, (k, n))
        small = a if a_small else b
        small //= 1 << 6
        small.flat[0] = -(1 << 31)
        cases.append(("two, larger cut", a, b, (2, False)))
    for a_small in (True, False):
        m, n = (5, 40) if a_small else (40, 5)
        k = 1500  # L1 norms about K * 2**30 > 2**38
        cases.append(("three", corner(32, rs, (m, k)), corner(32, rs, (k, n)), (3, True)))
    for name, a, b, (want_n, want_small) in cases:
        for rnd in RoundingMode:
            shifts = (-13, -1, 0, 1, 10, 25, 26, 27, 42, 60, 82) if name == "tz" else (-13, 0, 1, 17, 33, 82)
            for shift in shifts:
                out = DfpFormat(Width.W32, 50 - shift)  # F_out from -32 to 63
                words = seed_states(int(rs.integers(0, 2**32)), CFG.rng_slots)
                del taken[:]
                got = ops.matmul(DfpTensor(a, fa), DfpTensor(b, fb), out, rnd, CFG, words)
                hi, lo = ops._matmul_pair(a, b)
                want = ops._convert_pair_numpy(hi, lo, 50, 80, out, rnd, CFG, words, Width.W32)
                assert len(taken) == 1 and taken[0][0] == want_n, (seed, name, a.shape, b.shape, taken)
                assert want_small is None or taken[0][1] == want_small, (seed, name, a.shape, b.shape, taken)
                assert same(got, want), (seed, name, a.shape, b.shape, rnd, shift)


def test_piece_count_bounds():
    """_pieces at its bounds: one product while l1 * smax < 2**(52 + tz), two pieces up to l1 = 2**38."""
    assert ops._pieces((1 << 38) - 1, 1 << 14, 0) == 1
    assert ops._pieces(1 << 38, 1 << 14, 0) == 2
    assert ops._pieces(1 << 38, 1 << 14, 1) == 1
    assert ops._pieces(1 << 38, 1 << 31, 0) == 2
    assert ops._pieces((1 << 38) + 1, 1 << 31, 0) == 3
    assert ops._plan(1 << 40, 1 << 31, 1 << 30, 1 << 31, 0) == (2, False)  # only the larger's cut is short
    assert ops._plan(1 << 30, 1 << 31, 1 << 30, 1 << 31, 0) == (2, True)  # a tie cuts the smaller
    assert ops._plan(1 << 40, 1 << 31, 1 << 20, 1 << 31, 0) == (1, False)  # the smaller's norms prove it whole
    assert ops._trailing_zeros(-(1 << 31)) == 31 and ops._trailing_zeros(12) == 2 and ops._trailing_zeros(0) == 0


def float_corners(rs: np.random.Generator, n: int) -> np.ndarray:
    """Floats with every exponent, exact powers of two of both signs, halves, -0.0, subnormals, huge values."""
    e = rs.integers(-1080, 1000, n) + int(rs.choice([0, -20, 20]))
    x = rs.choice([-1.0, 1.0], n) * np.ldexp(1.0 + rs.random(n), e)
    special = [0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 2.0**-40, -(2.0**-40), 2.0**63, -(2.0**63), 1.5, 2.5, -2.5,
               -(2.0**31), 2.0**31 - 0.5, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7e308, -1.7e308]
    k = min(n, len(special))
    x[rs.permutation(n)[:k]] = rs.permutation(special)[:k]
    x[rs.random(n) < 0.1] = 0.0
    return x


@pytest.mark.parametrize("seed", range(4))
def test_float_kernels_equal_numpy(seed):
    """kernels.float_hist and quantize_nearest (the host's statistics and loads) equal the NumPy
    definitions (stats._float_stats_numpy, formats.quantize_float) on floats of every magnitude."""
    from reference.formats import quantize_float
    from reference.stats import _float_stats_numpy, float_stats

    rs = np.random.default_rng(1300 + seed)
    for cfg in (CFG, CoreConfig(hist_bins=8, hist_min_exp=-3)):
        for n in (1, 7, 3000):
            x = float_corners(rs, n)
            for _ in range(2):
                x = rs.permutation(x).reshape(-1, 1) if n > 1 else x.reshape(1, 1)
                assert float_stats(x, cfg).as_dict() == _float_stats_numpy(x, cfg).as_dict(), (seed, n)
            for w in Width:
                for frac in (FRAC_MIN, -5, 0, 7, 30, FRAC_MAX):
                    fmt = DfpFormat(w, frac)
                    got = kernels.quantize_nearest(x.reshape(-1), 2.0**frac, fmt.min_int, fmt.max_int)
                    want = quantize_float(x, fmt, RoundingMode.NEAREST_EVEN)[0].reshape(-1)
                    assert got.tolist() == want.tolist(), (seed, n, w, frac)
    for bad in (np.nan, np.inf, -np.inf):
        assert kernels.float_hist(np.array([1.0, bad]), 64, -40) is None
        assert kernels.quantize_nearest(np.array([1.0, bad]), 1.0, -128, 127) is None


# Host data movement of the layers: each compiled kernel against its NumPy definition in reference.layers.
POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 3, 0), (3, 3, 2), (4, 2, 3)]


def _pool(k, s, p, h=7, w=6, c=3):
    from reference.layers import MaxPool2d
    return MaxPool2d("pool", (h, w, c), in_act=0, in_err=1, kernel=k, stride=s, pad=p)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("k", "s", "p"), POOLS)
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_maxpool_kernel_equals_numpy_argmax(seed, k, s, p, dtype):
    pool = _pool(k, s, p)
    rng = np.random.default_rng(seed)
    n = 2
    # few distinct values: many ties, which both must break to the first maximum in (ky, kx) order
    x = rng.integers(-3, 3, size=(n * pool.h * pool.w, pool.c)).astype(dtype)
    if dtype == np.float32:
        x[rng.random(x.shape) < 0.1] = -np.inf
        x[rng.random(x.shape) < 0.05] = np.nan
    fill = np.iinfo(x.dtype).min if x.dtype.kind == "i" else -np.inf
    arg, sel = kernels.maxpool_nhwc(x, n, pool.h, pool.w, pool.c, k, s, p, pool.ho, pool.wo, x.dtype.type(fill))
    want_arg, want_sel = pool.maxpool_numpy(x)
    assert np.array_equal(arg, want_arg)
    assert sel.dtype == want_sel.dtype and np.array_equal(sel, want_sel, equal_nan=dtype == np.float32)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("k", "s", "p"), POOLS)
@pytest.mark.parametrize("per_elem", [False, True])
def test_pool_scatter_kernel_equals_numpy(seed, k, s, p, per_elem):
    pool = _pool(k, s, p)
    rng = np.random.default_rng(seed)
    n, m = 2, -(-k // s)
    rows = n * pool.ho * pool.wo
    pick = None if per_elem else rng.integers(0, k * k, size=(n, pool.ho, pool.wo, pool.c))
    d = rng.integers(-2**40, 2**40, size=(rows * pool.c, k * k) if per_elem else (rows, pool.c))
    want = pool.scatter_numpy(d, pick)
    pk = np.zeros((1, 1, 1, 1), dtype=np.int64) if pick is None else pick
    got = [kernels.pool_scatter(d, pk, per_elem, n, pool.h, pool.w, pool.c, k, s, p, pool.ho, pool.wo, m, u, v)
           for u in range(min(m, pool.ho)) for v in range(min(m, pool.wo))]
    assert len(got) == len(want)
    for g, w_ in zip(got, want, strict=True):
        assert g.dtype == w_.dtype and np.array_equal(g, w_)

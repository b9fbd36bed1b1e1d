"""Every operation at every width combination and rounding mode, against a Python-int oracle.

The oracle (:class:`Model`) is written from the documented definitions in ``reference/ops.py``
and ``docs/numerics.md``, one value at a time with Python ints and Fractions:

- W_op = widest of the inputs and the output; accumulator = 2 * W_op + 16 bits;
  V = lanes * 32 / W_op values per beat.
- matmul / mul: F_acc = F_a + F_b. add / sub / axpy: the alignment rule
  F_acc = min(max_i F_i, min_i (F_i + acc_bits - 1 - w_i)), terms shifted left, or right
  with floor; axpy's product term has F = F_alpha + F_x and width 2 * W_op.
- conversion: shift = F_acc - F_out; shift <= 0 multiplies exactly, shift > 0 rounds; then
  saturate. Stochastic: row-major beats; on each beat of a conversion that drops bits every
  generator steps once and slot j uses generator j's upper 16 bits.
- statistics of the exact accumulator values (bins by exponent msb - F_acc, zeros, overflow,
  underflow, total).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reference import ops
from reference.config import PRESETS, CoreConfig
from reference.formats import FRAC_MAX, FRAC_MIN, MAX_K, DfpFormat, DfpTensor, RoundingMode, Width
from reference.rng import seed_states

from . import oracle

TINY = PRESETS["tiny"]  # 2 lanes: V = 8, 4, 2 values per beat at 8, 16, 32 bits
MODES = list(RoundingMode)
WIDTHS = list(Width)


class Model:
    """Python-int model of the DLU's output stage and generator state."""

    def __init__(self, cfg: CoreConfig, seed: int):
        self.cfg = cfg
        self.states = oracle.seed_states(seed, cfg.lanes * 4)

    def convert(self, acc: list[list[int]], f_acc: int, w_op: int, out: DfpFormat, mode: RoundingMode):
        cfg = self.cfg
        v = cfg.lanes * 32 // w_op
        shift = f_acc - out.frac
        q, over = [], []
        for row in acc:
            qrow, orow = [], []
            for b0 in range(0, len(row), v):
                words = None
                if mode == RoundingMode.STOCHASTIC and shift > 0:
                    self.states = [oracle.xorshift32(s) for s in self.states]
                    words = [s >> 16 for s in self.states]
                for j, x in enumerate(row[b0:b0 + v]):
                    r = oracle.round_div_pow2(x, shift, mode, words[j] if words else None)
                    s, o = oracle.saturate(r, out.bits)
                    qrow.append(s)
                    orow.append(o)
            q.append(qrow)
            over.append(orow)
        flat = [x for row in acc for x in row]
        fq = [x for row in q for x in row]
        hist = [0] * cfg.hist_bins
        for x in flat:
            if x:
                hist[oracle.hist_bin(x, f_acc, cfg.hist_min_exp, cfg.hist_bins)] += 1
        stats = dict(hist=hist, zeros=flat.count(0), overflow=sum(map(sum, over)),
                     underflow=sum(1 for x, y in zip(flat, fq, strict=True) if x and not y), total=len(flat))
        return q, stats


def _align(terms: list[tuple[int, int]], acc_bits: int) -> tuple[int, list[int]]:
    """F_acc and shift per term for terms given as (F_i, w_i)."""
    f_acc = min(max(f for f, _ in terms), min(f + acc_bits - 1 - w for f, w in terms))
    return f_acc, [f_acc - f for f, _ in terms]


def _sh(x: int, d: int) -> int:
    return x * 2**d if d >= 0 else x >> -d  # Python >> on ints is floor division


def _rows(t: DfpTensor) -> list[list[int]]:
    return [[int(v) for v in row] for row in t.data]


def expected(op: str, args: list, out: DfpFormat, mode: RoundingMode, model: Model):
    """Oracle result (q rows, stats dict) of ``op``."""
    fmts = [a.fmt for a in args if isinstance(a, DfpTensor)] + [out]
    w_op = max(f.bits for f in fmts)
    abits = 2 * w_op + 16
    if op == "matmul":
        a, b = _rows(args[0]), _rows(args[1])
        acc = [[sum(a[m][k] * b[k][n] for k in range(len(b))) for n in range(len(b[0]))] for m in range(len(a))]
        f_acc = args[0].fmt.frac + args[1].fmt.frac
    elif op in ("add", "sub", "mul"):
        a, b = _rows(args[0]), _rows(args[1])
        bb = [b[0 if len(b) == 1 else m] for m in range(len(a))]
        if op == "mul":
            acc = [[x * y for x, y in zip(ra, rb, strict=True)] for ra, rb in zip(a, bb, strict=True)]
            f_acc = args[0].fmt.frac + args[1].fmt.frac
        else:
            f_acc, (da, db) = _align([(args[0].fmt.frac, args[0].fmt.bits), (args[1].fmt.frac, args[1].fmt.bits)],
                                     abits)
            sgn = 1 if op == "add" else -1
            acc = [[_sh(x, da) + sgn * _sh(y, db) for x, y in zip(ra, rb, strict=True)]
                   for ra, rb in zip(a, bb, strict=True)]
    elif op == "axpy":
        alpha, afrac, x, y = args
        f_acc, (dp, dy) = _align([(afrac + x.fmt.frac, 2 * w_op), (y.fmt.frac, y.fmt.bits)], abits)
        acc = [[_sh(alpha * p, dp) + _sh(q, dy) for p, q in zip(rx, ry, strict=True)]
               for rx, ry in zip(_rows(x), _rows(y), strict=True)]
    elif op == "relu":
        acc = [[max(v, 0) for v in row] for row in _rows(args[0])]
        f_acc = args[0].fmt.frac
    elif op == "relu_backward":
        acc = [[d if v > 0 else 0 for d, v in zip(rd, rx, strict=True)]
               for rd, rx in zip(_rows(args[0]), _rows(args[1]), strict=True)]
        f_acc = args[0].fmt.frac
    elif op == "convert":
        acc = _rows(args[0])
        f_acc = args[0].fmt.frac
    else:
        raise AssertionError(op)
    return model.convert(acc, f_acc, w_op, out, mode)


def _tensor(rng: np.random.Generator, shape: tuple[int, int], fmt: DfpFormat) -> DfpTensor:
    d = rng.integers(fmt.min_int, fmt.max_int + 1, shape)
    d >>= rng.integers(0, fmt.bits, shape)  # magnitudes spread over every bit position
    d.flat[rng.integers(0, d.size, max(1, d.size // 6))] = 0
    d.flat[0] = fmt.min_int
    if d.size > 2:
        d.flat[1] = fmt.max_int
    return DfpTensor(d, fmt)


def _frac(rng: np.random.Generator) -> int:
    return int(rng.integers(FRAC_MIN, FRAC_MAX + 1)) if rng.random() < 0.2 else int(rng.integers(-8, 24))


def _out_fmt(rng: np.random.Generator, w: Width, f_nominal: int, in_bits: int) -> DfpFormat:
    """An output point position that usually keeps some of the result's bits."""
    if rng.random() < 0.15:
        return DfpFormat(w, int(rng.integers(FRAC_MIN, FRAC_MAX + 1)))
    f = f_nominal - int(rng.integers(-3, in_bits + 2))
    return DfpFormat(w, max(FRAC_MIN, min(FRAC_MAX, f)))


def run_case(op: str, ws: tuple[Width, ...], mode: RoundingMode, seed: int, cfg: CoreConfig = TINY,
             rows: int = 3, cols: int = 9, k: int = 5):
    rng = np.random.default_rng(seed)
    fa = DfpFormat(ws[0], _frac(rng))
    wout = ws[-1]
    if op == "matmul":
        fb = DfpFormat(ws[1], _frac(rng))
        args = [_tensor(rng, (rows, k), fa), _tensor(rng, (k, cols), fb)]
        out = _out_fmt(rng, wout, fa.frac + fb.frac, fa.bits + fb.bits)
    elif op in ("add", "sub", "mul", "relu_backward"):
        fb = DfpFormat(ws[1], _frac(rng))
        bshape = (1, cols) if op != "relu_backward" and seed % 2 else (rows, cols)
        args = [_tensor(rng, (rows, cols), fa), _tensor(rng, bshape, fb)]
        nominal = fa.frac + fb.frac if op == "mul" else max(fa.frac, fb.frac) if op != "relu_backward" else fa.frac
        out = _out_fmt(rng, wout, nominal, fa.bits + (fb.bits if op == "mul" else 0))
    elif op == "axpy":
        w_op = max(ws)
        afmt = DfpFormat(w_op, int(rng.integers(0, w_op.bits + 4)))
        alpha = int(rng.integers(afmt.min_int, afmt.max_int + 1))
        fy = DfpFormat(ws[1], _frac(rng))
        x = _tensor(rng, (rows, cols), fa)
        args = [alpha, afmt.frac, x, _tensor(rng, (rows, cols), fy)]
        out = _out_fmt(rng, wout, max(afmt.frac + fa.frac, fy.frac), 8)
    else:  # relu, convert
        args = [_tensor(rng, (rows, cols), fa)]
        out = _out_fmt(rng, wout, fa.frac, 4)
    rng_seed = int(rng.integers(0, 2**32))
    model = Model(cfg, rng_seed)
    q, st = expected(op, args, out, mode, model)
    res = getattr(ops, op)(*args, out, mode, cfg, seed_states(rng_seed, cfg.rng_slots))
    msg = f"{op} widths={[w.bits for w in ws]} {mode.name} seed={seed} out={out}"
    assert res.out.fmt == out, msg
    assert res.out.data.dtype == np.int64, msg
    assert res.out.data.tolist() == q, msg
    assert res.stats.hist.tolist() == st["hist"], msg
    assert (res.stats.zeros, res.stats.overflow, res.stats.underflow, res.stats.total) == (
        st["zeros"], st["overflow"], st["underflow"], st["total"]), msg
    assert [int(s) for s in res.rng] == model.states, msg


BINARY = ["matmul", "add", "sub", "mul", "axpy", "relu_backward"]
UNARY = ["relu", "convert"]


def _wid(ws: tuple[Width, ...]) -> str:
    return "-".join(str(w.bits) for w in ws)


@pytest.mark.parametrize("ws", list(itertools.product(WIDTHS, repeat=3)), ids=_wid)
@pytest.mark.parametrize("op", BINARY)
def test_binary_ops_vs_oracle(op, ws):
    for mode in MODES:
        for seed in range(4):
            run_case(op, ws, mode, 100 * seed + 10 * int(mode) + 3 * ws[0] + ws[1] * 7 + ws[2])


@pytest.mark.parametrize("ws", list(itertools.product(WIDTHS, repeat=2)), ids=_wid)
@pytest.mark.parametrize("op", UNARY)
def test_unary_ops_vs_oracle(op, ws):
    for mode in MODES:
        for seed in range(8):
            run_case(op, ws, mode, 100 * seed + 10 * int(mode) + 3 * ws[0] + ws[1])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("w", [Width.W8, Width.W16])
def test_medium_shapes_vs_oracle(w, mode):
    """Training-like shapes on the default core (8 lanes): many beats, the fast generator's blocks."""
    seed = 7 + int(w) + 3 * int(mode)
    run_case("matmul", (w, w, w), mode, seed, cfg=PRESETS["default"], rows=24, cols=40, k=36)
    run_case("convert", (w, Width.W8), mode, seed, cfg=PRESETS["default"], rows=64, cols=150)


def test_stochastic_generators_step_per_beat_not_per_value():
    """3 rows x 9 cols at W8 on 2 lanes: V = 8, two beats per row, six steps of every generator."""
    cfg = TINY
    x = DfpTensor(np.full((3, 9), 3), DfpFormat(Width.W8, 2))
    res = ops.convert(x, DfpFormat(Width.W8, 0), RoundingMode.STOCHASTIC, cfg, seed_states(5, 8))
    s = oracle.seed_states(5, 8)
    words = []
    for _ in range(6):
        s = [oracle.xorshift32(v) for v in s]
        words.append([v >> 16 for v in s])
    # 3 * 2**-2 = 0.75: r16 = 0xC000, rounds up to 1 when u >= 0x4000
    exp = [[int(words[2 * r + c // 8][c % 8] >= 0x4000) for c in range(9)] for r in range(3)]
    assert res.out.data.tolist() == exp
    assert [int(v) for v in res.rng] == s
    # W32 output: V = 2, five beats per row, all 8 generators still step on each beat
    res = ops.convert(x, DfpFormat(Width.W32, 0), RoundingMode.STOCHASTIC, cfg, seed_states(5, 8))
    s = oracle.seed_states(5, 8)
    for _ in range(15):
        s = [oracle.xorshift32(v) for v in s]
    assert [int(v) for v in res.rng] == s


def test_no_generator_step_without_dropped_bits():
    x = DfpTensor(np.full((2, 3), 3), DfpFormat(Width.W8, 2))
    st = seed_states(9, 8)
    res = ops.convert(x, DfpFormat(Width.W16, 2), RoundingMode.STOCHASTIC, TINY, st)
    assert res.out.data.tolist() == [[3] * 3] * 2
    assert np.array_equal(res.rng, st)


@pytest.mark.parametrize("w", WIDTHS)
def test_matmul_k_limit(w):
    f = DfpFormat(w, 0)
    a = DfpTensor(np.full((1, MAX_K), f.min_int), f)
    b = DfpTensor(np.full((MAX_K, 1), f.min_int), f)
    res = ops.matmul(a, b, DfpFormat(Width.W32, FRAC_MIN), RoundingMode.NEAREST_EVEN, TINY, seed_states(1, 8))
    exact = MAX_K * f.min_int**2  # the largest sum a matmul can form: 2**(acc_bits - 2)
    assert exact == 2 ** (2 * w.bits + 16 - 2)
    assert res.stats.hist.sum() == 1 and res.stats.total == 1
    q, over = oracle.saturate(oracle.round_div_pow2(exact, -FRAC_MIN, RoundingMode.NEAREST_EVEN), 32)
    assert res.out.data.tolist() == [[q]] and res.stats.overflow == int(over)
    a = DfpTensor(np.zeros((1, MAX_K + 1), dtype=np.int64), f)
    b = DfpTensor(np.zeros((MAX_K + 1, 1), dtype=np.int64), f)
    with pytest.raises(ValueError, match=f"matmul: K={MAX_K + 1} exceeds {MAX_K}"):
        ops.matmul(a, b, f, RoundingMode.FLOOR, TINY, seed_states(1, 8))


def test_shape_errors():
    f = DfpFormat(Width.W8, 0)
    st = seed_states(1, 8)
    a = DfpTensor(np.zeros((2, 3), dtype=np.int64), f)
    b = DfpTensor(np.zeros((2, 4), dtype=np.int64), f)
    rm = RoundingMode.FLOOR
    with pytest.raises(ValueError, match=r"matmul: inner dimensions differ: a is \(2, 3\), b is \(2, 4\)"):
        ops.matmul(a, b, f, rm, TINY, st)
    for name in ("add", "sub", "mul"):
        with pytest.raises(ValueError, match=rf"{name}: operand shapes \(2, 3\) and \(2, 4\) differ"):
            getattr(ops, name)(a, b, f, rm, TINY, st)
    row = DfpTensor(np.zeros((1, 3), dtype=np.int64), f)
    with pytest.raises(ValueError, match=r"add: operand shapes \(1, 3\) and \(2, 3\) differ"):
        ops.add(row, a, f, rm, TINY, st)  # only the second operand broadcasts
    with pytest.raises(ValueError, match=r"axpy: x is \(2, 3\) but y is \(2, 4\)"):
        ops.axpy(1, 0, a, b, f, rm, TINY, st)
    with pytest.raises(ValueError, match=r"relu_backward: dy is \(2, 3\) but x is \(2, 4\)"):
        ops.relu_backward(a, b, f, rm, TINY, st)
    with pytest.raises(ValueError, match="axpy: alpha=128 does not fit 8 bits"):
        ops.axpy(128, 0, a, a, f, rm, TINY, st)
    with pytest.raises(ValueError, match="frac: point position 64"):
        ops.axpy(1, 64, a, a, f, rm, TINY, st)


def test_beats_and_scalar_to_dfp():
    assert ops.beats(3, 9, 8) == 6 and ops.beats(3, 8, 8) == 3 and ops.beats(0, 5, 4) == 0
    for value, w in ((0.01, Width.W8), (-0.9, Width.W16), (1e-5, Width.W32), (3.0, Width.W8)):
        raw, frac = ops.scalar_to_dfp(value, w)
        f = DfpFormat(w, frac)
        assert f.min_int <= raw <= f.max_int
        assert abs(raw) >= 2 ** (w.bits - 2)  # the most precision: the top magnitude bit is used
        assert abs(raw * 2.0**-frac - value) <= 2.0 ** (-frac - 1)
    assert [int(op) for op in ops.Op] == list(range(8))


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("mag_bits", [10, 26, 31])
def test_32bit_magnitude_regimes_vs_oracle(mag_bits, mode):
    """W32 results are formed in float64, int64 or Python ints depending on the operands'
    magnitudes (2**10: float64 product; 2**26 with K = 8: int64 recombination; 2**31: Python
    ints); every regime must give the oracle's result."""
    seed = 31 * mag_bits + int(mode)
    rng = np.random.default_rng(seed)
    f = DfpFormat(Width.W32, 20)
    lim = 2**mag_bits
    a = DfpTensor(rng.integers(-lim, lim, (3, 8)), f)
    b = DfpTensor(rng.integers(-lim, lim, (8, 5)), DfpFormat(Width.W32, 3))
    c = DfpTensor(rng.integers(-lim, lim, (3, 8)), DfpFormat(Width.W32, 40))
    out = DfpFormat(Width.W32, 2 * 20 + 3 - 2 * mag_bits + 30)
    cases = [("matmul", [a, b]), ("mul", [a, c]), ("add", [a, c]), ("sub", [c, a]),
             ("axpy", [-(2**31), 31, a, c]), ("axpy", [12345, 10, a, c])]
    for op, args in cases:
        st = int(rng.integers(0, 2**32))
        model = Model(TINY, st)
        q, s = expected(op, args, out, mode, model)
        res = getattr(ops, op)(*args, out, mode, TINY, seed_states(st, TINY.rng_slots))
        msg = f"{op} mag_bits={mag_bits} {mode.name} seed={seed}"
        assert res.out.data.tolist() == q, msg
        assert res.stats.hist.tolist() == s["hist"], msg
        assert (res.stats.overflow, res.stats.underflow, res.stats.zeros) == (
            s["overflow"], s["underflow"], s["zeros"]), msg
        assert [int(v) for v in res.rng] == model.states, msg


@pytest.mark.parametrize("w_op", WIDTHS)
def test_aligned_sums_fit_the_accumulator(w_op):
    """add/sub/axpy: for every operand width <= W_op and point positions across the whole F
    range, the extreme values aligned by the rule sum (and subtract) within acc_bits."""
    abits = 2 * w_op.bits + 16
    lo, hi = -(2 ** (abits - 1)), 2 ** (abits - 1) - 1
    fracs = [FRAC_MIN, -17, -1, 0, 1, 15, 16, 40, FRAC_MAX]
    widths = [w.bits for w in WIDTHS if w.bits <= w_op.bits] + [2 * w_op.bits]  # + axpy's product
    for wa, wb in itertools.product(widths, repeat=2):
        for fa, fb in itertools.product(fracs, repeat=2):
            ext_a = [-(2 ** (wa - 1)), 2 ** (wa - 1) - 1]
            ext_b = [-(2 ** (wb - 1)), 2 ** (wb - 1) - 1]
            (ta, tb), f_acc = ops.align_terms(
                [(np.array(ext_a, dtype=object), (fa, wa)), (np.array(ext_b, dtype=object), (fb, wb))], abits)
            assert f_acc == min(max(fa, fb), fa + abits - 1 - wa, fb + abits - 1 - wb)
            for x in ta:
                for y in tb:
                    assert lo <= x + y <= hi and lo <= x - y <= hi, (w_op, wa, wb, fa, fb)

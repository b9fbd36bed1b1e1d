"""The DLU's operations, bit-exact.

Every operation forms an exact result in the accumulator (``acc_width(W_op)`` bits, where
``W_op`` is the widest input; narrower inputs are sign-extended), has the statistics block
analyse it, and converts it to the output format with one :func:`round_shift` and a
saturation. Each returns an :class:`OpResult`: the output tensor, the statistics of the
values *before* conversion, and the stochastic-rounding generator state after the op.

``W_op`` is the widest of the inputs *and the output*: one width per command sets both the
accumulator width and the number of values processed per cycle, ``V = lanes * 32 / W_op``.
Results are produced in *beats*: row ``m`` is cut into ``ceil(cols / V)`` beats of V values
(the last one partial), and beats go in row-major order. Only stochastic rounding depends
on this order (slot j of a beat uses generator j, see :mod:`reference.rng`); the generators
step once per beat only when the conversion drops bits (``F_acc > F_out``).

The definitions are explained, with worked examples that the tests execute, in
``docs/numerics.md``.

Elementwise operands are *aligned* before they are added (:func:`align_terms`): the
accumulator's point position is the finest of the operands' ``F_i``, lowered if needed so
that each operand shifted to it keeps one spare top bit; an operand finer than that is
shifted right with floor (all its bits then lie at least 16 bits below the other's LSB).

Operations
----------
matmul(a[M,K], b[K,N])      sum_k a[m,k] * b[k,n]; F_acc = F_a + F_b; K <= 2**16
add(a, b), sub(a, b)        a +/- b; ``b`` may be one row [1, N], broadcast over rows
mul(a, b)                   a * b elementwise; F_acc = F_a + F_b (same broadcast)
axpy(alpha, x, y)           alpha * x + y with a scalar alpha (the SGD update)
relu(x)                     max(x, 0)
relu_backward(dy, x)        dy where x > 0, else 0
convert(x)                  x in another format
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from . import kernels
from .config import CoreConfig
from .formats import (
    MAX_K,
    STOCHASTIC_BITS,
    DfpFormat,
    DfpTensor,
    RoundingMode,
    Width,
    acc_width,
    check_frac,
    requantize_left,
    round_shift,
    saturate,
)
from .rng import draw_beats
from .stats import F64_BIAS, OpStats, analyse, exponent_histogram


class Op(enum.IntEnum):
    """Operation codes; the value is the command's 4-bit opcode field."""

    MATMUL = 0
    ADD = 1
    SUB = 2
    MUL = 3
    AXPY = 4
    RELU = 5
    RELU_BACKWARD = 6
    CONVERT = 7


@dataclass
class OpResult:
    out: DfpTensor
    stats: OpStats
    rng: np.ndarray


def _op_width(*fmts: DfpFormat) -> Width:
    w = fmts[0].width
    for f in fmts:  # (a loop: max() over a generator costs more than the rest of a small command's checks)
        if f.width > w:
            w = f.width
    return w


#: Exact results are kept in int64 when every term is below this bound (a sum of two then
#: still fits), and in Python ints otherwise. Which representation is used never changes a
#: result: it is a speed choice made from the operands' actual magnitudes.
_INT64_SAFE = 1 << 62


def _maxabs(a: np.ndarray) -> int:
    return max(abs(int(a.max())), abs(int(a.min()))) if a.size else 0


def _as_int64_if_fits(a: np.ndarray) -> np.ndarray:
    """An object array whose values all fit int64, as int64 (the fast paths); else unchanged."""
    if a.dtype != object:
        return a
    try:
        return a.astype(np.int64)
    except OverflowError:
        return a


def beats(rows: int, cols: int, v: int) -> int:
    """Number of output beats of a [rows, cols] result with V values per beat."""
    return rows * -(-cols // v)


def convert_acc(
    acc: np.ndarray,
    f_acc: int,
    acc_bits: int,
    out_fmt: DfpFormat,
    rounding: RoundingMode,
    cfg: CoreConfig,
    rng: np.ndarray,
    op_width: Width,
) -> OpResult:
    """Analyse and convert an exact accumulator array to ``out_fmt`` (the output stage).

    ``shift = f_acc - out_fmt.frac``: for shift > 0, :func:`round_shift` then saturation (in
    stochastic mode, ``rows * ceil(cols / V)`` beats of random words are drawn, V from
    ``op_width``); for shift <= 0, an exact left shift with saturation and no draw.

    int64 accumulators take the fused kernels of :func:`_convert_int64`; Python-int object
    arrays that do not fit int64 take :func:`convert_acc_reference`. Both give the same result.
    """
    acc = _as_int64_if_fits(acc)
    if acc.dtype == object:
        return convert_acc_reference(acc, f_acc, acc_bits, out_fmt, rounding, cfg, rng, op_width)
    return _convert_int64(np.asarray(acc, dtype=np.int64), f_acc, acc_bits, out_fmt, rounding, cfg, rng, op_width,
                          bounded=False, owned=False)


def convert_acc_reference(
    acc: np.ndarray,
    f_acc: int,
    acc_bits: int,
    out_fmt: DfpFormat,
    rounding: RoundingMode,
    cfg: CoreConfig,
    rng: np.ndarray,
    op_width: Width,
) -> OpResult:
    """:func:`convert_acc` written straight from its definition: :func:`round_shift`,
    :func:`saturate` or :func:`requantize_left`, and :func:`reference.stats.analyse`.

    The fast kernels are tested against this function; it also serves accumulators held as
    Python ints beyond int64.
    """
    rows, cols = acc.shape
    acc = _as_int64_if_fits(acc)
    shift = f_acc - out_fmt.frac
    new_rng = rng
    if shift > 0:
        u16 = None
        if rounding == RoundingMode.STOCHASTIC:
            u16, new_rng = _stochastic_words(rng, rows, cols, cfg, op_width)
        q, over = saturate(round_shift(acc, shift, rounding, acc_bits, u16), out_fmt)
    else:
        q, over = requantize_left(acc, -shift, out_fmt)
    stats = analyse(acc, f_acc, q, over, cfg)
    return OpResult(DfpTensor(q, out_fmt), stats, new_rng)


def _stochastic_words(rng: np.ndarray, rows: int, cols: int, cfg: CoreConfig, op_width: Width):
    """The [rows, cols] random words of a stochastic conversion and the generator states after it."""
    v = cfg.values_per_beat(op_width)
    cpr = -(-cols // v)
    words, new_rng = draw_beats(rng, rows * cpr, v)
    return words.reshape(rows, cpr * v)[:, :cols], new_rng


# -- fused conversion kernels ----------------------------------------------------------------
#
# An accumulator array reaches the kernels either as int64 or, when it may be wider than 52 bits
# (32-bit operations: 80-bit accumulators), as a pair (hi, lo) of int64 arrays with
# value = hi * 2**32 + lo and 0 <= lo < 2**32. The statistics come from float64 exponents, which
# are exact for magnitudes below 2**53 (checked: the exponent counts give the largest bit length).
# (The exponents' maximum is checked; each value's bin then follows with three in-place passes
# and one bincount, see :func:`reference.stats.exponent_histogram`.)
# Rounding is done in int64 on values proven to stay below 2**62:
#
# - a value whose rounded result cannot fit 32 bits is first clamped to a value that saturates
#   the same way (|v| >= 2**(shift + 32) rounds beyond every output range);
# - a right shift s > 17 is reduced to 17 by dropping d = s - 17 bits into a sticky bit 0 (OR of
#   the dropped bits). floor, the half-LSB comparison and the 16 stochastic bits only look at
#   bits >= d + 1 and at whether any bit below is set, so the result of every mode is unchanged
#   (the same argument as :func:`round_shift`'s pre-shift).

_M32 = (1 << 32) - 1
_BIAS = F64_BIAS


def _exponents(m: np.ndarray) -> np.ndarray:
    """Biased float64 exponents of non-negative int64 values (bit length + 1022; 0 for 0)."""
    e = m.astype(np.float64).view(np.int64)
    e >>= 52
    return e


def _round_small(x: np.ndarray, s: int, rounding: RoundingMode, u16: np.ndarray | None) -> np.ndarray:
    """round_shift of int64 values with |x| <= 2**62 by 0 < s <= 62 (no sum below reaches 2**63); a fresh array."""
    if rounding == RoundingMode.FLOOR:
        return x >> s
    if rounding == RoundingMode.NEAREST_EVEN:
        # floor((x + half - 1 + (fq & 1)) / 2**s): rem + (fq & 1) > half rounds up.
        r = x >> s
        r &= 1
        r += x
        r += (1 << (s - 1)) - 1
        r >>= s
        return r
    if rounding == RoundingMode.STOCHASTIC:
        # fq + 1 iff r16 + u16 >= 2**16, i.e. rem + u16 * 2**(s-16) >= 2**s (for s < 16 the
        # condition rem * 2**(16-s) + u16 >= 2**16 reads rem + floor(u16 / 2**(16-s)) >= 2**s).
        if u16 is None:
            raise ValueError("round_shift: stochastic rounding needs random words (u16)")
        if s >= STOCHASTIC_BITS:
            r = u16 << (s - STOCHASTIC_BITS)
        else:
            r = u16 >> (STOCHASTIC_BITS - s)
        r = r + x
        r >>= s
        return r
    raise ValueError(f"rounding: {rounding!r} is not a RoundingMode")


def _reduce_sticky(x: np.ndarray, d: int) -> np.ndarray:
    """floor(x / 2**d) with bit 0 ORed with (x mod 2**d != 0), for int64 x and d >= 1."""
    if d >= 63:
        return (x >> 63) | (x != 0)
    return (x >> d) | ((x & ((1 << d) - 1)) != 0)


def _shift_left(x: np.ndarray, k: int, out_fmt: DfpFormat, small: bool) -> np.ndarray:
    """x * 2**k for k >= 0, or a value that saturates the same way (int64, |x| < 2**63 - 2**62).

    ``small``: |x| < 2**53, so a shift by k <= 9 cannot overflow. Otherwise x is first clamped
    to the output range (a clamped value, shifted by k >= 1, still saturates with its sign) and
    shifted by at most the output width (a non-zero value then leaves the range): |result| <= 2**63.
    """
    if k == 0:
        return x
    if small and k <= 9:
        return x << k
    bits = out_fmt.bits
    r = np.maximum(x, -(1 << (bits - 1)))
    np.minimum(r, (1 << (bits - 1)) - 1, out=r)
    r <<= min(k, bits)
    return r


def _finish(r: np.ndarray, n: int, nonzero: int, hist: np.ndarray, fits: bool, exact: bool,
            out_fmt: DfpFormat, cfg: CoreConfig, new_rng: np.ndarray) -> OpResult:
    """Saturate the rounded values ``r`` (a fresh array) and assemble the result.

    ``fits``: every value of ``r`` is known to lie in the output range (from the largest
    exponent), so nothing saturates; ``exact``: moreover ``r`` is the accumulator times a power
    of two, so no non-zero value became 0.
    """
    zeros = n - nonzero
    if fits:
        q, overflow = r, 0
        underflow = 0 if exact else n - int(np.count_nonzero(q)) - zeros
    else:
        bits = out_fmt.bits
        q = np.maximum(r, -(1 << (bits - 1)))
        np.minimum(q, (1 << (bits - 1)) - 1, out=q)
        overflow = int(np.count_nonzero(q != r))
        underflow = n - int(np.count_nonzero(q)) - zeros  # v == 0 always converts to 0
    cmax = cfg.counter_max
    if n > cmax:
        np.minimum(hist, cmax, out=hist)
        zeros, overflow, underflow, n = min(zeros, cmax), min(overflow, cmax), min(underflow, cmax), cmax
    return OpResult(DfpTensor._trusted(q, out_fmt), OpStats(hist, zeros, overflow, underflow, n), new_rng)


def _fits(e_max: int | None, shift: int, out_fmt: DfpFormat) -> bool:
    """Whether every converted value lies in the output range, known from the largest exponent.

    Every m < 2**L with ``L = max(e_max - (F64_BIAS - 1), 0)``, i.e. v in [-2**L, 2**L). A right shift s
    gives |result| <= 2**(L - s) (or at most 1 when L < s): fits when L - s <= W - 2. A left
    shift k gives values in [-2**(L + k), 2**(L + k) - 2**k]: fits when L + k <= W - 1.
    """
    if e_max is None:
        return False
    big = max(e_max - (_BIAS - 1), 0)  # all m = 0: v in {-1, 0} = [-2**0, 2**0)
    return big - shift <= out_fmt.bits - (2 if shift > 0 else 1)


def _convert_int64(acc: np.ndarray, f_acc: int, acc_bits: int, out_fmt: DfpFormat, rounding: RoundingMode,
                   cfg: CoreConfig, rng: np.ndarray, op_width: Width, bounded: bool = True,
                   nonneg: bool = False, owned: bool = True) -> OpResult:
    """:func:`convert_acc` of an int64 accumulator array: the compiled kernel of
    :func:`reference.kernels.convert_int64` when every |v| < 2**52, else :func:`_convert_int64_numpy`.

    ``bounded``: the caller guarantees |acc| < 2**52 (every op of this module does: 8/16-bit
    accumulators have at most 48 bits, and 32-bit elementwise values without a product or an
    alignment at most 32); otherwise it is checked. ``nonneg`` and ``owned`` are hints for the
    NumPy form (see there).
    """
    if not bounded and acc.size and max(int(acc.max()), ~int(acc.min())) >= 1 << 52:
        return _convert_int64_numpy(acc, f_acc, acc_bits, out_fmt, rounding, cfg, rng, op_width, bounded,
                                    nonneg, owned)
    a2 = acc if acc.ndim == 2 else acc.reshape(acc.shape[0], -1) if acc.ndim else acc.reshape(1, 1)
    res = _convert_fused(kernels.ACC, a2, f_acc, out_fmt, rounding, cfg, rng, op_width, words_shape=acc.shape)
    if a2 is not acc:
        res = OpResult(DfpTensor._trusted(res.out.data.reshape(acc.shape), out_fmt), res.stats, res.rng)
    return res


def _convert_fused(kind: int, a: np.ndarray, f_acc: int, out_fmt: DfpFormat, rounding: RoundingMode,
                   cfg: CoreConfig, rng: np.ndarray, op_width: Width, b: np.ndarray | None = None, alpha: int = 1,
                   da: int = 0, db: int = 0, sign: int = 1, words_shape: tuple[int, ...] | None = None,
                   c: np.ndarray | None = None, tz: int = 0) -> OpResult | None:
    """Form the accumulator of a 2-D command (``kind``, see :mod:`reference.kernels`), analyse it and
    convert it: the compiled twin of forming ``acc`` and calling :func:`_convert_int64_numpy` (or
    :func:`_convert_pair_numpy`). None only for a pair with some |hi| >= 2**52.

    ``tz`` > 0: the formed values are the accumulator divided by 2**tz (its low ``tz`` bits are
    zeros), converted as from ``F_acc - tz``. The generators still step when ``F_acc > F_out``.
    """
    shift = f_acc - out_fmt.frac
    new_rng = rng
    u16 = None
    if shift > 0 and rounding == RoundingMode.STOCHASTIC:
        shape = a.shape if words_shape is None else words_shape
        u16, new_rng = _stochastic_words(rng, shape[0], shape[1], cfg, op_width)
    elif rounding not in _ROUNDINGS:
        raise ValueError(f"rounding: {rounding!r} is not a RoundingMode")
    got = kernels.convert(kind, a, shift - tz, rounding, u16, out_fmt.bits, f_acc - tz + cfg.hist_min_exp,
                          cfg.hist_bins, b, alpha, da, db, sign, c)
    if got is None:  # a pair too wide for the kernel: the caller takes the exact path
        return None
    q, hist, zeros, overflow, underflow = got
    n = q.size  # the output values (a split product has more partial values)
    cmax = cfg.counter_max
    if n > cmax:
        np.minimum(hist, cmax, out=hist)
        zeros, overflow, underflow, n = min(zeros, cmax), min(overflow, cmax), min(underflow, cmax), cmax
    return OpResult(DfpTensor._trusted(q, out_fmt), OpStats(hist, zeros, overflow, underflow, n), new_rng)


_ROUNDINGS = frozenset(int(m) for m in RoundingMode)


def _convert_int64_numpy(acc: np.ndarray, f_acc: int, acc_bits: int, out_fmt: DfpFormat, rounding: RoundingMode,
                         cfg: CoreConfig, rng: np.ndarray, op_width: Width, bounded: bool = True,
                         nonneg: bool = False, owned: bool = True) -> OpResult:
    """The NumPy form of :func:`_convert_int64` (fused passes; pairs beyond 52 bits).

    ``bounded``: the caller guarantees |acc| < 2**52 (every op of this module does: 8/16-bit
    accumulators have at most 48 bits, and 32-bit elementwise values without a product or an
    alignment at most 32); otherwise it is checked. ``nonneg``: every value is >= 0 (RELU), so
    ``m = v``. ``owned``: ``acc`` is a fresh array that the result may keep.
    """
    if nonneg:
        e = _exponents(acc)
    else:
        m = acc >> 63
        m ^= acc
        e = _exponents(m)
    if not bounded and e.size and int(e.max()) >= _BIAS + 52:  # some |v| >= 2**52: inexact exponents
        return _convert_pair(acc >> 32, acc & _M32, f_acc, acc_bits, out_fmt, rounding, cfg, rng, op_width)
    n = acc.size
    nonzero = int(np.count_nonzero(acc))
    hist, e_max = exponent_histogram(e, n - nonzero, f_acc, cfg)
    shift = f_acc - out_fmt.frac
    fits = _fits(e_max, shift, out_fmt)
    new_rng = rng
    if shift > 0:
        u16 = None
        if rounding == RoundingMode.STOCHASTIC:
            u16, new_rng = _stochastic_words(rng, acc.shape[0], acc.shape[1], cfg, op_width)
        x = acc
        if shift > 62:
            x, shift = _reduce_sticky(acc, shift - 17), 17
        r = _round_small(x, shift, rounding, u16)
    elif fits:
        r = acc << -shift if shift else (acc if owned else acc.copy())
    else:
        r = _shift_left(acc, -shift, out_fmt, small=True)
    return _finish(r, n, nonzero, hist, fits, shift <= 0, out_fmt, cfg, new_rng)


def _convert_pair(hi: np.ndarray, lo: np.ndarray, f_acc: int, acc_bits: int, out_fmt: DfpFormat,
                  rounding: RoundingMode, cfg: CoreConfig, rng: np.ndarray, op_width: Width) -> OpResult:
    """:func:`convert_acc` of an accumulator held as (hi, lo): value = hi * 2**32 + lo.

    The compiled :func:`reference.kernels.convert_pair` for 2-D pairs with every |hi| < 2**52,
    else :func:`_convert_pair_numpy`.
    """
    if hi.ndim == 2:
        res = _convert_fused(kernels.PAIR, hi, f_acc, out_fmt, rounding, cfg, rng, op_width, b=lo)
        if res is not None:
            return res
    return _convert_pair_numpy(hi, lo, f_acc, acc_bits, out_fmt, rounding, cfg, rng, op_width)


def _convert_pair_numpy(hi: np.ndarray, lo: np.ndarray, f_acc: int, acc_bits: int, out_fmt: DfpFormat,
                        rounding: RoundingMode, cfg: CoreConfig, rng: np.ndarray, op_width: Width) -> OpResult:
    """The NumPy form of :func:`_convert_pair` (and its exact fallback beyond 2**84)."""
    sgn = hi >> 63
    mhi = hi ^ sgn  # ~v = (~hi) * 2**32 + (2**32 - 1 - lo) for negative v
    mlo = sgn & _M32
    mlo ^= lo
    e = _exponents(mhi)
    e += 32
    np.maximum(e, _exponents(mlo), out=e)  # e == 32: m == 0 (a real exponent is >= _BIAS)
    e_max = int(e.max()) if e.size else 0
    if e_max >= _BIAS + 32 + 52:  # |hi| >= 2**52: beyond every accumulator; exact fallback
        acc = hi.astype(object) * (1 << 32) + lo.astype(object)
        return convert_acc_reference(acc, f_acc, acc_bits, out_fmt, rounding, cfg, rng, op_width)
    max_bits = e_max + 1 - _BIAS  # every |v| < 2**max_bits (v in [-2**max_bits, 2**max_bits))
    n = hi.size
    nonzero = int(np.count_nonzero(hi | lo))
    hist, _ = exponent_histogram(e, n - nonzero, f_acc, cfg)
    shift = f_acc - out_fmt.frac
    fits = _fits(e_max, shift, out_fmt)
    new_rng = rng
    rows, cols = hi.shape
    if shift > 0:
        u16 = None
        if rounding == RoundingMode.STOCHASTIC:
            u16, new_rng = _stochastic_words(rng, rows, cols, cfg, op_width)
        if max_bits > shift + 32:
            # |v| >= 2**(shift + 32) rounds beyond 2**32 in every mode: clamp hi to [-2**s - 1, 2**s]
            # (the clamped value keeps its sign and still saturates), so that it fits below.
            b = 1 << min(shift, 62)
            hi = np.maximum(hi, -b - 1)
            np.minimum(hi, b, out=hi)
        if shift <= 29:  # |v| < 2**(shift + 33) <= 2**62
            x = hi << 32
            x |= lo
        else:
            d = shift - 17
            if d >= 32:
                x = _reduce_sticky(hi, d - 32) if d > 32 else hi.copy()
                x |= lo != 0
            else:
                x = hi << (32 - d)
                x |= lo >> d
                x |= (lo & ((1 << d) - 1)) != 0
            shift = 17
        r = _round_small(x, shift, rounding, u16)
    else:
        # Only |v| < 2**31 can convert without saturating: clamp hi to [-2**30, 2**30] (the value
        # keeps its sign, and saturates when clamped), then the int64 left shift.
        if max_bits > 61:
            hi = np.maximum(hi, -(1 << 30))
            np.minimum(hi, 1 << 30, out=hi)
        x = hi << 32
        x |= lo
        r = _shift_left(x, -shift, out_fmt, small=False)
    return _finish(r, n, nonzero, hist, fits, shift <= 0, out_fmt, cfg, new_rng)


def align_terms(terms: list[tuple[np.ndarray, DfpFormat | tuple[int, int]]], acc_bits: int):
    """Shift exact terms onto one accumulator point position; returns (list, F_acc).

    Each term is (integers, fmt) or (integers, (frac, bits)). With term i having F_i and
    width w_i, ``F_acc = min(max_i F_i, min_i (F_i + acc_bits - 1 - w_i))``; term i is
    shifted left by ``F_acc - F_i`` or, when negative, right with floor.
    """
    fw = [(t[1].frac, t[1].bits) if isinstance(t[1], DfpFormat) else t[1] for t in terms]
    f_acc = min(max(f for f, _ in fw), min(f + acc_bits - 1 - w for f, w in fw))
    out = []
    for (x, _), (f, _) in zip(terms, fw, strict=True):
        d = f_acc - f
        if x.dtype != object and d >= 0 and _maxabs(x) << d >= _INT64_SAFE:
            x = x.astype(object)
        if d >= 0:
            out.append(x * (1 << d) if x.dtype == object else np.left_shift(x, d))
        else:
            out.append(x // (1 << -d) if x.dtype == object else np.right_shift(x, -d))
    return out, f_acc


def _check_broadcast(a: DfpTensor, b: DfpTensor, name: str) -> None:
    if b.shape != a.shape and not (b.shape[0] == 1 and b.shape[1] == a.shape[1]):
        raise ValueError(f"{name}: operand shapes {a.shape} and {b.shape} differ (b may be one row [1, N])")


def _int_matmul(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """Exact integer matrix product via float64 BLAS.

    Up to 16-bit inputs every partial sum is an integer below 2**47 (K <= 2**16), which
    float64 holds exactly in any summation order. 32-bit inputs are split into a signed
    high and an unsigned low 16-bit half; the four partial products are exact the same
    way and are recombined: in int64 when the operands' magnitudes bound every partial term
    below 2**62, else in Python integers. (32-bit operands whose magnitudes bound every
    partial sum below 2**53 take the direct float64 product.)
    """
    if bits <= 16:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    k = a.shape[1]
    amax, bmax = _maxabs(a), _maxabs(b)
    if k * amax * bmax < 1 << 53:
        return (a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)
    ah, al = a >> 16, a & 0xFFFF
    bh, bl = b >> 16, b & 0xFFFF
    # |ah| <= amax / 2**16 + 1, so every recombined term is below K (amax + 2**16) (bmax + 2**16)
    small = k * (amax + (1 << 16)) * (bmax + (1 << 16)) < _INT64_SAFE

    def mm(x, y):
        p = (x.astype(np.float64) @ y.astype(np.float64)).astype(np.int64)
        return p if small else p.astype(object)

    return mm(ah, bh) * (1 << 32) + (mm(ah, bl) + mm(al, bh)) * (1 << 16) + mm(al, bl)


def _matmul_pair(a: np.ndarray, b: np.ndarray, amax: int | None = None,
                 bmax: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact product of operands of at most 32 bits as an (hi, lo) accumulator pair.

    Each operand is split into a signed high and an unsigned low 16-bit half. The partial
    products ``ah @ bh`` (terms below 2**30), ``ah @ bl + al @ bh`` (one product of the
    concatenated halves, 2K terms below 2**31) and ``al @ bl`` (terms below 2**32) have every
    partial sum below 2**48 (K <= 2**16), so float64 BLAS forms them exactly in any order; they
    are recombined into ``hi * 2**32 + lo`` in int64. When the operands' magnitudes (``amax``,
    ``bmax``; 2**31 if not given) allow it, only one operand is split (two products, see
    :func:`_matmul_pair_split_one`).
    """
    f8 = np.float64
    split = _pair_split(a, b, amax, bmax)
    if split != "both":
        return _matmul_pair_split_one(a, b, split_a=split == "a")
    ah, al = (a >> 16).astype(f8), (a & 0xFFFF).astype(f8)
    bh, bl = (b >> 16).astype(f8), (b & 0xFFFF).astype(f8)
    p_hh = (ah @ bh).astype(np.int64)
    p_mid = (np.concatenate([ah, al], axis=1) @ np.concatenate([bl, bh], axis=0)).astype(np.int64)
    t = (al @ bl).astype(np.int64)
    t += (p_mid & 0xFFFF) << 16
    p_mid >>= 16
    p_hh += p_mid
    p_hh += t >> 32
    t &= _M32
    return p_hh, t


def _pair_split(a: np.ndarray, b: np.ndarray, amax: int | None, bmax: int | None) -> str:
    """Which operands :func:`_matmul_pair` cuts in 16-bit halves: ``"a"``, ``"b"`` or ``"both"``.

    Splitting only one operand: its halves are below 2**16 in magnitude, so every partial sum of
    the two products is below K * 2**16 * max|other| (``amax``, ``bmax``; 2**31 if not given).
    """
    k = a.shape[1]
    amax = 1 << 31 if amax is None else amax
    bmax = 1 << 31 if bmax is None else bmax
    split_a_ok, split_b_ok = k * bmax << 16 <= 1 << 53, k * amax << 16 <= 1 << 53
    if split_a_ok and (a.size <= b.size or not split_b_ok):
        return "a"
    return "b" if split_b_ok else "both"


def _matmul_pair_split_one(a: np.ndarray, b: np.ndarray, split_a: bool) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_matmul_pair` with one operand split in 16-bit halves (two float64 products, exact
    when K * 2**16 * max|other operand| <= 2**53, checked by the caller), recombined in int64."""
    f8 = np.float64
    if split_a:
        bf = b.astype(f8)
        p_h = ((a >> 16).astype(f8) @ bf).astype(np.int64)
        t = ((a & 0xFFFF).astype(f8) @ bf).astype(np.int64)
    else:
        af = a.astype(f8)
        p_h = (af @ (b >> 16).astype(f8)).astype(np.int64)
        t = (af @ (b & 0xFFFF).astype(f8)).astype(np.int64)
    # value = p_h * 2**16 + t with |p_h| < 2**52, |t| <= 2**53
    t += (p_h & 0xFFFF) << 16
    p_h >>= 16
    p_h += t >> 32
    t &= _M32
    return p_h, t


#: 32-bit operands, one cut in 11-bit pieces: every partial sum is below K * 2**31 * 2**11 <= 2**53.
_SPLIT3_MAX_K = 1 << 11


def _pieces(l1: int, cmax: int, tz: int) -> int:
    """How many pieces one operand of :func:`_matmul32` must be cut into: 1 (no cut), 2 or 3.

    ``l1`` is the largest L1 norm along K of the *other* operand (of its rows if it is ``a``, of
    its columns if it is ``b``), ``cmax`` the cut operand's max |value|, ``tz`` the trailing zero
    bits that all values of both operands share. Every partial sum of a product is at most
    ``l1 * (max |piece|)``:

    - 1: ``l1 * cmax < 2**(52 + tz)``. The partial sums are multiples of 2**tz below 2**(53 + tz),
      exact in float64, and the product divided by 2**tz is an integer below 2**52;
    - 2: balanced 16-bit pieces, |piece| <= 2**15, need ``l1 <= 2**38``;
    - 3: 11-bit pieces, |piece| <= 2**11, need ``l1 <= 2**42``: always true for K <= 2**11.
    """
    if l1 * cmax < 1 << (52 + tz):
        return 1
    return 2 if l1 <= 1 << 38 else 3


def _plan(l1_big: int, smax: int, l1_small: int, bigmax: int, tz: int) -> tuple[int, bool]:
    """(pieces, cut the smaller operand?) for :func:`_matmul32`: the fewest pieces that either cut
    allows by :func:`_pieces` (the work is the same for the same number of pieces), the smaller
    operand on a tie (its cut is cheaper to form)."""
    n_small, n_big = _pieces(l1_big, smax, tz), _pieces(l1_small, bigmax, tz)
    return (n_big, False) if n_big < n_small else (n_small, True)


def _trailing_zeros(x: int) -> int:
    """Trailing zero bits of a two's-complement integer (0 for 0)."""
    return (x & -x).bit_length() - 1 if x else 0


def _matmul32(a: np.ndarray, b: np.ndarray, args: tuple, shape: tuple[int, int]) -> OpResult:
    """A 32-bit matrix product with K <= 2**11, converted (``args`` as :func:`_convert_fused`'s).

    One float64 product, exact by :func:`_plan`: one operand (normally the smaller) is cut into
    that many pieces (:func:`reference.kernels.split_pieces`) and the pieces' products are
    recombined as (hi, lo) pairs by the kernel. Operands whose values share trailing zero bits (the
    input image, whose few significant bits sit high in a 32-bit word) are multiplied as they are and
    the product is scaled by 2**-tz, exactly; the conversion then takes ``F_acc - tz``, which rounds,
    bins and saturates every value the same way (the dropped low bits are zeros).
    """
    small_a = a.size <= b.size
    s, big = (a, b) if small_a else (b, a)
    # each operand's L1 norms along K: of a's rows, of b's columns
    sf, s_or, smax, s_rows, s_cols = kernels.scan_f8(s)
    if s.shape[1 if small_a else 0] * smax << 31 < 1 << 52:  # l1 <= K * 2**31: no need to scan the other
        lf, n, cut_small, tz = big.astype(np.float64), 1, True, 0
    else:
        lf, l_or, lmax, l_rows, l_cols = kernels.scan_f8(big)
        s_l1, l1 = (s_rows, l_cols) if small_a else (s_cols, l_rows)
        tz = _trailing_zeros(l_or) + _trailing_zeros(s_or)
        n, cut_small = _plan(l1, smax, s_l1, lmax, tz)
    if n == 1:
        p = sf @ lf if small_a else lf @ sf
        if tz:
            p *= 2.0 ** -tz
        return _convert_fused(kernels.ACC, p, *args, tz=tz)
    if small_a == cut_small:  # a is cut: its pieces stacked by rows
        p = kernels.split_pieces(a, False, n) @ (lf if small_a else sf)
        kind = kernels.SPLIT3_ROWS if n == 3 else kernels.SPLIT2_ROWS
    else:  # b is cut: its pieces side by side
        p = (sf if small_a else lf) @ kernels.split_pieces(b, True, n)
        kind = kernels.SPLIT3_COLS if n == 3 else kernels.SPLIT2_COLS
    return _convert_fused(kind, p, *args, words_shape=shape)


def _matmul_parts(a: np.ndarray, b: np.ndarray, amax: int, bmax: int):
    """The float64 partial products of :func:`_matmul_pair` (same choice of split, same exactness),
    for :func:`reference.kernels.convert_parts` to recombine: (high, mid or None, low)."""
    k = a.shape[1]
    split = _pair_split(a, b, amax, bmax)
    if split == "a":
        a2, bf = kernels.split_cols(a), b.astype(np.float64)
        return a2[:, :k] @ bf, None, a2[:, k:] @ bf
    if split == "b":
        af, b2 = a.astype(np.float64), kernels.split_rows(b)
        return af @ b2[k:], None, af @ b2[:k]
    a2, b2 = kernels.split_cols(a), kernels.split_rows(b)
    return a2[:, :k] @ b2[k:], a2 @ b2, a2[:, k:] @ b2[:k]


#: 8-bit operands: every partial sum of a product with K <= 2**10 is an integer of magnitude at
#: most K * 2**14 <= 2**24, which float32 holds exactly in any summation order.
_F32_MAX_K = 1 << 10


def wrap_acc(x: np.ndarray, bits: int) -> np.ndarray:
    """``x`` wrapped into ``bits``-bit two's complement, as the accumulator's adders wrap.

    int64 arrays stay int64 (``bits`` <= 62 there); Python-int object arrays stay object arrays.
    """
    half, mod = 1 << (bits - 1), 1 << bits
    if x.dtype != object and bits <= 62:
        return ((np.asarray(x, dtype=np.int64) + half) & (mod - 1)) - half
    x = np.asarray(x, dtype=object)
    return (x + half) % mod - half


def matmul_sum(a: DfpTensor, b: DfpTensor, out_fmt: DfpFormat, acc: np.ndarray | None = None) -> np.ndarray:
    """The accumulator after a MATMUL that does not finish its sum (:class:`reference.isa.Accumulate`).

    ``acc`` (the partial sums of earlier commands, or None to start from 0) plus the exact product
    ``a @ b``, wrapped to ``acc_width(W_op)`` bits: int64, or Python ints beyond int64. Nothing is
    rounded, analysed or drawn.
    """
    _check_matmul(a, b)
    w = _op_width(a.fmt, b.fmt, out_fmt)
    p = _int_matmul(a.data, b.data, max(a.fmt.bits, b.fmt.bits))
    if acc is not None:
        if acc.shape != p.shape:
            raise ValueError(f"matmul: partial sums are {acc.shape}, the product is {p.shape}")
        p = (p.astype(object) if acc.dtype == object else p) + acc
    return wrap_acc(p, acc_width(w))


def _check_matmul(a: DfpTensor, b: DfpTensor) -> int:
    k, k2 = a.shape[1], b.shape[0]
    if k != k2:
        raise ValueError(f"matmul: inner dimensions differ: a is {a.shape}, b is {b.shape}")
    if k > MAX_K:
        raise ValueError(f"matmul: K={k} exceeds {MAX_K}: the accumulator could overflow")
    return k


def matmul(a: DfpTensor, b: DfpTensor, out_fmt: DfpFormat, rounding: RoundingMode,
           cfg: CoreConfig, rng: np.ndarray, acc: np.ndarray | None = None) -> OpResult:
    """``a @ b`` converted to ``out_fmt``; with ``acc``, the sum finished across commands.

    ``acc`` holds the partial sums of earlier commands (:func:`matmul_sum`); the finishing command
    adds its product, wraps to the accumulator width and converts with ``F_acc = F_a + F_b`` of
    its own operands (:func:`convert_acc`): a K split therefore converts, analyses and draws
    exactly as the unsplit product.
    """
    k = _check_matmul(a, b)
    w = _op_width(a.fmt, b.fmt, out_fmt)
    if acc is not None:
        total = matmul_sum(a, b, out_fmt, acc)
        return convert_acc(total, a.fmt.frac + b.fmt.frac, acc_width(w), out_fmt, rounding, cfg, rng, w)
    in_bits = max(a.fmt.bits, b.fmt.bits)
    # the conversion's arguments: every path forms the exact product and converts it compiled
    args = (a.fmt.frac + b.fmt.frac, out_fmt, rounding, cfg, rng, w)
    if in_bits > 16:
        f8 = np.float64
        if k <= _SPLIT3_MAX_K:
            return _matmul32(a.data, b.data, args, (a.shape[0], b.shape[1]))
        amax, bmax = _maxabs(a.data), _maxabs(b.data)
        if k * amax * bmax < 1 << 52:  # every partial sum below 2**52 (e.g. the ones row of a bias gradient)
            return _convert_fused(kernels.ACC, a.data.astype(f8) @ b.data.astype(f8), *args)
        high, mid, low = _matmul_parts(a.data, b.data, amax, bmax)  # products below 2**79: never too wide
        return _convert_fused(kernels.PARTS if mid is not None else kernels.PARTS_ONE, high, *args, b=mid, c=low)
    ft = np.float32 if in_bits <= 8 and k <= _F32_MAX_K else np.float64
    # The exact integer products go to the kernel as floats: it converts them while copying.
    return _convert_fused(kernels.ACC, a.data.astype(ft) @ b.data.astype(ft), *args)


def _align_frac(fw: list[tuple[int, int]], acc_bits: int) -> int:
    """F_acc of :func:`align_terms` for terms with (F_i, w_i)."""
    if len(fw) == 2:  # the elementwise commands' case, without generators
        (f1, w1), (f2, w2) = fw
        finest = f1 if f1 > f2 else f2
        room = min(f1 - w1, f2 - w2) + acc_bits - 1
        return finest if finest < room else room
    return min(max(f for f, _ in fw), min(f + acc_bits - 1 - w for f, w in fw))


def _shift_int64(x: np.ndarray, d: int) -> np.ndarray:
    """x * 2**d, or floor(x / 2**-d) for d < 0, in int64 (the caller bounds the result)."""
    if d > 0:
        return x << d
    if d < 0:
        return x >> min(-d, 63)
    return x


def _pair_shifted(x: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """x * 2**d (d >= 0, the result below 2**79) or floor(x / 2**-d) as an (hi, lo) pair."""
    if d < 0:
        x = x >> min(-d, 63)
        return x >> 32, x & _M32
    if d >= 32:
        return x << (d - 32), np.zeros(x.shape, dtype=np.int64)
    lo = x << d  # only its low 32 bits are kept: a wrap above them does not matter
    lo &= _M32
    return x >> (32 - d), lo


def _pair_addsub(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], sign: int):
    lo = a[1] + b[1] if sign > 0 else a[1] - b[1]  # in (-2**32, 2**33): carry or borrow into hi
    hi = a[0] + b[0] if sign > 0 else a[0] - b[0]
    hi += lo >> 32
    lo &= _M32
    return hi, lo


def _aligned_sum(x, fx: tuple[int, int], y, fy: tuple[int, int], sign: int, acc_bits: int, args_tail,
                 alpha: int = 1) -> OpResult:
    """Convert ``alpha * x +/- y`` (int64 arrays, y possibly one broadcast row) aligned as :func:`align_terms`.

    ``fx`` describes the product ``alpha * x`` (its F and width); |alpha * x| <= 2**62.
    """
    f_acc = _align_frac([fx, fy], acc_bits)
    dx, dy = f_acc - fx[0], f_acc - fy[0]
    # |term| < 2**(w - 1 + max(d, 0)) for a w-bit term shifted by d; their sum one bit more
    bound = max(fx[1] + (dx if dx > 0 else 0), fy[1] + (dy if dy > 0 else 0))
    if x.ndim == y.ndim == 2 and y.shape[1] == x.shape[1] and y.shape[0] in (1, x.shape[0]):
        # compiled: an int64 sum below 2**52 (8/16-bit accumulators: below 2**47), else (hi, lo)
        # pairs below 2**79, never too wide for the pair kernel
        kind = kernels.SUM if acc_bits <= 48 or bound <= 52 else kernels.PAIR_SUM
        return _convert_fused(kind, x, f_acc, *args_tail, b=y, alpha=alpha, da=dx, db=dy, sign=sign)
    if alpha != 1:
        x = x * alpha
    if acc_bits <= 48 or bound <= 52:
        tx, ty = _shift_int64(x, dx), _shift_int64(y, dy)
        acc = tx + ty if sign > 0 else tx - ty
        if acc.shape != x.shape:
            acc = np.broadcast_to(acc, x.shape)
        return _convert_int64(acc, f_acc, acc_bits, *args_tail)
    hi, lo = _pair_addsub(_pair_shifted(x, dx), _pair_shifted(y, dy), sign)
    if hi.shape != x.shape:
        hi, lo = np.broadcast_to(hi, x.shape), np.broadcast_to(lo, x.shape)
    return _convert_pair(hi, lo, f_acc, acc_bits, *args_tail)


def _addsub(a: DfpTensor, b: DfpTensor, sign: int, out_fmt, rounding, cfg, rng, name) -> OpResult:
    _check_broadcast(a, b, name)
    w = _op_width(a.fmt, b.fmt, out_fmt)
    return _aligned_sum(a.data, (a.fmt.frac, a.fmt.bits), b.data, (b.fmt.frac, b.fmt.bits), sign, acc_width(w),
                        (out_fmt, rounding, cfg, rng, w))


def add(a, b, out_fmt, rounding, cfg, rng) -> OpResult:
    return _addsub(a, b, +1, out_fmt, rounding, cfg, rng, "add")


def sub(a, b, out_fmt, rounding, cfg, rng) -> OpResult:
    return _addsub(a, b, -1, out_fmt, rounding, cfg, rng, "sub")


def mul(a: DfpTensor, b: DfpTensor, out_fmt, rounding, cfg, rng) -> OpResult:
    _check_broadcast(a, b, "mul")
    w = _op_width(a.fmt, b.fmt, out_fmt)
    acc = a.data * b.data  # |a * b| <= 2**62: exact in int64
    if acc.shape != a.shape:
        acc = np.broadcast_to(acc, a.shape)
    args = (a.fmt.frac + b.fmt.frac, acc_width(w), out_fmt, rounding, cfg, rng, w)
    if max(a.fmt.bits, b.fmt.bits) <= 16:
        return _convert_int64(acc, *args)
    return _convert_pair(acc >> 32, acc & _M32, *args)


def axpy(alpha: int, alpha_frac: int, x: DfpTensor, y: DfpTensor, out_fmt, rounding, cfg, rng) -> OpResult:
    """alpha * x + y; ``alpha`` is a raw W_op-bit integer with ``alpha_frac`` fraction bits."""
    if x.shape != y.shape:
        raise ValueError(f"axpy: x is {x.shape} but y is {y.shape}")
    w = _op_width(x.fmt, y.fmt, out_fmt)
    check_frac(alpha_frac)  # as DfpFormat(w, alpha_frac) did
    if not -(1 << (w.bits - 1)) <= int(alpha) < 1 << (w.bits - 1):
        raise ValueError(f"axpy: alpha={alpha} does not fit {w.bits} bits")
    # |alpha * x| <= 2**62: exact in int64
    return _aligned_sum(x.data, (alpha_frac + x.fmt.frac, 2 * w.bits), y.data, (y.fmt.frac, y.fmt.bits), +1,
                        acc_width(w), (out_fmt, rounding, cfg, rng, w), alpha=int(alpha))


def relu(x: DfpTensor, out_fmt, rounding, cfg, rng) -> OpResult:
    w = _op_width(x.fmt, out_fmt)
    if x.data.ndim == 2:
        return _convert_fused(kernels.RELU, x.data, x.fmt.frac, out_fmt, rounding, cfg, rng, w)
    return _convert_int64(np.maximum(x.data, 0), x.fmt.frac, acc_width(w), out_fmt, rounding, cfg, rng, w,
                          nonneg=True)


def relu_backward(dy: DfpTensor, x: DfpTensor, out_fmt, rounding, cfg, rng) -> OpResult:
    if dy.shape != x.shape:
        raise ValueError(f"relu_backward: dy is {dy.shape} but x is {x.shape}")
    w = _op_width(dy.fmt, x.fmt, out_fmt)
    if dy.data.ndim == 2:
        return _convert_fused(kernels.RELU_BACKWARD, dy.data, dy.fmt.frac, out_fmt, rounding, cfg, rng, w, b=x.data)
    acc = np.where(x.data > 0, dy.data, 0)
    return _convert_int64(acc, dy.fmt.frac, acc_width(w), out_fmt, rounding, cfg, rng, w)


def convert(x: DfpTensor, out_fmt, rounding, cfg, rng) -> OpResult:
    w = _op_width(x.fmt, out_fmt)
    return _convert_int64(x.data, x.fmt.frac, acc_width(w), out_fmt, rounding, cfg, rng, w, owned=False)


def scalar_to_dfp(value: float, width: Width) -> tuple[int, int]:
    """A scalar (learning rate, momentum) as (raw, frac) with the most precision ``width`` allows."""
    from .formats import best_frac_for, quantize_float

    f = best_frac_for(np.array([value]), width)
    q, _, _ = quantize_float(np.array([value]), DfpFormat(width, f), RoundingMode.NEAREST_EVEN, name="scalar")
    return int(q[0]), f

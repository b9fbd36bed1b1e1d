"""Compiled (numba) forms of the golden model's hottest loops, bit-identical to the NumPy code.

The NumPy forms in :mod:`reference.ops` stay the readable definition; these kernels do the same
integer arithmetic in a few tight loops instead of a dozen NumPy calls and temporaries,
which is what a conversion of a few thousand values costs in NumPy (issue #2: a dfp epoch within
3x of fp32). ``tests/reference/test_kernels.py`` compares each kernel with its NumPy twin on
seeded random inputs and on every corner the NumPy code documents (ties, the most negative value,
saturation, shifts of every sign and size, every rounding mode and width).

The kernels are compiled on first use and cached next to this file (``numba`` ``cache=True``), so
only the first process on a fresh checkout pays the compile time (7.6 s for :func:`warm_up`'s kernels,
about 15 s with the specialisations a dfp8/16/32 training adds, on the 2-core build machine under load);
later processes load them in 0.3-0.8 s.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

from .formats import STOCHASTIC_BITS, RoundingMode

_FLOOR = int(RoundingMode.FLOOR)
_NEAREST_EVEN = int(RoundingMode.NEAREST_EVEN)
_STOCHASTIC = int(RoundingMode.STOCHASTIC)
_SB = STOCHASTIC_BITS


#: How an elementwise command forms its accumulator value from operands ``a`` and ``b``.
ACC = 0  # v = a (a precomputed accumulator, or CONVERT)
SUM = 1  # v = shift(alpha * a, da) + sign * shift(b, db) (ADD, SUB, AXPY; b may be one broadcast row)
RELU = 2  # v = max(a, 0)
RELU_BACKWARD = 3  # v = a where b > 0, else 0
PAIR = 4  # v = a * 2**32 + b, 0 <= b < 2**32 (an accumulator up to 80 bits)
PAIR_SUM = 5  # SUM formed as such pairs (32-bit operands, accumulator up to 80 bits)
PARTS = 6  # v = a * 2**32 + b * 2**16 + c: float64 partial products of a split 32-bit matmul
PARTS_ONE = 7  # v = a * 2**16 + c: the same with one operand split
SPLIT3_COLS = 8  # v = P2 * 2**22 + P1 * 2**11 + P0 with a = [P0 | P1 | P2] (see split_pieces)
SPLIT3_ROWS = 9  # the same with a = [P0 ; P1 ; P2]
SPLIT2_COLS = 10  # v = P1 * 2**16 + P0 with a = [P0 | P1]
SPLIT2_ROWS = 11  # the same with a = [P0 ; P1]


@numba.njit(cache=True, nogil=True, inline="always")
def _shift(x: int, d: int) -> int:  # pragma: no cover - compiled
    """``ops._shift_int64`` of one value."""
    if d > 0:
        return x << d
    if d < 0:
        return x >> min(-d, 63)
    return x


@numba.njit(cache=True, nogil=True)
def _round_saturate(acc, s, k, mode, u16, cols, bits, q):  # pragma: no cover - compiled
    """Round ``acc`` (flat int64, rows of ``cols``) right by ``s`` > 0 (else shift left by ``k`` >= 0)
    with ``mode``, saturate to ``bits`` bits into ``q``; returns (overflow, values that are 0).

    Each loop is simple and branch-free where the data decides, so that LLVM vectorises it;
    the decisions that hold for the whole command (shift, mode) are taken outside the loops.
    """
    lo_lim = -(1 << (bits - 1))
    hi_lim = (1 << (bits - 1)) - 1
    n = acc.size
    if s > 0:
        if mode == _FLOOR:
            for t in range(n):
                q[t] = acc[t] >> s
        elif mode == _NEAREST_EVEN:
            h = (1 << (s - 1)) - 1
            for t in range(n):
                v = acc[t]
                q[t] = (v + ((v >> s) & 1) + h) >> s
        elif s >= _SB:
            for t in range(n):
                q[t] = (acc[t] + (u16[t // cols, t % cols] << (s - _SB))) >> s
        else:
            for t in range(n):
                q[t] = (acc[t] + (u16[t // cols, t % cols] >> (_SB - s))) >> s
    elif k > 0:
        for t in range(n):
            q[t] = min(max(acc[t], lo_lim), hi_lim) << k  # a clamped value saturates as v does
    else:
        for t in range(n):
            q[t] = acc[t]
    overflow = 0
    nulls = 0
    for t in range(n):
        r = q[t]
        c = min(max(r, lo_lim), hi_lim)
        overflow += np.int64(c != r)
        nulls += np.int64(c == 0)
        q[t] = c
    return overflow, nulls


@numba.njit(cache=True, nogil=True)
def _histogram(bins, nb):  # pragma: no cover - compiled
    """Counts of ``bins`` in [0, nb) (bin ``nb``: zeros, dropped), spread over four rows while
    counting: consecutive increments of one bin would otherwise wait on each other."""
    hist4 = np.zeros((4, nb + 1), dtype=np.int64)
    for t in range(bins.size):
        hist4[t & 3, bins[t]] += 1
    return hist4[0, :nb] + hist4[1, :nb] + hist4[2, :nb] + hist4[3, :nb]


@numba.njit(cache=True, nogil=True)
def convert_int64(kind, a, b, alpha, da, db, sign, shift, mode, u16, bits, base, nb):  # pragma: no cover
    """Form, analyse and convert the 2-D int64 accumulator of one command in one compiled call.

    ``kind`` says how each value ``v`` comes from ``a`` and ``b`` (:data:`ACC`, :data:`SUM`,
    :data:`RELU`, :data:`RELU_BACKWARD`); every |v| must be below 2**52. Returns (converted
    values of ``a``'s shape, histogram, zeros, overflow, underflow), counters unsaturated; the
    histogram bins each non-zero value at ``clamp(p(v) - base, 0, nb - 1)`` with ``base = F_acc
    + hist_min_exp``.

    ``shift = F_acc - F_out``: a right shift rounds with ``mode`` (``u16``: the random words of
    stochastic rounding, ``a``'s shape, else any 2-D array), a left shift is exact; then
    saturation to ``bits`` bits. Shifts beyond 62 first fold the dropped bits into a sticky
    bit, as ``ops._reduce_sticky``.
    """
    rows, cols = a.shape
    n = rows * cols
    acc = np.empty(n, dtype=np.int64)
    if kind == ACC:
        for i in range(rows):
            for j in range(cols):
                acc[i * cols + j] = np.int64(a[i, j])  # exact integers, also when given as floats
    elif kind == SUM:
        brow = b.shape[0] > 1
        for i in range(rows):
            ib = i if brow else 0
            for j in range(cols):
                acc[i * cols + j] = _shift(np.int64(a[i, j]) * alpha, da) + sign * _shift(np.int64(b[ib, j]), db)
    elif kind == RELU:
        for i in range(rows):
            for j in range(cols):
                acc[i * cols + j] = max(np.int64(a[i, j]), 0)
    else:
        for i in range(rows):
            for j in range(cols):
                acc[i * cols + j] = np.int64(a[i, j]) if b[i, j] > 0 else 0
    bins = np.empty(n, dtype=np.int32)
    zeros = 0
    for t in range(n):
        v = acc[t]
        p = 63 - leading_zeros(v ^ (v >> 63))  # bit_length(v or ~v) - 1: -1 for v = -1
        bins[t] = nb if v == 0 else min(max(p - base, 0), nb - 1)
        zeros += np.int64(v == 0)
    s = shift
    if s > 62:  # fold the bits below 2**(s - 17) into a sticky bit, then round by 17
        d = s - 17
        s = 17
        if d >= 63:
            for t in range(n):
                v = acc[t]
                acc[t] = (v >> 63) | np.int64(v != 0)
        else:
            m = (1 << d) - 1
            for t in range(n):
                v = acc[t]
                acc[t] = (v >> d) | np.int64((v & m) != 0)
    k = min(-shift, bits) if shift < 0 else 0  # a larger left shift saturates every non-zero value alike
    out = np.empty((rows, cols), dtype=np.int64)
    overflow, nulls = _round_saturate(acc, s, k, mode, u16, cols, bits, out.reshape(n))
    return out, _histogram(bins, nb), zeros, overflow, nulls - zeros  # a zero converts to 0


_M32 = (1 << 32) - 1


@numba.njit(cache=True, nogil=True, inline="always")
def _pair_shift(x, d):  # pragma: no cover - compiled
    """``ops._pair_shifted``: x * 2**d (d >= 0, below 2**79) or floor(x / 2**-d) as (hi, lo)."""
    if d < 0:
        x = x >> min(-d, 63)
        return x >> 32, x & _M32
    if d >= 32:
        return x << (d - 32), 0
    return x >> (32 - d), (x << d) & _M32  # only the low 32 bits of x << d are kept


@numba.njit(cache=True, nogil=True)
def _convert_pairs(hi, lo, rows, cols, shift, mode, u16, bits, base, nb):  # pragma: no cover - compiled
    """The analysis and conversion of :func:`convert_pair` once its flat pairs are formed."""
    n = rows * cols
    bins = np.empty(n, dtype=np.int32)
    zeros = 0
    too_wide = 0
    for t in range(n):
        h = hi[t]
        sg = h >> 63
        mh = h ^ sg  # ~v = (~hi) * 2**32 + (2**32 - 1 - lo) for negative v
        ml = (sg & _M32) ^ lo[t]
        p = 95 - leading_zeros(mh) if mh != 0 else 63 - leading_zeros(ml)
        z = (h | lo[t]) == 0
        bins[t] = nb if z else min(max(p - base, 0), nb - 1)
        zeros += np.int64(z)
        too_wide += np.int64(mh >= 1 << 52)
    if too_wide:
        return None
    x = np.empty(n, dtype=np.int64)
    s = shift
    k = 0
    if shift > 0:
        # |hi| >= 2**shift: |v| >= 2**(shift + 32), beyond 2**32 once rounded; +-2**61 saturates alike
        big = 1 << min(shift, 62)
        if shift <= 29:  # |v| < 2**(shift + 33) <= 2**62
            for t in range(n):
                h = hi[t]
                x[t] = (1 << 61) if h >= big else -(1 << 61) if h < -big else (h << 32) | lo[t]
        else:
            d = shift - 17
            s = 17
            for t in range(n):
                h = hi[t]
                w = lo[t]
                if d >= 32:
                    e = d - 32
                    if e >= 63:
                        r = (h >> 63) | np.int64(h != 0)
                    elif e > 0:
                        r = (h >> e) | np.int64((h & ((1 << e) - 1)) != 0)
                    else:
                        r = h
                    r |= np.int64(w != 0)
                else:
                    r = (h << (32 - d)) | (w >> d) | np.int64((w & ((1 << d) - 1)) != 0)
                x[t] = (1 << 61) if h >= big else -(1 << 61) if h < -big else r
    else:
        k = min(-shift, bits)
        for t in range(n):  # |v| >= 2**62 saturates; smaller values fit int64
            h = hi[t]
            x[t] = (1 << 40) if h >= 1 << 30 else -(1 << 40) if h < -(1 << 30) else (h << 32) | lo[t]
    out = np.empty((rows, cols), dtype=np.int64)
    overflow, nulls = _round_saturate(x, s, k, mode, u16, cols, bits, out.reshape(n))
    return out, _histogram(bins, nb), zeros, overflow, nulls - zeros


@numba.njit(cache=True, nogil=True)
def convert_pair(kind, a, b, alpha, da, db, sign, shift, mode, u16, bits, base, nb):  # pragma: no cover
    """:func:`convert_int64` of an accumulator up to 80 bits, held as v = hi * 2**32 + lo (0 <= lo < 2**32).

    ``kind`` :data:`PAIR`: ``hi = a``, ``lo = b``; :data:`PAIR_SUM`: ``shift(alpha * a, da) +
    sign * shift(b, db)`` formed as pairs (``ops._aligned_sum``'s wide branch; ``b`` may be one
    broadcast row). Returns None when some |hi| >= 2**52 (the caller then takes the exact
    fallback), else what :func:`convert_int64` returns. Rounding works on an int64 value that
    provably converts the same way, as ``ops._convert_pair`` does: a value of magnitude at
    least 2**(shift + 32) saturates in every mode; a right shift beyond 29 first folds the bits
    below 2**(shift - 17) into a sticky bit and rounds by 17; before a left shift, a value of
    magnitude at least 2**62 saturates.
    """
    rows, cols = a.shape
    n = rows * cols
    hi = np.empty(n, dtype=np.int64)
    lo = np.empty(n, dtype=np.int64)
    if kind == PAIR:
        for i in range(rows):
            for j in range(cols):
                hi[i * cols + j] = a[i, j]
                lo[i * cols + j] = b[i, j]
    else:
        brow = b.shape[0] > 1
        for i in range(rows):
            ib = i if brow else 0
            for j in range(cols):
                xh, xl = _pair_shift(a[i, j] * alpha, da)
                yh, yl = _pair_shift(b[ib, j], db)
                lw = xl + sign * yl  # in (-2**32, 2**33): carry or borrow into hi
                hi[i * cols + j] = xh + sign * yh + (lw >> 32)
                lo[i * cols + j] = lw & _M32
    return _convert_pairs(hi, lo, rows, cols, shift, mode, u16, bits, base, nb)


@numba.njit(cache=True, nogil=True)
def split_cols(a):  # pragma: no cover - compiled
    """[M, K] integers of at most 32 bits -> float64 [M, 2K] = [a >> 16 | a & 0xFFFF] (exact halves)."""
    rows, k = a.shape
    out = np.empty((rows, 2 * k), dtype=np.float64)
    for i in range(rows):
        for j in range(k):
            v = a[i, j]
            out[i, j] = v >> 16
            out[i, k + j] = v & 0xFFFF
    return out


@numba.njit(cache=True, nogil=True)
def split_rows(b):  # pragma: no cover - compiled
    """[K, N] integers of at most 32 bits -> float64 [2K, N] = [b & 0xFFFF ; b >> 16] (exact halves)."""
    k, cols = b.shape
    out = np.empty((2 * k, cols), dtype=np.float64)
    for i in range(k):
        for j in range(cols):
            v = b[i, j]
            out[i, j] = v & 0xFFFF
            out[k + i, j] = v >> 16
    return out


@numba.njit(cache=True, nogil=True)
def convert_parts(high, mid, low, three, shift, mode, u16, bits, base, nb):  # pragma: no cover - compiled
    """:func:`convert_pair` of a 32-bit matrix product given as exact float64 partial products.

    ``three``: v = high * 2**32 + mid * 2**16 + low (both operands split in 16-bit halves);
    else v = high * 2**16 + low (one operand split; ``mid`` unused). The pair is recombined as
    ``ops._matmul_pair`` does, then converted as :func:`convert_pair`.
    """
    rows, cols = high.shape
    n = rows * cols
    hi = np.empty(n, dtype=np.int64)
    lo = np.empty(n, dtype=np.int64)
    for i in range(rows):
        for j in range(cols):
            t = np.int64(low[i, j])
            if three:
                p = np.int64(mid[i, j])
                t += (p & 0xFFFF) << 16
                h = np.int64(high[i, j]) + (p >> 16)
            else:
                h = np.int64(high[i, j])
                t += (h & 0xFFFF) << 16
                h >>= 16
            hi[i * cols + j] = h + (t >> 32)
            lo[i * cols + j] = t & _M32
    return _convert_pairs(hi, lo, rows, cols, shift, mode, u16, bits, base, nb)


@numba.njit(cache=True, nogil=True)
def scan_f8(x):  # pragma: no cover - compiled
    """A float64 copy of int64 ``x`` [R, C] (values of at most 32 bits) with, from the same pass, the OR
    of all values, max |x| and the largest L1 norm of a row and of a column."""
    rows, cols = x.shape
    out = np.empty((rows, cols), dtype=np.float64)
    col_sums = np.zeros(cols, dtype=np.int64)
    orv = 0
    mx = 0
    row_best = 0
    for i in range(rows):
        s = 0
        for j in range(cols):
            v = x[i, j]
            out[i, j] = v
            m = abs(v)
            orv |= v
            mx = max(mx, m)
            s += m
            col_sums[j] += m
        row_best = max(row_best, s)
    col_best = 0
    for j in range(cols):
        col_best = max(col_best, col_sums[j])
    return out, orv, mx, row_best, col_best


@numba.njit(cache=True, nogil=True)
def split_pieces(x, by_cols, n):  # pragma: no cover - compiled
    """Integers of at most 32 bits in ``n`` exact float64 pieces, ``x = sum_i x_i * 2**(w * i)``.

    ``n = 3``: w = 11; ``x0``, ``x1`` are the unsigned 11-bit fields, ``x2 = x >> 22`` is signed
    (|x2| <= 2**9). ``n = 2``: w = 16, balanced digits: ``x0 = ((x + 2**15) & 0xFFFF) - 2**15`` in
    [-2**15, 2**15), ``x1 = (x - x0) >> 16``, so every |x_i| <= 2**15.
    ``by_cols``: [R, C] -> [R, nC] = [x0 | x1 | ...], else [nR, C] = [x0 ; x1 ; ...].
    """
    rows, cols = x.shape
    out = np.empty((rows, n * cols) if by_cols else (n * rows, cols), dtype=np.float64)
    for i in range(rows):
        for j in range(cols):
            v = np.int64(x[i, j])
            if n == 3:
                p0, p1, p2 = v & 0x7FF, (v >> 11) & 0x7FF, v >> 22
            else:
                p0 = ((v + 0x8000) & 0xFFFF) - 0x8000
                p1, p2 = (v - p0) >> 16, 0
            if by_cols:
                out[i, j] = p0
                out[i, cols + j] = p1
                if n == 3:
                    out[i, 2 * cols + j] = p2
            else:
                out[i, j] = p0
                out[rows + i, j] = p1
                if n == 3:
                    out[2 * rows + i, j] = p2
    return out


@numba.njit(cache=True, nogil=True)
def convert_split(p, by_cols, n, shift, mode, u16, bits, base, nb):  # pragma: no cover - compiled
    """:func:`convert_pair` of a 32-bit matrix product whose one operand was cut by :func:`split_pieces`.

    ``p`` is the exact float64 product with the ``n`` pieces (``[M, nN]`` by columns, else ``[nM, N]``):
    v = sum_i P_i * 2**(w * i) (w = 11 for three pieces, 16 for two), each |P_i| <= 2**53, recombined
    as (hi, lo) pairs.
    """
    w = 11 if n == 3 else 16
    if by_cols:
        rows, cols = p.shape[0], p.shape[1] // n
    else:
        rows, cols = p.shape[0] // n, p.shape[1]
    m = rows * cols
    hi = np.empty(m, dtype=np.int64)
    lo = np.empty(m, dtype=np.int64)
    for i in range(rows):
        for j in range(cols):
            if by_cols:
                x0, x1 = np.int64(p[i, j]), np.int64(p[i, cols + j])
                x2 = np.int64(p[i, 2 * cols + j]) if n == 3 else 0
            else:
                x0, x1 = np.int64(p[i, j]), np.int64(p[rows + i, j])
                x2 = np.int64(p[2 * rows + i, j]) if n == 3 else 0
            h2, l2 = _pair_shift(x2, 2 * w)
            h1, l1 = _pair_shift(x1, w)
            lw = l2 + l1 + (x0 & _M32)  # below 3 * 2**32
            hi[i * cols + j] = h2 + h1 + (x0 >> 32) + (lw >> 32)
            lo[i * cols + j] = lw & _M32
    return _convert_pairs(hi, lo, rows, cols, shift, mode, u16, bits, base, nb)


@numba.njit(cache=True, nogil=True)
def float_hist(x, nb, lo_exp):  # pragma: no cover - compiled
    """``stats.float_stats`` of flat float64 ``x``: (histogram, zeros), or None if a value is not finite.

    Bin of a non-zero value: ``e - lo_exp`` clamped to [0, nb), with ``|x|`` in ``[2**e, 2**(e+1))``
    (``math.frexp``'s exponent minus one), one lower for a negative power of two.
    """
    hist = np.zeros(nb, dtype=np.int64)
    zeros = 0
    for t in range(x.size):
        v = x[t]
        if not np.isfinite(v):
            return None
        if v == 0:
            zeros += 1
            continue
        m, ex = math.frexp(v)
        e = ex - 1 - lo_exp - (1 if m == -0.5 else 0)
        hist[min(max(e, 0), nb - 1)] += 1
    return hist, zeros


@numba.njit(cache=True, nogil=True)
def quantize_nearest(x, scale, lo, hi):  # pragma: no cover - compiled
    """``formats.quantize_float`` to nearest even of flat float64 ``x``: ``clip(rint(x * scale), lo, hi)``
    as int64 (``scale = 2**F`` with F in [-32, 63], so the product is exact but for results below
    2**-1022 or beyond 2**1023, which round alike), or None if a value is not finite."""
    q = np.empty(x.size, dtype=np.int64)
    for t in range(x.size):
        v = x[t]
        if not np.isfinite(v):
            return None
        r = np.rint(v * scale)
        q[t] = lo if r < lo else hi if r > hi else np.int64(r)
    return q


@numba.njit(cache=True, nogil=True)
def policy_fracs(h, bits, current, lo_exp, threshold, tbits, fmin, fmax, headroom, rise):  # pragma: no cover
    """``stats.next_fracs`` for histograms ``h`` [T, bins] with counts in [0, 2**48), else None:
    i* = the number of bins i with over(i) > floor(n * threshold / 2**tbits), target
    T = bits - 2 - (lo_exp + i*) - headroom clamped to [fmin, fmax], F = T if T <= current or rise = 0
    else min(T, current + rise); ``current`` where n = 0 (``tbits``: ``stats.THRESHOLD_BITS``)."""
    rows, nb = h.shape
    out = np.empty(rows, dtype=np.int64)
    for t in range(rows):
        n = 0
        for i in range(nb):
            v = h[t, i]
            if v < 0 or v >= 1 << 48:
                return None
            n += v
        if n == 0:
            out[t] = current[t]
            continue
        budget = (n >> tbits) * threshold + (((n & ((1 << tbits) - 1)) * threshold) >> tbits)
        c = 0
        istar = 0
        for i in range(nb):
            c += h[t, i]
            istar += np.int64(n - c > budget)
        f = min(max(bits[t] - 2 - (lo_exp + istar) - headroom, fmin), fmax)
        if rise != 0 and f > current[t]:
            f = min(f, current[t] + rise)
        out[t] = f
    return out


@numba.njit(cache=True, nogil=True)
def xorshift_beats(states, n_beats, slots):  # pragma: no cover - compiled
    """``rng.draw_beats`` after its checks: every generator steps once per beat (xorshift32 13, 17, 5).

    ``states``: uint32[G]. Returns (int64 words [n_beats, slots], uint32 states after the last beat).
    """
    g = states.size
    s = np.empty(g, dtype=np.int64)
    for j in range(g):
        s[j] = states[j]
    words = np.empty((n_beats, slots), dtype=np.int64)
    for b in range(n_beats):
        for j in range(g):
            x = s[j]
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            s[j] = x
        for j in range(slots):
            words[b, j] = s[j] >> 16
    final = np.empty(g, dtype=np.uint32)
    for j in range(g):
        final[j] = s[j]
    return words, final


# ---------------------------------------------------------------------------------------
# Host data movement of the layers (reference.layers): exact copies, no arithmetic.
# ---------------------------------------------------------------------------------------


@numba.njit(cache=True, nogil=True)
def maxpool_nhwc(x, n, h, w, c, k, s, pad, ho, wo, fill):  # pragma: no cover - compiled
    """``MaxPool2d``'s NumPy selection: per window the first maximum in (ky, kx) order, as ``np.argmax``
    over the window (padding holds ``fill``; a NaN is a maximum). Returns (index ``[N, Ho, Wo, C]`` of
    the chosen element in ``0 .. k*k-1``, chosen values ``[N*Ho*Wo, C]``)."""
    arg = np.zeros((n, ho, wo, c), dtype=np.int64)
    out = np.empty((n * ho * wo, c), dtype=x.dtype)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                r = (b * ho + i) * wo + j
                for e in range(k * k):
                    y = i * s + e // k - pad
                    xx = j * s + e % k - pad
                    inside = 0 <= y < h and 0 <= xx < w
                    src = (b * h + y) * w + xx
                    for ch in range(c):
                        v = x[src, ch] if inside else fill
                        if e == 0:
                            out[r, ch] = v
                        else:
                            best = out[r, ch]
                            if v > best or (v != v and best == best):
                                out[r, ch] = v
                                arg[b, i, j, ch] = e
    return arg, out


@numba.njit(cache=True, nogil=True)
def pool_scatter(d, pick, per_elem, n, h, w, c, k, s, pad, ho, wo, m, u, v):  # pragma: no cover - compiled
    """``_Pool._scatter``'s one window class ``(u, v)`` (output rows ``i % m == u``, columns ``j % m == v``):
    window values back to ``[N*H*W, C]`` (zeros elsewhere; elements in the padding dropped).

    ``per_elem``: ``d`` is ``[N*Ho*Wo*C, k*k]`` (every element); else ``d`` is ``[N*Ho*Wo, C]`` and
    ``pick [N, Ho, Wo, C]`` names each window's element."""
    out = np.zeros((n * h * w, c), dtype=d.dtype)
    kk = k * k
    for b in range(n):
        for i in range(u, ho, m):
            for j in range(v, wo, m):
                r = (b * ho + i) * wo + j
                for ch in range(c):
                    if per_elem:
                        for e in range(kk):
                            y = i * s + e // k - pad
                            xx = j * s + e % k - pad
                            if 0 <= y < h and 0 <= xx < w:
                                out[(b * h + y) * w + xx, ch] = d[r * c + ch, e]
                    else:
                        e = pick[b, i, j, ch]
                        y = i * s + e // k - pad
                        xx = j * s + e % k - pad
                        if 0 <= y < h and 0 <= xx < w:
                            out[(b * h + y) * w + xx, ch] = d[r, ch]
    return out


def convert(kind: int, a: np.ndarray, shift: int, rounding: RoundingMode, u16: np.ndarray | None, bits: int,
            base: int, nb: int, b: np.ndarray | None = None, alpha: int = 1, da: int = 0, db: int = 0,
            sign: int = 1, c: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int, int, int] | None:
    """The kernel of ``kind`` with the unused operands filled in: (q, hist, zeros, overflow, underflow),
    or None from a pair wider than the kernels handle."""
    words = _NONE if u16 is None else u16
    mode = int(rounding)
    if kind >= SPLIT3_COLS:
        return convert_split(a, kind % 2 == 0, 3 if kind < SPLIT2_COLS else 2, shift, mode, words, bits, base, nb)
    if kind >= PARTS:
        return convert_parts(a, a if b is None else b, c, kind == PARTS, shift, mode, words, bits, base, nb)
    fn = convert_pair if kind >= PAIR else convert_int64
    return fn(kind, a, _NONE if b is None else b, alpha, da, db, sign, shift, mode, words, bits, base, nb)


_NONE = np.zeros((1, 1), dtype=np.int64)


def warm_up() -> None:
    """Load the compiled kernels now (about 0.3 s per process, from numba's cache), so that a
    timed run measures its own work, not the first call's loading."""
    one = np.ones((1, 1), dtype=np.int64)
    for kind in (ACC, PAIR):
        convert(kind, one, 1, RoundingMode.NEAREST_EVEN, None, 16, 0, 2, b=one)
    convert(ACC, one.astype(np.float64), 1, RoundingMode.NEAREST_EVEN, None, 16, 0, 2)
    scan_f8(one)
    convert(SPLIT3_COLS, split_pieces(one, True, 3), 1, RoundingMode.NEAREST_EVEN, None, 32, 0, 2)
    xorshift_beats(np.ones(1, dtype=np.uint32), 1, 1)

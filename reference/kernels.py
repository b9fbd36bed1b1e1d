"""Compiled (numba) forms of the golden model's hottest loops, bit-identical to the NumPy code.

The NumPy forms in :mod:`reference.ops` stay the readable definition; these kernels do the same
integer arithmetic in a few tight loops instead of a dozen NumPy calls and temporaries,
which is what a conversion of a few thousand values costs in NumPy (issue #2: a dfp epoch within
3x of fp32). ``tests/reference/test_kernels.py`` compares each kernel with its NumPy twin on
seeded random inputs and on every corner the NumPy code documents (ties, the most negative value,
saturation, shifts of every sign and size, every rounding mode and width).

The kernels are compiled on first use and cached next to this file (``numba`` ``cache=True``), so
only the first process on a fresh checkout pays the compile time (about a second per kernel).
"""

from __future__ import annotations

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


@numba.njit(cache=True, nogil=True, inline="always")
def _shift(x: int, d: int) -> int:  # pragma: no cover - compiled
    """``ops._shift_int64`` of one value."""
    if d > 0:
        return x << d
    if d < 0:
        return x >> min(-d, 63)
    return x


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
    lo_lim = -(1 << (bits - 1))
    hi_lim = (1 << (bits - 1)) - 1
    zeros = 0
    overflow = 0
    underflow = 0
    s = shift
    d = 0
    if s > 62:
        d = s - 17
        s = 17
    k = 0
    if shift < 0:
        k = min(-shift, bits)  # a larger shift saturates every non-zero value the same way
    rows, cols = a.shape
    n = rows * cols
    out = np.empty((rows, cols), dtype=np.int64)
    acc = np.empty(n, dtype=np.int64)
    # Each loop below is simple and branch-free where the data decides, so that LLVM vectorises
    # it; the decisions that hold for the whole command (kind, shift, mode) are taken outside.
    if kind == ACC:
        for i in range(rows):
            for j in range(cols):
                acc[i * cols + j] = a[i, j]
    elif kind == SUM:
        brow = b.shape[0] > 1
        for i in range(rows):
            ib = i if brow else 0
            for j in range(cols):
                acc[i * cols + j] = _shift(a[i, j] * alpha, da) + sign * _shift(b[ib, j], db)
    elif kind == RELU:
        for i in range(rows):
            for j in range(cols):
                acc[i * cols + j] = max(a[i, j], 0)
    else:
        for i in range(rows):
            for j in range(cols):
                acc[i * cols + j] = a[i, j] if b[i, j] > 0 else 0
    bins = np.empty(n, dtype=np.int32)
    for t in range(n):
        v = acc[t]
        p = 63 - leading_zeros(v ^ (v >> 63))  # bit_length(v or ~v) - 1: -1 for v = -1
        bins[t] = nb if v == 0 else min(max(p - base, 0), nb - 1)
        zeros += np.int64(v == 0)
    q = out.reshape(n)
    if shift > 0:
        if d >= 63:
            for t in range(n):
                v = acc[t]
                acc[t] = (v >> 63) | np.int64(v != 0)
        elif d > 0:
            m = (1 << d) - 1
            for t in range(n):
                v = acc[t]
                acc[t] = (v >> d) | np.int64((v & m) != 0)
        if mode == _FLOOR:
            for t in range(n):
                q[t] = acc[t] >> s
        elif mode == _NEAREST_EVEN:
            h = (1 << (s - 1)) - 1
            for t in range(n):
                v = acc[t]
                q[t] = (v + ((v >> s) & 1) + h) >> s
        elif s >= _SB:
            for i in range(rows):
                for j in range(cols):
                    q[i * cols + j] = (acc[i * cols + j] + (u16[i, j] << (s - _SB))) >> s
        else:
            for i in range(rows):
                for j in range(cols):
                    q[i * cols + j] = (acc[i * cols + j] + (u16[i, j] >> (_SB - s))) >> s
    elif k > 0:
        for t in range(n):
            q[t] = min(max(acc[t], lo_lim), hi_lim) << k  # a clamped value saturates as v does
    else:
        for t in range(n):
            q[t] = acc[t]
    for t in range(n):
        r = q[t]
        c = min(max(r, lo_lim), hi_lim)
        overflow += np.int64(c != r)
        underflow += np.int64(c == 0)
        q[t] = c
    underflow -= zeros  # a zero accumulator converts to 0
    # Spread over four rows: consecutive increments of one bin would otherwise wait on each other.
    hist4 = np.zeros((4, nb + 1), dtype=np.int64)  # column nb: the zeros, dropped
    for t in range(n):
        hist4[t & 3, bins[t]] += 1
    hist = hist4[0, :nb] + hist4[1, :nb] + hist4[2, :nb] + hist4[3, :nb]
    return out, hist, zeros, overflow, underflow


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


def convert(kind: int, a: np.ndarray, shift: int, rounding: RoundingMode, u16: np.ndarray | None, bits: int,
            base: int, nb: int, b: np.ndarray | None = None, alpha: int = 1, da: int = 0, db: int = 0,
            sign: int = 1) -> tuple[np.ndarray, np.ndarray, int, int, int]:
    """:func:`convert_int64` with the unused operands filled in: (q, hist, zeros, overflow, underflow)."""
    return convert_int64(kind, a, _NONE if b is None else b, alpha, da, db, sign, shift, int(rounding),
                         _NONE if u16 is None else u16, bits, base, nb)


_NONE = np.zeros((1, 1), dtype=np.int64)

"""Independent oracles for the golden-model numerics, written from the documented definitions.

Everything here uses Python ``int`` and ``fractions.Fraction`` only, one value at a time; it
shares no code with ``reference/`` beyond the enums and constants that *are* the
specification (RoundingMode codes, FRAC_MIN/FRAC_MAX, GOLDEN).
"""

from __future__ import annotations

import math
from fractions import Fraction

from reference.formats import RoundingMode

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9


def round_div_pow2(acc: int, shift: int, mode: RoundingMode, u16: int | None = None) -> int:
    """acc / 2**shift rounded by ``mode`` (shift <= 0: exact multiplication)."""
    if shift <= 0:
        return acc * 2**-shift
    v = Fraction(acc, 2**shift)
    fq = math.floor(v)
    frac = v - fq
    if mode == RoundingMode.FLOOR:
        return fq
    if mode == RoundingMode.NEAREST_EVEN:
        return fq + (frac > Fraction(1, 2) or (frac == Fraction(1, 2) and fq % 2 == 1))
    if mode == RoundingMode.STOCHASTIC:
        assert u16 is not None and 0 <= u16 < 2**16
        r16 = math.floor(frac * 2**16)
        return fq + (r16 + u16 >= 2**16)
    raise AssertionError(mode)


def saturate(v: int, bits: int) -> tuple[int, bool]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return min(max(v, lo), hi), not lo <= v <= hi


def msb_position(v: int) -> int:
    """Position of the most significant bit differing from the sign bit; -1 for 0 and -1."""
    return (v if v >= 0 else -v - 1).bit_length() - 1


def xorshift32(s: int) -> int:
    s ^= (s << 13) & MASK32
    s ^= s >> 17
    s ^= (s << 5) & MASK32
    return s


def seed_states(seed: int, n: int) -> list[int]:
    out = []
    for j in range(n):
        s = seed ^ (((j + 1) * GOLDEN) % 2**32)
        out.append(s if s != 0 else 1)
    return out


def hist_bin(v: int, f_acc: int, min_exp: int, bins: int) -> int:
    e = msb_position(v) - f_acc
    return min(max(e - min_exp, 0), bins - 1)

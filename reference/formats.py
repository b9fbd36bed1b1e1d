"""Dynamic fixed-point number format, rounding modes and conversions.

A value is a signed two's-complement integer ``q`` of ``W`` bits, W in {8, 16, 32},
with ``F`` fraction bits: value = q * 2**-F. ``F`` (the *point position*) lies in
``[FRAC_MIN, FRAC_MAX]`` = [-32, 63]: a negative F scales large activations, a large F
reaches gradients down to 2**-63. In the settings register F is a 7-bit two's-complement
field; the codes -64..-33 are illegal and raise the core's error status.

Every integer this module returns is exact. Rounding is defined on integers (see
:func:`round_shift`); floats enter only through :func:`quantize_float`, which is the
host-side conversion of data loaded into the core.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np

FRAC_MIN = -32
FRAC_MAX = 63
FRAC_BITS = 7  # settings-register field width of F
#: Width of one tensor id's settings-register entry (see :class:`TensorSetting`).
SETTING_BITS = 12

#: Extra accumulator bits above a full product: matrix multiplies with K <= 2**16 cannot overflow.
ACC_GUARD_BITS = 16
MAX_K = 1 << ACC_GUARD_BITS

#: Bits of the random word each value draws for stochastic rounding.
STOCHASTIC_BITS = 16


class Width(enum.IntEnum):
    """Data width; the value is the settings-register encoding (2 bits, code 3 illegal)."""

    W8 = 0
    W16 = 1
    W32 = 2

    @property
    def bits(self) -> int:
        return _WIDTH_BITS[self]  # 8 << self.value; a tuple lookup skips the enum's slow .value

    @property
    def lanes_per_word(self) -> int:
        """Values of this width in one 32-bit lane (the SIMD factor: 4, 2 or 1)."""
        return 32 // self.bits

    @classmethod
    def from_bits(cls, bits: int) -> Width:
        for w in cls:
            if w.bits == bits:
                return w
        raise ValueError(f"width: {bits!r} bits is not one of 8, 16, 32")


_WIDTH_BITS = tuple(8 << int(w) for w in Width)


class RoundingMode(enum.IntEnum):
    """Rounding applied when bits are dropped; the value is the 2-bit register encoding (3 illegal).

    NEAREST_EVEN
        round to nearest, ties to the even result.
    FLOOR
        round toward minus infinity (an arithmetic right shift).
    STOCHASTIC
        add a 16-bit random word to the 16 bits just below the kept LSB; a carry out rounds
        up. P(round up) = r16 / 2**16 where r16 is those 16 remainder bits, so the result is
        unbiased to within 2**-16 LSB. The words come from :mod:`reference.rng`.
    """

    NEAREST_EVEN = 0
    FLOOR = 1
    STOCHASTIC = 2


def acc_width(width: Width) -> int:
    """Accumulator width for operations at ``width``: a full product plus 16 guard bits.

    8 -> 32, 16 -> 48, 32 -> 80 bits. A matrix multiply with K <= 2**16 cannot overflow it;
    larger K is an illegal command. Elementwise operands are aligned so their sum fits
    (see :func:`reference.ops.align_terms`).
    """
    return 2 * width.bits + ACC_GUARD_BITS


def check_frac(frac: int, name: str = "frac") -> int:
    if isinstance(frac, bool) or not isinstance(frac, (int, np.integer)):
        raise TypeError(f"{name}: point position must be an integer, got {frac!r}")
    if not FRAC_MIN <= int(frac) <= FRAC_MAX:
        raise ValueError(f"{name}: point position {int(frac)} is outside [{FRAC_MIN}, {FRAC_MAX}]")
    return int(frac)


@dataclass(frozen=True)
class DfpFormat:
    """A dynamic fixed-point format: width and point position (fraction bits)."""

    width: Width
    frac: int

    def __post_init__(self) -> None:
        if not isinstance(self.width, Width):
            if isinstance(self.width, bool) or self.width not in {int(w) for w in Width}:
                raise ValueError(
                    f"width: {self.width!r} is not a width code (0=8, 1=16, 2=32 bits; "
                    "use Width.from_bits for a bit count)"
                )
            object.__setattr__(self, "width", Width(self.width))
        object.__setattr__(self, "frac", check_frac(self.frac))

    @property
    def bits(self) -> int:
        return _WIDTH_BITS[self.width]

    @property
    def min_int(self) -> int:
        return -(1 << (_WIDTH_BITS[self.width] - 1))

    @property
    def max_int(self) -> int:
        return (1 << (_WIDTH_BITS[self.width] - 1)) - 1

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac

    def __str__(self) -> str:
        return f"Q{self.bits}.{self.frac}"


@dataclass(frozen=True)
class TensorSetting:
    """One tensor id's entry of the settings register.

    Register encoding (12 bits, see :meth:`encode`): [1:0] width code, [8:2] point position
    (7-bit two's complement), [10:9] rounding mode, [11] auto-update flag.
    """

    fmt: DfpFormat
    rounding: RoundingMode = RoundingMode.NEAREST_EVEN
    auto: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.fmt, DfpFormat):
            raise TypeError(f"fmt: expected a DfpFormat, got {self.fmt!r}")
        if not isinstance(self.rounding, RoundingMode):
            if isinstance(self.rounding, bool) or self.rounding not in {int(m) for m in RoundingMode}:
                raise ValueError(f"rounding: {self.rounding!r} is not a rounding code (0, 1, 2)")
            object.__setattr__(self, "rounding", RoundingMode(self.rounding))
        if not isinstance(self.auto, (bool, np.bool_)):
            raise TypeError(f"auto: expected a bool, got {self.auto!r}")
        object.__setattr__(self, "auto", bool(self.auto))

    def encode(self) -> int:
        return (
            int(self.fmt.width)
            | ((self.fmt.frac & ((1 << FRAC_BITS) - 1)) << 2)
            | (int(self.rounding) << 9)
            | (int(self.auto) << 11)
        )

    @classmethod
    def decode(cls, word: int) -> TensorSetting:
        """Decode a register word; raises ValueError naming the illegal field.

        Bits above the 12-bit entry are ignored, as the core's AXI write port keeps only
        ``wdata[SETTING_BITS-1:0]``. The lowest illegal field is reported first (width,
        point position, rounding).
        """
        if isinstance(word, bool) or not isinstance(word, (int, np.integer)):
            raise TypeError(f"settings: word must be an integer, got {word!r}")
        word = int(word)
        if word < 0:
            raise ValueError(f"settings: word {word} is negative")
        wcode = word & 3
        if wcode == 3:
            raise ValueError("settings: width code 3 is illegal (0=8, 1=16, 2=32 bits)")
        f = (word >> 2) & ((1 << FRAC_BITS) - 1)
        if f >= 1 << (FRAC_BITS - 1):
            f -= 1 << FRAC_BITS
        if not FRAC_MIN <= f <= FRAC_MAX:
            raise ValueError(f"settings: point position {f} is outside [{FRAC_MIN}, {FRAC_MAX}]")
        rcode = (word >> 9) & 3
        if rcode == 3:
            raise ValueError("settings: rounding code 3 is illegal (0=nearest-even, 1=floor, 2=stochastic)")
        return cls(DfpFormat(Width(wcode), f), RoundingMode(rcode), bool((word >> 11) & 1))



def _check_int_array(q: np.ndarray, fmt: DfpFormat, name: str) -> None:
    if q.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {q.dtype}")
    if q.size and (q.min() < fmt.min_int or q.max() > fmt.max_int):
        bad = q.max() if q.max() > fmt.max_int else q.min()
        raise ValueError(
            f"{name}: values outside the {fmt.bits}-bit range [{fmt.min_int}, {fmt.max_int}] (e.g. {bad})"
        )


@dataclass(frozen=True, eq=False)
class DfpTensor:
    """A 2-D tensor of raw integers in one format. ``data`` is int64, shape [rows, cols]."""

    data: np.ndarray
    fmt: DfpFormat

    def __post_init__(self) -> None:
        d = np.asarray(self.data)
        if d.ndim == 1:
            d = d.reshape(1, -1)
        if d.ndim != 2:
            raise ValueError(f"tensor: DLU tensors are 2-D [rows, cols], got shape {d.shape}")
        _check_int_array(d, self.fmt, "tensor")
        object.__setattr__(self, "data", d.astype(np.int64, copy=False))

    @classmethod
    def _trusted(cls, data: np.ndarray, fmt: DfpFormat) -> DfpTensor:
        """A tensor of values already known to be 2-D int64 within ``fmt`` (op results, data
        movement of such values); skips the range check, which costs two passes over the data."""
        t = object.__new__(cls)
        object.__setattr__(t, "data", data)
        object.__setattr__(t, "fmt", fmt)
        return t

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape  # type: ignore[return-value]

    def to_float(self) -> np.ndarray:
        return dequantize(self.data, self.fmt)


@functools.lru_cache(maxsize=4096)
def setting_of(width: Width, frac: int, rounding: RoundingMode, auto: bool) -> TensorSetting:
    """``TensorSetting(DfpFormat(width, frac), rounding, auto)``, built and checked once per distinct
    value (both are immutable): the policy and the host rewrite settings every iteration."""
    return TensorSetting(DfpFormat(width, frac), rounding, auto)


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal`` of two arrays, at a third of its cost on the small arrays that replays
    compare by the thousand (generator states, histograms, small tensors)."""
    if a is b:
        return True
    if a.shape != b.shape:
        return False
    if a.dtype != b.dtype or a.size > 4096:
        return bool(np.array_equal(a, b))
    return a.tobytes() == b.tobytes()


def dequantize(q: np.ndarray, fmt: DfpFormat) -> np.ndarray:
    """Exact conversion to float64 (every W <= 32 value with F in range is representable)."""
    return np.ldexp(np.asarray(q, dtype=np.float64), -fmt.frac)


def quantize_float(
    x: np.ndarray,
    fmt: DfpFormat,
    rounding: RoundingMode = RoundingMode.NEAREST_EVEN,
    rng: np.random.Generator | None = None,
    name: str = "input",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Host-side conversion of floats to ``fmt``; returns (q, overflow mask, underflow mask).

    Scaling by 2**F is exact in float64; rounding follows the same definitions as
    :func:`round_shift` (stochastic uses 16 remainder bits and 16 random bits from ``rng``).
    NaN or infinite inputs raise ValueError: a silent wrong value is worse than a stop.
    """
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        bad = np.flatnonzero(~np.isfinite(x))
        first = x.flat[bad[0]]
        raise ValueError(f"{name}: {bad.size} non-finite value(s) (first at flat index {bad[0]}: {first})")
    with np.errstate(over="ignore"):
        y = np.ldexp(x, fmt.frac)  # exact, except: +-inf beyond float64, and subnormal results
    # A negative value that ldexp flushed to -0.0 still lies in (-1, 0): keep its sign so that
    # floor gives -1 (every mode's result is the same for any y in (-2**-16, 0)).
    y = np.where((y == 0) & (x < 0), -np.finfo(np.float64).smallest_subnormal, y)
    fl = np.floor(y)
    if rounding == RoundingMode.NEAREST_EVEN:
        r = np.rint(y)
    elif rounding == RoundingMode.FLOOR:
        r = fl
    elif rounding == RoundingMode.STOCHASTIC:
        if rng is None:
            raise ValueError("quantize_float: stochastic rounding needs an rng")
        # r16 = floor(frac(y) * 2**16), computed exactly: y * 2**16 and fl * 2**16 are exact
        # scalings and their difference is an integer in [0, 2**16). (y - fl) itself is
        # inexact for y in (-1, 0).) |y| >= 2**52 is an integer (or infinite): r16 = 0.
        big = ~(np.abs(y) < 2.0**52)
        ys = np.where(big, 0.0, y)
        fs = np.where(big, 0.0, fl)
        rem16 = np.floor(ys * (1 << STOCHASTIC_BITS)) - fs * (1 << STOCHASTIC_BITS)
        u = rng.integers(0, 1 << STOCHASTIC_BITS, size=y.shape)
        r = fl + (rem16 + u >= (1 << STOCHASTIC_BITS))
    else:
        raise ValueError(f"rounding: {rounding!r} is not a RoundingMode")
    over = (r > fmt.max_int) | (r < fmt.min_int)
    q = np.clip(r, fmt.min_int, fmt.max_int).astype(np.int64)
    under = (x != 0) & (q == 0)
    return q, over, under


def best_frac_for(x: np.ndarray, width: Width) -> int:
    """Largest F at which the largest |x| still fits ``width`` (used to seed formats)."""
    m = float(np.max(np.abs(x))) if np.size(x) else 0.0
    if m == 0.0:
        return FRAC_MAX
    _, e = np.frexp(m)  # m in [2**(e-1), 2**e)
    return max(FRAC_MIN, min(FRAC_MAX, width.bits - 1 - int(e)))


def _is_wide(a: np.ndarray) -> bool:
    return a.dtype == object


def bit_length(v: np.ndarray) -> np.ndarray:
    """Exact bit length of non-negative integers (int64 or Python-int object arrays), as int64."""
    if _is_wide(v):
        if v.size and v.min() < 0:
            raise ValueError(f"bit_length: negative value {v.min()}")
        return np.frompyfunc(int.bit_length, 1, 1)(v).astype(np.int64)
    v = np.asarray(v, dtype=np.int64)
    if v.size and v.min() < 0:
        raise ValueError(f"bit_length: negative value {v.min()}")
    return _bit_length_int64(v)


def _bit_length_int64(v: np.ndarray) -> np.ndarray:
    """:func:`bit_length` of a non-negative int64 array, unchecked."""
    # The biased exponent field of float64(v) is frexp's exponent + 1022, i.e. the bit
    # length + 1022 (and 0 for v = 0). Exact below 2**53.
    e = v.astype(np.float64).view(np.int64)  # a fresh array: the in-place ops below are safe
    e >>= 52
    e -= 1022
    np.maximum(e, 0, out=e)
    if v.size and v.max() >= 1 << 53:
        # float64 rounding can carry a value just below 2**k up to 2**k: correct it exactly.
        # e == 64 only happens for values above 2**63 - 2**10, whose bit length is 63.
        too_big = (e > 63) | ((e > 0) & (np.left_shift(np.int64(1), np.clip(e - 1, 0, 62)) > v))
        e = e - too_big
    return e


def round_shift(
    acc: np.ndarray,
    shift: int,
    rounding: RoundingMode,
    acc_bits: int,
    u16: np.ndarray | None = None,
) -> np.ndarray:
    """Divide exact integers by 2**shift with ``rounding``; the core's one rounding rule.

    ``acc`` holds signed integers of at most ``acc_bits`` bits (int64, or Python ints in an
    object array when ``acc_bits`` > 62). ``shift`` <= 0 is an exact left shift (the caller
    saturates): int64 when every result fits in int64, otherwise an object array of Python
    ints (never a wrapped value). For ``shift`` > 0, with ``fq = floor(acc / 2**shift)`` and
    ``rem = acc - fq * 2**shift``:

    - NEAREST_EVEN: fq + 1 if rem > half, or rem == half and fq is odd;
    - FLOOR: fq;
    - STOCHASTIC: ``r16 = floor(rem * 2**16 / 2**shift)`` (the 16 bits below the LSB, zero
      filled when shift < 16); fq + 1 if r16 + u16 >= 2**16.

    A shift larger than ``acc_bits`` is first reduced to ``acc_bits`` by an arithmetic shift
    that ORs the dropped bits into bit 0 (a sticky bit); this changes no result of any mode
    and keeps int64 shifts in range, as the hardware's shifter does. (The pre-shift is exact
    for every mode whenever the remaining shift is >= 17: bit 0 then lies below both the
    half-LSB and the 16 stochastic bits. The int64 path therefore reduces to
    ``min(acc_bits, 62)``, which gives the same results as reducing to ``acc_bits``.)
    """
    if shift <= 0:
        k = -shift
        if _is_wide(acc):
            return acc * (1 << k)
        acc = np.asarray(acc, dtype=np.int64)
        # Exact: an int64 result when every value fits, else Python ints (an object array).
        if acc.size == 0 or k == 0:
            return acc.copy()
        lo, hi = int(acc.min()), int(acc.max())
        if k < 63 and -(1 << (63 - k)) <= lo and hi < (1 << (63 - k)):
            return np.left_shift(acc, k)
        return acc.astype(object) * (1 << k)
    if not _is_wide(acc):
        acc = np.asarray(acc, dtype=np.int64)
        acc_bits = min(acc_bits, 62)
    if shift > acc_bits:
        pre = shift - acc_bits
        if _is_wide(acc):
            sticky = (acc % (1 << pre)) != 0
            acc = (acc // (1 << pre)) | sticky.astype(np.int64)
        else:
            sticky = (acc & ((np.int64(1) << pre) - 1)) != 0 if pre < 63 else acc != 0
            acc = np.right_shift(acc, min(pre, 63)) | sticky
        shift = acc_bits
    one = 1 << shift
    if _is_wide(acc):
        fq = acc // one
        rem = acc - fq * one
    else:
        fq = np.right_shift(acc, shift)
        rem = acc & np.int64(one - 1)
    if rounding == RoundingMode.FLOOR:
        return fq
    if rounding == RoundingMode.NEAREST_EVEN:
        half = 1 << (shift - 1)
        if _is_wide(acc):
            up = (rem > half) | ((rem == half) & ((fq & 1) == 1))
            return fq + up.astype(np.int64)
        # The same rule in fewer passes: rem + (fq & 1) > half <=> rem > half, or rem == half
        # and fq odd (rem < 2 * half). fq is a fresh array here.
        t = fq & 1
        t += rem
        fq += t > half
        return fq
    if rounding == RoundingMode.STOCHASTIC:
        if u16 is None:
            raise ValueError("round_shift: stochastic rounding needs random words (u16)")
        if shift >= STOCHASTIC_BITS:
            drop = shift - STOCHASTIC_BITS
            r16 = rem // (1 << drop) if _is_wide(rem) else rem >> drop
        else:
            r16 = rem * (1 << (STOCHASTIC_BITS - shift))
        up = (r16 + np.asarray(u16, dtype=np.int64)) >= (1 << STOCHASTIC_BITS)
        return fq + up.astype(np.int64)
    raise ValueError(f"rounding: {rounding!r} is not a RoundingMode")


def saturate(q: np.ndarray, fmt: DfpFormat) -> tuple[np.ndarray, np.ndarray]:
    """Clamp to the format's range; returns (int64 values, overflow mask)."""
    over = (q > fmt.max_int) | (q < fmt.min_int)
    if _is_wide(q):
        q = np.where(over, np.where(q > 0, fmt.max_int, fmt.min_int), q).astype(np.int64)
    else:
        q = np.clip(q, fmt.min_int, fmt.max_int)
    return q.astype(np.int64, copy=False), over.astype(bool, copy=False)


def requantize_left(acc: np.ndarray, k: int, fmt: DfpFormat) -> tuple[np.ndarray, np.ndarray]:
    """acc * 2**k saturated to ``fmt`` without forming huge intermediates; (q, overflow)."""
    hi = fmt.max_int >> k if k < 64 else 0
    lo = -((-fmt.min_int) >> k) if k < 64 else 0
    if _is_wide(acc):
        over = (acc > hi) | (acc < lo)
        q = np.where(over, np.where(acc > 0, fmt.max_int, fmt.min_int), acc * (1 << k))
        return q.astype(np.int64), over.astype(bool)
    # Clamp to [lo, hi] (whose shifted values fit), shift, then put the saturated values in.
    above = acc > hi
    below = acc < lo
    q = np.clip(acc, lo, hi).astype(np.int64, copy=False)
    q <<= min(k, 63)
    q[above] = fmt.max_int
    q[below] = fmt.min_int
    return q, above | below

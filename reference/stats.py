"""Statistics analysis, distribution database and point-position policy.

Per value ``v`` (an exact pre-conversion accumulator value with ``F_acc`` fraction bits):

- ``p(v)``: position of the most significant bit that differs from the sign bit,
  ``bit_length(v if v >= 0 else ~v) - 1``; -1 for v = -1. ``v`` fits a signed W-bit
  integer exactly when ``p(v) <= W - 2``.
- its exponent ``e = p(v) - F_acc``: ``|v|`` lies in ``[2**e, 2**(e+1))`` (for negative v,
  in ``(2**e, 2**(e+1)]``). Exponents are independent of the point position, so histograms
  of successive iterations add up even when F changes.
- histogram bin ``clamp(e - hist_min_exp, 0, hist_bins - 1)``; zeros are not binned but
  counted apart.

Per operation the block also counts ``overflow`` (values saturated by the output
conversion), ``underflow`` (non-zero values that became 0) and ``total`` (all values).
Every counter is ``counter_bits`` wide and saturates.

Policy (:func:`next_frac`): the target point position is the largest F at which the
fraction of non-zero values that would overflow is at most ``threshold / 2**16``, lowered by
``headroom`` bits. The point position moves down to a lower target at once (overflow is
answered in one step) but up to a higher one by at most ``rise`` bits per update (0: no
limit), so a tensor that shrank for one iteration keeps its range for the next.

The three parameters are the fields of the core's THRESHOLD register (:class:`PolicyParams`,
:data:`POLICY_BITS` bits): ``[15:0]`` threshold, ``[17:16]`` headroom, ``[19:18]`` rise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .config import CoreConfig
from .formats import FRAC_MAX, FRAC_MIN, Width, _bit_length_int64, bit_length, same_array

#: Default policy threshold, in units of 2**-16 of the non-zero values (66/65536 ~ 0.1%).
DEFAULT_THRESHOLD = 66
THRESHOLD_BITS = 16
#: THRESHOLD register fields above the threshold: headroom in bits, and the largest rise of F per update.
HEADROOM_LSB, HEADROOM_BITS = 16, 2
RISE_LSB, RISE_BITS = 18, 2
#: Width of the THRESHOLD register word (:meth:`PolicyParams.encode`).
POLICY_BITS = RISE_LSB + RISE_BITS
#: Default headroom (bits below the point position the threshold asks for) and rise limit (bits per update).
DEFAULT_HEADROOM = 0
DEFAULT_RISE = 1


@dataclass(frozen=True)
class PolicyParams:
    """The point-position policy's parameters: the THRESHOLD register's fields.

    Parameters
    ----------
    threshold
        Fraction of the non-zero values allowed to overflow, in units of 2**-16 (16 bits).
    headroom
        Bits by which the point position is lowered below the threshold's choice (2 bits, 0-3).
    rise
        Largest increase of the point position per POLICY_UPDATE, in bits (2 bits; 0: no limit).
        Decreases are never limited.

    Raises
    ------
    ValueError
        A field outside its range.
    """

    threshold: int = DEFAULT_THRESHOLD
    headroom: int = DEFAULT_HEADROOM
    rise: int = DEFAULT_RISE

    def __post_init__(self) -> None:
        for name, bits in (("threshold", THRESHOLD_BITS), ("headroom", HEADROOM_BITS), ("rise", RISE_BITS)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) < (1 << bits):
                raise ValueError(f"{name}: {v!r} outside [0, 2**{bits}) (policy)")

    def encode(self) -> int:
        """The THRESHOLD register word: ``[15:0]`` threshold, ``[17:16]`` headroom, ``[19:18]`` rise."""
        return int(self.threshold) | (int(self.headroom) << HEADROOM_LSB) | (int(self.rise) << RISE_LSB)

    @classmethod
    def decode(cls, word: int) -> PolicyParams:
        """The fields of THRESHOLD register word ``word`` (which must fit :data:`POLICY_BITS` bits)."""
        if isinstance(word, bool) or not isinstance(word, (int, np.integer)) or not 0 <= int(word) < (1 << POLICY_BITS):
            raise ValueError(f"policy: register word {word!r} outside [0, 2**{POLICY_BITS})")
        w = int(word)
        return cls(w & ((1 << THRESHOLD_BITS) - 1), (w >> HEADROOM_LSB) & ((1 << HEADROOM_BITS) - 1),
                   (w >> RISE_LSB) & ((1 << RISE_BITS) - 1))


#: Reset value of the THRESHOLD register (and the engine's default policy word).
DEFAULT_POLICY_WORD = PolicyParams().encode()
#: The policy of the seed version (no headroom, no rise limit): THRESHOLD = 66.
LEGACY_POLICY = PolicyParams(DEFAULT_THRESHOLD, 0, 0)


def msb_position(v: np.ndarray) -> np.ndarray:
    """p(v) for exact integers (int64 or Python-int object arrays); -1 for 0 and -1."""
    v = np.asarray(v)
    if v.dtype == object:
        return bit_length(np.where(v < 0, -v - 1, v)) - 1
    v = v.astype(np.int64, copy=False)
    # In-place steps on fresh arrays: large temporaries cost more in page faults than in arithmetic.
    mag = v >> 63
    mag ^= v  # ~v for negative v, v otherwise: >= 0
    p = _bit_length_int64(mag)
    p -= 1
    return p


@dataclass
class OpStats:
    """Statistics of one operation's (or one tensor's accumulated) values."""

    hist: np.ndarray
    zeros: int = 0
    overflow: int = 0
    underflow: int = 0
    total: int = 0

    @classmethod
    def empty(cls, cfg: CoreConfig) -> OpStats:
        return cls(np.zeros(cfg.hist_bins, dtype=np.int64))

    def as_dict(self) -> dict:
        return {"hist": self.hist.tolist(), "zeros": self.zeros, "overflow": self.overflow,
                "underflow": self.underflow, "total": self.total}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OpStats):
            return NotImplemented
        return (same_array(self.hist, other.hist) and self.zeros == other.zeros
                and self.overflow == other.overflow and self.underflow == other.underflow
                and self.total == other.total)


def analyse(acc: np.ndarray, f_acc: int, q: np.ndarray, overflow: np.ndarray, cfg: CoreConfig) -> OpStats:
    """Statistics of pre-conversion values ``acc`` (F_acc fraction bits) and their conversion ``q``."""
    nz = acc != 0
    # Bin of every value; zeros go to an extra bin past the end that is then dropped.
    bins = msb_position(acc)
    bins -= f_acc + cfg.hist_min_exp
    np.maximum(bins, 0, out=bins)
    np.minimum(bins, cfg.hist_bins - 1, out=bins)
    bins[~nz] = cfg.hist_bins
    hist = np.bincount(bins.ravel(), minlength=cfg.hist_bins + 1)[: cfg.hist_bins].astype(np.int64)
    cmax = cfg.counter_max
    return OpStats(
        hist=np.minimum(hist, cmax),
        zeros=min(int(acc.size - np.count_nonzero(nz)), cmax),
        overflow=min(int(np.count_nonzero(overflow)), cmax),
        underflow=min(int(np.count_nonzero(nz & (q == 0))), cmax),
        total=min(int(acc.size), cmax),
    )


#: float64's exponent bias: a positive integer m < 2**53 converts exactly, and the biased exponent
#: field of float64(m) is ``bit_length(m) + F64_BIAS - 1`` (0 for m = 0).
F64_BIAS = 1023


def exponent_histogram(e: np.ndarray, zeros: int, f_acc: int, cfg: CoreConfig) -> tuple[np.ndarray, int | None]:
    """The (unsaturated) histogram of :func:`analyse` from biased float64 exponents; ``e`` is consumed.

    Returns (histogram, largest exponent) when the largest exponent comes for free (large
    arrays), else (histogram, None).

    ``e`` holds, per value ``v``, the biased float64 exponent of ``m = v if v >= 0 else ~v``
    (``bit_length(m) + F64_BIAS - 1``, so ``p(v) = e - F64_BIAS``), or anything at most
    ``F64_BIAS - 1`` for ``m = 0`` (v = 0 or v = -1, p = -1). ``zeros`` of the values are 0:
    they land in the bin of p = -1 and are taken out again. Bin ``i`` holds the exponents
    ``p - F_acc = hist_min_exp + i``, clamped at both ends, exactly as :func:`analyse`.
    """
    nb = cfg.hist_bins
    base = F64_BIAS + f_acc + cfg.hist_min_exp  # biased exponent of bin 0
    low = min(max(F64_BIAS - 1 - base, 0), nb - 1)  # bin of p = -1 (m = 0 is raised to it)
    if e.size >= _FOLD_MIN_VALUES:
        # Count the exponents themselves, then fold the counts into bins: three passes over
        # the values fewer, a few more over the ~1100 possible exponents.
        he = np.bincount(e.ravel())
        c = np.cumsum(he)
        size = he.size
        hist = np.zeros(nb, dtype=np.int64)
        m0 = int(c[min(F64_BIAS - 1, size - 1)])  # every exponent below F64_BIAS is m = 0: p = -1
        lo, hi = base + 1, base + nb - 1  # bins 1 .. nb-2 are the exponents [lo, hi)
        a, b = max(lo, F64_BIAS), min(hi, size)
        if a < b:
            hist[1 + a - lo:1 + b - lo] = he[a:b]
        if lo > F64_BIAS:
            hist[0] = c[min(lo, size) - 1] - m0
        top_from = max(hi, F64_BIAS)
        hist[nb - 1] = c[-1] - (c[top_from - 1] if top_from <= size else c[-1])
        hist[low] += m0 - zeros
        return hist, size - 1
    e -= base
    np.maximum(e, low, out=e)
    np.minimum(e, nb - 1, out=e)
    hist = np.bincount(e.ravel(), minlength=nb)
    if zeros:
        hist[low] -= zeros
    return hist, None


#: From this many values on, :func:`exponent_histogram` counts exponents and folds the counts.
_FOLD_MIN_VALUES = 2048


def float_stats(x: np.ndarray, cfg: CoreConfig) -> OpStats:
    """The same histogram of float values (used to calibrate before the first iteration).

    A float equal to ``q * 2**-F`` lands in the bin :func:`analyse` gives the integer ``q``
    at ``F_acc = F``: exponent ``e`` with ``|x|`` in ``[2**e, 2**(e+1))`` for positive x and
    in ``(2**e, 2**(e+1)]`` for negative x (so -2**k is in the bin of exponent k - 1).
    """
    x = np.asarray(x, dtype=np.float64)
    nb, lo_exp = cfg.hist_bins, cfg.hist_min_exp
    got = kernels.float_hist(x.reshape(-1), nb, lo_exp)  # compiled; the NumPy lines below define it
    if got is not None:
        return OpStats(hist=got[0], zeros=got[1], total=int(x.size))
    return _float_stats_numpy(x, cfg)


def _float_stats_numpy(x: np.ndarray, cfg: CoreConfig) -> OpStats:
    """:func:`float_stats` in NumPy (the definition the compiled kernel is tested against)."""
    if not np.isfinite(x).all():
        raise ValueError("float_stats: non-finite value(s) in the input")
    nb, lo_exp = cfg.hist_bins, cfg.hist_min_exp
    m, ex = np.frexp(x)  # x = m * 2**ex, |m| in [0.5, 1); (0, 0) for zeros
    e = ex.astype(np.int64)
    e -= 1 + lo_exp
    e -= m == -0.5  # -2**k: exponent k - 1
    np.maximum(e, 0, out=e)
    np.minimum(e, nb - 1, out=e)
    hist = np.bincount(e.ravel(), minlength=nb)
    zeros = int(x.size - np.count_nonzero(x))
    if zeros:  # they were binned at exponent -1
        hist[min(max(-1 - lo_exp, 0), nb - 1)] -= zeros
    return OpStats(hist=hist, zeros=zeros, total=int(x.size))


def next_frac(stats: OpStats, width: Width, current: int, cfg: CoreConfig,
              threshold: int = DEFAULT_THRESHOLD, headroom: int = 0, rise: int = 0) -> int:
    """Point position for the next iteration, in integer arithmetic the hardware repeats.

    With ``n`` the non-zero count (sum of the histogram) and ``over(i)`` the count in bins
    above bin ``i``, pick the lowest bin ``i*`` with ``over(i*) * 2**16 <= n * threshold``
    (scanning from the top; the top bin always qualifies). Its exponent
    ``e* = hist_min_exp + i*`` must fit, with ``headroom`` bits to spare: the target is
    ``T = clamp(W - 2 - e* - headroom, FRAC_MIN, FRAC_MAX)``. The result is ``T`` when
    ``T <= current`` or ``rise == 0``, else ``min(T, current + rise)``. An empty histogram
    keeps ``current``. (The defaults ``headroom = rise = 0`` are the threshold's choice alone,
    as the host uses it for the data it loads; the engine passes its register's fields.)

    The scan, as the hardware does it (kept as the definition; :func:`next_fracs` computes the
    same for many tensors at once)::

        over, istar = 0, 0
        for i in range(bins - 1, -1, -1):
            if over * 2**16 > n * threshold:
                istar = i + 1
                break
            over += hist[i]
    """
    PolicyParams(threshold, headroom, rise)  # range checks
    return int(next_fracs(np.asarray(stats.hist, dtype=np.int64).reshape(1, -1), np.array([width.bits]),
                          np.array([current]), cfg, threshold, headroom, rise)[0])


def limit_rise(target: int, current: int, rise: int) -> int:
    """The policy's last step: ``target``, but at most ``rise`` above ``current`` (``rise`` 0: no limit)."""
    return target if rise == 0 or target <= current else min(target, current + rise)


def _scan(hist: list[int], bits: int, current: int, cfg: CoreConfig, threshold: int, headroom: int,
          rise: int) -> int:
    """The scan of :func:`next_frac` (``n`` summed in int64, as it always was), in Python ints."""
    n = int(np.asarray(hist, dtype=np.int64).sum())
    if n == 0:
        return current
    over, istar = 0, 0
    for i in range(len(hist) - 1, -1, -1):
        if over * (1 << THRESHOLD_BITS) > n * threshold:
            istar = i + 1
            break
        over += hist[i]
    target = max(FRAC_MIN, min(FRAC_MAX, bits - 2 - (cfg.hist_min_exp + istar) - headroom))
    return limit_rise(target, current, rise)


def next_fracs(hists: np.ndarray, bits: np.ndarray, current: np.ndarray, cfg: CoreConfig,
               threshold: int = DEFAULT_THRESHOLD, headroom: int = 0, rise: int = 0) -> np.ndarray:
    """:func:`next_frac` of many tensors: histograms [T, bins], widths in bits [T], current F [T].

    ``over(i)`` is non-increasing in ``i``, so the bins failing the test are exactly
    ``0 .. i* - 1`` and ``i*`` is their count. ``over(i) * 2**16 > n * threshold`` is tested as
    ``over(i) > floor(n * threshold / 2**16)`` (both sides integers), computed without
    overflow: ``n < 2**56`` (up to 256 bins of 48-bit counters), ``threshold < 2**16``. Histograms
    with counts beyond 48 bits or below 0 take the scan itself.
    """
    PolicyParams(threshold, headroom, rise)  # range checks
    h = np.asarray(hists, dtype=np.int64)
    if h.ndim == 2:  # compiled; the NumPy lines below define it
        got = kernels.policy_fracs(h, np.asarray(bits, dtype=np.int64), np.asarray(current, dtype=np.int64),
                                   cfg.hist_min_exp, threshold, THRESHOLD_BITS, FRAC_MIN, FRAC_MAX, headroom, rise)
        if got is not None:
            return got
    return _next_fracs_numpy(h, bits, current, cfg, threshold, headroom, rise)


def _next_fracs_numpy(h: np.ndarray, bits: np.ndarray, current: np.ndarray, cfg: CoreConfig,
                      threshold: int, headroom: int = 0, rise: int = 0) -> np.ndarray:
    """:func:`next_fracs` in NumPy (the definition the compiled kernel is tested against)."""
    if h.size and (int(h.max()) >= 1 << 48 or int(h.min()) < 0):  # beyond 48-bit counters: Python ints
        return np.array([_scan(row, int(b), int(cur), cfg, threshold, headroom, rise)
                         for row, b, cur in zip(h.tolist(), np.asarray(bits).tolist(),
                                                np.asarray(current).tolist(), strict=True)], dtype=np.int64)
    c = np.cumsum(h, axis=1)
    n = c[:, -1]
    over = n[:, None] - c  # over[:, i] = sum of the bins above i
    budget = (n >> THRESHOLD_BITS) * threshold + (((n & ((1 << THRESHOLD_BITS) - 1)) * threshold) >> THRESHOLD_BITS)
    istar = np.count_nonzero(over > budget[:, None], axis=1)
    f = np.asarray(bits) - 2 - (cfg.hist_min_exp + istar) - headroom
    np.maximum(f, FRAC_MIN, out=f)  # (np.clip costs more than the rest of this function on ~20 rows)
    np.minimum(f, FRAC_MAX, out=f)
    cur = np.asarray(current, dtype=np.int64)
    if rise:
        f = np.where(f > cur, np.minimum(f, cur + rise), f)
    return np.where(n == 0, cur, f).astype(np.int64)


@dataclass
class Database:
    """Distribution database: accumulated statistics per tensor id."""

    cfg: CoreConfig
    entries: dict[int, OpStats] = field(default_factory=dict)

    def _check(self, tid: int) -> None:
        if not 0 <= tid < self.cfg.tensor_ids:
            raise ValueError(f"tensor id {tid} outside [0, {self.cfg.tensor_ids})")

    def accumulate(self, tid: int, s: OpStats) -> None:
        """Add ``s`` to ``tid``'s entry, each counter saturating on its own at ``cfg.counter_max``.

        The sum is done in place on the entry, which this database owns (it never holds an
        operation's arrays; :meth:`read` returns a copy).
        """
        self._check(tid)
        cur = self.entries.get(tid)
        cmax = self.cfg.counter_max
        if cur is None:
            cur = self.entries[tid] = OpStats(np.zeros(self.cfg.hist_bins, dtype=np.int64))
        h = cur.hist
        h += s.hist
        np.minimum(h, cmax, out=h)
        z, o, u, t = cur.zeros + s.zeros, cur.overflow + s.overflow, cur.underflow + s.underflow, cur.total + s.total
        cur.zeros = z if z < cmax else cmax
        cur.overflow = o if o < cmax else cmax
        cur.underflow = u if u < cmax else cmax
        cur.total = t if t < cmax else cmax

    def read(self, tid: int) -> OpStats:
        """A copy of ``tid``'s entry (later accumulations do not change it)."""
        self._check(tid)
        cur = self.entries.get(tid)
        return OpStats.empty(self.cfg) if cur is None else copy.deepcopy(cur)

    def clear(self, tid: int | None = None) -> None:
        if tid is None:
            self.entries.clear()
        else:
            self._check(tid)
            self.entries.pop(tid, None)

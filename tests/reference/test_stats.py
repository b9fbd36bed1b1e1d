"""Statistics block, distribution database and point-position policy, against oracles."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from reference.config import PRESETS, CoreConfig
from reference.formats import (
    FRAC_MAX,
    FRAC_MIN,
    DfpFormat,
    RoundingMode,
    Width,
    requantize_left,
    round_shift,
    saturate,
)
from reference.stats import (
    DEFAULT_THRESHOLD,
    Database,
    OpStats,
    analyse,
    float_stats,
    msb_position,
    next_frac,
)

from . import oracle

TINY = PRESETS["tiny"]  # hist_min_exp=-24, 32 bins: exponents -24..7
DEFAULT = PRESETS["default"]  # hist_min_exp=-48, 64 bins: exponents -48..15


def _hist(bins: dict[int, int], cfg: CoreConfig = TINY) -> OpStats:
    h = np.zeros(cfg.hist_bins, dtype=np.int64)
    for i, c in bins.items():
        h[i] = c
    return OpStats(hist=h, total=int(h.sum()))


# --------------------------------------------------------------------------- msb_position


def test_msb_position_edges():
    vals = [0, -1, 1, -2, 2, 3, -3, 4, -4, -5]
    for k in (7, 15, 31, 52, 53, 62):
        vals += [2**k - 1, 2**k, 2**k + 1, -(2**k) - 1, -(2**k), -(2**k) + 1]
    vals += [2**63 - 1, -(2**63), -(2**63) + 1, 2**63 - 2**10, 2**63 - 2**10 - 1]
    exp = [oracle.msb_position(v) for v in vals]
    assert msb_position(np.array(vals, dtype=np.int64)).tolist() == exp
    assert msb_position(np.array(vals, dtype=object)).tolist() == exp
    assert exp[:4] == [-1, -1, 0, 0]  # 0 and -1 have no bit differing from the sign
    wide = [2**79 - 1, -(2**79), 2**70, -(2**70) - 1]
    assert msb_position(np.array(wide, dtype=object)).tolist() == [78, 78, 70, 70]


# --------------------------------------------------------------------------- analyse


def _analyse_oracle(acc: list[int], f_acc: int, q: list[int], over: list[bool], cfg: CoreConfig):
    cmax = 2**cfg.counter_bits - 1
    hist = [0] * cfg.hist_bins
    for v in acc:
        if v != 0:
            hist[oracle.hist_bin(v, f_acc, cfg.hist_min_exp, cfg.hist_bins)] += 1
    zeros = sum(v == 0 for v in acc)
    under = sum(v != 0 and qq == 0 for v, qq in zip(acc, q, strict=True))
    return ([min(h, cmax) for h in hist], min(zeros, cmax), min(sum(over), cmax), min(under, cmax),
            min(len(acc), cmax))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cfg_name", ["tiny", "default"])
def test_analyse_vs_oracle(seed, cfg_name):
    cfg = PRESETS[cfg_name]
    rng = np.random.default_rng(seed)
    w = list(Width)[seed % 3]
    abits = 2 * w.bits + 16
    scale = rng.integers(0, abits - 1, (6, 9))
    vals = [(int.from_bytes(rng.bytes(12)) % (2 ** int(s) + 1)) * int(rng.choice([-1, 1])) for s in scale.ravel()]
    vals[:4] = [0, -1, -(2 ** (abits - 1)), 2 ** (abits - 1) - 1]
    acc = np.array(vals, dtype=object if abits > 62 else np.int64).reshape(6, 9)
    f_acc = int(rng.integers(-40, 90))
    out = DfpFormat(w, int(rng.integers(FRAC_MIN, FRAC_MAX + 1)))
    if f_acc > out.frac:
        q, over = saturate(round_shift(acc, f_acc - out.frac, RoundingMode.NEAREST_EVEN, abits), out)
    else:
        q, over = requantize_left(acc, out.frac - f_acc, out)
    s = analyse(acc, f_acc, q, over, cfg)
    hist, zeros, ov, under, total = _analyse_oracle(vals, f_acc, q.ravel().tolist(), over.ravel().tolist(), cfg)
    assert s.hist.tolist() == hist, seed
    assert (s.zeros, s.overflow, s.underflow, s.total) == (zeros, ov, under, total), seed


def test_analyse_bins_and_clamping_worked():
    # F_acc = 4: 16 -> 1.0 (e=0), 24 -> 1.5 (e=0), -16 -> -1.0 (e=-1), 1 -> 2**-4 (e=-4)
    acc = np.array([[16, 24, -16, 1, 0, 2**40, -(2**40), 3]])
    q = np.array([[1, 1, -1, 0, 0, 127, -128, 0]])
    over = np.array([[False] * 5 + [True, True, False]])
    s = analyse(acc, 4, q, over, TINY)
    exp = np.zeros(32, dtype=np.int64)
    exp[24] += 2  # e=0 -> bin 0 - (-24)
    exp[23] += 1  # e=-1
    exp[20] += 1  # e=-4
    exp[31] += 2  # e=36 and e=35 clamp into the top bin
    exp[21] += 1  # 3 -> e = 1 - 4 = -3
    assert s.hist.tolist() == exp.tolist()
    assert (s.zeros, s.overflow, s.underflow, s.total) == (1, 2, 2, 8)
    s = analyse(np.array([[1]]), 40, np.array([[0]]), np.array([[False]]), TINY)
    assert s.hist[0] == 1  # e = -40 clamps into the bottom bin


def test_analyse_counters_saturate():
    cfg = CoreConfig(counter_bits=16)
    acc = np.zeros((1, 70000), dtype=np.int64)
    acc[0, :3] = 5
    q = np.zeros_like(acc)
    s = analyse(acc, 0, q, np.ones(acc.shape, dtype=bool), cfg)
    assert (s.zeros, s.overflow, s.underflow, s.total) == (65535, 65535, 3, 65535)
    acc[0, :] = 5
    s = analyse(acc, 0, q, np.zeros(acc.shape, dtype=bool), cfg)
    assert s.hist[2 - cfg.hist_min_exp] == 65535 and s.hist.sum() == 65535


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_float_stats_matches_analyse_on_representable_values(seed):
    rng = np.random.default_rng(seed)
    for frac in (-10, 0, 7, 40):
        q = rng.integers(-(2**15), 2**15, 500)
        q[:8] = [0, -1, 1, -(2**15), 2**14, -(2**14), 2**14 - 1, -(2**14) - 1]
        x = np.ldexp(q.astype(np.float64), -frac)
        a = analyse(q.reshape(1, -1), frac, q.reshape(1, -1), np.zeros((1, q.size), bool), DEFAULT)
        f = float_stats(x, DEFAULT)
        assert f.hist.tolist() == a.hist.tolist(), (seed, frac)
        assert (f.zeros, f.total) == (a.zeros, a.total)
    with pytest.raises(ValueError, match="non-finite"):
        float_stats(np.array([1.0, np.nan]), DEFAULT)


# --------------------------------------------------------------------------- next_frac


def _next_frac_oracle(hist: list[int], bits: int, current: int, cfg: CoreConfig, thr: int) -> int:
    n = sum(hist)
    if n == 0:
        return current
    ok = [i for i in range(len(hist)) if Fraction(sum(hist[i + 1:]), n) <= Fraction(thr, 2**16)]
    e_star = cfg.hist_min_exp + min(ok)
    return max(FRAC_MIN, min(FRAC_MAX, bits - 2 - e_star))


def test_next_frac_empty_keeps_current():
    for cur in (FRAC_MIN, 0, 17, FRAC_MAX):
        assert next_frac(_hist({}), Width.W8, cur, TINY) == cur


@pytest.mark.parametrize(("w", "exp"), [(Width.W8, 20), (Width.W16, 28), (Width.W32, 44)])
def test_next_frac_single_bin(w, exp):
    # bin 10 of tiny: exponent -24 + 10 = -14; values in [2**-14, 2**-13) need F = W - 2 + 14
    assert next_frac(_hist({10: 100}), w, 0, TINY) == exp
    assert next_frac(_hist({10: 1}), w, 0, TINY, threshold=0) == exp


def test_next_frac_top_and_bottom_bins_and_clamps():
    assert next_frac(_hist({31: 5}), Width.W8, 0, TINY) == 8 - 2 - 7  # top bin exponent 7
    assert next_frac(_hist({0: 5}), Width.W8, 0, TINY) == 8 - 2 + 24  # bottom bin exponent -24
    assert next_frac(_hist({0: 5}, DEFAULT), Width.W16, 0, DEFAULT) == 16 - 2 + 48  # 62
    assert next_frac(_hist({0: 5}, DEFAULT), Width.W32, 0, DEFAULT) == FRAC_MAX  # 78 clamps to 63
    hi = CoreConfig(hist_min_exp=40, hist_bins=4)
    assert next_frac(_hist({0: 5}, hi), Width.W8, 0, hi) == FRAC_MIN  # 6 - 40 = -34 clamps to -32
    assert next_frac(_hist({3: 5}, hi), Width.W8, 0, hi) == FRAC_MIN  # 6 - 43
    assert next_frac(_hist({3: 5}, hi), Width.W32, 0, hi) == 30 - 43  # not clamped


def test_next_frac_threshold_zero_takes_the_highest_nonempty_bin():
    assert next_frac(_hist({5: 1000, 20: 1}), Width.W8, 0, TINY, threshold=0) == 8 - 2 - (-24 + 20)


def test_next_frac_threshold_at_and_just_above_a_share():
    # n = 65536: a bin holding 66 values has share exactly 66 / 2**16
    h = {10: 65536 - 66, 20: 66}
    assert next_frac(_hist(h), Width.W8, 0, TINY, threshold=66) == 20  # allowed to overflow: bin 10
    assert next_frac(_hist(h), Width.W8, 0, TINY, threshold=65) == 10  # must cover bin 20
    # n = 1000, one value on top: share 1/1000 = 65.536 / 2**16
    h = {3: 999, 30: 1}
    assert next_frac(_hist(h), Width.W16, 0, TINY, threshold=66) == 14 - (-24 + 3)
    assert next_frac(_hist(h), Width.W16, 0, TINY, threshold=65) == 14 - (-24 + 30)
    assert DEFAULT_THRESHOLD == 66


@pytest.mark.parametrize("thr", [-1, 2**16, 10**6])
def test_next_frac_threshold_range(thr):
    with pytest.raises(ValueError, match=r"threshold: .* outside \[0, 2\*\*16\)"):
        next_frac(_hist({1: 1}), Width.W8, 0, TINY, threshold=thr)


@pytest.mark.parametrize("seed", range(20))
def test_next_frac_random_vs_oracle(seed):
    rng = np.random.default_rng(seed)
    cfg = TINY if seed % 2 else DEFAULT
    h = np.zeros(cfg.hist_bins, dtype=np.int64)
    lo, hi = sorted(rng.integers(0, cfg.hist_bins, 2))
    h[lo:hi + 1] = rng.integers(0, rng.choice([2, 50, 10**6]), hi - lo + 1)
    for w in Width:
        for thr in (0, 1, 66, 655, 6554, 32768, 65535):
            exp = _next_frac_oracle(h.tolist(), w.bits, 3, cfg, thr)
            assert next_frac(OpStats(hist=h), w, 3, cfg, threshold=thr) == exp, (seed, w, thr)


# --------------------------------------------------------------------------- database


def test_database_accumulate_read_clear():
    db = Database(TINY)
    assert db.read(3) == OpStats.empty(TINY)
    a = OpStats(np.arange(32, dtype=np.int64), zeros=1, overflow=2, underflow=3, total=40)
    b = OpStats(np.ones(32, dtype=np.int64), zeros=10, overflow=20, underflow=30, total=100)
    db.accumulate(3, a)
    db.accumulate(3, b)
    db.accumulate(5, b)
    r = db.read(3)
    assert r.hist.tolist() == [i + 1 for i in range(32)]
    assert (r.zeros, r.overflow, r.underflow, r.total) == (11, 22, 33, 140)
    db.clear(3)
    assert db.read(3) == OpStats.empty(TINY)
    assert db.read(5) == b
    db.clear()
    assert db.read(5) == OpStats.empty(TINY)
    assert a.as_dict()["hist"][31] == 31


@pytest.mark.parametrize("tid", [-1, 8, 100])
def test_database_rejects_bad_tensor_id(tid):
    db = Database(TINY)  # 8 tensor ids
    for call in (lambda: db.read(tid), lambda: db.clear(tid), lambda: db.accumulate(tid, OpStats.empty(TINY))):
        with pytest.raises(ValueError, match=rf"tensor id {tid} outside \[0, 8\)"):
            call()


def test_database_counters_saturate():
    cfg = CoreConfig(counter_bits=16)
    db = Database(cfg)
    s = OpStats(np.full(cfg.hist_bins, 40000, dtype=np.int64), 40000, 40000, 40000, 40000)
    db.accumulate(0, s)
    db.accumulate(0, s)
    r = db.read(0)
    assert r.hist.max() == r.hist.min() == 65535
    assert (r.zeros, r.overflow, r.underflow, r.total) == (65535,) * 4
    db.accumulate(0, s)
    assert db.read(0).total == 65535


# --------------------------------------------------------------------------- headroom, rise, register word
def test_policy_word_encoding_round_trips_and_rejects_bad_fields():
    from reference.stats import DEFAULT_POLICY_WORD, POLICY_BITS, PolicyParams

    assert PolicyParams(0x1234, 3, 2).encode() == 0x1234 | (3 << 16) | (2 << 18)
    assert PolicyParams.decode(0xB1234) == PolicyParams(0x1234, 3, 2)
    assert PolicyParams.decode(DEFAULT_POLICY_WORD) == PolicyParams()
    for w in (0, 1, (1 << POLICY_BITS) - 1, 0x5A5A5):
        assert PolicyParams.decode(w).encode() == w
    with pytest.raises(ValueError, match="headroom: 4 outside"):
        PolicyParams(66, 4, 0)
    with pytest.raises(ValueError, match="rise: -1 outside"):
        PolicyParams(66, 0, -1)
    with pytest.raises(ValueError, match="register word"):
        PolicyParams.decode(1 << POLICY_BITS)


def test_headroom_lowers_and_rise_limits_only_increases():
    h = _hist({10: 100})  # exponent -14: 8-bit F = 6 + 14 = 20
    assert next_frac(h, Width.W8, 0, TINY, headroom=2) == 18
    assert next_frac(h, Width.W8, 0, TINY, rise=3) == 3  # up by at most 3
    assert next_frac(h, Width.W8, 19, TINY, rise=3) == 20  # within reach
    assert next_frac(h, Width.W8, 40, TINY, rise=1) == 20  # down: at once
    assert next_frac(h, Width.W8, 17, TINY, headroom=2, rise=1) == 18
    assert next_frac(_hist({0: 5}, DEFAULT), Width.W32, 62, DEFAULT, rise=3) == FRAC_MAX  # 63 clamps, then limit
    assert next_frac(_hist({}), Width.W8, 7, TINY, headroom=3, rise=1) == 7  # empty: kept


def test_next_fracs_kernel_numpy_and_scan_agree_with_headroom_and_rise():
    from reference.stats import _next_fracs_numpy, _scan, next_fracs

    seed = 41
    rng = np.random.default_rng(seed)
    for _ in range(40):
        thr, hr, rise = int(rng.choice([0, 66, 65535, rng.integers(0, 1 << 16)])), int(rng.integers(0, 4)), \
            int(rng.integers(0, 4))
        h = rng.integers(0, 1000, (8, TINY.hist_bins)) * (rng.random((8, TINY.hist_bins)) < 0.3)
        h[0] = 0
        bits = rng.choice([8, 16, 32], 8)
        cur = rng.integers(FRAC_MIN, FRAC_MAX + 1, 8)
        want = [_scan(r.tolist(), int(b), int(c), TINY, thr, hr, rise) for r, b, c in zip(h, bits, cur, strict=True)]
        assert next_fracs(h, bits, cur, TINY, thr, hr, rise).tolist() == want, (seed, thr, hr, rise)
        assert _next_fracs_numpy(h, bits, cur, TINY, thr, hr, rise).tolist() == want, (seed, thr, hr, rise)

"""Number format, rounding, saturation, settings encoding and float conversion, against oracles."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import apytypes as apy
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from reference.formats import (
    ACC_GUARD_BITS,
    FRAC_BITS,
    FRAC_MAX,
    FRAC_MIN,
    MAX_K,
    SETTING_BITS,
    DfpFormat,
    DfpTensor,
    RoundingMode,
    TensorSetting,
    Width,
    acc_width,
    best_frac_for,
    bit_length,
    check_frac,
    dequantize,
    quantize_float,
    requantize_left,
    round_shift,
    saturate,
)

from .oracle import round_div_pow2
from .oracle import saturate as o_saturate

ACC_BITS = [acc_width(w) for w in Width]  # 32, 48, 80
MODES = list(RoundingMode)


# --------------------------------------------------------------------------- widths, F


def test_widths_and_accumulators_follow_the_definition():
    assert [w.bits for w in Width] == [8, 16, 32]
    assert [w.lanes_per_word for w in Width] == [4, 2, 1]
    assert ACC_BITS == [32, 48, 80]
    assert MAX_K == 2**ACC_GUARD_BITS == 65536
    for w in Width:
        assert Width.from_bits(w.bits) is w
        # K products of two most-negative values: the largest magnitude a matmul can reach.
        worst = MAX_K * (2 ** (w.bits - 1)) ** 2
        assert worst <= 2 ** (acc_width(w) - 1), w  # fits the signed accumulator (== at the limit)
        assert -worst >= -(2 ** (acc_width(w) - 1))


@pytest.mark.parametrize("bits", [0, 4, 12, 64, -8])
def test_width_from_bits_rejects(bits):
    with pytest.raises(ValueError, match=rf"width: {bits} bits"):
        Width.from_bits(bits)


@pytest.mark.parametrize("frac", [FRAC_MIN, FRAC_MIN + 1, 0, FRAC_MAX - 1, FRAC_MAX])
def test_frac_edges_legal(frac):
    assert check_frac(frac) == frac
    assert DfpFormat(Width.W8, frac).frac == frac
    assert DfpFormat(Width.W8, np.int64(frac)).frac == frac


@pytest.mark.parametrize("frac", [FRAC_MIN - 1, FRAC_MAX + 1, -64, 127, 10**6])
def test_frac_out_of_range_names_field(frac):
    with pytest.raises(ValueError, match=rf"frac: point position {frac} is outside \[-32, 63\]"):
        DfpFormat(Width.W16, frac)
    with pytest.raises(ValueError, match=r"^alpha_frac: "):
        check_frac(frac, "alpha_frac")


@pytest.mark.parametrize("frac", [1.0, True, "3", None])
def test_frac_wrong_type(frac):
    with pytest.raises(TypeError, match=r"frac: point position must be an integer"):
        DfpFormat(Width.W8, frac)


@pytest.mark.parametrize("width", [3, 8, -1, True])
def test_format_rejects_bad_width_code(width):
    with pytest.raises(ValueError, match=r"^width: "):
        DfpFormat(width, 0)


@pytest.mark.parametrize("w", list(Width))
def test_format_limits(w):
    f = DfpFormat(w, 5)
    assert (f.min_int, f.max_int) == (-(2 ** (w.bits - 1)), 2 ** (w.bits - 1) - 1)
    assert f.lsb == 2.0**-5
    assert str(f) == f"Q{w.bits}.5"
    assert DfpFormat(int(w), 5) == f


# --------------------------------------------------------------------------- settings register


def _expected_decode(word: int):
    """Independent decode: None if illegal, else (bits, frac, mode code, auto)."""
    wcode, fcode, rcode, auto = word & 3, (word >> 2) & 127, (word >> 9) & 3, (word >> 11) & 1
    frac = fcode - 128 if fcode >= 64 else fcode
    if wcode == 3 or rcode == 3 or not -32 <= frac <= 63:
        return None
    return (8 << wcode, frac, rcode, bool(auto))


def test_setting_layout_worked_example():
    # W16 (code 1) | F=-1 (7-bit 0b1111111 at [8:2]) | stochastic (2 at [10:9]) | auto at [11]
    s = TensorSetting(DfpFormat(Width.W16, -1), RoundingMode.STOCHASTIC, True)
    assert s.encode() == 1 + (127 << 2) + (2 << 9) + (1 << 11) == 3581
    assert SETTING_BITS == 12 and FRAC_BITS == 7


def test_setting_round_trip_over_all_legal_values():
    n = 0
    for w in Width:
        for f in range(FRAC_MIN, FRAC_MAX + 1):
            for m in RoundingMode:
                for auto in (False, True):
                    s = TensorSetting(DfpFormat(w, f), m, auto)
                    word = s.encode()
                    assert 0 <= word < 2**SETTING_BITS
                    assert _expected_decode(word) == (w.bits, f, int(m), auto)
                    assert TensorSetting.decode(word) == s
                    n += 1
    assert n == 3 * 96 * 3 * 2


def test_setting_decode_every_word():
    legal = 0
    for word in range(2**SETTING_BITS):
        exp = _expected_decode(word)
        if exp is None:
            # the lowest illegal field (width [1:0], F [8:2], rounding [10:9]) is reported
            fcode = (word >> 2) & 127
            f_bad = 64 <= fcode <= 95  # codes of -64..-33
            field = ("width code 3" if word & 3 == 3 else
                     f"point position {fcode - 128} is outside" if f_bad else "rounding code 3")
            with pytest.raises(ValueError, match=f"settings: {field}"):
                TensorSetting.decode(word)
        else:
            s = TensorSetting.decode(word)
            assert (s.fmt.bits, s.fmt.frac, int(s.rounding), s.auto) == exp
            assert s.encode() == word
            legal += 1
    assert legal == 3 * 96 * 3 * 2  # every legal word is the encoding of exactly one setting


def test_setting_decode_ignores_bits_above_the_entry():
    # the AXI write port keeps wdata[11:0]; the model decodes the same bits
    for word in (0, 3581, 2**SETTING_BITS - 1 - (3 << 9)):
        for high in (1 << 12, 0xFFFFF000):
            try:
                exp = TensorSetting.decode(word)
            except ValueError as e:
                with pytest.raises(ValueError, match=re.escape(str(e))):
                    TensorSetting.decode(word | high)
            else:
                assert TensorSetting.decode(word | high) == exp
    with pytest.raises(ValueError, match="settings: word -1 is negative"):
        TensorSetting.decode(-1)


def test_setting_rejects_bad_fields():
    f = DfpFormat(Width.W8, 0)
    with pytest.raises(ValueError, match="rounding: 3"):
        TensorSetting(f, 3)
    with pytest.raises(TypeError, match="auto: expected a bool"):
        TensorSetting(f, RoundingMode.FLOOR, 1)
    with pytest.raises(TypeError, match="fmt: expected a DfpFormat"):
        TensorSetting((8, 0))
    assert TensorSetting(f, 1).rounding is RoundingMode.FLOOR
    with pytest.raises(TypeError, match="settings: word must be an integer"):
        TensorSetting.decode(1.0)


# --------------------------------------------------------------------------- round_shift


def _edge_values(acc_bits: int) -> list[int]:
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    vals = {0, 1, -1, 2, -2, 3, -3, lo, lo + 1, hi, hi - 1}
    for k in (1, 2, 5, 15, 16, 17, acc_bits // 2, acc_bits - 2):
        for base in (2**k, -(2**k)):
            vals.update({base - 1, base, base + 1})
    return sorted(v for v in vals if lo <= v <= hi)


def _tie_values(shift: int, acc_bits: int) -> list[int]:
    """Exact ties (odd and even quotient, both signs) and their neighbours at ``shift``."""
    half = 2 ** (shift - 1)
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    out = []
    for q in (0, 1, 2, 3, 6, 7, -1, -2, -3, -4, -7, -8):
        t = q * 2**shift + half
        out += [t - 1, t, t + 1]
    return [v for v in out if lo <= v <= hi]


def _shifts(acc_bits: int) -> list[int]:
    return [-3, -1, 0, 1, 2, 15, 16, 17, acc_bits - 1, acc_bits, acc_bits + 1, acc_bits + 16,
            acc_bits + 17, acc_bits + 40, 200]


def _check_round_shift(vals: list[int], shift: int, mode: RoundingMode, acc_bits: int, u16: list[int]):
    exp = [round_div_pow2(v, shift, mode, u) for v, u in zip(vals, u16, strict=True)]
    uarr = np.array(u16, dtype=np.int64)
    wide = round_shift(np.array(vals, dtype=object), shift, mode, acc_bits, uarr)
    assert [int(x) for x in wide] == exp, (shift, mode, acc_bits)
    in64 = all(-(2**63) <= v < 2**63 for v in vals + exp)  # the int64 path needs int64 in and out
    if in64:
        narrow = round_shift(np.array(vals, dtype=np.int64), shift, mode, acc_bits, uarr)
        assert narrow.dtype == np.int64
        assert narrow.tolist() == exp, (shift, mode, acc_bits)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
@pytest.mark.parametrize("acc_bits", ACC_BITS)
def test_round_shift_edges_all_shifts(acc_bits, mode):
    rng = np.random.default_rng(1000 + acc_bits + 7 * int(mode))  # seed recorded in the id
    for shift in _shifts(acc_bits):
        vals = _edge_values(acc_bits)
        if shift >= 1:
            vals += _tie_values(min(shift, acc_bits - 1), acc_bits)
        u16 = rng.integers(0, 2**16, len(vals)).tolist()
        _check_round_shift(vals, shift, mode, acc_bits, u16)


def test_round_shift_ties_to_even_both_parities():
    acc = np.array([5, 7, -5, -7, 2**31 - 1, -(2**31)], dtype=np.int64)  # /2: 2.5 3.5 -2.5 -3.5 2**30-.5
    got = round_shift(acc, 1, RoundingMode.NEAREST_EVEN, 32)
    assert got.tolist() == [2, 4, -2, -4, 2**30, -(2**30)]
    # the most negative 32-bit value shifted by all 32 bits: -0.5 ties to 0 (even)
    assert round_shift(np.array([-(2**31)]), 32, RoundingMode.NEAREST_EVEN, 32).tolist() == [0]
    assert round_shift(np.array([-(2**31)]), 32, RoundingMode.FLOOR, 32).tolist() == [-1]
    assert round_shift(np.array([-(2**31) + 1]), 31, RoundingMode.NEAREST_EVEN, 32).tolist() == [-1]


def test_round_shift_stochastic_needs_words():
    with pytest.raises(ValueError, match="needs random words"):
        round_shift(np.array([3]), 1, RoundingMode.STOCHASTIC, 32)
    with pytest.raises(ValueError, match="rounding: "):
        round_shift(np.array([3]), 1, 7, 32)


@settings(derandomize=True, max_examples=400, deadline=None)
@given(
    data=st.data(),
    acc_bits=st.sampled_from(ACC_BITS),
    mode=st.sampled_from(MODES),
)
def test_round_shift_random_vs_oracle(data, acc_bits, mode):
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    vals = data.draw(st.lists(st.integers(lo, hi), min_size=1, max_size=8))
    shift = data.draw(st.integers(-4, acc_bits + 70))
    u16 = data.draw(st.lists(st.integers(0, 2**16 - 1), min_size=len(vals), max_size=len(vals)))
    _check_round_shift(vals, shift, mode, acc_bits, u16)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_round_shift_int64_with_wide_acc_bits(mode):
    """relu/convert at W32 pass int64 data with acc_bits=80: shifts 63..95 must work."""
    rng = np.random.default_rng(7)
    vals = [0, 1, -1, 2**31 - 1, -(2**31), 12345, -12345] + rng.integers(-(2**31), 2**31, 20).tolist()
    for shift in (1, 31, 32, 62, 63, 64, 79, 80, 81, 95):
        u16 = rng.integers(0, 2**16, len(vals)).tolist()
        exp = [round_div_pow2(v, shift, mode, u) for v, u in zip(vals, u16, strict=True)]
        got = round_shift(np.array(vals, dtype=np.int64), shift, mode, 80, np.array(u16))
        assert got.tolist() == exp, shift


# --------------------------------------------------------------------------- saturation


@pytest.mark.parametrize("w", list(Width))
def test_saturate_at_every_limit(w):
    f = DfpFormat(w, 0)
    lo, hi = f.min_int, f.max_int
    vals = [lo - 2**40, lo - 1, lo, lo + 1, -1, 0, 1, hi - 1, hi, hi + 1, hi + 2**40]
    exp = [o_saturate(v, w.bits) for v in vals]
    for arr in (np.array(vals, dtype=np.int64), np.array(vals, dtype=object)):
        q, over = saturate(arr, f)
        assert q.dtype == np.int64 and over.dtype == bool
        assert list(zip(q.tolist(), over.tolist(), strict=True)) == exp
    q, over = saturate(np.array([2**90, -(2**90)], dtype=object), f)
    assert q.tolist() == [hi, lo] and over.tolist() == [True, True]


@pytest.mark.parametrize("w", list(Width))
def test_requantize_left_matches_shift_then_saturate(w):
    f = DfpFormat(w, 0)
    rng = np.random.default_rng(11)
    vals = _edge_values(48) + rng.integers(-(2**20), 2**20, 30).tolist()
    for k in (0, 1, 7, 8, 31, 32, 63, 64, 100):
        exp = [o_saturate(v * 2**k, w.bits) for v in vals]
        for arr in (np.array(vals, dtype=np.int64), np.array(vals, dtype=object)):
            q, over = requantize_left(arr, k, f)
            assert list(zip(q.tolist(), over.tolist(), strict=True)) == exp, k


# --------------------------------------------------------------------------- bit_length


def test_bit_length_edges():
    vals = [0, 1, 2, 3, 2**52 - 1, 2**52, 2**53 - 1, 2**53, 2**53 + 1, 2**62 - 1, 2**62, 2**62 + 1,
            2**63 - 2**10, 2**63 - 2**10 - 1, 2**63 - 1]
    assert bit_length(np.array(vals, dtype=np.int64)).tolist() == [v.bit_length() for v in vals]
    big = vals + [2**79, 2**79 - 1, 2**200]
    assert bit_length(np.array(big, dtype=object)).tolist() == [v.bit_length() for v in big]
    with pytest.raises(ValueError, match="negative"):
        bit_length(np.array([3, -1]))


# --------------------------------------------------------------------------- float conversion


def _exact_q(x: float, frac: int, mode: RoundingMode, bits: int, u16: int | None = None):
    v = Fraction(x) * Fraction(2) ** frac
    q = round_div_pow2(v.numerator, v.denominator.bit_length() - 1, mode, u16)
    return o_saturate(q, bits)


def _apy_q(x: np.ndarray, frac: int, mode: RoundingMode, bits: int) -> list[int]:
    """The same conversion with apytypes (an independent fixed-point library)."""
    qm = {RoundingMode.NEAREST_EVEN: apy.QuantizationMode.TIES_EVEN,
          RoundingMode.FLOOR: apy.QuantizationMode.TO_NEG}[mode]
    exact = apy.APyFixedArray.from_float(x, int_bits=90, frac_bits=150)  # exact for our inputs
    y = exact.cast(int_bits=bits - frac, frac_bits=frac, quantization=qm, overflow=apy.OverflowMode.SAT)
    raw = np.asarray(y.to_bits(), dtype=object).tolist()
    return [r - 2**bits if r >= 2 ** (bits - 1) else r for r in raw]


def _float_inputs(rng: np.random.Generator, w: Width, frac: int, n: int) -> np.ndarray:
    """Random dyadic floats at this format's scale, ties, and values far out of range."""
    lsb_exp = -frac
    top = w.bits - 1 - frac  # 2**top is the first value out of range
    m = rng.integers(-(2**40), 2**40, n)
    e = rng.integers(lsb_exp - 30, top + 3, n)
    x = np.ldexp(m.astype(np.float64), e - 40)
    ties = (rng.integers(-(2 ** (w.bits - 1)) - 3, 2 ** (w.bits - 1) + 3, 40) + 0.5)
    ties = np.ldexp(ties, lsb_exp)
    edges = np.ldexp(np.array([2 ** (w.bits - 1) - 1, -(2 ** (w.bits - 1)), 2 ** (w.bits - 1) - 0.5,
                               -(2 ** (w.bits - 1)) - 0.5, 2 ** (w.bits - 1) - 0.75, 0.25, -0.25, 0.5,
                               -0.5, 0.75, -0.75]), lsb_exp)
    return np.concatenate([x, ties, edges, [0.0, -0.0, 2.0 ** (top + 20), -(2.0 ** (top + 20))]])


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mode", [RoundingMode.NEAREST_EVEN, RoundingMode.FLOOR], ids=lambda m: m.name)
def test_quantize_float_vs_apytypes(mode, seed):
    rng = np.random.default_rng(seed)
    for w in Width:
        for frac in (FRAC_MIN, -5, 0, 3, w.bits - 1, 30, FRAC_MAX):
            x = _float_inputs(rng, w, frac, 200)
            fmt = DfpFormat(w, frac)
            q, over, under = quantize_float(x, fmt, mode)
            assert q.dtype == np.int64
            apy_q = _apy_q(x, frac, mode, w.bits)
            assert q.tolist() == apy_q, (seed, w, frac)
            exp = [_exact_q(float(v), frac, mode, w.bits) for v in x]
            assert q.tolist() == [e[0] for e in exp], (seed, w, frac)
            assert over.tolist() == [e[1] for e in exp], (seed, w, frac)
            assert under.tolist() == [(v != 0 and e[0] == 0) for v, e in zip(x, exp, strict=True)]


def test_quantize_float_extremes():
    fmt = DfpFormat(Width.W8, -1)
    tiny = np.array([-5e-324, 5e-324, -(2.0**-1000), 1.7e308, -1.7e308])
    q, over, under = quantize_float(tiny, fmt, RoundingMode.FLOOR)
    assert q.tolist() == [-1, 0, -1, 127, -128]
    assert over.tolist() == [False, False, False, True, True]
    assert under.tolist() == [False, True, False, False, False]
    q, over, _ = quantize_float(np.array([1.7e308, -1.7e308]), DfpFormat(Width.W32, 63),
                                RoundingMode.STOCHASTIC, np.random.default_rng(0))
    assert q.tolist() == [2**31 - 1, -(2**31)] and over.all()


@pytest.mark.parametrize("seed", [5, 6])
def test_quantize_float_stochastic_follows_the_rule(seed):
    """q = floor(y) + (r16 + u >= 2**16) with u the rng's next words (numpy Generator.integers)."""
    rng = np.random.default_rng(seed)
    for w, frac in ((Width.W8, 4), (Width.W16, -3), (Width.W32, 40)):
        x = _float_inputs(rng, w, frac, 300)
        x = np.concatenate([x, -np.ldexp(rng.random(20), -frac - rng.integers(1, 60, 20))])  # y in (-1, 0)
        q, over, _ = quantize_float(x, DfpFormat(w, frac), RoundingMode.STOCHASTIC,
                                    np.random.default_rng(seed + 100))
        u = np.random.default_rng(seed + 100).integers(0, 2**16, size=x.shape)
        exp = [_exact_q(float(v), frac, RoundingMode.STOCHASTIC, w.bits, int(uu)) for v, uu in zip(x, u,
                                                                                                   strict=True)]
        assert q.tolist() == [e[0] for e in exp], (seed, w)
        assert over.tolist() == [e[1] for e in exp], (seed, w)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_float_rejects_non_finite(bad):
    x = np.array([1.0, 2.0, bad, 3.0])
    with pytest.raises(ValueError, match=r"weights: 1 non-finite value\(s\) \(first at flat index 2"):
        quantize_float(x, DfpFormat(Width.W8, 0), name="weights")
    with pytest.raises(ValueError, match="needs an rng"):
        quantize_float(np.zeros(2), DfpFormat(Width.W8, 0), RoundingMode.STOCHASTIC)


def test_dequantize_is_exact():
    for w in Width:
        for frac in (FRAC_MIN, 0, FRAC_MAX):
            f = DfpFormat(w, frac)
            q = np.array([f.min_int, -1, 0, 1, f.max_int])
            got = dequantize(q, f)
            assert [Fraction(v) for v in got] == [Fraction(int(v)) * Fraction(2) ** -frac for v in q]
            assert quantize_float(got, f)[0].tolist() == q.tolist()


def test_best_frac_for_is_the_largest_fitting_frac():
    rng = np.random.default_rng(21)
    for w in Width:
        for _ in range(50):
            x = rng.standard_normal(10) * 2.0 ** rng.integers(-40, 40)
            f = best_frac_for(x, w)
            m = Fraction(float(np.max(np.abs(x))))
            if FRAC_MIN < f < FRAC_MAX:
                assert m * 2**f < 2 ** (w.bits - 1) <= m * 2 ** (f + 1), (w, f)
    assert best_frac_for(np.zeros(3), Width.W8) == FRAC_MAX
    assert best_frac_for(np.array([2.0**100]), Width.W8) == FRAC_MIN
    assert best_frac_for(np.array([2.0**-100]), Width.W8) == FRAC_MAX


def test_tensor_checks():
    f = DfpFormat(Width.W8, 0)
    t = DfpTensor(np.array([1, -128, 127]), f)
    assert t.shape == (1, 3) and t.data.dtype == np.int64
    with pytest.raises(ValueError, match=r"tensor: values outside the 8-bit range \[-128, 127\] \(e.g. 128\)"):
        DfpTensor(np.array([[128]]), f)
    with pytest.raises(ValueError, match=r"\(e.g. -129\)"):
        DfpTensor(np.array([[5, -129]]), f)
    with pytest.raises(ValueError, match=r"tensor: DLU tensors are 2-D"):
        DfpTensor(np.zeros((2, 2, 2), dtype=np.int64), f)
    with pytest.raises(TypeError, match="expected an integer array, got dtype float64"):
        DfpTensor(np.zeros((2, 2)), f)
    assert math.isclose(float(t.to_float()[0, 1]), -128.0)


@settings(derandomize=True, max_examples=500, deadline=None)
@example(xs=[-5e-324, 5e-324, -(2.0**-1070)], w=Width.W8, frac=-1, mode=RoundingMode.FLOOR)
@example(xs=[-(2.0**-1074) * 3, 1.7976931348623157e308], w=Width.W32, frac=FRAC_MIN, mode=RoundingMode.FLOOR)
@example(xs=[-1.7976931348623157e308, 2.0**-1022], w=Width.W16, frac=FRAC_MAX, mode=RoundingMode.NEAREST_EVEN)
@given(
    xs=st.lists(st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True), min_size=1, max_size=6),
    w=st.sampled_from(list(Width)),
    frac=st.integers(FRAC_MIN, FRAC_MAX),
    mode=st.sampled_from([RoundingMode.NEAREST_EVEN, RoundingMode.FLOOR]),
)
def test_quantize_any_float_vs_apytypes(xs, w, frac, mode):
    """Every finite float64 (subnormals and the largest included) against apytypes, with an
    exact 1030.1080-bit intermediate that holds any float64 exactly."""
    x = np.array(xs, dtype=np.float64)
    qm = {RoundingMode.NEAREST_EVEN: apy.QuantizationMode.TIES_EVEN,
          RoundingMode.FLOOR: apy.QuantizationMode.TO_NEG}[mode]
    exact = apy.APyFixedArray.from_float(x, int_bits=1030, frac_bits=1080)
    y = exact.cast(int_bits=w.bits - frac, frac_bits=frac, quantization=qm, overflow=apy.OverflowMode.SAT)
    raw = [int(r) for r in np.asarray(y.to_bits(), dtype=object).tolist()]
    apy_q = [r - 2**w.bits if r >= 2 ** (w.bits - 1) else r for r in raw]
    q, over, _ = quantize_float(x, DfpFormat(w, frac), mode)
    assert q.tolist() == apy_q
    assert over.tolist() == [_exact_q(float(v), frac, mode, w.bits)[1] for v in x]


@pytest.mark.parametrize("k", [0, 1, 17, 47, 62, 63, 64, 100])
def test_round_shift_left_is_exact_past_int64(k):
    """shift <= 0 on int64 is an exact left shift: values whose product leaves int64 come back
    as Python ints (object array), never wrapped; values that fit stay int64."""
    rng = np.random.default_rng(k)
    vals = [0, 1, -1, (1 << 31) - 1, -(1 << 31), (1 << 47) - 1, -(1 << 47), (1 << 62) - 1, -(1 << 62)]
    vals += [int(x) for x in rng.integers(-(1 << 62), 1 << 62, size=8)]
    for mode in RoundingMode:
        got = round_shift(np.array(vals, dtype=np.int64), -k, mode, 80)
        assert [int(x) for x in got] == [v << k for v in vals], f"k={k} {mode.name}"
        fits = all(-(1 << 63) <= v << k < (1 << 63) for v in vals)
        assert (got.dtype == np.int64) == fits
    small = round_shift(np.array([3, -5], dtype=np.int64), -k, RoundingMode.FLOOR, 80)
    assert [int(x) for x in small] == [3 << k, -5 << k]
    assert small.dtype == (np.int64 if k < 60 else object)

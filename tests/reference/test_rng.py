"""xorshift32 generators, seeding, the fast beat generator, and stochastic rounding's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reference.formats import STOCHASTIC_BITS, RoundingMode, round_shift
from reference.rng import draw_beats, jump, seed_states, xorshift32

from . import oracle


def draw_beats_definition(states: np.ndarray, n_beats: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """The documented definition of draw_beats: one Python step per beat (the oracle)."""
    s = [int(v) for v in states]
    words = []
    for _ in range(n_beats):
        s = [oracle.xorshift32(v) for v in s]
        words.append([v >> 16 for v in s[:slots]])
    return np.array(words, dtype=np.int64).reshape(n_beats, slots), np.array(s, dtype=np.uint32)


def test_xorshift32_matches_python_ints():
    rng = np.random.default_rng(3)
    s = rng.integers(1, 2**32, 1000, dtype=np.uint64).astype(np.uint32)
    s = np.concatenate([s, np.array([1, 2**31, 2**32 - 1], dtype=np.uint32)])
    got = xorshift32(s)
    assert got.dtype == np.uint32
    assert got.tolist() == [oracle.xorshift32(int(v)) for v in s]
    # Marsaglia's xorshift32 from state 1: first outputs of the (13, 17, 5) triple
    x, seq = 1, []
    for _ in range(3):
        x = oracle.xorshift32(x)
        seq.append(x)
    assert seq == [270369, 67634689, 2647435461]


@pytest.mark.parametrize("seed", [0, 1, 0xDEADBEEF, 2**32 - 1, oracle.GOLDEN])
def test_seed_states_definition(seed):
    got = seed_states(seed, 32)
    assert got.dtype == np.uint32
    assert got.tolist() == oracle.seed_states(seed, 32)
    assert 0 not in got.tolist()


def test_seed_zero_state_is_replaced_by_one():
    # seed == GOLDEN makes generator 0's state 0, which xorshift would keep forever
    assert seed_states(oracle.GOLDEN, 4)[0] == 1
    assert seed_states((2 * oracle.GOLDEN) % 2**32, 4)[1] == 1


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_out_of_range(seed):
    with pytest.raises(ValueError, match="seed: .* does not fit the 32-bit seed register"):
        seed_states(seed, 8)


@pytest.mark.parametrize("n_beats", [0, 1, 2, 63, 64, 65, 127, 128, 129, 191, 1000, 4097])
@pytest.mark.parametrize("slots", [0, 1, 5, 32])
def test_draw_beats_equals_definition(n_beats, slots):
    seed = 1000 * n_beats + slots
    states = seed_states(seed, 32)
    words, new = draw_beats(states, n_beats, slots)
    ow, on = draw_beats_definition(states, n_beats, slots)
    assert words.dtype == np.int64 and words.shape == (n_beats, slots), seed
    assert np.array_equal(words, ow), seed
    assert new.dtype == np.uint32 and np.array_equal(new, on), seed
    assert np.array_equal(states, seed_states(seed, 32)), "input states must not be modified"


def test_draw_beats_chains():
    """Two calls of n and m beats give the same words as one call of n + m beats."""
    states = seed_states(99, 16)
    w1, s1 = draw_beats(states, 300, 16)
    w2, s2 = draw_beats(s1, 77, 16)
    w, s = draw_beats(states, 377, 16)
    assert np.array_equal(np.concatenate([w1, w2]), w) and np.array_equal(s2, s)


def test_draw_beats_large_equals_loop_over_numpy_steps():
    states = seed_states(0x1234, 64)
    n = 20000
    words, new = draw_beats(states, n, 64)
    s = states.copy()
    exp = np.empty((n, 64), dtype=np.int64)
    for b in range(n):
        s = xorshift32(s)
        exp[b] = s >> np.uint32(16)
    assert np.array_equal(words, exp) and np.array_equal(new, s)


def test_jump_equals_repeated_steps():
    states = seed_states(7, 8)
    s = states.copy()
    for t in range(300):
        assert np.array_equal(jump(states, t), s), t
        s = xorshift32(s)
    with pytest.raises(ValueError, match="steps: -1 is negative"):
        jump(states, -1)


def test_draw_beats_errors():
    with pytest.raises(ValueError, match=r"slots: 33 is not in \[0, 32\]"):
        draw_beats(seed_states(1, 32), 4, 33)
    with pytest.raises(ValueError, match="n_beats: -1 is negative"):
        draw_beats(seed_states(1, 32), -1, 4)


# --------------------------------------------------------------------------- stochastic rounding


def test_carry_rule_exhaustive():
    """For remainder bits r16, exactly r16 of the 2**16 words round up: P(up) = r16 / 2**16."""
    u = np.arange(2**STOCHASTIC_BITS, dtype=np.int64)
    for shift, rem in ((16, 0), (16, 1), (16, 0x8000), (16, 0xFFFF), (20, 0x12345), (3, 5), (1, 1)):
        acc = np.full(u.shape, 8 * 2**shift + rem, dtype=np.int64)  # quotient 8, remainder rem
        out = round_shift(acc, shift, RoundingMode.STOCHASTIC, 48, u)
        r16 = (rem * 2**16) >> shift  # the 16 bits just below the kept LSB (zero-filled)
        ups = int(np.count_nonzero(out == 9))
        assert set(np.unique(out).tolist()) <= {8, 9}
        assert ups == r16, (shift, rem)
        # which words: exactly those with u >= 2**16 - r16
        assert np.array_equal(out == 9, u >= 2**16 - r16)


@pytest.mark.parametrize("seed", [1, 2021])
def test_stochastic_rounding_unbiased_with_the_generators(seed):
    """Mean rounding error over N draws from the xorshift streams.

    For one value with exact quotient x = fq + rem/2**s, each draw rounds up with
    p = r16 / 2**16, so E[result] = fq + p and the bias E[result] - x lies in (-2**-16, 0].
    The mean of N Bernoulli(p) draws has standard deviation sqrt(p(1-p)/N); we require
    |mean - (fq + p)| <= 5 * sqrt(p(1-p)/N) + 1e-12 (a 5-sigma bound: a truly uniform source
    fails it with probability < 1e-6 per value), and |mean - x| <= that + 2**-16.
    """
    n_beats, slots = 4096, 32
    words, _ = draw_beats(seed_states(seed, slots), n_beats, slots)
    u = words.ravel()
    n = u.size
    for shift, acc in ((8, 3 * 256 + 77), (8, -(3 * 256 + 77)), (20, 123456789), (4, 1), (16, 0x7FFF),
                       (24, -(2**23) - 1), (12, 4095)):
        out = round_shift(np.full(n, acc, dtype=np.int64), shift, RoundingMode.STOCHASTIC, 48, u)
        fq = acc >> shift
        p = (((acc - fq * 2**shift) * 2**16) >> shift) / 2**16
        mean = float(np.mean(out))
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(mean - (fq + p)) <= 5 * sigma + 1e-12, (seed, shift, acc, mean, fq + p, sigma)
        assert abs(mean - acc / 2**shift) <= 5 * sigma + 2**-16 + 1e-12, (seed, shift, acc)


@pytest.mark.parametrize("seed", [3, 4])
def test_words_are_uniform_per_slot(seed):
    """Each slot's words are uniform on [0, 2**16): chi-square over 16 buckets below a loose bound."""
    words, _ = draw_beats(seed_states(seed, 32), 8192, 32)
    for j in range(32):
        counts = np.bincount(words[:, j] >> 12, minlength=16)
        expected = 8192 / 16
        chi2 = float(np.sum((counts - expected) ** 2 / expected))
        assert chi2 < 45.0, (seed, j, chi2)  # 15 dof: P(chi2 > 45) ~ 7e-5

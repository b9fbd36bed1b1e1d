"""Random words for stochastic rounding: one xorshift32 generator per output slot.

The core converts results one *beat* at a time: a beat is up to ``V = lanes * 32 / W``
values of one output row (see :func:`reference.ops.beats`). Slot ``j`` of every beat
draws its random word from generator ``j``. There are ``4 * lanes`` generators (the widest
beat, at 8 bits); on every beat that is converted in stochastic mode with bits dropped
(``shift = F_acc - F_out > 0``) *all* of them step once, whatever the width, so the state
never depends on which slots were used. A conversion that drops no bits steps none.

Generator ``j`` is Marsaglia's xorshift32 (13, 17, 5). Seeding from the 32-bit seed
register: ``state_j = seed XOR ((j + 1) * 0x9E3779B9 mod 2**32)``, and 1 if that is 0.
The word for a value is the upper 16 bits of the state *after* the step.

Definition of :func:`draw_beats` (the test suite keeps this loop as its oracle)::

    for b in range(n_beats):
        s = xorshift32(s)
        words[b] = s[:slots] >> 16

The implementation computes the same words without a Python loop over beats: a xorshift32
step is a linear map ``M`` over GF(2)**32, so ``M**t`` is applied with four 256-entry
lookup tables (one per state byte) and ``M**(t * 2**k)`` is obtained by squaring; the
states inside a block of beats come from precomputed tables of ``M**1 .. M**32``.
"""

from __future__ import annotations

import functools

import numpy as np

GOLDEN = 0x9E3779B9
MASK32 = 0xFFFFFFFF


def seed_states(seed: int, n: int) -> np.ndarray:
    """Initial states of ``n`` generators from the seed register."""
    if not 0 <= int(seed) <= MASK32:
        raise ValueError(f"seed: {seed!r} does not fit the 32-bit seed register")
    j = np.arange(1, n + 1, dtype=np.uint64)
    s = (np.uint64(seed) ^ ((j * np.uint64(GOLDEN)) & np.uint64(MASK32))).astype(np.uint32)
    s[s == 0] = 1
    return s


_SHL_A, _SHR_B, _SHL_C = np.uint32(13), np.uint32(17), np.uint32(5)


def xorshift32(s: np.ndarray) -> np.ndarray:
    """One step of every generator (uint32 arrays); returns a new array."""
    s = s ^ (s << _SHL_A)
    s ^= s >> _SHR_B
    s ^= s << _SHL_C
    return s


#: Beats per block: block starts are reached by jumps, the beats inside a block from their
#: start by the byte tables of M**1 .. M**_BLOCK (see :func:`_step_tables`; 128 KiB, so that
#: they stay in a core's L2 cache between conversions: random look-ups in a larger table cost
#: more in cache misses than they save in jumps).
_BLOCK = 32


def _apply(tables: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply the GF(2)-linear map given by byte tables [4, 256] to uint32 states."""
    return (
        tables[0][x & np.uint32(0xFF)]
        ^ tables[1][(x >> np.uint32(8)) & np.uint32(0xFF)]
        ^ tables[2][(x >> np.uint32(16)) & np.uint32(0xFF)]
        ^ tables[3][x >> np.uint32(24)]
    )


def _tables(images: np.ndarray) -> np.ndarray:
    """Byte tables of the linear map that sends bit i to ``images[i]`` (uint32[32])."""
    byte = np.arange(256)
    t = np.zeros((4, 256), dtype=np.uint32)
    for j in range(4):
        for bit in range(8):
            t[j][((byte >> bit) & 1) == 1] ^= images[8 * j + bit]
    return t


@functools.cache
def _jump_tables(log2_steps: int) -> np.ndarray:
    """Byte tables of ``M**(2**log2_steps)``, ``M`` being one xorshift32 step."""
    if log2_steps == 0:
        basis = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
        return _tables(xorshift32(basis))
    half = _jump_tables(log2_steps - 1)
    basis = np.left_shift(np.uint32(1), np.arange(32, dtype=np.uint32))
    return _tables(_apply(half, _apply(half, basis)))


def jump(states: np.ndarray, steps: int) -> np.ndarray:
    """The states after ``steps`` xorshift32 steps of every generator, in O(log steps)."""
    if steps < 0:
        raise ValueError(f"steps: {steps} is negative")
    s = np.asarray(states, dtype=np.uint32).copy()
    k = 0
    while steps:
        if steps & 1:
            s = _apply(_jump_tables(k), s)
        steps >>= 1
        k += 1
    return s


@functools.cache
def _step_tables() -> np.ndarray:
    """Byte tables of ``M**(i + 1)`` for i < _BLOCK, flattened: entry ``(i * 4 + k) * 256 + v``.

    The table of ``M**(i + 1)`` is that of ``M**i`` with one more step applied to every entry
    (``M`` is linear, so ``M(L(x)) = xorshift32(L(x))``). Built once.
    """
    t = np.empty((_BLOCK, 4, 256), dtype=np.uint32)
    t[0] = _jump_tables(0)
    for i in range(1, _BLOCK):
        t[i] = xorshift32(t[i - 1])
    return t.reshape(-1)


def draw_beats(states: np.ndarray, n_beats: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """Random words for ``n_beats`` beats of ``slots`` values; returns (words, new states).

    ``words`` has shape [n_beats, slots], dtype int64, values in [0, 2**16): row ``b`` holds
    the upper halves of the first ``slots`` generators' states after ``b + 1`` steps. Every
    generator (not only the first ``slots``) steps once per beat.
    """
    states = np.asarray(states, dtype=np.uint32)
    if states.ndim != 1:
        raise ValueError(f"states: expected a 1-D array of generator states, got shape {states.shape}")
    if not 0 <= slots <= states.size:
        raise ValueError(f"slots: {slots} is not in [0, {states.size}] (the number of generators)")
    if n_beats < 0:
        raise ValueError(f"n_beats: {n_beats} is negative")
    if n_beats == 0:
        return np.empty((0, slots), dtype=np.int64), states.copy()
    # Block c covers beats [c * B, (c + 1) * B): its start state is M**(c * B) applied to the
    # initial states, built by doubling the list of starts with jumps of B * 2**k steps.
    n_blocks = -(-n_beats // _BLOCK)
    starts = states.reshape(1, -1).copy()
    k = _BLOCK.bit_length() - 1
    while starts.shape[0] < n_blocks:
        starts = np.concatenate([starts, _apply(_jump_tables(k), starts)])
        k += 1
    starts = starts[:n_blocks]
    # State after beat c * B + i + 1 = M**(i + 1) starts[c]: four table look-ups per state.
    rows = min(n_beats, _BLOCK)
    t = _step_tables()
    # the 4 bytes of every start state, LSB first: [4, n_blocks, 1, G]
    x = starts.astype("<u4", copy=False).view(np.uint8).reshape(n_blocks, 1, -1, 4).transpose(3, 0, 1, 2)
    v = t[_byte_base(rows) + x[:, :, :, :slots]]  # v[k, c, i] = table (i, k) of byte k of starts[c]
    s = v[0]
    s ^= v[1]
    s ^= v[2]
    s ^= v[3]
    words = (s.reshape(n_blocks * rows, slots)[:n_beats] >> np.uint32(16)).astype(np.int64)
    last = n_beats - 1  # the final states of every generator: beat `last` of its block
    i = last % _BLOCK
    xl = x[:, last // _BLOCK, 0, :]  # [4, G]
    base = (i * 4 + np.arange(4, dtype=np.intp).reshape(4, 1)) * 256
    f = t[base + xl]
    final = f[0] ^ f[1] ^ f[2] ^ f[3]
    return words, final


@functools.cache
def _byte_base(rows: int) -> np.ndarray:
    """[4, 1, rows, 1]: offset of the table of byte k of M**(i + 1) in :func:`_step_tables`."""
    i = np.arange(rows, dtype=np.intp).reshape(1, 1, rows, 1)
    k = np.arange(4, dtype=np.intp).reshape(4, 1, 1, 1)
    return (i * 4 + k) * 256

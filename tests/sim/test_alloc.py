"""BankAllocator against a word-bitmap oracle: no overlap, first fit, exact free extents."""

from __future__ import annotations

import numpy as np
import pytest

from reference.config import PRESETS, CoreConfig
from sim.alloc import BankAllocator

CFG = CoreConfig(lanes=2, spad_words=64, spad_banks=3, tensor_ids=8)


def _runs(free: np.ndarray) -> list[tuple[int, int]]:
    """(offset, length) of the runs of True in a bitmap."""
    out, i = [], 0
    while i < len(free):
        if free[i]:
            j = i
            while j < len(free) and free[j]:
                j += 1
            out.append((i, j - i))
            i = j
        else:
            i += 1
    return out


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_alloc_free_matches_bitmap_oracle(seed):
    rng = np.random.default_rng(seed)  # seed recorded by the parametrization
    al = BankAllocator(CFG)
    free = np.ones((CFG.spad_banks, CFG.spad_words), dtype=bool)
    live: dict[int, tuple[int, int, int]] = {}
    owner = 0
    for step in range(400):
        if live and rng.random() < 0.45:
            o = int(rng.choice(list(live)))
            bank, off, words = live.pop(o)
            buf = al.free(o)
            assert (buf.bank, buf.offset, buf.words) == (bank, off, words)
            free[bank, off:off + words] = True
        else:
            words = int(rng.integers(1, 40))
            bank = int(rng.integers(0, CFG.spad_banks))
            runs = _runs(free[bank])
            buf = al.alloc(owner, words, bank)
            first = next((off for off, n in runs if n >= words), None)
            if first is None:
                assert buf is None, f"seed {seed} step {step}: allocated although no run of {words} is free"
            else:
                assert buf is not None and buf.offset == first, f"seed {seed} step {step}: not first fit"
                assert buf.bank == bank and buf.addr == bank * CFG.spad_words + first
                assert free[bank, first:first + words].all(), f"seed {seed} step {step}: overlaps a live buffer"
                free[bank, first:first + words] = False
                live[owner] = (bank, first, words)
                owner += 1
        al.check()
        for b in range(CFG.spad_banks):
            assert al.free_extents(b) == _runs(free[b])


def test_bad_arguments_name_the_value():
    al = BankAllocator(PRESETS["tiny"])
    with pytest.raises(ValueError, match="words=65"):
        al.alloc(0, 65, 0)
    with pytest.raises(ValueError, match="bank=4"):
        al.alloc(0, 1, 4)
    al.alloc(0, 1, 0)
    with pytest.raises(ValueError, match="owner 0 already holds"):
        al.alloc(0, 1, 1)
    with pytest.raises(KeyError):
        al.free(7)

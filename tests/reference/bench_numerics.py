"""Timing of the golden-model numerics at training shapes (not a test; prints figures).

Usage: OPENBLAS_NUM_THREADS=1 .venv/bin/python -m tests.reference.bench_numerics

Prints the best of several runs for draw_beats (fast vs the one-step-per-beat definition)
and for each op at [2048, 144] x [144, 16]-class shapes, next to the float32 NumPy matmul.
"""

from __future__ import annotations

import timeit

import numpy as np

from reference import ops
from reference.config import PRESETS
from reference.formats import DfpFormat, DfpTensor, RoundingMode, Width
from reference.rng import draw_beats, seed_states, xorshift32


def _best_ms(fn, number: int = 3, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e3


def _draw_beats_loop(states: np.ndarray, n_beats: int, slots: int):
    words = np.empty((n_beats, slots), dtype=np.int64)
    s = states.copy()
    for b in range(n_beats):
        s = xorshift32(s)
        words[b] = s[:slots] >> np.uint32(16)
    return words, s


def _op_row(x: DfpTensor, wt: DfpTensor, g: DfpTensor, rm: RoundingMode, cfg, st) -> str:
    fm = x.fmt
    xt, wtt = DfpTensor(x.data.T.copy(), fm), DfpTensor(wt.data.T.copy(), fm)
    row = {
        "X@W": _best_ms(lambda: ops.matmul(x, wt, fm, rm, cfg, st)),
        "G@W^T": _best_ms(lambda: ops.matmul(g, wtt, fm, rm, cfg, st)),
        "X^T@G": _best_ms(lambda: ops.matmul(xt, g, fm, rm, cfg, st)),
        "relu": _best_ms(lambda: ops.relu(x, fm, rm, cfg, st)),
        "add": _best_ms(lambda: ops.add(x, x, fm, rm, cfg, st)),
        "axpy": _best_ms(lambda: ops.axpy(3, 10, wt, wt, fm, rm, cfg, st)),
    }
    return "  ".join(f"{k} {v:6.2f}" for k, v in row.items())


def main() -> None:
    cfg = PRESETS["default"]
    st = seed_states(1, cfg.rng_slots)
    for n in (64, 10_000, 100_000):
        fast = _best_ms(lambda n=n: draw_beats(st, n, 32), number=1)
        loop = _best_ms(lambda n=n: _draw_beats_loop(st, n, 32), number=1, repeat=2)
        print(f"draw_beats {n:>7} beats x 32 slots: loop {loop:8.2f} ms   fast {fast:7.2f} ms")
    rng = np.random.default_rng(0)
    for w in (Width.W8, Width.W16):
        fm = DfpFormat(w, w.bits - 4)
        x, wt, g = (DfpTensor(rng.integers(fm.min_int, fm.max_int + 1, s), fm)
                    for s in ((2048, 144), (144, 16), (2048, 16)))
        for rm in (RoundingMode.NEAREST_EVEN, RoundingMode.STOCHASTIC):
            print(f"{w.name} {rm.name:12s} " + _op_row(x, wt, g, rm, cfg, st) + "  ms")
    xf, wf = rng.standard_normal((2048, 144)).astype(np.float32), rng.standard_normal((144, 16)).astype(np.float32)
    gf = rng.standard_normal((2048, 16)).astype(np.float32)
    print(f"fp32 numpy   X@W {_best_ms(lambda: xf @ wf):6.2f}  G@W^T {_best_ms(lambda: gf @ wf.T):6.2f}  "
          f"X^T@G {_best_ms(lambda: xf.T @ gf):6.2f}  ms")


if __name__ == "__main__":
    main()

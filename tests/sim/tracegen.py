"""Small training-like traces recorded through the reference engine, for the simulator tests.

:func:`small_trace` uses the ``tiny`` core (2 lanes, 4 banks of 64 words) so that a [100, 8]
8-bit tensor (100 words) exceeds a bank and must be tiled, and exercises every path of the
scheduler: host loads, a streamed MATMUL, a broadcast ADD, RELU and RELU_BACKWARD on streamed
tensors, operands the host derives from on-chip results (which must be STOREd first), an
in-place AXPY with stochastic rounding, a widening CONVERT, a MUL whose two operands are the
same value, setting writes and POLICY_UPDATE, over two iterations.
"""

from __future__ import annotations

import numpy as np

from reference.config import PRESETS, CoreConfig
from reference.engine import Engine
from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from reference.ops import Op, scalar_to_dfp
from reference.trace import Trace, TraceRecorder

TINY = PRESETS["tiny"]
NAMES = {0: "input", 1: "fc.weight", 2: "fc.matmul", 3: "fc.bias", 4: "fc.out", 5: "relu.out", 6: "fc.out.err",
         7: "fc.weight.grad"}


def _s(width: Width, frac: int, rnd: RoundingMode = RoundingMode.NEAREST_EVEN, auto: bool = True) -> TensorSetting:
    return TensorSetting(DfpFormat(width, frac), rnd, auto)


def small_trace(seed: int, rows: int = 100, cfg: CoreConfig = TINY, iterations: int = 2) -> Trace:
    """A recorded trace of ``iterations`` iterations; deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    eng = Engine(cfg, seed=seed & 0xFFFFFFFF)
    rec = TraceRecorder()
    eng.recorder = rec
    w8 = Width.W8
    for tid, s in {0: _s(w8, 5, auto=False), 1: _s(w8, 6), 2: _s(w8, 4, RoundingMode.STOCHASTIC), 3: _s(w8, 6),
                   4: _s(w8, 4), 5: _s(w8, 4), 6: _s(w8, 4), 7: _s(w8, 5)}.items():
        eng.set_setting(tid, s)
    w = eng.load(1, rng.normal(0, 0.5, (8, 4)))
    b = eng.load(3, rng.normal(0, 0.1, (1, 4)))
    for it in range(iterations):
        rec.begin_iteration(it, eng)
        eng.set_setting(0, _s(w8, 5, auto=False))
        x = eng.load(0, rng.normal(0, 1, (rows, 8)))
        y = eng.run(Op.MATMUL, 2, [x, w], [0, 1])
        z = eng.run(Op.ADD, 4, [y, b], [2, 3])
        r = eng.run(Op.RELU, 5, [z], [4])
        g = eng.run(Op.RELU_BACKWARD, 6, [r, z], [5, 4])
        # Operands the host derives from on-chip results: r[:4] and w transposed.
        r4 = DfpTensor(r.data[:4, :], r.fmt)
        wt = DfpTensor(w.data.T.copy(), w.fmt)
        eng.set_setting(7, _s(w8, 5))
        t7 = eng.run(Op.MATMUL, 7, [r4, wt], [5, 1])
        t7t = DfpTensor(t7.data.T.copy(), t7.fmt)
        eng.set_setting(1, _s(w8, eng.settings[1].fmt.frac, RoundingMode.STOCHASTIC))
        w = eng.run(Op.AXPY, 1, [t7t, w], [7, 1], scalar_to_dfp(-0.05, w8))
        eng.set_setting(7, _s(Width.W16, 10))
        c = eng.run(Op.CONVERT, 7, [w], [1])
        eng.run(Op.MUL, 7, [c, c], [7, 7])
        del g
        eng.update_formats()
        rec.end_iteration()
    return rec.trace(eng, {"tensor_names": {str(k): v for k, v in NAMES.items()}, "seed": seed})


def matmul_trace(cfg: CoreConfig = TINY) -> Trace:
    """One iteration: two host loads a[4, 8], b[8, 4] (8-bit), one MATMUL, POLICY_UPDATE."""
    eng = Engine(cfg, seed=1)
    rec = TraceRecorder()
    eng.recorder = rec
    for tid in range(3):
        eng.set_setting(tid, _s(Width.W8, 4, auto=tid == 2))
    rec.begin_iteration(0, eng)
    a = eng.load(0, np.arange(32).reshape(4, 8) / 64)
    b = eng.load(1, np.arange(32).reshape(8, 4) / 64)
    eng.run(Op.MATMUL, 2, [a, b], [0, 1])
    eng.update_formats()
    rec.end_iteration()
    return rec.trace(eng, {"tensor_names": {"0": "fc.in", "1": "fc.weight", "2": "fc.out"}})


def pressure_trace(seed: int, cfg: CoreConfig = TINY) -> Trace:
    """Six host tensors of 48 words and elementwise ops keeping several results live: forces evictions."""
    rng = np.random.default_rng(seed)
    eng = Engine(cfg, seed=seed & 0xFFFFFFFF)
    rec = TraceRecorder()
    eng.recorder = rec
    for tid in range(8):
        eng.set_setting(tid, _s(Width.W8, 4, auto=tid >= 6))
    rec.begin_iteration(0, eng)
    x = [eng.load(t, rng.normal(0, 1, (48, 8))) for t in range(6)]
    a = eng.run(Op.ADD, 6, [x[0], x[1]], [0, 1])
    b = eng.run(Op.ADD, 7, [x[2], x[3]], [2, 3])
    c = eng.run(Op.ADD, 6, [x[4], x[5]], [4, 5])  # a new value of tid 6 while a is still needed
    d = eng.run(Op.ADD, 7, [a, b], [6, 7])
    e = eng.run(Op.MUL, 6, [d, c], [7, 6])
    eng.run(Op.SUB, 7, [x[0], e], [0, 6])
    eng.update_formats()
    rec.end_iteration()
    return rec.trace(eng, {"tensor_names": {str(t): f"l{t}.out" for t in range(8)}})


def oversize_trace(cfg: CoreConfig = TINY) -> Trace:
    """A MATMUL whose b is [100, 4] at 8 bits: 100 words, more than a tiny bank (64)."""
    eng = Engine(cfg, seed=3)
    rec = TraceRecorder()
    eng.recorder = rec
    for tid in range(3):
        eng.set_setting(tid, _s(Width.W8, 4))
    rec.begin_iteration(0, eng)
    a = eng.load(0, np.full((2, 100), 0.0625))
    b = eng.load(1, np.full((100, 4), 0.0625))
    eng.run(Op.MATMUL, 2, [a, b], [0, 1])
    eng.update_formats()
    rec.end_iteration()
    return rec.trace(eng, {"tensor_names": {"0": "fc.in", "1": "fc.weight", "2": "fc.matmul"}})


def ksplit_trace(seed: int, cfg: CoreConfig = TINY) -> Trace:
    """Random 8-bit a [3, 150] @ b [150, 12] with stochastic rounding: b needs 300 words (two per row),
    more than a tiny bank (64), so the scheduler sums it over five K chunks of 32 rows."""
    rng = np.random.default_rng(seed)
    eng = Engine(cfg, seed=seed)
    rec = TraceRecorder()
    eng.recorder = rec
    eng.set_setting(0, _s(Width.W8, 5))
    eng.set_setting(1, _s(Width.W8, 5))
    eng.set_setting(2, _s(Width.W8, 4, RoundingMode.STOCHASTIC))
    rec.begin_iteration(0, eng)
    a = eng.load(0, rng.uniform(-3, 3, size=(3, 150)))
    b = eng.load(1, rng.uniform(-3, 3, size=(150, 12)))
    eng.run(Op.MATMUL, 2, [a, b], [0, 1])
    eng.update_formats()
    rec.end_iteration()
    return rec.trace(eng, {"tensor_names": {"0": "fc.in", "1": "fc.weight", "2": "fc.matmul"}})

"""Random DLU programs (settings, commands, LOAD data) for the sequencer and core tests.

Every program is built from a seed; the oracle is ``testbenches.cocotb.core_model.CoreModel``
(built only from :mod:`reference`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reference.config import CoreConfig
from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from reference.isa import Accumulate, Command, Ctl, tensor_words
from reference.ops import Op
from testbenches.cocotb.core_model import CoreModel


@dataclass
class Program:
    settings: dict[int, int]  # tid -> encoded word
    commands: list[Command] = field(default_factory=list)
    loads: list[list[int]] = field(default_factory=list)  # LOAD words, in LOAD order


def _tensor(rng: np.random.Generator, rows: int, cols: int, fmt: DfpFormat) -> DfpTensor:
    lo, hi = fmt.min_int, fmt.max_int
    kind = rng.integers(0, 3)
    if kind == 0:
        x = rng.integers(lo, hi, size=(rows, cols), endpoint=True)
    elif kind == 1:  # small values: underflow and rounding ties
        x = rng.integers(-4, 5, size=(rows, cols))
    else:  # extremes and zeros
        x = rng.choice([lo, hi, 0, -1, 1], size=(rows, cols))
    return DfpTensor(x.astype(np.int64), fmt)


def random_compute(rng: np.random.Generator, cfg: CoreConfig, prog: Program, base_tid: int,
                   op: Op | None = None, widths: tuple[Width, Width] | None = None) -> None:
    """Append LOADs, one compute command and a STORE of its result (tids base_tid..base_tid+2).

    ``widths`` = (operand width, destination width); they differ only for CONVERT.
    """
    op = Op(int(rng.integers(0, 8))) if op is None else op
    w = Width(int(rng.integers(0, 3)))
    wd = Width(int(rng.integers(0, 3))) if op == Op.CONVERT else w
    if widths is not None:
        w, wd = widths
    ta, tb, td = base_tid, base_tid + 1, base_tid + 2

    def frac():
        return int(rng.choice([-32, 63, int(rng.integers(-8, 24)), int(rng.integers(-32, 64))]))

    fa, fb, fd = DfpFormat(w, frac()), DfpFormat(w, frac()), DfpFormat(wd, frac())
    rnd = RoundingMode(int(rng.integers(0, 3)))
    prog.settings[ta] = TensorSetting(fa, RoundingMode.NEAREST_EVEN, bool(rng.integers(0, 2))).encode()
    prog.settings[tb] = TensorSetting(fb, RoundingMode.FLOOR, bool(rng.integers(0, 2))).encode()
    prog.settings[td] = TensorSetting(fd, rnd, bool(rng.integers(0, 2))).encode()
    v = cfg.values_per_beat(max(w, wd))
    m = int(rng.integers(1, 4))
    n = int(rng.choice([1, v - 1 if v > 1 else 1, v, v + 1, int(rng.integers(1, 5 * v + 1))]))
    k = int(rng.integers(1, 7))
    # reference.ops.relu_backward takes no broadcast row (reference.isa.operand_shapes would allow one).
    bcast = bool(rng.integers(0, 2)) and op in (Op.ADD, Op.SUB, Op.MUL)
    sw = cfg.spad_words
    if op == Op.MATMUL:
        sa, sb = (m, k), (k, n)
    else:
        sa, sb = (m, n), ((1 if bcast else m), n)
    words_a = tensor_words(*sa, fa, cfg)
    words_b = tensor_words(*sb, fb, cfg)
    words_d = tensor_words(m, n, fd, cfg)
    assert max(words_a, words_b, words_d) <= sw // 2
    addr_a = 0 * sw + int(rng.integers(0, sw - words_a + 1))
    addr_b = 1 * sw + int(rng.integers(0, sw - words_b + 1))
    addr_d = 2 * sw + int(rng.integers(0, sw - words_d + 1))
    a = _tensor(rng, *sa, fa)
    b = _tensor(rng, *sb, fb)
    wa = CoreModel.pack_rows(a, cfg)
    prog.commands.append(Command(Ctl.LOAD, addr_d=addr_a, k=len(wa)))
    prog.loads.append(wa)
    has_b = op not in (Op.RELU, Op.CONVERT)
    if has_b:
        wbw = CoreModel.pack_rows(b, cfg)
        prog.commands.append(Command(Ctl.LOAD, addr_d=addr_b, k=len(wbw)))
        prog.loads.append(wbw)
    alpha, alpha_frac = 0, 0
    if op == Op.AXPY:
        lim = 1 << (w.bits - 1)
        alpha = int(rng.choice([-lim, lim - 1, int(rng.integers(-lim, lim))]))
        alpha_frac = int(rng.integers(-32, 64))
    prog.commands.append(Command(int(op), tid_d=td, tid_a=ta, tid_b=tb, addr_a=addr_a, addr_b=addr_b,
                                 addr_d=addr_d, m=m, n=n, k=k, alpha=alpha, alpha_frac=alpha_frac,
                                 broadcast_b=bcast, irq=bool(rng.integers(0, 2))))
    prog.commands.append(Command(Ctl.STORE, addr_a=addr_d, k=words_d))


def illegal_commands(cfg: CoreConfig, tids: tuple[int, int, int]) -> list[Command]:
    """One command per error code (tids: a, b, d with legal 8-bit settings; tid 7 unset)."""
    ta, tb, td = tids
    sw = cfg.spad_words
    ok = dict(tid_a=ta, tid_b=tb, tid_d=td, addr_a=0, addr_b=sw, addr_d=2 * sw, m=1, n=2, k=1)
    return [
        Command(13, **ok),
        Command(int(Op.ADD), **(ok | {"tid_b": cfg.tensor_ids})),
        Command(int(Op.ADD), **(ok | {"tid_d": 7})),
        Command(int(Op.MATMUL), **(ok | {"k": 0})),
        Command(int(Op.ADD), **(ok | {"addr_d": 3 * sw - 1, "n": 3 * cfg.lanes * 4})),
        Command(int(Op.ADD), **(ok | {"addr_b": 5})),
        Command(int(Op.AXPY), **(ok | {"alpha": 128})),
        Command(Ctl.LOAD, addr_d=cfg.spad_banks * sw - 1, k=2),
        Command(Ctl.CLEAR_STATS, tid_d=cfg.tensor_ids),
        Command(int(Op.ADD), **(ok | {"accumulate": Accumulate.START})),  # BAD_OPCODE: MATMUL only
        # BAD_SHAPE: one more output beat than the accumulator memory holds
        Command(int(Op.MATMUL), **(ok | {"n": cfg.lanes * 4, "m": cfg.acc_beats + 1,
                                         "accumulate": Accumulate.FINISH})),
    ]


def split_matmul(rng: np.random.Generator, cfg: CoreConfig, prog: Program, base_tid: int, width: Width,
                 chunks: int, rounding: RoundingMode = RoundingMode.STOCHASTIC,
                 shape: tuple[int, int, int] | None = None) -> tuple[DfpTensor, DfpTensor, int]:
    """Append a MATMUL whose K is cut into ``chunks`` random pieces (START, CONTINUE..., FINISH),
    each piece's operands LOADed over the previous ones, and a STORE of the result.

    Returns the whole operands and the result's address, for comparing with the unsplit product.
    """
    ta, tb, td = base_tid, base_tid + 1, base_tid + 2
    v = cfg.values_per_beat(width)
    if shape is None:
        n = int(rng.choice([1, v - 1 if v > 1 else 1, v + 1, int(rng.integers(1, 3 * v + 1))]))
        m = int(rng.integers(1, max(2, min(4, cfg.acc_beats // -(-n // v)) + 1)))
        k = int(rng.integers(chunks, 4 * chunks + 1))
    else:
        m, k, n = shape
    fa, fb = DfpFormat(width, int(rng.integers(0, 8))), DfpFormat(width, int(rng.integers(0, 8)))
    fd = DfpFormat(width, fa.frac + fb.frac - width.bits // 2 - int(rng.integers(0, 6)))
    prog.settings[ta] = TensorSetting(fa, RoundingMode.NEAREST_EVEN, False).encode()
    prog.settings[tb] = TensorSetting(fb, RoundingMode.NEAREST_EVEN, False).encode()
    prog.settings[td] = TensorSetting(fd, rounding, True).encode()
    a, b = _tensor(rng, m, k, fa), _tensor(rng, k, n, fb)
    cuts = [0, *sorted(rng.choice(np.arange(1, k), size=chunks - 1, replace=False).tolist()), k]
    sw = cfg.spad_words
    addr_d = 2 * sw
    for j, (k0, k1) in enumerate(zip(cuts, cuts[1:], strict=False)):
        for addr, t in ((0, DfpTensor(a.data[:, k0:k1], fa)), (sw, DfpTensor(b.data[k0:k1], fb))):
            words = CoreModel.pack_rows(t, cfg)
            assert len(words) <= sw, "split_matmul: a chunk does not fit one bank"
            prog.commands.append(Command(Ctl.LOAD, addr_d=addr, k=len(words)))
            prog.loads.append(words)
        mode = Accumulate.START if j == 0 else Accumulate.FINISH if k1 == k else Accumulate.CONTINUE
        prog.commands.append(Command(int(Op.MATMUL), tid_d=td, tid_a=ta, tid_b=tb, addr_a=0, addr_b=sw,
                                     addr_d=addr_d, m=m, n=n, k=k1 - k0, accumulate=mode))
    prog.commands.append(Command(Ctl.STORE, addr_a=addr_d, k=tensor_words(m, n, fd, cfg)))
    return a, b, addr_d

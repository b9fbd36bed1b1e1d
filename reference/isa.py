"""The DLU's command set: encoding, legality rules, error codes and cycle counts.

This is the programming model the hardware (``hw/``), the cycle simulator (``sim/``) and the
testbenches share. Data formats come from the settings register by tensor id, so a command
names tensor ids and scratchpad addresses, never formats.

Scratchpad
----------
``spad_banks`` banks of ``spad_words`` words; a word is ``lanes * 32`` bits and holds
``V = lanes * 32 / W`` values of width W, value ``j`` at bits ``[j*W, (j+1)*W)`` (two's
complement). A word address is ``bank * spad_words + offset``. A tensor ``[rows, cols]`` of
width W occupies ``rows * ceil(cols / V)`` consecutive words from its address, each row
starting on a new word (:func:`tensor_words`); it must not cross a bank boundary. The
operands and the destination of one compute command lie in pairwise different banks, so
one word of each can be accessed every cycle.

Command (8 x 32-bit words, written to the command FIFO)
-------------------------------------------------------
====  =========================================================================
word  fields
====  =========================================================================
0     [3:0] opcode, [4] b is one row broadcast over rows, [5] interrupt when done,
      [7:6] accumulate mode of MATMUL (:class:`Accumulate`; 0 for every other opcode),
      [15:8] alpha's point position (8-bit two's complement), [31:16] zero
1     [9:0] destination tensor id, [19:10] tensor id of a, [29:20] tensor id of b
2     word address of a
3     word address of b
4     word address of the destination
5     [15:0] M (rows of the result), [31:16] N (columns of the result)
6     K (inner dimension of MATMUL; word count of LOAD/STORE)
7     alpha (AXPY), a W-bit two's-complement integer sign-extended to 32 bits
====  =========================================================================

Shapes: MATMUL a[M,K] x b[K,N] -> d[M,N]; elementwise ops a[M,N] (op) b[M,N] or b[1,N]
(broadcast flag) -> d[M,N]; AXPY d = alpha * a + b; RELU, CONVERT d = f(a);
RELU_BACKWARD d = a where b > 0 (a is the error, b the forward input).
LOAD writes the next K words of the data stream into the scratchpad from ``addr_d``;
STORE sends K words from ``addr_a``. POLICY_UPDATE applies the point-position policy to
every auto-update tensor id with statistics and clears those entries; CLEAR_STATS clears
tensor id ``tid_d`` (or all, when the broadcast flag is set).

Accumulation across commands
----------------------------
A MATMUL can start, continue or finish a sum whose partial values stay on chip at full
accumulator width (``acc_width(W_op)``: 32/48/80 bits), in the accumulator memory of
``cfg.acc_beats`` output beats (:class:`Accumulate`, word 0 bits [7:6]):

- bit 6 (``IN``): each output beat starts from the accumulator memory's entry of its beat index
  (``m * ceil(N / V) + n // V``, counted from 0 in each command) instead of from 0;
- bit 7 (``OUT``): the sum is not finished: each beat's full-width values are written to its entry
  of the accumulator memory, and nothing else happens: no result is written to the scratchpad, no
  statistics are formed, the database is not updated, the stochastic-rounding generators do not
  step. Rounding, statistics and the database update happen once, at the finishing command
  (``FINISH``: ``IN`` without ``OUT``), exactly as for the unsplit product.

Integer sums are associative, so ``START, CONTINUE..., FINISH`` over K chunks ``a[:, Kj] x b[Kj, :]``
gives the unsplit product's result, statistics and generator states bit for bit
(:func:`reference.ops.matmul` with ``acc``). The sum wraps modulo ``2**acc_width(W_op)``, as the
hardware's adders do; that never happens while the total K of the sum is at most
:data:`ACC_MAX_K` (each K chunk <= ``MAX_K`` as for every MATMUL). The memory keeps raw bits: the
continuing commands must have the starting command's M, N and W_op and the same ``F_a + F_b``
(the program's duty; the core does not check it), and a sum is read by beat index only.
An accumulate mode other than 0 on another opcode is ``BAD_OPCODE``; an accumulating MATMUL
with more than ``cfg.acc_beats`` output beats is ``BAD_SHAPE``. Timing is that of every MATMUL.

All compute operands and the result must have the same width: a width change is a
CONVERT, whose ``W_op`` is the wider of its two formats.

Supported widths
----------------
A core supports the widths of ``CoreConfig.widths`` only. A host write of a settings word whose
width the core does not support is illegal like one with width code 3: the entry keeps its old
contents and the status register records ``BAD_SETTING`` (:func:`decode_setting`). A compute
command naming a tensor id whose setting has an unsupported width is rejected with
``BAD_SETTING`` too, at the point where a missing setting would be (:func:`check_command`):
the hardware never holds such a setting, so to it the id simply has no (legal) setting.

LOAD timeout
------------
A legal LOAD whose data stream runs dry does not hold the core forever: when ``T`` consecutive
cycles pass in the LOAD's word phase without a word being accepted (``T`` is the host's
LOAD_TIMEOUT register, reset value :data:`LOAD_TIMEOUT_DEFAULT`, never 0), the LOAD ends in
that cycle with ``ErrorCode.LOAD_TIMEOUT`` (recorded like any error: only if none is pending).
The words accepted before it are in the scratchpad, the rest of its ``K`` words are unchanged;
there is no drain, and the core takes the next command from the FIFO in the following cycle.
It is busy for ``SETUP_CYCLES + accepted + stalled`` cycles, ``stalled`` (in PERF_STALL)
including the ``T`` cycles of the timeout: :func:`timed_out_load_cycles` is the count without
the stalled cycles, as :func:`cycles` is for a command that completes. The cycle simulator
(``sim/``) feeds every LOAD from its trace without gaps, so its LOADs never time out. Words the stream
delivers after the timeout are taken by the next LOAD: the host's recovery is to stop its
stream source, then clear the error (CONTROL.clear_error) or soft-reset.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .config import CoreConfig
from .formats import ACC_GUARD_BITS, FRAC_MAX, FRAC_MIN, MAX_K, DfpFormat, TensorSetting, Width
from .latency import COMPUTE_UNIT_LATENCY, COMPUTE_UNIT_STATS_LATENCY, OPERAND_READ_LATENCY
from .ops import Op

COMMAND_WORDS = 8
MAX_DIM = (1 << 16) - 1
#: Largest total K of a sum across commands that cannot wrap the accumulator: every product of
#: two W-bit values has magnitude at most 2**(2W - 2), and 2**(ACC_GUARD_BITS + 1) - 1 of them
#: stay below 2**(acc_width(W) - 1).
ACC_MAX_K = (1 << (ACC_GUARD_BITS + 1)) - 1


class Accumulate(enum.IntEnum):
    """Accumulate mode of a MATMUL (command word 0, bits [7:6]): bit 0 ``IN``, bit 1 ``OUT``."""

    SINGLE = 0  #: a whole product: sum from 0, convert
    FINISH = 1  #: sum from the accumulator memory, convert (statistics, database, rounding)
    START = 2  #: sum from 0, keep the partial values in the accumulator memory
    CONTINUE = 3  #: sum from the accumulator memory, keep the partial values there

    @property
    def acc_in(self) -> bool:
        return bool(self & 1)

    @property
    def acc_out(self) -> bool:
        return bool(self & 2)


class Ctl(enum.IntEnum):
    """Non-compute opcodes; compute opcodes are :class:`reference.ops.Op` (0-7)."""

    POLICY_UPDATE = 8
    CLEAR_STATS = 9
    LOAD = 10
    STORE = 11


class ErrorCode(enum.IntEnum):
    """Value of the status register's error field after an illegal command (0: none)."""

    NONE = 0
    BAD_OPCODE = 1
    BAD_TENSOR_ID = 2
    BAD_SHAPE = 3
    ADDRESS_RANGE = 4
    BANK_CONFLICT = 5
    WIDTH_MISMATCH = 6
    BAD_ALPHA = 7
    BAD_SETTING = 8
    LOAD_TIMEOUT = 9


#: Default of the LOAD_TIMEOUT register: a LOAD that waits this many consecutive cycles for its
#: next stream word ends with ``ErrorCode.LOAD_TIMEOUT`` (see "LOAD timeout" above).
LOAD_TIMEOUT_DEFAULT = 1 << 16
#: Width of the LOAD_TIMEOUT register (a write of 0 is rejected: the bound always exists).
LOAD_TIMEOUT_BITS = 32


class IllegalCommand(ValueError):
    """An illegal command: the core sets ``code`` in its status register and skips the command."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


@dataclass(frozen=True)
class Command:
    opcode: int
    tid_d: int = 0
    tid_a: int = 0
    tid_b: int = 0
    addr_a: int = 0
    addr_b: int = 0
    addr_d: int = 0
    m: int = 1
    n: int = 1
    k: int = 1
    alpha: int = 0
    alpha_frac: int = 0
    broadcast_b: bool = False
    irq: bool = False
    accumulate: Accumulate = Accumulate.SINGLE

    def encode(self) -> list[int]:
        for name, v, bits in (("tid_d", self.tid_d, 10), ("tid_a", self.tid_a, 10), ("tid_b", self.tid_b, 10),
                              ("m", self.m, 16), ("n", self.n, 16), ("opcode", self.opcode, 4),
                              ("accumulate", self.accumulate, 2)):
            if not 0 <= v < (1 << bits):
                raise ValueError(f"command: {name}={v} does not fit {bits} bits")
        if not -128 <= self.alpha_frac <= 127:
            raise ValueError(f"command: alpha_frac={self.alpha_frac} does not fit 8 bits")
        return [
            self.opcode | (int(self.broadcast_b) << 4) | (int(self.irq) << 5) | (int(self.accumulate) << 6)
            | ((self.alpha_frac & 0xFF) << 8),
            self.tid_d | (self.tid_a << 10) | (self.tid_b << 20),
            self.addr_a & 0xFFFFFFFF,
            self.addr_b & 0xFFFFFFFF,
            self.addr_d & 0xFFFFFFFF,
            self.m | (self.n << 16),
            self.k & 0xFFFFFFFF,
            self.alpha & 0xFFFFFFFF,
        ]

    @classmethod
    def decode(cls, words: list[int]) -> Command:
        if len(words) != COMMAND_WORDS:
            raise ValueError(f"command: expected {COMMAND_WORDS} words, got {len(words)}")
        w0, w1 = words[0], words[1]
        af = (w0 >> 8) & 0xFF
        return cls(
            opcode=w0 & 0xF, broadcast_b=bool(w0 >> 4 & 1), irq=bool(w0 >> 5 & 1),
            accumulate=Accumulate(w0 >> 6 & 3),
            alpha_frac=af - 256 if af & 0x80 else af,
            tid_d=w1 & 0x3FF, tid_a=(w1 >> 10) & 0x3FF, tid_b=(w1 >> 20) & 0x3FF,
            addr_a=words[2], addr_b=words[3], addr_d=words[4],
            m=words[5] & 0xFFFF, n=words[5] >> 16, k=words[6], alpha=_s32(words[7]),
        )


def tensor_words(rows: int, cols: int, fmt: DfpFormat, cfg: CoreConfig) -> int:
    """Scratchpad words a [rows, cols] tensor occupies (each row starts on a new word)."""
    v = cfg.values_per_beat(fmt.width)
    return rows * -(-cols // v)


def operand_shapes(cmd: Command) -> dict[str, tuple[int, int]]:
    """Shapes of the tensors a command reads ('a', 'b') and writes ('d')."""
    op = cmd.opcode
    if op == Op.MATMUL:
        return {"a": (cmd.m, cmd.k), "b": (cmd.k, cmd.n), "d": (cmd.m, cmd.n)}
    if op in (Op.ADD, Op.SUB, Op.MUL, Op.AXPY, Op.RELU_BACKWARD):
        return {"a": (cmd.m, cmd.n), "b": (1 if cmd.broadcast_b else cmd.m, cmd.n), "d": (cmd.m, cmd.n)}
    if op in (Op.RELU, Op.CONVERT):
        return {"a": (cmd.m, cmd.n), "d": (cmd.m, cmd.n)}
    return {}


def check_setting(setting: TensorSetting, cfg: CoreConfig) -> None:
    """Raise :class:`IllegalCommand` (``BAD_SETTING``) if ``cfg`` does not support ``setting``'s width."""
    if not cfg.supports(setting.fmt.width):
        raise IllegalCommand(ErrorCode.BAD_SETTING,
                             f"{setting.fmt.bits}-bit data is not supported (widths {list(cfg.widths)})")


def decode_setting(word: int, cfg: CoreConfig) -> TensorSetting:
    """A host write of settings-register ``word`` to a core of ``cfg``: the entry it stores.

    Raises :class:`IllegalCommand` (``BAD_SETTING``) for a word :meth:`TensorSetting.decode`
    rejects or whose width ``cfg`` does not support; the core then changes no entry.
    """
    try:
        setting = TensorSetting.decode(word)
    except ValueError as exc:
        raise IllegalCommand(ErrorCode.BAD_SETTING, str(exc)) from exc
    check_setting(setting, cfg)
    return setting


_OPCODES = frozenset(Op) | frozenset(Ctl)
_COMPUTE_OPCODES = frozenset(Op)


def check_command(cmd: Command, settings: dict[int, TensorSetting], cfg: CoreConfig) -> None:
    """Raise :class:`IllegalCommand` for a command the core must reject; checks in this order."""
    op = cmd.opcode
    if op not in _OPCODES:
        raise IllegalCommand(ErrorCode.BAD_OPCODE, f"opcode {op} is not defined")
    if cmd.accumulate and op != Op.MATMUL:
        raise IllegalCommand(ErrorCode.BAD_OPCODE, f"accumulate mode {int(cmd.accumulate)} on opcode {op}")
    if op == Ctl.POLICY_UPDATE:
        return
    if op == Ctl.CLEAR_STATS:
        if not cmd.broadcast_b and cmd.tid_d >= cfg.tensor_ids:
            raise IllegalCommand(ErrorCode.BAD_TENSOR_ID, f"tid_d={cmd.tid_d} >= {cfg.tensor_ids}")
        return
    total = cfg.spad_banks * cfg.spad_words
    if op in (Ctl.LOAD, Ctl.STORE):
        addr = cmd.addr_d if op == Ctl.LOAD else cmd.addr_a
        if cmd.k < 1 or addr >= total or addr + cmd.k > total:
            raise IllegalCommand(ErrorCode.ADDRESS_RANGE, f"{cmd.k} words at {addr} exceed {total} words")
        return
    shapes = operand_shapes(cmd)
    used = {"a": cmd.tid_a, "d": cmd.tid_d} | ({"b": cmd.tid_b} if "b" in shapes else {})
    for role, tid in used.items():
        if tid >= cfg.tensor_ids:
            raise IllegalCommand(ErrorCode.BAD_TENSOR_ID, f"tid_{role}={tid} >= {cfg.tensor_ids}")
        if tid not in settings:
            raise IllegalCommand(ErrorCode.BAD_SETTING, f"tid_{role}={tid} has no setting")
        if not cfg.supports(settings[tid].fmt.width):
            raise IllegalCommand(ErrorCode.BAD_SETTING, f"tid_{role}={tid}: {settings[tid].fmt.bits}-bit data "
                                 f"is not supported (widths {list(cfg.widths)})")
    if cmd.m < 1 or cmd.n < 1 or (op == Op.MATMUL and not 1 <= cmd.k <= MAX_K):
        raise IllegalCommand(ErrorCode.BAD_SHAPE, f"M={cmd.m} N={cmd.n} K={cmd.k}")
    fmts = {role: settings[tid].fmt for role, tid in used.items()}
    if cmd.accumulate and cmd.m * -(-cmd.n // cfg.values_per_beat(max(f.width for f in fmts.values()))) \
            > cfg.acc_beats:
        raise IllegalCommand(ErrorCode.BAD_SHAPE, f"accumulating M={cmd.m} N={cmd.n}: more output beats than "
                             f"the accumulator memory's {cfg.acc_beats}")
    if op != Op.CONVERT and len({f.width for f in fmts.values()}) != 1:
        widths = {r: f.bits for r, f in fmts.items()}
        raise IllegalCommand(ErrorCode.WIDTH_MISMATCH, f"operand widths differ: {widths}")
    banks = {}
    for role, (rows, cols) in shapes.items():
        addr = {"a": cmd.addr_a, "b": cmd.addr_b, "d": cmd.addr_d}[role]
        words = tensor_words(rows, cols, fmts[role], cfg)
        bank = addr // cfg.spad_words
        if addr >= total or (addr % cfg.spad_words) + words > cfg.spad_words:
            raise IllegalCommand(ErrorCode.ADDRESS_RANGE,
                                 f"{role}: {words} words at {addr} leave bank {bank} ({cfg.spad_words} words)")
        banks[role] = bank
    if len(set(banks.values())) != len(banks):
        raise IllegalCommand(ErrorCode.BANK_CONFLICT, f"operands share a bank: {banks}")
    if op == Op.AXPY:
        w = fmts["a"].width
        lim = 1 << (w.bits - 1)
        if not -lim <= cmd.alpha < lim or not FRAC_MIN <= cmd.alpha_frac <= FRAC_MAX:
            raise IllegalCommand(ErrorCode.BAD_ALPHA, f"alpha={cmd.alpha} frac={cmd.alpha_frac} for {w.bits} bits")


# ---------------------------------------------------------------------------------------
# Timing: the number of clock cycles from the cycle a command leaves the FIFO to the cycle
# the core is ready for the next one. The hardware must take exactly this many cycles; the
# cycle simulator advances by exactly this many. The constants describe the pipeline of
# hw/ and are changed here, and only here, when the pipeline changes.
# ---------------------------------------------------------------------------------------

#: Cycles to decode a command and read the settings of its tensor ids.
SETUP_CYCLES = 2
#: Cycles from the last operand read to the last result write and statistics update: the
#: operand read, the ComputeUnit's latency to the last result beat, and one cycle in which the
#: statistics (which include that beat by then) are committed (:mod:`reference.latency`).
DRAIN_CYCLES = OPERAND_READ_LATENCY + COMPUTE_UNIT_LATENCY + COMPUTE_UNIT_STATS_LATENCY
#: The policy controller's schedule per tensor id in POLICY_UPDATE (hw.settings.PolicyController):
#: read and latch the entry (2), sum the histogram one bin per cycle, multiply (1), scan the bins
#: one per cycle, write (1): ``POLICY_CYCLES_PER_BIN * hist_bins + POLICY_FIXED_CYCLES``.
POLICY_CYCLES_PER_BIN = 2
POLICY_FIXED_CYCLES = 4
#: Cycles to clear one database entry.
CLEAR_CYCLES_PER_TID = 1


def policy_cycles_per_tid(cfg: CoreConfig) -> int:
    """Cycles the policy controller spends per tensor id in POLICY_UPDATE."""
    return POLICY_CYCLES_PER_BIN * cfg.hist_bins + POLICY_FIXED_CYCLES


def settings_key(cmd: Command, settings: dict[int, TensorSetting]) -> tuple[Width | None, ...]:
    """What :func:`check_command` and :func:`cycles` read of the settings register for ``cmd``.

    Both depend on the settings only through the widths of the tensor ids the command uses
    (None for an id without a setting); point positions and rounding never change whether a
    command is legal or how long it takes. A caller may therefore reuse a command's check and
    cycles while this key is unchanged (the cycle simulator does; a test holds the property).
    """
    if cmd.opcode not in _COMPUTE_OPCODES:
        return ()
    key = []
    for tid in (cmd.tid_a, cmd.tid_b, cmd.tid_d):
        s = settings.get(tid)
        key.append(None if s is None else s.fmt.width)
    return tuple(key)


def op_width(cmd: Command, settings: dict[int, TensorSetting]):
    shapes = operand_shapes(cmd)
    tids = {"a": cmd.tid_a, "b": cmd.tid_b, "d": cmd.tid_d}
    return max(settings[tids[r]].fmt.width for r in shapes)


def beats(cmd: Command, settings: dict[int, TensorSetting], cfg: CoreConfig) -> int:
    """Output beats of a compute command: ``M * ceil(N / V)`` with ``V`` at ``W_op``."""
    v = cfg.values_per_beat(op_width(cmd, settings))
    return cmd.m * -(-cmd.n // v)


def cycles(cmd: Command, settings: dict[int, TensorSetting], cfg: CoreConfig) -> int:
    """Closed-form cycle count of a legal command (an illegal one takes SETUP_CYCLES)."""
    op = cmd.opcode
    if op == Ctl.POLICY_UPDATE:
        return SETUP_CYCLES + policy_cycles_per_tid(cfg) * cfg.tensor_ids
    if op == Ctl.CLEAR_STATS:
        return SETUP_CYCLES + CLEAR_CYCLES_PER_TID * (cfg.tensor_ids if cmd.broadcast_b else 1)
    if op in (Ctl.LOAD, Ctl.STORE):
        return SETUP_CYCLES + cmd.k + DRAIN_CYCLES
    body = beats(cmd, settings, cfg) * (cmd.k if op == Op.MATMUL else 1)
    return SETUP_CYCLES + body + DRAIN_CYCLES


def timed_out_load_cycles(accepted: int) -> int:
    """Cycles, stalled cycles excluded, of a LOAD that ended with ``LOAD_TIMEOUT`` after
    ``accepted`` words (see "LOAD timeout" in the module docstring)."""
    if accepted < 0:
        raise ValueError(f"accepted={accepted} is negative")
    return SETUP_CYCLES + accepted


def macs(cmd: Command) -> int:
    """Useful multiply-accumulates of a command (the performance counter's increment)."""
    if cmd.opcode == Op.MATMUL:
        return cmd.m * cmd.n * cmd.k
    if cmd.opcode in (Op.MUL, Op.AXPY):
        return cmd.m * cmd.n
    return 0

"""Cycle simulator: a training trace turned into DLU commands, timed, with data from ``reference/``.

:class:`CycleSim` replays a :class:`reference.trace.Trace`. Each compute record becomes one or
more :class:`reference.isa.Command` s placed in the scratchpad by a documented allocator, with
the LOAD and STORE commands that move tensors between host memory and the scratchpad; every
command is checked with :func:`reference.isa.check_command` and takes exactly
:func:`reference.isa.cycles`. Data, statistics, generator states, the settings register and the
distribution database are those of a :class:`reference.engine.Engine` executing the trace, and
:func:`reference.trace.replay_reference` checks them bit for bit against the recorded trace:
this module only adds time, traffic and counters.

Memory model (per traced iteration, see ``docs/simulator.md``)
---------------------------------------------------------------
- A *value* is one tensor content of one tensor id: every compute result and every host LOAD
  record is a new value. An operand equal (format, shape and integers) to a value already seen
  for its tensor id *is* that value; any other operand was made by the host (im2col, transpose,
  pooling and flatten are host data movement, see :mod:`reference.layers`) from the latest
  value of that id, which must then be in host memory: if only the scratchpad holds it, it is
  STOREd first.
- The iteration starts with an empty scratchpad; weights, velocities and host-made operands are
  in host memory and are LOADed on first use. A value stays resident until its last use; a
  result no later command of the iteration reads (weights, velocities, logits) is *live-out*
  and is STOREd at the end of the iteration.
- Allocation is first fit within a bank. The operands and the result of one command are put in
  pairwise different banks (:mod:`reference.isa`). When no bank has room, values are evicted
  from the bank that costs the fewest transferred words, furthest next use first; a dirty value
  still needed is STOREd before it is dropped.
- Tiling: a tensor larger than one bank is never resident. A command with such an operand or
  result is split into row tiles (rows of ``a`` and ``d``, and of ``b`` for a non-broadcast
  elementwise op); streamed operands are LOADed tile by tile into staging buffers and a
  streamed result is STOREd tile by tile when it is still needed. Row tiles are bit-exact: an
  output row depends only on the same input rows, beats are issued in row-major order in both
  cases (so stochastic rounding draws the same generator words), and the database adds the
  tiles' saturating counters to the same totals. MATMUL's ``b`` is never split (a K split
  would round partial sums): if ``b`` exceeds one bank the layer does not fit
  (:class:`DoesNotFit`).
- Host writes of the settings register are register writes, not commands: they take no cycles.
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from reference import isa
from reference.config import CoreConfig
from reference.engine import ARITY
from reference.formats import DfpFormat, DfpTensor, TensorSetting, Width, same_array
from reference.isa import Command, Ctl
from reference.ops import Op
from reference.trace import IterationTrace, LoadRecord, OpRecord, PolicyRecord, SettingRecord, Trace

from .alloc import BankAllocator

_COMPUTE = frozenset(int(o) for o in Op)


class NotExecutable(ValueError):
    """A trace command this core cannot execute as recorded."""


class DoesNotFit(NotExecutable):
    """A trace command that cannot be placed in this core's scratchpad, even tiled."""


class Pass(enum.Enum):
    """Which part of a training iteration a command belongs to."""

    FORWARD = "forward"
    BACKWARD = "backward"
    UPDATE = "update"
    CONTROL = "control"


@dataclass(frozen=True)
class SimCommand:
    """One command of the simulated stream, its time and its activity.

    Members
    -------
    cmd
        The :class:`reference.isa.Command`.
    cycles
        :func:`reference.isa.cycles` of the command.
    iteration, record
        Traced iteration number and index of the trace record that caused the command.
    layer, pass_
        Attribution (see :func:`attribute`).
    width
        ``W_op`` of a compute command, the width of the tensor moved by LOAD/STORE, None otherwise.
    compute_cycles
        Cycles producing output beats (``beats * K`` for MATMUL, ``beats`` otherwise; 0 for the rest).
    macs, adds, muls, values
        Multiply-accumulates (:func:`reference.isa.macs`), additions and multiplications done,
        and values analysed by the statistics block.
    spad_read_words, spad_write_words, bus_words
        Scratchpad words read and written, and words moved over the host bus.
    vid, row0, rows, col0, cols
        LOAD/STORE: the value moved (an index into :attr:`SimScheduleIteration.tensors`) and
        the rows of it (``row0 .. row0+rows``) and columns (``col0 .. col0+cols``; ``cols`` -1:
        all of them); ``vid`` is -1 for other commands.
    repeat
        How many identical commands this entry stands for (the network timing of
        :mod:`sim.tiling` merges them; ``cycles`` and every count are then their totals).
    """

    cmd: Command
    cycles: int
    iteration: int
    record: int
    layer: str
    pass_: Pass
    width: Width | None
    compute_cycles: int = 0
    macs: int = 0
    adds: int = 0
    muls: int = 0
    values: int = 0
    spad_read_words: int = 0
    spad_write_words: int = 0
    bus_words: int = 0
    vid: int = -1
    row0: int = 0
    rows: int = 0
    col0: int = 0
    cols: int = -1
    repeat: int = 1

    @property
    def kind(self) -> str:
        op = self.cmd.opcode
        return Op(op).name if op in _COMPUTE else Ctl(op).name


def _base_name(name: str) -> str:
    return name.split("@", 1)[0]


def attribute(op: Op, dst_name: str, src_names: list[str]) -> tuple[str, Pass]:
    """(layer, pass) of a compute record from its tensor names.

    Layer: RELU_BACKWARD belongs to the layer of its error operand (``relu3.out.err`` ->
    ``relu3``); any other command to the layer owning a ``.weight``/``.bias`` operand or result,
    else to its result's layer (the name's first dotted component; shadow suffixes ``@W``
    dropped). Pass: AXPY is the update; a result named ``*.err`` or ``*.grad`` is backward;
    everything else forward.
    """
    dst, srcs = _base_name(dst_name), [_base_name(s) for s in src_names]
    if op == Op.RELU_BACKWARD and srcs:
        layer = srcs[0].split(".", 1)[0]
    else:
        owner = next((n for n in [dst, *srcs] if ".weight" in n or ".bias" in n), dst)
        layer = owner.split(".", 1)[0]
    if op == Op.AXPY:
        return layer, Pass.UPDATE
    if dst.endswith(".err") or dst.endswith(".grad"):
        return layer, Pass.BACKWARD
    return layer, Pass.FORWARD


# ---------------------------------------------------------------------------------------
# Values and liveness of one iteration
# ---------------------------------------------------------------------------------------

_NEVER = math.inf


@dataclass(eq=False)
class _Value:
    vid: int
    tid: int
    shape: tuple[int, int]
    width: Width
    on_chip: bool          # produced by a compute command (else it starts in host memory)
    producer: int          # record index, -1 for host values
    uses: list[int] = field(default_factory=list)        # records reading it as an operand
    host_needs: list[int] = field(default_factory=list)  # records whose operand the host derives from it
    live_out: bool = False  # needed after the iteration (see _analyse)
    # scheduling state
    resident: bool = False
    dirty: bool = False     # the scratchpad holds the only copy
    data: DfpTensor | None = None  # the integers (a reference, for the RTL engine's LOAD payloads)


@dataclass(frozen=True)
class _OpPlan:
    record: int
    rec: OpRecord
    srcs: tuple[int, ...]                 # vids of the operands
    sources: tuple[int | None, ...]       # vid the host derived a host-made operand from
    dst: int


def _same(t: DfpTensor, u: DfpTensor) -> bool:
    return t is u or (same_array(t.data, u.data) and t.fmt == u.fmt)


def _analyse(it: IterationTrace) -> tuple[list[_Value], dict[int, _OpPlan]]:
    """Values of one iteration, which record reads or derives from which, in record order.

    A result is *live-out* (needed after the iteration) when it is the last value written to
    its tensor id and either nothing in the iteration reads it (logits) or the iteration reads
    that id before writing it (state carried between iterations: weights, velocities).
    """
    read_first: set[int] = set()
    written: set[int] = set()
    values: list[_Value] = []
    known: dict[int, list[tuple[int, DfpTensor]]] = {}   # tid -> (vid, tensor), oldest first
    latest: dict[int, int] = {}                          # tid -> vid last written (op result or host load)
    plans: dict[int, _OpPlan] = {}

    def new(tid: int, t: DfpTensor, on_chip: bool, producer: int) -> int:
        v = _Value(len(values), tid, t.shape, t.fmt.width, on_chip, producer, data=t)
        values.append(v)
        known.setdefault(tid, []).append((v.vid, t))
        return v.vid

    for k, rec in enumerate(it.records):
        if isinstance(rec, LoadRecord):
            latest[rec.dst] = new(rec.dst, rec.out, False, -1)
        elif isinstance(rec, OpRecord):
            srcs, sources = [], []
            for t, tid in zip(rec.srcs, rec.src_tids, strict=True):
                if tid not in written:
                    read_first.add(tid)
                vid = None
                for v, u in reversed(known.get(tid, ())):  # the newest value of the id first
                    if _same(t, u):
                        vid = v
                        break
                src = None
                if vid is None:
                    src = latest.get(tid)
                    if src is not None and not values[src].on_chip:
                        src = None  # derived from data the host already has
                    if src is not None:
                        values[src].host_needs.append(k)
                    vid = new(tid, t, False, -1)
                values[vid].uses.append(k)
                srcs.append(vid)
                sources.append(src)
            dst = new(rec.dst, rec.out, True, k)
            latest[rec.dst] = dst
            written.add(rec.dst)
            plans[k] = _OpPlan(k, rec, tuple(srcs), tuple(sources), dst)
    for tid, vid in latest.items():
        v = values[vid]
        if v.on_chip and (tid in read_first or not (v.uses or v.host_needs)):
            v.live_out = True
    return values, plans


# ---------------------------------------------------------------------------------------
# Scheduler: commands, addresses and transfers of one iteration
# ---------------------------------------------------------------------------------------


def activity(cmd: Command, cyc: int, settings: dict[int, TensorSetting], cfg: CoreConfig) -> dict[str, int]:
    """The :class:`SimCommand` counters of a legal compute command taking ``cyc`` cycles."""
    op = Op(cmd.opcode)
    shapes = isa.operand_shapes(cmd)
    tids = {"a": cmd.tid_a, "b": cmd.tid_b, "d": cmd.tid_d}
    fmts = {r: settings[tids[r]].fmt for r in shapes}
    beats = isa.beats(cmd, settings, cfg)
    mn = cmd.m * cmd.n
    words = {r: isa.tensor_words(*shapes[r], fmts[r], cfg) for r in shapes}
    body = cyc - isa.SETUP_CYCLES - isa.DRAIN_CYCLES
    if op == Op.MATMUL:
        v = cfg.values_per_beat(isa.op_width(cmd, settings))
        reads = beats * cmd.k + beats * -(-cmd.k // v)
        adds = muls = isa.macs(cmd)
    else:
        reads = words["a"] + (0 if "b" not in shapes else (beats if cmd.broadcast_b else words["b"]))
        adds = 0 if op == Op.MUL else mn
        muls = mn if op in (Op.MUL, Op.AXPY) else 0
    # an unfinished sum (accumulate OUT) writes no result and analyses no value
    unfinished = op == Op.MATMUL and cmd.accumulate & 2
    return {"compute_cycles": body, "macs": isa.macs(cmd), "adds": adds, "muls": muls,
            "values": 0 if unfinished else mn, "spad_read_words": reads,
            "spad_write_words": 0 if unfinished else words["d"]}


class _Scheduler:
    """Turns one iteration's records into timed commands (no data is computed here)."""

    def __init__(self, cfg: CoreConfig, names: dict[int, str], width_override: Width | None,
                 iteration: int, it: IterationTrace,
                 analysed: tuple[list[_Value], dict[int, _OpPlan]] | None = None) -> None:
        self.cfg, self.names, self.wo, self.iteration, self.it = cfg, names, width_override, iteration, it
        self.values, self.plans = analysed if analysed is not None else _analyse(it)
        self.alloc = BankAllocator(cfg)
        self.settings = {t: self._ov(s) for t, s in it.settings_at_start.items()}
        self.out: list[SimCommand] = []
        self.steps: list[int] = []  # record index at which each command is issued
        self._tmp = 0
        self.k = -1
        self.attr: tuple[str, Pass] = ("-", Pass.CONTROL)
        self._words: dict[int, int] = {}

    # -- helpers -------------------------------------------------------------------------
    def _ov(self, s: TensorSetting) -> TensorSetting:
        return s if self.wo is None else replace(s, fmt=DfpFormat(self.wo, s.fmt.frac))

    def _w(self, v: _Value) -> Width:
        return self.wo if self.wo is not None else v.width

    def _name(self, tid: int) -> str:
        return self.names.get(tid, f"tid{tid}")

    def wpr(self, v: _Value) -> int:
        """Words per row of a value."""
        return -(-v.shape[1] // self.cfg.values_per_beat(self._w(v)))

    def words(self, v: _Value) -> int:
        w = self._words.get(v.vid)
        if w is None:
            w = self._words[v.vid] = isa.tensor_words(v.shape[0], v.shape[1], DfpFormat(self._w(v), 0), self.cfg)
        return w

    def big(self, v: _Value) -> bool:
        return self.words(v) > self.cfg.spad_words

    def next_use(self, v: _Value, k: int) -> float:
        i = bisect.bisect_right(v.uses, k)
        j = bisect.bisect_right(v.host_needs, k)
        a = v.uses[i] if i < len(v.uses) else _NEVER
        b = v.host_needs[j] if j < len(v.host_needs) and v.dirty else _NEVER
        return min(a, b)

    def needed_after(self, v: _Value, k: int) -> bool:
        """Someone reads ``v`` after record k: a command, the host, or the next iteration."""
        return (bisect.bisect_right(v.uses, k) < len(v.uses)
                or bisect.bisect_right(v.host_needs, k) < len(v.host_needs) or v.live_out)

    # -- emission ------------------------------------------------------------------------
    def emit(self, cmd: Command, width: Width | None, attr: tuple[str, Pass] | None = None,
             record: int | None = None, moved: tuple[int, ...] = (-1, 0, 0)) -> None:
        try:
            isa.check_command(cmd, self.settings, self.cfg)
        except isa.IllegalCommand as exc:  # a scheduler bug, never the trace's fault
            raise AssertionError(f"sim: iteration {self.iteration} record {self.k}: generated an illegal "
                                 f"command {cmd}: {exc}") from exc
        cyc = isa.cycles(cmd, self.settings, self.cfg)
        layer, pass_ = attr or self.attr
        op = cmd.opcode
        extra: dict[str, int] = {}
        if op in (Ctl.LOAD, Ctl.STORE):
            extra = {"bus_words": cmd.k, ("spad_write_words" if op == Ctl.LOAD else "spad_read_words"): cmd.k}
        elif op in _COMPUTE:
            extra = self._activity(cmd, cyc)
        self.out.append(SimCommand(cmd, cyc, self.iteration, self.k if record is None else record, layer, pass_,
                                   width, **extra, vid=moved[0], row0=moved[1], rows=moved[2],
                                   col0=moved[3] if len(moved) > 3 else 0, cols=moved[4] if len(moved) > 3 else -1))
        self.steps.append(self.k)

    def _activity(self, cmd: Command, cyc: int) -> dict[str, int]:
        return activity(cmd, cyc, self.settings, self.cfg)

    def transfer(self, opcode: Ctl, v: _Value, addr: int, words: int, attr: tuple[str, Pass] | None = None,
                 record: int | None = None, row0: int = 0) -> None:
        """LOAD or STORE ``words`` words of ``v`` (its rows from ``row0`` on) at ``addr``."""
        if opcode == Ctl.LOAD:
            cmd = Command(Ctl.LOAD, tid_d=v.tid, addr_d=addr, k=words)
        else:
            cmd = Command(Ctl.STORE, tid_a=v.tid, addr_a=addr, k=words)
        self.emit(cmd, self._w(v), attr, record, (v.vid, row0, words // self.wpr(v)))

    # -- residency -----------------------------------------------------------------------
    def store(self, v: _Value) -> None:
        """Give the host a copy of resident value ``v``."""
        if v.resident and v.dirty:
            buf = self.alloc.buffers[v.vid]
            self.transfer(Ctl.STORE, v, buf.addr, buf.words)
            v.dirty = False

    def drop(self, v: _Value) -> None:
        if v.resident:
            self.alloc.free(v.vid)
            v.resident = False

    def evict(self, v: _Value) -> None:
        if v.dirty and self.needed_after(v, self.k - 1):
            self.store(v)
        self.drop(v)

    def place(self, owner: int, words: int, exclude: set[int], pinned: set[int]) -> int:
        """Allocate ``words`` words for ``owner`` in a bank outside ``exclude``; returns the address.

        Takes the bank with the largest free range that fits; when none fits, evicts from the
        bank whose evictions move the fewest words (furthest next use first).
        """
        cands = [b for b in range(self.cfg.spad_banks) if b not in exclude]
        fits = [b for b in cands if self.alloc.largest_free(b) >= words]
        if not fits:
            best = None
            for b in cands:
                victims = sorted((self.values[o] for o in self.alloc.owners(b) if o >= 0 and o not in pinned),
                                 key=lambda v: -self.next_use(v, self.k))
                removed: list[_Value] = []
                cost = 0
                for v in victims:
                    if self._largest_without(b, {u.vid for u in removed}) >= words:
                        break
                    removed.append(v)
                    later = self.next_use(v, self.k) != _NEVER
                    cost += self.words(v) * ((1 if v.dirty and self.needed_after(v, self.k - 1) else 0) + later)
                if self._largest_without(b, {u.vid for u in removed}) >= words and (best is None or cost < best[0]):
                    best = (cost, b, removed)
            if best is None:
                raise AssertionError(f"sim: no bank outside {sorted(exclude)} can hold {words} words")
            for v in best[2]:
                self.evict(v)
            fits = [best[1]]
        bank = max(fits, key=self.alloc.largest_free)
        buf = self.alloc.alloc(owner, words, bank)
        assert buf is not None
        return buf.addr

    def _largest_without(self, bank: int, removed: set[int]) -> int:
        pos, best = 0, 0
        for o in self.alloc.owners(bank):
            if o in removed:
                continue
            b = self.alloc.buffers[o]
            best = max(best, b.offset - pos)
            pos = b.offset + b.words
        return max(best, self.cfg.spad_words - pos)

    def temp(self, words: int, exclude: set[int], pinned: set[int]) -> tuple[int, int]:
        self._tmp -= 1
        return self._tmp, self.place(self._tmp, words, exclude, pinned)

    # -- one compute record --------------------------------------------------------------
    def op(self, k: int, plan: _OpPlan) -> None:
        rec, cfg = plan.rec, self.cfg
        op = rec.op
        names = [self._name(t) for t in rec.src_tids]
        self.attr = attribute(op, self._name(rec.dst), names)
        for i, (s, src) in enumerate(zip(plan.srcs, plan.sources, strict=True)):
            if src is not None:  # the host derives this operand: it needs the source first
                self.store(self.values[src])
            tid, reg = rec.src_tids[i], self.settings.get(rec.src_tids[i])
            if reg is None:
                raise NotExecutable(f"sim: iteration {self.iteration} record {k} ({op.name}): operand tid {tid} "
                                    f"has no setting (the core would reject the command: BAD_SETTING)")
            if reg.fmt.width != self._w(self.values[s]):
                raise NotExecutable(f"sim: iteration {self.iteration} record {k} ({op.name}): operand tid {tid} "
                                    f"holds {rec.srcs[i].fmt.bits}-bit data but its setting is {reg.fmt.bits}-bit")
        roles = ["a", "b"][: ARITY[op]]
        vals = {r: self.values[s] for r, s in zip(roles, plan.srcs, strict=True)}
        d = self.values[plan.dst]
        vals["d"] = d
        bcast = op != Op.MATMUL and "b" in vals and vals["b"].shape[0] == 1 and vals["a"].shape[0] > 1
        tiled = {"a", "d"} | ({"b"} if "b" in vals and op != Op.MATMUL and not bcast else set())
        where = f"iteration {self.iteration} record {k} ({op.name} -> {self._name(rec.dst)})"
        if op == Op.MATMUL and self.big(vals["b"]):
            self._matmul_ksplit(k, rec, vals, where)
            return
        for r, v in vals.items():
            w = self.words(v)
            if w > cfg.spad_words and r not in tiled:
                raise DoesNotFit(
                    f"sim: {where}: operand {r} {list(v.shape)} at {self._w(v).bits} bits needs {w} words in one "
                    f"bank, which has {cfg.spad_words}; a broadcast row is never split. Use a core config with "
                    f"spad_words >= {1 << (w - 1).bit_length()} (dlu replay --core FILE.toml, or --grow-spad).")
            if self.wpr(v) > cfg.spad_words:
                raise DoesNotFit(f"sim: {where}: one row of {r} needs {self.wpr(v)} words, a bank has "
                                 f"{cfg.spad_words}")
        m, n = d.shape
        kk = vals["a"].shape[1] if op == Op.MATMUL else 1
        setting = self.settings.get(rec.dst)
        if setting is None:
            raise NotExecutable(f"sim: {where}: destination tid {rec.dst} has no setting")
        alpha, alpha_frac = rec.alpha if rec.alpha is not None else (0, 0)
        pinned = {v.vid for v in vals.values()}
        banks: dict[str, int] = {}
        addr: dict[str, int] = {}
        stream = {r for r, v in vals.items() if self.big(v)}
        # 1. Resident whole operands keep their place (unless two share a bank, or one value fills two roles).
        seen: set[int] = set()
        for r in roles:
            v = vals[r]
            if r in stream or not v.resident:
                continue
            b = self.alloc.buffers[v.vid].bank
            if b in banks.values() or v.vid in seen:
                continue
            banks[r], addr[r] = b, self.alloc.buffers[v.vid].addr
            seen.add(v.vid)
        temps: list[int] = []
        # 2. Other whole operands: LOADed (a second role of the same value gets a temporary copy).
        for r in roles:
            v = vals[r]
            if r in stream or r in banks:
                continue
            w = self.words(v)
            if v.resident and v.vid in seen:
                # The same value in a second role: a temporary copy through host memory.
                self.store(v)
                owner, a = self.temp(w, set(banks.values()), pinned)
                temps.append(owner)
            else:
                if v.resident:  # in a bank another operand already uses: move it
                    self.evict(v)
                a = self.place(v.vid, w, set(banks.values()), pinned)
                v.resident, v.dirty = True, False
            self.transfer(Ctl.LOAD, v, a, w)
            banks[r], addr[r] = a // cfg.spad_words, a
            seen.add(v.vid)
        # 3. The result, if it fits: a whole buffer.
        if "d" not in stream:
            a = self.place(d.vid, self.words(d), set(banks.values()), pinned)
            d.resident, d.dirty = True, True
            banks["d"], addr["d"] = a // cfg.spad_words, a
        # 4. Staging buffers of R rows for streamed roles, then the commands.
        rows = m
        if stream:
            rows = min(m, *(cfg.spad_words // self.wpr(vals[r]) for r in stream))
            for r in sorted(stream):
                owner, a = self.temp(rows * self.wpr(vals[r]), set(banks.values()), pinned)
                temps.append(owner)
                banks[r], addr[r] = a // cfg.spad_words, a
        keep_d = self.needed_after(d, k)
        for r0 in range(0, m, rows):
            mt = min(rows, m - r0)

            def at(r: str, r0: int = r0) -> int:
                if r not in addr:
                    return 0
                if r in stream or r not in tiled:
                    return addr[r]
                return addr[r] + r0 * self.wpr(vals[r])

            for r in roles:
                if r in stream:
                    self.transfer(Ctl.LOAD, vals[r], addr[r], mt * self.wpr(vals[r]), row0=r0)
            cmd = Command(op, tid_d=rec.dst, tid_a=rec.src_tids[0], tid_b=rec.src_tids[1] if len(roles) > 1 else 0,
                          addr_a=at("a"), addr_b=at("b"), addr_d=at("d"), m=mt, n=n, k=kk, alpha=alpha,
                          alpha_frac=alpha_frac, broadcast_b=bcast)
            self.emit(cmd, max(self._w(v) for v in vals.values()))
            if "d" in stream and keep_d:
                self.transfer(Ctl.STORE, d, addr["d"], mt * self.wpr(d), row0=r0)
        for o in temps:
            self.alloc.free(o)
        # 5. Free what nobody needs any more.
        for v in {*vals.values()}:
            if v.resident and not self.needed_after(v, k):
                self.drop(v)

    def _matmul_ksplit(self, k: int, rec: OpRecord, vals: dict[str, _Value], where: str) -> None:
        """A MATMUL whose ``b`` exceeds one bank: K chunks summed in the accumulator memory.

        Rows of the result are cut into tiles of at most ``acc_beats // ceil(N / V)`` rows (one
        tile when the whole result fits the accumulator memory, so each chunk of ``b`` crosses the
        bus once); for each tile, K is cut into chunks of as many rows of ``b`` as one bank holds,
        each chunk's ``a[rows, k0:k1]`` and ``b[k0:k1, :]`` LOADed into staging buffers from host
        memory and multiplied with START, CONTINUE..., FINISH (:class:`reference.isa.Accumulate`).
        Bit-exact with the unsplit product (the golden model's property).
        """
        cfg = self.cfg
        a, b, d = vals["a"], vals["b"], vals["d"]
        m, n = d.shape
        kk = a.shape[1]
        wa, wd = self._w(a), self._w(d)
        w_op = max(wa, self._w(b), wd)
        cpr = -(-n // cfg.values_per_beat(w_op))
        wpr_b, va = self.wpr(b), cfg.values_per_beat(wa)
        if cpr > cfg.acc_beats or wpr_b > cfg.spad_words:
            raise DoesNotFit(f"sim: {where}: one row of the result ({cpr} beats) or of b ({wpr_b} words) exceeds "
                             f"the accumulator memory ({cfg.acc_beats} beats) or a bank ({cfg.spad_words} words)")
        setting = self.settings.get(rec.dst)
        if setting is None:
            raise NotExecutable(f"sim: {where}: destination tid {rec.dst} has no setting")
        kc = min(cfg.spad_words // wpr_b, isa.MAX_K)
        mt = min(m, cfg.acc_beats // cpr, cfg.spad_words // -(-kc // va))
        if mt < 1:  # a row of a's chunk would not fit: narrower chunks
            mt, kc = 1, min(kc, cfg.spad_words * va)
        for v in (a, b):  # the chunks are LOADed from host memory
            self.store(v)
        pinned = {v.vid for v in vals.values()}
        banks: set[int] = set()
        temps = []
        owner, addr_a = self.temp(mt * -(-kc // va), banks, pinned)
        temps.append(owner)
        banks.add(addr_a // cfg.spad_words)
        owner, addr_b = self.temp(kc * wpr_b, banks, pinned)
        temps.append(owner)
        banks.add(addr_b // cfg.spad_words)
        stream_d = self.big(d) or mt < m
        if stream_d:
            owner, addr_d = self.temp(mt * self.wpr(d), banks, pinned)
            temps.append(owner)
        else:
            if d.resident:
                self.drop(d)
            addr_d = self.place(d.vid, self.words(d), banks, pinned)
            d.resident, d.dirty = True, True
        keep_d = self.needed_after(d, k)
        chunks = [(k0, min(kk, k0 + kc)) for k0 in range(0, kk, kc)]
        wa_bits = DfpFormat(wa, 0)
        for r0 in range(0, m, mt):
            rows = min(mt, m - r0)
            for j, (k0, k1) in enumerate(chunks):
                words_a = isa.tensor_words(rows, k1 - k0, wa_bits, cfg)
                self.emit(Command(Ctl.LOAD, tid_d=a.tid, addr_d=addr_a, k=words_a), wa,
                          moved=(a.vid, r0, rows, k0, k1 - k0))
                self.emit(Command(Ctl.LOAD, tid_d=b.tid, addr_d=addr_b, k=(k1 - k0) * wpr_b), self._w(b),
                          moved=(b.vid, k0, k1 - k0))
                last = k1 == kk
                if len(chunks) == 1:
                    mode = isa.Accumulate.SINGLE
                elif j == 0:
                    mode = isa.Accumulate.START
                else:
                    mode = isa.Accumulate.FINISH if last else isa.Accumulate.CONTINUE
                self.emit(Command(Op.MATMUL, tid_d=rec.dst, tid_a=rec.src_tids[0], tid_b=rec.src_tids[1],
                                  addr_a=addr_a, addr_b=addr_b,
                                  addr_d=addr_d if stream_d else addr_d + r0 * self.wpr(d),
                                  m=rows, n=n, k=k1 - k0, accumulate=mode), w_op)
            if stream_d and keep_d:
                self.transfer(Ctl.STORE, d, addr_d, rows * self.wpr(d), row0=r0)
        for o in temps:
            self.alloc.free(o)
        for v in {*vals.values()}:
            if v.resident and not self.needed_after(v, k):
                self.drop(v)

    # -- the whole iteration -------------------------------------------------------------
    def run(self) -> SimScheduleIteration:
        for k, rec in enumerate(self.it.records):
            self.k = k
            if isinstance(rec, SettingRecord):
                self.settings[rec.tid] = self._ov(rec.setting)
            elif isinstance(rec, OpRecord):
                self.op(k, self.plans[k])
            elif isinstance(rec, PolicyRecord):
                self.flush()
                self.attr = ("-", Pass.CONTROL)
                self.emit(Command(Ctl.POLICY_UPDATE), None)
                for t, s in rec.changed.items():
                    self.settings[t] = self._ov(s)
            elif not isinstance(rec, LoadRecord):
                raise TypeError(f"sim: record {k}: unknown record {rec!r}")
        self.k = len(self.it.records)
        self.flush()
        self.alloc.check()
        return SimScheduleIteration(self.iteration, self.out, self.steps, frac_mismatches(self.it),
                                    [v.data for v in self.values])

    def flush(self) -> None:
        """End of the iteration's work: live-out results go to host memory, the scratchpad empties."""
        for v in self.values:
            if v.resident:
                if v.live_out and v.dirty:
                    rec = self.it.records[v.producer]
                    attr = attribute(rec.op, self._name(rec.dst), [self._name(t) for t in rec.src_tids])
                    buf = self.alloc.buffers[v.vid]
                    self.transfer(Ctl.STORE, v, buf.addr, buf.words, attr, v.producer)
                    v.dirty = False
                self.drop(v)


@dataclass(frozen=True)
class SimScheduleIteration:
    """The timed command stream of one traced iteration.

    ``steps[i]`` is the index of the record during whose processing command ``i`` is issued
    (``len(records)`` for the end-of-iteration stores); ``fmt_mismatches`` counts operands whose
    point position differs from their tensor id's setting register entry at that time;
    ``tensors[vid]`` is the data of value ``vid`` (what a LOAD or STORE with that ``vid`` moves).
    """

    iteration: int
    commands: list[SimCommand]
    steps: list[int]
    fmt_mismatches: int
    tensors: list[DfpTensor] = field(default_factory=list)


def schedule(trace: Trace, cfg: CoreConfig | None = None, width_override: Width | None = None,
             reuse: bool = True) -> list[SimScheduleIteration]:
    """Timed command streams of every traced iteration (no data computed).

    Training iterations are alike: with ``reuse`` an iteration whose structure (records, tensor
    ids, shapes, widths, value lifetimes: :func:`_structure`) equals an earlier one's takes that
    schedule with its own iteration number, AXPY scalars and data instead of being scheduled again.

    Parameters
    ----------
    trace
        The training trace.
    cfg
        Core to schedule on (default: the trace's). It may differ from the trace's only in the
        scratchpad (``spad_words``, ``spad_banks``), which does not change any data.
    width_override
        Schedule every tensor at this width instead (the same work on a datapath of that
        width, e.g. ``Width.W32`` for the fp32 counterpart).

    Raises
    ------
    DoesNotFit
        A command cannot be placed in the scratchpad, even tiled.
    ValueError
        ``cfg`` differs from the trace's in a field that changes the numerics.
    """
    cfg = check_compatible(trace.cfg, cfg)
    names = {int(k): str(v) for k, v in trace.meta.get("tensor_names", {}).items()}
    out = []
    cache: dict[tuple, SimScheduleIteration] = {}
    for it in trace.iterations:
        values, plans = _analyse(it)
        key = _structure(it, values, plans) if reuse else None
        hit = cache.get(key) if key is not None else None
        if hit is None:
            sch = _Scheduler(cfg, names, width_override, it.iteration, it, (values, plans)).run()
            if key is not None:
                cache[key] = sch
        else:
            sch = _rebase(hit, it, values)
        out.append(sch)
    return out


def _structure(it: IterationTrace, values: list[_Value], plans: dict[int, _OpPlan]) -> tuple:
    """Everything of an iteration the schedule depends on: the records' kinds, tensor ids, shapes
    and widths, which operand is which value, and the values' lifetimes; not the integers, the
    point positions or AXPY's scalar (which only fill command fields, see :func:`_rebase`)."""
    recs: list[tuple] = []
    for k, rec in enumerate(it.records):
        if isinstance(rec, OpRecord):
            p = plans[k]
            recs.append((int(rec.op), rec.dst, rec.src_tids, p.srcs, p.sources, p.dst))
        elif isinstance(rec, SettingRecord):
            recs.append(("S", rec.tid, rec.setting.fmt.width))
        elif isinstance(rec, PolicyRecord):
            recs.append(("P", tuple(sorted((t, s.fmt.width) for t, s in rec.changed.items()))))
        else:
            recs.append(("L", rec.dst))
    vals = tuple((v.tid, v.shape, v.width, v.on_chip, v.producer, tuple(v.uses), tuple(v.host_needs), v.live_out)
                 for v in values)
    return (tuple(recs), vals, tuple(sorted((t, s.fmt.width) for t, s in it.settings_at_start.items())))


def _rebase(sch: SimScheduleIteration, it: IterationTrace, values: list[_Value]) -> SimScheduleIteration:
    """The schedule ``sch`` of a structurally identical iteration, for ``it``: its number, its AXPY
    scalars, its data, and its :func:`frac_mismatches`."""
    cmds = []
    for c in sch.commands:
        cmd = c.cmd
        if cmd.opcode in _COMPUTE:
            alpha, alpha_frac = it.records[c.record].alpha or (0, 0)  # type: ignore[union-attr]
            if (cmd.alpha, cmd.alpha_frac) != (alpha, alpha_frac):
                cmd = replace(cmd, alpha=alpha, alpha_frac=alpha_frac)
        cmds.append(_with(c, cmd=cmd, iteration=it.iteration))
    return SimScheduleIteration(it.iteration, cmds, sch.steps, frac_mismatches(it), [v.data for v in values])


def _with(c: SimCommand, **changes: Any) -> SimCommand:
    """``dataclasses.replace`` of a frozen :class:`SimCommand` without re-running ``__init__``
    (a third of the rebasing time); the fields changed here need no validation."""
    new = object.__new__(SimCommand)
    object.__setattr__(new, "__dict__", {**c.__dict__, **changes})
    return new


def frac_mismatches(it: IterationTrace) -> int:
    """Operands of ``it`` whose point position differs from their id's setting when their command runs."""
    settings = dict(it.settings_at_start)
    n = 0
    for rec in it.records:
        if isinstance(rec, SettingRecord):
            settings[rec.tid] = rec.setting
        elif isinstance(rec, OpRecord):
            n += sum(settings[t].fmt.frac != u.fmt.frac for t, u in zip(rec.src_tids, rec.srcs, strict=True))
        elif isinstance(rec, PolicyRecord):
            settings.update(rec.changed)
    return n


def fitting_config(trace: Trace, cfg: CoreConfig | None = None, max_spad_words: int = 1 << 16) -> CoreConfig:
    """``cfg`` (default: the trace's) with ``spad_words`` doubled until every command fits.

    Raises :class:`DoesNotFit` (the last one) if ``max_spad_words`` is not enough.
    """
    cfg = check_compatible(trace.cfg, cfg)
    while True:
        try:
            schedule(trace, cfg)
            return cfg
        except DoesNotFit:
            if cfg.spad_words * 2 > max_spad_words:
                raise
            cfg = replace(cfg, spad_words=cfg.spad_words * 2)


#: Config fields that change data, statistics or generator use; a replay core must match the trace's.
NUMERIC_FIELDS = ("lanes", "hist_bins", "hist_min_exp", "tensor_ids", "counter_bits", "widths")


def check_compatible(trace_cfg: CoreConfig, cfg: CoreConfig | None) -> CoreConfig:
    """``cfg`` (default: ``trace_cfg``) if it computes the same numbers as ``trace_cfg``."""
    if cfg is None:
        return trace_cfg
    for f in NUMERIC_FIELDS:
        if getattr(cfg, f) != getattr(trace_cfg, f):
            raise ValueError(f"sim: core config {f}={getattr(cfg, f)} differs from the trace's "
                             f"{getattr(trace_cfg, f)}; only spad_words, spad_banks and acc_beats may differ")
    return cfg


# ---------------------------------------------------------------------------------------
# Counters and the simulator
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counters:
    """Performance counters of a command stream (all sums over its commands).

    ``cycles = compute_cycles + overhead_cycles + transfer_cycles``: compute cycles produce
    output beats; overhead cycles are the setup/drain of compute commands and all control
    commands; transfer cycles are LOAD/STORE, during which the datapath waits for data (the
    stall cycles of this in-order, unbuffered core).
    """

    commands: int = 0
    cycles: int = 0
    compute_cycles: int = 0
    overhead_cycles: int = 0
    transfer_cycles: int = 0
    macs: int = 0
    values_analysed: int = 0
    spad_read_words: int = 0
    spad_write_words: int = 0
    bus_words: int = 0

    @classmethod
    def of(cls, cmds: list[SimCommand]) -> Counters:
        transfer = sum(c.cycles for c in cmds if c.cmd.opcode in (Ctl.LOAD, Ctl.STORE))
        total = sum(c.cycles for c in cmds)
        compute = sum(c.compute_cycles for c in cmds)
        return cls(sum(c.repeat for c in cmds), total, compute, total - compute - transfer, transfer,
                   sum(c.macs for c in cmds), sum(c.values for c in cmds), sum(c.spad_read_words for c in cmds),
                   sum(c.spad_write_words for c in cmds), sum(c.bus_words for c in cmds))

    def utilization(self, peak_macs_per_cycle: int) -> float:
        """MACs done over the MACs the datapath could have done in ``cycles``."""
        return self.macs / (peak_macs_per_cycle * self.cycles) if self.cycles else 0.0


@dataclass
class SimResult:
    """What a replay produced: the timed stream, its counters and, if data ran, the final engines."""

    cfg: CoreConfig
    iterations: list[SimScheduleIteration]
    executed: bool
    wall_s: float = 0.0

    @property
    def commands(self) -> list[SimCommand]:
        return [c for it in self.iterations for c in it.commands]

    @property
    def counters(self) -> Counters:
        return Counters.of(self.commands)


class CycleSim:
    """The cycle simulator of one core.

    Parameters
    ----------
    cfg
        The core (default: each trace's own config). May differ from a trace's only in the
        scratchpad size (see :func:`check_compatible`).
    """

    def __init__(self, cfg: CoreConfig | None = None) -> None:
        self.cfg = cfg

    def run(self, trace: Trace, execute: bool = True,
            progress: Callable[[int], None] | None = None) -> SimResult:
        """Replay ``trace``: schedule every command, then execute the data record by record.

        With ``execute`` the data of every compute record is computed by a
        :class:`reference.engine.Engine` and :func:`reference.trace.replay_reference` checks
        outputs, statistics, generator states and policy results bit for bit against the
        trace; before each record's data runs, each of its commands is checked with
        :func:`reference.isa.check_command` against the *engine's* settings register and its
        cycles recomputed from it, so a settings divergence stops the replay. Without
        ``execute`` only the timing is produced.

        ``progress(cycles)`` is called after each record with the cycles just simulated.

        BLAS runs single-threaded, as in :func:`reference.train.train`: the matrices are small,
        and OpenBLAS's spinning worker threads made the executed replay 3.3x slower here.

        Raises
        ------
        DoesNotFit
            A command cannot be placed in the scratchpad.
        reference.trace.TraceError
            The data differs from the trace (with the iteration and record).
        """
        import time

        t0 = time.perf_counter()
        cfg = check_compatible(trace.cfg, self.cfg)
        its = schedule(trace, cfg)
        if execute:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1):
                _execute(trace, cfg, its, progress)
        elif progress is not None:
            progress(sum(c.cycles for it in its for c in it.commands))
        return SimResult(cfg, its, execute, time.perf_counter() - t0)


def _execute(trace: Trace, cfg: CoreConfig, its: list[SimScheduleIteration],
             progress: Callable[[int], None] | None) -> None:
    from reference.engine import Engine
    from reference.trace import replay_reference

    pending = iter(zip(its, trace.iterations, strict=True))
    checked: dict[tuple[int, tuple], int] = {}  # (id(cmd), isa.settings_key) -> cycles of a legal command

    class TimedEngine(Engine):
        """An engine that, before each command's data, issues that record's timed commands."""

        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self._it, it = next(pending)
            self._records = it.records
            self._rec = -1
            self._pos = 0

        def _advance(self, kind: type) -> None:
            self._rec += 1
            while not isinstance(self._records[self._rec], kind):
                self._rec += 1
            self._issue(self._rec)

        def _issue(self, upto: int) -> None:
            cyc = 0
            cmds, steps = self._it.commands, self._it.steps
            while self._pos < len(cmds) and steps[self._pos] <= upto:
                c = cmds[self._pos]
                key = (id(c.cmd), isa.settings_key(c.cmd, self.settings))  # the commands outlive the run
                got = checked.get(key)
                if got is None:
                    isa.check_command(c.cmd, self.settings, cfg)
                    got = checked[key] = isa.cycles(c.cmd, self.settings, cfg)
                if got != c.cycles:
                    raise AssertionError(f"sim: iteration {self._it.iteration} command {self._pos}: {got} cycles "
                                         f"from the engine's settings, {c.cycles} scheduled")
                cyc += got
                self._pos += 1
            if progress is not None and cyc:
                progress(cyc)

        def set_setting(self, tid, setting) -> None:
            super().set_setting(tid, setting)
            self._advance(SettingRecord)

        def run(self, op, dst, srcs, src_tids, alpha=None):
            self._advance(OpRecord)
            return super().run(op, dst, srcs, src_tids, alpha)

        def update_formats(self):
            self._advance(PolicyRecord)
            changed = super().update_formats()
            self._issue(len(self._records))
            return changed

    replay_reference(trace, engine_cls=TimedEngine)

"""Functional model of one DLU core executing commands: the state a program sees.

The :class:`Engine` holds exactly the core's architectural state that the numerics depend on:

- the static :class:`~reference.config.CoreConfig`;
- the settings register, ``settings[tid] -> TensorSetting`` (width, point position, rounding,
  auto-update flag);
- the distribution database (:class:`~reference.stats.Database`), accumulated per destination
  tensor id by every compute command;
- the state of the stochastic-rounding generators (:func:`reference.rng.seed_states`);
- the policy's THRESHOLD register (threshold, headroom and rise fields:
  :class:`~reference.stats.PolicyParams`).

Every DLU operation of training goes through :meth:`Engine.run`; :meth:`Engine.update_formats`
is the POLICY_UPDATE command. :meth:`Engine.load` models the host writing float data into the
scratchpad (the conversion is done on the host, rounding to nearest even, and does not touch
the database). An optional *recorder* (see :mod:`reference.trace`) is told about every command,
so a training run can be replayed later, command by command, on the cycle simulator or the RTL.

Accumulation across commands (:class:`reference.isa.Accumulate`): :meth:`Engine.run` with
``accumulate=START`` or ``CONTINUE`` adds a MATMUL's exact product to the accumulator memory
(:attr:`Engine.acc`) and returns None; ``FINISH`` adds the last product and converts the sum,
with statistics, database update and generator draws exactly as one unsplit MATMUL. Training
records whole products; the simulator's scheduler decides where a product is split, so a
recorder is never told about partial commands (:meth:`Engine.run` refuses them while one is set).

Legality: as in :mod:`reference.isa`, every operand of a compute command other than CONVERT
must have the destination's width (a width change is an explicit CONVERT).

This class is deliberately small: the cycle simulator subclasses or wraps it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Protocol

import numpy as np

from . import kernels, ops
from .config import CoreConfig
from .formats import FRAC_MIN, DfpTensor, RoundingMode, TensorSetting, quantize_float, setting_of
from .isa import MAX_DIM, Accumulate
from .ops import Op
from .rng import MASK32, seed_states
from .stats import DEFAULT_POLICY_WORD, POLICY_BITS, Database, OpStats, PolicyParams, next_frac, next_fracs

#: Number of source operands of each compute operation.
ARITY: dict[Op, int] = {
    Op.MATMUL: 2,
    Op.ADD: 2,
    Op.SUB: 2,
    Op.MUL: 2,
    Op.AXPY: 2,
    Op.RELU: 1,
    Op.RELU_BACKWARD: 2,
    Op.CONVERT: 1,
}


class Recorder(Protocol):
    """What the engine tells a trace recorder (see :class:`reference.trace.TraceRecorder`)."""

    def on_op(self, engine: Engine, op: Op, dst: int, setting: TensorSetting, srcs: list[DfpTensor],
              src_tids: list[int], alpha: tuple[int, int] | None, out: DfpTensor, stats: OpStats,
              rng_before: np.ndarray) -> None: ...

    def on_load(self, engine: Engine, dst: int, setting: TensorSetting, out: DfpTensor) -> None: ...

    def on_setting(self, engine: Engine, tid: int, setting: TensorSetting) -> None: ...

    def on_policy(self, engine: Engine, settings_after: dict[int, TensorSetting]) -> None: ...


class Engine:
    """The core's command-level state and its compute commands.

    Parameters
    ----------
    cfg
        Static core parameters.
    seed
        Value of the 32-bit seed register of the stochastic-rounding generators.
    threshold
        The THRESHOLD register word (:meth:`reference.stats.PolicyParams.encode`: the policy's
        threshold in units of 2**-16 of the non-zero values, its headroom and its rise limit;
        see :func:`reference.stats.next_frac`).

    Members
    -------
    settings
        The settings register: tensor id -> :class:`~reference.formats.TensorSetting`.
    db
        The distribution database.
    rng
        Generator states (uint32 array of ``cfg.rng_slots``).
    recorder
        ``None`` or an object receiving every command (see :class:`Recorder`).
    acc
        The accumulator memory: the exact partial sums of an unfinished MATMUL, or None.

    Raises
    ------
    ValueError
        ``seed`` does not fit 32 bits, or ``threshold`` is outside [0, 2**POLICY_BITS).
    """

    def __init__(self, cfg: CoreConfig, seed: int = 0, threshold: int = DEFAULT_POLICY_WORD) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MASK32:
            raise ValueError(f"engine: seed={seed!r} does not fit the 32-bit seed register")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) \
                or not 0 <= int(threshold) < (1 << POLICY_BITS):
            raise ValueError(f"engine: threshold={threshold!r} is outside [0, 2**{POLICY_BITS})")
        self.cfg = cfg
        self.seed = int(seed)
        self.threshold = int(threshold)
        self.policy = PolicyParams.decode(self.threshold)
        #: Host re-run of overflowing commands (:meth:`run`): None (off) or the overflow
        #: threshold in units of 2**-16 of the result's values.
        self.rerun_threshold: int | None = None
        #: Parallel training: sums a command's statistics over the ranks before the re-run decision
        #: (``reduce(dst, stats) -> stats``), so that every rank decides alike; None: local statistics.
        self.rerun_reduce: Callable[[int, OpStats], OpStats] | None = None
        #: Re-runs since the host last reset it: tensor id -> [re-runs, overflowed values and
        #: values of the discarded results] (the host subtracts them from the database's counts).
        self.reruns: dict[int, list[int]] = {}
        self.settings: dict[int, TensorSetting] = {}
        self.db = Database(cfg)
        self.rng: np.ndarray = seed_states(self.seed, cfg.rng_slots)
        self.recorder: Recorder | None = None
        self.acc: np.ndarray | None = None

    # -- settings register ---------------------------------------------------------------
    def _check_tid(self, tid: int, name: str = "tid") -> int:
        if type(tid) is int and 0 <= tid < self.cfg.tensor_ids:
            return tid
        if isinstance(tid, bool) or not isinstance(tid, (int, np.integer)) \
                or not 0 <= int(tid) < self.cfg.tensor_ids:
            raise ValueError(f"engine: {name}={tid!r} is outside [0, {self.cfg.tensor_ids})")
        return int(tid)

    def set_setting(self, tid: int, setting: TensorSetting) -> None:
        """Write one entry of the settings register."""
        tid = self._check_tid(tid)
        if not isinstance(setting, TensorSetting):
            raise TypeError(f"engine: setting for tid {tid} must be a TensorSetting, got {setting!r}")
        self.settings[tid] = setting
        if self.recorder is not None:
            self.recorder.on_setting(self, tid, setting)

    def setting(self, tid: int) -> TensorSetting:
        tid = self._check_tid(tid)
        try:
            return self.settings[tid]
        except KeyError:
            raise ValueError(f"engine: tensor id {tid} has no setting") from None

    # -- host data -----------------------------------------------------------------------
    def load(self, dst: int, x: np.ndarray) -> DfpTensor:
        """Host conversion of float data ``x`` into tensor id ``dst``'s format (nearest even).

        The host does the conversion; the database is not touched (host-loaded tensors have
        their point position chosen by the host, or keep it). Recorded as a LOAD.
        """
        setting = self.setting(dst)
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        fmt = setting.fmt
        q = kernels.quantize_nearest(x.reshape(-1), 2.0 ** fmt.frac, fmt.min_int, fmt.max_int)
        if q is None:  # a NaN or infinity: quantize_float names it
            q, _, _ = quantize_float(x, fmt, RoundingMode.NEAREST_EVEN, name=f"load tid {dst}")
        out = DfpTensor(q.reshape(x.shape), fmt)
        if self.recorder is not None:
            self.recorder.on_load(self, int(dst), setting, out)
        return out

    # -- compute commands ----------------------------------------------------------------
    def run(self, op: Op, dst: int, srcs: list[DfpTensor], src_tids: list[int],
            alpha: tuple[int, int] | None = None,
            accumulate: Accumulate = Accumulate.SINGLE) -> DfpTensor | None:
        """Execute one compute command; returns the destination tensor (None for an unfinished sum).

        With :attr:`rerun_threshold` set, the host also checks the command's statistics (which it
        reads from the database entry of ``dst``): when more than ``rerun_threshold / 2**16`` of
        the result's values overflowed and ``dst``'s setting has the auto flag, the host writes
        ``dst``'s setting with the point position :func:`reference.stats.next_frac` chooses from
        this command's histogram (the threshold and headroom of the THRESHOLD register), but at
        least one bit below the current one (values that overflowed only by rounding up lie in a
        bin that "fits"; at ``FRAC_MIN`` there is no re-run), and issues the same command again,
        once (:meth:`rerun_frac`). An operand of the command with ``dst``'s id (a velocity update
        reads the old velocity) is re-formatted by the host to the new setting first
        (:func:`reference.train.reformat`: nearest even, saturated), since the core reads every
        operand in the format of its id's setting. Both runs are commands of the core (a trace
        holds the command, the setting write and the command again); both add to the database
        entry; the second result is the one returned. :attr:`reruns` counts them per tensor id.

        Parameters
        ----------
        op
            The operation. Operand order follows :mod:`reference.ops` (AXPY: ``[x, y]`` for
            ``alpha * x + y``; RELU_BACKWARD: ``[dy, x]``).
        dst
            Destination tensor id: its setting gives the output format and rounding, and the
            op's statistics are accumulated into its database entry.
        srcs, src_tids
            Operand tensors and the tensor ids they belong to (recorded in traces).
        alpha
            ``(raw, frac)`` scalar for AXPY (see :func:`reference.ops.scalar_to_dfp`), else None.
        accumulate
            MATMUL only: start, continue or finish a sum across commands in :attr:`acc`
            (:class:`reference.isa.Accumulate`).

        Raises
        ------
        ValueError
            Wrong operand count, missing or surplus ``alpha``, unknown tensor id, operand widths
            that differ from the destination's (other than CONVERT), a dimension above
            :data:`reference.isa.MAX_DIM`, or any shape error of the op.
        """
        if type(op) is not Op:
            op = Op(op)
        n_tids = self.cfg.tensor_ids
        setting = self.settings.get(dst) if type(dst) is int and 0 <= dst < n_tids else None
        if setting is None:
            dst = self._check_tid(dst, "dst")
            setting = self.setting(dst)
        arity = ARITY[op]
        if len(srcs) != arity or len(src_tids) != arity:
            raise ValueError(f"engine: {op.name} takes {arity} operand(s), got {len(srcs)} "
                             f"tensors and {len(src_tids)} tensor ids")
        width = setting.fmt.width
        same_width = op is not Op.CONVERT
        for i, (t, tid) in enumerate(zip(srcs, src_tids, strict=True)):
            if type(tid) is not int or not 0 <= tid < n_tids:
                self._check_tid(tid, f"src_tids[{i}]")
            if type(t) is not DfpTensor and not isinstance(t, DfpTensor):
                raise TypeError(f"engine: {op.name} operand {i} must be a DfpTensor, got {type(t).__name__}")
            if same_width and t.fmt.width is not width:
                raise ValueError(f"engine: {op.name} operand {i} (tid {tid}) is {t.fmt.bits}-bit but the "
                                 f"destination tid {dst} is {setting.fmt.bits}-bit; convert it first")
            if max(t.data.shape) > MAX_DIM:
                raise ValueError(f"engine: {op.name} operand {i} has shape {t.shape}; the command's M, N "
                                 f"fields hold at most {MAX_DIM} (split the batch)")
        if (alpha is None) != (op != Op.AXPY):
            raise ValueError(f"engine: alpha={alpha!r}: AXPY needs (raw, frac), other ops take None")
        out, stats = self._command(op, dst, setting, srcs, src_tids, alpha, accumulate)
        # no re-run of a sum across commands: its accumulator is consumed by the finishing command
        if self.rerun_threshold is not None and out is not None and not accumulate:
            frac = self.rerun_frac(dst, setting, stats)
            if frac is not None:
                setting = setting_of(setting.fmt.width, frac, setting.rounding, setting.auto)
                self.set_setting(dst, setting)
                if dst in src_tids:
                    from .train import reformat

                    srcs = [reformat(t, setting.fmt) if tid == dst else t
                            for t, tid in zip(srcs, src_tids, strict=True)]
                out, stats = self._command(op, dst, setting, srcs, src_tids, alpha)
        return out

    def rerun_frac(self, dst: int, setting: TensorSetting, stats: OpStats) -> int | None:
        """The host's re-run rule (:meth:`run`) for a result of ``dst`` with statistics ``stats``: the
        point position to re-run with, or None (no re-run). Counts the re-run in :attr:`reruns`."""
        thr = self.rerun_threshold
        if thr is None or not setting.auto:
            return None
        if self.rerun_reduce is not None:
            stats = self.rerun_reduce(dst, stats)
        if stats.overflow * 65536 <= thr * stats.total:
            return None
        p = self.policy
        # at least one bit lower: values that only overflowed by rounding up sit in a bin that "fits"
        frac = min(next_frac(stats, setting.fmt.width, setting.fmt.frac, self.cfg, p.threshold, p.headroom),
                   setting.fmt.frac - 1)
        if frac < FRAC_MIN:
            return None
        r = self.reruns.setdefault(dst, [0, 0, 0])
        r[0] += 1
        r[1] += stats.overflow
        r[2] += stats.total
        return frac

    def _command(self, op: Op, dst: int, setting: TensorSetting, srcs: list[DfpTensor], src_tids: list[int],
                 alpha: tuple[int, int] | None,
                 accumulate: Accumulate = Accumulate.SINGLE) -> tuple[DfpTensor | None, OpStats | None]:
        """One checked compute command on the core: result and statistics (added to the database);
        (None, None) for a MATMUL that leaves its sum open."""
        fmt, rnd, cfg, rng = setting.fmt, setting.rounding, self.cfg, self.rng
        if accumulate:
            accumulate = Accumulate(accumulate)
            if op != Op.MATMUL:
                raise ValueError(f"engine: accumulate={accumulate.name} is for MATMUL only, not {op.name}")
            if self.recorder is not None:
                raise ValueError("engine: partial MATMULs are not traced; the simulator splits products")
            if accumulate.acc_in and self.acc is None:
                raise ValueError(f"engine: accumulate={accumulate.name} but no sum is open")
            acc_in = self.acc if accumulate.acc_in else None
            if accumulate.acc_out:
                self.acc = ops.matmul_sum(srcs[0], srcs[1], fmt, acc_in)
                return None, None
            res = ops.matmul(srcs[0], srcs[1], fmt, rnd, cfg, rng, acc=acc_in)
            self.acc = None
        elif op == Op.MATMUL:
            res = ops.matmul(srcs[0], srcs[1], fmt, rnd, cfg, rng)
        elif op == Op.AXPY:
            raw, frac = alpha  # type: ignore[misc]
            res = ops.axpy(int(raw), int(frac), srcs[0], srcs[1], fmt, rnd, cfg, rng)
        elif op == Op.ADD:
            res = ops.add(srcs[0], srcs[1], fmt, rnd, cfg, rng)
        elif op == Op.SUB:
            res = ops.sub(srcs[0], srcs[1], fmt, rnd, cfg, rng)
        elif op == Op.MUL:
            res = ops.mul(srcs[0], srcs[1], fmt, rnd, cfg, rng)
        elif op == Op.RELU:
            res = ops.relu(srcs[0], fmt, rnd, cfg, rng)
        elif op == Op.RELU_BACKWARD:
            res = ops.relu_backward(srcs[0], srcs[1], fmt, rnd, cfg, rng)
        else:
            res = ops.convert(srcs[0], fmt, rnd, cfg, rng)
        self.db.accumulate(dst, res.stats)
        rng_before = self.rng
        if res.rng is not rng:  # ops return the states they were given when no word was drawn
            self.rng = np.asarray(res.rng, dtype=np.uint32).copy()
        if self.recorder is not None:
            self.recorder.on_op(self, op, dst, setting, list(srcs), [int(t) for t in src_tids],
                                None if alpha is None else (int(alpha[0]), int(alpha[1])),
                                res.out, res.stats, rng_before)
        return res.out, res.stats

    def update_formats(self) -> dict[int, TensorSetting]:
        """The POLICY_UPDATE command; returns the settings it rewrote.

        For every tensor id whose setting has ``auto=True`` and that has a database entry, in
        increasing id order: the point position becomes :func:`reference.stats.next_frac` of
        the accumulated statistics with the THRESHOLD register's threshold, headroom and rise
        (width, rounding and flag unchanged) and the entry is cleared.
        (All ids are computed at once by :func:`reference.stats.next_fracs`, the same function.)
        """
        changed: dict[int, TensorSetting] = {}
        entries, settings = self.db.entries, self.settings
        tids = sorted(t for t in entries if t in settings and settings[t].auto)
        if tids:
            cur = [settings[t] for t in tids]
            p = self.policy
            fracs = next_fracs(np.stack([entries[t].hist for t in tids]), np.array([s.fmt.bits for s in cur]),
                               np.array([s.fmt.frac for s in cur]), self.cfg, p.threshold, p.headroom, p.rise)
            for tid, s, frac in zip(tids, cur, fracs.tolist(), strict=True):
                # an unchanged point position rewrites the same value: keep the (immutable) setting
                new = s if frac == s.fmt.frac else setting_of(s.fmt.width, frac, s.rounding, s.auto)
                settings[tid] = new
                del entries[tid]
                changed[tid] = new
        if self.recorder is not None:
            self.recorder.on_policy(self, changed)
        return changed

    # -- helpers -------------------------------------------------------------------------
    def fork(self) -> Engine:
        """A copy with the same settings and generator state, an empty database and no recorder.

        Used for evaluation passes whose statistics must not steer training.
        """
        e = Engine(self.cfg, self.seed, self.threshold)
        e.rerun_threshold = self.rerun_threshold
        e.settings = dict(self.settings)
        e.rng = self.rng.copy()
        return e

    def snapshot_db(self) -> dict[int, OpStats]:
        """A deep copy of the database entries."""
        return {tid: copy.deepcopy(s) for tid, s in self.db.entries.items()}

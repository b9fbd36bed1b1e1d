"""Data-parallel training of the golden model on MPI (mpi4py), bit-identical to one process.

Each of the N ranks takes an equal contiguous shard of every mini-batch (rank r: rows
``r*B/N .. (r+1)*B/N`` of the batch a single process would draw) and the weight gradients
are summed across ranks with non-blocking allreduces, one per layer, started from the
trainer's gradient-ready hook (:meth:`reference.models.Model.backward`). The next forward
pass waits per layer only: before layer l runs, its exchange is completed, its SGD update
applied and its parameters' point positions updated. Buffers larger than
``segment_elems`` values are exchanged in segments (one ``Iallreduce`` each).

The loop is single-process training's own (:func:`reference.train.run_epochs` and
:func:`reference.train.train_step`); :class:`ParallelHooks` supplies where a rank departs from
it (shard, per-layer waits, gathered logits, exchanges, summed statistics, step timings).

Why it is bit-identical (dfp modes, ``Exchange.EXACT``)
-------------------------------------------------------
- Every forward and backward operation other than the weight-gradient multiply works row
  by row (one row per sample, or per pixel of a sample); with nearest-even or floor rounding
  a row's result does not depend on the other rows, so each rank computes exactly its rows
  of the single-process tensors.
- A weight gradient ``X^T dY`` (and a bias gradient ``1^T dY``) sums over the batch rows.
  Each rank forms its exact integer accumulator (before the output conversion); the
  accumulators are summed exactly (int64; 32-bit operands as two int64 limbs of 40 bits)
  and every rank then runs the same output conversion on the same global accumulator.
- Statistics add up: the histogram and counters of a tensor over the batch are the sums
  of its shards' (as long as no counter saturates). Before the point-position policy runs,
  the database entries of the sharded tensors (activations, errors) are summed across
  ranks, so every rank picks the single-process point positions. Entries of parameter
  tensors (weights, gradients, velocities) are computed identically on every rank and are
  not summed.
- The host-chosen formats of the input and of the loss gradient are computed from the
  whole batch: every rank has the data, and the logits are all-gathered so every rank
  computes the single-process loss, its gradient (divided by the global batch) and its
  format, then loads its own rows.
- The stochastic-rounding generators step only on replicated operations (the weight
  update), in the single-process order.

Limits (checked, with an error): one width for every tensor class (no shadow tensors),
nearest-even or floor rounding for activations, errors and gradients, no traces. fp32
training sums float32 gradients in another order and is equal within float rounding only
(see ``docs/parallel.md``).

Reduced-format exchange (``Exchange.DFP16``, ``Exchange.DFP8``)
----------------------------------------------------------------
Each rank rounds its exact gradient accumulator to 16 or 8 bits with one point position per
tensor shared by all ranks: first the maximum most-significant-bit position of each tensor
is reduced across ranks (the statistic the no-overflow guarantee needs), then the shift is
chosen so that the sum of N values cannot overflow the wire width:
``shift = max(0, p_max + 2 + ceil(log2 N) - W)``, and each rounded value is clamped to
``+-((2**(W-1) - 1) // N)`` (which touches only values that rounded up to the bound, by one
LSB). The integer sums travel as ``int8``/``int16`` and every rank converts the sum to the
gradient's format (whose statistics are then those of the sum, the same on every rank). Not
bit-identical to one process; accuracy and bytes are reported. The headroom costs
``ceil(log2 N)`` bits: at 8 bits this is workable for a few ranks only (see
``docs/parallel.md``).

``Exchange.DFP8_RS`` keeps 8 bits per value at any N <= 256: values rounded to 8 bits at
``shift = max(0, p_max + 2 - 8)`` (clamped to +-127) are summed in 16-bit partial sums by a
reduce-scatter; each tensor's sum is re-rounded to 8 bits with a second shared shift (from the
MAX of the reduced chunks' MSB positions) and all-gathered as ``int8``. Its second half runs
when the layer is finished (before its forward pass), not in the background.

Every wait is bounded (``timeout_s``): a rank that dies or disagrees produces an error on the
others instead of a hang. Ranks first compare a hash of their whole configuration.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import ops
from .config import load_config
from .data import Dataset
from .engine import Engine
from .formats import MAX_K, DfpTensor, RoundingMode, Width, acc_width, round_shift, setting_of
from .layers import Backend, DfpBackend, FloatBackend, Layer, Param, Ref, TensorClass, sgd_step
from .models import Model
from .stats import OpStats, msb_position
from .train import (
    Hooks,
    Session,
    TensorLog,
    TrainConfig,
    evaluate_session,
    open_session,
    reformat_state,
    run_epochs,
)

#: Bits of the low limb when 32-bit accumulators (up to 80 bits) travel as two int64 values.
LIMB_BITS = 40


class ParallelError(RuntimeError):
    """Ranks disagree, a wait timed out, or the run cannot be distributed as configured."""


class Exchange(enum.Enum):
    """How weight gradients travel between ranks."""

    #: Exact integer accumulators (dfp) or float32 partial sums (fp32).
    EXACT = "exact"
    #: 16-bit integers with a shared point position per tensor.
    DFP16 = "dfp16"
    #: 8-bit integers with a shared point position per tensor.
    DFP8 = "dfp8"
    #: 8-bit values summed in 16-bit partial sums (reduce-scatter), the sum re-rounded to 8 bits
    #: with a new shared point position and all-gathered: 8 bits per value at any worker count.
    DFP8_RS = "dfp8-rs"

    @property
    def width(self) -> Width | None:
        return {"exact": None, "dfp16": Width.W16, "dfp8": Width.W8, "dfp8-rs": Width.W8}[self.value]


@dataclass(frozen=True)
class ParallelConfig:
    """How the ranks cooperate.

    Parameters
    ----------
    overlap
        Start each layer's allreduce in the gradient-ready hook and let the forward pass wait
        per layer (True), or exchange everything after back-propagation with blocking waits
        and update every layer before the next forward pass (False).
    exchange
        Gradient format on the wire.
    segment_elems
        Largest number of values per ``Iallreduce``; longer buffers are cut into segments.
    timeout_s
        Longest wait for any exchange, in seconds.
    """

    overlap: bool = True
    exchange: Exchange = Exchange.EXACT
    segment_elems: int = 1 << 16
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.exchange, Exchange):
            raise ValueError(f"parallel: exchange={self.exchange!r}: must be one of {[e.value for e in Exchange]}")
        if isinstance(self.segment_elems, bool) or not isinstance(self.segment_elems, int) or self.segment_elems < 1:
            raise ValueError(f"parallel: segment_elems={self.segment_elems!r}: must be an integer >= 1")
        if not self.timeout_s > 0:
            raise ValueError(f"parallel: timeout_s={self.timeout_s!r}: must be > 0")

    def to_dict(self) -> dict[str, Any]:
        return {"overlap": self.overlap, "exchange": self.exchange.value, "segment_elems": self.segment_elems,
                "timeout_s": self.timeout_s}


# ---------------------------------------------------------------------------------------
# Communication with bounded waits


class Comm:
    """An mpi4py communicator whose every wait is bounded by ``timeout_s``."""

    def __init__(self, comm: Any, timeout_s: float) -> None:
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.timeout_s = timeout_s
        self.wait_s = 0.0  # time spent blocked in waits
        self.grad_wait_s = 0.0  # of which in waits for gradient exchanges

    def wait(self, reqs: list, what: str, gradient: bool = False) -> None:
        """Complete ``reqs`` or raise :class:`ParallelError` after ``timeout_s``."""
        t0 = time.perf_counter()
        g0 = self.wait_s
        deadline = t0 + self.timeout_s
        while not self.MPI.Request.Testall(reqs):
            if time.perf_counter() > deadline:
                self.wait_s += time.perf_counter() - t0
                raise ParallelError(f"rank {self.rank}/{self.size}: {what} did not complete within "
                                    f"{self.timeout_s:g} s: another rank died, hangs or disagrees")
            time.sleep(2e-5)
        self.wait_s += time.perf_counter() - t0
        if gradient:
            self.grad_wait_s += self.wait_s - g0

    def progress(self, reqs: list) -> None:
        """Let MPI progress outstanding requests (MPICH progresses only inside MPI calls)."""
        if reqs:
            self.MPI.Request.Testall(reqs)

    def iallreduce(self, send: np.ndarray, recv: np.ndarray, op: Any) -> Any:
        return self.comm.Iallreduce(send, recv, op=op)

    def allreduce(self, x: np.ndarray, op: Any, what: str) -> np.ndarray:
        out = np.empty_like(x)
        self.wait([self.comm.Iallreduce(np.ascontiguousarray(x), out, op=op)], what)
        return out

    def allgather(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.ascontiguousarray(x)
        out = np.empty((self.size, *x.shape), dtype=x.dtype)
        self.wait([self.comm.Iallgather(x, out)], what)
        return out


def config_digest(cfg: TrainConfig, pcfg: ParallelConfig, data: Dataset, size: int) -> bytes:
    """32-byte hash of everything that must agree across ranks."""
    blob = json.dumps({"train": cfg.to_dict(), "parallel": pcfg.to_dict(), "ranks": size,
                       "data": [data.name, len(data.x_train), len(data.x_test), list(data.image_hwc),
                                hashlib.sha256(np.ascontiguousarray(data.x_train).tobytes()).hexdigest()]},
                      sort_keys=True).encode()
    return hashlib.sha256(blob).digest()


def check_agreement(comm: Comm, digest: bytes) -> None:
    """Raise on every rank, naming the ranks, if any rank's configuration digest differs."""
    mine = np.frombuffer(digest, dtype=np.uint8)
    allv = comm.allgather(mine, "configuration check")
    bad = [r for r in range(comm.size) if not np.array_equal(allv[r], allv[0])]
    if bad:
        raise ParallelError(f"rank {comm.rank}/{comm.size}: configuration differs between rank 0 and rank(s) "
                            f"{bad} (train/parallel options, data or worker count)")


# ---------------------------------------------------------------------------------------
# Gradient exchange


@dataclass
class _Local:
    """A rank's partial weight gradient, held until its exchange."""

    param: Param
    acc: np.ndarray  # exact integers (dfp) or float32 (fp32)
    f_acc: int = 0
    w_op: Width | None = None


@dataclass
class _Pending:
    reqs: list
    send: np.ndarray  # must stay alive until the requests complete
    recv: np.ndarray
    locals: list[_Local]
    shifts: list[int] = field(default_factory=list)
    segments: list[tuple[int, int]] = field(default_factory=list)  # DFP8_RS: [j0, j1) of each segment


class GradExchanger:
    """Holds partial gradients, runs the per-layer allreduces and applies the updates."""

    def __init__(self, comm: Comm, model: Model, cfg: TrainConfig, pcfg: ParallelConfig,
                 engine: Engine | None) -> None:
        self.comm, self.model, self.cfg, self.pcfg, self.engine = comm, model, cfg, pcfg, engine
        self.layers = list(model.layers)
        self.layer_index = {id(layer): i for i, layer in enumerate(self.layers)}
        self.by_gtid = {p.g_tid: p for p in model.params()}
        self.param_tids = {t for p in model.params() for t in (p.w_tid, p.g_tid, p.v_tid)}
        self.local: dict[int, _Local] = {}
        self.pending: dict[int, _Pending] = {}
        self.updated: set[int] = set()  # layers whose update for the current step is done
        self.lr = cfg.lr  # the current epoch's learning rate (set by the training loop)
        self.bytes_step = 0  # gradient (and, in reduced formats, exponent) bytes sent this step
        self.wire_step = 0.0  # bytes each rank sends on the wire this step with ring algorithms
        self.be: Backend | None = None
        self.log: TensorLog | None = None  # per-tensor statistics (set by ParallelHooks)
        self.it = 0  # the current iteration (set by ParallelHooks)
        self.started_it: dict[int, int] = {}  # layer -> iteration whose gradients it exchanges

    # -- partial gradients from the backend --------------------------------------------
    def hold_dfp(self, dst: int, a: DfpTensor, b: DfpTensor, be: DfpBackend) -> Ref:
        k = a.shape[1]
        if k * self.comm.size > MAX_K:
            raise ValueError(f"matmul: K={k * self.comm.size} exceeds {MAX_K}: the accumulator could overflow")
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul: inner dimensions differ: a is {a.shape}, b is {b.shape}")
        fmt = be.engine.setting(dst).fmt
        w_op = max(a.fmt.width, b.fmt.width, fmt.width)
        acc = ops._int_matmul(a.data, b.data, max(a.fmt.width, b.fmt.width).bits)
        p = self.by_gtid[dst]
        self.local[dst] = _Local(p, acc, a.fmt.frac + b.fmt.frac, w_op)
        return Ref(DfpTensor(np.zeros((a.shape[0], b.shape[1]), dtype=np.int64), fmt), dst)

    def hold_float(self, dst: int, local: np.ndarray) -> Ref:
        self.local[dst] = _Local(self.by_gtid[dst], np.ascontiguousarray(local, dtype=np.float32))
        return Ref(self.local[dst].acc, dst)

    # -- the hook ----------------------------------------------------------------------
    def on_grads_ready(self, layer: Layer) -> None:
        if self.pcfg.overlap:
            self.start(self.layer_index[id(layer)])
            self.comm.progress([r for p in self.pending.values() for r in p.reqs])

    def start(self, li: int) -> None:
        """Start the (segmented, non-blocking) allreduce of layer ``li``'s gradients."""
        self.started_it[li] = self.it
        MPI = self.comm.MPI
        locs = [self.local.pop(p.g_tid) for p in self.layers[li].params()]
        shifts: list[int] = []
        if self.engine is None:
            send = np.concatenate([lc.acc.ravel() for lc in locs])
            mpi_op = MPI.SUM
        elif self.pcfg.exchange is Exchange.EXACT:
            parts = []
            for lc in locs:
                if acc_width(lc.w_op) > 62:
                    a = lc.acc.astype(object) if lc.acc.dtype != object else lc.acc
                    hi = np.asarray(a >> LIMB_BITS, dtype=object).astype(np.int64)
                    lo = np.asarray(a & ((1 << LIMB_BITS) - 1), dtype=object).astype(np.int64)
                    parts += [hi.ravel(), lo.ravel()]
                else:
                    parts.append(lc.acc.astype(np.int64).ravel())
            send = np.concatenate(parts)
            mpi_op = MPI.SUM
        elif self.pcfg.exchange is Exchange.DFP8_RS:
            self._start_rs(li, locs)
            return
        else:
            wbits = self.pcfg.exchange.width.bits
            pmax = np.array([int(msb_position(lc.acc).max()) if lc.acc.size else -1 for lc in locs], dtype=np.int64)
            gmax = self.comm.allreduce(pmax, MPI.MAX, f"gradient statistics of layer {self.layers[li].name}")
            self._count(pmax.nbytes, "allreduce")
            head = math.ceil(math.log2(self.comm.size)) if self.comm.size > 1 else 0
            budget = ((1 << (wbits - 1)) - 1) // self.comm.size  # |q| <= budget: N of them cannot overflow
            parts = []
            for lc, p in zip(locs, gmax, strict=True):
                s = max(0, int(p) + 2 + head - wbits)
                shifts.append(s)
                q = round_shift(lc.acc, s, RoundingMode.NEAREST_EVEN, acc_width(lc.w_op)) if s else lc.acc
                parts.append(np.clip(np.asarray(q, dtype=np.int64), -budget, budget).ravel())
            send = np.concatenate(parts).astype(np.int8 if wbits == 8 else np.int16)
            mpi_op = MPI.SUM
        recv = np.empty_like(send)
        seg = self.pcfg.segment_elems
        reqs = [self.comm.iallreduce(send[i:i + seg], recv[i:i + seg], mpi_op) for i in range(0, send.size, seg)]
        self._count(send.nbytes, "allreduce")
        self.pending[li] = _Pending(reqs, send, recv, locs, shifts)

    def finish(self, li: int) -> None:
        """Complete layer ``li``'s exchange, set its gradients, update it, update its formats."""
        pend = self.pending.pop(li)
        self.comm.wait(pend.reqs, f"gradient allreduce of layer {self.layers[li].name}", gradient=True)
        if self.pcfg.exchange is Exchange.DFP8_RS and self.engine is not None:
            pend = self._finish_rs(li, pend)
        eng = self.engine
        off = 0
        for j, lc in enumerate(pend.locals):
            shape, n = lc.acc.shape, lc.acc.size
            p = lc.param
            if eng is None:
                p.grad = Ref(pend.recv[off:off + n].reshape(shape), p.g_tid)
                off += n
                continue
            setting = eng.setting(p.g_tid)
            abits = acc_width(lc.w_op)
            if self.pcfg.exchange is Exchange.DFP8_RS:
                acc = pend.recv[off:off + n].reshape(shape).astype(np.int64)
                off += n
                f_acc = lc.f_acc - pend.shifts[j]
            elif self.pcfg.exchange is Exchange.EXACT:
                if abits > 62:
                    hi = pend.recv[off:off + n].astype(object)
                    lo = pend.recv[off + n:off + 2 * n].astype(object)
                    acc = (hi * (1 << LIMB_BITS) + lo).reshape(shape)
                    off += 2 * n
                else:
                    acc = pend.recv[off:off + n].reshape(shape).astype(np.int64)
                    off += n
                f_acc = lc.f_acc
            else:
                acc = pend.recv[off:off + n].reshape(shape).astype(np.int64)
                off += n
                f_acc = lc.f_acc - pend.shifts[j]
            res = ops.convert_acc(acc, f_acc, abits, setting.fmt, setting.rounding, eng.cfg, eng.rng, lc.w_op)
            eng.db.accumulate(p.g_tid, res.stats)
            eng.rng = np.asarray(res.rng, dtype=np.uint32).copy()
            frac = eng.rerun_frac(p.g_tid, setting, res.stats)  # the host's re-run, as Engine.run does it
            if frac is not None:
                setting = setting_of(setting.fmt.width, frac, setting.rounding, setting.auto)
                eng.set_setting(p.g_tid, setting)
                res = ops.convert_acc(acc, f_acc, abits, setting.fmt, setting.rounding, eng.cfg, eng.rng, lc.w_op)
                eng.db.accumulate(p.g_tid, res.stats)
                eng.rng = np.asarray(res.rng, dtype=np.uint32).copy()
            p.grad = Ref(res.out, p.g_tid)
        self.update(li)

    def _shared_shifts(self, locs: list[_Local], li: int) -> np.ndarray:
        """Global maximum MSB position of each tensor (one small blocking MAX allreduce)."""
        pmax = np.array([int(msb_position(lc.acc).max()) if lc.acc.size else -1 for lc in locs], dtype=np.int64)
        self._count(pmax.nbytes, "allreduce")
        return self.comm.allreduce(pmax, self.comm.MPI.MAX, f"gradient statistics of layer {self.layers[li].name}")

    def _start_rs(self, li: int, locs: list[_Local]) -> None:
        """DFP8_RS phase 1: 8-bit values (no headroom) summed in int16 by reduce-scatter."""
        n_ranks = self.comm.size
        if n_ranks > 256:
            raise ParallelError(f"parallel: exchange dfp8-rs sums at most 256 ranks in 16 bits, got {n_ranks}")
        shifts = []
        parts = []
        for lc, p in zip(locs, self._shared_shifts(locs, li), strict=True):
            s = max(0, int(p) + 2 - 8)
            shifts.append(s)
            q = round_shift(lc.acc, s, RoundingMode.NEAREST_EVEN, acc_width(lc.w_op)) if s else lc.acc
            parts.append(np.clip(np.asarray(q, dtype=np.int64), -127, 127).ravel())
        flat = np.concatenate(parts)
        n_pad = -(-flat.size // n_ranks) * n_ranks
        send = np.zeros(n_pad, dtype=np.int16)
        send[:flat.size] = flat
        seg = max(n_ranks, self.pcfg.segment_elems // n_ranks * n_ranks)
        segments = [(j0, min(n_pad, j0 + seg)) for j0 in range(0, n_pad, seg)]
        recv = np.empty(n_pad // n_ranks, dtype=np.int16)  # this rank's chunks, segment after segment
        reqs, off = [], 0
        for j0, j1 in segments:
            c = (j1 - j0) // n_ranks
            reqs.append(self.comm.comm.Ireduce_scatter_block(send[j0:j1], recv[off:off + c], op=self.comm.MPI.SUM))
            off += c
        self._count(send.nbytes, "reduce_scatter")
        self.pending[li] = _Pending(reqs, send, recv, locs, shifts, segments)

    def _finish_rs(self, li: int, pend: _Pending) -> _Pending:
        """DFP8_RS phase 2: re-round each tensor's sum to 8 bits with a shared shift, all-gather."""
        n_ranks, rank = self.comm.size, self.comm.rank
        sizes = [lc.acc.size for lc in pend.locals]
        bounds = np.cumsum([0, *sizes])
        # global index of every element of this rank's chunks, and the tensor it belongs to
        idx = np.concatenate([np.arange(j0 + rank * ((j1 - j0) // n_ranks), j0 + (rank + 1) * ((j1 - j0) // n_ranks))
                              for j0, j1 in pend.segments])
        tid = np.searchsorted(bounds, idx, side="right") - 1  # == len(sizes) for padding
        chunk = pend.recv.astype(np.int64)
        msb = msb_position(chunk)
        pm = np.full(len(sizes), -1, dtype=np.int64)
        for t in range(len(sizes)):
            sel = (tid == t) & (chunk != 0)
            if sel.any():
                pm[t] = int(msb[sel].max())
        self._count(pm.nbytes, "allreduce")
        gm = self.comm.allreduce(pm, self.comm.MPI.MAX, f"sum statistics of layer {self.layers[li].name}")
        q2 = np.zeros_like(chunk)
        s2 = [max(0, int(p) + 2 - 8) for p in gm]
        for t, s in enumerate(s2):
            sel = tid == t
            v = chunk[sel]
            q2[sel] = np.clip(round_shift(v, s, RoundingMode.NEAREST_EVEN, 32) if s else v, -127, 127)
        mine = q2.astype(np.int8)
        full = np.empty(bounds[-1] + (-bounds[-1]) % n_ranks, dtype=np.int8)
        reqs, off = [], 0
        for j0, j1 in pend.segments:
            c = (j1 - j0) // n_ranks
            reqs.append(self.comm.comm.Iallgather(mine[off:off + c], full[j0:j1]))
            off += c
        self._count(mine.nbytes, "allgather")
        self.comm.wait(reqs, f"gradient allgather of layer {self.layers[li].name}", gradient=True)
        shifts = [a + b for a, b in zip(pend.shifts, s2, strict=True)]
        return _Pending([], pend.send, full[:bounds[-1]], pend.locals, shifts)

    def _count(self, nbytes: int, kind: str) -> None:
        """Account ``nbytes`` of payload; wire bytes per rank with ring algorithms."""
        n = self.comm.size
        self.bytes_step += nbytes
        self.wire_step += {"allreduce": 2 * (n - 1) / n * nbytes, "reduce_scatter": (n - 1) / n * nbytes,
                           "allgather": (n - 1) * nbytes}[kind]

    def update(self, li: int) -> None:
        layer = self.layers[li]
        cfg = self.cfg
        sgd_step(self.be, layer.params(), self.lr, cfg.momentum, cfg.weight_decay)
        if self.engine is not None:
            tids = {t for p in layer.params() for t in (p.w_tid, p.g_tid, p.v_tid)}
            if self.log is not None:
                self.log.record(self.engine, self.started_it.get(li, self.it), False, tids)
            _update_formats_of(self.engine, tids)
            reformat_state(layer.params(), self.engine)
        self.updated.add(li)

    def ready(self, li: int) -> None:
        """Called before layer ``li``'s forward pass: its parameters must be up to date."""
        if li in self.pending:
            self.finish(li)
        self.comm.progress([r for p in self.pending.values() for r in p.reqs])

    def exchange_all(self) -> None:
        """Without overlap: start every layer's exchange (backward order), then finish all.

        A barrier first absorbs the ranks' skew, so the gradient waits measure the exchange.
        """
        self.comm.wait([self.comm.comm.Ibarrier()], "barrier before the exchange")
        for li in reversed(range(len(self.layers))):
            if self.layers[li].params():
                self.start(li)
        self.flush()

    def flush(self) -> None:
        for li in sorted(self.pending):
            self.finish(li)


def _update_formats_of(engine: Engine, tids: set[int]) -> None:
    """POLICY_UPDATE restricted to ``tids`` (the engine's own update, other entries set aside)."""
    aside = {t: s for t, s in engine.db.entries.items() if t not in tids}
    for t in aside:
        del engine.db.entries[t]
    try:
        engine.update_formats()
    finally:
        engine.db.entries.update(aside)


def reduce_sharded_stats(comm: Comm, engine: Engine, replicated: set[int]) -> set[int]:
    """Sum the database entries of sharded tensor ids across ranks; returns those ids.

    The overflow and value counts of the results the host discarded by re-runs
    (:attr:`Engine.reruns`) are summed too (the monitor takes them out of the rates).
    """
    cfg = engine.cfg
    nb = cfg.hist_bins
    table = np.zeros((cfg.tensor_ids, nb + STATS_EXTRA_COLUMNS), dtype=np.int64)
    for t, s in engine.db.entries.items():
        if t not in replicated:
            table[t, :nb] = s.hist
            _, ov_re, tot_re = engine.reruns.get(t, (0, 0, 0))
            table[t, nb:] = (s.zeros, s.overflow, s.underflow, s.total, 1, ov_re, tot_re)
    tot = comm.allreduce(table, comm.MPI.SUM, "statistics reduction")
    cmax = cfg.counter_max
    sharded = set()
    for t in range(cfg.tensor_ids):
        if tot[t, nb + 4] == 0:
            continue
        if tot[t, nb + 4] != comm.size:
            raise ParallelError(f"rank {comm.rank}: tensor id {t} has statistics on {tot[t, nb + 4]} of "
                                f"{comm.size} ranks: the ranks ran different programs")
        engine.db.entries[t] = OpStats(np.minimum(tot[t, :nb], cmax), *(min(int(v), cmax) for v in tot[t, nb:nb + 4]))
        if t in engine.reruns:
            engine.reruns[t][1:] = [int(tot[t, nb + 5]), int(tot[t, nb + 6])]
        sharded.add(t)
    return sharded


#: Columns of the statistics table after the histogram: zeros, overflow, underflow, total, a
#: presence count, and the re-runs' discarded overflow and value counts.
STATS_EXTRA_COLUMNS = 7


def sharded_rerun_reduce(comm: Comm, replicated: set[int]) -> Callable[[int, OpStats], OpStats]:
    """:attr:`Engine.rerun_reduce` of a rank: a sharded command's histogram, overflow and value counts
    summed over the ranks (one small allreduce per command), so every rank takes the re-run
    decision the single process takes on the whole batch; replicated ids keep their statistics."""

    def reduce(dst: int, s: OpStats) -> OpStats:
        if dst in replicated:
            return s
        v = np.concatenate([s.hist, [s.overflow, s.total]]).astype(np.int64)
        tot = comm.allreduce(v, comm.MPI.SUM, f"re-run statistics of tensor id {dst}")
        return OpStats(tot[:-2], overflow=int(tot[-2]), total=int(tot[-1]))

    return reduce


# ---------------------------------------------------------------------------------------
# Backends that hold weight gradients for the exchange


class ShardDfpBackend(DfpBackend):
    """A :class:`DfpBackend` whose weight-gradient multiplies go to a :class:`GradExchanger`."""

    def __init__(self, engine: Engine, ids, ex: GradExchanger) -> None:
        super().__init__(engine, ids)
        self.ex = ex

    def matmul(self, dst: int, a: Ref, b: Ref) -> Ref:
        if dst not in self.ex.by_gtid:
            return super().matmul(dst, a, b)
        w = self._width(dst)
        a, b = self._at(a, w), self._at(b, w)
        return self.ex.hold_dfp(dst, a.t, b.t, self)


class ShardFloatBackend(FloatBackend):
    """A :class:`FloatBackend` whose weight-gradient multiplies go to a :class:`GradExchanger`."""

    def __init__(self, ex: GradExchanger) -> None:
        super().__init__(np.float32)
        self.ex = ex

    def matmul(self, dst: int, a: Ref, b: Ref) -> Ref:
        if dst not in self.ex.by_gtid:
            return super().matmul(dst, a, b)
        return self.ex.hold_float(dst, np.asarray(a.t @ b.t, dtype=np.float32))


# ---------------------------------------------------------------------------------------
# Training


@dataclass
class ParallelResult:
    """Per-rank outcome. ``metrics`` is JSON-ready; timings are per training step."""

    metrics: dict[str, Any]
    model: Model
    engine: Engine | None
    step_times: list[float]
    wait_times: list[float]
    bytes_per_step: int


def check_supported(cfg: TrainConfig, pcfg: ParallelConfig, size: int) -> None:
    """Raise ValueError (same on every rank) for a run this module cannot distribute."""
    if cfg.batch % size:
        raise ValueError(f"parallel: batch={cfg.batch} is not divisible by the {size} workers")
    if not cfg.trace_iters.empty:
        raise ValueError("parallel: trace_iters must be empty: traces are recorded by single-process training only")
    spec = cfg.precision_spec()
    if spec is None:
        if pcfg.exchange is not Exchange.EXACT:
            raise ValueError(f"parallel: exchange={pcfg.exchange.value!r} needs a dfp precision (fp32 sends float32)")
        return
    widths = {spec.for_class(c).width for c in (TensorClass.ACTIVATION, TensorClass.ERROR, TensorClass.WEIGHT,
                                                TensorClass.GRADIENT, TensorClass.VELOCITY)}
    if len(widths) != 1:
        raise ValueError(f"parallel: precision spec uses widths {sorted(w.bits for w in widths)}: "
                         "only one width for every tensor class is supported")
    for c in (TensorClass.ACTIVATION, TensorClass.ERROR, TensorClass.GRADIENT):
        if spec.for_class(c).rounding == RoundingMode.STOCHASTIC:
            raise ValueError(f"parallel: {c.value} rounding is stochastic: the generator order would depend on "
                             "the sharding; use nearest-even or floor")


class ParallelHooks(Hooks):
    """The single-process loop's hooks (:class:`reference.train.Hooks`) for one rank.

    The rank takes its shard of each batch, waits per layer for that layer's exchange before
    its forward pass (:meth:`GradExchanger.ready`), computes the loss on the all-gathered
    logits, starts exchanges from the gradient-ready hook (overlap) or exchanges everything
    after back-propagation (no overlap), sums the sharded tensors' statistics before
    POLICY_UPDATE, and times every step.
    """

    def __init__(self, comm: Comm, ex: GradExchanger, cfg: TrainConfig, pcfg: ParallelConfig, evaluate: bool,
                 on_step: Callable[[int], None] | None) -> None:
        super().__init__(ex.on_grads_ready)
        shard = cfg.batch // comm.size
        self.shard = slice(comm.rank * shard, (comm.rank + 1) * shard)
        self.comm, self.ex, self.batch, self.overlap = comm, ex, cfg.batch, pcfg.overlap
        self.evaluate_here = evaluate and comm.rank == 0
        self.on_step = on_step
        #: Per-tensor statistics of every step (dfp modes), recorded after the ranks' sums.
        self.log: TensorLog | None = None
        self.it = 0
        self.step_times: list[float] = []
        self.wait_times: list[float] = []
        self.grad_waits: list[float] = []
        self.bytes_step, self.wire_step = 0, 0.0
        self._t0, self._w0, self._g0 = 0.0, 0.0, 0.0

    def begin_epoch(self, lr: float) -> None:
        self.ex.lr = lr

    def begin_step(self, it: int) -> None:
        self.it = self.ex.it = it
        if self.on_step is not None:
            self.on_step(it)
        self._t0 = time.perf_counter()
        self._w0, self._g0 = self.comm.wait_s, self.comm.grad_wait_s
        self.ex.bytes_step, self.ex.wire_step = 0, 0.0

    def forward(self, s: Session, x: Ref) -> Ref:
        for li, layer in enumerate(s.model.layers):
            self.ex.ready(li)
            x = layer.forward(s.be, x)
        return x

    def gather_logits(self, local: np.ndarray) -> np.ndarray:
        return self.comm.allgather(local, "logits gather").reshape(self.batch, -1)

    def update(self, s: Session, lr: float) -> None:
        # with overlap, each layer is updated when its exchange completes (GradExchanger.update)
        if not self.overlap:
            self.ex.exchange_all()

    def update_formats(self, engine: Engine) -> None:
        sharded = reduce_sharded_stats(self.comm, engine, self.ex.param_tids)
        if self.log is not None:  # the whole batch's statistics, before the update clears them
            self.log.record(engine, self.it, False, sharded)
        _update_formats_of(engine, sharded)

    def end_step(self) -> None:
        self.bytes_step, self.wire_step = self.ex.bytes_step, self.ex.wire_step
        self.step_times.append(time.perf_counter() - self._t0)
        self.wait_times.append(self.comm.wait_s - self._w0)
        self.grad_waits.append(self.comm.grad_wait_s - self._g0)

    def end_epoch(self) -> None:
        self.ex.flush()

    def evaluate(self, s: Session) -> float | None:
        return evaluate_session(s) if self.evaluate_here else None


def train_parallel(cfg: TrainConfig, data: Dataset, pcfg: ParallelConfig, mpi_comm: Any = None,
                   evaluate: bool = True, on_step: Callable[[int], None] | None = None,
                   warn: Callable[[str], None] | None = None) -> ParallelResult:
    """Train ``cfg`` on ``data`` over the ranks of ``mpi_comm`` (default: COMM_WORLD).

    The loop is :func:`reference.train.run_epochs`, run with :class:`ParallelHooks`.
    ``on_step(iteration)`` is called at the start of every training step (fault injection in
    tests, progress reports). ``warn`` receives rank 0's overflow-monitor warnings
    (:class:`reference.train.TensorLog`); every rank records per-tensor statistics in
    ``metrics["tensors"]`` (summed over the ranks, as POLICY_UPDATE sees them).

    Every rank returns its own result; parameters, settings and losses are identical on every
    rank (and, in dfp modes with ``Exchange.EXACT``, to :func:`reference.train.train`). Test
    accuracy is measured on rank 0 only (``None`` on the others).

    Raises
    ------
    ParallelError
        Ranks disagree on the configuration, or a wait timed out.
    ValueError
        The batch is not divisible by the number of ranks, or the precision is unsupported.
    """
    if mpi_comm is None:
        from mpi4py import MPI

        mpi_comm = MPI.COMM_WORLD
    comm = Comm(mpi_comm, pcfg.timeout_s)
    check_agreement(comm, config_digest(cfg, pcfg, data, comm.size))
    check_supported(cfg, pcfg, comm.size)
    exchangers: list[GradExchanger] = []

    def backend(model: Model, engine: Engine | None) -> Backend:
        ex = GradExchanger(comm, model, cfg, pcfg, engine)
        exchangers.append(ex)
        ex.be = ShardFloatBackend(ex) if engine is None else ShardDfpBackend(engine, model.ids, ex)
        return ex.be

    s = open_session(cfg, data, backend)
    hooks = ParallelHooks(comm, exchangers[0], cfg, pcfg, evaluate, on_step)
    if s.engine is not None:
        s.engine.rerun_reduce = sharded_rerun_reduce(comm, exchangers[0].param_tids)
        hooks.log = exchangers[0].log = TensorLog({i.tid: i.name for i in s.model.ids.infos},
                                                  warn if comm.rank == 0 else None)
    epochs = run_epochs(s, hooks)
    core = load_config(cfg.core)
    metrics = {
        "train_config": cfg.to_dict(), "parallel": pcfg.to_dict(), "ranks": comm.size,
        "core": core.to_dict(), "core_digest": core.digest(),
        "data": {"name": data.name, "train": int(s.n), "test": int(len(data.x_test))},
        "epochs": [e.to_dict(times=False) for e in epochs],
        "final": {"test_acc": epochs[-1].test_acc, "loss": epochs[-1].loss},
        "gradient_bytes_per_step": hooks.bytes_step,
        # what each rank would send with ring algorithms (allreduce 2(N-1)/N, reduce-scatter
        # (N-1)/N of the payload, allgather N-1 chunks)
        "gradient_wire_bytes_per_step_ring": hooks.wire_step,
        # The statistics table summed at the end of every dfp step (all tensor ids, int64).
        "statistics_bytes_per_step": 0 if s.engine is None
        else core.tensor_ids * (core.hist_bins + STATS_EXTRA_COLUMNS) * 8,
        "step_time_s_median": float(np.median(hooks.step_times)),
        "wait_time_s_median": float(np.median(hooks.wait_times)),
        "gradient_wait_time_s_median": float(np.median(hooks.grad_waits)),
        "gradient_wait_times_s": hooks.grad_waits,
        "tensors": {} if hooks.log is None else hooks.log.to_dict(s.model, s.engine),
    }
    if hooks.log is not None:
        metrics["monitor"] = {"level": hooks.log.level, "iters": hooks.log.iters, "warnings": hooks.log.warnings}
    return ParallelResult(metrics, s.model, s.engine, hooks.step_times, hooks.wait_times, hooks.bytes_step)

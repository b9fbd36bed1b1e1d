"""Training-memory planner: buffer lifetimes and peak memory of one training step.

The paper's second technology (section 4): analyse each layer, estimate the memory of its
error data and of its weight gradients, and order the backward operations so that the
larger area can be reused. This module builds one training step of a :class:`~reference.nets.Net`
as an explicit list of operations (:class:`Op`) over named tensors, gives every buffer a
lifetime under a :class:`Strategy`, and computes the peak twice:

- ``peak_live``: the largest sum of the sizes of the buffers live during one operation
  (no fragmentation: what a perfect allocator would need);
- ``peak_arena``: the size of one arena in which every buffer gets a fixed offset, placed
  offline from the known lifetimes (greedy by size: largest buffer first, each at the lowest
  offset free of every buffer whose lifetime overlaps). Fragmentation included; this is what
  a trainer that plans at the start of training (as the paper does) allocates;
- ``peak_bestfit``: the high-water mark of an online best-fit allocator
  (:class:`BestFitAllocator`) fed the allocations and frees in schedule order, as a runtime
  caching allocator would see them (usually more fragmentation).

Nothing is tuned to a target: the figures follow from the operation list and the rules below.

Tensors of one step (``L`` is a layer name, ``B`` the batch)
-------------------------------------------------------------
``input``, ``labels``  the batch (labels are 4-byte integers);
``L.y``                layer output ("data" of Caffe's top blob);  ``L.dy`` its error ("diff");
``L.W``, ``L.b``       parameters; ``L.dW``, ``L.db`` their gradients;
``L.mask``             max-pool window index / dropout keep flag, 1 byte per element;
``L.scale``            LRN normaliser (read again by the LRN backward, as in Caffe);
``L.dWtile``           scratch of the fused weight update: one block of ``fused_rows`` rows of dW;
``L.vW``, ``L.vb``     momentum velocities (only with ``momentum=True``), kept across steps.
A flatten layer is a view: it creates no tensor. Data tensors take ``width.bits // 8`` bytes
per element. Convolution workspaces (im2col) are not modelled unless ``plan(workspace=True)``:
then ``L.cols``, ``L.dcols``, ``L.colsT`` are the im2col matrices of the forward, input-error
and weight-gradient ops, each live during its op only (their size depends on the implementation).

Backward data dependencies: conv/linear ``dx <- (W, dy)``, ``dW, db <- (x, dy)``;
ReLU ``dx <- (y, dy)``; max pool ``dx <- (mask, dy)``; LRN ``dx <- (x, y, scale, dy)``;
dropout ``dx <- (mask, dy)``; softmax cross-entropy ``dx <- (y, labels)``. The input gets
no error, and no layer before the first parameterised one has a backward.

Strategies (cumulative; each adds one step so its share stays visible)
---------------------------------------------------------------------
CONVENTIONAL  Caffe without in-place layers: every tensor (each blob's data and diff, the
              parameters and their diffs, masks) is allocated for the whole step; the
              weights are updated after the whole backward pass.
REORDER       the paper: error data and weight gradients live only from the operation that
              writes them to the last one that reads them; each layer's weights are updated
              right after its backward; forward data is released once the backward no
              longer reads it (never before the backward starts); and per layer the order
              of ``dx`` and ``dW`` is chosen to minimise that layer's peak (``DW_FIRST``
              ends the input activation's life so ``dx`` reuses its area).
WEIGHT_AREA   the paper's other case, for layers whose weight gradient is the larger area:
              ``dx`` first, then ``dW`` computed a block of rows at a time and applied to
              ``W`` at once (``FUSED``), so no whole ``dW`` is ever held. Rows are those of
              dW in the ``[in, out]`` layout of ``y = x @ W`` (an input feature, or one
              ``k*k*C`` im2col tap of a convolution, across all outputs); blocks are
              :func:`fused_row_blocks` of ``plan(fused_rows=)`` rows (default
              :data:`FUSED_ROWS`). Results are identical only if dW's quantisation does not
              depend on dW of the same step (true for the DLU: the point position comes from
              earlier statistics).
EARLY_FREE    beyond the paper: forward data is freed right after its last reader even
              during the forward pass (e.g. a ReLU's input, which its backward never reads).
INPLACE       beyond the paper: ReLU and dropout write their output over their input and
              their input error over their output error, where no later operation reads
              the overwritten tensor.

Within one layer the choice of order does not change which buffers are live after the layer,
so choosing each layer's order greedily by its local ``peak_live`` is optimal for ``peak_live``.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .formats import Width
from .nets import LayerKind, LayerShape, Net, infer_shapes

LABEL_BYTES = 4
MASK_BYTES = 1

#: Rows of dW per block of the fused dW->W update (``BackwardOrder.FUSED``), the default of
#: ``plan(fused_rows=)``. :mod:`reference.pooled` computes each block with the matrix multiply
#: of the whole dW restricted to those rows; 48 is a multiple of the row tiles of OpenBLAS's
#: float32 kernels (12 on Haswell/Zen, 4 or 8 elsewhere), so every block is tiled as the whole
#: product is and the sums are bit-identical (docs/memplan.md gives the evidence and the limits).
FUSED_ROWS = 48


def fused_row_blocks(rows: int, block: int = FUSED_ROWS) -> tuple[tuple[int, int], ...]:
    """The ``(r0, r1)`` row ranges in which the fused update computes and applies a ``rows``-row dW.

    Blocks of ``block`` rows from row 0; a one-row tail joins the block before it (a one-row
    product is a vector-matrix product, which NumPy hands to another BLAS routine), so no block
    has more than ``block + 1`` rows.

    Raises
    ------
    ValueError
        If ``rows`` or ``block`` is not a positive integer.
    """
    for name, v in (("rows", rows), ("block", block)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fused_row_blocks: {name}={v!r}: must be a positive integer")
    bounds = [*range(0, rows, block), rows]
    if block > 1 and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return tuple(zip(bounds[:-1], bounds[1:], strict=True))


def fused_tile_rows(rows: int, block: int = FUSED_ROWS) -> int:
    """Rows of the largest block of :func:`fused_row_blocks`: the height of ``L.dWtile``."""
    return max(r1 - r0 for r0, r1 in fused_row_blocks(rows, block))


class Strategy(enum.IntEnum):
    """Memory strategies, each including the ones before it (see the module docstring)."""

    CONVENTIONAL = 0
    REORDER = 1
    WEIGHT_AREA = 2
    EARLY_FREE = 3
    INPLACE = 4

    @property
    def label(self) -> str:
        return _LABELS[self]


_LABELS = {
    Strategy.CONVENTIONAL: "conventional (Caffe, all step)",
    Strategy.REORDER: "paper: lifetimes + dx/dW order",
    Strategy.WEIGHT_AREA: "paper: + fused dW->W update",
    Strategy.EARLY_FREE: "beyond: + free fwd data early",
    Strategy.INPLACE: "beyond: + in-place ReLU/dropout",
}


class BackwardOrder(enum.Enum):
    """Order of a parameterised layer's backward operations."""

    DX_FIRST = "dx,dW,update"
    DW_FIRST = "dW,dx,update"
    FUSED = "dx,dW-rows->W"


class Phase(enum.Enum):
    FORWARD = "forward"
    BACKWARD = "backward"
    UPDATE = "update"


class BufferKind(enum.Enum):
    INPUT = "input"
    ACTIVATION = "activation"
    AUX = "aux"
    ERROR = "error"
    PARAM = "param"
    PARAM_GRAD = "param_grad"
    WORKSPACE = "workspace"


@dataclass(frozen=True)
class Op:
    """One operation of the step: reads and writes named tensors."""

    name: str
    layer: str
    phase: Phase
    reads: tuple[str, ...]
    writes: tuple[str, ...]


@dataclass(frozen=True)
class Buffer:
    """A storage area holding one tensor, or several in turn when an operation works in place."""

    name: str
    nbytes: int
    kind: BufferKind


class PlanError(RuntimeError):
    """A schedule violates its own lifetimes (read after free or after overwrite)."""


def _elem_bytes(width: Width) -> int:
    return width.bits // 8


@dataclass(frozen=True)
class _Step:
    ops: tuple[Op, ...]
    tensors: dict[str, tuple[int, BufferKind]]  # tensor -> (bytes, kind)
    windows: dict[str, tuple[int, int]]  # param layer -> (first, last) backward op index
    elementwise: frozenset[str]  # ReLU and dropout layers: candidates for in-place


def _workspaces(s: LayerShape, batch: int, eb: int) -> dict[str, int]:
    """Bytes of the im2col matrices of a convolution's three ops, as :mod:`reference.pooled` builds them.

    ``cols`` (forward) and ``colsT`` (weight gradient): ``N*Ho*Wo`` rows of ``k*k*C``;
    ``dcols`` (input error): stride 1, the padded error's ``N*H*W`` rows of ``k*k*O`` (a full
    correlation with the flipped kernel); stride > 1, a col2im buffer the size of ``cols``.
    """
    k, (c, h, w), (o, ho, wo) = s.layer.kernel, s.in_shape, s.out_shape
    cols = batch * ho * wo * k * k * c * eb
    dcols = batch * h * w * k * k * o * eb if s.layer.stride == 1 else cols
    return {"cols": cols, "colsT": cols, "dcols": dcols}


def _build_step(net: Net, batch: int, width: Width, strategy: Strategy,
                orders: dict[str, BackwardOrder], momentum: bool = False, workspace: bool = False,
                mask_bytes: int = MASK_BYTES, fused_rows: int = FUSED_ROWS) -> _Step:
    eb = _elem_bytes(width)
    shapes = infer_shapes(net)
    tensors: dict[str, tuple[int, BufferKind]] = {
        "input": (batch * int(np.prod(net.input_shape)) * eb, BufferKind.INPUT),
        "labels": (batch * LABEL_BYTES, BufferKind.INPUT),
    }
    fwd: list[Op] = [Op("load", "input", Phase.FORWARD, (), ("input", "labels"))]
    ins: list[str] = []
    outs: list[str] = []
    cur = "input"
    seen_params = False
    needs_dx: list[bool] = []
    for s in shapes:
        L, k = s.layer.name, s.layer.kind
        ins.append(cur)
        needs_dx.append(seen_params)
        seen_params = seen_params or k.has_params
        if k is LayerKind.FLATTEN:
            outs.append(cur)
            continue
        y = f"{L}.y"
        data = batch * s.out_count * eb
        if k is LayerKind.SOFTMAX_CE:
            tensors[y] = (data, BufferKind.AUX)
            fwd.append(Op(f"fwd:{L}", L, Phase.FORWARD, (cur, "labels"), (y,)))
        else:
            tensors[y] = (data, BufferKind.ACTIVATION)
            tensors[f"{L}.dy"] = (data, BufferKind.ERROR)
            reads: tuple[str, ...] = (cur,)
            writes: tuple[str, ...] = (y,)
            if k.has_params:
                tensors[f"{L}.W"] = (s.weights * eb, BufferKind.PARAM)
                tensors[f"{L}.b"] = (s.biases * eb, BufferKind.PARAM)
                tensors[f"{L}.dW"] = (s.weights * eb, BufferKind.PARAM_GRAD)
                tensors[f"{L}.db"] = (s.biases * eb, BufferKind.PARAM_GRAD)
                outputs = s.layer.out_channels if k is LayerKind.CONV else s.layer.out_features
                tile = fused_tile_rows(s.weights // outputs, fused_rows) * outputs
                tensors[f"{L}.dWtile"] = (tile * eb, BufferKind.PARAM_GRAD)
                reads = (cur, f"{L}.W", f"{L}.b")
                if workspace and k is LayerKind.CONV:
                    for t, nbytes in _workspaces(s, batch, eb).items():
                        tensors[f"{L}.{t}"] = (nbytes, BufferKind.WORKSPACE)
                    writes = (y, f"{L}.cols")
                if momentum:
                    tensors[f"{L}.vW"] = (s.weights * eb, BufferKind.PARAM)
                    tensors[f"{L}.vb"] = (s.biases * eb, BufferKind.PARAM)
            elif k in (LayerKind.MAXPOOL, LayerKind.DROPOUT):
                n = s.out_count if k is LayerKind.MAXPOOL else s.in_count
                tensors[f"{L}.mask"] = (batch * n * mask_bytes, BufferKind.AUX)
                writes = (y, f"{L}.mask")
            elif k is LayerKind.LRN:
                tensors[f"{L}.scale"] = (batch * s.in_count * eb, BufferKind.AUX)
                writes = (y, f"{L}.scale")
            fwd.append(Op(f"fwd:{L}", L, Phase.FORWARD, reads, writes))
        outs.append(y)
        cur = y

    bwd: list[Op] = []
    late_updates: list[Op] = []
    windows: dict[str, tuple[int, int]] = {}
    base = len(fwd)
    for i in range(len(shapes) - 1, -1, -1):
        s = shapes[i]
        L, k = s.layer.name, s.layer.kind
        if k is LayerKind.FLATTEN:
            continue
        x, y = ins[i], outs[i]
        dx = f"{x[:-2]}.dy" if needs_dx[i] else None
        if k is LayerKind.SOFTMAX_CE:
            if dx:
                bwd.append(Op(f"bwd:{L}", L, Phase.BACKWARD, (y, "labels"), (dx,)))
            continue
        dy = f"{L}.dy"
        if k.has_params:
            start = base + len(bwd)
            W, b, dW, db = f"{L}.W", f"{L}.b", f"{L}.dW", f"{L}.db"
            state = (f"{L}.vW", f"{L}.vb") if momentum else ()
            ws = workspace and k is LayerKind.CONV
            dcols, colsT = ((f"{L}.dcols",), (f"{L}.colsT",)) if ws else ((), ())
            op_dx = Op(f"bwd_dx:{L}", L, Phase.BACKWARD, (W, dy), (dx, *dcols)) if dx else None
            op_dw = Op(f"bwd_dW:{L}", L, Phase.BACKWARD, (x, dy), (dW, db, *colsT))
            op_up = Op(f"update:{L}", L, Phase.UPDATE, (W, b, *state, dW, db), (*state, W, b))
            order = orders.get(L, BackwardOrder.DX_FIRST)
            if strategy is Strategy.CONVENTIONAL:
                seq = [op_dw, op_dx]  # Caffe: weight gradient, then bottom diff
                late_updates.append(op_up)
            elif order is BackwardOrder.FUSED:
                fused = Op(f"bwd_dW+update:{L}", L, Phase.UPDATE, (x, dy, W, b, *state),
                           (f"{L}.dWtile", db, *colsT, *state, W, b))
                seq = [op_dx, fused]
            elif order is BackwardOrder.DW_FIRST:
                seq = [op_dw, op_dx, op_up]
            else:
                seq = [op_dx, op_dw, op_up]
            bwd.extend(o for o in seq if o is not None)
            windows[L] = (start, base + len(bwd) - 1)
            continue
        if dx is None:
            continue
        if k is LayerKind.RELU:
            reads = (y, dy)
        elif k is LayerKind.LRN:
            reads = (x, y, f"{L}.scale", dy)
        elif k is LayerKind.AVGPOOL:
            reads = (dy,)
        elif k is LayerKind.BATCHNORM:  # (gamma, beta and their state are not planned)
            reads = (x, dy)
        else:  # maxpool, dropout
            reads = (f"{L}.mask", dy)
        bwd.append(Op(f"bwd:{L}", L, Phase.BACKWARD, reads, (dx,)))
    ops = tuple(fwd + bwd + late_updates)
    used = {t for o in ops for t in (*o.reads, *o.writes)}
    elementwise = frozenset(s.layer.name for s in shapes if s.layer.kind in (LayerKind.RELU, LayerKind.DROPOUT))
    return _Step(ops, {t: v for t, v in tensors.items() if t in used}, windows, elementwise)


def _storage_map(step: _Step, inplace: bool) -> dict[str, str]:
    """Tensor -> storage name; with ``inplace``, ReLU and dropout share storage where legal.

    A forward ``y`` takes its input's storage if that op is the input's last access (so no
    backward reads the overwritten input); a backward ``dx`` takes ``dy``'s storage likewise.
    """
    storage = {t: t for t in step.tensors}
    if not inplace:
        return storage
    last: dict[str, int] = {}
    for i, o in enumerate(step.ops):
        for t in (*o.reads, *o.writes):
            last[t] = i
    for i, o in enumerate(step.ops):
        if o.layer not in step.elementwise:
            continue
        if o.phase is Phase.FORWARD:
            src, dst = o.reads[0], o.writes[0]
            if src == "input":
                continue
        else:
            src, dst = f"{o.layer}.dy", o.writes[0]
        if last[src] == i and step.tensors[src][0] == step.tensors[dst][0]:
            storage[dst] = storage[src]
    return storage


# ---------------------------------------------------------------------------------------
# Allocator


class BestFitAllocator:
    """Offset allocator on one growing arena: best fit among free holes, else the top.

    Sizes are rounded up to ``align`` bytes (at least one unit). ``high_water`` is the
    arena size the sequence of requests needed, fragmentation included.

    Parameters
    ----------
    align
        Alignment and granule of every block, a positive integer.
    """

    def __init__(self, align: int = 1) -> None:
        if isinstance(align, bool) or not isinstance(align, int) or align < 1:
            raise ValueError(f"align: {align!r}: must be a positive integer")
        self.align = align
        self._holes: list[tuple[int, int]] = []  # (offset, size), sorted, merged, below top
        self._blocks: dict[str, tuple[int, int]] = {}
        self.top = 0
        self.high_water = 0

    def rounded(self, nbytes: int) -> int:
        return max(1, -(-nbytes // self.align)) * self.align

    def alloc(self, name: str, nbytes: int) -> int:
        """Place ``name`` and return its offset; raises ``KeyError`` if it is already live."""
        if name in self._blocks:
            raise KeyError(f"allocator: {name!r} is already allocated")
        size = self.rounded(nbytes)
        best = -1
        for j, (_, hsize) in enumerate(self._holes):
            if hsize >= size and (best < 0 or hsize < self._holes[best][1]):
                best = j
        if best >= 0:
            off, hsize = self._holes[best]
            if hsize == size:
                del self._holes[best]
            else:
                self._holes[best] = (off + size, hsize - size)
        else:
            off = self.top
            self.top += size
            self.high_water = max(self.high_water, self.top)
        self._blocks[name] = (off, size)
        return off

    def free(self, name: str) -> None:
        """Release ``name``; raises ``KeyError`` if it is not live."""
        if name not in self._blocks:
            raise KeyError(f"allocator: {name!r} is not allocated")
        off, size = self._blocks.pop(name)
        j = bisect.bisect_left(self._holes, (off, size))
        self._holes.insert(j, (off, size))
        # merge with the following and the preceding hole
        if j + 1 < len(self._holes) and off + size == self._holes[j + 1][0]:
            size += self._holes.pop(j + 1)[1]
            self._holes[j] = (off, size)
        if j > 0 and self._holes[j - 1][0] + self._holes[j - 1][1] == off:
            poff, psize = self._holes.pop(j - 1)
            j -= 1
            off, size = poff, psize + size
            self._holes[j] = (off, size)
        if off + size == self.top:  # a hole at the top returns to the frontier
            self._holes.pop(j)
            self.top = off

    @property
    def live_bytes(self) -> int:
        return sum(size for _, size in self._blocks.values())


# ---------------------------------------------------------------------------------------
# Plans


@dataclass(frozen=True)
class Plan:
    """One training step under one strategy: operations, buffers, lifetimes and peaks.

    Members
    -------
    ops
        The operations in execution order.
    storage
        Tensor name -> buffer name (several tensors share a buffer when an op works in place).
    buffers
        Buffer name -> :class:`Buffer`.
    lifetimes
        Buffer name -> ``(first, last)`` op indices, inclusive: allocated just before op
        ``first``, freed just after op ``last``.
    orders
        Parameterised layer -> chosen :class:`BackwardOrder` (empty for CONVENTIONAL).
    live
        Bytes live during each op (unaligned sizes); ``peak_live`` is their maximum.
    offsets
        Buffer name -> byte offset in the offline-placed arena; ``peak_arena`` is its size.
    peak_bestfit
        High-water mark of the online best-fit allocator on the same schedule.
    fused_rows
        Rows of dW per block of the FUSED updates (:func:`fused_row_blocks`).
    """

    net_name: str
    batch: int
    width: Width
    strategy: Strategy
    align: int
    ops: tuple[Op, ...]
    storage: dict[str, str]
    buffers: dict[str, Buffer]
    lifetimes: dict[str, tuple[int, int]]
    orders: dict[str, BackwardOrder]
    live: tuple[int, ...]
    peak_live: int
    offsets: dict[str, int] = field(default_factory=dict)
    peak_arena: int = 0
    peak_bestfit: int = 0
    fused_rows: int = FUSED_ROWS

    def allocs_before(self, i: int, params: bool = True) -> tuple[str, ...]:
        """Buffers to allocate just before op ``i`` (for op 0 this includes the whole-step ones).

        With ``params=False`` the parameters are left out: a trainer allocates them once and
        keeps them across steps.
        """
        return tuple(b for b, (s, _) in self.lifetimes.items()
                     if s == i and (params or self.buffers[b].kind is not BufferKind.PARAM))

    def frees_after(self, i: int, params: bool = True) -> tuple[str, ...]:
        """Buffers to free just after op ``i`` (``params=False``: never the parameters)."""
        return tuple(b for b, (_, e) in self.lifetimes.items()
                     if e == i and (params or self.buffers[b].kind is not BufferKind.PARAM))

    @property
    def peak_op(self) -> Op:
        """The first op during which ``peak_live`` bytes are live."""
        return self.ops[self.live.index(self.peak_live)]

    def working_set(self, i: int) -> int:
        """Bytes of the distinct buffers op ``i`` reads or writes (what must be on chip for it)."""
        o = self.ops[i]
        return sum(self.buffers[b].nbytes for b in {self.storage[t] for t in (*o.reads, *o.writes)})

    def layer_working_sets(self) -> dict[str, int]:
        """Per layer, the largest :meth:`working_set` of its ops: a scratchpad-size hint for ``sim/``."""
        out: dict[str, int] = {}
        for i, o in enumerate(self.ops):
            out[o.layer] = max(out.get(o.layer, 0), self.working_set(i))
        return out

    def bytes_by_kind(self) -> dict[BufferKind, int]:
        """Total bytes of all buffers of each kind (their sum is the conventional peak)."""
        out = {k: 0 for k in BufferKind}
        for b in self.buffers.values():
            out[b.kind] += b.nbytes
        return out


def _lifetimes(step: _Step, strategy: Strategy, storage: dict[str, str]) -> dict[str, tuple[int, int]]:
    n = len(step.ops)
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, o in enumerate(step.ops):
        for t in (*o.reads, *o.writes):
            b = storage[t]
            first.setdefault(b, i)
            last[b] = i
    last_fwd = max(i for i, o in enumerate(step.ops) if o.phase is Phase.FORWARD)
    out: dict[str, tuple[int, int]] = {}
    for b in first:
        kind = step.tensors[b][1]
        if kind is BufferKind.WORKSPACE:  # scratch of one op in every schedule
            out[b] = (first[b], last[b])
        elif strategy is Strategy.CONVENTIONAL or kind is BufferKind.PARAM:
            out[b] = (0, n - 1)
        elif kind in (BufferKind.INPUT, BufferKind.ACTIVATION, BufferKind.AUX) \
                and strategy < Strategy.EARLY_FREE:
            out[b] = (first[b], max(last[b], last_fwd))
        else:
            out[b] = (first[b], last[b])
    return out


def _live(n: int, lifetimes: dict[str, tuple[int, int]], sizes: dict[str, int]) -> list[int]:
    diff = [0] * (n + 1)
    for b, (s, e) in lifetimes.items():
        diff[s] += sizes[b]
        diff[e + 1] -= sizes[b]
    live, acc = [], 0
    for i in range(n):
        acc += diff[i]
        live.append(acc)
    return live


def _place(step: _Step, storage: dict[str, str], lifetimes: dict[str, tuple[int, int]],
           sizes: dict[str, int], align: int) -> tuple[dict[str, int], int]:
    """Run the best-fit allocator over the schedule; return offsets and the arena size."""
    alloc = BestFitAllocator(align)
    offsets: dict[str, int] = {}
    n = len(step.ops)
    whole = [b for b, (s, e) in lifetimes.items() if (s, e) == (0, n - 1)]
    whole.sort(key=lambda b: step.tensors[b][1] is not BufferKind.PARAM)  # params first, stable
    for b in whole:
        offsets[b] = alloc.alloc(b, sizes[b])
    ends: dict[int, list[str]] = {}
    for b, (_, e) in lifetimes.items():
        ends.setdefault(e, []).append(b)
    for i, o in enumerate(step.ops):
        for t in (*o.writes, *o.reads):
            b = storage[t]
            if b not in offsets and lifetimes[b][0] == i:
                offsets[b] = alloc.alloc(b, sizes[b])
        for b in ends.get(i, ()):
            if b not in whole:
                alloc.free(b)
    return offsets, alloc.high_water


def _place_offline(lifetimes: dict[str, tuple[int, int]], sizes: dict[str, int],
                   align: int) -> tuple[dict[str, int], int]:
    """Greedy-by-size placement: largest first, lowest offset clear of overlapping lifetimes."""
    granule = BestFitAllocator(align)
    order = sorted(lifetimes, key=lambda b: (-sizes[b], lifetimes[b][0], b))
    placed: list[tuple[int, int, int, int]] = []  # offset, size, first, last
    offsets: dict[str, int] = {}
    top = 0
    for b in order:
        s, e = lifetimes[b]
        z = granule.rounded(sizes[b])
        off = 0
        for o, oz in sorted((o, oz) for o, oz, ps, pe in placed if ps <= e and s <= pe):
            if off + z <= o:
                break
            off = max(off, o + oz)
        placed.append((off, z, s, e))
        offsets[b] = off
        top = max(top, off + z)
    return offsets, top


_Evaluated = tuple[_Step, dict[str, str], dict[str, tuple[int, int]], dict[str, int], list[int]]


def _evaluate(net: Net, batch: int, width: Width, strategy: Strategy,
              orders: dict[str, BackwardOrder], momentum: bool, inplace: bool, workspace: bool,
              mask_bytes: int, fused_rows: int) -> _Evaluated:
    step = _build_step(net, batch, width, strategy, orders, momentum, workspace, mask_bytes, fused_rows)
    storage = _storage_map(step, inplace)
    lifetimes = _lifetimes(step, strategy, storage)
    sizes = {b: step.tensors[b][0] for b in lifetimes}
    return step, storage, lifetimes, sizes, _live(len(step.ops), lifetimes, sizes)


def _check_args(batch: int, width: Width, strategy: Strategy, align: int) -> None:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: {batch!r}: must be a positive integer")
    if not isinstance(width, Width):
        raise TypeError(f"width: {width!r}: must be a reference.formats.Width")
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy: {strategy!r}: must be a memplan.Strategy")
    if isinstance(align, bool) or not isinstance(align, int) or align < 1:
        raise ValueError(f"align: {align!r}: must be a positive integer")


def plan(net: Net, batch: int, width: Width = Width.W32, strategy: Strategy = Strategy.REORDER,
         align: int = 1, orders: dict[str, BackwardOrder] | None = None, momentum: bool = False,
         inplace: bool | None = None, fused: bool = True, workspace: bool = False,
         mask_bytes: int = MASK_BYTES, fused_rows: int = FUSED_ROWS) -> Plan:
    """Plan one training step of ``net`` on ``batch`` samples of ``width``-bit data.

    Parameters
    ----------
    net
        The network.
    batch
        Mini-batch size, a positive integer.
    width
        Bytes per element of data, errors and parameters: ``width.bits // 8``.
    strategy
        Which memory optimisations apply (cumulative; see the module docstring).
    align
        Allocation granule of the arena allocator (e.g. 256 for CUDA); ``peak_live`` ignores it.
    orders
        Force the backward order of some layers instead of choosing it (ignored by
        CONVENTIONAL; FUSED needs WEIGHT_AREA or later).
    momentum
        Keep a velocity per parameter across steps (``L.vW``, ``L.vb``: SGD with momentum, as
        Caffe's solver and ``reference.layers.sgd_step``); whole-step in every schedule.
    inplace
        Override whether ReLU/dropout work in place (default: ``strategy >= INPLACE``), to
        measure e.g. the paper's REORDER on a network whose ReLUs are in place, as in Caffe.
    fused
        Whether WEIGHT_AREA and later may choose FUSED.
    workspace
        Give each convolution op its im2col matrix as a buffer of that op alone (kind
        WORKSPACE, same in every schedule; sizes as :mod:`reference.pooled` builds them, see
        ``_workspaces``). Off for the paper's comparisons, which leave workspaces out.
    mask_bytes
        Bytes per element of max-pool and dropout masks (1; Caffe stores 4, see :func:`caffe_faithful`).
    fused_rows
        Rows of dW per block of a FUSED update (:func:`fused_row_blocks`); ``L.dWtile`` holds
        the largest block. :mod:`reference.pooled` executes the plan's value.

    Raises
    ------
    ValueError
        On a bad ``batch``, ``align``, ``fused_rows`` or a forced order the strategy does not allow.
    """
    if any(la.kind is LayerKind.ADD for la in net.layers):
        raise ValueError(f"memplan: net {net.name!r} has residual add layers; the planner handles chains only")
    _check_args(batch, width, strategy, align)
    fused_tile_rows(1, fused_rows)  # validates fused_rows
    inplace = strategy >= Strategy.INPLACE if inplace is None else bool(inplace)
    forced = dict(orders or {})
    if strategy < Strategy.WEIGHT_AREA and BackwardOrder.FUSED in forced.values():
        raise ValueError(f"orders: FUSED needs strategy >= WEIGHT_AREA, got {strategy.name}")
    chosen: dict[str, BackwardOrder] = {}
    if strategy is not Strategy.CONVENTIONAL:
        options = [BackwardOrder.DX_FIRST, BackwardOrder.DW_FIRST]
        if strategy >= Strategy.WEIGHT_AREA and fused:
            options.append(BackwardOrder.FUSED)
        step0 = _build_step(net, batch, width, strategy, {}, momentum, workspace, mask_bytes, fused_rows)
        for layer in step0.windows:  # backward order: top layer first
            if layer in forced:
                chosen[layer] = forced[layer]
                continue
            best: tuple[int, BackwardOrder] | None = None
            for opt in options:
                trial = {**chosen, layer: opt}
                step, _, _, _, live = _evaluate(net, batch, width, strategy, trial, momentum, inplace, workspace,
                                                mask_bytes, fused_rows)
                a, b = step.windows[layer]
                local = max(live[a:b + 1])
                if best is None or local < best[0]:
                    best = (local, opt)
            assert best is not None
            chosen[layer] = best[1]
    step, storage, lifetimes, sizes, live = _evaluate(net, batch, width, strategy, chosen, momentum, inplace,
                                                      workspace, mask_bytes, fused_rows)
    _, bestfit = _place(step, storage, lifetimes, sizes, align)
    offsets, arena = _place_offline(lifetimes, sizes, align)
    buffers = {b: Buffer(b, sizes[b], step.tensors[b][1]) for b in lifetimes}
    return Plan(net.name, batch, width, strategy, align, step.ops, storage, buffers, lifetimes,
                chosen, tuple(live), max(live), offsets, arena, bestfit, fused_rows)


def check_plan(plan: Plan) -> None:
    """Replay ``plan`` and raise :class:`PlanError` on any lifetime violation.

    Checks that every tensor is written before it is read, that its buffer is allocated and
    still holds it (not freed, not overwritten in place) when read, that no backward op reads
    a parameter after its update, and that arena blocks of overlapping lifetimes are disjoint.
    """
    # parameters persist across steps: they hold their values before the first op
    holds = {b: b for b, buf in plan.buffers.items() if buf.kind is BufferKind.PARAM}
    allocated: set[str] = set()
    updated: set[str] = set()
    n = len(plan.ops)
    for i, o in enumerate(plan.ops):
        for b, (s, _) in plan.lifetimes.items():
            if s == i:
                allocated.add(b)
        for t in o.reads:
            b = plan.storage[t]
            if b not in allocated:
                raise PlanError(f"op {i} {o.name}: reads {t!r} but its buffer {b!r} is not allocated")
            if holds.get(b) != t:
                raise PlanError(f"op {i} {o.name}: reads {t!r} but buffer {b!r} holds {holds.get(b)!r}")
            if t in updated and o.phase is Phase.BACKWARD:
                raise PlanError(f"op {i} {o.name}: reads {t!r} after its update")
        for t in o.writes:
            b = plan.storage[t]
            if b not in allocated:
                raise PlanError(f"op {i} {o.name}: writes {t!r} but its buffer {b!r} is not allocated")
            holds[b] = t
            if o.phase is Phase.UPDATE:
                updated.add(t)
        for b, (_, e) in plan.lifetimes.items():
            if e == i:
                allocated.discard(b)
    if allocated:
        raise PlanError(f"buffers never freed: {sorted(allocated)}")
    if plan.offsets:
        al = BestFitAllocator(plan.align)
        items = sorted(plan.lifetimes.items(), key=lambda kv: kv[1][0])
        for j, (a, (sa, ea)) in enumerate(items):
            oa, za = plan.offsets[a], al.rounded(plan.buffers[a].nbytes)
            if oa + za > plan.peak_arena:
                raise PlanError(f"buffer {a!r} at {oa}+{za} exceeds the arena of {plan.peak_arena} bytes")
            for b, (sb, eb) in items[j + 1:]:
                if sb > ea:
                    break
                ob, zb = plan.offsets[b], al.rounded(plan.buffers[b].nbytes)
                if sb <= ea and sa <= eb and oa < ob + zb and ob < oa + za:
                    raise PlanError(f"buffers {a!r} and {b!r} overlap in the arena while both live")
    if len(plan.live) != n:
        raise PlanError("live timeline length differs from the op count")


def caffe_inplace_conventional_bytes(net: Net, batch: int, width: Width = Width.W32,
                                     momentum: bool = False, mask_bytes: int = MASK_BYTES) -> int:
    """Conventional (all-step) bytes when every ReLU and dropout runs in place, as in Caffe's
    ``bvlc_alexnet`` / VGG prototxts (top blob = bottom blob, so neither its data nor its
    diff is a separate allocation).

    Caffe can do this even for a dropout after an in-place ReLU because the ReLU backward
    then reads dropout's output, whose sign is wrong only where the error is zero anyway; the
    strict lifetime check of :func:`check_plan` would reject that sharing, so this is a
    figure only, not a :class:`Plan`. It is the fairer baseline for comparing with a real Caffe run.
    """
    p = plan(net, batch, width, Strategy.CONVENTIONAL, momentum=momentum, mask_bytes=mask_bytes)
    elementwise = {s.layer.name for s in infer_shapes(net) if s.layer.kind in (LayerKind.RELU, LayerKind.DROPOUT)}
    shared = sum(p.buffers[f"{layer}.{t}"].nbytes for layer in elementwise for t in ("y", "dy")
                 if f"{layer}.{t}" in p.buffers)
    return p.peak_live - shared


#: Caffe's max-pool index (``Blob<int> max_idx_``) and dropout flags (``Blob<unsigned int> rand_vec_``).
CAFFE_MASK_BYTES = 4
#: Caffe 1.0's ``DataParameter.prefetch`` default: batches the data layer keeps loaded on the device
#: (earlier releases: ``PREFETCH_COUNT = 3``).
CAFFE_PREFETCH = 4


def caffe_persistent_bytes(net: Net, batch: int, width: Width = Width.W32,
                           prefetch: int = CAFFE_PREFETCH) -> dict[str, int]:
    """Buffers Caffe 1.0 keeps for the whole run beside the blobs, which the plans leave out.

    ``col_buffers``: every convolution layer's own im2col buffer (``col_buffer_``) for one
    image, ``k*k*C x Ho*Wo`` (none for 1x1 stride-1 unpadded convolutions), as Caffe's own
    (non-cuDNN) convolution allocates it; ``prefetch``: ``prefetch`` batches of data and labels.
    Both stay allocated under any schedule that keeps Caffe's layers, so they add the same bytes.
    """
    eb = _elem_bytes(width)
    cols = 0
    for s in infer_shapes(net):
        la = s.layer
        if la.kind is LayerKind.CONV and not (la.kernel == 1 and la.stride == 1 and la.pad == 0):
            cols += la.kernel * la.kernel * s.in_shape[0] * s.out_shape[1] * s.out_shape[2] * eb
    sample = int(np.prod(net.input_shape)) * eb + LABEL_BYTES
    return {"col_buffers": cols, "prefetch": prefetch * batch * sample}


def caffe_faithful(net: Net, batch: int, width: Width = Width.W32, align: int = 1,
                   prefetch: int = CAFFE_PREFETCH, strategy: Strategy = Strategy.REORDER) -> tuple[int, int]:
    """(conventional, ``strategy``) bytes of one step as Caffe 1.0 trains a ``bvlc`` prototxt.

    The conventional figure is :func:`caffe_inplace_conventional_bytes` with the solver's
    momentum history and 4-byte masks; ``strategy`` (default the paper's REORDER) is the arena
    of the same in-place network with momentum and 4-byte masks; both add
    :func:`caffe_persistent_bytes`. Still left out: cuDNN
    workspaces, the test net, CUDA's context and the allocator's rounding.
    """
    extra = sum(caffe_persistent_bytes(net, batch, width, prefetch).values())
    conv = caffe_inplace_conventional_bytes(net, batch, width, momentum=True, mask_bytes=CAFFE_MASK_BYTES)
    opt = plan(net, batch, width, strategy, align, momentum=True, inplace=True, mask_bytes=CAFFE_MASK_BYTES).peak_arena
    return conv + extra, opt + extra


def largest_batch(net: Net, budget: int, width: Width = Width.W32, strategy: Strategy = Strategy.REORDER,
                  align: int = 1, use_arena: bool = True, max_batch: int = 1 << 20,
                  momentum: bool = False) -> int:
    """Largest batch whose peak (arena, or live if ``use_arena`` is false) fits in ``budget`` bytes.

    Returns 0 if batch 1 does not fit. Searches by doubling then bisection, which assumes
    the peak does not decrease as the batch grows (tests check this on the built-in nets).

    Raises
    ------
    ValueError
        If ``budget`` is not a positive integer.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget: {budget!r}: must be a positive integer number of bytes")

    def fits(b: int) -> bool:
        p = plan(net, b, width, strategy, align, momentum=momentum)
        return (p.peak_arena if use_arena else p.peak_live) <= budget

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= max_batch and fits(hi):
        lo, hi = hi, hi * 2
    if hi > max_batch:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------------------
# Buffer pool for the trainer


class BufferPool:
    """Named NumPy buffers with peak tracking, optionally placed in one arena by a :class:`Plan`.

    Two modes:

    - ``BufferPool()``: each :meth:`alloc` is its own ``np.empty``; :attr:`live_bytes` and
      :attr:`peak_bytes` track the sum of live buffers (compare with ``Plan.peak_live``).
    - ``BufferPool.from_plan(plan)``: one ``uint8`` arena of ``plan.peak_arena`` bytes is
      allocated up front and :meth:`alloc` returns a view at the plan's offset of the named
      buffer. The pool refuses names the plan does not know, sizes above the plan's and
      placements that overlap a live buffer, so a trainer that strays from the plan fails
      loudly instead of corrupting data.

    Buffer names are the plan's buffer names (``plan.storage[tensor]``); a tensor computed
    in place (``plan.storage[t] != t``) reuses the array of its buffer.
    """

    def __init__(self) -> None:
        self._arrays: dict[str, np.ndarray] = {}
        self._sizes: dict[str, int] = {}
        self._plan: Plan | None = None
        self._arena: np.ndarray | None = None
        self._align = 1
        self.live_bytes = 0
        self.peak_bytes = 0

    @classmethod
    def from_plan(cls, plan: Plan) -> BufferPool:
        pool = cls()
        pool._plan = plan
        pool._align = plan.align
        pool._arena = np.empty(plan.peak_arena, dtype=np.uint8)
        return pool

    def alloc(self, name: str, shape: Sequence[int] | int, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Allocate buffer ``name`` as an uninitialised array of ``shape`` and ``dtype``.

        Raises
        ------
        KeyError
            If ``name`` is live already, or (arena mode) unknown to the plan.
        ValueError
            (Arena mode) if the array is larger than the planned buffer or its block would
            overlap a live buffer.
        """
        if name in self._arrays:
            raise KeyError(f"pool: buffer {name!r} is already allocated")
        dt = np.dtype(dtype)
        shape_t = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = int(np.prod(shape_t, dtype=np.int64)) * dt.itemsize
        if self._plan is None:
            arr = np.empty(shape_t, dtype=dt)
        else:
            assert self._arena is not None
            if name not in self._plan.offsets:
                raise KeyError(f"pool: buffer {name!r} is not in the plan")
            planned = self._plan.buffers[name].nbytes
            if nbytes > planned:
                raise ValueError(f"pool: buffer {name!r}: {nbytes} bytes requested, {planned} planned")
            off = self._plan.offsets[name]
            for other, size in self._sizes.items():
                o2 = self._plan.offsets[other]
                if off < o2 + size and o2 < off + max(nbytes, 1):
                    raise ValueError(f"pool: buffer {name!r} at [{off}, {off + nbytes}) overlaps live "
                                     f"buffer {other!r} at [{o2}, {o2 + size}): freed too late?")
            arr = self._arena[off:off + nbytes].view(dt).reshape(shape_t)
        self._arrays[name] = arr
        self._sizes[name] = nbytes
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return arr

    def free(self, name: str) -> None:
        """Release ``name``; raises ``KeyError`` if it is not live."""
        if name not in self._arrays:
            raise KeyError(f"pool: buffer {name!r} is not allocated")
        del self._arrays[name]
        self.live_bytes -= self._sizes.pop(name)

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self._arrays[name]
        except KeyError:
            raise KeyError(f"pool: buffer {name!r} is not allocated (freed or never allocated)") from None

    def __contains__(self, name: str) -> bool:
        return name in self._arrays

    @property
    def live(self) -> tuple[str, ...]:
        return tuple(self._arrays)


def run_plan(plan: Plan, pool: BufferPool) -> None:
    """Drive ``pool`` through ``plan``'s allocations and frees, without computing anything.

    A trainer runs the same loop with its compute in the middle: before op ``i`` allocate
    ``plan.allocs_before(i)``, run the op, then free ``plan.frees_after(i)``. Here every
    buffer is a ``uint8`` array of its planned byte count.
    """
    for i in range(len(plan.ops)):
        for b in plan.allocs_before(i):
            pool.alloc(b, plan.buffers[b].nbytes, np.uint8)
        for b in plan.frees_after(i):
            pool.free(b)

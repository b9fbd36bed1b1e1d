"""Golden-model fp32 training on a memory plan: every tensor of a step lives in a :class:`BufferPool`.

:func:`net_of_model` describes a :mod:`reference.models` model as a :class:`~reference.nets.Net`,
:func:`reference.memplan.plan` schedules one training step of it, and :class:`PooledStep`
executes that schedule op by op: before op ``i`` it allocates ``plan.allocs_before(i)``, runs
the op with every output written in place (``out=``) into its pool buffer, then frees
``plan.frees_after(i)``. Parameters and momentum velocities are allocated once. With
``BufferPool.from_plan`` all buffers are views into one arena of ``plan.peak_arena`` bytes at
the planned offsets, and the pool refuses any allocation the plan does not allow.

Identical results. The kernels repeat :class:`reference.layers.FloatBackend`'s arithmetic
operation for operation (same matrix multiplies on the same contiguous operands, the same
elementwise roundings, SGD as the same AXPY chain), so a run on any schedule gives the same
float32 bits as :func:`reference.train.train` (tests compare whole runs). Where the layers keep
state that the plan does not model, the pooled step recomputes it or stores it smaller:

- a convolution's im2col matrix is rebuilt from the input in ``bwd_dW`` (the layer keeps it
  from the forward pass), directly in transposed order;
- ReLU's backward reads its output (the layer: its input; ``y > 0`` iff ``x > 0``);
- a linear layer adds the bias in place (the layer keeps the pre-bias product);
- max pooling keeps the window index as one byte (the layer: an int64 argmax); ties go to
  the first maximum, as ``np.argmax``;
- ``loss.y`` holds the loss gradient ``(softmax - onehot) / N`` in float32, computed in
  float64 by :func:`reference.layers.softmax_cross_entropy` as the trainer does.

The fused ``dW -> W`` update (``BackwardOrder.FUSED``) computes rows ``r0:r1`` of
``dW = x.T @ dy`` with the same ``np.matmul`` on the row slice ``x.T[r0:r1]`` and applies them
(the same SGD chain, elementwise) to ``W[r0:r1]`` at once, in the plan's
:func:`~reference.memplan.fused_row_blocks` (``plan.fused_rows`` = 48 rows, a multiple of the
row tile of OpenBLAS's float32 kernels, never a one-row block). Each element is then summed as
in the whole product: bit-identical on OpenBLAS's Haswell kernels for every shape tried, on its
SkylakeX kernels for the project's models but not every shape (docs/memplan.md). Other block
sizes (``fused_rows=1``, the old one-row update) differ in the last bits.

Only fp32: the dfp modes keep :class:`~reference.formats.DfpTensor` words as int64 (8 bytes per
element whatever the width) and their engine allocates its results, so a pool of
``width.bits // 8``-byte buffers cannot hold them. They can run the schedule's *order* (each
layer updated right after its backward) through :func:`layerwise_update_hooks`; that is
bit-identical only when no weight update rounds stochastically (see there).

Dropout and LRN (no such layer in :mod:`reference.models`) are not executed.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .formats import Width
from .layers import Conv2d, Flatten, FloatBackend, Linear, MaxPool2d, Ref, ReLU, im2col, softmax_cross_entropy
from .memplan import (
    FUSED_ROWS,
    BackwardOrder,
    BufferKind,
    BufferPool,
    Op,
    Plan,
    Strategy,
    check_plan,
    fused_row_blocks,
    fused_tile_rows,
    plan,
)
from .models import Model, build_model
from .nets import Net, digits_cnn

if TYPE_CHECKING:
    from .data import Dataset
    from .layers import Layer
    from .train import Hooks, Session, TrainConfig, TrainResult

#: Arena granule of pooled plans: offsets stay aligned for float32 (and cache lines).
POOL_ALIGN = 64

_F32 = np.dtype(np.float32)


def net_of_model(model: Model, name: str | None = None) -> Net:
    """The :class:`~reference.nets.Net` of ``model`` (its description, named for its input shape)."""
    h, w, c = model.image_hwc
    return Net(name or f"{model.net.name}_{h}x{w}x{c}", model.net.input_shape, model.net.layers)


def plan_for_model(model: Model, batch: int, strategy: Strategy, momentum: bool, fused: bool = True,
                   workspace: bool = True, orders: dict[str, BackwardOrder] | None = None,
                   fused_rows: int = FUSED_ROWS) -> Plan:
    """The checked fp32 plan the pooled trainer runs (arena granule :data:`POOL_ALIGN`).

    With ``workspace`` (default) every convolution op's im2col matrix is a planned buffer of
    that op, so the pool holds it too (see ``plan(workspace=True)``). ``fused``, ``orders``
    and ``fused_rows`` go to :func:`reference.memplan.plan`.
    """
    p = plan(net_of_model(model), batch, Width.W32, strategy, align=POOL_ALIGN, orders=orders, momentum=momentum,
             fused=fused, workspace=workspace, fused_rows=fused_rows)
    check_plan(p)
    return p


def _layouts(model: Model, batch: int, fused_rows: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every tensor a plan of ``model`` can name, in the layers' layouts."""
    n = batch
    h, w, c = model.image_hwc
    u8, i32 = np.dtype(np.uint8), np.dtype(np.int32)
    shape = (n * h * w, c) if model.spatial_input else (n, h * w * c)
    out: dict[str, tuple[tuple[int, ...], np.dtype]] = {"input": (shape, _F32), "labels": ((n,), i32)}
    for la in model.layers:
        if isinstance(la, Flatten):
            continue
        if isinstance(la, Linear):
            shape = (n * la.ho * la.wo, la.out_features) if isinstance(la, Conv2d) else (n, la.out_features)
            for p, t in ((la.weight, "W"), (la.bias, "b")):
                for prefix in ("", "d", "v"):
                    out[f"{la.name}.{prefix}{t}"] = (p.shape, _F32)
            out[f"{la.name}.dWtile"] = ((fused_tile_rows(la.in_features, fused_rows), la.out_features), _F32)
            if isinstance(la, Conv2d):
                kk = la.k * la.k
                out[f"{la.name}.cols"] = ((n * la.ho * la.wo, kk * la.c), _F32)
                out[f"{la.name}.colsT"] = ((kk * la.c, n * la.ho * la.wo), _F32)
                out[f"{la.name}.dcols"] = ((n * la.h * la.w, kk * la.out_features), _F32)
        elif isinstance(la, MaxPool2d):
            shape = (n * la.out_hwc[0] * la.out_hwc[1], la.c)
            out[f"{la.name}.mask"] = ((n, *la.out_hwc), u8)
        out[f"{la.name}.y"] = out[f"{la.name}.dy"] = (shape, _F32)
    classes = model.layers[-1].out_features
    out["loss.y"] = ((n, classes), _F32)
    return out


def _im2col_into(dst6: np.ndarray, x: np.ndarray, n: int, h: int, w: int, c: int, k: int, pad: int) -> None:
    """``dst6[n, oy, ox, ky, kx, c] = x[n, oy+ky-pad, ox+kx-pad, c]``, zero outside: im2col with no temporary.

    ``dst6`` is any 6-D view in that axis order (the ``[N*Ho*Wo, k*k*C]`` matrix or its
    transpose, reshaped); same values as :func:`reference.layers.im2col` (exact data movement).
    """
    x4 = x.reshape(n, h, w, c)
    ho, wo = dst6.shape[1], dst6.shape[2]
    dst6[...] = 0
    for ky in range(k):
        y0, y1 = max(0, pad - ky), min(ho, h + pad - ky)
        for kx in range(k):
            x0, x1 = max(0, pad - kx), min(wo, w + pad - kx)
            if y0 < y1 and x0 < x1:
                dst6[:, y0:y1, x0:x1, ky, kx, :] = x4[:, y0 + ky - pad:y1 + ky - pad, x0 + kx - pad:x1 + kx - pad, :]


def _im2col_t(x: np.ndarray, n: int, h: int, w: int, c: int, k: int, pad: int) -> np.ndarray:
    """``np.ascontiguousarray(im2col(...).T)`` built in one copy (exact data movement)."""
    x4 = x.reshape(n, h, w, c)
    if pad:
        x4 = np.pad(x4, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x4, (k, k), axis=(1, 2))  # [N, Ho, Wo, C, k, k]
    ho, wo = win.shape[1], win.shape[2]
    return np.ascontiguousarray(win.transpose(4, 5, 3, 0, 1, 2)).reshape(k * k * c, n * ho * wo)


class PooledStep:
    """Executes ``plan``'s operations for ``model`` with every tensor in ``pool``.

    Parameters
    ----------
    model
        The model the plan was made for (:func:`plan_for_model`); only its layer geometry is used.
    plan
        A plan of ``net_of_model(model)`` at 32-bit width.
    pool
        ``BufferPool.from_plan(plan)`` (one arena) or ``BufferPool()`` (one allocation per buffer).

    Raises
    ------
    ValueError
        If the plan is not 32-bit or a planned buffer's size differs from the tensor it holds.
    """

    def __init__(self, model: Model, plan: Plan, pool: BufferPool) -> None:
        if plan.width is not Width.W32:
            raise ValueError(f"pooled: plan width {plan.width.bits} bits: the pooled trainer is fp32 only")
        self.model, self.plan, self.pool = model, plan, pool
        self.layers = {la.name: la for la in model.layers}
        self.layout = _layouts(model, plan.batch, plan.fused_rows)
        for t, b in plan.storage.items():
            if t not in self.layout:
                raise ValueError(f"pooled: the plan names tensor {t!r}, which the model does not have")
            shape, dt = self.layout[t]
            nbytes = int(np.prod(shape)) * dt.itemsize
            if nbytes != plan.buffers[b].nbytes:
                raise ValueError(f"pooled: tensor {t!r} {shape} {dt} is {nbytes} bytes, buffer {b!r} is planned "
                                 f"at {plan.buffers[b].nbytes}")
        self.loss = 0.0
        self.correct = 0

    # -- parameters ---------------------------------------------------------------------

    def load_params(self, values: dict[str, np.ndarray]) -> None:
        """Allocate the parameter buffers and load ``values`` (model names, float) as float32; velocities 0."""
        for b, buf in self.plan.buffers.items():
            if buf.kind is BufferKind.PARAM:
                self.pool.alloc(b, buf.nbytes, np.uint8)
        for la in self.model.layers:
            for p, t in ((getattr(la, "weight", None), "W"), (getattr(la, "bias", None), "b")):
                if p is None:
                    continue
                self.view(f"{la.name}.{t}")[...] = np.asarray(values[p.name], dtype=np.float64)
                if f"{la.name}.v{t}" in self.plan.storage:
                    self.view(f"{la.name}.v{t}")[...] = 0

    def params(self) -> dict[str, np.ndarray]:
        """Copies of the current parameters under the model's names (``conv1.weight``, ...)."""
        out = {}
        for la in self.model.layers:
            if isinstance(la, Linear):
                out[la.weight.name] = self.view(f"{la.name}.W").copy()
                out[la.bias.name] = self.view(f"{la.name}.b").copy()
        return out

    def bind(self, be: FloatBackend) -> None:
        """Point the model's parameters at the pool's arrays (for evaluation with the layers)."""
        for la in self.model.layers:
            if isinstance(la, Linear):
                la.weight.value = Ref(self.view(f"{la.name}.W"), la.weight.w_tid)
                la.bias.value = Ref(self.view(f"{la.name}.b"), la.bias.w_tid)

    # -- execution ----------------------------------------------------------------------

    def view(self, t: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Tensor ``t`` as an array over its pool buffer (``shape``: a reshape, e.g. flattened)."""
        lay_shape, dt = self.layout[t]
        a = self.pool[self.plan.storage[t]].view(dt).reshape(lay_shape)
        return a if shape is None else a.reshape(shape)

    def run(self, x: np.ndarray, y: np.ndarray, lr: float, momentum: float, weight_decay: float,
            before_op: Callable[[int], None] | None = None, after_op: Callable[[int], None] | None = None,
            ) -> tuple[float, int]:
        """One training step on the input matrix ``x`` (``model.input_matrix``) and labels ``y``.

        ``before_op(i)`` runs before op ``i``'s allocations, ``after_op(i)`` after the op and
        before its frees. Returns the loss and the number of correct predictions.
        """
        p = self.plan
        hyper = (np.float32(-lr), np.float32(momentum), np.float32(weight_decay))
        for i, op in enumerate(p.ops):
            if before_op is not None:
                before_op(i)
            for b in p.allocs_before(i, params=False):
                self.pool.alloc(b, p.buffers[b].nbytes, np.uint8)
            self._op(op, x, y, hyper)
            if after_op is not None:
                after_op(i)
            for b in p.frees_after(i, params=False):
                self.pool.free(b)
        return self.loss, self.correct

    def _in(self, la: Linear, t: str) -> np.ndarray:
        n = self.plan.batch
        return self.view(t, (n * la.h * la.w, la.c) if isinstance(la, Conv2d) else (n, la.in_features))

    def _op(self, op: Op, x: np.ndarray, y: np.ndarray, hyper: tuple[np.float32, np.float32, np.float32]) -> None:
        kind, _, name = op.name.partition(":")
        n = self.plan.batch
        la = self.layers.get(name)
        if kind == "load":
            self.view("input")[...] = x
            self.view("labels")[...] = y
        elif kind == "fwd" and name == "loss":
            self.loss, g, self.correct = softmax_cross_entropy(self.view(op.reads[0]), self.view("labels"))
            self.view("loss.y")[...] = g
        elif kind == "bwd" and name == "loss":
            np.copyto(self.view(op.writes[0]), self.view("loss.y"))
        elif isinstance(la, Linear):
            self._param_op(kind, la, op, hyper)
        elif isinstance(la, ReLU) and kind == "fwd":
            np.maximum(self.view(op.reads[0]), 0, out=self.view(op.writes[0]))
        elif isinstance(la, ReLU) and kind == "bwd":
            out, dy = self.view(op.writes[0]), self.view(f"{name}.dy")
            drop = np.greater(self.view(f"{name}.y"), 0)
            np.logical_not(drop, out=drop)
            if self.plan.storage[op.writes[0]] != self.plan.storage[f"{name}.dy"]:
                np.copyto(out, dy)
            np.copyto(out, 0, where=drop)
        elif isinstance(la, MaxPool2d) and kind == "fwd":
            h2, w2, c = la.out_hwc
            x6 = self.view(op.reads[0]).reshape(n, h2, 2, w2, 2, c)
            out, mask = self.view(f"{name}.y").reshape(n, h2, w2, c), self.view(f"{name}.mask")
            np.copyto(out, x6[:, :, 0, :, 0, :])
            mask[...] = 0
            gt = np.empty(out.shape, dtype=bool)
            for j in (1, 2, 3):  # window index 2*row + column; strict '>' keeps the first maximum
                s = x6[:, :, j // 2, :, j % 2, :]
                np.greater(s, out, out=gt)
                np.copyto(out, s, where=gt)
                np.copyto(mask, j, where=gt)
        elif isinstance(la, MaxPool2d) and kind == "bwd":
            h2, w2, c = la.out_hwc
            dx6 = self.view(op.writes[0]).reshape(n, h2, 2, w2, 2, c)
            dy4, mask = self.view(f"{name}.dy").reshape(n, h2, w2, c), self.view(f"{name}.mask")
            dx6[...] = 0
            sel = np.empty(dy4.shape, dtype=bool)
            for j in range(4):
                np.equal(mask, j, out=sel)
                np.copyto(dx6[:, :, j // 2, :, j % 2, :], dy4, where=sel)
        else:
            raise ValueError(f"pooled: cannot execute op {op.name!r} (layer type {type(la).__name__})")

    def _param_op(self, kind: str, la: Linear, op: Op,
                  hyper: tuple[np.float32, np.float32, np.float32]) -> None:
        L, n = la.name, self.plan.batch
        conv = isinstance(la, Conv2d)
        ws = f"{L}.cols" in self.plan.storage  # im2col matrices planned as workspace buffers
        if kind == "fwd":
            xin = self._in(la, op.reads[0])
            if conv and ws:
                cols = self.view(f"{L}.cols")
                _im2col_into(cols.reshape(n, la.ho, la.wo, la.k, la.k, la.c), xin, n, la.h, la.w, la.c, la.k, la.pad)
            else:
                cols = im2col(xin, n, la.h, la.w, la.c, la.k, la.pad) if conv else xin
            out = self.view(f"{L}.y")
            np.matmul(cols, self.view(f"{L}.W"), out=out)
            np.add(out, self.view(f"{L}.b"), out=out)
        elif kind == "bwd_dx":
            dy, wm = self.view(f"{L}.dy"), self.view(f"{L}.W")
            dx = self._in(la, op.writes[0])
            if conv:
                k, c, o = la.k, la.c, la.out_features
                if ws:
                    cols = self.view(f"{L}.dcols")
                    _im2col_into(cols.reshape(n, la.h, la.w, k, k, o), dy, n, la.ho, la.wo, o, k, k - 1 - la.pad)
                else:
                    cols = im2col(dy, n, la.ho, la.wo, o, k, k - 1 - la.pad)
                wf = wm.reshape(k, k, c, o)[::-1, ::-1].transpose(0, 1, 3, 2).reshape(k * k * o, c)
                np.matmul(cols, np.ascontiguousarray(wf), out=dx)
            else:
                np.matmul(dy, np.ascontiguousarray(wm.T), out=dx)
        elif kind in ("bwd_dW", "bwd_dW+update"):
            xin, dy = self._in(la, op.reads[0]), self.view(f"{L}.dy")
            if conv and ws:
                ct = self.view(f"{L}.colsT")
                dst = ct.reshape(la.k, la.k, la.c, n, la.ho, la.wo).transpose(3, 4, 5, 0, 1, 2)
                _im2col_into(dst, xin, n, la.h, la.w, la.c, la.k, la.pad)
            elif conv:
                ct = _im2col_t(xin, n, la.h, la.w, la.c, la.k, la.pad)
            else:
                ct = np.ascontiguousarray(xin.T)
            np.matmul(np.ones((1, dy.shape[0]), dtype=_F32), dy, out=self.view(f"{L}.db"))
            if kind == "bwd_dW":
                np.matmul(ct, dy, out=self.view(f"{L}.dW"))
                return
            tile, wm = self.view(f"{L}.dWtile"), self.view(f"{L}.W")
            vm = self.view(f"{L}.vW") if f"{L}.vW" in self.plan.storage else None
            # rows r0:r1 of dW = ct @ dy by the same matrix multiply on a row slice of ct, applied at once
            for r0, r1 in fused_row_blocks(wm.shape[0], self.plan.fused_rows):
                g = tile[:r1 - r0]
                np.matmul(ct[r0:r1], dy, out=g)
                _sgd(wm[r0:r1], g, None if vm is None else vm[r0:r1], hyper)
            _sgd(self.view(f"{L}.b"), self.view(f"{L}.db"), self._velocity(L, "b"), hyper)
        elif kind == "update":
            for t in ("W", "b"):
                _sgd(self.view(f"{L}.{t}"), self.view(f"{L}.d{t}"), self._velocity(L, t), hyper)
        else:
            raise ValueError(f"pooled: cannot execute op {op.name!r}")

    def _velocity(self, layer: str, t: str) -> np.ndarray | None:
        name = f"{layer}.v{t}"
        return self.view(name) if name in self.plan.storage else None


def _sgd(w: np.ndarray, g: np.ndarray, v: np.ndarray | None, hyper: tuple[np.float32, np.float32, np.float32]) -> None:
    """:func:`reference.layers.sgd_step` on one parameter, in place: the same AXPY roundings.

    ``g = wd*w + g`` (if wd); ``v = m*v + g`` (with a velocity); ``w = -lr*v + w``.
    """
    neg_lr, m, wd = hyper
    if wd:
        np.add(wd * w, g, out=g)
    if v is not None:
        np.multiply(v, m, out=v)
        np.add(v, g, out=v)
        g = v
    np.add(neg_lr * g, w, out=w)


# ---------------------------------------------------------------------------------------
# Training and measurement


def evaluate(model: Model, be: FloatBackend, x: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    """Test accuracy with the model's layers (as :mod:`reference.train` evaluates fp32 runs)."""
    from .isa import MAX_DIM

    h, w, _ = model.image_hwc
    batch = max(1, min(batch, MAX_DIM // (h * w)))
    correct = 0
    for i in range(0, len(x), batch):
        logits = model.forward(be, be.load(model.input_tid, model.input_matrix(x[i:i + batch])))
        correct += int(np.count_nonzero(np.argmax(be.to_float(logits), axis=1) == y[i:i + batch]))
    return correct / len(x)


def train_pooled(cfg: TrainConfig, data: Dataset, strategy: Strategy, progress: bool = False, arena: bool = True,
                 fused: bool = True, orders: dict[str, BackwardOrder] | None = None,
                 fused_rows: int = FUSED_ROWS) -> TrainResult:
    """:func:`reference.train.train` for ``precision=fp32`` with every step run on ``strategy``'s plan.

    Same initialisation, shuffling, learning-rate schedule and evaluation as the trainer, so
    the returned :class:`~reference.train.TrainResult` has the same parameters and epoch
    metrics, plus ``metrics["memplan"]`` (the plan's peaks and orders and the pool's high water).
    ``arena=False`` uses one allocation per buffer instead of the planned arena; ``fused``,
    ``orders`` and ``fused_rows`` go to :func:`plan_for_model`.

    Raises
    ------
    ValueError
        If ``cfg.precision`` is not fp32 or the batch exceeds the training set.
    """
    from threadpoolctl import threadpool_limits

    from .train import Precision

    if cfg.precision is not Precision.FP32:
        raise ValueError(f"train: memplan={strategy.name.lower()} needs precision fp32, got {cfg.precision.value} "
                         "(dfp tensors are int64 words; see reference/pooled.py)")
    with threadpool_limits(1):
        return _train_pooled(cfg, data, strategy, progress, arena, fused, orders, fused_rows)


def _train_pooled(cfg: TrainConfig, data: Dataset, strategy: Strategy, progress: bool, arena: bool,
                  fused: bool, orders: dict[str, BackwardOrder] | None, fused_rows: int) -> TrainResult:
    from tqdm import tqdm

    from .config import PRESETS
    from .train import TrainResult

    core = PRESETS[cfg.core]
    model = build_model(cfg.model, data.image_hwc, data.classes, core.tensor_ids)
    values = model.init_params(np.random.default_rng([cfg.seed, 1]))
    n = len(data.x_train)
    if n < cfg.batch:
        raise ValueError(f"train: batch={cfg.batch} exceeds the {n} training images")
    steps = n // cfg.batch
    p = plan_for_model(model, cfg.batch, strategy, momentum=cfg.momentum != 0, fused=fused, orders=orders,
                       fused_rows=fused_rows)
    pool = BufferPool.from_plan(p) if arena else BufferPool()
    step = PooledStep(model, p, pool)
    step.load_params(values)
    be = FloatBackend(np.float32)
    step.bind(be)
    shuffle_rng = np.random.default_rng([cfg.seed, 3])
    epochs: list[dict[str, Any]] = []
    times: list[float] = []
    cpus: list[float] = []
    for ep in range(cfg.epochs):
        perm = shuffle_rng.permutation(n)
        lr = cfg.lr_schedule.at(cfg.lr, ep, cfg.epochs)
        loss_sum, correct = 0.0, 0
        t0, c0 = time.perf_counter(), time.process_time()
        for s in tqdm(range(steps), desc=f"epoch {ep + 1}/{cfg.epochs} fp32 {strategy.name.lower()}",
                      disable=not progress, leave=False):
            idx = perm[s * cfg.batch:(s + 1) * cfg.batch]
            loss, c = step.run(model.input_matrix(data.x_train[idx]), data.y_train[idx], lr, cfg.momentum,
                               cfg.weight_decay)
            if not np.isfinite(loss):
                raise ValueError(f"train: loss became {loss} at iteration {ep * steps + s}")
            loss_sum += loss
            correct += c
        times.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        test_acc = evaluate(model, be, data.x_test, data.y_test)
        epochs.append({"epoch": ep + 1, "lr": lr, "loss": loss_sum / steps, "train_acc": correct / (steps * cfg.batch),
                       "test_acc": test_acc, "time_s": times[-1], "cpu_s": cpus[-1]})
        if progress:
            tqdm.write(f"epoch {ep + 1}: loss {epochs[-1]['loss']:.4f}  train {epochs[-1]['train_acc']:.4f}  "
                       f"test {test_acc:.4f}  ({times[-1]:.2f} s)")
    metrics: dict[str, Any] = {
        "train_config": cfg.to_dict(),
        "data": {"name": data.name, "train": int(n), "test": int(len(data.x_test)), "image_hwc": list(data.image_hwc)},
        "core": core.to_dict(), "core_digest": core.digest(),
        "iterations_per_epoch": steps,
        "epochs": epochs,
        "final": {"test_acc": epochs[-1]["test_acc"], "loss": epochs[-1]["loss"],
                  "mean_epoch_time_s": float(np.mean(times)), "mean_epoch_cpu_s": float(np.mean(cpus))},
        "tensors": {},
        "memplan": {"strategy": strategy.name.lower(), "net": p.net_name, "batch": p.batch, "align": p.align,
                    "arena": arena, "fused": fused, "fused_rows": p.fused_rows, "peak_live_bytes": p.peak_live,
                    "peak_arena_bytes": p.peak_arena, "pool_peak_bytes": pool.peak_bytes,
                    "orders": {k: v.name.lower() for k, v in p.orders.items()}},
    }
    return TrainResult(metrics, None, model, None, times, cpus)


@dataclass(frozen=True)
class StepMemory:
    """tracemalloc measurement of one pooled training step against its plan.

    Members
    -------
    predicted
        What the plan says the step needs: ``peak_arena`` (arena pool) or ``peak_live``
        (one allocation per buffer).
    measured
        tracemalloc's peak during the step (parameters included) over the memory traced before it.
    per_op
        Per op: (name, bytes the pool holds during it, tracemalloc peak during it).
    """

    strategy: Strategy
    arena: bool
    predicted: int
    measured: int
    per_op: tuple[tuple[str, int, int], ...]

    @property
    def excess(self) -> int:
        """Measured minus predicted: NumPy temporaries and Python objects the plan does not model."""
        return self.measured - self.predicted

    @property
    def worst_op(self) -> tuple[str, int]:
        """The op with the largest temporaries beyond the pool's buffers, and their bytes."""
        name, held, peak = max(self.per_op, key=lambda r: r[2] - r[1])
        return name, peak - held


def measure_step(model: Model, x: np.ndarray, y: np.ndarray, strategy: Strategy, arena: bool = True,
                 values: dict[str, np.ndarray] | None = None, lr: float = 0.05, momentum: float = 0.9,
                 weight_decay: float = 1e-4, fused: bool = True,
                 orders: dict[str, BackwardOrder] | None = None) -> StepMemory:
    """Run one pooled step of ``model`` on the batch ``x`` (model input matrix), ``y`` under tracemalloc.

    The plan, the model and the batch are made before tracing starts; the pool (and its arena),
    the parameters and everything the step allocates are traced. ``fused`` and ``orders`` go
    to :func:`plan_for_model`.
    """
    from threadpoolctl import threadpool_limits

    p = plan_for_model(model, len(y), strategy, momentum=momentum != 0, fused=fused, orders=orders)
    if values is None:
        values = model.init_params(np.random.default_rng([0, 1]))
    per_op: list[tuple[str, int, int]] = []
    held = (lambda i: p.peak_arena) if arena else (lambda i: p.live[i])
    with threadpool_limits(1):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            step = PooledStep(model, p, BufferPool.from_plan(p) if arena else BufferPool())
            step.load_params(values)
            step.run(x, y, lr, momentum, weight_decay,
                     before_op=lambda i: tracemalloc.reset_peak(),
                     after_op=lambda i: per_op.append((p.ops[i].name, held(i),
                                                       tracemalloc.get_traced_memory()[1] - base)))
            measured = max(r[2] for r in per_op)
        finally:
            tracemalloc.stop()
    return StepMemory(strategy, arena, p.peak_arena if arena else p.peak_live, measured, tuple(per_op))


# ---------------------------------------------------------------------------------------
# Scratchpad per layer, for the cycle simulator


def layer_scratchpad_bytes(batch: int, width: Width = Width.W16, strategy: Strategy = Strategy.REORDER,
                           net: Net | None = None, momentum: bool = True) -> dict[str, int]:
    """Per layer of ``net`` (default: the digits CNN), the scratchpad bytes its largest op touches.

    ``Plan.layer_working_sets()`` of the step at ``batch`` and ``width``: the distinct buffers
    one op reads or writes (a parameter update with momentum touches W, b, dW, db and both
    velocities). Keys are the net's layer names plus ``input`` (the load) and ``loss``; a
    flatten layer has no op and no key.
    """
    return plan(net if net is not None else digits_cnn(), batch, width, strategy,
                momentum=momentum).layer_working_sets()




# ---------------------------------------------------------------------------------------
# dfp modes: the paper's update order without the pool


def layerwise_update_hooks(session: Session) -> Hooks:
    """:class:`reference.train.Hooks` that update each layer's parameters right after its backward.

    The order of the paper's schedule (and of every :class:`~reference.memplan.Strategy` but
    CONVENTIONAL), for any precision, without the pool: ``run_epochs(s, layerwise_update_hooks(s))``.
    In dfp modes the results equal the end-of-backward update only if no weight update rounds
    stochastically: the engine's generator bank is one stream, so updating fc2 before conv1
    hands them other random words (``tests/reference/test_pooled.py`` shows both cases).
    """
    from .layers import sgd_step
    from .train import Hooks

    class _Layerwise(Hooks):
        def __init__(self) -> None:
            super().__init__(self._ready)
            self.lr = 0.0

        def begin_epoch(self, lr: float) -> None:
            self.lr = lr

        def _ready(self, layer: Layer) -> None:
            cfg = session.cfg
            sgd_step(session.be, layer.params(), self.lr, cfg.momentum, cfg.weight_decay)

        def update(self, s: Session, lr: float) -> None:  # done per layer in _ready
            return None

    return _Layerwise()


def scratchpad_by_layer_pass(batch: int, width: Width = Width.W16, strategy: Strategy = Strategy.REORDER,
                             net: Net | None = None, momentum: bool = True) -> dict[tuple[str, str], int]:
    """As :func:`layer_scratchpad_bytes`, per ``(layer, pass)`` with pass ``forward``/``backward``/``update``.

    The keys match ``sim.replay``'s ``by_layer_pass`` groups (``Phase`` and ``sim.core.Pass``
    share these values); a fused dW->W op counts as ``update``.
    """
    p = plan(net if net is not None else digits_cnn(), batch, width, strategy, momentum=momentum)
    out: dict[tuple[str, str], int] = {}
    for i, o in enumerate(p.ops):
        key = (o.layer, o.phase.value)
        out[key] = max(out.get(key, 0), p.working_set(i))
    return out

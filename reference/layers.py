"""Layers, loss and SGD written once for two backends: float NumPy and the DLU engine.

A layer computes with a *backend*: :class:`FloatBackend` (plain NumPy, float32 for training or
float64 for gradient checks) or :class:`DfpBackend` (every arithmetic operation is an
:meth:`reference.engine.Engine.run` command). Values travel as :class:`Ref`: a tensor and the
tensor id it belongs to. Each tensor role of each layer (activation, error, weight, gradient,
velocity, ...) has its own tensor id, allocated by :class:`TensorIds` with a
:class:`TensorClass` that mixed-precision configs use to pick a width and rounding.

Layout. Dense activations are ``[N, F]``. Convolution activations are ``[N*H*W, C]``: one row
per pixel (NHWC order), one column per channel, so a convolution is one matrix multiply of the
im2col matrix ``[N*H*W, k*k*C]`` by the weights ``[k*k*C, O]``. im2col, transposes, flatten,
max-pool selection and scatter are exact integer data movement on the host
(:meth:`FloatBackend.host` / :meth:`DfpBackend.host`): they never round.

Per layer the backward pass is two separate calls, :meth:`Layer.backward_input` (the error of
the input, dX) and :meth:`Layer.backward_weights` (dW, db), so a scheduler can reorder them.

Mixed precision. A compute command needs all operands at the destination's width
(:mod:`reference.isa`); :class:`DfpBackend` inserts a CONVERT into a *shadow* tensor id when an
operand has another width. The shadow's point position starts at the source's shifted by the
width difference (an exact widening) and is then updated by the policy like any other id.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import kernels
from .engine import Engine
from .formats import FRAC_MAX, FRAC_MIN, DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width, setting_of
from .ops import Op, scalar_to_dfp
from .stats import float_stats, next_frac


class TensorClass(enum.Enum):
    """Role of a tensor id; a mixed-precision config gives each class a width and rounding."""

    ACTIVATION = "activation"
    ERROR = "error"
    WEIGHT = "weight"
    GRADIENT = "gradient"
    VELOCITY = "velocity"
    #: Host-made constants (the ones row of the bias gradient) and converted copies.
    CONSTANT = "constant"
    SHADOW = "shadow"


@dataclass(frozen=True)
class TensorInfo:
    tid: int
    name: str
    cls: TensorClass


@dataclass
class TensorIds:
    """Allocator of tensor ids below ``limit`` (the core's ``tensor_ids``)."""

    limit: int
    infos: list[TensorInfo] = field(default_factory=list)

    def new(self, name: str, cls: TensorClass) -> int:
        tid = len(self.infos)
        if tid >= self.limit:
            raise ValueError(f"tensor ids: {name!r} needs id {tid} but the core has only {self.limit} "
                             f"(tensor_ids); use a smaller model or a larger config")
        self.infos.append(TensorInfo(tid, name, cls))
        return tid

    def name(self, tid: int) -> str:
        return self.infos[tid].name

    def cls(self, tid: int) -> TensorClass:
        return self.infos[tid].cls


@dataclass(frozen=True, eq=False)
class Ref:
    """A backend tensor (float ndarray or :class:`DfpTensor`) and the tensor id it belongs to."""

    t: Any
    tid: int


# ---------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------


class FloatBackend:
    """Plain NumPy arithmetic in ``dtype``; ``observer(tid, values)`` sees every result."""

    def __init__(self, dtype: type = np.float32, observer: Callable[[int, np.ndarray], None] | None = None):
        self.dtype = np.dtype(dtype)
        self.observer = observer

    def _out(self, tid: int, x: np.ndarray) -> Ref:
        x = np.asarray(x, dtype=self.dtype)
        if self.observer is not None:
            self.observer(tid, x)
        return Ref(x, tid)

    def load(self, tid: int, x: np.ndarray) -> Ref:
        return self._out(tid, np.array(x, dtype=self.dtype, copy=True))

    def zeros(self, tid: int, shape: tuple[int, int]) -> Ref:
        return Ref(np.zeros(shape, dtype=self.dtype), tid)

    def matmul(self, dst: int, a: Ref, b: Ref) -> Ref:
        return self._out(dst, a.t @ b.t)

    def add(self, dst: int, a: Ref, b: Ref) -> Ref:
        return self._out(dst, a.t + b.t)

    def relu(self, dst: int, x: Ref) -> Ref:
        return self._out(dst, np.maximum(x.t, 0))

    def relu_backward(self, dst: int, dy: Ref, x: Ref) -> Ref:
        return self._out(dst, np.where(x.t > 0, dy.t, 0))

    def axpy(self, dst: int, alpha: float, x: Ref, y: Ref) -> Ref:
        return self._out(dst, self.dtype.type(alpha) * x.t + y.t)

    def host(self, r: Ref, fn: Callable[[np.ndarray], np.ndarray]) -> Ref:
        return Ref(np.ascontiguousarray(fn(r.t)), r.tid)

    def ones_row(self, n: int, dst: int) -> Ref:
        return Ref(np.ones((1, n), dtype=self.dtype), -1)

    def concat(self, refs: list[Ref], axis: int) -> Ref:
        if len(refs) == 1:
            return refs[0]
        return Ref(np.concatenate([r.t for r in refs], axis=axis), refs[0].tid)

    def const(self, key: str, values: np.ndarray, dst: int) -> Ref:
        return Ref(np.asarray(values, dtype=self.dtype), -1)

    def host_float(self, dst: int, x: np.ndarray) -> Ref:
        return self._out(dst, x)

    def to_float(self, r: Ref) -> np.ndarray:
        return np.asarray(r.t, dtype=np.float64)


class DfpBackend:
    """Every arithmetic operation is a command of ``engine``; operands are converted to the
    destination's width first (see the module docstring)."""

    def __init__(self, engine: Engine, ids: TensorIds):
        self.engine = engine
        self.ids = ids
        self._shadows: dict[tuple[int, Width], int] = {}
        self._ones: dict[Width, int] = {}
        self._scalars: dict[tuple[float, Width], tuple[int, int]] = {}
        self._consts: dict[tuple[str, Width], Ref] = {}

    def with_engine(self, engine: Engine) -> DfpBackend:
        """A backend on another engine (an evaluation fork) sharing this one's tensor ids."""
        be = DfpBackend(engine, self.ids)
        be._shadows, be._ones, be._scalars = self._shadows, self._ones, self._scalars
        be._consts = self._consts
        return be

    def _width(self, tid: int) -> Width:
        return self.engine.setting(tid).fmt.width

    def shadow(self, tid: int, width: Width) -> int:
        """The tensor id holding ``tid``'s values converted to ``width`` (allocated on first use)."""
        key = (tid, width)
        if key not in self._shadows:
            src = self.engine.setting(tid)
            sid = self.ids.new(f"{self.ids.name(tid)}@{width.bits}", TensorClass.SHADOW)
            frac = int(np.clip(src.fmt.frac + width.bits - src.fmt.bits, FRAC_MIN, FRAC_MAX))
            self.engine.set_setting(sid, TensorSetting(DfpFormat(width, frac), RoundingMode.NEAREST_EVEN, True))
            self._shadows[key] = sid
        return self._shadows[key]

    def _at(self, r: Ref, width: Width) -> Ref:
        if r.t.fmt.width == width:
            return r
        sid = self.shadow(r.tid, width)
        return Ref(self.engine.run(Op.CONVERT, sid, [r.t], [r.tid]), sid)

    def _run(self, op: Op, dst: int, srcs: list[Ref], alpha: tuple[int, int] | None = None) -> Ref:
        w = self._width(dst)
        ts, tids = [], []
        for s in srcs:
            if s.t.fmt.width is not w:
                s = self._at(s, w)
            ts.append(s.t)
            tids.append(s.tid)
        return Ref(self.engine.run(op, dst, ts, tids, alpha), dst)

    def load(self, tid: int, x: np.ndarray) -> Ref:
        return Ref(self.engine.load(tid, x), tid)

    def zeros(self, tid: int, shape: tuple[int, int]) -> Ref:
        return Ref(DfpTensor(np.zeros(shape, dtype=np.int64), self.engine.setting(tid).fmt), tid)

    def matmul(self, dst: int, a: Ref, b: Ref) -> Ref:
        return self._run(Op.MATMUL, dst, [a, b])

    def add(self, dst: int, a: Ref, b: Ref) -> Ref:
        return self._run(Op.ADD, dst, [a, b])

    def relu(self, dst: int, x: Ref) -> Ref:
        return self._run(Op.RELU, dst, [x])

    def relu_backward(self, dst: int, dy: Ref, x: Ref) -> Ref:
        return self._run(Op.RELU_BACKWARD, dst, [dy, x])

    def scalar(self, alpha: float, dst: int) -> tuple[int, int]:
        """``alpha`` as (raw, frac) at ``dst``'s width; the host converts each once per width."""
        key = (float(alpha), self._width(dst))
        if key not in self._scalars:
            self._scalars[key] = scalar_to_dfp(*key)
        return self._scalars[key]

    def axpy(self, dst: int, alpha: float, x: Ref, y: Ref) -> Ref:
        return self._run(Op.AXPY, dst, [x, y], self.scalar(alpha, dst))

    def host(self, r: Ref, fn: Callable[[np.ndarray], np.ndarray]) -> Ref:
        d = np.ascontiguousarray(fn(r.t.data))
        if d.ndim == 2 and d.dtype == np.int64:  # moved values of a valid tensor: no range check needed
            return Ref(DfpTensor._trusted(d, r.t.fmt), r.tid)
        return Ref(DfpTensor(d, r.t.fmt), r.tid)

    def ones_row(self, n: int, dst: int) -> Ref:
        w = self._width(dst)
        if w not in self._ones:
            tid = self.ids.new(f"ones@{w.bits}", TensorClass.CONSTANT)
            self.engine.set_setting(tid, TensorSetting(DfpFormat(w, 0), RoundingMode.NEAREST_EVEN, False))
            self._ones[w] = tid
        return Ref(DfpTensor(np.ones((1, n), dtype=np.int64), DfpFormat(w, 0)), self._ones[w])

    def concat(self, refs: list[Ref], axis: int) -> Ref:
        """Results of one tensor id side by side: data movement.

        The parts normally share the id's format. A host re-run (:meth:`Engine.run`) of a later
        part lowers the id's point position mid-way; the host then re-formats the earlier parts to
        the last part's format, as it does for any value it carries (:func:`reference.train.reformat`:
        nearest even, saturated).
        """
        if len(refs) == 1:
            return refs[0]
        if any(r.tid != refs[0].tid for r in refs):
            raise ValueError(f"concat: parts of different tensor ids {sorted({r.tid for r in refs})}")
        fmt = refs[-1].t.fmt
        if any(r.t.fmt != fmt for r in refs):
            from .train import reformat

            refs = [r if r.t.fmt == fmt else Ref(reformat(r.t, fmt), r.tid) for r in refs]
        return Ref(DfpTensor._trusted(np.concatenate([r.t.data for r in refs], axis=axis), fmt), refs[0].tid)

    def const(self, key: str, values: np.ndarray, dst: int) -> Ref:
        """A host-made constant matrix at ``dst``'s width, rounded to nearest even.

        Its point position is the largest that holds ``max|values|``; it gets a CONSTANT tensor
        id (not auto-updated) per ``(key, width)`` on first use.
        """
        w = self._width(dst)
        ck = (key, w)
        if ck not in self._consts:
            v = np.asarray(values, dtype=np.float64)
            top = float(np.max(np.abs(v)))
            frac = int(np.clip(w.bits - 2 - int(np.floor(np.log2(top))) if top > 0 else 0, FRAC_MIN, FRAC_MAX))
            fmt = DfpFormat(w, frac)
            tid = self.ids.new(f"const.{key}@{w.bits}", TensorClass.CONSTANT)
            self.engine.set_setting(tid, TensorSetting(fmt, RoundingMode.NEAREST_EVEN, False))
            q = np.clip(np.rint(v * 2.0 ** frac), fmt.min_int, fmt.max_int).astype(np.int64)
            self._consts[ck] = Ref(DfpTensor(q, fmt), tid)
        return self._consts[ck]

    def host_float(self, dst: int, x: np.ndarray) -> Ref:
        """Float values the host computed (e.g. LRN) loaded into ``dst``, at the point position the
        policy picks for them (as the host does for the input images)."""
        eng = self.engine
        s = eng.setting(dst)
        frac = next_frac(float_stats(x, eng.cfg), s.fmt.width, s.fmt.frac, eng.cfg, eng.policy.threshold)
        eng.set_setting(dst, setting_of(s.fmt.width, frac, s.rounding, False))
        return Ref(eng.load(dst, x), dst)

    def to_float(self, r: Ref) -> np.ndarray:
        return r.t.to_float()


Backend = FloatBackend | DfpBackend


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class Param:
    """A trainable tensor: its value, gradient and velocity, each with its own tensor id."""

    name: str
    shape: tuple[int, int]
    w_tid: int
    g_tid: int
    v_tid: int
    value: Ref | None = None
    grad: Ref | None = None
    velocity: Ref | None = None

    @classmethod
    def make(cls, ids: TensorIds, name: str, shape: tuple[int, int]) -> Param:
        return cls(name, shape, ids.new(name, TensorClass.WEIGHT), ids.new(f"{name}.grad", TensorClass.GRADIENT),
                   ids.new(f"{name}.vel", TensorClass.VELOCITY))


class Layer:
    """Base class. ``in_err`` is the tensor id of the error of the layer's input (None: the
    first layer, whose input error is never computed); ``out_act``/``out_err`` are the ids of
    its output and of the error of its output."""

    name: str = "layer"
    in_err: int | None = None
    out_act: int = -1
    out_err: int = -1

    def params(self) -> list[Param]:
        return []

    def forward(self, be: Backend, x: Ref) -> Ref:
        raise NotImplementedError

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        raise NotImplementedError

    def backward_weights(self, be: Backend, dy: Ref) -> None:
        return None


def _he(rng: np.random.Generator, fan_in: int, shape: tuple[int, int]) -> np.ndarray:
    return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)


class Linear(Layer):
    """``y = x @ W + b`` with ``x [N, in_features]``, ``W [in_features, out_features]``, ``b [1, out]``."""

    def __init__(self, ids: TensorIds, name: str, in_features: int, out_features: int, in_err: int | None):
        if in_features < 1 or out_features < 1:
            raise ValueError(f"{name}: features must be >= 1, got {in_features} -> {out_features}")
        self.name, self.in_err = name, in_err
        self.in_features, self.out_features = in_features, out_features
        self.weight = Param.make(ids, f"{name}.weight", (in_features, out_features))
        self.bias = Param.make(ids, f"{name}.bias", (1, out_features))
        self.pre = ids.new(f"{name}.matmul", TensorClass.ACTIVATION)
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = ids.new(f"{name}.out.err", TensorClass.ERROR)
        self._x: Ref | None = None

    def params(self) -> list[Param]:
        return [self.weight, self.bias]

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {self.weight.name: _he(rng, self.in_features, self.weight.shape),
                self.bias.name: np.zeros(self.bias.shape)}

    def _cols(self, be: Backend, x: Ref) -> Ref:
        return x

    def forward(self, be: Backend, x: Ref) -> Ref:
        cols = self._cols(be, x)
        self._x = cols
        return be.add(self.out_act, be.matmul(self.pre, cols, self.weight.value), self.bias.value)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        return be.matmul(self.in_err, dy, be.host(self.weight.value, np.transpose))

    def backward_weights(self, be: Backend, dy: Ref) -> None:
        self.weight.grad = be.matmul(self.weight.g_tid, be.host(self._x, np.transpose), dy)
        self.bias.grad = be.matmul(self.bias.g_tid, be.ones_row(dy.t.shape[0], self.bias.g_tid), dy)


def im2col(x: np.ndarray, n: int, h: int, w: int, c: int, k: int, pad: int, stride: int = 1,
           pads: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """``[N*H*W, C]`` (NHWC rows) -> ``[N*Ho*Wo, k*k*C]`` patches, feature order (ky, kx, c).

    Zero padding ``pad`` on every side (or ``pads`` = top, bottom, left, right);
    ``Ho = (H + top + bottom - k) // stride + 1``. Pure data movement (a numba loop measured 2x
    slower than this strided copy for LeNet-5's shapes).
    """
    x4 = x.reshape(n, h, w, c)
    t, b, lf, r = pads if pads is not None else (pad, pad, pad, pad)
    if t or b or lf or r:
        x4 = np.pad(x4, ((0, 0), (t, b), (lf, r), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x4, (k, k), axis=(1, 2))  # [N, Ho, Wo, C, k, k]
    if stride > 1:
        win = win[:, ::stride, ::stride]
    ho, wo = win.shape[1], win.shape[2]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * ho * wo, k * k * c)


def _shape(r: Ref) -> tuple[int, ...]:
    return r.t.shape if isinstance(r.t, np.ndarray) else r.t.data.shape


def _data(r: Ref) -> np.ndarray:
    return r.t if isinstance(r.t, np.ndarray) else r.t.data


class Conv2d(Linear):
    """Convolution, ``k x k`` kernel, ``stride``, zero padding ``pad``, ``groups``, as im2col + matrix multiplies.

    Input ``[N*H*W, C]``, output ``[N*Ho*Wo, O]``; weights ``[k*k*C/g, O]`` (feature order ky, kx, c;
    group ``j`` owns output columns ``j*O/g ...``). Each group is one MATMUL command writing the
    layer's tensor id; the host places the groups' columns side by side (data movement).

    The input error is the full correlation of the output error, dilated by the stride and
    padded by ``k-1-pad`` (plus the rows and columns the forward stride skipped), with the
    flipped kernel: ``dX = im2col(dil(dY)) @ Wflip`` with
    ``Wflip[(a, b, o), c] = W[(k-1-a, k-1-b, c), o]``, one matrix multiply per group.
    """

    def __init__(self, ids: TensorIds, name: str, in_hwc: tuple[int, int, int], out_channels: int,
                 kernel: int, pad: int, in_err: int | None, stride: int = 1, groups: int = 1):
        h, w, c = in_hwc
        if kernel < 1 or not 0 <= pad < kernel:
            raise ValueError(f"{name}: kernel={kernel}, pad={pad}: need kernel >= 1 and 0 <= pad < kernel")
        if stride < 1:
            raise ValueError(f"{name}: stride={stride}: must be >= 1")
        if groups < 1 or c % groups or out_channels % groups:
            raise ValueError(f"{name}: groups={groups}: must divide in_channels={c} and out_channels={out_channels}")
        self.h, self.w, self.c, self.k, self.pad, self.stride, self.groups = h, w, c, kernel, pad, stride, groups
        self.ho, self.wo = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
        if self.ho < 1 or self.wo < 1:
            raise ValueError(f"{name}: a {kernel}x{kernel} kernel does not fit a {h}x{w} input")
        super().__init__(ids, name, kernel * kernel * (c // groups), out_channels, in_err)
        self.out_hwc = (self.ho, self.wo, out_channels)
        self._xs: list[Ref] = []

    def _n(self, rows: int, h: int, w: int) -> int:
        if rows % (h * w):
            raise ValueError(f"{self.name}: {rows} rows is not a whole number of {h}x{w} images")
        return rows // (h * w)

    def _cols(self, be: Backend, x: Ref) -> Ref:
        n = self._n(_shape(x)[0], self.h, self.w)
        return be.host(x, lambda a: im2col(a, n, self.h, self.w, self.c, self.k, self.pad, self.stride))

    def _wcols(self, be: Backend, j: int) -> Ref:
        og = self.out_features // self.groups
        return be.host(self.weight.value, lambda a: a[:, j * og:(j + 1) * og])

    def forward(self, be: Backend, x: Ref) -> Ref:
        cols = self._cols(be, x)
        g = self.groups
        if g == 1:
            self._x = cols
            return be.add(self.out_act, be.matmul(self.pre, cols, self.weight.value), self.bias.value)
        k2, cg = self.k * self.k, self.c // g
        self._xs = [be.host(cols, lambda a, j=j: a.reshape(-1, k2, self.c)[:, :, j * cg:(j + 1) * cg]
                            .reshape(-1, k2 * cg)) for j in range(g)]
        parts = [be.matmul(self.pre, self._xs[j], self._wcols(be, j)) for j in range(g)]
        return be.add(self.out_act, be.concat(parts, 1), self.bias.value)

    def backward_weights(self, be: Backend, dy: Ref) -> None:
        g = self.groups
        if g == 1:
            return super().backward_weights(be, dy)
        og = self.out_features // g
        parts = [be.matmul(self.weight.g_tid, be.host(self._xs[j], np.transpose),
                           be.host(dy, lambda a, j=j: a[:, j * og:(j + 1) * og])) for j in range(g)]
        self.weight.grad = be.concat(parts, 1)
        self.bias.grad = be.matmul(self.bias.g_tid, be.ones_row(_shape(dy)[0], self.bias.g_tid), dy)
        return None

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        n = self._n(_shape(dy)[0], self.ho, self.wo)
        k, c, o, s, g = self.k, self.c, self.out_features, self.stride, self.groups
        cg, og = c // g, o // g
        q = k - 1 - self.pad
        rh = self.h + 2 * self.pad - k - (self.ho - 1) * s  # input rows the last window did not reach
        rw = self.w + 2 * self.pad - k - (self.wo - 1) * s
        hd, wd = (self.ho - 1) * s + 1, (self.wo - 1) * s + 1

        def cols_of(a: np.ndarray, j: int) -> np.ndarray:
            a = a[:, j * og:(j + 1) * og] if g > 1 else a
            if s > 1:
                d = np.zeros((n, hd, wd, og), dtype=a.dtype)
                d[:, ::s, ::s] = a.reshape(n, self.ho, self.wo, og)
                a = d.reshape(n * hd * wd, og)
            return im2col(a, n, hd, wd, og, k, q, 1, None if s == 1 else (q, q + rh, q, q + rw))

        def flip(wm: np.ndarray, j: int) -> np.ndarray:
            wm = wm[:, j * og:(j + 1) * og] if g > 1 else wm
            return wm.reshape(k, k, cg, og)[::-1, ::-1].transpose(0, 1, 3, 2).reshape(k * k * og, cg)

        parts = [be.matmul(self.in_err, be.host(dy, lambda a, j=j: cols_of(a, j)),
                           be.host(self.weight.value, lambda a, j=j: flip(a, j))) for j in range(g)]
        return be.concat(parts, 1)


class ReLU(Layer):
    def __init__(self, ids: TensorIds, name: str, in_err: int | None):
        self.name, self.in_err = name, in_err
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = ids.new(f"{name}.out.err", TensorClass.ERROR)
        self._x: Ref | None = None

    def forward(self, be: Backend, x: Ref) -> Ref:
        self._x = x
        return be.relu(self.out_act, x)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        return be.relu_backward(self.in_err, dy, self._x)


class _Pool(Layer):
    """Windows of ``k x k`` pixels, stride ``s``, padding ``pad`` on ``[N*H*W, C]`` (floor output size).

    Backward passes scatter values back to the input pixels (data movement). Windows that
    overlap (``k > s``) are split into ``m*m`` classes, ``m = ceil(k/s)``, by output position
    modulo ``m``; windows of one class are disjoint, so each class scatters without adding,
    and the classes' errors are summed by ADD commands.
    """

    def __init__(self, name: str, in_hwc: tuple[int, int, int], kernel: int, stride: int | None, pad: int):
        h, w, c = in_hwc
        stride = kernel if stride is None else stride
        if kernel < 1 or stride < 1 or not 0 <= pad < kernel:
            raise ValueError(f"{name}: kernel={kernel}, stride={stride}, pad={pad}: need kernel, stride >= 1 "
                             "and 0 <= pad < kernel")
        self.name, self.h, self.w, self.c, self.k, self.s, self.pad = name, h, w, c, kernel, stride, pad
        self.ho, self.wo = (h + 2 * pad - kernel) // stride + 1, (w + 2 * pad - kernel) // stride + 1
        if self.ho < 1 or self.wo < 1:
            raise ValueError(f"{name}: a {kernel}x{kernel} window does not fit a {h}x{w} input")
        self.out_hwc = (self.ho, self.wo, c)
        self._targets: dict[int, tuple[np.ndarray, np.ndarray, list[np.ndarray]]] = {}

    def _windows(self, a: np.ndarray, fill: float | int) -> np.ndarray:
        """``[N*H*W, C]`` -> ``[N, Ho, Wo, C, k*k]``, window elements in (ky, kx) order."""
        n = a.shape[0] // (self.h * self.w)
        x4 = a.reshape(n, self.h, self.w, self.c)
        p = self.pad
        if p:
            x4 = np.pad(x4, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
        win = np.lib.stride_tricks.sliding_window_view(x4, (self.k, self.k), axis=(1, 2))
        win = win[:, ::self.s, ::self.s][:, :self.ho, :self.wo]
        return win.reshape(n, self.ho, self.wo, self.c, self.k * self.k)

    def _scatter_targets(self, n: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Per (window, element): flat input index ``[N, Ho, Wo, C, k*k]``, validity, and the
        window classes (boolean masks over ``[N, Ho, Wo, C]``)."""
        if n not in self._targets:
            k, s, p = self.k, self.s, self.pad
            e = np.arange(k * k)
            y = (np.arange(self.ho) * s)[:, None, None] + (e // k)[None, None, :] - p  # [Ho, 1, k*k]
            x = (np.arange(self.wo) * s)[None, :, None] + (e % k)[None, None, :] - p  # [1, Wo, k*k]
            valid = (y >= 0) & (y < self.h) & (x >= 0) & (x < self.w)  # [Ho, Wo, k*k]
            pix = np.where(valid, y * self.w + x, 0)
            nn = np.arange(n)[:, None, None, None, None]
            ch = np.arange(self.c)[None, None, None, :, None]
            idx = (nn * (self.h * self.w) + pix[None, :, :, None, :]) * self.c + ch
            valid5 = np.broadcast_to(valid[None, :, :, None, :], idx.shape)
            m = -(-k // s)
            i = np.arange(self.ho)[:, None] % m
            j = np.arange(self.wo)[None, :] % m
            classes = [np.broadcast_to(((i == u) & (j == v))[None, :, :, None], (n, self.ho, self.wo, self.c))
                       for u in range(m) for v in range(m) if ((i == u) & (j == v)).any()]
            self._targets = {n: (idx, valid5, classes)}
        return self._targets[n]

    def _scatter(self, be: Backend, d: Ref, dst: int, pick: np.ndarray | None) -> Ref:
        """Per-window values ``d`` (``[N*Ho*Wo*C, k*k]``, or ``[N*Ho*Wo, C]`` with ``pick`` the chosen
        element of each window) back to ``[N*H*W, C]``, window classes summed by ADD into ``dst``."""
        n = _shape(d)[0] // (self.ho * self.wo * (1 if pick is not None else self.c))
        m = -(-self.k // self.s)
        pk = np.zeros((1, 1, 1, 1), dtype=np.int64) if pick is None else pick
        parts = [be.host(d, lambda a, u=u, v=v: kernels.pool_scatter(
                     np.ascontiguousarray(a), pk, pick is None, n, self.h, self.w, self.c, self.k, self.s, self.pad,
                     self.ho, self.wo, m, u, v))
                 for u in range(min(m, self.ho)) for v in range(min(m, self.wo))]
        total = parts[0]
        for part in parts[1:]:
            total = be.add(dst, total, part)
        return total

    def scatter_numpy(self, a: np.ndarray, pick: np.ndarray | None) -> list[np.ndarray]:
        """The NumPy definition of :meth:`_scatter`'s host part: one ``[N*H*W, C]`` array per window class."""
        n = a.shape[0] // (self.ho * self.wo * (1 if pick is not None else self.c))
        idx, valid, classes = self._scatter_targets(n)
        if pick is not None:
            idx = np.take_along_axis(idx, pick[..., None], axis=-1)
            valid = np.take_along_axis(valid, pick[..., None], axis=-1)
        size = n * self.h * self.w * self.c

        def one(a: np.ndarray, cls: np.ndarray) -> np.ndarray:
            vals = a.reshape(idx.shape)
            sel = valid & cls[..., None]
            out = np.zeros(size, dtype=a.dtype)
            out[idx[sel]] = vals[sel]
            return out.reshape(-1, self.c)

        return [one(a, cls) for cls in classes]


class MaxPool2d(_Pool):
    """Max pooling (``kernel``, ``stride`` = kernel by default, ``pad``) on ``[N*H*W, C]``; exact selection
    and scatter on the host (padding is never selected).

    Ties go to the first maximum in (row, column) order of the window. The output keeps the
    input's tensor ids (data movement does not change a format); overlapping windows' errors
    are summed by ADD commands into the input's error id.
    """

    def __init__(self, name: str, in_hwc: tuple[int, int, int], in_act: int, in_err: int | None,
                 kernel: int = 2, stride: int | None = None, pad: int = 0):
        super().__init__(name, in_hwc, kernel, stride, pad)
        self.in_err, self.out_act = in_err, in_act
        self.out_err = in_err if in_err is not None else -1
        self._arg: np.ndarray | None = None

    def forward(self, be: Backend, x: Ref) -> Ref:
        a0 = np.ascontiguousarray(_data(x))
        fill = np.iinfo(a0.dtype).min if a0.dtype.kind == "i" else -np.inf
        n = a0.shape[0] // (self.h * self.w)
        # compiled form of np.argmax over self._windows(a0, fill) and the selection (maxpool_numpy)
        self._arg, sel = kernels.maxpool_nhwc(a0, n, self.h, self.w, self.c, self.k, self.s, self.pad,
                                              self.ho, self.wo, a0.dtype.type(fill))
        return be.host(x, lambda a: sel if a is _data(x) else self._pick_numpy(a, fill))

    def _pick_numpy(self, a: np.ndarray, fill: float | int) -> np.ndarray:
        sel = np.take_along_axis(self._windows(a, fill), self._arg[..., None], axis=-1)[..., 0]
        return sel.reshape(-1, self.c)

    def maxpool_numpy(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The NumPy definition of the forward selection: (argmax index ``[N, Ho, Wo, C]``, values)."""
        fill = np.iinfo(a.dtype).min if a.dtype.kind == "i" else -np.inf
        arg = np.argmax(self._windows(a, fill), axis=-1)
        sel = np.take_along_axis(self._windows(a, fill), arg[..., None], axis=-1)[..., 0]
        return arg, sel.reshape(-1, self.c)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        return self._scatter(be, dy, self.in_err, self._arg)


class AvgPool2d(_Pool):
    """Average pooling (padding counts in the divisor, PyTorch's ``count_include_pad``).

    Forward: the windows ``[N*Ho*Wo*C, k*k]`` (host) times a constant column of ``1/k**2``, one
    MATMUL. Backward: the error ``[N*Ho*Wo*C, 1]`` times a constant row of ``1/k**2`` (MATMUL),
    scattered back to the pixels (host; overlapping windows summed by ADD).
    """

    def __init__(self, ids: TensorIds, name: str, in_hwc: tuple[int, int, int], in_err: int | None,
                 kernel: int = 2, stride: int | None = None, pad: int = 0):
        super().__init__(name, in_hwc, kernel, stride, pad)
        self.in_err = in_err
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = ids.new(f"{name}.out.err", TensorClass.ERROR)
        self.spread = ids.new(f"{name}.spread.err", TensorClass.ERROR) if in_err is not None else -1
        kk = kernel * kernel
        self._col, self._row = np.full((kk, 1), 1.0 / kk), np.full((1, kk), 1.0 / kk)

    def forward(self, be: Backend, x: Ref) -> Ref:
        kk = self.k * self.k
        win = be.host(x, lambda a: self._windows(a, 0).reshape(-1, kk))
        y = be.matmul(self.out_act, win, be.const(f"avg{kk}.col", self._col, self.out_act))
        return be.host(y, lambda a: a.reshape(-1, self.c))

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        kk = self.k * self.k
        d = be.matmul(self.spread, be.host(dy, lambda a: a.reshape(-1, 1)),
                      be.const(f"avg{kk}.row", self._row, self.spread))
        return self._scatter(be, d, self.in_err, None)


class Flatten(Layer):
    """``[N*H*W, C]`` -> ``[N, H*W*C]`` (NHWC order); exact, keeps the tensor ids.

    With ``flat`` the input is already ``[N, F]`` and the layer passes it through.
    """

    def __init__(self, name: str, in_hwc: tuple[int, int, int], in_act: int, in_err: int | None,
                 flat: bool = False):
        self.name, self.in_hwc, self.flat = name, in_hwc, flat
        self.in_err, self.out_act = in_err, in_act
        self.out_err = in_err if in_err is not None else -1
        self.features = int(np.prod(in_hwc))

    def forward(self, be: Backend, x: Ref) -> Ref:
        if self.flat:
            return x
        return be.host(x, lambda a: a.reshape(-1, self.features))

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        if self.flat:
            return dy
        return be.host(dy, lambda a: a.reshape(-1, self.in_hwc[2]))


class BatchNorm(Layer):
    """Batch normalisation per channel (column), on the host in float64 like :class:`LRN`.

    Training mode normalises with the batch's mean and (biased) variance and updates running
    averages (``r = (1 - momentum) * r + momentum * batch``, unbiased variance); evaluation uses
    the running averages. ``y = gamma * xhat + beta``; gamma and beta are parameters (ids of class
    weight, updated by the same AXPY chain as every weight). In the dfp modes the host reads x,
    gamma and beta, computes in float and loads y, dX, dgamma and dbeta (point positions by the
    policy, as for the input images): none of it is a DLU command.
    """

    def __init__(self, ids: TensorIds, name: str, channels: int, in_err: int | None, eps: float = 1e-5,
                 momentum: float = 0.1):
        self.name, self.c, self.in_err, self.eps, self.momentum = name, channels, in_err, eps, momentum
        self.weight = Param.make(ids, f"{name}.weight", (1, channels))
        self.bias = Param.make(ids, f"{name}.bias", (1, channels))
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = ids.new(f"{name}.out.err", TensorClass.ERROR)
        self.running_mean = np.zeros(channels)
        self.running_var = np.ones(channels)
        self._saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def params(self) -> list[Param]:
        return [self.weight, self.bias]

    def init(self, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
        return {self.weight.name: np.ones((1, self.c)), self.bias.name: np.zeros((1, self.c))}

    def forward(self, be: Backend, x: Ref, training: bool = True) -> Ref:
        xf = be.to_float(x)
        g, b = be.to_float(self.weight.value)[0], be.to_float(self.bias.value)[0]
        if training:
            mu, var = xf.mean(axis=0), xf.var(axis=0)
            n = xf.shape[0]
            m = self.momentum
            self.running_mean = (1 - m) * self.running_mean + m * mu
            self.running_var = (1 - m) * self.running_var + m * var * (n / max(n - 1, 1))
        else:
            mu, var = self.running_mean, self.running_var
        inv = 1.0 / np.sqrt(var + self.eps)
        xhat = (xf - mu) * inv
        self._saved = (xhat, inv, g)
        return be.host_float(self.out_act, g * xhat + b)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        xhat, inv, g = self._saved
        d = be.to_float(dy) * g
        dx = inv * (d - d.mean(axis=0) - xhat * (d * xhat).mean(axis=0))
        return be.host_float(self.in_err, dx)

    def backward_weights(self, be: Backend, dy: Ref) -> None:
        xhat = self._saved[0]
        d = be.to_float(dy)
        self.weight.grad = be.host_float(self.weight.g_tid, (d * xhat).sum(axis=0, keepdims=True))
        self.bias.grad = be.host_float(self.bias.g_tid, d.sum(axis=0, keepdims=True))


class Add(Layer):
    """Residual addition ``y = x + s`` (one ADD command), ``s`` the output of layer ``source``.

    :meth:`reference.models.Model.forward` sets :attr:`skip` before the call. Backward: the error
    passes to the input unchanged (the layer shares its input's error id) and
    :meth:`reference.models.Model.backward` adds it to the source's output error (an ADD command)
    when it reaches that layer.
    """

    def __init__(self, ids: TensorIds, name: str, source: str, in_err: int | None):
        self.name, self.source, self.in_err = name, source, in_err
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = in_err if in_err is not None else -1
        self.skip: Ref | None = None

    def forward(self, be: Backend, x: Ref) -> Ref:
        if self.skip is None:
            raise ValueError(f"{self.name}: the output of {self.source!r} was not set (run it through Model.forward)")
        return be.add(self.out_act, x, self.skip)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        return None if self.in_err is None else dy


class Dropout(Layer):
    """Inverted dropout: in training each value is kept with probability ``1 - p`` and scaled by
    ``1 / (1 - p)``; in evaluation the layer passes values through.

    The mask comes from ``rng`` (one draw per forward pass: reproducible for a seed). Zeroing
    is data movement on the host; the scaling is one AXPY command (``alpha * x + 0``), forward
    and backward.
    """

    def __init__(self, ids: TensorIds, name: str, p: float, in_err: int | None, rng: np.random.Generator):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{name}: p={p!r}: must be in [0, 1)")
        self.name, self.p, self.in_err, self.rng = name, p, in_err, rng
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = ids.new(f"{name}.out.err", TensorClass.ERROR)
        self._mask: np.ndarray | None = None

    def forward(self, be: Backend, x: Ref, training: bool = True) -> Ref:
        if not training or self.p == 0.0:
            self._mask = None
            return x
        mask = self.rng.random(_shape(x)) >= self.p
        self._mask = mask
        kept = be.host(x, lambda a: np.where(mask, a, 0).astype(a.dtype))
        return be.axpy(self.out_act, 1.0 / (1.0 - self.p), kept, be.zeros(self.out_act, _shape(x)))

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        mask = self._mask
        if mask is None:
            return dy
        kept = be.host(dy, lambda a: np.where(mask, a, 0).astype(a.dtype))
        return be.axpy(self.in_err, 1.0 / (1.0 - self.p), kept, be.zeros(self.in_err, _shape(dy)))


class LRN(Layer):
    """Local response normalisation across channels, on the host in float64 (Caffe/ONNX LRN):
    ``y = x / (bias + alpha/size * sum_{window} x**2) ** beta``, window of ``size`` channels
    starting ``(size-1)//2`` before the channel.

    Not a DLU command: in the dfp modes the host reads the input, computes in float and loads
    the result (its point position picked by the policy, as for the input images); the same
    for the input error.
    """

    def __init__(self, ids: TensorIds, name: str, channels: int, size: int, alpha: float, beta: float,
                 bias: float, in_err: int | None):
        self.name, self.c, self.size, self.alpha, self.beta, self.bias = name, channels, size, alpha, beta, bias
        self.in_err = in_err
        self.out_act = ids.new(f"{name}.out", TensorClass.ACTIVATION)
        self.out_err = ids.new(f"{name}.out.err", TensorClass.ERROR)
        self._saved: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def _wsum(self, a: np.ndarray, before: int) -> np.ndarray:
        after = self.size - 1 - before
        p = np.pad(a, ((0, 0), (before, after)))
        cs = np.concatenate([np.zeros((a.shape[0], 1)), np.cumsum(p, axis=1)], axis=1)
        return cs[:, self.size:] - cs[:, :-self.size]

    def forward(self, be: Backend, x: Ref) -> Ref:
        xf = be.to_float(x)
        scale = self.bias + self.alpha / self.size * self._wsum(xf * xf, (self.size - 1) // 2)
        y = xf * scale ** -self.beta
        self._saved = (xf, scale, y)
        return be.host_float(self.out_act, y)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        xf, scale, y = self._saved
        d = be.to_float(dy)
        before_t = self.size - 1 - (self.size - 1) // 2  # the transposed window
        t = self._wsum(d * y / scale, before_t)
        dx = d * scale ** -self.beta - 2.0 * self.alpha * self.beta / self.size * xf * t
        return be.host_float(self.in_err, dx)


# ---------------------------------------------------------------------------------------
# Loss and optimiser
# ---------------------------------------------------------------------------------------


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, int]:
    """Mean softmax cross-entropy in float64 on the host.

    Returns (loss, d loss / d logits, number of correct argmax predictions). The gradient is
    ``(softmax - onehot) / N``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != len(labels):
        raise ValueError(f"loss: logits shape {z.shape} does not match {len(labels)} labels")
    if not np.all(np.isfinite(z)):
        raise ValueError("loss: non-finite logits")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    p = e / e.sum(axis=1, keepdims=True)
    n = z.shape[0]
    idx = np.arange(n)
    loss = float(-np.mean(np.log(p[idx, labels] + 1e-300)))
    grad = p.copy()
    grad[idx, labels] -= 1.0
    correct = int(np.count_nonzero(np.argmax(z, axis=1) == labels))
    return loss, grad / n, correct


def sgd_step(be: Backend, params: list[Param], lr: float, momentum: float, weight_decay: float) -> None:
    """SGD with momentum and weight decay, as a chain of AXPY commands per parameter.

    ``g += wd * w`` (if wd); ``v = momentum * v + g`` (if momentum, else v = g);
    ``w = -lr * v + w``. The last AXPY writes the weight's tensor id, whose rounding is
    stochastic by default.
    """
    for p in params:
        if p.grad is None or p.value is None:
            raise ValueError(f"sgd: parameter {p.name!r} has no gradient (backward_weights not run)")
        g = p.grad
        if weight_decay:
            g = be.axpy(p.g_tid, weight_decay, p.value, g)
        if momentum:
            if p.velocity is None:
                p.velocity = be.zeros(p.v_tid, p.shape)
            v = be.axpy(p.v_tid, momentum, p.velocity, g)
            p.velocity = v
        else:
            v = g
        p.value = be.axpy(p.w_tid, -lr, v, p.value)
        p.grad = None

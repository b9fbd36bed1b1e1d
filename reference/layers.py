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

from .engine import Engine
from .formats import FRAC_MAX, FRAC_MIN, DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from .ops import Op, scalar_to_dfp


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

    def with_engine(self, engine: Engine) -> DfpBackend:
        """A backend on another engine (an evaluation fork) sharing this one's tensor ids."""
        be = DfpBackend(engine, self.ids)
        be._shadows, be._ones, be._scalars = self._shadows, self._ones, self._scalars
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


def im2col(x: np.ndarray, n: int, h: int, w: int, c: int, k: int, pad: int) -> np.ndarray:
    """``[N*H*W, C]`` (NHWC rows) -> ``[N*Ho*Wo, k*k*C]`` patches, feature order (ky, kx, c).

    Stride 1; zero padding ``pad``; ``Ho = H + 2*pad - k + 1``. Pure data movement.
    """
    x4 = x.reshape(n, h, w, c)
    if pad:
        x4 = np.pad(x4, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    win = np.lib.stride_tricks.sliding_window_view(x4, (k, k), axis=(1, 2))  # [N, Ho, Wo, C, k, k]
    ho, wo = win.shape[1], win.shape[2]
    return np.ascontiguousarray(win.transpose(0, 1, 2, 4, 5, 3)).reshape(n * ho * wo, k * k * c)


class Conv2d(Linear):
    """Stride-1 convolution, ``k x k`` kernel, zero padding ``pad``, as im2col + one matrix multiply.

    Input ``[N*H*W, C]``, output ``[N*Ho*Wo, O]``; weights ``[k*k*C, O]`` (feature order ky, kx, c).
    The input error is the full correlation of the padded output error with the flipped kernel:
    ``dX = im2col(dY, pad=k-1-pad) @ Wflip`` with ``Wflip[(a, b, o), c] = W[(k-1-a, k-1-b, c), o]``,
    again one matrix multiply.
    """

    def __init__(self, ids: TensorIds, name: str, in_hwc: tuple[int, int, int], out_channels: int,
                 kernel: int, pad: int, in_err: int | None):
        h, w, c = in_hwc
        if kernel < 1 or not 0 <= pad < kernel:
            raise ValueError(f"{name}: kernel={kernel}, pad={pad}: need kernel >= 1 and 0 <= pad < kernel")
        self.h, self.w, self.c, self.k, self.pad = h, w, c, kernel, pad
        self.ho, self.wo = h + 2 * pad - kernel + 1, w + 2 * pad - kernel + 1
        if self.ho < 1 or self.wo < 1:
            raise ValueError(f"{name}: a {kernel}x{kernel} kernel does not fit a {h}x{w} input")
        super().__init__(ids, name, kernel * kernel * c, out_channels, in_err)
        self.out_hwc = (self.ho, self.wo, out_channels)

    def _n(self, rows: int, h: int, w: int) -> int:
        if rows % (h * w):
            raise ValueError(f"{self.name}: {rows} rows is not a whole number of {h}x{w} images")
        return rows // (h * w)

    def _cols(self, be: Backend, x: Ref) -> Ref:
        n = self._n(x.t.shape[0], self.h, self.w)
        return be.host(x, lambda a: im2col(a, n, self.h, self.w, self.c, self.k, self.pad))

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        n = self._n(dy.t.shape[0], self.ho, self.wo)
        k, c, o = self.k, self.c, self.out_features
        q = k - 1 - self.pad
        if self.ho + 2 * q - k + 1 != self.h:
            raise ValueError(f"{self.name}: input error needs pad <= k-1 (got pad={self.pad}, k={k})")
        cols = be.host(dy, lambda a: im2col(a, n, self.ho, self.wo, o, k, q))

        def flip(wm: np.ndarray) -> np.ndarray:
            return wm.reshape(k, k, c, o)[::-1, ::-1].transpose(0, 1, 3, 2).reshape(k * k * o, c)

        return be.matmul(self.in_err, cols, be.host(self.weight.value, flip))


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


class MaxPool2d(Layer):
    """2x2 max pooling, stride 2, on ``[N*H*W, C]``; exact selection and scatter on the host.

    Ties go to the first maximum in (row, column) order of the window. The output keeps the
    input's tensor ids (data movement does not change a format).
    """

    def __init__(self, name: str, in_hwc: tuple[int, int, int], in_act: int, in_err: int | None):
        h, w, c = in_hwc
        if h % 2 or w % 2:
            raise ValueError(f"{name}: 2x2 pooling needs even height and width, got {h}x{w}")
        self.name, self.h, self.w, self.c = name, h, w, c
        self.in_err, self.out_act = in_err, in_act
        self.out_err = in_err if in_err is not None else -1
        self.out_hwc = (h // 2, w // 2, c)
        self._arg: np.ndarray | None = None

    def _windows(self, a: np.ndarray) -> np.ndarray:
        n = a.shape[0] // (self.h * self.w)
        a6 = a.reshape(n, self.h // 2, 2, self.w // 2, 2, self.c)
        return a6.transpose(0, 1, 3, 5, 2, 4).reshape(n, self.h // 2, self.w // 2, self.c, 4)

    def forward(self, be: Backend, x: Ref) -> Ref:
        win = self._windows(x.t if isinstance(x.t, np.ndarray) else x.t.data)
        self._arg = np.argmax(win, axis=-1)

        def pick(a: np.ndarray) -> np.ndarray:
            sel = np.take_along_axis(self._windows(a), self._arg[..., None], axis=-1)[..., 0]
            return sel.reshape(-1, self.c)

        return be.host(x, pick)

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        arg = self._arg
        n = arg.shape[0]
        h2, w2, c = self.h // 2, self.w // 2, self.c

        def scatter(d: np.ndarray) -> np.ndarray:
            win = np.zeros((n, h2, w2, c, 4), dtype=d.dtype)
            np.put_along_axis(win, arg[..., None], d.reshape(n, h2, w2, c, 1), axis=-1)
            return win.reshape(n, h2, w2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(-1, c)

        return be.host(dy, scatter)


class Flatten(Layer):
    """``[N*H*W, C]`` -> ``[N, H*W*C]`` (NHWC order); exact, keeps the tensor ids."""

    def __init__(self, name: str, in_hwc: tuple[int, int, int], in_act: int, in_err: int | None):
        self.name, self.in_hwc = name, in_hwc
        self.in_err, self.out_act = in_err, in_act
        self.out_err = in_err if in_err is not None else -1
        self.features = int(np.prod(in_hwc))

    def forward(self, be: Backend, x: Ref) -> Ref:
        return be.host(x, lambda a: a.reshape(-1, self.features))

    def backward_input(self, be: Backend, dy: Ref) -> Ref | None:
        if self.in_err is None:
            return None
        return be.host(dy, lambda a: a.reshape(-1, self.in_hwc[2]))


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

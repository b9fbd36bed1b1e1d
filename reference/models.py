"""Trainable models built from network descriptions (:mod:`reference.nets`).

:func:`build_model` turns a :class:`~reference.nets.Net` (a built-in such as ``cnn``, ``mlp``,
``lenet5``, ``alexnet``, or a network file) into a :class:`Model`: a list of
:mod:`reference.layers` layers plus the tensor ids of its input and of the error of its
logits (the two tensors the host loads). Parameters are initialised in float
(:meth:`Model.init_params`) and bound to a backend (:meth:`Model.bind`).

Input layout: a network on ``[C, H, W]`` samples takes ``[N*H*W, C]`` rows (NHWC), one on
flat ``[F]`` samples takes ``[N, F]``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import numpy as np

from .layers import (
    LRN,
    Add,
    AvgPool2d,
    Backend,
    BatchNorm,
    Conv2d,
    Dropout,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    Param,
    Ref,
    ReLU,
    TensorClass,
    TensorIds,
)
from .nets import LayerKind, Net, net_for_data


class ModelKind(enum.Enum):
    """The names of the trainer's two original built-in networks (``--model cnn|mlp``);
    anything :func:`reference.nets.resolve_net` accepts is a network too."""

    MLP = "mlp"
    CNN = "cnn"


class GradOrder(enum.Enum):
    """Order of a layer's two backward calls (the memory optimiser may swap them)."""

    INPUT_FIRST = "input-first"
    WEIGHTS_FIRST = "weights-first"


@dataclass
class Model:
    """A sequential network.

    Members
    -------
    net, layers, ids
        Its description, its layers in forward order, its tensor-id allocator.
    input_tid
        Tensor id of the input images (host-loaded).
    image_hwc
        Input image shape (height, width, channels).
    training
        False while evaluating (dropout passes values through).
    """

    net: Net
    layers: list[Layer]
    ids: TensorIds
    input_tid: int
    image_hwc: tuple[int, int, int]
    training: bool = True

    @property
    def spatial_input(self) -> bool:
        """True when the input is ``[N*H*W, C]`` rows (a ``[C, H, W]`` network), False for ``[N, F]``."""
        return len(self.net.input_shape) == 3

    @property
    def logits_err_tid(self) -> int:
        """Tensor id of the loss gradient (host-loaded)."""
        return self.layers[-1].out_err

    def params(self) -> list[Param]:
        return [p for layer in self.layers for p in layer.params()]

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """He-normal weights, zero biases (batch norm: gamma 1, beta 0), in float64."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            if isinstance(layer, Linear | BatchNorm):
                out.update(layer.init(rng))
        return out

    def bind(self, be: Backend, values: dict[str, np.ndarray]) -> None:
        """Load float parameter values into ``be`` (velocities start at zero)."""
        for p in self.params():
            v = np.asarray(values[p.name], dtype=np.float64)
            if v.shape != p.shape:
                raise ValueError(f"model: parameter {p.name!r} has shape {v.shape}, expected {p.shape}")
            p.value = be.load(p.w_tid, v)
            p.grad = None
            p.velocity = None

    def float_params(self, be: Backend) -> dict[str, np.ndarray]:
        return {p.name: be.to_float(p.value) for p in self.params()}

    def input_matrix(self, images: np.ndarray) -> np.ndarray:
        """Images ``[N, H*W*C]`` (row-major HWC) -> the first layer's input layout."""
        images = np.asarray(images, dtype=np.float64)
        h, w, c = self.image_hwc
        if images.ndim != 2 or images.shape[1] != h * w * c:
            raise ValueError(f"model: images of shape {images.shape} do not match {h}x{w}x{c}")
        if self.spatial_input:
            return images.reshape(-1, c)
        return images

    def forward(self, be: Backend, x: Ref) -> Ref:
        outs: dict[str, Ref] = {}
        for layer in self.layers:
            if isinstance(layer, Add):
                layer.skip = outs[layer.source]
            if isinstance(layer, Dropout | BatchNorm):
                x = layer.forward(be, x, self.training)
            else:
                x = layer.forward(be, x)
            outs[layer.name] = x
        return x

    def backward(self, be: Backend, dy: Ref, order: GradOrder = GradOrder.INPUT_FIRST,
                 on_grads_ready: Callable[[Layer], None] | None = None) -> None:
        """Back-propagate ``dy`` (error of the logits); each layer's gradients are then in its params.

        ``on_grads_ready(layer)`` is called as soon as a layer with parameters has its gradients
        (the data-parallel trainer starts an allreduce there).
        """
        pending: dict[str, Ref] = {}  # residual errors waiting for their source layer
        for layer in reversed(self.layers):
            if layer.name in pending:  # the error of this output also flows back from an add
                dy = be.add(dy.tid, dy, pending.pop(layer.name))
            if isinstance(layer, Add) and layer.in_err is not None:
                pending[layer.source] = dy
            if order == GradOrder.WEIGHTS_FIRST:
                layer.backward_weights(be, dy)
                dx = layer.backward_input(be, dy)
            else:
                dx = layer.backward_input(be, dy)
                layer.backward_weights(be, dy)
            if on_grads_ready is not None and layer.params():
                on_grads_ready(layer)
            if dx is None:
                break
            dy = dx


def build_model(net: Net | ModelKind | str | dict, image_hwc: tuple[int, int, int] = (8, 8, 1),
                classes: int = 10, tensor_ids: int = 64, seed: int = 0) -> Model:
    """Build the model of ``net`` for images of ``image_hwc`` (height, width, channels) and ``classes``.

    ``net`` is a :class:`~reference.nets.Net`, a built-in name (``cnn``, ``mlp``, ``lenet5``,
    ``alexnet``, ...), a network file or its parsed content (see :func:`reference.nets.net_for_data`).
    Tensor ids are allocated layer by layer in forward order; ``seed`` seeds dropout masks.

    Raises
    ------
    ValueError
        The network does not match the data (:class:`~reference.nets.NetFileError`), or it needs
        more tensor ids than ``tensor_ids``.
    """
    if isinstance(net, ModelKind):
        net = net.value
    h, w, c = image_hwc
    net = net_for_data(net, (c, h, w), classes)
    ids = TensorIds(tensor_ids)
    input_tid = ids.new("input", TensorClass.ACTIVATION)
    layers: list[Layer] = []
    spatial = len(net.input_shape) == 3
    hwc = (h, w, c)
    act, err = input_tid, None  # tensor ids of the current activation and of its error (None: not computed)
    for i, la in enumerate(net.layers):
        k = la.kind
        new: Layer
        if k is LayerKind.SOFTMAX_CE:
            break
        if k is LayerKind.CONV:
            new = Conv2d(ids, la.name, hwc, la.out_channels, la.kernel, la.pad, err, stride=la.stride,
                         groups=la.groups)
            hwc = new.out_hwc
        elif k is LayerKind.LINEAR:
            if spatial:
                fl = Flatten(f"{la.name}.flatten", hwc, act, err)
                layers.append(fl)
                spatial = False
            new = Linear(ids, la.name, prod(hwc), la.out_features, err)
            hwc = (1, 1, la.out_features)
        elif k is LayerKind.RELU:
            new = ReLU(ids, la.name, err)
        elif k is LayerKind.MAXPOOL:
            new = MaxPool2d(la.name, hwc, act, err, kernel=la.kernel, stride=la.stride, pad=la.pad)
            hwc = new.out_hwc
        elif k is LayerKind.AVGPOOL:
            new = AvgPool2d(ids, la.name, hwc, err, kernel=la.kernel, stride=la.stride, pad=la.pad)
            hwc = new.out_hwc
        elif k is LayerKind.FLATTEN:
            new = Flatten(la.name, hwc, act, err) if spatial else Flatten(la.name, hwc, act, err, flat=True)
            spatial = False
        elif k is LayerKind.DROPOUT:
            new = Dropout(ids, la.name, la.p, err, np.random.default_rng([seed, 4, i]))
        elif k is LayerKind.BATCHNORM:
            new = BatchNorm(ids, la.name, hwc[2] if spatial else prod(hwc), err, la.eps, la.momentum)
        elif k is LayerKind.ADD:
            new = Add(ids, la.name, la.source, err)
        elif k is LayerKind.LRN:
            new = LRN(ids, la.name, hwc[2], la.size, la.alpha, la.beta, la.bias, err)
        else:  # pragma: no cover - every kind of reference.nets is handled above
            raise ValueError(f"model: layer {la.name!r}: no trainer layer for type {k.value!r}")
        layers.append(new)
        act = new.out_act
        err = new.out_err if new.out_err is not None and new.out_err >= 0 else None
    return Model(net, layers, ids, input_tid, image_hwc)

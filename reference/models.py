"""The two training models: an MLP and a small LeNet-style CNN for 8x8 (or larger) images.

A :class:`Model` is a list of :mod:`reference.layers` layers plus the tensor ids of its input
and of the error of its logits (the two tensors the host loads). Parameters are initialised
in float (:meth:`Model.init_params`) and bound to a backend (:meth:`Model.bind`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .layers import (
    Backend,
    Conv2d,
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


class ModelKind(enum.Enum):
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
    kind, layers, ids
        What it is, its layers in forward order, its tensor-id allocator.
    input_tid
        Tensor id of the input images (host-loaded).
    image_hwc
        Input image shape (height, width, channels).
    """

    kind: ModelKind
    layers: list[Layer]
    ids: TensorIds
    input_tid: int
    image_hwc: tuple[int, int, int]

    @property
    def logits_err_tid(self) -> int:
        """Tensor id of the loss gradient (host-loaded)."""
        return self.layers[-1].out_err

    def params(self) -> list[Param]:
        return [p for layer in self.layers for p in layer.params()]

    def init_params(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """He-normal weights, zero biases, in float64."""
        out: dict[str, np.ndarray] = {}
        for layer in self.layers:
            if isinstance(layer, Linear):
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
        if self.kind == ModelKind.CNN:
            return images.reshape(-1, c)
        return images

    def forward(self, be: Backend, x: Ref) -> Ref:
        for layer in self.layers:
            x = layer.forward(be, x)
        return x

    def backward(self, be: Backend, dy: Ref, order: GradOrder = GradOrder.INPUT_FIRST,
                 on_grads_ready: Callable[[Layer], None] | None = None) -> None:
        """Back-propagate ``dy`` (error of the logits); each layer's gradients are then in its params.

        ``on_grads_ready(layer)`` is called as soon as a layer with parameters has its gradients
        (the data-parallel trainer starts an allreduce there).
        """
        for layer in reversed(self.layers):
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


def build_model(kind: ModelKind | str, image_hwc: tuple[int, int, int] = (8, 8, 1), classes: int = 10,
                tensor_ids: int = 64) -> Model:
    """Build the MLP (``in -> 64 -> classes``) or the CNN.

    CNN: conv3x3(C->8, pad 1) - ReLU - maxpool2 - conv3x3(8->16, pad 1) - ReLU - maxpool2 -
    flatten - linear(->32) - ReLU - linear(->classes). Height and width must be multiples of 4.
    """
    kind = ModelKind(kind)
    ids = TensorIds(tensor_ids)
    input_tid = ids.new("input", TensorClass.ACTIVATION)
    h, w, c = image_hwc
    layers: list[Layer] = []
    if kind == ModelKind.MLP:
        fc1 = Linear(ids, "fc1", h * w * c, 64, None)
        r1 = ReLU(ids, "relu1", fc1.out_err)
        fc2 = Linear(ids, "fc2", 64, classes, r1.out_err)
        layers = [fc1, r1, fc2]
    else:
        if h % 4 or w % 4:
            raise ValueError(f"model: the CNN needs height and width divisible by 4, got {h}x{w}")
        c1 = Conv2d(ids, "conv1", (h, w, c), 8, 3, 1, None)
        r1 = ReLU(ids, "relu1", c1.out_err)
        p1 = MaxPool2d("pool1", c1.out_hwc, r1.out_act, r1.out_err)
        c2 = Conv2d(ids, "conv2", p1.out_hwc, 16, 3, 1, p1.out_err)
        r2 = ReLU(ids, "relu2", c2.out_err)
        p2 = MaxPool2d("pool2", c2.out_hwc, r2.out_act, r2.out_err)
        fl = Flatten("flatten", p2.out_hwc, p2.out_act, p2.out_err)
        fc1 = Linear(ids, "fc1", fl.features, 32, fl.out_err)
        r3 = ReLU(ids, "relu3", fc1.out_err)
        fc2 = Linear(ids, "fc2", 32, classes, r3.out_err)
        layers = [c1, r1, p1, c2, r2, p2, fl, fc1, r3, fc2]
    return Model(kind, layers, ids, input_tid, image_hwc)

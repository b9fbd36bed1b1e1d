"""Import a network from ONNX (``dlu import MODEL.onnx --out NET.toml``) and, optionally, its weights.

:func:`import_onnx` reads an ONNX model with the ``onnx`` package and turns its graph into a
:class:`~reference.nets.Net` (a chain of layers ending in the softmax cross-entropy loss the
trainer adds) plus the float weights of its initializers in the trainer's layouts. The graph
must be a chain: every node reads the previous node's output (and initializers). Supported
operators (:data:`SUPPORTED_OPS`): Conv (square kernels, equal strides and pads, groups, no
dilation), Relu, MaxPool and AveragePool (square, floor mode; AveragePool with padding only if
``count_include_pad=1``), LRN, Dropout, Flatten (axis 1) or Reshape to ``[N, -1]``, Gemm
(alpha = beta = 1), MatMul (optionally followed by an Add of a bias), BatchNormalization (its scale
and B become the parameters; the trainer normalises with batch statistics in training and keeps
its own running averages, the model's are not imported), an Add of the chain's tensor and an
earlier layer's output (an identity residual connection: a layer of type ``add``), and Identity. A trailing
Softmax or LogSoftmax is dropped (the trainer's loss includes it). Anything else raises
:class:`OnnxImportError` naming the node and operator, and nothing is written.

Layouts: ONNX convolution weights ``[O, C/g, kh, kw]`` become ``[kh*kw*C/g, O]`` (feature order
ky, kx, c); Gemm weights become ``[in, out]``. The trainer flattens ``[C, H, W]`` activations
in (H, W, C) order where ONNX flattens in (C, H, W) order, so the rows of a linear layer that
follows a flatten are permuted to match: the imported network computes the same function.

PyTorch: :func:`onnx_from_torch` exports an ``nn.Module`` with ``torch.onnx.export`` (the
optional ``torch`` extra of pyproject.toml; never a default dependency).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .nets import Layer, LayerKind, Net, NetFileError, infer_shapes, net_to_toml
from .outputs import atomic_write_text


class OnnxImportError(ValueError):
    """The ONNX model cannot be imported; the message names the node and the reason."""


SUPPORTED_OPS = ("Conv", "Relu", "MaxPool", "AveragePool", "LRN", "Dropout", "Flatten", "Reshape", "Gemm", "MatMul",
                 "Add", "BatchNormalization", "Identity", "Softmax", "LogSoftmax")


@dataclass(frozen=True)
class Imported:
    """The network and its weights (``{"<layer>.weight": [in, out], "<layer>.bias": [1, out]}``, float64)."""

    net: Net
    weights: dict[str, np.ndarray]


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _square(where: str, name: str, v: list[int] | None, default: int) -> int:
    if not v:
        return default
    if len(set(v)) != 1:
        raise OnnxImportError(f"{where}: {name}={list(v)}: only square/equal values are supported")
    return int(v[0])


def _pads(where: str, attrs: dict[str, Any]) -> int:
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise OnnxImportError(f"{where}: auto_pad={attrs['auto_pad']!r}: only explicit pads are supported")
    return _square(where, "pads", attrs.get("pads"), 0)


def _clean(name: str) -> str:
    out = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in name).strip("._")
    return out or "layer"


def import_onnx(path: str | Path) -> Imported:
    """Read ``path`` and return its network and weights.

    Raises
    ------
    OnnxImportError
        An unsupported operator (named with its node), a graph that is not a chain, or a
        model the ``onnx`` checker rejects.
    FileNotFoundError
        ``path`` does not exist.
    """
    import onnx
    from onnx import numpy_helper

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"onnx: {p} does not exist")
    try:
        model = onnx.load(str(p))
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - the onnx package raises many types for a bad file
        raise OnnxImportError(f"onnx: {p}: not a valid ONNX model: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) if t.data_type in (1, 10, 11) else
             numpy_helper.to_array(t) for t in g.initializer}
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1:
        raise OnnxImportError(f"onnx: {p}: needs exactly one data input, found {[i.name for i in inputs]}")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) not in (2, 4) or any(d is None or d < 1 for d in dims[1:]):
        raise OnnxImportError(f"onnx: {p}: input {inputs[0].name!r} has shape {dims}; expected [N, C, H, W] or [N, F] "
                              "with fixed sizes after the batch")
    input_shape = tuple(int(d) for d in dims[1:])
    layers: list[Layer] = []
    weights: dict[str, np.ndarray] = {}
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # linear layers: ONNX-layout [in, out] weights, bias
    names: set[str] = set()
    producer: dict[str, str] = {}  # tensor name -> the layer whose output it is (residual sources)
    cur = inputs[0].name
    nodes = list(g.node)
    for i, node in enumerate(nodes):
        op = node.op_type
        label = node.name or f"{op}_{i}"
        where = f"onnx: {p}: node {label!r} ({op})"
        data_in = [x for x in node.input if x and x not in inits]
        if op not in SUPPORTED_OPS:
            raise OnnxImportError(f"{where}: unsupported operator; supported: {', '.join(SUPPORTED_OPS)}")
        residual = op == "Add" and len(data_in) == 2 and cur in data_in
        if residual:
            other = data_in[1] if data_in[0] == cur else data_in[0]
            if other not in producer:
                raise OnnxImportError(f"{where}: adds {other!r}, which is not the output of an earlier layer: "
                                      "only identity skip connections are supported")
        elif data_in != [cur]:
            raise OnnxImportError(f"{where}: reads {data_in}, not the previous output {cur!r}: only a chain of "
                                  "layers is supported")
        a = _attrs(node)
        lname = _clean(node.name or f"{op.lower()}{i}")
        while lname in names or lname in ("input", "labels", "loss"):
            lname += "_"
        cur = node.output[0]
        if op in ("Identity",):
            continue
        if op in ("Softmax", "LogSoftmax"):
            if i != len(nodes) - 1:
                raise OnnxImportError(f"{where}: {op} is supported only as the last node (the loss includes it)")
            continue
        if residual:
            names.add(lname)
            layers.append(Layer(lname, LayerKind.ADD, source=producer[other]))
            producer[cur] = lname
            continue
        if op == "Add":
            bias_name = [x for x in node.input if x in inits]
            if not layers or layers[-1].kind is not LayerKind.LINEAR or not bias_name or \
                    np.any(raw[layers[-1].name][1]):
                raise OnnxImportError(f"{where}: Add is supported only as the bias of a preceding MatMul")
            b = inits[bias_name[0]].reshape(-1)
            if b.shape != raw[layers[-1].name][1].shape:
                raise OnnxImportError(f"{where}: bias of shape {b.shape} does not match the MatMul's outputs")
            raw[layers[-1].name] = (raw[layers[-1].name][0], b)
            continue
        names.add(lname)
        producer[cur] = lname
        if op == "BatchNormalization":
            if int(a.get("training_mode", 0)):
                raise OnnxImportError(f"{where}: training_mode=1 outputs are not supported")
            scale, bias = inits.get(node.input[1]), inits.get(node.input[2])
            if scale is None or bias is None:
                raise OnnxImportError(f"{where}: scale and B must be initializers")
            layers.append(Layer(lname, LayerKind.BATCHNORM, eps=float(a.get("epsilon", 1e-5)),
                                momentum=1.0 - float(a.get("momentum", 0.9))))
            weights[f"{lname}.weight"] = np.asarray(scale, dtype=np.float64).reshape(1, -1)
            weights[f"{lname}.bias"] = np.asarray(bias, dtype=np.float64).reshape(1, -1)
            continue
        if op == "Conv":
            if _square(where, "dilations", a.get("dilations"), 1) != 1:
                raise OnnxImportError(f"{where}: dilations={a['dilations']}: only 1 is supported")
            w = inits.get(node.input[1])
            if w is None or w.ndim != 4 or w.shape[2] != w.shape[3]:
                raise OnnxImportError(f"{where}: weight must be a square [O, C/g, k, k] initializer")
            k = _square(where, "kernel_shape", a.get("kernel_shape"), w.shape[2])
            o, groups = w.shape[0], int(a.get("group", 1))
            layers.append(Layer(lname, LayerKind.CONV, out_channels=o, kernel=k,
                                stride=_square(where, "strides", a.get("strides"), 1), pad=_pads(where, a),
                                groups=groups))
            weights[f"{lname}.weight"] = w.transpose(2, 3, 1, 0).reshape(-1, o)
            bias = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(o)
            weights[f"{lname}.bias"] = np.asarray(bias, dtype=np.float64).reshape(1, o)
        elif op == "Relu":
            layers.append(Layer(lname, LayerKind.RELU))
        elif op in ("MaxPool", "AveragePool"):
            if a.get("ceil_mode", 0):
                raise OnnxImportError(f"{where}: ceil_mode=1 is not supported (floor mode only)")
            if _square(where, "dilations", a.get("dilations"), 1) != 1:
                raise OnnxImportError(f"{where}: dilations={a['dilations']}: only 1 is supported")
            k = _square(where, "kernel_shape", a.get("kernel_shape"), 0)
            pad = _pads(where, a)
            if op == "AveragePool" and pad and not a.get("count_include_pad", 0):
                raise OnnxImportError(f"{where}: padding with count_include_pad=0 is not supported "
                                      "(the divisor is always kernel*kernel)")
            kind = LayerKind.MAXPOOL if op == "MaxPool" else LayerKind.AVGPOOL
            layers.append(Layer(lname, kind, kernel=k, stride=_square(where, "strides", a.get("strides"), 1),
                                pad=pad))
        elif op == "LRN":
            layers.append(Layer(lname, LayerKind.LRN, size=int(a["size"]), alpha=float(a.get("alpha", 1e-4)),
                                beta=float(a.get("beta", 0.75)), bias=float(a.get("bias", 1.0))))
        elif op == "Dropout":
            ratio = float(a.get("ratio", 0.5))
            if len(node.input) > 1 and node.input[1] in inits:
                ratio = float(inits[node.input[1]])
            layers.append(Layer(lname, LayerKind.DROPOUT, p=ratio))
        elif op in ("Flatten", "Reshape"):
            if op == "Flatten" and int(a.get("axis", 1)) != 1:
                raise OnnxImportError(f"{where}: axis={a['axis']}: only axis 1 is supported")
            if op == "Reshape":
                shape = inits.get(node.input[1]) if len(node.input) > 1 else None
                if shape is None or shape.ndim != 1 or len(shape) != 2 or \
                        not (int(shape[1]) == -1 or int(shape[0]) in (0, -1)):
                    raise OnnxImportError(f"{where}: only a Reshape to [N, -1] (a flatten) is supported")
            layers.append(Layer(lname, LayerKind.FLATTEN))
        elif op in ("Gemm", "MatMul"):
            if op == "Gemm" and (float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0
                                 or int(a.get("transA", 0))):
                raise OnnxImportError(f"{where}: only alpha = beta = 1 and transA = 0 are supported")
            w = inits.get(node.input[1])
            if w is None or w.ndim != 2:
                raise OnnxImportError(f"{where}: the weight must be a 2-D initializer")
            wt = w.T if op == "Gemm" and int(a.get("transB", 0)) else w  # [in, out]
            o = wt.shape[1]
            b = np.zeros(o)
            if op == "Gemm" and len(node.input) > 2 and node.input[2]:
                b = np.broadcast_to(inits[node.input[2]].reshape(-1), (o,)).astype(np.float64)
            layers.append(Layer(lname, LayerKind.LINEAR, out_features=o))
            raw[lname] = (np.asarray(wt, dtype=np.float64), b)
    layers.append(Layer("loss", LayerKind.SOFTMAX_CE))
    name = _clean(g.name or p.stem)
    try:
        net = Net.__new__(Net)
        object.__setattr__(net, "name", name)
        object.__setattr__(net, "input_shape", input_shape)
        object.__setattr__(net, "layers", tuple(layers))
        shapes = infer_shapes(net, f"onnx: {p}")
    except NetFileError as exc:
        raise OnnxImportError(str(exc)) from None
    for s in shapes:  # linear layers: permute flatten order (C, H, W) -> (H, W, C); check sizes
        if s.layer.kind is not LayerKind.LINEAR:
            continue
        wt, b = raw[s.layer.name]
        fan_in = s.in_count
        if wt.shape[0] != fan_in:
            raise OnnxImportError(f"onnx: {p}: layer {s.layer.name!r}: weight has {wt.shape[0]} inputs, "
                                  f"the network gives it {fan_in}")
        src = _flat_source_shape(shapes, s)
        if src is not None:
            c, h, w = src
            perm = np.arange(fan_in).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)
            wt = wt[perm]
        weights[f"{s.layer.name}.weight"] = wt
        weights[f"{s.layer.name}.bias"] = b.reshape(1, -1)
    return Imported(net, weights)


def _flat_source_shape(shapes: tuple, s: Any) -> tuple[int, int, int] | None:
    """The [C, H, W] shape that was flattened (explicitly or implicitly) into linear layer ``s``'s input."""
    idx = next(i for i, t in enumerate(shapes) if t is s)
    if len(s.in_shape) == 3:
        return tuple(s.in_shape)  # implicit flatten
    for t in reversed(shapes[:idx]):
        if t.layer.kind is LayerKind.FLATTEN:
            return tuple(t.in_shape) if len(t.in_shape) == 3 else None
        if t.layer.kind in (LayerKind.LINEAR, LayerKind.CONV):
            return None
    return None


def write_net_file(net: Net, out: str | Path) -> Path:
    """Write ``net`` as TOML (or JSON for ``.json``) atomically: temp file, then rename."""
    import json

    out = Path(out)
    text = json.dumps(net.to_dict(), indent=1) + "\n" if out.suffix.lower() == ".json" else net_to_toml(net)
    atomic_write_text(out, text)
    return out


def initial_weights(onnx_path: str | Path, params: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Float weights for a model's parameters (``name -> shape``) from the initializers of ``onnx_path``.

    Raises
    ------
    OnnxImportError
        A parameter is missing from the ONNX model or has another shape (one line naming it).
    """
    imp = import_onnx(onnx_path)
    out = {}
    for name, shape in params.items():
        if name not in imp.weights:
            raise OnnxImportError(f"init-from: {onnx_path}: no initializer for parameter {name!r} "
                                  f"(has {', '.join(sorted(imp.weights)) or 'none'})")
        v = imp.weights[name]
        if tuple(v.shape) != tuple(shape):
            raise OnnxImportError(f"init-from: {onnx_path}: parameter {name!r} has shape {list(v.shape)}, "
                                  f"the network needs {list(shape)}")
        out[name] = np.array(v, dtype=np.float64)
    return out


def onnx_from_torch(module: Any, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """Export a PyTorch ``nn.Module`` on samples of ``input_shape`` to ONNX with ``torch.onnx.export``.

    Needs the optional ``torch`` extra (``pip install .[torch]``).

    Raises
    ------
    ImportError
        PyTorch is not installed.
    """
    import torch

    module.eval()
    x = torch.zeros((1, *input_shape), dtype=torch.float32)
    torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["logits"], dynamo=False)
    return Path(path)

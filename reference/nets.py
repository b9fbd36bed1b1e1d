"""Network descriptions: the one description of a network for every consumer.

A :class:`Net` is a sequential chain of :class:`Layer` objects on a per-sample input shape
(``(C, H, W)`` or ``(F,)``), ending in a softmax cross-entropy loss. The trainer builds its
model from it (:func:`reference.models.build_model`), the training-memory planner
(:mod:`reference.memplan`) plans it and the scale model (:mod:`sim.scale`) times it. The
numerics of each layer live in :mod:`reference.layers`, not here.

Built-in networks (:data:`BUILTIN_NETS`): ``cnn`` and ``mlp`` (the trainer's networks for
8x8 digits; they adapt to the data's image shape and classes, see :data:`ADAPTIVE_NETS`),
``lenet5`` (LeCun 1998 shapes with max pooling and ReLU; on 28x28 data its first
convolution pads by 2, which is LeCun's 32x32 input), ``alexnet`` (Caffe's
``bvlc_alexnet``, grouped convolutions, LRN), ``vgg16`` (configuration D) and
``digits_cnn`` (``cnn`` on 1x8x8 under the name the memory planner's figures use).

Network files
-------------
JSON (``.json``) or TOML (``.toml``) with the keys::

    name   = "tiny"                  # optional, defaults to the file stem
    input  = [1, 8, 8]              # per-sample shape: [C, H, W] or [F]
    [[layers]]                       # in order; the last one must be softmax_ce
    type = "conv"                    # conv | linear | relu | maxpool | avgpool | lrn | dropout | flatten
    name = "conv1"                   #   | add | softmax_ce;  name: optional, defaults to "<type><index>"
    out_channels = 8                 # conv: out_channels, kernel; optional stride=1, pad=0, groups=1
    kernel = 3                       # maxpool, avgpool: kernel; optional stride=kernel, pad=0
    pad = 1                          # linear: out_features; dropout: optional p=0.5
                                     # lrn: optional size=5, alpha=1e-4, beta=0.75, bias=1.0
                                     # add: source = "<earlier layer>" (residual addition)
                                     # batchnorm: optional eps=1e-5, momentum=0.1

Average pooling counts padded positions in its divisor (PyTorch's ``count_include_pad``).
A linear layer on a ``[C, H, W]`` input flattens it first, in (H, W, C) order (the trainer's
activation layout; :mod:`reference.onnx_import` permutes imported weights to match).

Any other key, a missing or non-positive size, a shape that vanishes or a loss that is not
last raises :class:`NetFileError` (a ``ValueError``) naming the file, the layer and the field.
Output sizes use floor division (``(H + 2*pad - kernel) // stride + 1``); Caffe rounds
pooling up, which changes none of the built-in networks.
"""

from __future__ import annotations

import enum
import json
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import prod
from pathlib import Path


class NetFileError(ValueError):
    """A network description is malformed; the message names the source, layer and field."""


class LayerKind(enum.Enum):
    """Layer types; the value is the ``type`` string of network files."""

    CONV = "conv"
    LINEAR = "linear"
    RELU = "relu"
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    LRN = "lrn"
    DROPOUT = "dropout"
    FLATTEN = "flatten"
    ADD = "add"
    BATCHNORM = "batchnorm"
    SOFTMAX_CE = "softmax_ce"

    @property
    def has_params(self) -> bool:
        return self in (LayerKind.CONV, LayerKind.LINEAR)


# Per kind: required integer fields, optional fields with defaults. `stride=None` for
# pooling means "equal to kernel". Dropout's `p` and LRN's alpha, beta, bias are floats.
_FLOAT_FIELDS = ("p", "alpha", "beta", "bias", "eps", "momentum")
_FIELDS: dict[LayerKind, tuple[tuple[str, ...], dict[str, object]]] = {
    LayerKind.CONV: (("out_channels", "kernel"), {"stride": 1, "pad": 0, "groups": 1}),
    LayerKind.LINEAR: (("out_features",), {}),
    LayerKind.RELU: ((), {}),
    LayerKind.MAXPOOL: (("kernel",), {"stride": None, "pad": 0}),
    LayerKind.AVGPOOL: (("kernel",), {"stride": None, "pad": 0}),
    LayerKind.LRN: ((), {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}),
    LayerKind.DROPOUT: ((), {"p": 0.5}),
    LayerKind.FLATTEN: ((), {}),
    LayerKind.ADD: (("source",), {}),
    LayerKind.BATCHNORM: ((), {"eps": 1e-5, "momentum": 0.1}),
    LayerKind.SOFTMAX_CE: ((), {}),
}


@dataclass(frozen=True)
class Layer:
    """One layer of a sequential network.

    Parameters
    ----------
    name
        Unique within the network; buffer names in a plan are derived from it.
    kind
        The layer type.
    out_channels, kernel, stride, pad, groups
        Convolution (square kernels); ``kernel``, ``stride``, ``pad`` also for pooling.
    out_features
        Linear (fully connected) layer width; a 3-D input is flattened implicitly.
    size, alpha, beta, bias
        Local response normalisation across channels (Caffe/ONNX LRN):
        ``y = x / (bias + alpha / size * sum(x**2 over size channels)) ** beta``.
    p
        Dropout probability (inverted dropout: kept values are scaled by ``1 / (1 - p)``).
    eps, momentum
        Batch normalisation (``batchnorm``, per channel, training mode uses the batch's statistics;
        running averages with PyTorch's ``momentum`` convention serve evaluation).
    source
        Residual addition (``add``): the name of an earlier layer whose output (same shape) is
        added to this layer's input; the error flows back to both.
    """

    name: str
    kind: LayerKind
    out_channels: int = 0
    kernel: int = 0
    stride: int = 1
    pad: int = 0
    groups: int = 1
    out_features: int = 0
    size: int = 0
    p: float = 0.0
    alpha: float = 0.0
    beta: float = 0.0
    bias: float = 0.0
    source: str = ""
    eps: float = 0.0
    momentum: float = 0.0

    def to_dict(self) -> dict[str, object]:
        """The layer as a network-file table (only its kind's fields)."""
        required, optional = _FIELDS[self.kind]
        d: dict[str, object] = {"type": self.kind.value, "name": self.name}
        for key in (*required, *optional):
            d[key] = getattr(self, key)
        return d


@dataclass(frozen=True)
class LayerShape:
    """Per-sample shapes and parameter counts of one layer, from :func:`infer_shapes`."""

    layer: Layer
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weights: int
    biases: int

    @property
    def in_count(self) -> int:
        return prod(self.in_shape)

    @property
    def out_count(self) -> int:
        return prod(self.out_shape)


@dataclass(frozen=True)
class Net:
    """A sequential network: per-sample input shape and layers, validated on construction.

    Raises
    ------
    NetFileError
        If a layer is inconsistent with its input shape, names repeat, or the last layer
        is not the (only) ``softmax_ce`` loss.
    """

    name: str
    input_shape: tuple[int, ...]
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        infer_shapes(self)

    @property
    def param_count(self) -> int:
        return sum(s.weights + s.biases for s in infer_shapes(self))

    @property
    def classes(self) -> int:
        """Width of the logits (the input of the loss)."""
        return infer_shapes(self)[-1].in_shape[0]

    def to_dict(self) -> dict[str, object]:
        """The network as the content of a network file (:func:`net_from_dict` reads it back)."""
        return {"name": self.name, "input": list(self.input_shape), "layers": [la.to_dict() for la in self.layers]}


def _conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    return (n + 2 * pad - kernel) // stride + 1


def infer_shapes(net: Net, source: str | None = None) -> tuple[LayerShape, ...]:
    """Shapes of every layer of ``net``, per sample (the batch dimension is not included).

    Raises
    ------
    NetFileError
        Naming ``source`` (default: the net's name), the layer and the offending field.
    """
    src = source or f"net {net.name!r}"

    def bad(i: int, layer: Layer, msg: str) -> NetFileError:
        return NetFileError(f"{src}: layers[{i}] ({layer.name}): {msg}")

    shape = tuple(net.input_shape)
    if len(shape) not in (1, 3) or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape):
        raise NetFileError(f"{src}: field 'input' = {list(net.input_shape)!r}: must be [C, H, W] or [F] "
                           "of positive integers")
    if not net.layers:
        raise NetFileError(f"{src}: field 'layers' is empty: a network needs at least a softmax_ce loss")
    seen: set[str] = set()
    out: list[LayerShape] = []
    for i, layer in enumerate(net.layers):
        if layer.name in seen or layer.name in ("input", "labels"):
            raise bad(i, layer, f"field 'name' = {layer.name!r}: duplicate or reserved name")
        seen.add(layer.name)
        k = layer.kind
        if k is LayerKind.SOFTMAX_CE and i != len(net.layers) - 1:
            raise bad(i, layer, "softmax_ce must be the last layer")
        if i == len(net.layers) - 1 and k is not LayerKind.SOFTMAX_CE:
            raise bad(i, layer, f"the last layer must be softmax_ce, got {k.value!r}")
        weights = biases = 0
        if k in (LayerKind.CONV, LayerKind.MAXPOOL, LayerKind.AVGPOOL, LayerKind.LRN):
            if len(shape) != 3:
                raise bad(i, layer, f"needs a [C, H, W] input, got {list(shape)}")
        if k is LayerKind.CONV:
            c, h, w = shape
            g = layer.groups
            if c % g or layer.out_channels % g:
                raise bad(i, layer, f"field 'groups' = {g}: must divide in_channels={c} "
                                    f"and out_channels={layer.out_channels}")
            if layer.pad >= layer.kernel:
                raise bad(i, layer, f"field 'pad' = {layer.pad}: must be < kernel={layer.kernel}")
            oh = _conv_out(h, layer.kernel, layer.stride, layer.pad)
            ow = _conv_out(w, layer.kernel, layer.stride, layer.pad)
            if oh < 1 or ow < 1:
                raise bad(i, layer, f"field 'kernel' = {layer.kernel}: larger than the padded input {h}x{w}")
            weights = layer.out_channels * (c // g) * layer.kernel * layer.kernel
            biases = layer.out_channels
            new = (layer.out_channels, oh, ow)
        elif k in (LayerKind.MAXPOOL, LayerKind.AVGPOOL):
            c, h, w = shape
            if layer.pad >= layer.kernel:
                raise bad(i, layer, f"field 'pad' = {layer.pad}: must be < kernel={layer.kernel}")
            oh = _conv_out(h, layer.kernel, layer.stride, layer.pad)
            ow = _conv_out(w, layer.kernel, layer.stride, layer.pad)
            if oh < 1 or ow < 1:
                raise bad(i, layer, f"field 'kernel' = {layer.kernel}: larger than the padded input {h}x{w}")
            new = (c, oh, ow)
        elif k is LayerKind.LINEAR:
            fan_in = prod(shape)
            weights = layer.out_features * fan_in
            biases = layer.out_features
            new = (layer.out_features,)
        elif k is LayerKind.FLATTEN:
            new = (prod(shape),)
        elif k is LayerKind.BATCHNORM:
            weights = biases = shape[0]  # gamma and beta per channel (or per feature)
            new = shape
        elif k is LayerKind.ADD:
            src_shape = next((t.out_shape for t in out if t.layer.name == layer.source), None)
            if src_shape is None:
                raise bad(i, layer, f"field 'source' = {layer.source!r}: not the name of an earlier layer")
            if src_shape != shape:
                raise bad(i, layer, f"field 'source' = {layer.source!r}: its output {list(src_shape)} does not "
                                    f"match this layer's input {list(shape)}")
            new = shape
        elif k is LayerKind.SOFTMAX_CE:
            if len(shape) != 1:
                raise bad(i, layer, f"softmax_ce needs a flat [classes] input, got {list(shape)}")
            new = shape
        else:  # relu, lrn, dropout keep the shape
            new = shape
        out.append(LayerShape(layer, shape, new, weights, biases))
        shape = new
    if not any(s.layer.kind.has_params for s in out):
        raise NetFileError(f"{src}: no conv or linear layer: nothing to train")
    return tuple(out)


def _positive_int(src: str, where: str, key: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise NetFileError(f"{src}: {where}: field {key!r} = {v!r}: must be a positive integer")
    return v


def net_from_dict(d: Mapping[str, object], source: str = "<dict>", default_name: str = "net") -> Net:
    """Build and validate a :class:`Net` from the parsed content of a network file.

    Raises
    ------
    NetFileError
        Unknown or missing keys, wrong types, non-positive sizes, inconsistent shapes.
    """
    if not isinstance(d, Mapping):
        raise NetFileError(f"{source}: top level must be a table/object, got {type(d).__name__}")
    unknown = set(d) - {"name", "input", "layers"}
    if unknown:
        raise NetFileError(f"{source}: unknown top-level field(s) {sorted(unknown)}; "
                           "allowed: name, input, layers")
    name = d.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise NetFileError(f"{source}: field 'name' = {name!r}: must be a non-empty string")
    if "input" not in d:
        raise NetFileError(f"{source}: missing field 'input' (per-sample shape, e.g. [1, 8, 8])")
    inp = d["input"]
    if not isinstance(inp, list | tuple) or len(inp) not in (1, 3):
        raise NetFileError(f"{source}: field 'input' = {inp!r}: must be [C, H, W] or [F]")
    input_shape = tuple(_positive_int(source, "input", "input", v) for v in inp)
    raw_layers = d.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise NetFileError(f"{source}: field 'layers' = {raw_layers!r}: must be a non-empty list of tables")
    layers: list[Layer] = []
    for i, raw in enumerate(raw_layers):
        where = f"layers[{i}]"
        if not isinstance(raw, Mapping):
            raise NetFileError(f"{source}: {where}: must be a table/object, got {raw!r}")
        t = raw.get("type")
        try:
            kind = LayerKind(t)
        except ValueError:
            allowed = ", ".join(k.value for k in LayerKind)
            raise NetFileError(f"{source}: {where}: field 'type' = {t!r}: must be one of {allowed}") from None
        lname = raw.get("name", f"{kind.value}{i}")
        if not isinstance(lname, str) or not lname:
            raise NetFileError(f"{source}: {where}: field 'name' = {lname!r}: must be a non-empty string")
        where = f"layers[{i}] ({lname})"
        required, optional = _FIELDS[kind]
        extra = set(raw) - {"type", "name", *required, *optional}
        if extra:
            raise NetFileError(f"{source}: {where}: unknown field(s) {sorted(extra)} for type {kind.value!r}; "
                               f"allowed: {', '.join([*required, *optional]) or 'none'}")
        kw: dict[str, object] = {}
        for key in required:
            if key not in raw:
                raise NetFileError(f"{source}: {where}: missing field {key!r} for type {kind.value!r}")
            if key == "source":
                if not isinstance(raw[key], str) or not raw[key]:
                    raise NetFileError(f"{source}: {where}: field 'source' = {raw[key]!r}: must be a layer name")
                kw[key] = raw[key]
                continue
            kw[key] = _positive_int(source, where, key, raw[key])
        for key, default in optional.items():
            v = raw.get(key, default)
            if key == "p":
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
                    raise NetFileError(f"{source}: {where}: field 'p' = {v!r}: must be a number in [0, 1)")
                kw[key] = float(v)
            elif key in _FLOAT_FIELDS:
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 < v < 1e6:
                    raise NetFileError(f"{source}: {where}: field {key!r} = {v!r}: must be a positive number")
                kw[key] = float(v)
            elif key == "pad":
                if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                    raise NetFileError(f"{source}: {where}: field 'pad' = {v!r}: must be an integer >= 0")
                kw[key] = v
            elif key == "stride" and v is None:
                kw[key] = kw["kernel"]
            else:
                kw[key] = _positive_int(source, where, key, v)
        layers.append(Layer(name=lname, kind=kind, **kw))  # type: ignore[arg-type]
    # Build without __post_init__ so the validation error below names the file, not the net.
    net = Net.__new__(Net)
    object.__setattr__(net, "name", name)
    object.__setattr__(net, "input_shape", input_shape)
    object.__setattr__(net, "layers", tuple(layers))
    infer_shapes(net, source)  # validate with the file named in the message
    return net


def load_net(path: str | Path) -> Net:
    """Read a network file (``.json`` or ``.toml``).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    NetFileError
        If the file cannot be parsed or describes an invalid network.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".json":
            d = json.loads(text)
        elif suffix == ".toml":
            d = tomllib.loads(text)
        else:
            raise NetFileError(f"{p}: unknown extension {p.suffix!r}: use .json or .toml")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise NetFileError(f"{p}: not valid {suffix[1:].upper()}: {exc}") from None
    return net_from_dict(d, source=str(p), default_name=p.stem)


# ---------------------------------------------------------------------------------------
# Built-in networks


def _conv(name: str, out: int, k: int, stride: int = 1, pad: int = 0, groups: int = 1) -> Layer:
    return Layer(name, LayerKind.CONV, out_channels=out, kernel=k, stride=stride, pad=pad, groups=groups)


def _pool(name: str, k: int, stride: int) -> Layer:
    return Layer(name, LayerKind.MAXPOOL, kernel=k, stride=stride)


def _relu(name: str) -> Layer:
    return Layer(name, LayerKind.RELU)


def _fc(name: str, out: int) -> Layer:
    return Layer(name, LayerKind.LINEAR, out_features=out)


def _lrn(name: str) -> Layer:
    return Layer(name, LayerKind.LRN, size=5, alpha=1e-4, beta=0.75, bias=1.0)


def _loss() -> Layer:
    return Layer("loss", LayerKind.SOFTMAX_CE)


def alexnet() -> Net:
    """Caffe ``bvlc_alexnet``: 3x227x227, grouped conv2/4/5, LRN, dropout, 1000 classes (61.0 M params)."""
    ls = [
        _conv("conv1", 96, 11, stride=4), _relu("relu1"), _lrn("norm1"),
        _pool("pool1", 3, 2),
        _conv("conv2", 256, 5, pad=2, groups=2), _relu("relu2"), _lrn("norm2"),
        _pool("pool2", 3, 2),
        _conv("conv3", 384, 3, pad=1), _relu("relu3"),
        _conv("conv4", 384, 3, pad=1, groups=2), _relu("relu4"),
        _conv("conv5", 256, 3, pad=1, groups=2), _relu("relu5"), _pool("pool5", 3, 2),
        _fc("fc6", 4096), _relu("relu6"), Layer("drop6", LayerKind.DROPOUT, p=0.5),
        _fc("fc7", 4096), _relu("relu7"), Layer("drop7", LayerKind.DROPOUT, p=0.5),
        _fc("fc8", 1000), _loss(),
    ]
    return Net("alexnet", (3, 227, 227), tuple(ls))


def vgg16() -> Net:
    """VGG-16 (configuration D): 3x224x224, thirteen 3x3 convs, three FC, dropout (138.4 M params)."""
    ls: list[Layer] = []
    for block, (n, ch) in enumerate([(2, 64), (2, 128), (3, 256), (3, 512), (3, 512)], start=1):
        for j in range(1, n + 1):
            ls += [_conv(f"conv{block}_{j}", ch, 3, pad=1), _relu(f"relu{block}_{j}")]
        ls.append(_pool(f"pool{block}", 2, 2))
    ls += [
        _fc("fc6", 4096), _relu("relu6"), Layer("drop6", LayerKind.DROPOUT, p=0.5),
        _fc("fc7", 4096), _relu("relu7"), Layer("drop7", LayerKind.DROPOUT, p=0.5),
        _fc("fc8", 1000), _loss(),
    ]
    return Net("vgg16", (3, 224, 224), tuple(ls))


def lenet5(input_shape: tuple[int, ...] = (1, 32, 32), classes: int = 10) -> Net:
    """LeNet-5 shapes (1x32x32, conv 6/16 5x5, FC 120/84/10) with max pooling and ReLU.

    On a 28x28 input (MNIST) the first convolution pads by 2: the 32x32 input LeCun made
    by padding MNIST's 28x28 images. Other input sizes are taken as they are.
    """
    pad = 2 if tuple(input_shape[1:]) == (28, 28) else 0
    ls = [
        _conv("conv1", 6, 5, pad=pad), _relu("relu1"), _pool("pool1", 2, 2),
        _conv("conv2", 16, 5), _relu("relu2"), _pool("pool2", 2, 2),
        Layer("flatten", LayerKind.FLATTEN),
        _fc("fc3", 120), _relu("relu3"), _fc("fc4", 84), _relu("relu4"), _fc("fc5", classes), _loss(),
    ]
    return Net("lenet5", tuple(input_shape), tuple(ls))


def cnn(input_shape: tuple[int, ...] = (1, 8, 8), classes: int = 10) -> Net:
    """The trainer's CNN (``dlu train --net cnn``), for ``C x H x W`` images (H, W multiples of 4).

    conv3x3 8 pad 1, ReLU, maxpool 2, conv3x3 16 pad 1, ReLU, maxpool 2, flatten,
    linear -> 32, ReLU, linear -> classes.
    """
    ls = [
        _conv("conv1", 8, 3, pad=1), _relu("relu1"), _pool("pool1", 2, 2),
        _conv("conv2", 16, 3, pad=1), _relu("relu2"), _pool("pool2", 2, 2),
        Layer("flatten", LayerKind.FLATTEN), _fc("fc1", 32), _relu("relu3"), _fc("fc2", classes), _loss(),
    ]
    return Net("cnn", tuple(input_shape), tuple(ls))


def mlp(input_shape: tuple[int, ...] = (64,), classes: int = 10) -> Net:
    """The trainer's MLP (``dlu train --net mlp``): linear -> 64, ReLU, linear -> classes, on flat input."""
    ls = [_fc("fc1", 64), _relu("relu1"), _fc("fc2", classes), _loss()]
    return Net("mlp", (prod(input_shape),), tuple(ls))


def digits_cnn() -> Net:
    """:func:`cnn` on 1x8x8 digits, under the name the memory planner's figures use."""
    n = cnn((1, 8, 8), 10)
    return Net("digits_cnn", n.input_shape, n.layers)


#: Built-ins that take the data's per-sample shape and number of classes: ``f(input_shape, classes)``.
ADAPTIVE_NETS: dict[str, Callable[[tuple[int, ...], int], Net]] = {
    "cnn": cnn,
    "mlp": mlp,
    "lenet5": lenet5,
}

BUILTIN_NETS: dict[str, Callable[[], Net]] = {
    "alexnet": alexnet,
    "vgg16": vgg16,
    "lenet5": lenet5,
    "digits_cnn": digits_cnn,
    "cnn": cnn,
    "mlp": mlp,
}


def resolve_net(spec: str) -> Net:
    """A built-in network by name, else a network file by path.

    Raises
    ------
    FileNotFoundError
        If ``spec`` is neither a built-in name nor an existing file.
    NetFileError
        If the file is malformed.
    """
    if spec in BUILTIN_NETS:
        return BUILTIN_NETS[spec]()
    p = Path(spec)
    if not p.exists():
        raise FileNotFoundError(f"net {spec!r}: not a built-in ({', '.join(BUILTIN_NETS)}) and no such file")
    return load_net(p)


def net_for_data(spec: str | Net | Mapping[str, object], input_shape: tuple[int, ...], classes: int) -> Net:
    """The network ``spec`` (built-in name, file, parsed file content or :class:`Net`) for data of
    per-sample shape ``input_shape`` (``(C, H, W)``) and ``classes`` classes.

    Built-ins of :data:`ADAPTIVE_NETS` are built for the data; any other network must match it.

    Raises
    ------
    NetFileError
        The network's input or number of classes does not match the data (one line naming both).
    FileNotFoundError
        ``spec`` is neither a built-in nor a file.
    """
    if isinstance(spec, str) and spec in ADAPTIVE_NETS:
        return ADAPTIVE_NETS[spec](tuple(input_shape), classes)
    if isinstance(spec, Net):
        net = spec
    elif isinstance(spec, Mapping):
        net = net_from_dict(spec, "<net>", str(spec.get("name", "net")))
    else:
        net = resolve_net(spec)
    inp = tuple(net.input_shape)
    want = tuple(input_shape)
    if inp != want and not (len(inp) == 1 and inp[0] == prod(want)):
        raise NetFileError(f"net {net.name!r}: input {list(inp)} does not match the data's samples "
                           f"{list(want)} (C, H, W)")
    if net.classes != classes:
        raise NetFileError(f"net {net.name!r}: {net.classes} outputs but the data has {classes} classes")
    return net


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"toml: cannot write {v!r}")


def net_to_toml(net: Net) -> str:
    """The network as a TOML network file (:func:`load_net` reads it back to an equal :class:`Net`)."""
    d = net.to_dict()
    lines = [f"name = {_toml_value(d['name'])}", f"input = {_toml_value(d['input'])}"]
    for la in d["layers"]:  # type: ignore[union-attr]
        lines += ["", "[[layers]]"] + [f"{k} = {_toml_value(v)}" for k, v in la.items()]
    return "\n".join(lines) + "\n"

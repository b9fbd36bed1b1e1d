"""Network descriptions for the training-memory planner (:mod:`reference.memplan`).

A :class:`Net` is a sequential chain of :class:`Layer` objects on a per-sample input shape
(``(C, H, W)`` or ``(F,)``), ending in a softmax cross-entropy loss. Only what decides
memory is described: shapes, parameter counts and which layers exist. The numerics of
each layer live in the trainer, not here.

Built-in networks (:data:`BUILTIN_NETS`): ``alexnet`` (Caffe's ``bvlc_alexnet``, grouped
convolutions), ``vgg16`` (configuration D), ``lenet5`` (LeCun 1998 shapes with max
pooling and ReLU) and ``digits_cnn`` (the project's CNN for 8x8 digits, kept in sync with
``reference/models.py`` by a test).

Network files
-------------
JSON (``.json``) or TOML (``.toml``) with the keys::

    name   = "tiny"                  # optional, defaults to the file stem
    input  = [1, 8, 8]              # per-sample shape: [C, H, W] or [F]
    [[layers]]                       # in order; the last one must be softmax_ce
    type = "conv"                    # conv | linear | relu | maxpool | lrn | dropout | flatten | softmax_ce
    name = "conv1"                   # optional, defaults to "<type><index>"
    out_channels = 8                 # conv: out_channels, kernel; optional stride=1, pad=0, groups=1
    kernel = 3                       # maxpool: kernel; optional stride=kernel, pad=0
    pad = 1                          # linear: out_features; lrn: optional size=5; dropout: optional p=0.5

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
    LRN = "lrn"
    DROPOUT = "dropout"
    FLATTEN = "flatten"
    SOFTMAX_CE = "softmax_ce"

    @property
    def has_params(self) -> bool:
        return self in (LayerKind.CONV, LayerKind.LINEAR)


# Per kind: required integer fields, optional fields with defaults. `stride=None` for
# maxpool means "equal to kernel". Dropout's `p` is a float.
_FIELDS: dict[LayerKind, tuple[tuple[str, ...], dict[str, object]]] = {
    LayerKind.CONV: (("out_channels", "kernel"), {"stride": 1, "pad": 0, "groups": 1}),
    LayerKind.LINEAR: (("out_features",), {}),
    LayerKind.RELU: ((), {}),
    LayerKind.MAXPOOL: (("kernel",), {"stride": None, "pad": 0}),
    LayerKind.LRN: ((), {"size": 5}),
    LayerKind.DROPOUT: ((), {"p": 0.5}),
    LayerKind.FLATTEN: ((), {}),
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
        Convolution (square kernels); ``kernel``, ``stride``, ``pad`` also for max pooling.
    out_features
        Linear (fully connected) layer width; a 3-D input is flattened implicitly.
    size
        Local response normalisation window (channels).
    p
        Dropout probability (does not affect memory; validated only).
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
        if k in (LayerKind.CONV, LayerKind.MAXPOOL, LayerKind.LRN):
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
        elif k is LayerKind.MAXPOOL:
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
            kw[key] = _positive_int(source, where, key, raw[key])
        for key, default in optional.items():
            v = raw.get(key, default)
            if key == "p":
                if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v < 1.0:
                    raise NetFileError(f"{source}: {where}: field 'p' = {v!r}: must be a number in [0, 1)")
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


def _loss() -> Layer:
    return Layer("loss", LayerKind.SOFTMAX_CE)


def alexnet() -> Net:
    """Caffe ``bvlc_alexnet``: 3x227x227, grouped conv2/4/5, LRN, dropout, 1000 classes (61.0 M params)."""
    ls = [
        _conv("conv1", 96, 11, stride=4), _relu("relu1"), Layer("norm1", LayerKind.LRN, size=5),
        _pool("pool1", 3, 2),
        _conv("conv2", 256, 5, pad=2, groups=2), _relu("relu2"), Layer("norm2", LayerKind.LRN, size=5),
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


def lenet5() -> Net:
    """LeNet-5 shapes (1x32x32, conv 6/16 5x5, FC 120/84/10) with max pooling and ReLU."""
    ls = [
        _conv("conv1", 6, 5), _relu("relu1"), _pool("pool1", 2, 2),
        _conv("conv2", 16, 5), _relu("relu2"), _pool("pool2", 2, 2),
        Layer("flatten", LayerKind.FLATTEN),
        _fc("fc3", 120), _relu("relu3"), _fc("fc4", 84), _relu("relu4"), _fc("fc5", 10), _loss(),
    ]
    return Net("lenet5", (1, 32, 32), tuple(ls))


def digits_cnn() -> Net:
    """The project's CNN for 1x8x8 digits, as ``reference.models.build_model("cnn")`` builds it.

    conv3x3 8 pad 1, ReLU, maxpool 2, conv3x3 16 pad 1, ReLU, maxpool 2, flatten,
    linear 64->32, ReLU, linear 32->10. The brief that specified this file described a single
    linear 64->10; ``reference/models.py`` has the extra hidden layer, and this description
    follows the code. ``tests/reference/test_nets.py`` compares the two, so a change to
    either fails there.
    """
    ls = [
        _conv("conv1", 8, 3, pad=1), _relu("relu1"), _pool("pool1", 2, 2),
        _conv("conv2", 16, 3, pad=1), _relu("relu2"), _pool("pool2", 2, 2),
        Layer("flatten", LayerKind.FLATTEN), _fc("fc1", 32), _relu("relu3"), _fc("fc2", 10), _loss(),
    ]
    return Net("digits_cnn", (1, 8, 8), tuple(ls))


BUILTIN_NETS: dict[str, Callable[[], Net]] = {
    "alexnet": alexnet,
    "vgg16": vgg16,
    "lenet5": lenet5,
    "digits_cnn": digits_cnn,
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

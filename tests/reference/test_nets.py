"""Network descriptions: built-in shapes against published figures, file loading and rejection."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reference.nets import (
    BUILTIN_NETS,
    LayerKind,
    NetFileError,
    alexnet,
    digits_cnn,
    infer_shapes,
    load_net,
    net_from_dict,
    resolve_net,
    vgg16,
)


def test_alexnet_matches_caffe_bvlc_shapes_and_parameter_count():
    shapes = {s.layer.name: s for s in infer_shapes(alexnet())}
    # Published: bvlc_alexnet has 60,965,224 parameters; conv1 55x55, pool5 6x6x256.
    assert alexnet().param_count == 60_965_224
    assert shapes["conv1"].out_shape == (96, 55, 55)
    assert shapes["pool2"].out_shape == (256, 13, 13)
    assert shapes["pool5"].out_shape == (256, 6, 6)
    assert shapes["fc6"].weights == 9216 * 4096
    assert shapes["conv2"].weights == 256 * 48 * 5 * 5  # groups=2 halves the fan-in


def test_vgg16_parameter_count_is_the_published_138m():
    assert vgg16().param_count == 138_357_544
    last_pool = [s for s in infer_shapes(vgg16()) if s.layer.name == "pool5"][0]
    assert last_pool.out_shape == (512, 7, 7)


def test_digits_cnn_matches_the_trainers_cnn_in_reference_models():
    from reference.models import build_model

    model = build_model("cnn", image_hwc=(8, 8, 1), classes=10)
    # The trainer's layers with parameters, in order: (name, weight count, bias count).
    theirs = [(layer.name, int(np.prod(layer.weight.shape)), int(np.prod(layer.bias.shape)))
              for layer in model.layers if layer.params()]
    ours = [(s.layer.name, s.weights, s.biases) for s in infer_shapes(digits_cnn()) if s.layer.kind.has_params]
    assert ours == theirs
    theirs_kinds = [type(layer).__name__ for layer in model.layers]
    ours_kinds = [s.layer.kind for s in infer_shapes(digits_cnn())][:-1]  # the trainer's loss is not a layer
    names = {LayerKind.CONV: "Conv2d", LayerKind.RELU: "ReLU", LayerKind.MAXPOOL: "MaxPool2d",
             LayerKind.FLATTEN: "Flatten", LayerKind.LINEAR: "Linear"}
    assert [names[k] for k in ours_kinds] == theirs_kinds
    assert digits_cnn().input_shape == (1, 8, 8)
    # by hand: 8*(1*9)+8 + 16*(8*9)+16 + 32*64+32 + 10*32+10
    assert digits_cnn().param_count == 80 + 1168 + 2080 + 330


@pytest.mark.parametrize("name", sorted(BUILTIN_NETS))
def test_builtins_resolve_by_name(name):
    assert resolve_net(name).name == name


TINY = {
    "name": "tiny",
    "input": [1, 8, 8],
    "layers": [
        {"type": "conv", "name": "c1", "out_channels": 4, "kernel": 3, "pad": 1},
        {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "flatten"},
        {"type": "dropout", "p": 0.25},
        {"type": "linear", "out_features": 3},
        {"type": "softmax_ce"},
    ],
}


def test_json_and_toml_files_load_to_the_same_net(tmp_path):
    pj = tmp_path / "tiny.json"
    pj.write_text(json.dumps(TINY))
    pt = tmp_path / "tiny.toml"
    pt.write_text(
        'name = "tiny"\ninput = [1, 8, 8]\n'
        '[[layers]]\ntype = "conv"\nname = "c1"\nout_channels = 4\nkernel = 3\npad = 1\n'
        '[[layers]]\ntype = "relu"\n[[layers]]\ntype = "maxpool"\nkernel = 2\n'
        '[[layers]]\ntype = "flatten"\n[[layers]]\ntype = "dropout"\np = 0.25\n'
        '[[layers]]\ntype = "linear"\nout_features = 3\n[[layers]]\ntype = "softmax_ce"\n'
    )
    a, b = load_net(pj), load_net(pt)
    assert a == b
    shapes = infer_shapes(a)
    assert shapes[2].out_shape == (4, 4, 4)  # maxpool stride defaults to its kernel
    assert shapes[1].layer.name == "relu1"  # default names: type + index
    assert shapes[5].weights == 3 * 64


def _bad(tmp_path, d, name="bad.json"):
    p = tmp_path / name
    p.write_text(json.dumps(d) if not isinstance(d, str) else d)
    with pytest.raises(NetFileError) as ei:
        load_net(p)
    msg = str(ei.value)
    assert str(p) in msg
    return msg


def _layers(*changes):
    d = json.loads(json.dumps(TINY))
    for i, key, value in changes:
        if value is None:
            d["layers"][i].pop(key)
        else:
            d["layers"][i][key] = value
    return d


@pytest.mark.parametrize("changes, needle", [
    ([(0, "kernel", 0)], "field 'kernel' = 0"),
    ([(0, "kernel", None)], "missing field 'kernel'"),
    ([(0, "type", "convolution")], "field 'type' = 'convolution'"),
    ([(0, "kernal", 3)], "unknown field(s) ['kernal']"),
    ([(0, "out_channels", "4")], "field 'out_channels' = '4'"),
    ([(0, "groups", 3)], "field 'groups' = 3"),
    ([(0, "kernel", 11), (0, "pad", 1)], "field 'kernel' = 11"),
    ([(4, "p", 1.5)], "field 'p' = 1.5"),
    ([(1, "name", "c1")], "field 'name' = 'c1': duplicate"),
    ([(0, "pad", -1)], "field 'pad' = -1"),
])
def test_malformed_layers_are_rejected_naming_layer_and_field(tmp_path, changes, needle):
    msg = _bad(tmp_path, _layers(*changes))
    assert needle in msg
    assert "layers[" in msg


def test_structure_errors_are_rejected(tmp_path):
    d = json.loads(json.dumps(TINY))
    d["layers"] = d["layers"][:-1]
    assert "last layer must be softmax_ce" in _bad(tmp_path, d)
    d = json.loads(json.dumps(TINY))
    d["layers"].insert(2, {"type": "softmax_ce"})
    assert "softmax_ce must be the last layer" in _bad(tmp_path, d)
    d = json.loads(json.dumps(TINY))
    d["input"] = [1, 0, 8]
    assert "'input'" in _bad(tmp_path, d)
    d = json.loads(json.dumps(TINY))
    d["input"] = [64]
    assert "needs a [C, H, W] input" in _bad(tmp_path, d)
    d = json.loads(json.dumps(TINY))
    d["extra"] = 1
    assert "unknown top-level field(s) ['extra']" in _bad(tmp_path, d)
    assert "field 'layers'" in _bad(tmp_path, {"input": [4], "layers": []})
    assert "no conv or linear layer" in _bad(tmp_path, {"input": [4], "layers": [{"type": "softmax_ce"}]})
    assert "not valid JSON" in _bad(tmp_path, "{oops")
    assert "not valid TOML" in _bad(tmp_path, "input = [", name="bad.toml")
    assert "unknown extension" in _bad(tmp_path, "{}", name="bad.yaml")


def test_missing_file_is_file_not_found():
    with pytest.raises(FileNotFoundError, match="no-such-net.json"):
        resolve_net("no-such-net.json")


def test_net_from_dict_rejects_non_mapping():
    with pytest.raises(NetFileError, match="top level"):
        net_from_dict([1, 2, 3])  # type: ignore[arg-type]

"""ONNX import: a small CNN written with onnx.helper imports, computes what onnx's own reference
evaluator computes, and trains; unsupported operators are named and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from reference.layers import FloatBackend  # noqa: E402
from reference.models import build_model  # noqa: E402
from reference.nets import LayerKind, load_net  # noqa: E402
from reference.onnx_import import OnnxImportError, import_onnx, initial_weights  # noqa: E402

SEED = 31


def _cnn_onnx(path, seed=SEED, extra_node=None, classes=10, lrn=True):
    """Conv(1->4, 3x3, pad 1) Relu MaxPool(2) Conv(4->6, 3x3, stride 2, groups 2) Relu LRN AveragePool(2, stride 1)
    Flatten Dropout Gemm(transB) Softmax on 1x8x8."""
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array((0.3 * rng.standard_normal(shape)).astype(np.float32), name)

    inits = [init("w1", 4, 1, 3, 3), init("b1", 4), init("w2", 6, 2, 3, 3), init("b2", 6),
             init("w3", classes, 6), init("b3", classes)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         strides=[2, 2], group=2),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("LRN", ["r2"], ["n2"], name="norm2", size=3, alpha=0.2, beta=0.75, bias=1.0),
        helper.make_node("AveragePool", ["n2"], ["p2"], name="pool2", kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Dropout", ["f"], ["d"], name="drop"),
        helper.make_node("Gemm", ["d", "w3", "b3"], ["z"], name="fc", transB=1),
        helper.make_node("Softmax", ["z"], ["y"], name="softmax", axis=1),
    ]
    if not lrn:
        nodes.pop(5)
        nodes[5].input[0] = "r2"
    if extra_node is not None:
        nodes.insert(2, extra_node)
        nodes[3].input[0] = extra_node.output[0]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return model


def test_imported_cnn_computes_what_the_onnx_reference_evaluator_computes(tmp_path):
    """Without the LRN node: onnx 1.23.2's reference LRN loops over the batch axis instead of the
    channels (op_lrn.py), so it is no oracle; our LRN is checked against its formula in test_layers_nets."""
    from onnx.reference import ReferenceEvaluator

    kinds = [la.kind for la in import_onnx(_cnn_onnx(tmp_path / "lrn.onnx") and tmp_path / "lrn.onnx").net.layers]
    assert kinds == [LayerKind.CONV, LayerKind.RELU, LayerKind.MAXPOOL, LayerKind.CONV, LayerKind.RELU, LayerKind.LRN,
                     LayerKind.AVGPOOL, LayerKind.FLATTEN, LayerKind.DROPOUT, LayerKind.LINEAR, LayerKind.SOFTMAX_CE]
    f = tmp_path / "cnn.onnx"
    model = _cnn_onnx(f, lrn=False)
    imp = import_onnx(f)
    assert imp.net.layers[3].stride == 2 and imp.net.layers[3].groups == 2
    m = build_model(imp.net, (8, 8, 1), 10)
    m.training = False
    be = FloatBackend(np.float64)
    m.bind(be, imp.weights)
    x = np.random.default_rng(SEED).random((3, 1, 8, 8)).astype(np.float32)
    logits = m.forward(be, be.load(m.input_tid, m.input_matrix(x.transpose(0, 2, 3, 1).reshape(3, -1)))).t
    ours = np.exp(logits - logits.max(1, keepdims=True))
    ours /= ours.sum(1, keepdims=True)
    want = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(ours, want, rtol=2e-5, atol=1e-6, err_msg=f"seed {SEED}")


def test_dlu_import_writes_a_net_file_that_trains_from_the_onnx_weights(tmp_path, capsys):
    from dlu.cli import main

    f = tmp_path / "cnn.onnx"
    _cnn_onnx(f)
    out = tmp_path / "cnn.toml"
    assert main(["import", str(f), "--out", str(out)]) == 0
    net = load_net(out)
    assert net == import_onnx(f).net
    runs = tmp_path / "runs"
    assert main(["train", "--net", str(out), "--init-from", str(f), "--precision", "dfp16", "--epochs", "4",
                 "--batch", "32", "--lr-schedule", "constant", "--out", str(runs), "--name", "r", "--no-plots",
                 "--quiet", "--trace-iters", "0"]) == 0
    import json

    metrics = json.loads((runs / "r" / "metrics.json").read_text())
    assert metrics["train_config"]["init_from"] == str(f)
    losses = [e["loss"] for e in metrics["epochs"]]
    assert losses[-1] < losses[0] - 0.03 and metrics["final"]["test_acc"] > 0.2, metrics["epochs"]  # chance: 0.1
    assert main(["import", str(f), "--out", str(out)]) == 2  # exists
    assert "exists" in capsys.readouterr().err


def test_init_from_takes_the_onnx_initializers_and_checks_shapes(tmp_path):
    f = tmp_path / "cnn.onnx"
    _cnn_onnx(f)
    m = build_model(import_onnx(f).net, (8, 8, 1), 10)
    got = initial_weights(f, {p.name: p.shape for p in m.params()})
    w1 = numpy_helper.to_array(onnx.load(str(f)).graph.initializer[0])  # [4, 1, 3, 3]
    assert np.array_equal(got["conv1.weight"], w1.transpose(2, 3, 1, 0).reshape(9, 4).astype(np.float64))
    with pytest.raises(OnnxImportError, match=r"parameter 'conv1.weight' has shape \[9, 4\], the network needs"):
        initial_weights(f, {"conv1.weight": (9, 5)})
    with pytest.raises(OnnxImportError, match="no initializer for parameter 'fc9.weight'"):
        initial_weights(f, {"fc9.weight": (1, 1)})


def test_unsupported_operator_is_named_with_its_node_and_nothing_is_written(tmp_path, capsys):
    from dlu.cli import main

    f = tmp_path / "bad.onnx"
    _cnn_onnx(f, extra_node=helper.make_node("Sigmoid", ["r1"], ["s1"], name="squash"))
    out = tmp_path / "bad.toml"
    assert main(["import", str(f), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "node 'squash' (Sigmoid): unsupported operator" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".bad.toml*"))


def test_a_graph_that_is_not_a_chain_is_refused(tmp_path):
    f = tmp_path / "res.onnx"
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Add", ["a", "x"], ["b"], name="residual"),
             helper.make_node("Flatten", ["b"], ["c"], name="fl")]
    graph = helper.make_graph(nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(f))
    with pytest.raises(OnnxImportError, match=r"node 'residual' \(Add\): adds 'x', which is not the output of an "
                                              "earlier layer"):
        import_onnx(f)
    f.write_bytes(b"not onnx")
    with pytest.raises(OnnxImportError, match="not a valid ONNX model"):
        import_onnx(f)


def test_resnet_style_block_with_batch_norm_imports_and_trains(tmp_path):
    """Conv-BN-Relu, Conv-BN, Add(identity skip), Relu, pooling, Gemm: a ResNet basic block."""
    from reference.data import load_digits_split
    from reference.train import Precision, TrainConfig, train

    rng = np.random.default_rng(SEED + 1)

    def init(name, *shape, scale=0.3):
        return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)

    ones, zeros = (numpy_helper.from_array(np.full(4, v, np.float32), n) for v, n in ((1.0, "g"), (0.0, "z")))
    inits = [init("w0", 4, 1, 3, 3, scale=0.47), init("w1", 4, 4, 3, 3, scale=0.24), init("w2", 4, 4, 3, 3, scale=0.24),
             init("wf", 10, 64, scale=0.18), init("bf", 10, scale=0.0), ones, zeros,  # He-normal scales
             numpy_helper.from_array(np.zeros(4, np.float32), "m"),
             numpy_helper.from_array(np.ones(4, np.float32), "v")]
    bn = ["g", "z", "m", "v"]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="stem_relu"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", *bn], ["b1"], name="bn1", epsilon=1e-5, momentum=0.9),
        helper.make_node("Relu", ["b1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c2", *bn], ["b2"], name="bn2"),
        helper.make_node("Add", ["b2", "r0"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "resblock",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    f = tmp_path / "res.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(f))
    imp = import_onnx(f)
    skip = next(la for la in imp.net.layers if la.kind is LayerKind.ADD)
    assert skip.source == "stem_relu" and imp.net.layers[3].kind is LayerKind.BATCHNORM
    assert imp.net.layers[3].momentum == pytest.approx(0.1)
    assert np.array_equal(imp.weights["bn1.weight"], np.ones((1, 4)))
    d = load_digits_split()
    from reference.data import Dataset

    small = Dataset("digits[:640]", d.x_train[:640], d.y_train[:640], d.x_test[:200], d.y_test[:200], (8, 8, 1))
    from reference.onnx_import import write_net_file

    write_net_file(imp.net, tmp_path / "res.toml")
    r = train(TrainConfig(model=str(tmp_path / "res.toml"), init_from=str(f), precision=Precision.DFP16, epochs=4,
                          seed=SEED), small)
    losses = [e["loss"] for e in r.metrics["epochs"]]
    assert losses[-1] < 0.5 * losses[0] and r.metrics["final"]["test_acc"] > 0.8, r.metrics["epochs"]


def test_pytorch_module_exports_imports_and_trains(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is an optional extra (pip install .[torch])")
    from reference.data import load_digits_split
    from reference.onnx_import import onnx_from_torch

    torch.manual_seed(SEED)
    nn = torch.nn
    module = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    f = onnx_from_torch(module, (1, 8, 8), tmp_path / "t.onnx")
    imp = import_onnx(f)
    m = build_model(imp.net, (8, 8, 1), 10)
    be = FloatBackend(np.float64)
    m.bind(be, imp.weights)
    d = load_digits_split()
    x = d.x_test[:5]
    ours = m.forward(be, be.load(m.input_tid, m.input_matrix(x))).t
    with torch.no_grad():
        want = module(torch.tensor(x.reshape(5, 8, 8, 1).transpose(0, 3, 1, 2), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-5)

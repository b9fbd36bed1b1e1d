"""Layers: finite-difference gradients (float64), exact data movement, dfp backend, SGD chain."""

from __future__ import annotations

import numpy as np
import pytest

from reference.config import PRESETS
from reference.engine import Engine
from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from reference.layers import (
    Conv2d,
    DfpBackend,
    Flatten,
    FloatBackend,
    Linear,
    MaxPool2d,
    Ref,
    ReLU,
    TensorClass,
    TensorIds,
    im2col,
    sgd_step,
    softmax_cross_entropy,
)
from reference.models import build_model
from reference.ops import Op

F64 = FloatBackend(np.float64)
EPS = 1e-6


def _numgrad(f, x: np.ndarray) -> np.ndarray:
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + EPS
        fp = f()
        x[i] = old - EPS
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * EPS)
    return g


def _check_layer(layer, x: np.ndarray, seed: int, x_tid: int = 0):
    """Loss L = sum(y * R): dL/dy = R. Checks dX and every parameter gradient numerically."""
    rng = np.random.default_rng(seed)
    if layer.params():
        vals = layer.init(rng)
        for p in layer.params():
            p.value = Ref(vals[p.name] + 0.1 * rng.standard_normal(p.shape), p.w_tid)
    y = layer.forward(F64, Ref(x, x_tid))
    r = rng.standard_normal(y.t.shape)

    def loss():
        return float(np.sum(layer.forward(F64, Ref(x, x_tid)).t * r))

    layer.forward(F64, Ref(x, x_tid))
    dx = layer.backward_input(F64, Ref(r, layer.out_err))
    layer.backward_weights(F64, Ref(r, layer.out_err))
    np.testing.assert_allclose(dx.t, _numgrad(loss, x), rtol=1e-6, atol=1e-7, err_msg=f"dX, seed {seed}")
    for p in layer.params():
        grad = p.grad.t
        np.testing.assert_allclose(grad, _numgrad(loss, p.value.t), rtol=1e-6, atol=1e-7,
                                   err_msg=f"{p.name}, seed {seed}")


def test_linear_gradients():
    ids = TensorIds(64)
    layer = Linear(ids, "fc", 7, 5, in_err=ids.new("in.err", TensorClass.ERROR))
    _check_layer(layer, np.random.default_rng(1).standard_normal((4, 7)), seed=1)


@pytest.mark.parametrize("k, pad", [(3, 1), (3, 0), (2, 1), (1, 0)])
def test_conv2d_gradients(k, pad):
    ids = TensorIds(64)
    layer = Conv2d(ids, "conv", (5, 4, 3), 2, k, pad, in_err=ids.new("in.err", TensorClass.ERROR))
    seed = 10 * k + pad
    x = np.random.default_rng(seed).standard_normal((2 * 5 * 4, 3))
    _check_layer(layer, x, seed=seed)


def test_relu_gradient():
    ids = TensorIds(64)
    x = np.random.default_rng(2).standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    _check_layer(ReLU(ids, "relu", in_err=ids.new("e", TensorClass.ERROR)), x, seed=2)


def test_maxpool_gradient():
    x = np.random.default_rng(3).standard_normal((2 * 4 * 6, 3))
    _check_layer(MaxPool2d("pool", (4, 6, 3), 0, in_err=1), x, seed=3)


def test_flatten_gradient_and_layout():
    x = np.random.default_rng(4).standard_normal((2 * 2 * 3, 5))
    fl = Flatten("flat", (2, 3, 5), 0, in_err=1)
    y = fl.forward(F64, Ref(x, 0)).t
    assert y.shape == (2, 30)
    assert np.array_equal(y[1], x[6:12].reshape(-1))  # image 1 = pixels 6..11, NHWC order
    _check_layer(fl, x, seed=4)


def test_softmax_cross_entropy_gradient():
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 10))
    labels = rng.integers(0, 10, 4)
    _, g, _ = softmax_cross_entropy(z, labels)
    np.testing.assert_allclose(g, _numgrad(lambda: softmax_cross_entropy(z, labels)[0], z), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_whole_model_gradients(kind):
    seed = 6
    rng = np.random.default_rng(seed)
    m = build_model(kind)
    vals = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in m.init_params(rng).items()}
    x = m.input_matrix(rng.random((3, 64)))
    y = rng.integers(0, 10, 3)

    def loss():
        lg = m.forward(F64, F64.load(m.input_tid, x))
        return softmax_cross_entropy(lg.t, y)[0]

    m.bind(F64, vals)
    _, g, _ = softmax_cross_entropy(m.forward(F64, F64.load(m.input_tid, x)).t, y)
    m.backward(F64, Ref(g, m.logits_err_tid))
    for p in m.params():
        grad = p.grad.t.copy()
        np.testing.assert_allclose(grad, _numgrad(loss, p.value.t), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{kind} {p.name}, seed {seed}")


def test_im2col_matches_direct_convolution():
    rng = np.random.default_rng(7)
    n, h, w, c, o, k, pad = 2, 5, 6, 3, 4, 3, 1
    x = rng.integers(-5, 5, (n, h, w, c))
    wt = rng.integers(-5, 5, (k, k, c, o))
    got = (im2col(x.reshape(-1, c), n, h, w, c, k, pad) @ wt.reshape(-1, o)).reshape(n, h, w, o)
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    want = np.zeros((n, h, w, o), dtype=np.int64)
    for b, i, j, oc in np.ndindex(n, h, w, o):
        want[b, i, j, oc] = np.sum(xp[b, i:i + k, j:j + k, :] * wt[:, :, :, oc])
    assert np.array_equal(got, want)


def test_maxpool_ties_pick_the_first_in_row_major_window_order():
    pool = MaxPool2d("pool", (2, 2, 1), 0, in_err=1)
    x = np.array([[3.0], [3.0], [1.0], [3.0]])  # one 2x2 window, three equal maxima
    assert pool.forward(F64, Ref(x, 0)).t.tolist() == [[3.0]]
    dx = pool.backward_input(F64, Ref(np.array([[5.0]]), 1)).t
    assert dx[:, 0].tolist() == [5.0, 0.0, 0.0, 0.0]


def test_dfp_conv_forward_is_the_exact_integer_convolution():
    """With an output format wide enough that nothing rounds, data movement must be exact."""
    seed = 8
    rng = np.random.default_rng(seed)
    ids = TensorIds(64)
    in_err = ids.new("in.err", TensorClass.ERROR)
    conv = Conv2d(ids, "conv", (4, 4, 2), 3, 3, 1, in_err)
    e = Engine(PRESETS["default"], seed=1)
    for info in ids.infos:
        e.set_setting(info.tid, TensorSetting(DfpFormat(Width.W16, 5), RoundingMode.NEAREST_EVEN))
    be = DfpBackend(e, ids)
    xi = rng.integers(-20, 20, (2 * 16, 2))
    wi = rng.integers(-20, 20, (18, 3))
    bi = rng.integers(-20, 20, (1, 3))
    conv.weight.value = Ref(DfpTensor(wi, DfpFormat(Width.W16, 3)), conv.weight.w_tid)
    conv.bias.value = Ref(DfpTensor(bi, DfpFormat(Width.W16, 5)), conv.bias.w_tid)
    y = conv.forward(be, Ref(DfpTensor(xi, DfpFormat(Width.W16, 2)), 0))
    # x * 2**-2, w * 2**-3 -> product F = 5 = output F: exact; bias F = 5 adds exactly.
    want = im2col(xi, 2, 4, 4, 2, 3, 1) @ wi + bi
    assert np.array_equal(y.t.data, want), f"seed {seed}"
    dy = DfpTensor(rng.integers(-20, 20, (32, 3)), DfpFormat(Width.W16, 2))
    dx = conv.backward_input(be, Ref(dy, conv.out_err))
    # float64 reference of the same gradient; every value is exact at F = 5 (2 + 3)
    conv_f = Conv2d(TensorIds(64), "f", (4, 4, 2), 3, 3, 1, 0)
    conv_f.weight.value = Ref(wi * 2.0**-3, 0)
    conv_f.bias.value = Ref(bi * 2.0**-5, 0)
    conv_f.forward(F64, Ref(xi * 0.25, 0))
    want_dx = conv_f.backward_input(F64, Ref(dy.data * 0.25, 0)).t
    assert np.array_equal(dx.t.to_float(), want_dx)


def test_dfp_backend_converts_operands_into_shadow_ids_at_the_destination_width():
    ids = TensorIds(64)
    a, b, d = (ids.new(n, TensorClass.ACTIVATION) for n in "abd")
    e = Engine(PRESETS["default"])
    e.set_setting(a, TensorSetting(DfpFormat(Width.W8, 4)))
    e.set_setting(b, TensorSetting(DfpFormat(Width.W16, 10)))
    e.set_setting(d, TensorSetting(DfpFormat(Width.W16, 10)))
    be = DfpBackend(e, ids)
    x = Ref(DfpTensor(np.array([[-128, 5, 127]]), DfpFormat(Width.W8, 4)), a)
    y = Ref(DfpTensor(np.array([[1, 2, 3]]), DfpFormat(Width.W16, 10)), b)
    out = be.add(d, x, y)
    sid = be.shadow(a, Width.W16)
    assert ids.name(sid) == "a@16" and ids.cls(sid) == TensorClass.SHADOW
    assert e.settings[sid].fmt == DfpFormat(Width.W16, 12)  # widened by 8 bits: exact
    assert out.t.data.tolist() == [[-128 * 64 + 1, 5 * 64 + 2, 127 * 64 + 3]]


def test_sgd_float_matches_the_formula():
    ids = TensorIds(64)
    layer = Linear(ids, "fc", 2, 2, None)
    w0 = np.array([[1.0, -2.0], [0.5, 0.25]])
    g = np.array([[0.1, 0.2], [-0.3, 0.4]])
    layer.weight.value, layer.weight.grad = Ref(w0.copy(), 0), Ref(g.copy(), 0)
    layer.bias.value, layer.bias.grad = Ref(np.zeros((1, 2)), 0), Ref(np.zeros((1, 2)), 0)
    sgd_step(F64, [layer.weight], lr=0.1, momentum=0.9, weight_decay=0.01)
    v1 = g + 0.01 * w0
    np.testing.assert_allclose(layer.weight.value.t, w0 - 0.1 * v1, rtol=1e-15)
    layer.weight.grad = Ref(g.copy(), 0)
    w1 = layer.weight.value.t.copy()
    sgd_step(F64, [layer.weight], lr=0.1, momentum=0.9, weight_decay=0.01)
    v2 = 0.9 * v1 + g + 0.01 * w1
    np.testing.assert_allclose(layer.weight.value.t, w1 - 0.1 * v2, rtol=1e-15)


def test_sgd_dfp_is_an_axpy_chain_with_stochastic_weight_write():
    ids = TensorIds(64)
    layer = Linear(ids, "fc", 3, 2, None)
    e = Engine(PRESETS["default"], seed=11)
    for info in ids.infos:
        rnd = RoundingMode.STOCHASTIC if info.cls == TensorClass.WEIGHT else RoundingMode.NEAREST_EVEN
        e.set_setting(info.tid, TensorSetting(DfpFormat(Width.W8, 6), rnd))
    calls = []

    class Rec:
        def on_op(self, eng, op, dst, setting, *rest):
            calls.append((op, dst, setting.rounding))

        def on_load(self, *a): ...

        def on_setting(self, *a): ...

        def on_policy(self, *a): ...

    e.recorder = Rec()
    be = DfpBackend(e, ids)
    p = layer.weight
    p.value = be.load(p.w_tid, np.full((3, 2), 0.5))
    p.grad = be.load(p.g_tid, np.full((3, 2), 0.25))
    sgd_step(be, [p], lr=0.5, momentum=0.5, weight_decay=0.125)
    assert calls == [(Op.AXPY, p.g_tid, RoundingMode.NEAREST_EVEN), (Op.AXPY, p.v_tid, RoundingMode.NEAREST_EVEN),
                     (Op.AXPY, p.w_tid, RoundingMode.STOCHASTIC)]
    # g = 0.25 + 0.125*0.5 = 0.3125; v = 0.3125; w = 0.5 - 0.5*0.3125 = 0.34375 = 22/64 exactly
    assert p.value.t.data.tolist() == [[22, 22]] * 3 and p.grad is None


def test_tensor_ids_run_out_with_a_clear_error():
    ids = TensorIds(2)
    ids.new("a", TensorClass.ACTIVATION)
    ids.new("b", TensorClass.ACTIVATION)
    with pytest.raises(ValueError, match="'c' needs id 2 but the core has only 2"):
        ids.new("c", TensorClass.ACTIVATION)


def test_layer_argument_errors():
    ids = TensorIds(64)
    with pytest.raises(ValueError, match="kernel=3, pad=3"):
        Conv2d(ids, "c", (4, 4, 1), 2, 3, 3, None)
    with pytest.raises(ValueError, match="window does not fit a 1x4 input"):
        MaxPool2d("p", (1, 4, 1), 0, None)
    with pytest.raises(ValueError, match=r"input \[3, 227, 227\] does not match the data's samples \[1, 8, 8\]"):
        build_model("alexnet", (8, 8, 1))
    with pytest.raises(ValueError, match="1000 outputs but the data has 3 classes"):
        build_model("vgg16", (224, 224, 3), 3)
    with pytest.raises(ValueError, match="non-finite"):
        softmax_cross_entropy(np.array([[np.nan, 0.0]]), np.array([0]))

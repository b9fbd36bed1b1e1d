"""Layers of any network (conv stride/groups, max/avg pooling with stride and padding, dropout, LRN):
float64 gradient checks and direct-loop oracles; exact integers in the dfp backend."""

from __future__ import annotations

import numpy as np
import pytest

from reference.config import PRESETS
from reference.engine import Engine
from reference.formats import DfpFormat, DfpTensor, RoundingMode, TensorSetting, Width
from reference.layers import (
    LRN,
    AvgPool2d,
    Conv2d,
    DfpBackend,
    Dropout,
    FloatBackend,
    MaxPool2d,
    Ref,
    TensorClass,
    TensorIds,
    softmax_cross_entropy,
)
from reference.models import build_model

from .test_layers import _check_layer, _numgrad


def _check_net_gradients(net: dict, hwc: tuple[int, int, int], classes: int, batch: int, seed: int,
                         training: bool = True):
    """Back-propagated float64 gradients of every parameter of ``net`` against central differences,
    at perturbed initial weights and random data (``seed``); returns (model, values, input matrix)."""
    rng = np.random.default_rng(seed)
    m = build_model(net, hwc, classes, seed=seed)
    m.training = training
    vals = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in m.init_params(rng).items()}
    x = m.input_matrix(rng.random((batch, int(np.prod(hwc)))))
    y = rng.integers(0, classes, batch)
    m.bind(F64, vals)

    def loss():
        return softmax_cross_entropy(m.forward(F64, F64.load(m.input_tid, x)).t, y)[0]

    _, g, _ = softmax_cross_entropy(m.forward(F64, F64.load(m.input_tid, x)).t, y)
    m.backward(F64, Ref(g, m.logits_err_tid))
    grads = {p.name: p.grad.t.copy() for p in m.params()}
    for p in m.params():
        np.testing.assert_allclose(grads[p.name], _numgrad(loss, p.value.t), rtol=1e-5, atol=1e-7,
                                   err_msg=f"{p.name}, seed {seed}")
    return m, vals, x


F64 = FloatBackend(np.float64)


def _direct_conv(x4: np.ndarray, wt: np.ndarray, k: int, s: int, p: int, g: int) -> np.ndarray:
    """Direct loops: x4 [N, H, W, C], wt [k, k, C/g, O] -> [N, Ho, Wo, O]."""
    n, h, w, c = x4.shape
    o = wt.shape[-1]
    cg, og = c // g, o // g
    xp = np.pad(x4, ((0, 0), (p, p), (p, p), (0, 0)))
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, ho, wo, o), dtype=np.result_type(x4, wt))
    for b, i, j, oc in np.ndindex(n, ho, wo, o):
        grp = oc // og
        out[b, i, j, oc] = np.sum(xp[b, i * s:i * s + k, j * s:j * s + k, grp * cg:(grp + 1) * cg] * wt[:, :, :, oc])
    return out


def _direct_pool(x4: np.ndarray, k: int, s: int, p: int, fn, fill) -> np.ndarray:
    n, h, w, c = x4.shape
    xp = np.pad(x4, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=fill)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out = np.zeros((n, ho, wo, c), dtype=x4.dtype)
    for b, i, j, ch in np.ndindex(n, ho, wo, c):
        out[b, i, j, ch] = fn(xp[b, i * s:i * s + k, j * s:j * s + k, ch])
    return out


CONV_CASES = [(3, 1, 2, 1), (3, 0, 2, 2), (5, 2, 3, 1), (2, 0, 2, 2), (3, 1, 1, 3), (4, 1, 3, 3)]


@pytest.mark.parametrize("k, pad, stride, groups", CONV_CASES)
def test_conv2d_stride_groups_forward_matches_direct_loops_and_gradients_are_numerical(k, pad, stride, groups):
    seed = 100 + 17 * k + 5 * pad + 3 * stride + groups
    rng = np.random.default_rng(seed)
    ids = TensorIds(64)
    h, w, c, o = 7, 6, 3 * groups // np.gcd(3, groups), 2 * groups
    layer = Conv2d(ids, "conv", (h, w, c), o, k, pad, ids.new("in.err", TensorClass.ERROR), stride=stride,
                   groups=groups)
    x = rng.standard_normal((2 * h * w, c))
    vals = layer.init(rng)
    layer.weight.value = Ref(vals[layer.weight.name], 0)
    layer.bias.value = Ref(rng.standard_normal((1, o)), 0)
    y = layer.forward(F64, Ref(x, 0)).t
    wt = vals[layer.weight.name].reshape(k, k, c // groups, o)
    want = _direct_conv(x.reshape(2, h, w, c), wt, k, stride, pad, groups) + layer.bias.value.t.reshape(o)
    np.testing.assert_allclose(y.reshape(want.shape), want, rtol=1e-12, atol=1e-12, err_msg=f"seed {seed}")
    _check_layer(layer, x, seed=seed)


@pytest.mark.parametrize("k, pad, stride, groups", CONV_CASES)
def test_dfp_conv2d_stride_groups_is_the_exact_integer_convolution(k, pad, stride, groups):
    """Formats chosen so nothing rounds: forward, dX and dW equal direct integer loops."""
    seed = 200 + 17 * k + 5 * pad + 3 * stride + groups
    rng = np.random.default_rng(seed)
    ids = TensorIds(64)
    h, w, c, o, n = 7, 6, 2 * groups, 2 * groups, 2
    conv = Conv2d(ids, "conv", (h, w, c), o, k, pad, ids.new("in.err", TensorClass.ERROR), stride=stride,
                  groups=groups)
    e = Engine(PRESETS["default"], seed=1)
    for info in ids.infos:
        e.set_setting(info.tid, TensorSetting(DfpFormat(Width.W32, 5), RoundingMode.NEAREST_EVEN))
    be = DfpBackend(e, ids)
    xi = rng.integers(-20, 20, (n * h * w, c))
    wi = rng.integers(-20, 20, (k * k * (c // groups), o))
    conv.weight.value = Ref(DfpTensor(wi, DfpFormat(Width.W32, 3)), conv.weight.w_tid)
    conv.bias.value = Ref(DfpTensor(np.zeros((1, o), dtype=np.int64), DfpFormat(Width.W32, 5)), conv.bias.w_tid)
    y = conv.forward(be, Ref(DfpTensor(xi, DfpFormat(Width.W32, 2)), 0))
    x4 = xi.reshape(n, h, w, c)
    want = _direct_conv(x4, wi.reshape(k, k, c // groups, o), k, stride, pad, groups)
    assert np.array_equal(y.t.data, want.reshape(-1, o)), f"seed {seed}"
    dy = rng.integers(-20, 20, y.t.data.shape)
    dx = conv.backward_input(be, Ref(DfpTensor(dy, DfpFormat(Width.W32, 3)), conv.out_err))
    conv.backward_weights(be, Ref(DfpTensor(dy, DfpFormat(Width.W32, 3)), conv.out_err))
    # oracle: dX[b, y, x, c] = sum over outputs using that pixel; dW likewise, by direct loops
    ho, wo = conv.ho, conv.wo
    dy4 = dy.reshape(n, ho, wo, o)
    dx_want = np.zeros((n, h + 2 * pad, w + 2 * pad, c), dtype=np.int64)
    dw_want = np.zeros((k, k, c // groups, o), dtype=np.int64)
    xp = np.pad(x4, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    w4 = wi.reshape(k, k, c // groups, o)
    cg, og = c // groups, o // groups
    for b, i, j, oc in np.ndindex(n, ho, wo, o):
        gi = oc // og
        sl = (b, slice(i * stride, i * stride + k), slice(j * stride, j * stride + k), slice(gi * cg, (gi + 1) * cg))
        dx_want[sl] += dy4[b, i, j, oc] * w4[:, :, :, oc]
        dw_want[:, :, :, oc] += dy4[b, i, j, oc] * xp[sl]
    dx_want = dx_want[:, pad:pad + h, pad:pad + w]
    # dY F=3 times W F=3 is F=6; the error's F=5: one right shift, ties to even (written out here)
    q = dx_want >> 1
    dx_round = q + (dx_want & 1) * (q & 1)
    assert np.array_equal(dx.t.data, dx_round.reshape(-1, c)), f"seed {seed}"
    assert dx.t.fmt.frac == 5
    # x F=2 times dY F=3 is F=5 = the gradient's F: exact
    assert np.array_equal(conv.weight.grad.t.data, dw_want.reshape(-1, o)), f"seed {seed}"


POOL_CASES = [(2, 2, 0), (3, 2, 0), (3, 2, 1), (2, 1, 0), (3, 1, 1), (3, 3, 1)]


@pytest.mark.parametrize("k, s, p", POOL_CASES)
def test_maxpool_stride_pad_matches_direct_loops_and_gradient(k, s, p):
    seed = 300 + 9 * k + 3 * s + p
    rng = np.random.default_rng(seed)
    h, w, c = 7, 6, 2
    x = rng.standard_normal((2 * h * w, c))
    pool = MaxPool2d("pool", (h, w, c), 0, 1, kernel=k, stride=s, pad=p)
    y = pool.forward(F64, Ref(x, 0)).t
    want = _direct_pool(x.reshape(2, h, w, c), k, s, p, np.max, -np.inf)
    assert np.array_equal(y, want.reshape(-1, c)), f"seed {seed}"
    _check_layer(pool, x, seed=seed)


@pytest.mark.parametrize("k, s, p", POOL_CASES)
def test_avgpool_stride_pad_matches_direct_loops_and_gradient(k, s, p):
    seed = 400 + 9 * k + 3 * s + p
    rng = np.random.default_rng(seed)
    h, w, c = 7, 6, 2
    ids = TensorIds(64)
    x = rng.standard_normal((2 * h * w, c))
    pool = AvgPool2d(ids, "pool", (h, w, c), ids.new("e", TensorClass.ERROR), kernel=k, stride=s, pad=p)
    y = pool.forward(F64, Ref(x, 0)).t
    want = _direct_pool(x.reshape(2, h, w, c), k, s, p, lambda v: np.sum(v) / (k * k), 0.0)
    np.testing.assert_allclose(y, want.reshape(-1, c), rtol=1e-13, atol=1e-15, err_msg=f"seed {seed}")
    _check_layer(pool, x, seed=seed)


@pytest.mark.parametrize("k, s, p", [(3, 2, 1), (2, 1, 0)])
def test_dfp_pooling_with_overlapping_windows_is_exact(k, s, p):
    """Max: integer maxima; backward: each pixel's error is the integer sum over the windows that
    picked it (the ADD commands are exact here). Avg over 2x2: exact with 1/4 as a constant."""
    seed = 500 + 9 * k + 3 * s + p
    rng = np.random.default_rng(seed)
    h, w, c, n = 7, 6, 2, 2
    ids = TensorIds(64)
    in_err = ids.new("e", TensorClass.ERROR)
    pool = MaxPool2d("pool", (h, w, c), 0, in_err, kernel=k, stride=s, pad=p)
    avg = AvgPool2d(ids, "avg", (h, w, c), in_err, kernel=2, stride=1, pad=0)
    e = Engine(PRESETS["default"], seed=1)
    for info in ids.infos:
        e.set_setting(info.tid, TensorSetting(DfpFormat(Width.W16, 4), RoundingMode.NEAREST_EVEN))
    be = DfpBackend(e, ids)
    xi = rng.permutation(n * h * w * c).reshape(-1, c) - 40  # distinct: the argmax is unique
    fmt = DfpFormat(Width.W16, 4)
    y = pool.forward(be, Ref(DfpTensor(xi, fmt), 0))
    want = _direct_pool(xi.reshape(n, h, w, c), k, s, p, np.max, np.iinfo(np.int64).min)
    assert np.array_equal(y.t.data, want.reshape(-1, c))
    dy = rng.integers(-9, 9, y.t.data.shape)
    dx = pool.backward_input(be, Ref(DfpTensor(dy, fmt), 1))
    xp = np.pad(xi.reshape(n, h, w, c), ((0, 0), (p, p), (p, p), (0, 0)), constant_values=-10**9)
    dx_want = np.zeros_like(xp)
    dy4 = dy.reshape(want.shape)
    for b, i, j, ch in np.ndindex(*want.shape):
        win = xp[b, i * s:i * s + k, j * s:j * s + k, ch]
        a, bb = np.unravel_index(np.argmax(win), win.shape)
        dx_want[b, i * s + a, j * s + bb, ch] += dy4[b, i, j, ch]
    assert np.array_equal(dx.t.data, dx_want[:, p:p + h, p:p + w].reshape(-1, c)), f"seed {seed}"
    # average pooling: x F=4 times 1/4 (constant) -> sum/4 at F=4: exact when the sum is a multiple of 4
    x4 = 4 * rng.integers(-30, 30, (n * h * w, c))
    ya = avg.forward(be, Ref(DfpTensor(x4, fmt), 0))
    assert np.array_equal(ya.t.data, _direct_pool(x4.reshape(n, h, w, c), 2, 1, 0, np.sum, 0).reshape(-1, c) // 4)
    assert ids.name(be.const("avg4.col", avg._col, avg.out_act).tid) == "const.avg4.col@16"


def test_dropout_is_seeded_scaled_and_passes_through_in_evaluation():
    x = np.random.default_rng(6).standard_normal((5, 40))
    ids = TensorIds(64)
    a = Dropout(ids, "d", 0.25, 1, np.random.default_rng([7, 4, 3]))
    b = Dropout(TensorIds(64), "d", 0.25, 1, np.random.default_rng([7, 4, 3]))
    ya, yb = a.forward(F64, Ref(x, 0)).t, b.forward(F64, Ref(x, 0)).t
    assert np.array_equal(ya, yb)  # the same seed draws the same mask
    kept = ya != 0
    assert 0.6 < kept.mean() < 0.9
    np.testing.assert_allclose(ya[kept], x[kept] / 0.75, rtol=1e-15)
    dy = np.random.default_rng(8).standard_normal(x.shape)
    dx = a.backward_input(F64, Ref(dy, a.out_err)).t
    np.testing.assert_allclose(dx, np.where(kept, dy / 0.75, 0), rtol=1e-15)
    assert a.forward(F64, Ref(x, 0), training=False).t is x
    # dfp: p = 0.5 scales by exactly 2
    e = Engine(PRESETS["default"], seed=1)
    for info in ids.infos:
        e.set_setting(info.tid, TensorSetting(DfpFormat(Width.W16, 4), RoundingMode.NEAREST_EVEN))
    half = Dropout(ids, "h", 0.5, 1, np.random.default_rng(9))
    for info in ids.infos:
        e.set_setting(info.tid, TensorSetting(DfpFormat(Width.W16, 4), RoundingMode.NEAREST_EVEN))
    xi = np.random.default_rng(10).integers(-100, 100, (4, 30))
    yi = half.forward(DfpBackend(e, ids), Ref(DfpTensor(xi, DfpFormat(Width.W16, 4)), 0)).t.data
    assert np.array_equal(yi, np.where(half._mask, 2 * xi, 0))


@pytest.mark.parametrize("size", [5, 4, 1])
def test_lrn_forward_matches_the_formula_and_gradient(size):
    seed = 600 + size
    rng = np.random.default_rng(seed)
    ids = TensorIds(64)
    c = 7
    lrn = LRN(ids, "lrn", c, size, alpha=0.3, beta=0.75, bias=2.0, in_err=ids.new("e", TensorClass.ERROR))
    x = rng.standard_normal((6, c))
    y = lrn.forward(F64, Ref(x, 0)).t
    want = np.zeros_like(x)
    lo = (size - 1) // 2
    for r, ch in np.ndindex(x.shape):
        win = x[r, max(0, ch - lo):min(c, ch - lo + size)]
        want[r, ch] = x[r, ch] / (2.0 + 0.3 / size * np.sum(win * win)) ** 0.75
    np.testing.assert_allclose(y, want, rtol=1e-13)
    _check_layer(lrn, x, seed=seed)


ALL_KINDS_NET = {"name": "every-layer", "input": [2, 9, 9], "layers": [
    {"type": "conv", "name": "c1", "out_channels": 4, "kernel": 3, "stride": 2, "pad": 1, "groups": 2},
    {"type": "relu", "name": "r1"},
    {"type": "lrn", "name": "n1", "size": 3, "alpha": 0.1, "beta": 0.75, "bias": 1.0},
    {"type": "maxpool", "name": "p1", "kernel": 3, "stride": 1, "pad": 1},
    {"type": "conv", "name": "c2", "out_channels": 6, "kernel": 2},
    {"type": "avgpool", "name": "p2", "kernel": 2, "stride": 1},
    {"type": "dropout", "name": "d1", "p": 0.5},
    {"type": "linear", "name": "fc", "out_features": 5},
    {"type": "softmax_ce", "name": "loss"},
]}


def test_whole_network_of_every_layer_kind_has_numerical_gradients():
    # dropout passes through in evaluation mode: the loss is a fixed function of the parameters
    _check_net_gradients(ALL_KINDS_NET, (9, 9, 2), 5, batch=2, seed=700, training=False)


@pytest.mark.parametrize("precision", ["dfp16", "dfp8"])
def test_network_of_every_layer_kind_trains_and_its_trace_replays_bit_for_bit(tmp_path, precision):
    from reference.data import Dataset
    from reference.trace import read_trace, replay_reference, write_trace
    from reference.train import IterSpec, Precision, TrainConfig, train

    seed = 710
    rng = np.random.default_rng(seed)
    x = rng.random((48, 9 * 9 * 2))
    y = rng.integers(0, 5, 48)
    data = Dataset("random-9x9x2", x[:32], y[:32], x[32:], y[32:], (9, 9, 2), classes=5)
    net = tmp_path / "every.toml"
    from reference.nets import net_from_dict, net_to_toml

    net.write_text(net_to_toml(net_from_dict(ALL_KINDS_NET)))
    r = train(TrainConfig(model=str(net), precision=Precision(precision), epochs=2, batch=8, seed=seed,
                          trace_iters=IterSpec.parse("0,5")), data)
    assert np.isfinite(r.metrics["final"]["loss"])
    assert r.metrics["net"]["layers"][0]["groups"] == 2
    path = write_trace(r.trace, tmp_path / "trace")
    rep = replay_reference(read_trace(path))
    assert rep.iterations == 2 and rep.ops > 50, rep
    if precision == "dfp8":  # the cycle simulator replays it too (data checked bit for bit by the golden model)
        from sim.replay import replay

        res, _ = replay(path, tmp_path / "sim.json", grow_spad=True)
        assert res["executed"] and res["totals"]["commands"] >= rep.ops + rep.policy_updates, \
            (res["totals"], rep)


def test_cli_net_that_does_not_fit_the_data_is_one_line(tmp_path, capsys):
    from dlu.cli import main

    assert main(["train", "--net", "alexnet", "--precision", "fp32", "--epochs", "1", "--out", str(tmp_path),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dlu train: error: net 'alexnet': input [3, 227, 227] does not match the data's samples "
                   "[1, 8, 8] (C, H, W)"]
    assert main(["train", "--net", str(tmp_path / "nope.toml"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "not a built-in" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_lenet5_on_28x28_is_lecuns_32x32_framing_and_plans():
    from reference.memplan import Strategy, check_plan, plan
    from reference.nets import infer_shapes, lenet5, net_from_dict

    shapes = {s.layer.name: s.out_shape for s in infer_shapes(lenet5((1, 28, 28)))}
    assert shapes["conv1"] == (6, 28, 28) and shapes["pool2"] == (16, 5, 5) and shapes["fc5"] == (10,)
    assert lenet5((1, 28, 28)).param_count == lenet5().param_count == 61706  # LeCun's layer sizes
    m = build_model("lenet5", (28, 28, 1), 10)
    assert [la.name for la in m.layers if la.params()] == ["conv1", "conv2", "fc3", "fc4", "fc5"]
    # the planner handles every layer kind of the trainer's description
    check_plan(plan(net_from_dict(ALL_KINDS_NET), 4, strategy=Strategy.REORDER))


@pytest.mark.slow
def test_lenet5_trains_on_digits28_in_dfp8():
    """Accuracy floor (the 5-seed figures are in docs/training.md: 94.2-98.0 % after 8 epochs)."""
    from reference.data import load_digits28
    from reference.train import Precision, TrainConfig, train

    r = train(TrainConfig(model="lenet5", precision=Precision.DFP8, epochs=8, seed=0), load_digits28())
    assert r.metrics["final"]["test_acc"] >= 0.95, r.metrics["final"]


RESIDUAL_NET = {"name": "residual", "input": [2, 6, 6], "layers": [
    {"type": "conv", "name": "c1", "out_channels": 4, "kernel": 3, "pad": 1},
    {"type": "relu", "name": "r1"},
    {"type": "conv", "name": "c2", "out_channels": 4, "kernel": 3, "pad": 1},
    {"type": "relu", "name": "r2"},
    {"type": "conv", "name": "c3", "out_channels": 4, "kernel": 3, "pad": 1},
    {"type": "add", "name": "res", "source": "r1"},
    {"type": "relu", "name": "r3"},
    {"type": "maxpool", "name": "p", "kernel": 2},
    {"type": "add", "name": "twice", "source": "p"},
    {"type": "linear", "name": "fc", "out_features": 3},
    {"type": "softmax_ce", "name": "loss"},
]}


def test_residual_network_has_numerical_gradients_and_bad_sources_are_named():
    from reference.nets import NetFileError, net_from_dict

    _check_net_gradients(RESIDUAL_NET, (6, 6, 2), 3, batch=2, seed=720)
    bad = dict(RESIDUAL_NET, layers=[*RESIDUAL_NET["layers"][:5], {"type": "add", "source": "nope"},
                                     *RESIDUAL_NET["layers"][6:]])
    with pytest.raises(NetFileError, match="field 'source' = 'nope': not the name of an earlier layer"):
        net_from_dict(bad)
    bad = dict(RESIDUAL_NET, layers=[*RESIDUAL_NET["layers"][:8], {"type": "add", "source": "r1"},
                                     *RESIDUAL_NET["layers"][9:]])
    with pytest.raises(NetFileError, match=r"its output .* does not match this layer's input"):
        net_from_dict(bad)


def test_residual_network_trains_in_dfp8_and_its_trace_replays(tmp_path):
    from reference.data import Dataset
    from reference.trace import read_trace, replay_reference, write_trace
    from reference.train import IterSpec, Precision, TrainConfig, train
    from sim.replay import replay

    seed = 730
    rng = np.random.default_rng(seed)
    x, y = rng.random((40, 72)), rng.integers(0, 3, 40)
    data = Dataset("random-6x6x2", x[:32], y[:32], x[32:], y[32:], (6, 6, 2), classes=3)
    from reference.nets import net_from_dict, net_to_toml

    f = tmp_path / "res.toml"
    f.write_text(net_to_toml(net_from_dict(RESIDUAL_NET)))
    r = train(TrainConfig(model=str(f), precision=Precision.DFP8, epochs=1, batch=8, seed=seed,
                          trace_iters=IterSpec.parse("1")), data)
    assert np.isfinite(r.metrics["final"]["loss"])
    path = write_trace(r.trace, tmp_path / "trace")
    rep = replay_reference(read_trace(path))
    res, _ = replay(path, tmp_path / "sim.json", grow_spad=True)
    assert rep.iterations == 1 and res["executed"], (rep, res["totals"])


BN_NET = {"name": "bn", "input": [2, 5, 5], "layers": [
    {"type": "conv", "name": "c1", "out_channels": 3, "kernel": 3, "pad": 1},
    {"type": "batchnorm", "name": "bn1"},
    {"type": "relu", "name": "r1"},
    {"type": "add", "name": "res", "source": "bn1"},
    {"type": "flatten", "name": "f"},
    {"type": "linear", "name": "fc1", "out_features": 6},
    {"type": "batchnorm", "name": "bn2", "eps": 0.001, "momentum": 0.5},
    {"type": "linear", "name": "fc2", "out_features": 3},
    {"type": "softmax_ce", "name": "loss"},
]}


def test_batchnorm_in_training_mode_has_numerical_gradients_and_running_statistics():
    m, vals, x = _check_net_gradients(BN_NET, (5, 5, 2), 3, batch=4, seed=740)
    assert {p.name for p in m.params()} >= {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias"}
    # running statistics: bn2 (momentum 0.5) after one more training pass on the same batch
    bn2 = next(la for la in m.layers if la.name == "bn2")
    fc1 = next(la for la in m.layers if la.name == "fc1")
    bn2.running_mean, bn2.running_var = np.zeros(6), np.ones(6)
    m.forward(F64, F64.load(m.input_tid, x))
    h = fc1.forward(F64, fc1._x)
    np.testing.assert_allclose(bn2.running_mean, 0.5 * h.t.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn2.running_var, 0.5 + 0.5 * h.t.var(axis=0, ddof=1), rtol=1e-12)
    m.training = False  # evaluation normalises with the running statistics
    out = bn2.forward(F64, h, training=False).t
    want = vals["bn2.weight"] * (h.t - bn2.running_mean) / np.sqrt(bn2.running_var + 0.001) + vals["bn2.bias"]
    np.testing.assert_allclose(out, want, rtol=1e-12)


def test_batchnorm_residual_network_trains_in_dfp16_and_replays(tmp_path):
    from reference.data import Dataset
    from reference.trace import read_trace, replay_reference, write_trace
    from reference.train import IterSpec, Precision, TrainConfig, train

    seed = 750
    rng = np.random.default_rng(seed)
    x, y = rng.random((40, 50)), rng.integers(0, 3, 40)
    data = Dataset("random-5x5x2", x[:32], y[:32], x[32:], y[32:], (5, 5, 2), classes=3)
    from reference.nets import net_from_dict, net_to_toml

    f = tmp_path / "bn.toml"
    f.write_text(net_to_toml(net_from_dict(BN_NET)))
    r = train(TrainConfig(model=str(f), precision=Precision.DFP16, epochs=2, batch=8, seed=seed,
                          trace_iters=IterSpec.parse("2")), data)
    assert np.isfinite(r.metrics["final"]["loss"]) and r.metrics["net"]["layers"][1]["type"] == "batchnorm"
    rep = replay_reference(read_trace(write_trace(r.trace, tmp_path / "trace")))
    assert rep.iterations == 1 and rep.loads > 4, rep  # the host's batch-norm results are LOADs


def test_concat_reformats_parts_left_behind_by_a_host_rerun_to_the_last_parts_format():
    """A grouped layer's parts share one tensor id; a re-run of a later part lowers the id's point
    position, so earlier parts are re-formatted (nearest even, saturated) before they are joined."""
    ids = TensorIds(8)
    tid = ids.new("g", TensorClass.GRADIENT)
    be = DfpBackend(Engine(PRESETS["default"], seed=1), ids)
    a = Ref(DfpTensor(np.array([[5, -3, 127], [2, -6, -128]]), DfpFormat(Width.W8, 4)), tid)
    b = Ref(DfpTensor(np.array([[1], [-1]]), DfpFormat(Width.W8, 2)), tid)  # after a re-run: 2 bits lower
    got = be.concat([a, b], 1)
    # a's values / 4, ties to even: 5/4=1.25->1, -3/4=-0.75->-1, 127/4=31.75->32, 2/4=0.5->0, -6/4=-1.5->-2, -128/4=-32
    assert got.t.fmt == DfpFormat(Width.W8, 2)
    np.testing.assert_array_equal(got.t.data, [[1, -1, 32, 1], [0, -2, -32, -1]])
    other = Ref(b.t, ids.new("h", TensorClass.GRADIENT))
    with pytest.raises(ValueError, match="different tensor ids"):
        be.concat([a, other], 1)

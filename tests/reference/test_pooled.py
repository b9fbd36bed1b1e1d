"""Pooled fp32 training: bit-identical to the trainer on every schedule (fused dW->W blocks included),
wrong orders and wrong fused blocks caught, plan and executor agree on every buffer, tracemalloc peak
within the documented margin."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reference.data import load_dataset
from reference.formats import Width
from reference.memplan import FUSED_ROWS, BackwardOrder, BufferPool, PlanError, Strategy, check_plan, plan
from reference.models import ModelKind, build_model
from reference.nets import digits_cnn, infer_shapes
from reference.pooled import (
    PooledStep,
    layer_scratchpad_bytes,
    measure_step,
    net_of_model,
    plan_for_model,
    scratchpad_by_layer_pass,
    train_pooled,
)
from reference.train import Precision, TrainConfig, train

SEED = 3  # recorded: every comparison below uses this seed (initialisation and shuffling)


@pytest.fixture(scope="module")
def digits():
    d = load_dataset("digits")
    # 10 steps of 32 per epoch keep the test short; the comparison is bit for bit anyway
    return dataclasses.replace(d, x_train=d.x_train[:320], y_train=d.y_train[:320])


def _params(result) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(p.value.t) for p in result.model.params()}


@pytest.fixture(scope="module")
def reference_runs(digits):
    out = {}
    for kind in ModelKind:
        cfg = TrainConfig(model=kind, precision=Precision.FP32, epochs=2, batch=32, seed=SEED)
        out[kind] = (cfg, train(cfg, digits))
    return out


def test_net_of_model_is_the_digits_cnn():
    net = net_of_model(build_model("cnn", (8, 8, 1), 10))
    assert net.layers == digits_cnn().layers and net.input_shape == digits_cnn().input_shape
    assert [s.out_shape for s in infer_shapes(net)] == [s.out_shape for s in infer_shapes(digits_cnn())]


@pytest.mark.parametrize("kind", list(ModelKind), ids=lambda k: k.value)
@pytest.mark.parametrize("strategy", list(Strategy), ids=lambda s: s.name.lower())
def test_pooled_training_is_bit_identical_to_the_trainer(digits, reference_runs, kind, strategy):
    cfg, ref = reference_runs[kind]
    got = train_pooled(cfg, digits, strategy)
    want = _params(ref)
    for name, value in _params(got).items():
        assert value.dtype == np.float32 and np.array_equal(value, want[name]), (strategy.name, name)
    for e_got, e_ref in zip(got.metrics["epochs"], ref.metrics["epochs"], strict=True):
        for key in ("lr", "loss", "train_acc", "test_acc"):
            assert e_got[key] == e_ref[key], (strategy.name, key)
    mp = got.metrics["memplan"]
    assert mp["pool_peak_bytes"] == mp["peak_live_bytes"]  # the arena pool held what the plan said, no more


def test_one_allocation_per_buffer_pool_trains_identically(digits, reference_runs):
    cfg, ref = reference_runs[ModelKind.CNN]
    got = train_pooled(cfg, digits, Strategy.INPLACE, arena=False)
    want = _params(ref)
    assert all(np.array_equal(v, want[k]) for k, v in _params(got).items())


def _all_fused(kind: ModelKind) -> dict[str, BackwardOrder]:
    return {la.name: BackwardOrder.FUSED for la in build_model(kind, (8, 8, 1), 10).layers if hasattr(la, "weight")}


@pytest.mark.parametrize("kind", list(ModelKind), ids=lambda k: k.value)
@pytest.mark.parametrize("batch", [32, 13])
def test_fused_blocks_on_every_layer_train_bit_identically(digits, reference_runs, kind, batch):
    """dW -> W in blocks of FUSED_ROWS rows on every layer (conv2 72 = 48 + 24 rows, fc1 64 = 48 + 16)."""
    cfg, ref = reference_runs[kind]
    if batch != cfg.batch:  # odd batch: odd K of every dW product, a remainder step per epoch
        cfg = dataclasses.replace(cfg, batch=batch)
        ref = train(cfg, digits)
    got = train_pooled(cfg, digits, Strategy.WEIGHT_AREA, orders=_all_fused(kind))
    mp = got.metrics["memplan"]
    assert set(mp["orders"].values()) == {"fused"} and mp["fused_rows"] == FUSED_ROWS
    want = _params(ref)
    for name, value in _params(got).items():
        assert np.array_equal(value, want[name]), name
    assert [e["loss"] for e in got.metrics["epochs"]] == [e["loss"] for e in ref.metrics["epochs"]]


@pytest.mark.parametrize("rows", [1, 10])
def test_fused_blocks_off_the_kernel_tiles_change_the_bits(digits, reference_runs, rows):
    """The comparison above can fail: one-row blocks (vector-matrix products, another BLAS routine)
    sum in another order, and so do 10-row blocks on OpenBLAS's Haswell kernels (this machine's:
    their row tile is 12). Same values up to float rounding, other bits."""
    from threadpoolctl import threadpool_info

    arch = next((i.get("architecture") for i in threadpool_info() if i["internal_api"] == "openblas"), None)
    if rows > 1 and arch not in ("Haswell", "Zen"):
        pytest.skip(f"10-row blocks are summed as the whole dW on OpenBLAS {arch} kernels")
    cfg, ref = reference_runs[ModelKind.CNN]
    got = train_pooled(cfg, digits, Strategy.WEIGHT_AREA, orders=_all_fused(ModelKind.CNN), fused_rows=rows)
    want, have = _params(ref), _params(got)
    assert any(not np.array_equal(have[k], want[k]) for k in want)
    assert max(float(np.max(np.abs(have[k] - want[k]))) for k in want) < 1e-5


def test_a_wrong_backward_order_is_detected(digits, reference_runs):
    """Updating fc2 before its input error is computed: check_plan rejects it, and training differs."""
    cfg, ref = reference_runs[ModelKind.CNN]
    model = build_model("cnn", (8, 8, 1), 10)
    # conventional and no workspaces: every buffer lives the whole step, so moving an op keeps them valid
    p = plan_for_model(model, 32, Strategy.CONVENTIONAL, momentum=True, workspace=False)
    ops = [o for o in p.ops if o.name != "update:fc2"]
    ops.insert([o.name for o in ops].index("bwd_dx:fc2"), next(o for o in p.ops if o.name == "update:fc2"))
    wrong = dataclasses.replace(p, ops=tuple(ops))
    with pytest.raises(PlanError, match="fc2.W.*after its update"):
        check_plan(wrong)
    # run it anyway (the pool cannot see a read-after-update): the first step already differs
    values = model.init_params(np.random.default_rng([SEED, 1]))
    x, y = model.input_matrix(digits.x_train[:32]), digits.y_train[:32]
    out = {}
    for name, q in (("right", p), ("wrong", wrong)):
        step = PooledStep(model, q, BufferPool.from_plan(q))
        step.load_params(values)
        step.run(x, y, 0.05, 0.9, 1e-4)
        out[name] = step.params()
    assert not np.array_equal(out["wrong"]["fc1.weight"], out["right"]["fc1.weight"])
    assert np.array_equal(out["wrong"]["fc2.weight"], out["right"]["fc2.weight"])


def test_executor_refuses_a_plan_of_another_shape_or_width():
    cnn, mlp = build_model("cnn", (8, 8, 1), 10), build_model("mlp", (8, 8, 1), 10)
    with pytest.raises(ValueError, match="fp32 only"):
        PooledStep(cnn, plan(net_of_model(cnn), 4, Width.W16), BufferPool())
    with pytest.raises(ValueError, match="the model does not have"):
        PooledStep(mlp, plan(net_of_model(cnn), 4, Width.W32), BufferPool())
    wide = build_model("cnn", (8, 8, 1), 12)  # same names, 12 classes: fc2 buffers are too small
    with pytest.raises(ValueError, match="fc2.*planned at"):
        PooledStep(wide, plan(net_of_model(cnn), 4, Width.W32), BufferPool())


def test_memplan_train_needs_fp32(digits):
    cfg = TrainConfig(model=ModelKind.MLP, precision=Precision.DFP16, epochs=1, batch=32)
    with pytest.raises(ValueError, match="needs precision fp32"):
        train_pooled(cfg, digits, Strategy.REORDER)


def test_layer_scratchpad_bytes_by_hand():
    sp = layer_scratchpad_bytes(32, Width.W16)
    assert sp == plan(digits_cnn(), 32, Width.W16, Strategy.REORDER, momentum=True).layer_working_sets()
    # bwd:relu1 touches relu1.y, relu1.dy and conv1.dy: 3 x 32 images x 8x8x8 x 2 bytes
    assert sp["relu1"] == 3 * 32 * 512 * 2
    # update:fc1 touches W, dW, vW (64x32) and b, db, vb (32), 2 bytes each
    assert sp["fc1"] == 3 * (64 * 32 + 32) * 2
    assert "flatten" not in sp and set(sp) >= {"input", "conv1", "conv2", "fc1", "fc2", "loss"}
    by_pass = scratchpad_by_layer_pass(32, Width.W16)
    assert by_pass[("relu1", "backward")] == sp["relu1"] and by_pass[("fc1", "update")] == sp["fc1"]
    assert by_pass[("relu1", "forward")] == 2 * 32 * 512 * 2  # conv1.y in, relu1.y out
    assert {layer: max(v for (la, _), v in by_pass.items() if la == layer) for layer, _ in by_pass} == sp


# 64 KiB of constant overhead (NumPy's 8192-element iteration buffers, Python objects) plus 5%
# for the batch-sized temporaries the plan does not hold (see docs/memplan.md for the per-op list).
MARGIN_BYTES, MARGIN_FRACTION = 64 * 1024, 0.05


@pytest.mark.parametrize("batch", [32, 256])
@pytest.mark.parametrize("strategy", [Strategy.CONVENTIONAL, Strategy.REORDER, Strategy.WEIGHT_AREA, Strategy.INPLACE,
                                      "all-fused"], ids=lambda s: s if isinstance(s, str) else s.name.lower())
@pytest.mark.parametrize("arena", [True, False], ids=["arena", "heap"])
def test_tracemalloc_peak_of_a_cnn_step_matches_the_plan(batch, strategy, arena):
    d = load_dataset("digits")
    model = build_model("cnn", d.image_hwc, 10)
    orders = _all_fused(ModelKind.CNN) if strategy == "all-fused" else None
    strategy = Strategy.WEIGHT_AREA if orders else strategy
    r = measure_step(model, model.input_matrix(d.x_train[:batch]), d.y_train[:batch], strategy, arena, orders=orders)
    p = plan_for_model(model, batch, strategy, momentum=True, orders=orders)
    assert r.predicted == (p.peak_arena if arena else p.peak_live)
    assert r.predicted <= r.measured <= r.predicted * (1 + MARGIN_FRACTION) + MARGIN_BYTES, (r.measured, r.worst_op)


def test_optimised_step_measures_less_than_the_conventional_one():
    d = load_dataset("digits")
    model = build_model("cnn", d.image_hwc, 10)
    x, y = model.input_matrix(d.x_train[:256]), d.y_train[:256]
    conv, reorder = (measure_step(model, x, y, s) for s in (Strategy.CONVENTIONAL, Strategy.REORDER))
    assert reorder.measured < 0.6 * conv.measured


def _dfp_params(cfg, data, layerwise: bool) -> dict[str, np.ndarray]:
    from threadpoolctl import threadpool_limits

    from reference.pooled import layerwise_update_hooks
    from reference.train import Hooks, open_session, run_epochs

    with threadpool_limits(1):
        s = open_session(cfg, data)
        run_epochs(s, layerwise_update_hooks(s) if layerwise else Hooks())
    return {p.name: p.value.t.data.copy() for p in s.model.params()}


def test_dfp_layerwise_updates_are_identical_unless_weights_round_stochastically(digits):
    from reference.formats import RoundingMode
    from reference.train import ClassSpec, PrecisionSpec

    small = dataclasses.replace(digits, x_train=digits.x_train[:96], y_train=digits.y_train[:96])
    ne = ClassSpec(Width.W16, RoundingMode.NEAREST_EVEN)
    nearest = TrainConfig(model=ModelKind.CNN, precision=Precision.DFP16, spec=PrecisionSpec(ne, ne, ne, ne, ne),
                          epochs=1, batch=32, seed=SEED)
    a, b = _dfp_params(nearest, small, False), _dfp_params(nearest, small, True)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # default dfp16: weights round stochastically from one generator bank, so the update order matters
    stochastic = dataclasses.replace(nearest, spec=None)
    a, b = _dfp_params(stochastic, small, False), _dfp_params(stochastic, small, True)
    assert not all(np.array_equal(a[k], b[k]) for k in a)

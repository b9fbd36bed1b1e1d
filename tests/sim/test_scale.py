"""Tests of the data-parallel timing model: hand-worked schedules and properties.

Hand cases use round numbers so every expected step time is worked out in the comment above
it, from the stage definitions in :mod:`sim.scale`, not from the code.
"""

from __future__ import annotations

import argparse
import math

import pytest

from reference.config import CoreConfig
from reference.formats import Width
from reference.isa import DRAIN_CYCLES, SETUP_CYCLES
from reference.models import ModelKind
from reference.nets import alexnet, lenet5
from reference.train import Precision
from sim.scale import (
    GPUS,
    Allreduce,
    Chip,
    Gpu,
    LayerCost,
    Links,
    Methods,
    gpu_layer_costs,
    layer_costs,
    layer_macs,
    matmul_cycles,
    simulate,
    standard_configs,
    sweep,
)

MS = 1e-3
INF = 1e30
# PCIe 4 GB/s, network 2 GB/s, no latencies, free host reduction.
LINKS = Links(net_bw=2e9, net_latency=0.0, pcie_bw=4e9, pcie_latency=0.0, host_reduce_bw=INF, serial_reduce_bw=INF,
              segment_bytes=1 << 40)


def one_layer() -> list[LayerCost]:
    # 1e6 parameters = 4e6 bytes at 32 bits: PCIe 1 ms each way; ring on 2 workers 2*(1)*(4e6/2)/2e9 = 2 ms.
    return [LayerCost("fc", forward=1 * MS, backward=2 * MS, update=0.5 * MS, params=1_000_000)]


def test_one_layer_no_overlap_is_the_sum_of_all_stages():
    # F 1 + B 2 + D2H 1 + allreduce 2 + H2D 1 + U 0.5 = 7.5 ms
    r = simulate(one_layer(), 2, LINKS, Methods.none(), 32)
    assert r.step_time == pytest.approx(7.5 * MS)
    assert r.payload_bytes == 4_000_000
    assert r.compute_time == pytest.approx(3.5 * MS)


def test_one_layer_pipelined_segments():
    # 4 segments of 1e6 bytes: D2H 0.25, net 0.5, H2D 0.25 each; net is the bottleneck:
    # 0.25 + 4 * 0.5 + 0.25 = 2.5 ms of exchange, so 1 + 2 + 2.5 + 0.5 = 6 ms.
    links = Links(net_bw=2e9, net_latency=0.0, pcie_bw=4e9, pcie_latency=0.0, host_reduce_bw=INF, serial_reduce_bw=INF,
                  segment_bytes=1_000_000)
    r = simulate(one_layer(), 2, links, Methods(False, False, True), 32)
    assert r.step_time == pytest.approx(6.0 * MS)
    # Method 3 with one segment is the same as no pipelining.
    assert simulate(one_layer(), 2, LINKS, Methods(False, False, True), 32).step_time == pytest.approx(7.5 * MS)


def test_one_layer_gradient_width_scales_the_exchange():
    # 16 bits: 2e6 bytes, PCIe 0.5 + ring 1 + PCIe 0.5, plus two histogram allreduces
    # of 64*4 bytes: log2(2)=1 step each, 256/2e9 s = 0.128 us each. 3.5 + 2 + 0.000256 ms.
    r = simulate(one_layer(), 2, LINKS, Methods.none(), 16)
    assert r.step_time == pytest.approx(5.5 * MS + 2 * 256 / 2e9)
    assert r.payload_bytes == 2_000_000 + 2 * 64 * 4


def two_layers() -> list[LayerCost]:
    # Each exchange: 1e6 params at 32 bits = 4e6 bytes; with infinite PCIe and reduction,
    # a ring on 2 workers at 4 GB/s takes 2 * (4e6 / 2) / 4e9 = 1 ms.
    return [LayerCost("a", 1 * MS, 1 * MS, 0.0, 1_000_000), LayerCost("b", 1 * MS, 1 * MS, 0.0, 1_000_000)]


LINKS2 = Links(net_bw=4e9, net_latency=0.0, pcie_bw=INF, pcie_latency=0.0, host_reduce_bw=INF, serial_reduce_bw=INF,
               segment_bytes=1 << 40)


@pytest.mark.parametrize(("methods", "expected_ms"), [
    # F_a 0-1, F_b 1-2, B_b 2-3, B_a 3-4; exchanges b 4-5, a 5-6; updates; next F_a at 6.
    (Methods.none(), 6.0),
    # exchange b during B_a (3-4), exchange a 4-5, next F_a at 5.
    (Methods(True, False, False), 5.0),
    # exchanges after B_a: a first (the forward pass needs it first) 4-5, then b 5-6;
    # F_a 5-6 overlaps b's exchange, F_b 6-7, B_b 7-8, B_a 8-9: period 5.
    (Methods(False, True, False), 5.0),
    # exchange b 3-4, a 4-5; F_a 5-6 ... period 5.
    (Methods(True, True, False), 5.0),
])
def test_two_layers_hand_schedules(methods, expected_ms):
    assert simulate(two_layers(), 2, LINKS2, methods, 32).step_time == pytest.approx(expected_ms * MS)


def test_forward_overlap_and_segments_hide_the_exchange_of_a_late_layer():
    # Layer a: 1 parameter (exchange ~0); layer b: 3e6 parameters = 12e6 bytes, ring on 2
    # workers at 4 GB/s: 2 * 6e6 / 4e9 = 3 ms. Compute 1 ms per task, no update cost.
    costs = [LayerCost("a", 1 * MS, 1 * MS, 0.0, 1), LayerCost("b", 1 * MS, 1 * MS, 0.0, 3_000_000)]

    def step(methods: Methods, seg: int = 1 << 40) -> float:
        links = Links(net_bw=4e9, net_latency=0.0, pcie_bw=INF, pcie_latency=0.0, host_reduce_bw=INF,
                      serial_reduce_bw=INF, segment_bytes=seg)
        return simulate(costs, 2, links, methods, 32).step_time

    # none: B_a ends at 4; exchanges b 4-7, a 7-7; F_a at 7: period 7.
    assert step(Methods.none()) == pytest.approx(7 * MS, rel=1e-6)
    # method 2: a first (4-4), b 4-7; F_a 4-5 overlaps b; F_b waits until 7: B_a ends 10, period 6.
    assert step(Methods(False, True, False)) == pytest.approx(6 * MS, rel=1e-6)
    # method 1: b 3-6 during B_a 3-4; a queued at 4 behind b, done at 6; F_a at 6: period 6.
    assert step(Methods(True, False, False)) == pytest.approx(6 * MS, rel=1e-6)
    # methods 1+2 without segments: the same (a still waits behind the whole of b): 6.
    assert step(Methods(True, True, False)) == pytest.approx(6 * MS, rel=1e-6)
    # methods 1+2+3, segments of 4e6 bytes (1 ms): b seg0 3-4; a goes first at 4; b seg1 4-5,
    # seg2 5-6; F_a 4-5, F_b waits until 6, B_b 7-8, B_a 8-9: period 5.
    assert step(Methods.all(), seg=4_000_000) == pytest.approx(5 * MS, rel=1e-6)


def test_one_worker_exchanges_nothing():
    costs = layer_costs(lenet5(), 16, Chip(cores=4))
    compute = sum(c.forward + c.backward + c.update for c in costs)
    for _, m, bits, partial in standard_configs():
        r = simulate(costs, 1, Links(), m, bits, partial_bits=partial)
        assert r.step_time == pytest.approx(compute)
        assert r.payload_bytes == 0


def test_allreduce_formulas():
    links = Links(net_bw=1e9, net_latency=1e-6, host_reduce_bw=2e9)
    n, b = 4, 8e6
    # ring: 2*3*(1us + 2e6/1e9) + 3/4 * 8e6/2e9 = 6*(2.001 ms) + 3 ms
    assert links.allreduce(b, n) == pytest.approx(6 * (1e-6 + 2e-3) + 3e-3)
    tree = Links(net_bw=1e9, net_latency=1e-6, host_reduce_bw=2e9, algorithm=Allreduce.TREE)
    # tree: 2*2*(1us + 8 ms) + 2 * 4 ms
    assert tree.allreduce(b, n) == pytest.approx(4 * (1e-6 + 8e-3) + 8e-3)
    assert links.allreduce(b, 1) == 0.0


def test_matmul_cycles_one_core_is_the_isa_count():
    # One core, 8 lanes, 16-bit: V = 16 values per beat; [4, 100] x [100, 40]:
    # beats = 4 * ceil(40/16) = 12, body 12 * 100, plus setup and drain.
    chip = Chip(CoreConfig(), cores=1)
    assert matmul_cycles(4, 100, 40, Width.W16, chip) == SETUP_CYCLES + 1200 + DRAIN_CYCLES
    # K beyond 2**16 splits into two commands and one ADD of [4, 40] (12 beats).
    k = (1 << 16) + 10
    expect = (SETUP_CYCLES + 12 * (1 << 16) + DRAIN_CYCLES) + (SETUP_CYCLES + 12 * 10 + DRAIN_CYCLES) \
        + (SETUP_CYCLES + 12 + DRAIN_CYCLES)
    assert matmul_cycles(4, k, 40, Width.W16, chip) == expect
    # Two cores split the rows: [2, 100] x [100, 40] each.
    assert matmul_cycles(4, 100, 40, Width.W16, Chip(CoreConfig(), cores=2)) == SETUP_CYCLES + 600 + DRAIN_CYCLES


def test_alexnet_costs_have_the_published_parameter_count():
    costs = layer_costs(alexnet(), 32, Chip())
    assert [c.name for c in costs] == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"]
    assert sum(c.params for c in costs) == 60_965_224
    assert all(c.forward > 0 and c.backward > 0 and c.update > 0 for c in costs)


@pytest.mark.parametrize("batch", [8, 32, 128])
def test_each_method_is_never_slower_than_none(batch):
    costs = layer_costs(alexnet(), batch, Chip())
    for n in (2, 8, 64):
        for algo in Allreduce:
            links = Links(algorithm=algo)
            base = simulate(costs, n, links, Methods.none()).step_time
            for m in (Methods(True, False, False), Methods(False, True, False), Methods(False, False, True),
                      Methods.all()):
                assert simulate(costs, n, links, m).step_time <= base * (1 + 1e-12), (batch, n, algo, m)


def test_monotone_in_bandwidth_width_and_never_faster_than_compute():
    costs = layer_costs(alexnet(), 32, Chip())
    compute = sum(c.forward + c.backward + c.update for c in costs)
    prev = math.inf
    for gbps in (10, 28, 56, 100, 200):
        t = simulate(costs, 16, Links(net_bw=gbps * 1e9 / 8), Methods.all()).step_time
        assert compute <= t <= prev
        prev = t
    t32, t16, t8 = (simulate(costs, 16, Links(), Methods.all(), b).step_time for b in (32, 16, 8))
    assert t8 <= t16 <= t32


def test_sweep_efficiency_is_one_at_one_worker_and_speed_grows():
    rows = sweep(lenet5(), [1, 2, 4], 16, Chip(cores=4), Links())
    for r in rows:
        if r.workers == 1:
            assert r.efficiency == pytest.approx(1.0)
        assert 0 < r.efficiency <= 1 + 1e-12


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="workers=0"):
        simulate(one_layer(), 0, LINKS, Methods.none())
    with pytest.raises(ValueError, match="net_bw"):
        Links(net_bw=0)
    with pytest.raises(ValueError, match="cores=0"):
        Chip(cores=0)
    with pytest.raises(ValueError, match="batch=0"):
        layer_costs(lenet5(), 0, Chip())
    with pytest.raises(ValueError, match="12"):
        simulate(one_layer(), 2, LINKS, Methods.none(), grad_bits=12)


def test_cli_writes_table_and_plot(tmp_path, capsys):
    from sim import scale_cli

    p = argparse.ArgumentParser()
    scale_cli.register(p.add_subparsers())
    png, md = tmp_path / "f.png", tmp_path / "t.md"
    args = p.parse_args(["scale", "--net", "lenet5", "--workers", "1,2,4", "--cores", "4", "--batch", "8",
                         "--plot", str(png), "--md", str(md)])
    assert args.func(args) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert "| no overlap, 32-bit | 1.0x (100%)" in text
    assert len([ln for ln in text.splitlines() if ln.startswith("| ")]) == 1 + len(standard_configs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png", "t.md"]  # no temp files left
    with pytest.raises(SystemExit):
        p.parse_args(["scale", "--workers", "0,2"])


def test_one_core_compute_matches_the_cycle_simulator_on_a_traced_cnn_step():
    """The model's per-layer compute equals the cycle simulator's compute commands on a real
    trace of the golden model's CNN (dfp16, batch 32, seed 0), up to the setup and drain of
    the extra row-tile commands the simulator issues for tensors larger than a bank."""
    from reference.data import Dataset, load_dataset
    from reference.nets import net_from_dict
    from reference.train import IterSpec, TrainConfig, train
    from sim.core import Pass, fitting_config, schedule

    d = load_dataset("digits")
    d = Dataset("digits[:64]", d.x_train[:64], d.y_train[:64], d.x_test[:8], d.y_test[:8], d.image_hwc, d.classes)
    trace = train(TrainConfig(model=ModelKind.CNN, precision=Precision.DFP16, epochs=1, batch=32, seed=0,
                              trace_iters=IterSpec.parse("1")), d).trace
    cfg = fitting_config(trace)
    from reference.trace import rerun_records

    reruns = {it.iteration: rerun_records(it) for it in trace.iterations}  # the analytic model has no re-runs
    cmds = [c for it in schedule(trace, cfg) for c in it.commands  # compute commands
            if c.cmd.opcode < 8 and c.record not in reruns[c.iteration]]
    net = net_from_dict({"name": "cnn", "input": [1, 8, 8], "layers": [  # reference.models' CNN
        {"type": "conv", "name": "conv1", "out_channels": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "kernel": 2},
        {"type": "conv", "name": "conv2", "out_channels": 16, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "kernel": 2}, {"type": "flatten"},
        {"type": "linear", "name": "fc1", "out_features": 32}, {"type": "relu"},
        {"type": "linear", "name": "fc2", "out_features": 10}, {"type": "softmax_ce"}]})
    costs = {c.name: c for c in layer_costs(net, 32, Chip(cfg, cores=1, clock_hz=1.0, compute_bits=16))}
    owner = {"relu1": "conv1", "relu2": "conv2", "relu3": "fc1"}  # the model folds ReLU into the layer before
    sim_cycles: dict[tuple[str, str], int] = {}
    sim_count: dict[tuple[str, str], int] = {}
    for c in cmds:
        key = (owner.get(c.layer, c.layer), c.pass_.value)
        sim_cycles[key] = sim_cycles.get(key, 0) + c.cycles
        sim_count[key] = sim_count.get(key, 0) + 1
    assert {k[0] for k in sim_cycles} == set(costs)
    per_cmd = SETUP_CYCLES + DRAIN_CYCLES
    for name, c in costs.items():
        for pass_, model in ((Pass.FORWARD, c.forward), (Pass.BACKWARD, c.backward), (Pass.UPDATE, c.update)):
            sim = sim_cycles[(name, pass_.value)]
            extra = sim - int(model)
            assert extra % per_cmd == 0 and 0 <= extra <= per_cmd * sim_count[(name, pass_.value)], (name, pass_)


def test_cli_sensitivity_table(capsys):
    from sim import scale_cli

    p = argparse.ArgumentParser()
    scale_cli.register(p.add_subparsers())
    args = p.parse_args(["scale", "--net", "lenet5", "--workers", "1,4", "--sensitivity"])
    assert args.func(args) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and " ms |" in ln]
    assert len(rows) == 2 * 2 * 4  # cores x algorithms x batches
    for ln in rows:
        ratio = float(ln.split("|")[10].strip().rstrip("x"))  # all methods / none, never below 1
        assert ratio >= 1.0


def test_eight_bit_values_in_sixteen_bit_sums():
    # 1e6 parameters: 8-bit over PCIe (1e6 B at 4 GB/s: 0.25 ms each way); ring on 2 workers:
    # reduce-scatter of 2e6 B and allgather of 1e6 B: (2e6 + 1e6) / (2 * 2e9) = 0.75 ms; two
    # exponent exchanges per tensor (2 tensors), 256 B at 2 GB/s each: 4 * 128 ns.
    # 1 + 2 + 0.25 + 0.75 + 0.25 + 0.5 ms.
    r = simulate(one_layer(), 2, LINKS, Methods.none(), 8, partial_bits=16)
    assert r.step_time == pytest.approx(4.75 * MS + 4 * 256 / 2e9)
    assert r.payload_bytes == 2_000_000 + 500_000 + 2 * 2 * 64 * 4  # 16-bit buffer, own 8-bit chunk, exponents
    # between the 8-bit and the 16-bit allreduce
    t8 = simulate(one_layer(), 2, LINKS, Methods.none(), 8).step_time
    t16 = simulate(one_layer(), 2, LINKS, Methods.none(), 16).step_time
    assert t8 < r.step_time < t16
    # ring formula with a gather phase: 3 * (2 * 1us + (8e6 + 4e6) / (4 * 1e9)) + 3/4 * 8e6 / 2e9
    links = Links(net_bw=1e9, net_latency=1e-6, host_reduce_bw=2e9)
    assert links.allreduce(8e6, 4, gather_bytes=4e6) == pytest.approx(3 * (2e-6 + 3e-3) + 3e-3)
    with pytest.raises(ValueError, match="partial_bits=8"):
        simulate(one_layer(), 2, LINKS, Methods.none(), 8, partial_bits=8)


def test_one_host_thread_sums_at_the_serial_rate_without_method_3():
    # one_layer() on 2 workers: ring reduction term (N-1)/N * 4e6 B = 2e6 B. One thread at
    # 4 GB/s: +0.5 ms on the 7.5 ms of no overlap; method 3 (one segment, threads at INF): 7.5 ms.
    links = Links(net_bw=2e9, net_latency=0.0, pcie_bw=4e9, pcie_latency=0.0, host_reduce_bw=INF,
                  serial_reduce_bw=4e9, segment_bytes=1 << 40)
    assert simulate(one_layer(), 2, links, Methods.none(), 32).step_time == pytest.approx(8.0 * MS)
    assert simulate(one_layer(), 2, links, Methods(True, True, False), 32).step_time == pytest.approx(8.0 * MS)
    assert simulate(one_layer(), 2, links, Methods(False, False, True), 32).step_time == pytest.approx(7.5 * MS)
    assert links.allreduce(4e6, 2, threaded=False) == pytest.approx((4e6 + 4e6) / (2 * 2e9) + 2e6 / 4e9)
    with pytest.raises(ValueError, match="serial_reduce_bw"):
        Links(serial_reduce_bw=0)


def test_alexnet_macs_per_layer():
    macs = {name: (f, b, p) for name, f, b, p in layer_macs(alexnet())}
    assert macs["conv1"] == (55 * 55 * 11 * 11 * 3 * 96, 55 * 55 * 11 * 11 * 3 * 96, 34_944)  # no input error
    assert macs["conv2"][0] == 27 * 27 * 5 * 5 * 48 * 256  # two groups of 48 input channels
    assert macs["conv2"][1] == 2 * macs["conv2"][0]
    assert macs["fc6"] == (9216 * 4096, 2 * 9216 * 4096, 9216 * 4096 + 4096)


@pytest.mark.parametrize("name", sorted(GPUS))
def test_gpu_costs_reproduce_the_published_alexnet_time(name):
    gpu = GPUS[name]
    costs = gpu_layer_costs(alexnet(), 128, gpu)
    assert sum(c.forward for c in costs) == pytest.approx(128 * gpu.forward_s)
    assert sum(c.backward for c in costs) == pytest.approx(128 * gpu.backward_s)
    # update: read weight, gradient, velocity, write weight and velocity, 4 bytes each
    assert sum(c.update for c in costs) == pytest.approx(20 * 60_965_224 / gpu.mem_bw)
    # the compute splits as the MACs: conv1 forward share
    f = {n: m for n, m, _, _ in layer_macs(alexnet())}
    assert costs[0].forward == pytest.approx(128 * gpu.forward_s * f["conv1"] / sum(f.values()))
    with pytest.raises(ValueError, match="mem_bw=0"):
        Gpu("x", 1.0, 1.0, 0, "")


def test_strong_scaling_splits_one_mini_batch():
    gpu = GPUS["k40-caffe"]
    links = Links()
    rows = sweep(alexnet(), [1, 4], 256, Chip(), links, [("none", Methods.none(), 32, None)], gpu=gpu,
                 global_batch=True)
    one, four = rows
    assert one.efficiency == pytest.approx(1.0)
    # four workers of 64 images each: the step is simulated on the 64-image costs
    t4 = simulate(gpu_layer_costs(alexnet(), 64, gpu), 4, links, Methods.none()).step_time
    assert four.step_time == pytest.approx(t4)
    assert four.images_per_s == pytest.approx(256 / t4)
    assert four.efficiency == pytest.approx(one.step_time / (4 * t4))
    with pytest.raises(ValueError, match=r"global batch=256 is not divisible by the worker counts \[3\]"):
        sweep(alexnet(), [1, 3], 256, Chip(), links, gpu=gpu, global_batch=True)


def test_cli_gpu_strong_scaling_and_sensitivity(tmp_path, capsys):
    from sim import scale_cli

    p = argparse.ArgumentParser()
    scale_cli.register(p.add_subparsers())
    args = p.parse_args(["scale", "--gpu", "titanx-caffe", "--global-batch", "--batch", "1024", "--workers", "1,16,64"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "global batch 1024" in out and "Titan X" in out
    assert "| no overlap, 32-bit | 1.0x (100%)" in out
    args = p.parse_args(["scale", "--gpu", "k40-caffe", "--global-batch", "--workers", "1,64", "--sensitivity"])
    assert args.func(args) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| ") and " ms |" in ln]
    assert len(rows) == 2 * 5  # algorithms x global batches, no cores column to sweep
    with pytest.raises(SystemExit):
        p.parse_args(["scale", "--gpu", "p100"])
    with pytest.raises(SystemExit):
        p.parse_args(["scale", "--batch", "0"])

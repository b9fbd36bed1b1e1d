"""``dlu scale``: throughput of data-parallel training on N DLUs (argument parsing and output only).

The model is :mod:`sim.scale`. Prints a markdown table (training speed relative to one worker,
scaling efficiency, step time, gradient bytes exchanged per step) and writes a plot like the paper's Figure 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from reference.cli import _positive_int
from reference.parallel_cli import _positive_float


def _int_list(s: str) -> list[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{s!r}: need one or more integers >= 1")
    return vals


#: Largest --batch: the cost model cuts each layer into legal commands, so its work grows with the batch
#: (alexnet at this batch takes about a second per worker count; 10**8 took minutes).
MAX_BATCH = 1 << 16


def _batch(s: str) -> int:
    v = _positive_int(s)
    if v > MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{v} is more than {MAX_BATCH} images")
    return v


def _nonneg(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"{v} must be >= 0")
    return v


def register(subparsers: argparse._SubParsersAction) -> None:
    from .scale import GPUS

    p = subparsers.add_parser(
        "scale", help="model throughput of data-parallel training on N DLUs (overlap methods, gradient widths)",
        description="Event-level timing model of data-parallel training (sim.scale); see docs/parallel.md.")
    p.add_argument("--workers", type=_int_list, default=[1, 2, 4, 8, 16, 32, 64], metavar="N,N,...")
    p.add_argument("--net", default="alexnet", help="built-in network (alexnet, vgg16, lenet5, digits_cnn) or file")
    p.add_argument("--batch", type=_batch, default=32,
                   help="mini-batch per worker (weak scaling), or of all workers with --global-batch")
    p.add_argument("--global-batch", action="store_true",
                   help="strong scaling, as in the paper: one mini-batch of --batch images split over the workers")
    p.add_argument("--gpu", choices=sorted(GPUS), default=None,
                   help="compute on a GPU of the paper's era (published AlexNet fp32 training time) instead of DLUs")
    p.add_argument("--cores", type=_positive_int, default=256, help="DLU cores per chip")
    p.add_argument("--clock-ghz", type=_positive_float, default=1.0)
    p.add_argument("--compute-bits", type=int, choices=(8, 16, 32), default=16)
    p.add_argument("--core", default="default", help="core config preset or TOML file")
    p.add_argument("--net-gbps", type=_positive_float, default=56.0, help="network bandwidth, Gbit/s")
    p.add_argument("--latency-us", type=_nonneg, default=1.0, help="network latency per message, us")
    p.add_argument("--pcie-gbs", type=_positive_float, default=12.0, help="device-host bandwidth each way, GB/s")
    p.add_argument("--pcie-latency-us", type=_nonneg, default=5.0)
    p.add_argument("--reduce-gbs", type=_positive_float, default=10.0,
                   help="host reduction throughput with threads and SIMD (method 3), GB/s of incoming gradients")
    p.add_argument("--serial-reduce-gbs", type=_positive_float, default=20 / 3,
                   help="host reduction throughput of one thread (method 3 off), GB/s")
    p.add_argument("--algorithm", choices=("ring", "tree"), default="ring")
    p.add_argument("--segment-mib", type=_positive_float, default=4.0, help="segment size of method 3, MiB")
    p.add_argument("--plot", default=None, metavar="PNG", help="write the Figure-1-style plot here")
    p.add_argument("--md", default=None, metavar="FILE", help="also write the markdown table here")
    p.add_argument("--sensitivity", action="store_true",
                   help="instead: all methods vs none at the largest worker count, over per-worker batch "
                        "32..256, 256 and 64 cores (or the --gpu), ring and tree; global batches 256..4096 "
                        "with --global-batch")
    p.set_defaults(func=_scale)


def _atomic_write(path, write) -> None:
    from reference.outputs import atomic_write

    atomic_write(path, write)


def table_markdown(rows, workers: list[int]) -> str:
    """Speed relative to one worker (efficiency in parentheses) per configuration and worker count."""
    labels = list(dict.fromkeys(r.label for r in rows))
    by = {(r.label, r.workers): r for r in rows}
    cols = " | ".join(f"N={n}" for n in workers)
    head = f"| configuration | {cols} | step at N={workers[-1]} | gradients/step |"
    lines = [head, "|---" * (len(workers) + 3) + "|"]
    for lab in labels:
        cells = []
        for n in workers:
            r = by[(lab, n)]
            cells.append(f"{r.efficiency * n:.1f}x ({100 * r.efficiency:.0f}%)")
        last = by[(lab, workers[-1])]
        lines.append(f"| {lab} | " + " | ".join(cells) + f" | {1e3 * last.step_time:.1f} ms "
                     f"| {last.payload_bytes / 2**20:.1f} MiB |")
    return "\n".join(lines) + "\n"


def sensitivity_markdown(net, workers: int, chip, links, gpu=None, global_batch: bool = False) -> str:
    """Step times and ratios at ``workers`` over the batch, the chip size (DLUs) and the algorithm.

    Weak scaling: per-worker batches 32..256; strong scaling (``global_batch``): global batches
    256..4096, each split over ``workers``. On a ``gpu``, the cores column is ``-``.
    """
    from dataclasses import replace

    from .scale import Allreduce, Methods, compute_costs, simulate

    device = gpu.name if gpu is not None else f"{chip.clock_hz / 1e9:g} GHz, {chip.compute_bits}-bit compute"
    bname = "global batch" if global_batch else "batch/worker"
    lines = [f"{net.name}, {workers} workers, {device}, network {links.net_bw * 8 / 1e9:g} Gbit/s\n",
             f"| {bname} | cores | allreduce | 1 worker step | none 32-bit | 1+2+3 32-bit | 1+2+3 16-bit "
             "| 1+2+3 8-bit | 1+2+3 8-bit in 16-bit sums | all/none 32-bit | 8-bit gain (all methods) "
             "| efficiency none / 1+2+3 32-bit / 8-bit |",
             "|---" * 12 + "|"]
    batches = (256, 512, 1024, 2048, 4096) if global_batch else (32, 64, 128, 256)
    for cores in ((chip.cores,) if gpu is not None else (256, 64)):
        for algo in Allreduce:
            for b in batches:
                if global_batch and b % workers:
                    continue
                per = b // workers if global_batch else b
                c1 = compute_costs(net, b, replace(chip, cores=cores), gpu)
                cn = compute_costs(net, per, replace(chip, cores=cores), gpu)
                lk = replace(links, algorithm=algo)
                one = simulate(c1, 1, lk, Methods.none()).step_time
                ideal = one * per / b  # the one-worker time of this worker's share of the images
                t = {k: simulate(cn, workers, lk, m, bits, partial_bits=pb).step_time for k, m, bits, pb in
                     (("n32", Methods.none(), 32, None), ("a32", Methods.all(), 32, None),
                      ("a16", Methods.all(), 16, None), ("a8", Methods.all(), 8, None), ("a8rs", Methods.all(), 8, 16))}
                lines.append(f"| {b} | {cores if gpu is None else '-'} | {algo.value} | {one * 1e3:.1f} ms | "
                             f"{t['n32'] * 1e3:.1f} ms | "
                             f"{t['a32'] * 1e3:.1f} ms | {t['a16'] * 1e3:.1f} ms | {t['a8'] * 1e3:.1f} ms | "
                             f"{t['a8rs'] * 1e3:.1f} ms | "
                             f"{t['n32'] / t['a32']:.2f}x | {t['a32'] / t['a8']:.2f}x | "
                             f"{100 * ideal / t['n32']:.0f}% / {100 * ideal / t['a32']:.0f}% / "
                             f"{100 * ideal / t['a8']:.0f}% |")
    return "\n".join(lines) + "\n"


def plot(rows, workers: list[int], title: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(workers, workers, "k:", label="ideal")
    for lab in dict.fromkeys(r.label for r in rows):
        rs = sorted((r for r in rows if r.label == lab), key=lambda r: r.workers)
        ax.plot([r.workers for r in rs], [r.efficiency * r.workers for r in rs], marker="o", label=lab)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("number of workers")
    ax.set_ylabel("training speed relative to one worker")
    ax.set_title(title.replace("; ", "\n"), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def _scale(args: argparse.Namespace) -> int:
    from reference.config import load_config
    from reference.memplan_cli import check_image_path
    from reference.nets import resolve_net
    from reference.outputs import check_output_file

    from .scale import GPUS, Allreduce, Chip, Links, sweep

    if args.sensitivity and args.plot:
        raise ValueError("scale: --plot draws the worker sweep; --sensitivity writes a table only (use --md)")
    if args.md:  # output paths before the work
        check_output_file(args.md, "--md")
    if args.plot and not args.sensitivity:
        check_image_path(args.plot, "--plot")
    net = resolve_net(args.net)
    chip = Chip(load_config(args.core), args.cores, args.clock_ghz * 1e9, args.compute_bits)
    gpu = GPUS[args.gpu] if args.gpu else None
    links = Links(net_bw=args.net_gbps * 1e9 / 8, net_latency=args.latency_us * 1e-6, pcie_bw=args.pcie_gbs * 1e9,
                  pcie_latency=args.pcie_latency_us * 1e-6, host_reduce_bw=args.reduce_gbs * 1e9,
                  serial_reduce_bw=args.serial_reduce_gbs * 1e9,
                  algorithm=Allreduce(args.algorithm), segment_bytes=int(args.segment_mib * 2**20))
    workers = sorted(set(args.workers))
    if args.sensitivity:
        md = sensitivity_markdown(net, workers[-1], chip, links, gpu, args.global_batch)
        print(md)
        if args.md:
            _atomic_write(args.md, lambda tmp: Path(tmp).write_text(md))
        return 0
    rows = sweep(net, workers, args.batch, chip, links, gpu=gpu, global_batch=args.global_batch)
    device = (gpu.name if gpu is not None else
              f"{args.cores} cores x {chip.core.lanes} lanes @ {args.clock_ghz:g} GHz, {args.compute_bits}-bit compute")
    batch = f"global batch {args.batch}" if args.global_batch else f"batch {args.batch}/worker"
    title = (f"{net.name}, {batch}, {device}; {args.algorithm} allreduce "
             f"{args.net_gbps:g} Gbit/s, {args.latency_us:g} us")
    md = f"{title}\n\nspeed relative to one worker (scaling efficiency)\n\n" + table_markdown(rows, workers)
    print(md)
    if args.md:
        _atomic_write(args.md, lambda tmp: Path(tmp).write_text(md))
    if args.plot:
        plot(rows, workers, title, args.plot)
        print(f"plot written to {args.plot}")
    return 0

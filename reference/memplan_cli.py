"""``dlu memplan``: peak training memory of a network under each schedule, plot and budget search.

Argument parsing and printing only; the planning is :mod:`reference.memplan`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from reference.cli import _positive_int
from reference.outputs import atomic_write

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
MIB = 2**20


def parse_bytes(text: str) -> int:
    """``"8GiB"``, ``"500MB"``, ``"1.5GB"`` or ``"123456"`` -> bytes.

    Raises
    ------
    ValueError
        Naming ``--budget`` and the text if it is not a positive size.
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"--budget: {text!r}: expected a size such as 8589934592, 8GiB or 500MB")
    value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value < 1:
        raise ValueError(f"--budget: {text!r}: must be at least one byte")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "memplan",
        help="training-step memory: conventional vs optimised schedules, plot, budget search",
        description="Plan the buffers of one training step of NET (a built-in name: alexnet, vgg16, "
                    "lenet5, digits_cnn; or a .json/.toml network file) and print the peak memory "
                    "under the conventional (Caffe) schedule and each optimisation step.",
    )
    p.add_argument("net", metavar="NET", help="built-in network name or network file")
    p.add_argument("--batch", type=_positive_int, default=32, help="mini-batch size (default 32)")
    from reference.formats import Width  # light: NumPy only

    bits = sorted((w.bits for w in Width), reverse=True)
    p.add_argument("--width", type=int, nargs="+", choices=bits, default=bits,
                   help=f"data widths in bits (default: {' '.join(map(str, bits))})")
    p.add_argument("--align", type=_positive_int, default=256,
                   help="allocation granule of the arena allocator in bytes (default 256)")
    p.add_argument("--momentum", action="store_true",
                   help="keep a momentum velocity per parameter (one more parameter copy, every schedule)")
    p.add_argument("--budget", default=None,
                   help="memory budget (e.g. 12GiB): find the largest batch under each schedule")
    p.add_argument("--plot", type=Path, default=None,
                   help="plot path (default out/memplan_<net>_b<batch>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the plot")
    p.add_argument("--measure", action="store_true",
                   help="digits_cnn only: run one fp32 training step of reference.models' CNN on each schedule in "
                        "a buffer pool under tracemalloc and compare with the plan (im2col workspaces planned)")
    p.set_defaults(func=run)


def _pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


def check_image_path(path: str | Path, what: str) -> Path:
    """``path`` if a plot can be written there in a format matplotlib knows (by its suffix, default png)."""
    from reference.outputs import OutputError, check_output_file

    p = check_output_file(path, what)
    fmt = p.suffix.lstrip(".").lower() or "png"
    if fmt not in ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp"):
        raise OutputError(f"{what} {p}: unknown image format {fmt!r} (use .png, .svg or .pdf)")
    return p


def run(args: argparse.Namespace) -> int:
    from reference.formats import Width
    from reference.memplan import (
        CAFFE_PREFETCH,
        Strategy,
        caffe_faithful,
        caffe_inplace_conventional_bytes,
        check_plan,
        largest_batch,
        plan,
    )
    from reference.nets import resolve_net

    net = resolve_net(args.net)
    budget = parse_bytes(args.budget) if args.budget is not None else None
    plot_path = None
    if not args.no_plot:  # checked before the work
        plot_path = check_image_path(args.plot or Path("out") / f"memplan_{net.name}_b{args.batch}.png", "--plot")
    widths = [Width.from_bits(b) for b in dict.fromkeys(args.width)]
    plans = {}
    print(f"{net.name}: {net.param_count:,} parameters, batch {args.batch}, arena granule {args.align} B, "
          f"{'momentum SGD (velocity kept)' if args.momentum else 'plain SGD (no solver state)'}")
    print("arena = one arena placed offline from the lifetimes (fragmentation included); "
          "live = largest sum of live buffers;\nbest-fit = online best-fit allocator high-water")
    probe = plan(net, args.batch, widths[0], Strategy.CONVENTIONAL, args.align).peak_arena
    unit, div = ("MiB", MIB) if probe >= 10 * MIB else ("KiB", 1024)
    for w in widths:
        print(f"\n{w.bits}-bit data")
        print(f"  {'schedule':34s} {'arena ' + unit:>10s} {'live ' + unit:>10s} {'best-fit':>10s} {'saving':>7s} "
              f"{'step':>7s}  peak during")
        base = prev = None
        for s in Strategy:
            pl = plan(net, args.batch, w, s, args.align, momentum=args.momentum)
            check_plan(pl)
            plans[w, s] = pl
            base = base or pl
            step = "" if prev is None else _pct(1 - pl.peak_arena / prev.peak_arena)
            print(f"  {s.label:34s} {pl.peak_arena / div:10.1f} {pl.peak_live / div:10.1f} "
                  f"{pl.peak_bestfit / div:10.1f} {_pct(1 - pl.peak_arena / base.peak_arena)} "
                  f"{step:>7s}  {pl.peak_op.name}")
            prev = pl
        caffe = caffe_inplace_conventional_bytes(net, args.batch, w, args.momentum)
        print(f"  against a Caffe prototxt whose ReLU/dropout run in place ({caffe / div:.1f} {unit} all step):")
        for s, label in ((Strategy.REORDER, "paper, on the in-place net"),
                         (Strategy.WEIGHT_AREA, "paper + fused, in-place net")):
            pl = plan(net, args.batch, w, s, args.align, momentum=args.momentum, inplace=True)
            check_plan(pl)
            print(f"  {label:34s} {pl.peak_arena / div:10.1f} {pl.peak_live / div:10.1f} "
                  f"{pl.peak_bestfit / div:10.1f} {_pct(1 - pl.peak_arena / caffe)}")
        conv, _ = caffe_faithful(net, args.batch, w, args.align)
        print(f"  as Caffe 1.0 trains it (in place, momentum history, int masks, col buffers, "
              f"{CAFFE_PREFETCH} prefetched batches: {conv / div:.1f} {unit}):")
        for s, label in ((Strategy.REORDER, "paper, Caffe-faithful"),
                         (Strategy.WEIGHT_AREA, "paper + fused, Caffe-faithful")):
            _, opt = caffe_faithful(net, args.batch, w, args.align, strategy=s)
            print(f"  {label:34s} {opt / div:10.1f} {'':>10s} {'':>10s} {_pct(1 - opt / conv)}")
    if args.measure:
        _measure(net, args.batch)
    if budget is not None:
        print(f"\nlargest batch under a budget of {budget:,} bytes ({budget / MIB:.1f} MiB)")
        print(f"  {'schedule':34s} " + " ".join(f"{w.bits:>6d}-bit" for w in widths) + "   x conventional")
        base_n = {}
        for s in Strategy:
            ns = [largest_batch(net, budget, w, s, args.align, momentum=args.momentum) for w in widths]
            if s is Strategy.CONVENTIONAL:
                base_n = dict(zip(widths, ns, strict=True))
            gains = " ".join(f"{n / base_n[w]:5.2f}" if base_n[w] else "    -" for w, n in zip(widths, ns,
                                                                                           strict=True))
            print(f"  {s.label:34s} " + " ".join(f"{n:10d}" for n in ns) + f"   {gains}")
    if plot_path is not None:
        write_plot(plans, widths, plot_path, f"{net.name}, batch {args.batch}")
        print(f"\nplot: {plot_path}")
    return 0


def _measure(net, batch: int) -> None:
    from reference.data import load_dataset
    from reference.memplan import Strategy
    from reference.models import build_model
    from reference.pooled import measure_step

    if net.name != "digits_cnn":
        raise ValueError(f"--measure: only digits_cnn has a trainer model (reference.models), not {net.name!r}")
    data = load_dataset("digits")
    if batch > len(data.x_train):
        raise ValueError(f"--measure: batch {batch} exceeds the {len(data.x_train)} training images")
    model = build_model("cnn", data.image_hwc, data.classes)
    x, y = model.input_matrix(data.x_train[:batch]), data.y_train[:batch]
    print(f"\none fp32 training step of the trainer's CNN, batch {batch}, momentum, im2col workspaces planned, "
          "arena granule 64 B;\ntracemalloc peak vs plan (arena pool: peak_arena; heap pool: peak_live); "
          "excess = NumPy temporaries;\nthe schedules dlu train --memplan runs (fused dW->W blocks where the "
          "planner chooses them)")
    print(f"  {'schedule':34s} {'pool':>5s} {'plan B':>10s} {'measured B':>11s} {'excess':>13s}  largest temporaries")
    for s in Strategy:
        for arena in (True, False):
            r = measure_step(model, x, y, s, arena)
            op, extra = r.worst_op
            print(f"  {s.label:34s} {'arena' if arena else 'heap':>5s} {r.predicted:10d} {r.measured:11d} "
                  f"{r.excess:7d} {_pct(r.excess / r.predicted)}  {op} ({extra} B)")


def write_plot(plans: dict, widths: list, path: Path, title: str) -> None:
    """Plot live memory per op for each width and schedule; written atomically to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from reference.memplan import Phase, Strategy

    fig, axes = plt.subplots(len(widths), 1, figsize=(10, 3.2 * len(widths)), squeeze=False)
    for ax, w in zip(axes[:, 0], widths, strict=True):
        styles = ["-", "--", "-.", ":", (0, (5, 1, 1, 1))]
        for s in Strategy:
            pl = plans[w, s]
            ax.step(range(len(pl.live)), [v / MIB for v in pl.live], where="mid",
                    linestyle=styles[s % len(styles)], linewidth=1.4,
                    label=f"{s.label} (arena {pl.peak_arena / MIB:.1f} MiB)")
            fwd_end = max(i for i, o in enumerate(pl.ops) if o.phase is Phase.FORWARD)
        ax.axvline(fwd_end + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_ylabel("live MiB")
        ax.set_title(f"{title}, {w.bits}-bit data (forward | backward)")
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("operation index in the training step")
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)

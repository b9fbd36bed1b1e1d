"""``dlu train`` and ``dlu bench``: argument parsing only; the work is in :mod:`reference.train`."""

from __future__ import annotations

import argparse
import sys

_PRECISIONS = ("fp32", "dfp32", "dfp16", "dfp8")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} must be >= 1")
    return v


def _float(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a network in fp32 or dynamic fixed point (golden model)",
                              description="Train the golden model; writes OUT/NAME/metrics.json, plots and a trace.")
    p.add_argument("--net", "--model", dest="model", default="cnn", metavar="NAME|FILE",
                   help="built-in network (cnn, mlp, lenet5, alexnet, vgg16) or a network file (.toml/.json, "
                        "see docs/networks.md); --model is an alias")
    p.add_argument("--init-from", metavar="MODEL.onnx",
                   help="seed the weights from this ONNX model's initializers (the network must be its import)")
    p.add_argument("--precision", choices=_PRECISIONS, default="dfp16")
    p.add_argument("--config", metavar="TOML", help="mixed-precision config ([precision] tables); needs a dfp mode, "
                   "whose width is the default for classes the file leaves out")
    p.add_argument("--epochs", type=_positive_int, default=15)
    p.add_argument("--batch", type=_positive_int, default=32)
    p.add_argument("--lr", type=_float, default=0.05)
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine",
                   help="per-epoch learning rate: cosine decay to ~0, or constant")
    p.add_argument("--momentum", type=_float, default=0.9)
    p.add_argument("--weight-decay", type=_float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--core", default="default", metavar="PRESET|TOML",
                   help="core the dfp modes run on (lanes, histogram, tensor ids; the trace records it): a preset "
                        "(default, tiny) or a TOML file as for dlu gen --config")
    p.add_argument("--grad-order", choices=("input-first", "weights-first"), default="input-first")
    p.add_argument("--memplan", choices=("conventional", "reorder", "weight-area", "early-free", "inplace"),
                   help="fp32 only: run every step on this memory schedule, all tensors in one planned arena "
                        "(reference.pooled; weight-area and later also apply dW to W in blocks of rows; "
                        "same results as without; see docs/memplan.md)")
    p.add_argument("--name", help="run directory name (default: MODEL-PRECISION-sSEED)")
    p.add_argument("--data", default="digits", help="'digits' (8x8, bundled with scikit-learn), 'digits28' (28x28 "
                   "made from digits), 'signals[:SEED]' (noisy shifted 1-D signals, made here; see docs/training.md), "
                   "'mnist:DIR', 'cifar10:DIR', 'npz:FILE' or 'synthetic:CxHxW:CLASSES:N' (random, for timing)")
    p.add_argument("--trace-iters", default="", metavar="SPEC",
                   help="iterations to trace: 'all', or indices/ranges like '0,5,10-12' (default: none)")
    p.add_argument("--out", default="runs", help="parent directory of the run directory")
    p.add_argument("--force", action="store_true", help="replace an existing run directory")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--limit-train", type=_positive_int, default=None, metavar="N",
                   help="use only the first N training images (quick runs and tests)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    b = subparsers.add_parser("bench", help="accuracy and speed of fp32 vs dfp32/dfp16/dfp8 over several seeds",
                              description="Benchmark the precision modes on digits; writes a markdown table.")
    b.add_argument("--net", "--model", dest="model", default="cnn", metavar="NAME|FILE",
                   help="built-in network or network file (--model is an alias)")
    b.add_argument("--precisions", default=",".join(_PRECISIONS), help="comma-separated modes")
    b.add_argument("--seeds", type=_positive_int, default=5, help="number of seeds (0..N-1)")
    b.add_argument("--epochs", type=_positive_int, default=15)
    b.add_argument("--batch", type=_positive_int, default=32)
    b.add_argument("--lr", type=_float, default=0.05)
    b.add_argument("--data", default="digits")
    b.add_argument("--out", default="runs/bench.md", help="markdown file to write")
    b.set_defaults(func=_bench)

    m = subparsers.add_parser("import", help="import an ONNX model as a network file (and its weights)",
                              description="Convert MODEL.onnx into a network file for dlu train --net; an "
                                          "unsupported operator is named and nothing is written. Train from its "
                                          "weights with dlu train --net NET.toml --init-from MODEL.onnx.")
    m.add_argument("model", metavar="MODEL.onnx")
    m.add_argument("--out", required=True, metavar="NET.toml", help="network file to write (.toml or .json)")
    m.add_argument("--force", action="store_true", help="replace an existing file")
    m.set_defaults(func=_import)


def train_config(args: argparse.Namespace):
    """The :class:`~reference.train.TrainConfig` of ``dlu train``'s arguments (ValueError naming a bad one)."""
    from .models import GradOrder
    from .train import IterSpec, LrSchedule, Precision, TrainConfig, load_precision

    prec = Precision(args.precision)
    spec = None
    if args.config:
        if prec == Precision.FP32:
            raise ValueError("train: --config needs --precision dfp32, dfp16 or dfp8 (its width is the default)")
        spec = load_precision(args.config, prec.width)
    return TrainConfig(model=args.model, precision=prec, spec=spec, epochs=args.epochs, batch=args.batch,
                       lr=args.lr, lr_schedule=LrSchedule(args.lr_schedule), momentum=args.momentum,
                       weight_decay=args.weight_decay, seed=args.seed, core=args.core,
                       trace_iters=IterSpec.parse(args.trace_iters), grad_order=GradOrder(args.grad_order),
                       init_from=getattr(args, "init_from", None))


def load_train_data(args: argparse.Namespace):
    """The data set of ``--data``, cut to ``--limit-train`` images."""
    from .data import Dataset, load_dataset

    data = load_dataset(args.data)
    k = args.limit_train
    if k is not None:
        if k > len(data.x_train):
            raise ValueError(f"train: --limit-train={k} exceeds the {len(data.x_train)} training images")
        data = Dataset(f"{data.name}[:{k}]", data.x_train[:k], data.y_train[:k], data.x_test, data.y_test,
                       data.image_hwc, data.classes)
    return data


def run_dir(args: argparse.Namespace, default_name: str):
    """Check ``--out``/``--name`` before any work (see :func:`reference.outputs.prepare_dir`); the run's path."""
    from pathlib import Path

    from .outputs import prepare_dir
    from .train import check_run_name

    name = args.name or default_name
    check_run_name(name)
    return prepare_dir(Path(args.out) / name, args.force, "train: run directory",
                       lambda m: print(m, file=sys.stderr))


def _train(args: argparse.Namespace) -> int:
    from .outputs import claim
    from .train import write_run

    cfg = train_config(args)
    from pathlib import Path

    final = run_dir(args, f"{Path(args.model).stem}-{args.precision}-s{args.seed}")
    name = final.name
    with claim(final, "train: run directory"):
        if final.exists() and not args.force:  # appeared since run_dir looked
            raise ValueError(f"train: run directory {final} exists (choose another --name or pass --force)")
        data = load_train_data(args)
        if args.memplan:
            from .memplan import Strategy
            from .pooled import train_pooled

            result = train_pooled(cfg, data, Strategy[args.memplan.upper().replace("-", "_")], progress=not args.quiet)
            mp = result.metrics["memplan"]
            print(f"memplan {args.memplan}: arena {mp['peak_arena_bytes']} bytes, peak live {mp['peak_live_bytes']} "
                  f"bytes (orders: {', '.join(f'{k} {v}' for k, v in mp['orders'].items()) or 'conventional'})")
        else:
            from .train import train

            result = train(cfg, data, progress=not args.quiet,
                           warn=lambda s: print(s, file=sys.stderr, flush=True))
        path = write_run(result, args.out, name, force=args.force, plots=not args.no_plots)
    fin = result.metrics["final"]
    print(f"{name}: test accuracy {fin['test_acc']:.4f}, final loss {fin['loss']:.4f}, "
          f"{fin['mean_epoch_time_s']:.3f} s/epoch -> {path}")
    if result.trace is not None:
        print(f"trace: {len(result.trace.iterations)} iteration(s) in {path / 'trace'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .outputs import atomic_write_text, check_output_file
    from .train import Precision, bench_markdown, benchmark

    try:
        precs = tuple(Precision(p.strip()) for p in args.precisions.split(","))
    except ValueError:
        raise ValueError(f"bench: --precisions {args.precisions!r}: each must be one of {_PRECISIONS}") from None
    out = check_output_file(args.out)
    data = load_dataset(args.data)
    seeds = tuple(range(args.seeds))
    rows = benchmark(data, args.model, precs, seeds, args.epochs, args.batch, args.lr,
                     progress=lambda s: print(s, file=sys.stderr, flush=True))
    cmd = (f"dlu bench --net {args.model} --precisions {args.precisions} --seeds {args.seeds} "
           f"--epochs {args.epochs} --batch {args.batch} --lr {args.lr} --data {args.data}")
    header = (f"Test accuracy after {args.epochs} epochs on {data.name} ({len(data.x_train)} train / "
              f"{len(data.x_test)} test images), model {args.model}, seeds {list(seeds)}.\n\nReproduce: `{cmd}`")
    md = bench_markdown(rows, header)
    atomic_write_text(out, md)
    print(md)
    print(f"written to {out}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .onnx_import import import_onnx, write_net_file

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ValueError(f"import: {out} exists (pass --force to replace it)")
    imp = import_onnx(args.model)
    write_net_file(imp.net, out)
    kinds = ", ".join(la.kind.value for la in imp.net.layers)
    print(f"{out}: {imp.net.name}, input {list(imp.net.input_shape)}, {len(imp.net.layers)} layers ({kinds}), "
          f"{imp.net.param_count} parameters")
    return 0

"""``dlu demo``: a short end-to-end tour, one step after the other.

Today: train the CNN on digits in dfp16 and dfp8 (a trace of two iterations each), replay the
dfp8 trace on the reference engine, and write a short report. Later issues append steps
(replay on the cycle simulator and the RTL, Verilog generation): keep it a plain sequence.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="short dfp16/dfp8 training on digits with a trace, then a report")
    p.add_argument("--out", default="runs/demo", help="directory of the demo's runs and report")
    p.add_argument("--epochs", type=int, default=3)
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    import os
    import tempfile
    from pathlib import Path

    from reference.data import load_digits_split
    from reference.trace import read_trace, replay_reference
    from reference.train import IterSpec, Precision, TrainConfig, train, write_run

    if args.epochs < 1:
        raise ValueError(f"demo: --epochs={args.epochs} must be >= 1")
    out = Path(args.out)
    data = load_digits_split()
    lines = ["# DLU demo report", ""]

    # Step 1: train in dfp16 and dfp8, tracing iterations 0 and 1.
    runs = {}
    for prec in (Precision.DFP16, Precision.DFP8):
        print(f"[demo] training cnn {prec.value} for {args.epochs} epoch(s) on digits ...", flush=True)
        cfg = TrainConfig(precision=prec, epochs=args.epochs, seed=0, trace_iters=IterSpec.parse("0,1"))
        res = train(cfg, data, progress=True)
        runs[prec] = write_run(res, out, f"cnn-{prec.value}", force=True)
        fin = res.metrics["final"]
        lines.append(f"- {prec.value}: test accuracy {fin['test_acc']:.4f} after {args.epochs} epoch(s), "
                     f"{fin['mean_epoch_time_s']:.2f} s/epoch; run in `{runs[prec]}`")

    # Step 2: replay the dfp8 trace on a fresh reference engine, bit for bit.
    tdir = runs[Precision.DFP8] / "trace"
    print(f"[demo] replaying {tdir} on the reference engine ...", flush=True)
    rep = replay_reference(read_trace(tdir))
    lines.append(f"- reference replay of `{tdir}`: {rep.ops} commands, {rep.policy_updates} policy updates "
                 f"in {rep.iterations} iteration(s): bit-exact")

    # Step 3: the report.
    report = out / "report.md"
    fd, tmp = tempfile.mkstemp(prefix=".report.", dir=out)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, report)
    print("\n".join(lines[2:]))
    print(f"[demo] report: {report}")
    return 0

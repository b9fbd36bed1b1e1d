"""``dlu demo``: a short end-to-end tour, one step after the other.

1. train the CNN on digits in dfp16 and dfp8, tracing iterations 0 and 1;
2. replay the dfp8 trace on a fresh reference engine (bit for bit);
3. replay both traces on the cycle simulator (data checked against the trace);
4. replay iteration 0 of the dfp8 trace on the Verilated core with ``--check`` (every command's
   cycles, results, statistics and the settings against the simulator and the trace);
5. generate the Verilog of the core that ran it;
6. write the HTML report (cycles, utilization, energy, fp32 vs dfp16 vs dfp8, point positions)
   and a short ``report.md``, and print their paths.

Keep it a plain sequence: each step is one call into the packages.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help="short dfp16/dfp8 training on digits with a trace, then a report")
    p.add_argument("--out", default="runs/demo", help="directory of the demo's runs and report")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--no-rtl", action="store_true", help="skip the RTL replay (step 4; needs Verilator, which "
                   "builds the default core once, ~2 minutes)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from reference.data import load_digits_split
    from reference.trace import read_trace, replay_reference
    from reference.train import IterSpec, Precision, TrainConfig, train, write_run

    if args.epochs < 1:
        raise ValueError(f"demo: --epochs={args.epochs} must be >= 1")
    from reference.outputs import check_output_dir

    out = check_output_dir(Path(args.out), "demo: --out")  # before the work
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

    # Step 3: the cycle simulator on both traces, on the default core (K-split weight gradients).
    from sim.replay import replay

    sims = {}
    for prec in (Precision.DFP16, Precision.DFP8):
        print(f"[demo] replaying {runs[prec] / 'trace'} on the cycle simulator ...", flush=True)
        res, path = replay(runs[prec] / "trace", progress=True)
        sims[prec] = res
        t = res["totals"]
        lines.append(f"- cycle simulator, {prec.value}: {t['commands']:,} commands, {t['cycles']:,} cycles, "
                     f"utilization {t['utilization']:.2f}, energy x{t['fp32_over_dfp_energy']:.2f} below the fp32 "
                     f"counterpart; data bit-exact with the trace (`{path}`)")

    # Step 4: a sample on the RTL, checked against the simulator and the trace.
    from reference.config import CoreConfig

    core = CoreConfig(**sims[Precision.DFP8]["config"])
    from sim.rtl_engine import RtlNotAvailable, ensure_available, replay_rtl

    skip = "--no-rtl" if args.no_rtl else None
    if skip is None:
        try:
            ensure_available()
        except RtlNotAvailable as exc:
            skip = str(exc)
            print(f"[demo] skipping the RTL step: {skip}", flush=True)
    if skip is not None:
        lines.append(f"- RTL replay: skipped ({skip})")
    else:
        print(f"[demo] replaying iteration 0 of {tdir} on the Verilated core with --check (the first run builds "
              "it) ...", flush=True)
        res, path = replay_rtl(tdir, cfg=core, iterations="0", check=True, progress=True)
        if res["mismatch"]:
            raise RuntimeError(f"demo: the RTL and the simulator differ: {res['mismatch']} ({path})")
        sims[Precision.DFP8]["rtl"] = res
        lines.append(f"- RTL (Verilator through cocotb), iteration 0 of the dfp8 trace: {res['commands']} commands, "
                     f"{res['command_cycles']['rtl']:,} command cycles; cycles, results, statistics and settings "
                     f"identical to the simulator and the trace (`{path}`)")

    # Step 5: the Verilog of that core.
    from rtl_gen.generate import generate

    print("[demo] generating the Verilog of the core ...", flush=True)
    generate(core, out / "rtl")
    lines.append(f"- Verilog of the core that ran the traces ({core.lanes} lanes, {core.spad_banks} x "
                 f"{core.spad_words} scratchpad words): `{out / 'rtl' / 'dlu_core.v'}` with `manifest.json` and "
                 "register headers")

    # Step 6: the reports.
    from reference.outputs import atomic_write_text
    from sim.report import write_report

    html = write_report([sims[Precision.DFP16], sims[Precision.DFP8]], out / "report")
    lines.append(f"- HTML report (per layer and pass, fp32 vs dfp16 vs dfp8, point positions): `{html}`")
    report = out / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    print("\n".join(lines[2:]))
    print(f"[demo] report: {html}")
    return 0

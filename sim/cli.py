"""``dlu replay``, ``dlu timing`` and ``dlu report``: argument parsing only; the work is in :mod:`sim.replay`,
:mod:`sim.tiling` and :mod:`sim.report`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reference.cli import _positive_int


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a training trace on the cycle simulator (or the RTL)",
        description="Replay TRACE command by command: cycles, traffic, energy; the data is executed by the golden "
                    "model and checked bit for bit against the trace. Writes a results JSON (atomically).")
    p.add_argument("trace", metavar="TRACE", help="trace directory (RUN/trace)")
    p.add_argument("--engine", choices=("sim", "rtl"), default="sim",
                   help="sim: the cycle simulator; rtl: also run the same commands on the Verilated core through "
                        "cocotb (built once per core config under build/rtl/), comparing every command's cycles "
                        "and every STORE's data; writes RUN/rtl.json")
    p.add_argument("--check", action="store_true", help="run sim and rtl, read every compute result and "
                   "database entry back from the RTL and stop at the first difference (implies --engine rtl)")
    p.add_argument("--rtl-commands", type=_positive_int, metavar="N", help="run only the first N scheduled "
                   "commands on the RTL (a sampled check; the simulator still replays everything selected)")
    p.add_argument("--rtl-baseline", action="store_true", help="also run the RTL program on a pure C++ "
                   "Verilator build and report the speed ratio (the benchmark of docs/simulator.md)")
    p.add_argument("--timing-only", action="store_true", help="schedule and time only; do not execute the data")
    p.add_argument("--core", metavar="PRESET|TOML", help="core to replay on (default: the trace's); may differ "
                   "from the trace's only in spad_words and spad_banks")
    p.add_argument("--grow-spad", action="store_true", help="if a command does not fit the scratchpad, double "
                   "spad_words until it does (the core used is printed and recorded in the results)")
    p.add_argument("--iterations", metavar="SPEC", help="replay only these traced iterations: training iteration "
                   "indices/ranges like '0,5-7' (default: all)")
    p.add_argument("--energy", metavar="TOML", help="energy table (default: 45 nm figures, docs/simulator.md)")
    p.add_argument("--out", metavar="JSON", help="results file (default: RUN/sim.json beside RUN/trace)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_replay)

    t = subparsers.add_parser(
        "timing", help="time one training iteration of a network from its description alone (no training)",
        description="Schedule one training iteration of NET (a built-in of reference.nets or a network file) on "
                    "the core with the tiling scheduler of sim.tiling, without data: cycles, utilization, bus "
                    "bytes and energy per layer and pass, and the fp32 counterpart. Writes a JSON (atomically).")
    t.add_argument("--net", required=True, metavar="NAME|FILE", help="alexnet, vgg16, lenet5, digits_cnn or a file")
    t.add_argument("--batch", type=_positive_int, default=32, help="images per iteration (default 32)")
    t.add_argument("--width", type=int, choices=(8, 16, 32), default=8, help="data width in bits (default 8)")
    t.add_argument("--core", metavar="PRESET|TOML", default="default", help="core (default: the default preset)")
    t.add_argument("--energy", metavar="TOML", help="energy table (default: 45 nm figures, docs/simulator.md)")
    t.add_argument("--out", metavar="JSON", help="results file (default: print only)")
    t.set_defaults(func=_timing)

    r = subparsers.add_parser(
        "report", help="HTML report (cycles, utilization, energy, bytes, point positions) from sim results",
        description="Write DIR/report.html with PNG plots. Each INPUT is a results JSON of `dlu replay`, a run "
                    "directory (its sim.json, else its trace/), or a trace directory (replayed, timing only).")
    r.add_argument("inputs", metavar="RUN_OR_TRACE", nargs="+")
    r.add_argument("--out", metavar="DIR", required=True, help="report directory")
    r.add_argument("--core", metavar="PRESET|TOML", help="core for inputs that are traces (see dlu replay)")
    r.add_argument("--energy", metavar="TOML", help="energy table for inputs that are traces")
    r.set_defaults(func=_report)


def _load_core(spec: str | None):
    if spec is None:
        return None
    from reference.config import load_config

    return load_config(spec)


def _load_energy(spec: str | None):
    if spec is None:
        return None
    from .energy import load_energy_table

    return load_energy_table(spec)


def _replay(args: argparse.Namespace) -> int:
    from reference.outputs import check_output_file

    from .replay import default_results_path, replay
    from .rtl_engine import RtlNotAvailable, default_rtl_results_path, ensure_available

    rtl = args.engine == "rtl" or args.check or args.rtl_commands is not None or args.rtl_baseline
    # every output path before any work: a bad one fails now, not after the replay
    check_output_file(args.out if args.out is not None else default_results_path(args.trace),
                      "replay: --out" if args.out is not None else "replay: results file")
    if rtl:
        check_output_file(default_rtl_results_path(args.trace), "replay: RTL results file")
    if rtl:
        try:
            ensure_available()
        except RtlNotAvailable as exc:
            print(f"dlu replay: error: {exc}", file=sys.stderr)
            return 3
    res, path = replay(args.trace, args.out, _load_core(args.core), not args.timing_only, _load_energy(args.energy),
                       progress=not args.quiet, grow_spad=args.grow_spad, iterations=args.iterations)
    if args.grow_spad and res["config"]["spad_words"] != res["trace_config"]["spad_words"]:
        print(f"dlu replay: replayed on spad_words={res['config']['spad_words']} (--grow-spad; the trace's core "
              f"has {res['trace_config']['spad_words']})", file=sys.stderr)
    t = res["totals"]
    print(f"{len(res['by_iteration'])} iteration(s), {t['commands']:,} commands, {t['cycles']:,} cycles "
          f"(utilization {t['utilization']:.3f}), bus {t['bus_bytes']:,} bytes, "
          f"energy {t['energy_pj']['total'] / 1e6:.3f} uJ (fp32 counterpart x{t['fp32_over_dfp_energy']:.2f}); "
          f"{'data bit-exact with the trace' if res['executed'] else 'timing only'}; "
          f"{res['speed']['cycles_per_s']:.3g} simulated cycles/s -> {path}")
    rr = res.get("reruns")
    if rr and rr["reruns"]:
        print(f"host re-runs of overflowing commands: {rr['reruns']} ({rr['commands']} commands, {rr['cycles']:,} "
              f"cycles = {rr['cycles'] / max(t['cycles'], 1):.1%}, {rr['energy_pj'] / 1e6:.3f} uJ)")
    if rtl:
        return _replay_rtl(args)
    return 0


def _timing(args: argparse.Namespace) -> int:
    from reference.formats import Width
    from reference.nets import resolve_net

    from .replay import write_json_atomic
    from .tiling import time_network

    cfg = _load_core(args.core)
    width = Width.from_bits(args.width)
    if not cfg.supports(width):
        raise ValueError(f"timing: the core does not support {args.width}-bit data (widths {list(cfg.widths)})")
    res = time_network(resolve_net(args.net), args.batch, cfg, width, _load_energy(args.energy))
    print(f"{'layer':<10} {'pass':<9} {'cycles':>15} {'util':>6} {'bus bytes':>15} {'energy uJ':>12}")
    for g in res["by_layer_pass"]:
        print(f"{g['layer']:<10} {g['pass']:<9} {g['cycles']:>15,} {g['utilization']:>6.3f} {g['bus_bytes']:>15,} "
              f"{g['energy_pj']['total'] / 1e6:>12.1f}")
    t = res["totals"]
    print(f"{res['net']} batch {res['batch']} at {res['width']} bits: {t['commands']:,} commands, {t['cycles']:,} "
          f"cycles (utilization {t['utilization']:.3f}), bus {t['bus_bytes']:,} bytes, energy "
          f"{t['energy_pj']['total'] / 1e6:.1f} uJ (fp32 counterpart x{t['fp32_over_dfp_energy']:.2f}); "
          f"scheduled in {res['speed']['wall_s']:.1f} s" + (f" -> {write_json_atomic(res, args.out)}" if args.out
                                                             else ""))
    return 0


def _replay_rtl(args: argparse.Namespace) -> int:
    from .rtl_engine import RtlFailed, replay_rtl

    try:
        res, path = replay_rtl(args.trace, None, _load_core(args.core), args.grow_spad, args.iterations, args.check,
                               args.rtl_commands, progress=not args.quiet, baseline=args.rtl_baseline,
                               log=lambda m: print(m, file=sys.stderr))
    except RtlFailed as exc:  # the simulator crashed, or the core never finished a command
        print(f"dlu replay: error: {exc}", file=sys.stderr)
        return 1
    sp = res["speed"]
    what = "cycles, STORE data, compute results, statistics and settings" if res["checked"] else \
        "cycles and STORE data"
    line = (f"rtl: {res['commands']:,} commands of iteration(s) {res['iterations']}, {sp['simulated_cycles']:,} "
            f"cycles at {sp['cycles_per_s']:.3g} cycles/s")
    if "cpp_baseline" in sp:
        line += (f" ({sp['cocotb_over_cpp']:.1%} of pure C++ Verilator's {sp['cpp_baseline']['cycles_per_s']:.3g} "
                 "cycles/s)")
    if res["mismatch"]:
        print(f"{line}\ndlu replay: RTL and simulator differ -> {path}\n  {res['mismatch']}", file=sys.stderr)
        return 1
    print(f"{line}; {what} identical to the simulator and the trace -> {path}")
    return 0


def resolve_input(spec: str, core=None, energy=None) -> dict:
    """Results for one ``dlu report`` input (see the command's description)."""
    from .replay import load_results, results

    p = Path(spec)
    if p.is_file():
        return load_results(p)
    if (p / "sim.json").is_file():
        res = load_results(p / "sim.json")
        if (p / "rtl.json").is_file():  # a run directory replayed on the RTL too
            import json

            res["rtl"] = json.loads((p / "rtl.json").read_text())
        return res
    trace_dir = p if (p / "manifest.json").is_file() else p / "trace"
    if not (trace_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"report: {spec} is neither a results JSON, a run directory nor a trace directory")
    from reference.trace import read_trace

    return results(read_trace(trace_dir), core, execute=False, table=energy, source=str(trace_dir))


def _report(args: argparse.Namespace) -> int:
    from reference.outputs import check_output_dir

    from .report import write_report

    check_output_dir(args.out, "report: --out")
    core, energy = _load_core(args.core), _load_energy(args.energy)
    path = write_report([resolve_input(s, core, energy) for s in args.inputs], args.out)
    print(f"report: {path}")
    return 0

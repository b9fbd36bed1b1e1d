"""Generated sections of ``docs/architecture.md`` (register map, command format, timing) and
``docs/programming.md`` (the programmer's guide: register map, SLVERR rules, settings word,
command words, opcodes with their operand shapes, error codes, scratchpad packing).

Each section sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers; a test
compares them with :func:`sections` / :func:`programming_sections`, and :func:`update` rewrites
them (``python -m rtl_gen.docs docs/architecture.md docs/programming.md``).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from hw import regmap
from reference import isa
from reference.config import PRESETS, CoreConfig
from reference.formats import Width
from reference.ops import Op

from .generate import command_format


def _command_table() -> str:
    lines = ["| word | bits | field |", "| --- | --- | --- |"]
    for f in sorted(command_format(), key=lambda f: (f["word"], f["lsb"])):
        hi = f["lsb"] + f["width"] - 1
        bits = f"[{hi}:{f['lsb']}]" if f["width"] > 1 else f"[{f['lsb']}]"
        lines.append(f"| {f['word']} | {bits} | {f['name']} |")
    lines += ["", "| opcode | command |", "| --- | --- |"]
    lines += [f"| {int(o)} | {o.name} |" for o in Op] + [f"| {int(c)} | {c.name} |" for c in isa.Ctl]
    lines += ["", "| STATUS.error | meaning |", "| --- | --- |"]
    lines += [f"| {int(e)} | {e.name} |" for e in isa.ErrorCode]
    return "\n".join(lines) + "\n"


def _timing_table(cfg: CoreConfig) -> str:
    s, d = isa.SETUP_CYCLES, isa.DRAIN_CYCLES
    lines = [
        f"SETUP_CYCLES = {s}, DRAIN_CYCLES = {d}, POLICY_CYCLES_PER_BIN = {isa.POLICY_CYCLES_PER_BIN}, "
        f"POLICY_FIXED_CYCLES = {isa.POLICY_FIXED_CYCLES}, "
        f"CLEAR_CYCLES_PER_TID = {isa.CLEAR_CYCLES_PER_TID} (reference/isa.py).",
        "",
        "| command | cycles |",
        "| --- | --- |",
        f"| MATMUL | {s} + M * ceil(N / V) * K + {d} |",
        f"| ADD, SUB, MUL, AXPY, RELU, RELU_BACKWARD, CONVERT | {s} + M * ceil(N / V) + {d} |",
        f"| LOAD, STORE | {s} + K + {d} (+ cycles the stream is not ready) |",
        f"| LOAD ended by LOAD_TIMEOUT after A words | {s} + A (+ stalled cycles, LOAD_TIMEOUT of them at the end) |",
        f"| POLICY_UPDATE | {s} + ({isa.POLICY_CYCLES_PER_BIN} * hist_bins + {isa.POLICY_FIXED_CYCLES}) * tensor_ids |",
        f"| CLEAR_STATS | {s} + {isa.CLEAR_CYCLES_PER_TID} * (tensor_ids if broadcast else 1) |",
        f"| illegal command | {s} |",
        "",
        "V = lanes * 32 / W_op values per beat. Peak MACs per cycle "
        f"(default config, {PRESETS['default'].lanes} lanes): "
        + ", ".join(f"{cfg.peak_macs_per_cycle(w)} at {w.bits} bits" for w in Width)
        + f". A MATMUL with K = 64 and one output beat reaches 64 / ({s} + 64 + {d}) = "
        f"{100 * 64 / (s + 64 + d):.1f}% of peak; more beats or larger K only raise it.",
    ]
    return "\n".join(lines) + "\n"


def sections(cfg: CoreConfig | None = None) -> dict[str, str]:
    cfg = PRESETS["default"] if cfg is None else cfg
    return {"REGMAP": regmap.markdown_table(cfg), "COMMAND": _command_table(), "TIMING": _timing_table(cfg)}


#: What each opcode does (prose; the shapes, MAC counts and codes beside it are generated).
_OP_DOC = {
    "MATMUL": "d = a x b, K products summed exactly in the accumulator, then rounded once",
    "ADD": "d = a + b (terms aligned exactly, reference.ops.align_terms)",
    "SUB": "d = a - b",
    "MUL": "d = a * b elementwise",
    "AXPY": "d = alpha * a + b; alpha is word 7 (a W-bit integer) with point position alpha_frac",
    "RELU": "d = max(a, 0)",
    "RELU_BACKWARD": "d = a where b > 0, else 0 (a: the error, b: the forward input)",
    "CONVERT": "d = a in d's format; the one command whose a and d widths may differ",
    "POLICY_UPDATE": "every valid auto-update tensor id with statistics: new point position "
                     "(reference.stats.next_frac with the THRESHOLD fields threshold, headroom, rise), then its "
                     "database entry is cleared",
    "CLEAR_STATS": "clear database entry tid_d, or every entry with the broadcast flag",
    "LOAD": "the next K words of s_axis into the scratchpad from addr_d",
    "STORE": "K scratchpad words from addr_a out on m_axis (m_axis_tlast on the last)",
}

#: When each error code is raised (prose; the order of the checks is reference.isa.check_command's).
_ERROR_DOC = {
    "NONE": "no error",
    "BAD_OPCODE": "opcode 12..15",
    "BAD_TENSOR_ID": "a tensor id the command uses is >= tensor_ids",
    "BAD_SHAPE": "M or N is 0, or a MATMUL's K is 0 or > MAX_K",
    "ADDRESS_RANGE": "an operand or the result leaves its bank, or a LOAD/STORE leaves the scratchpad "
                     "(or has K = 0)",
    "BANK_CONFLICT": "two of a, b, d in the same bank",
    "WIDTH_MISMATCH": "operand and result widths differ (legal only in CONVERT)",
    "BAD_ALPHA": "AXPY: alpha does not fit W bits or alpha_frac is outside [FRAC_MIN, FRAC_MAX]",
    "BAD_SETTING": "a tensor id without a (legal) setting, or an illegal settings write",
    "LOAD_TIMEOUT": "a LOAD's stream ran dry for LOAD_TIMEOUT cycles",
}


def _shape_str(shape: tuple[int, int]) -> str:
    names = {2: "M", 3: "N", 5: "K", 1: "1"}
    return f"[{names[shape[0]]}, {names[shape[1]]}]"


def _opcode_table() -> str:
    """Opcodes with operand roles and shapes probed from reference.isa.operand_shapes and the
    MAC count from reference.isa.macs (M=2, N=3, K=5 tell the dimensions apart)."""
    lines = ["| code | opcode | a | b | d | PERF_MACS adds | what it does |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    macs_names = {30: "M * N * K", 6: "M * N", 0: "0"}
    for op in list(Op) + list(isa.Ctl):
        cmd = isa.Command(int(op), m=2, n=3, k=5)
        shapes = isa.operand_shapes(cmd)
        bc = isa.operand_shapes(isa.Command(int(op), m=2, n=3, k=5, broadcast_b=True))
        cells = []
        for role in ("a", "b", "d"):
            if role not in shapes:
                cells.append("-")
            elif role == "b" and bc["b"] != shapes["b"]:
                cells.append(f"{_shape_str(shapes['b'])} or {_shape_str(bc['b'])} (broadcast)")
            else:
                cells.append(_shape_str(shapes[role]))
        if op == isa.Ctl.LOAD:
            cells = ["-", "-", "K words at addr_d"]
        elif op == isa.Ctl.STORE:
            cells = ["K words at addr_a", "-", "-"]
        lines.append(f"| {int(op)} | {op.name} | {' | '.join(cells)} | {macs_names[isa.macs(cmd)]} | "
                     f"{_OP_DOC[op.name]} |")
    return "\n".join(lines) + "\n"


def _error_table() -> str:
    lines = ["| STATUS.error | name | raised when |", "| --- | --- | --- |"]
    lines += [f"| {int(e)} | {e.name} | {_ERROR_DOC[e.name]} |" for e in isa.ErrorCode]
    return "\n".join(lines) + "\n"


def _settings_table() -> str:
    from hw.settings import SETTING_LAYOUT
    from reference.formats import FRAC_MAX, FRAC_MIN, RoundingMode

    enc = {
        "width": ", ".join(f"{int(w)} = {w.bits} bits" for w in Width) + "; 3 illegal; a width the core lacks "
                 "is illegal too (manifest `config.widths`, header `WIDTH_CODES`)",
        "frac": f"point position F, two's complement; legal {FRAC_MIN}..{FRAC_MAX}: value = integer * 2**-F",
        "rounding": ", ".join(f"{int(r)} = {r.name}" for r in RoundingMode) + "; 3 illegal",
        "auto": "1: POLICY_UPDATE may move F",
    }
    lines = ["| bits | field | encoding |", "| --- | --- | --- |"]
    for name, fld in SETTING_LAYOUT:
        hi = fld.offset + fld.width - 1
        lines.append(f"| [{hi}:{fld.offset}] | {name} | {enc[name]} |" if fld.width > 1
                     else f"| [{fld.offset}] | {name} | {enc[name]} |")
    return "\n".join(lines) + "\n"


def _scratchpad_table(cfg: CoreConfig) -> str:
    lines = [f"Default preset: {cfg.lanes} lanes, words of {cfg.word_bits} bits, {cfg.spad_banks} banks of "
             f"{cfg.spad_words} words (word address = bank * {cfg.spad_words} + offset).", "",
             "| width | values per word V | value j at bits | a [rows, cols] tensor occupies |",
             "| --- | --- | --- | --- |"]
    for w in cfg.supported_widths:
        v = cfg.values_per_beat(w)
        lines.append(f"| {w.bits} | {v} | [{w.bits}j + {w.bits - 1}:{w.bits}j] | rows * ceil(cols / {v}) words |")
    return "\n".join(lines) + "\n"


def _slverr_list() -> str:
    return "".join(f"- {rule}\n" for rule in regmap.SLVERR_RULES)


def programming_sections(cfg: CoreConfig | None = None) -> dict[str, str]:
    """The generated sections of ``docs/programming.md`` (default preset)."""
    cfg = PRESETS["default"] if cfg is None else cfg
    return {"REGMAP": regmap.markdown_table(cfg), "SLVERR": _slverr_list(), "SETTING": _settings_table(),
            "COMMAND": _command_table().split("\n\n")[0] + "\n", "OPCODES": _opcode_table(),
            "ERRORS": _error_table(), "SCRATCHPAD": _scratchpad_table(cfg), "TIMING": _timing_table(cfg)}


def _sections_for(path: Path) -> dict[str, str]:
    return programming_sections() if Path(path).name == "programming.md" else sections()


def extract(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- BEGIN (\w+) -->\n(.*?)<!-- END \1 -->", text, re.S)}


def update(path: Path) -> None:
    text = Path(path).read_text()
    for name, body in _sections_for(path).items():
        text, n = re.subn(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)",
                          lambda m, body=body: m.group(1) + body + m.group(2), text, flags=re.S)
        if n != 1:
            raise ValueError(f"{path}: section {name} not found exactly once")
    Path(path).write_text(text)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        update(Path(arg))

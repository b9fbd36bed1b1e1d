"""Generated sections of ``docs/architecture.md`` (register map, command format, timing).

Each section sits between ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers; a test
compares them with :func:`sections`, and :func:`update` rewrites them
(``python -m rtl_gen.docs docs/architecture.md``).
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
        f"SETUP_CYCLES = {s}, DRAIN_CYCLES = {d}, POLICY_CYCLES_PER_TID = {isa.POLICY_CYCLES_PER_TID}, "
        f"CLEAR_CYCLES_PER_TID = {isa.CLEAR_CYCLES_PER_TID} (reference/isa.py).",
        "",
        "| command | cycles |",
        "| --- | --- |",
        f"| MATMUL | {s} + M * ceil(N / V) * K + {d} |",
        f"| ADD, SUB, MUL, AXPY, RELU, RELU_BACKWARD, CONVERT | {s} + M * ceil(N / V) + {d} |",
        f"| LOAD, STORE | {s} + K + {d} (+ cycles the stream is not ready) |",
        f"| LOAD ended by LOAD_TIMEOUT after A words | {s} + A (+ stalled cycles, LOAD_TIMEOUT of them at the end) |",
        f"| POLICY_UPDATE | {s} + {isa.POLICY_CYCLES_PER_TID} * tensor_ids |",
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


def extract(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"<!-- BEGIN (\w+) -->\n(.*?)<!-- END \1 -->", text, re.S)}


def update(path: Path) -> None:
    text = Path(path).read_text()
    for name, body in sections().items():
        text, n = re.subn(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)",
                          lambda m, body=body: m.group(1) + body + m.group(2), text, flags=re.S)
        if n != 1:
            raise ValueError(f"{path}: section {name} not found exactly once")
    Path(path).write_text(text)


if __name__ == "__main__":
    update(Path(sys.argv[1]))

"""The DLU's AXI4-Lite register map, defined once as Python data.

:class:`hw.axi_lite.AxiLiteSlave` decodes addresses from :func:`register_map`, ``rtl_gen``
writes it into the manifest and the C/Python headers, and :func:`markdown_table` renders it
for ``docs/architecture.md`` (a test compares the two). Nothing else spells an address.

All registers are 32 bits wide at byte addresses that are multiples of 4. Counters wider than
32 bits (database counters with ``counter_bits`` > 32, performance counters) are read as two
words, low word first. Every write writes a whole register: a write whose WSTRB is not
``0b1111`` answers SLVERR and changes nothing. :data:`SLVERR_RULES` lists every case in
which the interface answers SLVERR instead of OKAY; no response is ever held back
indefinitely (the bus never stalls, so CONTROL.soft_reset can always be written).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from reference.config import CoreConfig
from reference.formats import SETTING_BITS
from reference.isa import COMMAND_WORDS, LOAD_TIMEOUT_BITS, LOAD_TIMEOUT_DEFAULT, ErrorCode
from reference.stats import (
    DEFAULT_HEADROOM,
    DEFAULT_RISE,
    DEFAULT_THRESHOLD,
    HEADROOM_BITS,
    HEADROOM_LSB,
    RISE_BITS,
    RISE_LSB,
    THRESHOLD_BITS,
)

#: Value of the ID register's upper 24 bits: ASCII "DLU".
ID_MAGIC = 0x444C55
#: Register-map version, the ID register's low byte. Bump on any change of this file's map.
REGMAP_VERSION = 4
#: Depth of the command FIFO, in commands.
CMD_FIFO_DEPTH = 8
#: Width of the performance counters (saturating), read as two words.
PERF_COUNTER_BITS = 48

#: The RNG_STATE window (one word per stochastic-rounding generator); room for 512 generators
#: below SETTINGS_BASE.
RNG_STATE_BASE = 0x800
SETTINGS_BASE = 0x1000
DATABASE_BASE = 0x10000


#: When the AXI4-Lite interface answers SLVERR (RRESP/BRESP = 2) instead of OKAY.
SLVERR_RULES = (
    "a read or write of an address outside the map (reads return 0)",
    "a write to a read-only register (ID, CONFIG_DIGEST, STATUS, PERF_*, DATABASE); nothing changes",
    "a write whose WSTRB is not 0b1111 (to any register); nothing changes",
    "a SETTINGS write of an illegal code (reference.isa.decode_setting): the entry keeps its contents "
    "and STATUS.error records BAD_SETTING (if no error is pending), as with OKAY before version 3",
    "a THRESHOLD write with a bit set above its fields; THRESHOLD keeps its value",
    "a LOAD_TIMEOUT write of 0; LOAD_TIMEOUT keeps its value",
    f"the last CMD_PUSH word of a command while STATUS.fifo_level = {CMD_FIFO_DEPTH} (FIFO full): the "
    "command is dropped (not queued) and CMD_PUSH expects the first word of a command again",
    "a DATABASE read past the last counter of an entry (data 0)",
)


class Access(enum.Enum):
    """How the host may access a register."""

    RO = "ro"  #: read only
    RW = "rw"  #: read and write
    WO = "wo"  #: write only (reads return 0)


@dataclass(frozen=True)
class Field:
    """A bit field of a register: bits ``[lsb, lsb + width)``."""

    name: str
    lsb: int
    width: int
    doc: str
    reset: int = 0

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.lsb


@dataclass(frozen=True)
class Register:
    """A register, or a window of ``count`` registers ``stride`` bytes apart."""

    name: str
    offset: int
    access: Access
    doc: str
    fields: tuple[Field, ...] = ()
    count: int = 1
    stride: int = 4

    @property
    def end(self) -> int:
        return self.offset + self.count * self.stride

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"register {self.name}: no field {name!r}")


def words_per_counter(cfg: CoreConfig) -> int:
    return -(-cfg.counter_bits // 32)


def database_counters(cfg: CoreConfig) -> int:
    """Counters per database entry: the histogram, then zeros, overflow, underflow, total."""
    return cfg.hist_bins + 4


def database_entry_stride(cfg: CoreConfig) -> int:
    """Bytes between two tensor ids in the database window (a power of two)."""
    words = database_counters(cfg) * words_per_counter(cfg)
    return 4 << (words - 1).bit_length()


PERF_COUNTERS = (
    ("PERF_BUSY", "cycles the sequencer spent executing commands"),
    ("PERF_STALL", "cycles a LOAD or STORE waited for its AXI4-Stream"),
    ("PERF_MACS", "useful multiply-accumulates (reference.isa.macs of every completed command)"),
    ("PERF_VALUES", "values analysed by the statistics block"),
)


def register_map(cfg: CoreConfig) -> tuple[Register, ...]:
    """The register map of a core with configuration ``cfg``, in address order."""
    wpc = words_per_counter(cfg)
    regs = [
        Register("ID", 0x000, Access.RO, "identification", (
            Field("version", 0, 8, "register-map version", REGMAP_VERSION),
            Field("magic", 8, 24, 'ASCII "DLU"', ID_MAGIC),
        )),
        Register("CONFIG_DIGEST", 0x004, Access.RO,
                 "first 8 hex digits of CoreConfig.digest() (must equal the manifest's)"),
        Register("CONTROL", 0x010, Access.RW, "control; bits 0, 1, 3 and 4 are strobes and read as 0; "
                                                  "every write also sets irq_enable from bit 2", (
            Field("clear_error", 0, 1, "write 1: clear STATUS.error"),
            Field("soft_reset", 1, 1, "write 1: reset sequencer, FIFO, settings valid bits, "
                                      "perf counters (not memories)"),
            Field("irq_enable", 2, 1, "drive the irq output while STATUS.irq_pending"),
            Field("irq_ack", 3, 1, "write 1: clear STATUS.irq_pending"),
            Field("clear_perf", 4, 1, "write 1: zero the performance counters"),
        )),
        Register("STATUS", 0x014, Access.RO, "status", (
            Field("busy", 0, 1, "a command is executing"),
            Field("done", 1, 1, "idle and the command FIFO is empty"),
            Field("irq_pending", 2, 1, "a command with the interrupt flag has completed"),
            Field("fifo_level", 8, 8, f"commands waiting in the FIFO (depth {CMD_FIFO_DEPTH})"),
            Field("error", 16, 4, "first ErrorCode since the last clear_error (0: none)"),
        )),
        Register("CMD_PUSH", 0x020, Access.WO,
                 f"command FIFO: write the {COMMAND_WORDS} words of a reference.isa.Command in order; "
                 "the last write answers SLVERR and drops the command while the FIFO is full"),
        Register("SEED", 0x024, Access.RW, "seed register; a write reseeds the stochastic-rounding generators"),
        Register("THRESHOLD", 0x028, Access.RW, "point-position policy (reference.stats.PolicyParams); a write "
                 "with bits above the fields answers SLVERR", (
            Field("threshold", 0, THRESHOLD_BITS, "overflow allowed, units of 2**-16 of the non-zero values",
                  DEFAULT_THRESHOLD),
            Field("headroom", HEADROOM_LSB, HEADROOM_BITS, "bits of headroom below the threshold's point position",
                  DEFAULT_HEADROOM),
            Field("rise", RISE_LSB, RISE_BITS, "largest rise of a point position per POLICY_UPDATE (0: no limit)",
                  DEFAULT_RISE),
        )),
        Register("LOAD_TIMEOUT", 0x02C, Access.RW, "LOAD timeout: a LOAD that waits this many consecutive "
                 "cycles for its next stream word ends with STATUS.error = LOAD_TIMEOUT (reference.isa); "
                 "a write of 0 answers SLVERR", (
                     Field("cycles", 0, LOAD_TIMEOUT_BITS, "stalled cycles, >= 1", LOAD_TIMEOUT_DEFAULT),
                 )),
    ]
    for i, (name, doc) in enumerate(PERF_COUNTERS):
        regs.append(Register(name, 0x040 + 8 * i, Access.RO,
                             f"{doc}; {PERF_COUNTER_BITS} bits, saturating; low word, then high word",
                             count=2, stride=4))
    regs.append(Register("RNG_STATE", RNG_STATE_BASE, Access.RW,
                         "state of stochastic-rounding generator i (reference.rng: the xorshift32 of slot i); "
                         "a write sets it, a written 0 stores 1 (as reference.rng.seed_states), effective "
                         "at the end of the cycle the write is accepted (before BVALID); write only while "
                         "STATUS.done (a write during a command changes that command's random words); "
                         "a read returns the current state; a SEED write sets all of them to "
                         "reference.rng.seed_states(SEED), CONTROL.soft_reset to seed_states(0)", count=cfg.rng_slots))
    regs.append(Register("SETTINGS", SETTINGS_BASE, Access.RW,
                         "settings register, one word per tensor id; an illegal code is not written, "
                         "answers SLVERR and sets STATUS.error = BAD_SETTING; bits 31:12 of a write are ignored", (
                             Field("setting", 0, SETTING_BITS, "reference.formats.TensorSetting.encode()"),
                             Field("valid", 31, 1, "read: the entry holds a legally written setting"),
                         ), count=cfg.tensor_ids))
    regs.append(Register("DATABASE", DATABASE_BASE, Access.RO,
                         f"distribution database: tensor id t, counter c at +t*{database_entry_stride(cfg):#x}"
                         f"+c*{4 * wpc}; c < hist_bins: histogram bin c, then zeros, overflow, underflow, "
                         "total; reads past the last counter answer SLVERR", count=cfg.tensor_ids,
                         stride=database_entry_stride(cfg)))
    regs.sort(key=lambda r: r.offset)
    for a, b in zip(regs, regs[1:], strict=False):
        assert a.end <= b.offset, f"register map: {a.name} overlaps {b.name}"
    return tuple(regs)


def address_bits(cfg: CoreConfig) -> int:
    """Width of the AXI4-Lite address bus covering the whole map."""
    return max(r.end for r in register_map(cfg)).bit_length()


def by_name(cfg: CoreConfig) -> dict[str, Register]:
    return {r.name: r for r in register_map(cfg)}


def error_codes() -> dict[str, int]:
    return {e.name: int(e) for e in ErrorCode}


def as_dict(cfg: CoreConfig) -> list[dict]:
    """The map as JSON-able data (for the manifest)."""
    return [{
        "name": r.name, "offset": r.offset, "access": r.access.value, "doc": r.doc, "count": r.count,
        "stride": r.stride,
        "fields": [{"name": f.name, "lsb": f.lsb, "width": f.width, "reset": f.reset, "doc": f.doc}
                   for f in r.fields],
    } for r in register_map(cfg)]


def markdown_table(cfg: CoreConfig) -> str:
    """The register map as a Markdown table (pasted into docs/architecture.md; a test compares)."""
    lines = ["| offset | name | access | fields | description |", "| --- | --- | --- | --- | --- |"]
    for r in register_map(cfg):
        off = f"`{r.offset:#06x}`" if r.count == 1 else f"`{r.offset:#06x}` + {r.stride:#x} x i, i < {r.count}"
        fields = "<br>".join(f"[{f.lsb + f.width - 1}:{f.lsb}] {f.name}" if f.width > 1 else f"[{f.lsb}] {f.name}"
                             for f in r.fields)
        lines.append(f"| {off} | {r.name} | {r.access.value} | {fields} | {r.doc} |")
    return "\n".join(lines) + "\n"

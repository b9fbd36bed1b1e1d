"""Energy and traffic model: picojoules per operation by width, per scratchpad and bus byte.

The energy of a command is ``adds * add[W] + muls * mul[W] + values * stats_value +
(spad words read + written) * word_bytes * spad_byte + bus words * word_bytes * bus_byte``,
with the counts of :class:`sim.core.SimCommand`. The *fp32 counterpart* of a trace is the same
work scheduled at 32 bits (:func:`sim.core.schedule` with ``Width.W32``: a datapath of the same
lanes holding one fp32 value per lane) and charged with the fp32 add and multiply energies and
no statistics block.

Defaults: 45 nm, 0.9 V figures from M. Horowitz, "Computing's energy problem (and what we can
do about it)", ISSCC 2014: 8-bit integer add 0.03 pJ and multiply 0.2 pJ, 32-bit integer add
0.1 pJ and multiply 3.1 pJ, fp32 add 0.9 pJ and multiply 3.7 pJ; a 64-bit read of a 32 KB SRAM
20 pJ (2.5 pJ/byte: a default bank is 1024 words of 32 bytes, 32 KB) and of DRAM 1.3-2.6 nJ
(the low end, 162.5 pJ/byte, for the host bus). 16-bit integers are not in that table: add is
interpolated linearly in width (0.03 + 0.07 * 8/24 ~ 0.053 pJ), multiply quadratically (0.2 * 4
= 0.8 pJ). The statistics block's work per value (leading-bit detection and a counter
increment) is not in the table either: it is estimated as one 32-bit add (0.1 pJ).

A TOML file overrides any subset::

    [int8]
    add = 0.03
    mul = 0.2
    [memory]
    spad_byte = 2.5
    bus_byte = 162.5

Tables: ``int8``, ``int16``, ``int32``, ``fp32`` (fields ``add``, ``mul``), ``stats``
(``value``), ``memory`` (``spad_byte``, ``bus_byte``); every value in pJ, finite and >= 0.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from reference.formats import Width


@dataclass(frozen=True)
class OpEnergy:
    """Energy of one addition and one multiplication at a width, in pJ."""

    add: float
    mul: float


@dataclass(frozen=True)
class EnergyTable:
    """Energy per operation and per byte moved, in pJ (see the module docstring for sources)."""

    int8: OpEnergy = OpEnergy(0.03, 0.2)
    int16: OpEnergy = OpEnergy(0.03 + 0.07 * 8 / 24, 0.8)
    int32: OpEnergy = OpEnergy(0.1, 3.1)
    fp32: OpEnergy = OpEnergy(0.9, 3.7)
    stats_value: float = 0.1
    spad_byte: float = 20.0 / 8
    bus_byte: float = 1300.0 / 8

    def __post_init__(self) -> None:
        for name, v in self._flat():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"energy table: {name}={v!r} must be a finite number >= 0 (pJ)")

    def _flat(self) -> list[tuple[str, object]]:
        out: list[tuple[str, object]] = []
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, OpEnergy):
                out += [(f"{f.name}.add", v.add), (f"{f.name}.mul", v.mul)]
            else:
                out.append((f.name, v))
        return out

    def integer(self, width: Width) -> OpEnergy:
        return {Width.W8: self.int8, Width.W16: self.int16, Width.W32: self.int32}[width]

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self._flat()}  # type: ignore[arg-type]


_TABLES = {"int8", "int16", "int32", "fp32"}


def parse_energy_table(data: dict, where: str = "energy table") -> EnergyTable:
    """An :class:`EnergyTable` from a parsed TOML document; missing entries keep the defaults."""
    base = EnergyTable()
    kw: dict[str, object] = {}
    known = _TABLES | {"stats", "memory"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown table(s) {sorted(unknown)}; known: {sorted(known)}")

    def num(table: str, key: str, v: object) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{where}: [{table}] {key}={v!r} must be a finite number >= 0 (pJ)")
        return float(v)

    def fields(table: str, allowed: set[str]) -> dict:
        t = data.get(table, {})
        if not isinstance(t, dict):
            raise ValueError(f"{where}: [{table}] must be a table, got {t!r}")
        bad = set(t) - allowed
        if bad:
            raise ValueError(f"{where}: [{table}]: unknown field(s) {sorted(bad)}; known: {sorted(allowed)}")
        return {k: num(table, k, v) for k, v in t.items()}

    for name in _TABLES:
        t = fields(name, {"add", "mul"})
        if t:
            kw[name] = dataclasses.replace(getattr(base, name), **t)
    st = fields("stats", {"value"})
    if "value" in st:
        kw["stats_value"] = st["value"]
    mem = fields("memory", {"spad_byte", "bus_byte"})
    kw.update(mem)
    return dataclasses.replace(base, **kw)


def load_energy_table(path: str | Path) -> EnergyTable:
    """Read a TOML energy table (see the module docstring); errors name the file and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"energy table: {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"energy table: {path}: malformed TOML: {exc}") from exc
    return parse_energy_table(data, f"energy table {path}")


@dataclass(frozen=True)
class Energy:
    """Energy split by cause, in pJ."""

    compute: float = 0.0
    stats: float = 0.0
    spad: float = 0.0
    bus: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.stats + self.spad + self.bus

    def __add__(self, other: Energy) -> Energy:
        return Energy(self.compute + other.compute, self.stats + other.stats, self.spad + other.spad,
                      self.bus + other.bus)

    def to_dict(self) -> dict[str, float]:
        return {"compute": self.compute, "stats": self.stats, "spad": self.spad, "bus": self.bus,
                "total": self.total}


def command_energy(cmd, table: EnergyTable, word_bytes: int, fp32: bool = False) -> Energy:
    """Energy of one :class:`sim.core.SimCommand`; ``fp32`` charges fp32 arithmetic and no statistics."""
    compute = stats = 0.0
    if cmd.adds or cmd.muls:
        e = table.fp32 if fp32 else table.integer(cmd.width)
        compute = cmd.adds * e.add + cmd.muls * e.mul
    if not fp32:
        stats = cmd.values * table.stats_value
    spad = (cmd.spad_read_words + cmd.spad_write_words) * word_bytes * table.spad_byte
    bus = cmd.bus_words * word_bytes * table.bus_byte
    return Energy(compute, stats, spad, bus)


def total_energy(cmds: Iterable, table: EnergyTable, word_bytes: int, fp32: bool = False) -> Energy:
    out = Energy()
    for c in cmds:
        out = out + command_energy(c, table, word_bytes, fp32)
    return out

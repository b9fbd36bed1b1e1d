"""Static core parameters: one object, one netlist.

These are fixed when the Verilog is generated (lanes, memory sizes, histogram shape).
Runtime settings (width, point position, rounding, seeds, policy threshold) live in
registers and are *not* here. ``hw/`` builds its shapes from this object, ``sim/`` its
timing, and ``rtl_gen`` writes it into the manifest beside the Verilog.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .formats import Width

#: Upper bounds of the fields: what the generator and the register map (hw/regmap.py) can build in
#: reasonable memory. ``dlu gen`` of 2**24 scratchpad bits (spad_words=16384, 4 banks of 256-bit
#: words) peaks at 0.84 GB of memory and takes 50 s; the RNG_STATE window of the register map
#: holds 512 generators (lanes * 32 / narrowest width); tensor ids are 10-bit command fields.
MAX_LANES = 128
MAX_RNG_SLOTS = 512
MAX_SPAD_WORDS = 1 << 16
MAX_SPAD_BITS = 1 << 24


class ConfigTypeError(TypeError, ValueError):
    """A config field of the wrong type (a ``ValueError`` too, so commands report it as bad input)."""


@dataclass(frozen=True)
class CoreConfig:
    """Parameters of one DLU core.

    Parameters
    ----------
    lanes
        Number of 32-bit SIMD lanes. Each lane performs one 32x32, two 16x16 or four 8x8
        multiply-accumulates per cycle, so a beat carries ``lanes * 32 / W`` values.
    hist_bins
        Bins of each tensor's most-significant-bit histogram.
    hist_min_exp
        Exponent of the lowest bin: bin ``i`` counts values in ``[2**e, 2**(e+1))`` (by
        magnitude of the leading non-sign bit) with ``e = hist_min_exp + i``; exponents
        outside the range are clamped into the end bins.
    tensor_ids
        Entries of the settings register and of the distribution database.
    spad_words
        Scratchpad depth per bank, in words of ``lanes * 32`` bits.
    spad_banks
        Scratchpad banks (>= 3: two operands and a result can be accessed in one cycle).
    counter_bits
        Width of every statistics and performance counter (saturating).
    widths
        Data widths (in bits, from 8, 16, 32) the datapath supports; the default supports all
        three. A core without a width has no hardware for it (multipliers, accumulator bits,
        conversion and statistics slots), and a settings write or a command that would use it
        is illegal (:func:`reference.isa.check_setting`). Normalized to an ascending tuple.
    acc_beats
        Depth of the accumulator memory, in output beats: the full-width partial sums a MATMUL
        that starts or continues a sum across commands keeps on chip (:class:`reference.isa.Accumulate`).
        An accumulating MATMUL may produce at most this many output beats (``M * ceil(N / V)``).
    """

    lanes: int = 8
    hist_bins: int = 64
    hist_min_exp: int = -48
    tensor_ids: int = 64
    spad_words: int = 1024
    spad_banks: int = 4
    counter_bits: int = 32
    widths: tuple[int, ...] = tuple(w.bits for w in Width)
    acc_beats: int = 64

    def __post_init__(self) -> None:
        def need(cond: bool, field: str, why: str) -> None:
            if not cond:
                raise ValueError(f"config: {field}={getattr(self, field)!r}: {why}")

        object.__setattr__(self, "widths", _check_widths(self.widths))
        for f in dataclasses.fields(self):
            if f.name == "widths":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigTypeError(f"config: {f.name}={v!r}: must be an integer")
        need(1 <= self.lanes <= MAX_LANES and self.lanes & (self.lanes - 1) == 0, "lanes",
             f"must be a power of two in [1, {MAX_LANES}]")
        need(4 <= self.hist_bins <= 256, "hist_bins", "must be in [4, 256]")
        need(-128 <= self.hist_min_exp <= 64, "hist_min_exp", "must be in [-128, 64]")
        need(1 <= self.tensor_ids <= 1024, "tensor_ids", "must be in [1, 1024]")
        need(16 <= self.spad_words <= MAX_SPAD_WORDS and self.spad_words & (self.spad_words - 1) == 0, "spad_words",
             f"must be a power of two in [16, {MAX_SPAD_WORDS}]")
        need(3 <= self.spad_banks <= 16, "spad_banks", "must be in [3, 16]")
        need(16 <= self.counter_bits <= 48, "counter_bits", "must be in [16, 48]")
        need(self.rng_slots <= MAX_RNG_SLOTS, "lanes", f"with {self.narrowest.bits}-bit data needs "
             f"{self.rng_slots} stochastic-rounding generators; the register map holds {MAX_RNG_SLOTS}")
        bits = self.spad_banks * self.spad_words * self.word_bits
        need(bits <= MAX_SPAD_BITS, "spad_words", f"with spad_banks={self.spad_banks} and lanes={self.lanes} "
             f"makes a {bits}-bit scratchpad; at most {MAX_SPAD_BITS} bits (2 MiB) can be generated")
        need(1 <= self.acc_beats <= 1 << 16, "acc_beats", "must be in [1, 65536]")

    # Derived quantities: computed here once, never retyped elsewhere.
    @property
    def supported_widths(self) -> tuple[Width, ...]:
        """The supported widths as :class:`Width` members, narrowest first."""
        return tuple(Width.from_bits(b) for b in self.widths)

    def supports(self, width: Width) -> bool:
        return Width(width).bits in self.widths

    @property
    def narrowest(self) -> Width:
        return self.supported_widths[0]

    @property
    def widest(self) -> Width:
        return self.supported_widths[-1]

    def values_per_beat(self, width: Width) -> int:
        """Values of ``width`` in one scratchpad word (the word geometry, defined for every width)."""
        return self.lanes * width.lanes_per_word

    @property
    def rng_slots(self) -> int:
        """Slots of a beat and stochastic-rounding generators: the values per beat at the narrowest width."""
        return self.values_per_beat(self.narrowest)

    @property
    def word_bits(self) -> int:
        return 32 * self.lanes

    @functools.cached_property
    def counter_max(self) -> int:
        """Largest value of a statistics counter (read once per command: cached on the frozen instance)."""
        return (1 << self.counter_bits) - 1

    def peak_macs_per_cycle(self, width: Width) -> int:
        """Multiply-accumulates per cycle at ``width``; ValueError if the core does not support it."""
        if not self.supports(width):
            raise ValueError(f"config: widths={list(self.widths)}: {Width(width).bits}-bit data is not supported")
        return self.values_per_beat(width)

    def to_dict(self) -> dict[str, int | list[int]]:
        """The fields as JSON/TOML values (``widths`` as a list)."""
        return dataclasses.asdict(self) | {"widths": list(self.widths)}

    def digest(self) -> str:
        """Hash of the parameters, written into the manifest and traces.

        A core of every width hashes without ``widths``, and one of the default ``acc_beats``
        without ``acc_beats``, as before those fields existed, so traces and manifests written
        then still match their config.
        """
        fields = self.to_dict()
        if self.widths == tuple(w.bits for w in Width):
            del fields["widths"]
        if self.acc_beats == _DEFAULT_ACC_BEATS:
            del fields["acc_beats"]
        blob = json.dumps(fields, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


_DEFAULT_ACC_BEATS = 64


def _check_widths(value: object) -> tuple[int, ...]:
    """``widths`` as an ascending tuple of bits; TypeError/ValueError naming the bad value."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigTypeError(f"config: widths={value!r}: must be a list of widths in bits (8, 16, 32)")
    for b in value:
        if isinstance(b, bool) or not isinstance(b, int):
            raise ConfigTypeError(f"config: widths={value!r}: {b!r} is not an integer number of bits")
        if b not in {w.bits for w in Width}:
            raise ValueError(f"config: widths={value!r}: {b} is not one of 8, 16, 32")
    if not value:
        raise ValueError(f"config: widths={value!r}: must name at least one width")
    if len(set(value)) != len(value):
        raise ValueError(f"config: widths={value!r}: names a width twice")
    return tuple(sorted(value))


PRESETS: dict[str, CoreConfig] = {
    # Small enough for Amaranth's Python simulator and quick cocotb builds.
    "tiny": CoreConfig(lanes=2, hist_bins=32, hist_min_exp=-24, tensor_ids=8, spad_words=64, spad_banks=4),
    "default": CoreConfig(),
}


def load_config(spec: str | Path) -> CoreConfig:
    """A preset name, or a TOML file whose ``[core]`` table (or top level) gives the fields."""
    s = str(spec)
    if s in PRESETS:
        return PRESETS[s]
    path = Path(s)
    if not path.exists():
        raise ValueError(f"config: {s!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    if not path.is_file():
        raise ValueError(f"config: {path} is a folder, not a TOML file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"config: {path}: malformed TOML: {exc}") from exc
    if "core" in data:
        extra = sorted(set(data) - {"core"})
        if extra:
            raise ValueError(f"config: {path}: unknown table(s) or key(s) {extra} beside [core]")
    table = data.get("core", data)
    if not isinstance(table, dict):
        raise ValueError(f"config: {path}: [core] must be a table, got {table!r}")
    table = dict(table)
    preset = table.pop("preset", "default")
    if not isinstance(preset, str):
        raise ConfigTypeError(f"config: {path}: preset={preset!r}: must be a preset name, one of {sorted(PRESETS)}")
    if preset not in PRESETS:
        raise ValueError(f"config: {path}: preset {preset!r} is not one of {sorted(PRESETS)}")
    base = PRESETS[preset]
    known = {f.name for f in dataclasses.fields(CoreConfig)}
    unknown = set(table) - known
    if unknown:
        raise ValueError(f"config: {path}: unknown field(s) {sorted(unknown)}; known: {sorted(known)}")
    try:
        return dataclasses.replace(base, **table)
    except ValueError as exc:
        raise type(exc)(f"{exc} (in {path})") from None

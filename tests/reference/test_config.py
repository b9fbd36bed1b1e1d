"""Static core parameters: validation, presets, TOML loading and derived quantities."""

from __future__ import annotations

import dataclasses

import pytest

from reference.config import PRESETS, CoreConfig, load_config
from reference.formats import Width

# (field, lowest legal, highest legal or None, illegal values)
BOUNDS = [
    ("lanes", 1, None, [0, 3, 6, -2]),
    ("hist_bins", 4, 256, [3, 257]),
    ("hist_min_exp", -128, 64, [-129, 65]),
    ("tensor_ids", 1, 1024, [0, 1025]),
    ("spad_words", 16, None, [8, 24, 0]),
    ("spad_banks", 3, 16, [2, 17]),
    ("counter_bits", 16, 48, [15, 49]),
]


@pytest.mark.parametrize(("field", "lo", "hi", "bad"), BOUNDS, ids=[b[0] for b in BOUNDS])
def test_field_bounds(field, lo, hi, bad):
    assert getattr(CoreConfig(**{field: lo}), field) == lo
    if hi is not None:
        assert getattr(CoreConfig(**{field: hi}), field) == hi
    for v in bad:
        with pytest.raises(ValueError, match=rf"config: {field}={v}: "):
            CoreConfig(**{field: v})


@pytest.mark.parametrize("value", ["8", 8.0, True, None])
def test_non_integer_field(value):
    with pytest.raises(TypeError, match=rf"config: lanes={value!r}: must be an integer"):
        CoreConfig(lanes=value)


def test_derived_quantities():
    c = CoreConfig(lanes=4, counter_bits=20)
    assert [c.values_per_beat(w) for w in Width] == [16, 8, 4]
    assert c.rng_slots == 16
    assert c.word_bits == 128
    assert c.counter_max == 2**20 - 1
    assert c.peak_macs_per_cycle(Width.W8) == 16
    assert c.to_dict()["lanes"] == 4


def test_digest_is_stable_and_distinguishes():
    a, b = CoreConfig(), CoreConfig(lanes=16)
    assert a.digest() == CoreConfig().digest() and len(a.digest()) == 16
    assert a.digest() != b.digest()
    assert PRESETS["tiny"].digest() != PRESETS["default"].digest()


def test_presets():
    assert load_config("default") == CoreConfig()
    t = load_config("tiny")
    assert t is PRESETS["tiny"]
    assert (t.lanes, t.hist_bins, t.hist_min_exp, t.tensor_ids, t.spad_words) == (2, 32, -24, 8, 64)


def test_toml_core_table_over_a_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[core]\npreset = "tiny"\nlanes = 4\ncounter_bits = 24\n')
    c = load_config(p)
    assert c == dataclasses.replace(PRESETS["tiny"], lanes=4, counter_bits=24)
    assert load_config(str(p)) == c


def test_toml_top_level_defaults_to_default_preset(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("hist_bins = 16\n")
    assert load_config(p) == CoreConfig(hist_bins=16)


@pytest.mark.parametrize(
    ("text", "exc", "pattern"),
    [
        ("[core]\nlanse = 4\n", ValueError, r"unknown field\(s\) \['lanse'\]"),
        ("[core]\nlanes = 3\n", ValueError, r"config: lanes=3: must be a power of two"),
        ('[core]\nlanes = "4"\n', TypeError, r"config: lanes='4': must be an integer"),
        ("[core]\nhist_bins = 2.5\n", TypeError, r"config: hist_bins=2.5: must be an integer"),
        ('[core]\npreset = "huge"\n', ValueError, r"preset 'huge' is not one of \['default', 'tiny'\]"),
        ("[core\nlanes = 4\n", ValueError, r"malformed TOML"),
        ("core = 5\n", ValueError, r"\[core\] must be a table"),
    ],
)
def test_bad_toml(tmp_path, text, exc, pattern):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(exc, match=pattern):
        load_config(p)


def test_missing_file_or_preset(tmp_path):
    with pytest.raises(ValueError, match=r"config: 'nope' is neither a preset \(tiny, default\) nor a file"):
        load_config("nope")
    with pytest.raises(ValueError, match="is neither a preset"):
        load_config(tmp_path / "absent.toml")


def test_presets_are_not_mutated_by_loading(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[core]\npreset = "tiny"\nlanes = 8\n')
    load_config(p)
    assert PRESETS["tiny"].lanes == 2


def test_widths_default_to_all_and_normalize():
    assert CoreConfig().widths == (8, 16, 32)
    assert CoreConfig(widths=[32, 8]).widths == (8, 32)
    assert CoreConfig(widths={16}).supported_widths == (Width.W16,)
    c = CoreConfig(lanes=4, widths=[16, 32])
    assert (c.narrowest, c.widest) == (Width.W16, Width.W32)
    assert c.supports(Width.W32) and not c.supports(Width.W8)
    assert c.rng_slots == c.values_per_beat(Width.W16) == 8  # slots and generators of the narrowest width
    assert CoreConfig(lanes=4, widths=[32]).rng_slots == 4
    assert c.peak_macs_per_cycle(Width.W16) == 8
    with pytest.raises(ValueError, match=r"config: widths=\[16, 32\]: 8-bit data is not supported"):
        c.peak_macs_per_cycle(Width.W8)
    assert c.to_dict()["widths"] == [16, 32]


@pytest.mark.parametrize(("value", "exc", "pattern"), [
    ([], ValueError, r"config: widths=\[\]: must name at least one width"),
    ([8, 8], ValueError, r"config: widths=\[8, 8\]: names a width twice"),
    ([8, 12], ValueError, r"config: widths=\[8, 12\]: 12 is not one of 8, 16, 32"),
    ([8.0], TypeError, r"config: widths=\[8.0\]: 8.0 is not an integer number of bits"),
    ([True], TypeError, r"config: widths=\[True\]: True is not an integer"),
    ("8", TypeError, r"config: widths='8': must be a list of widths in bits"),
    (8, TypeError, r"config: widths=8: must be a list of widths in bits"),
])
def test_bad_widths(value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        CoreConfig(widths=value)


def test_widths_are_in_the_digest_and_toml(tmp_path):
    assert len({CoreConfig(widths=ws).digest() for ws in ([8], [16], [32], [8, 16, 32])}) == 4
    p = tmp_path / "w.toml"
    p.write_text('[core]\npreset = "tiny"\nwidths = [16]\n')
    assert load_config(p) == dataclasses.replace(PRESETS["tiny"], widths=(16,))
    p.write_text("[core]\nwidths = [64]\n")
    with pytest.raises(ValueError, match=r"config: widths=\[64\]: 64 is not one of 8, 16, 32"):
        load_config(p)

"""Data: the fixed digits split, and the IDX loader on tiny files (valid and malformed)."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from reference.data import (
    DIGITS_TEST_SIZE,
    IDX_IMAGES_MAGIC,
    load_dataset,
    load_digits_split,
    load_mnist_dir,
    parse_idx,
    write_idx,
)


def test_digits_split_is_fixed_stratified_and_scaled():
    a, b = load_digits_split(), load_digits_split()
    assert a.x_train.shape == (1797 - DIGITS_TEST_SIZE, 64) and a.x_test.shape == (450, 64)
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert a.x_train.min() == 0.0 and a.x_train.max() == 1.0
    counts = np.bincount(a.y_test, minlength=10)
    share = np.bincount(np.concatenate([a.y_train, a.y_test]), minlength=10) / 1797
    assert np.all(np.abs(counts - DIGITS_TEST_SIZE * share) <= 1)  # stratified
    # the split is a partition of the 1797 images (no image in both halves)
    tr = {r.tobytes() for r in a.x_train}
    assert sum(r.tobytes() in tr for r in a.x_test) <= 5  # the data set itself has a few duplicates


def _write_mnist(d, n_train=5, n_test=3, h=4, w=4, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    for name, a in arrays.items():
        write_idx(d / name, a)
        if gz:
            (d / (name + ".gz")).write_bytes(gzip.compress((d / name).read_bytes()))
            (d / name).unlink()
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    arrays = _write_mnist(tmp_path, gz=gz)
    ds = load_mnist_dir(tmp_path)
    assert ds.image_hwc == (4, 4, 1)
    assert np.array_equal(ds.x_train, arrays["train-images-idx3-ubyte"].reshape(5, 16) / 255.0)
    assert np.array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert load_dataset(f"mnist:{tmp_path}").x_test.shape == (3, 16)


def _header(magic, dims):
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize("blob, message", [
    (b"\x00\x00", "too short for a header"),
    (_header(0x00000801, [2]) + b"\x00\x00", "magic number 0x00000801, expected 0x00000803"),
    (_header(IDX_IMAGES_MAGIC, [2, 2]), "shorter than its 16-byte header"),
    (_header(IDX_IMAGES_MAGIC, [2, 2, 2]) + bytes(7), "need 24 bytes, file has 23"),
    (_header(IDX_IMAGES_MAGIC, [2, 2, 2]) + bytes(9), "need 24 bytes, file has 25"),
    (_header(IDX_IMAGES_MAGIC, [0, 2, 2]), "contain a zero"),
])
def test_malformed_idx_is_rejected_with_a_clear_error(blob, message):
    with pytest.raises(ValueError, match=message):
        parse_idx(blob, IDX_IMAGES_MAGIC, "x")


def test_mismatched_counts_labels_and_sizes(tmp_path):
    _write_mnist(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(ValueError, match="5 images but 4 labels"):
        load_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(5, 12))
    with pytest.raises(ValueError, match="label 12 is not a digit"):
        load_mnist_dir(tmp_path)
    _write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match=r"train images are \(4, 4\) but test images are \(5, 5\)"):
        load_mnist_dir(tmp_path)


def test_missing_files_and_bad_specs(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist_dir(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist_dir(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a valid gzip"):
        load_mnist_dir(tmp_path)
    with pytest.raises(ValueError, match="'cifar' is not"):
        load_dataset("cifar")
    with pytest.raises(ValueError, match="needs a directory"):
        load_dataset("mnist:")

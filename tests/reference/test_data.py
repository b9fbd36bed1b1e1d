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
    with pytest.raises(ValueError, match="needs a path"):
        load_dataset("mnist:")


def _write_cifar(d, n_per_batch=(4, 3), n_test=5, seed=0):
    import pickle

    rng = np.random.default_rng(seed)
    out = {}
    names = [f"data_batch_{i + 1}" for i in range(len(n_per_batch))] + ["test_batch"]
    for name, n in zip(names, [*n_per_batch, n_test], strict=True):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, n).tolist()
        (d / name).write_bytes(pickle.dumps({b"batch_label": b"x", b"data": x, b"labels": y}, protocol=2))
        out[name] = (x, y)
    return out


def test_cifar10_python_batches_load_in_hwc_order(tmp_path):
    arrays = _write_cifar(tmp_path, seed=11)
    ds = load_dataset(f"cifar10:{tmp_path}")
    assert ds.image_hwc == (32, 32, 3) and ds.x_train.shape == (7, 3072) and ds.x_test.shape == (5, 3072)
    x1, y1 = arrays["data_batch_2"]
    # image 0 of batch 2 is training image 4; pixel (row 5, column 7) channel G is plane 1 at 5*32+7
    assert ds.x_train[4, (5 * 32 + 7) * 3 + 1] == x1[0, 1024 + 5 * 32 + 7] / 255.0
    assert ds.y_train.tolist()[4:] == y1 and ds.y_test.tolist() == arrays["test_batch"][1]


def test_cifar10_refuses_other_pickles_and_bad_batches(tmp_path):
    import pickle

    _write_cifar(tmp_path, seed=12)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(ValueError("x")))
    with pytest.raises(ValueError, match="refuses to unpickle builtins.ValueError"):
        load_dataset(f"cifar10:{tmp_path}")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}))
    with pytest.raises(ValueError, match=r"expected uint8 \[N, 3072\]"):
        load_dataset(f"cifar10:{tmp_path}")
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a CIFAR-10 python batch"):
        load_dataset(f"cifar10:{tmp_path}")
    (tmp_path / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_dataset(f"cifar10:{tmp_path}")


def test_npz_loads_gray_and_channels_last_and_checks_its_arrays(tmp_path):
    rng = np.random.default_rng(13)
    f = tmp_path / "d.npz"
    xtr = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    np.savez(f, x_train=xtr, y_train=np.array([0, 1, 2, 0, 1, 2]), x_test=xtr[:2], y_test=np.array([2, 1]))
    ds = load_dataset(f"npz:{f}")
    assert ds.image_hwc == (5, 4, 1) and ds.classes == 3
    assert np.array_equal(ds.x_train, xtr.reshape(6, 20) / 255.0)
    xc = rng.standard_normal((3, 2, 2, 3)).astype(np.float32)
    np.savez(f, x_train=xc, y_train=np.array([0, 1, 4]), x_test=xc, y_test=np.array([0, 1, 1]))
    ds = load_dataset(f"npz:{f}")
    assert ds.image_hwc == (2, 2, 3) and ds.classes == 5 and np.array_equal(ds.x_test, xc.reshape(3, 12))
    bad = [({"y_test": None}, "missing array"), ({"x_test": xtr[:2, :4]}, "x_test samples are"),
           ({"y_train": np.array([0, 1])}, "expected 6 integer labels"),
           ({"x_train": np.full((6, 5, 4), np.nan)}, "NaN"), ({"y_test": np.array([-1, 0])}, "negative label")]
    for change, msg in bad:
        arrays = {"x_train": xtr, "y_train": np.arange(6) % 3, "x_test": xtr[:2], "y_test": np.array([2, 1])}
        arrays.update(change)
        np.savez(f, **{k: v for k, v in arrays.items() if v is not None})
        with pytest.raises(ValueError, match=msg):
            load_dataset(f"npz:{f}")
    f.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{f}")


def test_digits28_is_digits_upsampled_and_shifted_reproducibly():
    from scipy.ndimage import zoom

    from reference.data import DIGITS28_COPIES, load_digits28

    a, b, d = load_digits28(), load_digits28(), load_digits_split()
    assert a.image_hwc == (28, 28, 1) and len(a.x_train) == DIGITS28_COPIES * len(d.x_train)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, d.y_test)
    big = np.clip(zoom(d.x_test[0].reshape(8, 8), 3, order=1), 0, 1)
    img = a.x_test[0].reshape(28, 28)
    hits = [(dy, dx) for dy in range(5) for dx in range(5) if np.array_equal(img[dy:dy + 24, dx:dx + 24], big)]
    assert hits and img.sum() == pytest.approx(big.sum())  # the upsampled digit, shifted, nothing else
    offsets = {tuple(np.argwhere(a.x_train[i].reshape(28, 28) > 0).min(axis=0)) for i in range(30)}
    assert len(offsets) > 5  # the shifts differ between images


def test_data_shape_is_checked_against_the_network(tmp_path):
    from reference.data import Dataset
    from reference.train import Precision, TrainConfig, train

    rng = np.random.default_rng(14)
    d = Dataset("tiny", rng.random((8, 3 * 6 * 6)), rng.integers(0, 10, 8), rng.random((2, 108)),
                rng.integers(0, 10, 2), (6, 6, 3))
    with pytest.raises(ValueError, match=r"net 'lenet5': input \[1, 32, 32\] does not match.*\[3, 6, 6\]|"
                                         r"larger than the padded input"):
        train(TrainConfig(model="lenet5", precision=Precision.FP32, epochs=1, batch=4), d)
    f = tmp_path / "n.toml"
    f.write_text('input = [1, 28, 28]\n[[layers]]\ntype = "linear"\nout_features = 10\n'
                 '[[layers]]\ntype = "softmax_ce"\n')
    with pytest.raises(ValueError, match=r"net 'n': input \[1, 28, 28\] does not match the data's samples \[3, 6, 6\]"):
        train(TrainConfig(model=str(f), precision=Precision.FP32, epochs=1, batch=4), d)


def test_synthetic_data_is_seeded_and_its_spec_checked():
    a, b = load_dataset("synthetic:3x5x4:7:8"), load_dataset("synthetic:3x5x4:7:8")
    assert a.image_hwc == (5, 4, 3) and a.classes == 7 and a.x_train.shape == (8, 60) and a.x_test.shape == (2, 60)
    assert np.array_equal(a.x_train, b.x_train) and a.y_train.max() < 7
    for bad in ("synthetic:3x5:7:8", "synthetic:3x5x4:0:8", "synthetic:3x5x4:7", "synthetic:3x5x4:7:8:9"):
        with pytest.raises(ValueError, match="expected synthetic:CxHxW:CLASSES:N"):
            load_dataset(bad)


def test_signals_set_is_seeded_balanced_and_in_range():
    from reference.data import SIGNALS_TEST, SIGNALS_TRAIN, load_dataset, make_signals

    a, b = load_dataset("signals"), make_signals()
    assert a.name == "signals" and a.image_hwc == (8, 8, 1)
    assert a.x_train.shape == (SIGNALS_TRAIN, 64) and a.x_test.shape == (SIGNALS_TEST, 64)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert np.bincount(a.y_train).tolist() == [SIGNALS_TRAIN // 10] * 10
    assert a.x_train.min() >= 0 and a.x_train.max() <= 1
    c = load_dataset("signals:7")
    assert c.name == "signals:7" and not np.array_equal(a.x_train, c.x_train)


@pytest.mark.parametrize("spec, msg", [("signals:x", "seed must be an integer"), ("signals:-1", "seed=-1")])
def test_signals_bad_spec(spec, msg):
    from reference.data import load_dataset

    with pytest.raises(ValueError, match=msg):
        load_dataset(spec)

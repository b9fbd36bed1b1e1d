"""Training data: scikit-learn's bundled 8x8 digits (default) and local MNIST IDX files.

Nothing is downloaded. Images are returned as float64 ``[N, H*W*C]`` in [0, 1], labels as
int64 ``[N]``.

``digits``: the 1797 images of :func:`sklearn.datasets.load_digits` split once, stratified,
into 1347 training and :data:`DIGITS_TEST_SIZE` = 450 test images with the fixed
:data:`DIGITS_SPLIT_SEED`; the split never depends on a training seed.

``mnist:DIR``: ``DIR`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_SEED = 20170401

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split. Images are float64 ``[N, H*W*C]`` in [0, 1]; labels int64."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_hwc: tuple[int, int, int]
    classes: int = 10


def load_digits_split() -> Dataset:
    """The digits data set with its fixed stratified split (1347 train / 450 test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.asarray(d.data, dtype=np.float64) / 16.0
    y = np.asarray(d.target, dtype=np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SPLIT_SEED,
                                          stratify=y)
    return Dataset("digits", xtr, ytr, xte, yte, (8, 8, 1))


def _open(path: Path) -> bytes:
    if path.is_dir():
        raise ValueError(f"idx: {path} is a folder, not an IDX file")
    if path.exists():
        return path.read_bytes()
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        try:
            return gzip.decompress(gz.read_bytes())
        except (OSError, EOFError) as exc:
            raise ValueError(f"idx: {gz}: not a valid gzip file: {exc}") from exc
    raise FileNotFoundError(f"idx: neither {path} nor {gz} exists")


def parse_idx(blob: bytes, expect_magic: int, name: str) -> np.ndarray:
    """Parse an IDX file of unsigned bytes; checks magic, dimensions and size."""
    if len(blob) < 4:
        raise ValueError(f"idx: {name}: file is {len(blob)} bytes, too short for a header")
    magic = int.from_bytes(blob[:4], "big")
    if magic != expect_magic:
        raise ValueError(f"idx: {name}: magic number 0x{magic:08x}, expected 0x{expect_magic:08x}")
    ndim = magic & 0xFF
    hdr = 4 + 4 * ndim
    if len(blob) < hdr:
        raise ValueError(f"idx: {name}: file is {len(blob)} bytes, shorter than its {hdr}-byte header")
    dims = tuple(int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if any(d == 0 for d in dims):
        raise ValueError(f"idx: {name}: dimensions {dims} contain a zero")
    need = hdr + math.prod(dims)  # Python ints: four 32-bit dimensions do not wrap
    if len(blob) != need:
        raise ValueError(f"idx: {name}: dimensions {dims} need {need} bytes, file has {len(blob)}")
    return np.frombuffer(blob, dtype=np.uint8, offset=hdr).reshape(dims)


def _load_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    img_name, lab_name = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    imgs = parse_idx(_open(directory / img_name), IDX_IMAGES_MAGIC, img_name)
    labs = parse_idx(_open(directory / lab_name), IDX_LABELS_MAGIC, lab_name)
    if imgs.shape[0] != labs.shape[0]:
        raise ValueError(f"idx: {prefix}: {imgs.shape[0]} images but {labs.shape[0]} labels")
    if labs.size and labs.max() > 9:
        raise ValueError(f"idx: {lab_name}: label {int(labs.max())} is not a digit 0-9")
    n, h, w = imgs.shape
    return imgs.reshape(n, h * w).astype(np.float64) / 255.0, labs.astype(np.int64), (h, w, 1)


def load_mnist_dir(directory: str | Path) -> Dataset:
    """MNIST (or any IDX data set with the MNIST file names) from a local directory."""
    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise ValueError(f"data: mnist directory {d} is a file; expected the folder of the IDX files")
    if not d.is_dir():
        raise FileNotFoundError(f"data: mnist directory {d} does not exist")
    xtr, ytr, hwc = _load_pair(d, "train")
    xte, yte, hwc2 = _load_pair(d, "t10k")
    if hwc != hwc2:
        raise ValueError(f"idx: train images are {hwc[:2]} but test images are {hwc2[:2]}")
    return Dataset(f"mnist:{d}", xtr, ytr, xte, yte, hwc)


def load_dataset(spec: str) -> Dataset:
    """``digits`` or ``mnist:DIR``."""
    if spec == "digits":
        return load_digits_split()
    if spec.startswith("mnist:"):
        path = spec.split(":", 1)[1]
        if not path:
            raise ValueError("data: 'mnist:' needs a directory, e.g. mnist:/data/mnist")
        return load_mnist_dir(path)
    raise ValueError(f"data: {spec!r} is not 'digits' or 'mnist:DIR'")


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (used by tests to make small files)."""
    a = np.asarray(array, dtype=np.uint8)
    header = (0x0800 | a.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    Path(path).write_bytes(header + a.tobytes())

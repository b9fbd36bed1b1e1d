"""Training data: scikit-learn's bundled digits (8x8, and a 28x28 set made from them) and local files.

Nothing is downloaded. Images are returned as float64 ``[N, H*W*C]`` (rows in H, W, C order)
in [0, 1], labels as int64 ``[N]``.

``digits``: the 1797 images of :func:`sklearn.datasets.load_digits` split once, stratified,
into 1347 training and :data:`DIGITS_TEST_SIZE` = 450 test images with the fixed
:data:`DIGITS_SPLIT_SEED`; the split never depends on a training seed.

``digits28``: a 28x28 benchmark set made from ``digits`` (MNIST's image size; no MNIST ships
offline). Each 8x8 image (0..16) is upsampled 3x by bilinear interpolation
(``scipy.ndimage.zoom(order=1)``) to 24x24, clipped to [0, 16], divided by 16 and placed in a
zero 28x28 canvas at a row and column offset drawn uniformly from 0..4 (a random shift of up
to +-2 pixels around the centre). The digits split is kept: each of the 1347 training images
gives :data:`DIGITS28_COPIES` copies with independent shifts (4041 images), each of the 450
test images one. Offsets come from ``numpy.random.default_rng(DIGITS28_SEED)``, drawn for the
training copies first (image-major), then for the test images.

``signals`` (or ``signals:SEED``): a hard synthetic set made here, seeded (:func:`make_signals`):
:data:`SIGNALS_TRAIN` = 4000 training and :data:`SIGNALS_TEST` = 1000 test examples of 10 classes.
Each class has a 1-D prototype of 64 samples (three random sinusoids and a Gaussian bump, drawn
once from the seed); an example is its prototype circularly shifted by up to
:data:`SIGNALS_MAX_SHIFT` samples, scaled by a random gain in [0.5, 1.5] and buried in
Gaussian noise of standard deviation :data:`SIGNALS_NOISE` (relative to the prototypes' unit
RMS), then folded row-major into an 8x8 image and mapped to [0, 1] by a fixed affine map
(clipped). The default seed is :data:`SIGNALS_SEED`; the set never depends on a training seed.

``mnist:DIR``: ``DIR`` holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``), images
of any HxW.

``cifar10:DIR``: CIFAR-10's python batches: ``DIR/data_batch_1`` ... ``data_batch_5`` (those
present, at least one) and ``DIR/test_batch``, each a pickled dict with ``data`` (uint8
``[N, 3072]``, channel planes R, G, B of 32x32) and ``labels``. They are read with an unpickler
that admits only NumPy arrays and plain containers.

``synthetic:CxHxW:CLASSES:N``: ``N`` training and ``N // 4`` (at least 1) test images of uniform
random pixels with uniform random labels (``numpy.random.default_rng(SYNTHETIC_SEED)``): for timing
and traces of large networks, never for accuracy.

``npz:FILE``: a NumPy ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``; images
``[N, H, W]`` or ``[N, H, W, C]`` (channels last), uint8 (divided by 255) or float (finite,
taken as they are); labels integers from 0; the number of classes is the largest label + 1.
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_TEST_SIZE = 450
DIGITS_SPLIT_SEED = 20170401
DIGITS28_SEED = 19980101
DIGITS28_COPIES = 3
SYNTHETIC_SEED = 20260101

SIGNALS_SEED = 20240917
SIGNALS_TRAIN = 4000
SIGNALS_TEST = 1000
SIGNALS_LENGTH = 64
SIGNALS_MAX_SHIFT = 12
SIGNALS_NOISE = 2.0
#: The affine map to [0, 1]: ``clip(0.5 + v / (2 * SIGNALS_RANGE), 0, 1)``.
SIGNALS_RANGE = 4.0

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


def load_digits28() -> Dataset:
    """The 28x28 set made from digits (see the module docstring for exactly how)."""
    from scipy.ndimage import zoom

    d = load_digits_split()
    rng = np.random.default_rng(DIGITS28_SEED)

    def place(x8: np.ndarray, copies: int) -> np.ndarray:
        n = len(x8)
        big = zoom(x8.reshape(n, 8, 8), (1, 3, 3), order=1)  # [n, 24, 24], x8 in [0, 1]
        big = np.clip(big, 0.0, 1.0)
        out = np.zeros((n * copies, 28, 28))
        offs = rng.integers(0, 5, (n * copies, 2))
        for i in range(n * copies):
            dy, dx = offs[i]
            out[i, dy:dy + 24, dx:dx + 24] = big[i // copies]
        return out.reshape(n * copies, 28 * 28)

    xtr = place(d.x_train, DIGITS28_COPIES)
    xte = place(d.x_test, 1)
    return Dataset("digits28", xtr, np.repeat(d.y_train, DIGITS28_COPIES), xte, d.y_test.copy(), (28, 28, 1))


def make_signals(seed: int = SIGNALS_SEED, n_train: int = SIGNALS_TRAIN, n_test: int = SIGNALS_TEST,
                 noise: float = SIGNALS_NOISE, max_shift: int = SIGNALS_MAX_SHIFT) -> Dataset:
    """The ``signals`` data set (see the module docstring): noisy, shifted 1-D signals as 8x8 images.

    Deterministic for its arguments; classes are balanced (example ``i`` has label ``i % 10``,
    then the order is shuffled).

    Raises
    ------
    ValueError
        A count below 10, a negative noise or shift, or a seed outside [0, 2**32).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 1 << 32:
        raise ValueError(f"data: signals seed={seed!r}: must be an integer in [0, 2**32)")
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 10:
            raise ValueError(f"data: signals {name}={v!r}: must be an integer >= 10")
    if not np.isfinite(noise) or noise < 0 or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"data: signals noise={noise!r}, max_shift={max_shift!r}: must be >= 0")
    rng = np.random.default_rng([seed, 17])
    t = np.arange(SIGNALS_LENGTH) / SIGNALS_LENGTH
    protos = np.zeros((10, SIGNALS_LENGTH))
    for c in range(10):
        for _ in range(3):
            f = rng.integers(1, 9)
            protos[c] += rng.normal() * np.sin(2 * np.pi * (f * t + rng.random()))
        centre, width = rng.random(), 0.03 + 0.07 * rng.random()
        d = np.minimum(np.abs(t - centre), 1 - np.abs(t - centre))
        protos[c] += 2.0 * rng.normal() * np.exp(-0.5 * (d / width) ** 2)
        protos[c] /= np.sqrt(np.mean(protos[c] ** 2))

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.permutation(np.arange(n, dtype=np.int64) % 10)
        shifts = rng.integers(-max_shift, max_shift + 1, size=n)
        gains = rng.uniform(0.5, 1.5, size=n)
        idx = (np.arange(SIGNALS_LENGTH)[None, :] - shifts[:, None]) % SIGNALS_LENGTH
        x = protos[y[:, None], idx] * gains[:, None] + noise * rng.normal(size=(n, SIGNALS_LENGTH))
        return np.clip(0.5 + x / (2 * SIGNALS_RANGE), 0.0, 1.0), y

    xtr, ytr = draw(n_train)
    xte, yte = draw(n_test)
    return Dataset("signals" if seed == SIGNALS_SEED else f"signals:{seed}", xtr, ytr, xte, yte, (8, 8, 1))


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


class _ArrayUnpickler:
    """Unpickles NumPy arrays and plain containers only (a CIFAR-10 batch); anything else is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    @classmethod
    def load(cls, blob: bytes, name: str) -> object:
        import importlib
        import io
        import pickle

        class U(pickle.Unpickler):
            def find_class(self, module: str, attr: str) -> object:
                if (module, attr) not in cls.ALLOWED:
                    raise ValueError(f"cifar10: {name}: refuses to unpickle {module}.{attr} (not a CIFAR-10 batch)")
                return getattr(importlib.import_module(module), attr)

        try:
            return U(io.BytesIO(blob), encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError) as exc:
            raise ValueError(f"cifar10: {name}: not a CIFAR-10 python batch: {exc}") from None


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    d = _ArrayUnpickler.load(path.read_bytes(), str(path))
    if not isinstance(d, dict):
        raise ValueError(f"cifar10: {path}: not a CIFAR-10 python batch (a dict with data and labels)")
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or "labels" not in d:
        raise ValueError(f"cifar10: {path}: missing 'data' or 'labels'")
    x = np.asarray(d["data"])
    y = np.asarray(d["labels"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise ValueError(f"cifar10: {path}: data is {x.dtype} {x.shape}, expected uint8 [N, 3072]")
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu" or (y.size and (y.min() < 0 or y.max() > 9)):
        raise ValueError(f"cifar10: {path}: labels must be {x.shape[0]} integers 0-9")
    hwc = x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).reshape(len(x), -1)
    return hwc.astype(np.float64) / 255.0, y.astype(np.int64)


def load_cifar10_dir(directory: str | Path) -> Dataset:
    """CIFAR-10 from its python batches in a local directory (see the module docstring)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"data: cifar10 directory {d} does not exist")
    train_files = [d / f"data_batch_{i}" for i in range(1, 6) if (d / f"data_batch_{i}").is_file()]
    if not train_files:
        raise FileNotFoundError(f"cifar10: {d} has no data_batch_1 ... data_batch_5")
    if not (d / "test_batch").is_file():
        raise FileNotFoundError(f"cifar10: {d / 'test_batch'} does not exist")
    parts = [_cifar_batch(f) for f in train_files]
    xte, yte = _cifar_batch(d / "test_batch")
    return Dataset(f"cifar10:{d}", np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   xte, yte, (32, 32, 3))


def load_npz(path: str | Path) -> Dataset:
    """A data set from an ``.npz`` file (see the module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data: npz file {p} does not exist")
    try:
        z = np.load(p, allow_pickle=False)
        arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"npz: {p}: not a readable .npz file: {exc}") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        raise ValueError(f"npz: {p}: missing array(s) {missing}; needs x_train, y_train, x_test, y_test")
    out: dict[str, np.ndarray] = {}
    hwc: tuple[int, int, int] | None = None
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or 0 in x.shape:
            raise ValueError(f"npz: {p}: x_{part} has shape {x.shape}; expected [N, H, W] or [N, H, W, C]")
        if hwc is None:
            hwc = x.shape[1:]
        elif x.shape[1:] != hwc:
            raise ValueError(f"npz: {p}: x_test samples are {list(x.shape[1:])} but x_train's are {list(hwc)}")
        if x.dtype == np.uint8:
            xf = x.astype(np.float64) / 255.0
        elif x.dtype.kind == "f":
            xf = x.astype(np.float64)
            if not np.all(np.isfinite(xf)):
                raise ValueError(f"npz: {p}: x_{part} holds NaN or infinite values")
        else:
            raise ValueError(f"npz: {p}: x_{part} is {x.dtype}; expected uint8 or float")
        if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
            raise ValueError(f"npz: {p}: y_{part} is {y.dtype} {y.shape}; expected {x.shape[0]} integer labels")
        if y.size and y.min() < 0:
            raise ValueError(f"npz: {p}: y_{part} has a negative label {int(y.min())}")
        out[f"x_{part}"], out[f"y_{part}"] = xf.reshape(len(xf), -1), y.astype(np.int64)
    classes = int(max(out["y_train"].max(), out["y_test"].max())) + 1
    return Dataset(f"npz:{p}", out["x_train"], out["y_train"], out["x_test"], out["y_test"],
                   tuple(int(v) for v in hwc), classes)  # type: ignore[arg-type]


def load_synthetic(spec: str) -> Dataset:
    """``CxHxW:CLASSES:N`` random images and labels (see the module docstring)."""
    parts = spec.split(":")
    try:
        c, h, w = (int(v) for v in parts[0].lower().split("x"))
        classes, n = int(parts[1]), int(parts[2])
        if len(parts) != 3 or min(c, h, w, classes, n) < 1:
            raise ValueError
    except (ValueError, IndexError):
        raise ValueError(f"data: synthetic:{spec!r}: expected synthetic:CxHxW:CLASSES:N with positive integers, "
                         "e.g. synthetic:3x227x227:1000:16") from None
    rng = np.random.default_rng(SYNTHETIC_SEED)
    nt = max(1, n // 4)
    x = rng.random((n + nt, h * w * c))
    y = rng.integers(0, classes, n + nt)
    return Dataset(f"synthetic:{spec}", x[:n], y[:n], x[n:], y[n:], (h, w, c), classes)


def load_dataset(spec: str) -> Dataset:
    """``digits``, ``digits28``, ``signals[:SEED]``, ``mnist:DIR``, ``cifar10:DIR``, ``npz:FILE`` or
    ``synthetic:CxHxW:CLASSES:N``."""
    if spec == "digits":
        return load_digits_split()
    if spec == "digits28":
        return load_digits28()
    if spec == "signals" or spec.startswith("signals:"):
        if spec == "signals":
            return make_signals()
        try:
            seed = int(spec.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"data: {spec!r}: the signals seed must be an integer, e.g. signals:7") from None
        return make_signals(seed)
    loaders = {"mnist": load_mnist_dir, "cifar10": load_cifar10_dir, "npz": load_npz, "synthetic": load_synthetic}
    kind, _, path = spec.partition(":")
    if kind in loaders and _:
        if not path:
            raise ValueError(f"data: '{kind}:' needs a path, e.g. {kind}:/data/{kind}")
        return loaders[kind](path)
    raise ValueError(f"data: {spec!r} is not 'digits', 'digits28', 'signals[:SEED]', 'mnist:DIR', 'cifar10:DIR', "
                     "'npz:FILE' or 'synthetic:CxHxW:CLASSES:N'")


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (used by tests to make small files)."""
    a = np.asarray(array, dtype=np.uint8)
    header = (0x0800 | a.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    Path(path).write_bytes(header + a.tobytes())

"""Datasets and small data helpers.

    (x_train, y_train), (x_test, y_test) = fm.datasets.load_mnist()   # (n, 784) float32 in [0, 1]
    x, y = fm.datasets.load_digits()                                    # offline 8x8 digits (scikit-learn)
    x_tr, x_te, y_tr, y_te = fm.datasets.train_test_split(x, y, test_size=0.2, stratify=True)

MNIST is read from the standard IDX files (train-images-idx3-ubyte etc., optionally gzipped) found
in `path`, else in $FASTMLP_DATA (or $FASTMLP_DATA/mnist), else in ~/.cache/fastmlp/mnist; missing
files are downloaded from public mirrors and checked against known SHA-256 digests.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import math
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# SHA-256 of the standard gzipped MNIST files.
MNIST_FILES = {
    "train-images-idx3-ubyte": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "train-labels-idx1-ubyte": "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
    "t10k-images-idx3-ubyte": "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",
    "t10k-labels-idx1-ubyte": "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",
}

_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand one compressed byte into more than this

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DownloadError(OSError):
    """A dataset file could not be downloaded (offline, mirror down, or a checksum mismatch)."""


# ------------------------------------------------------------------------------------- IDX files
def read_idx(source) -> np.ndarray:
    """Parses an IDX file (a path, optionally gzipped, or its bytes) into a numpy array.
    Raises ValueError for anything that is not a well-formed IDX file.

    The header is read first and its declared size checked before the data is allocated; gzip
    data is decompressed incrementally, never beyond the declared size plus one byte, so a small
    file cannot make this allocate more than the array it really holds."""
    name = "IDX data"
    with contextlib.ExitStack() as stack:
        if isinstance(source, (bytes, bytearray, memoryview)):
            raw = io.BytesIO(source)
            size = raw.seek(0, io.SEEK_END)
            raw.seek(0)
        else:
            name = str(source)
            raw = stack.enter_context(open(source, "rb"))
            size = os.fstat(raw.fileno()).st_size
        gzipped = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        f = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb")) if gzipped else raw
        try:
            return _read_idx_stream(f, name, size, gzipped)
        except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            if not gzipped:
                raise
            raise ValueError(f"{name}: corrupt gzip data ({e})") from None


def _read_exactly(f, n):
    out = bytearray()
    while len(out) < n:
        chunk = f.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _read_idx_stream(f, name, size, gzipped):
    head = _read_exactly(f, 4)
    if len(head) < 4:
        raise ValueError(f"{name}: not an IDX file (only {len(head)} bytes, no header)")
    if head[0] != 0 or head[1] != 0:
        raise ValueError(f"{name}: not an IDX file (bad magic number 0x{head.hex()})")
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{name}: unknown IDX data type code 0x{code:02x}")
    if ndim == 0:
        raise ValueError(f"{name}: IDX header declares 0 dimensions")
    dims = _read_exactly(f, 4 * ndim)
    header = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header ({4 + len(dims)} bytes, {ndim} dimensions declared)")
    shape = struct.unpack(f">{ndim}I", dims)
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if not gzipped:  # the file size tells exactly what is there
        have = size - header
        if have < expected:
            raise ValueError(f"{name}: short data: shape {shape} needs {expected} bytes, file has {have}")
        if have > expected:
            raise ValueError(f"{name}: {have - expected} unexpected trailing bytes after the {shape} array")
    elif expected > size * _DEFLATE_MAX_RATIO + 1024:
        raise ValueError(f"{name}: short data: shape {shape} needs {expected} bytes, more than a {size}-byte "
                         "gzip file can hold")
    arr = np.empty(math.prod(shape), dtype=dtype)
    view = memoryview(arr).cast("B")
    have = 0
    while have < expected:  # in chunks: memory grows only with data really there
        n = f.readinto(view[have:have + (1 << 20)])
        if not n:
            raise ValueError(f"{name}: short data: shape {shape} needs {expected} bytes, file has {have}")
        have += n
    if f.read(1):
        raise ValueError(f"{name}: unexpected trailing bytes after the {shape} array")
    if not dtype.isnative:
        arr = arr.byteswap(inplace=True).view(dtype.newbyteorder("="))  # in place: no second copy
    return arr.reshape(shape)


def _data_dir(path) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("FASTMLP_DATA")
    if env:
        root = Path(env).expanduser()
        sub = root / "mnist"
        return sub if sub.is_dir() and not _find(root, "train-images-idx3-ubyte") else root
    return Path.home() / ".cache" / "fastmlp" / "mnist"


def _find(folder: Path, stem: str):
    for candidate in (folder / stem, folder / (stem + ".gz")):
        if candidate.is_file():
            return candidate
    return None


def _urlopen(url, timeout):
    import urllib.request

    return urllib.request.urlopen(url, timeout=timeout)


def _download(stem: str, folder: Path, mirrors=MNIST_MIRRORS, timeout=30.0) -> Path:
    """Fetches stem.gz into folder from the first mirror that serves it with the right SHA-256."""
    digest = MNIST_FILES[stem]
    errors = []
    for base in mirrors:
        url = base + stem + ".gz"
        try:
            with _urlopen(url, timeout) as response:
                data = response.read()
        except Exception as e:  # noqa: BLE001 - any network failure means: try the next mirror
            errors.append(f"{url}: {e}")
            continue
        got = hashlib.sha256(data).hexdigest()
        if got != digest:
            errors.append(f"{url}: SHA-256 mismatch (got {got[:16]}..., expected {digest[:16]}...)")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / (stem + ".gz")
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return target
    raise DownloadError(
        f"could not download MNIST file {stem}.gz ({'; '.join(errors)}). If this machine is offline, copy the "
        f"four MNIST files (train-images-idx3-ubyte.gz, ...) into {folder} or point $FASTMLP_DATA or "
        f"load_mnist(path=...) at a folder holding them")


def load_mnist(path=None, *, flatten: bool = True, normalize: bool = True, download: bool = True):
    """((x_train, y_train), (x_test, y_test)) of MNIST: 60000 / 10000 28x28 digits.

    x: float32 scaled to [0, 1] (uint8 with normalize=False), shape (n, 784), or (n, 28, 28) with
    flatten=False. y: int64 class ids 0-9. Files are looked up in `path`, else $FASTMLP_DATA, else
    ~/.cache/fastmlp/mnist, and downloaded there (SHA-256 checked) when missing and download=True."""
    folder = _data_dir(path)
    arrays = {}
    for stem in MNIST_FILES:
        found = _find(folder, stem)
        if found is None:
            if not download:
                raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {folder} (download=False)")
            found = _download(stem, folder)
        arrays[stem] = read_idx(found)
    out = []
    for split in ("train", "t10k"):
        images, labels = arrays[f"{split}-images-idx3-ubyte"], arrays[f"{split}-labels-idx1-ubyte"]
        for what, arr, ndim in (("images", images, 3), ("labels", labels, 1)):
            if arr.dtype != np.uint8:
                raise ValueError(f"MNIST {split} {what}: expected unsigned byte data, got {arr.dtype}")
            if arr.ndim != ndim:
                raise ValueError(f"MNIST {split} {what}: expected {ndim} dimensions, got shape {arr.shape}")
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"MNIST {split}: {images.shape[0]} images but {labels.shape[0]} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"MNIST {split} labels: values must be 0-9, found {int(labels.max())}")
        x = images.reshape(images.shape[0], -1) if flatten else images
        if normalize:
            x = x.astype(np.float32) / np.float32(255.0)
        out.append((x, labels.astype(np.int64)))
    return tuple(out)


def load_digits():
    """(x, y): scikit-learn's 1797 real 8x8 handwritten digits, x float32 in [0, 1] of shape (n, 64),
    y int64 class ids. Offline; needs scikit-learn."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn "
                          "(or pip install 'fastmlp[demo]')") from None
    bunch = _sk_load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0))
    return x, np.asarray(bunch.target, dtype=np.int64)


# ------------------------------------------------------------------------------------- helpers
def train_test_split(x, y, test_size=0.2, seed=0, stratify=False):
    """Shuffled split -> (x_train, x_test, y_train, y_test), scikit-learn's order.

    test_size: a fraction in (0, 1) or a number of samples. stratify=True keeps each class's share
    (y must then be class ids or one-hot rows). The same seed gives the same split."""
    x, y = np.asarray(x), np.asarray(y)
    n = x.shape[0] if x.ndim else 0
    if y.ndim == 0 or y.shape[0] != n:
        raise ValueError(f"x and y need the same number of samples, got {n} and {y.shape[0] if y.ndim else 0}")
    if isinstance(test_size, bool) or not isinstance(test_size, (int, float, np.integer, np.floating)):
        raise TypeError(f"test_size must be a fraction or a count, got {test_size!r}")
    if isinstance(test_size, (float, np.floating)):
        if not 0.0 < test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in (0, 1), got {test_size}")
        n_test = int(round(n * float(test_size)))
    else:
        n_test = int(test_size)
    if not 0 < n_test < n:
        raise ValueError(f"test_size={test_size!r} leaves no training or test samples out of {n}")
    rng = np.random.default_rng(seed)
    if not stratify:
        perm = rng.permutation(n)
        test_idx, train_idx = perm[:n_test], perm[n_test:]
    else:
        classes = y.argmax(axis=1) if y.ndim == 2 else y
        if classes.ndim != 1:
            raise ValueError("stratify needs y as class ids (n,) or one-hot rows (n, k)")
        values, inverse, counts = np.unique(classes, return_inverse=True, return_counts=True)
        # Largest-remainder allocation: per-class test counts that sum to exactly n_test.
        exact = counts * (n_test / n)
        alloc = np.floor(exact).astype(np.int64)
        for i in np.argsort(-(exact - alloc), kind="stable")[: n_test - alloc.sum()]:
            alloc[i] += 1
        test_parts, train_parts = [], []
        for k in range(len(values)):
            idx = rng.permutation(np.flatnonzero(inverse == k))
            test_parts.append(idx[: alloc[k]])
            train_parts.append(idx[alloc[k]:])
        test_idx = rng.permutation(np.concatenate(test_parts))
        train_idx = rng.permutation(np.concatenate(train_parts))
    return x[train_idx], x[test_idx], y[train_idx], y[test_idx]


def to_categorical(y, num_classes=None, dtype="float32"):
    """One-hot rows (n, num_classes) from class ids 0..num_classes-1."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"to_categorical needs a 1-D array of class ids, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
            raise ValueError("to_categorical needs integer class ids")
    ids = y.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"class ids must be >= 0, found {int(ids.min())}")
    top = int(ids.max()) + 1 if ids.size else 0
    if num_classes is None:
        num_classes = top
    elif isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    elif top > num_classes:
        raise ValueError(f"class id {top - 1} does not fit num_classes={num_classes}")
    out = np.zeros((ids.shape[0], int(num_classes)), dtype=dtype)
    out[np.arange(ids.shape[0]), ids] = 1
    return out


def standardize(x_train, *others):
    """Zero mean, unit variance per feature using the statistics of x_train only (features with std 0
    are only centered). Returns the standardized x_train, or a tuple (x_train, *others) when others
    are given: x_tr, x_te = standardize(x_tr, x_te)."""
    x_train = np.asarray(x_train)
    if x_train.ndim != 2 or x_train.shape[0] == 0:
        raise ValueError(f"standardize needs a non-empty 2-D x_train, got shape {x_train.shape}")
    dtype = x_train.dtype if np.issubdtype(x_train.dtype, np.floating) else np.dtype(np.float32)
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0

    def apply(a, name):
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[1] != x_train.shape[1]:
            raise ValueError(f"{name} must have shape (n, {x_train.shape[1]}), got {a.shape}")
        return ((a - mean) / std).astype(dtype)

    result = (apply(x_train, "x_train"),) + tuple(apply(a, f"array {i + 1}") for i, a in enumerate(others))
    return result[0] if not others else result


__all__ = ["load_mnist", "load_digits", "read_idx", "train_test_split", "to_categorical", "standardize",
           "DownloadError", "MNIST_MIRRORS", "MNIST_FILES"]

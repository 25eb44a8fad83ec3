"""fastmlp.datasets: IDX parsing, MNIST lookup/download (network mocked), digits, helpers."""
import gzip
import hashlib
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import datasets

MNIST_DIR = Path("/work/shared/data/mnist")


def idx_bytes(arr, code=0x08):
    arr = np.asarray(arr)
    return bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(">u1").tobytes()


def write_fake_mnist(folder, n_train=6, n_test=4, gz=True, labels_train=None):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             "train-labels-idx1-ubyte": (labels_train if labels_train is not None
                                         else rng.integers(0, 10, n_train, dtype=np.uint8)),
             "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for stem, arr in parts.items():
        data = idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return parts


def test_import_fastmlp_stays_light():
    import subprocess

    code = ("import sys, fastmlp; bad = [m for m in ('matplotlib', 'sklearn', 'tqdm', 'safetensors') "
            "if m in sys.modules]; print(bad); assert not bad")
    env = {"PYTHONPATH": str(Path(fm.__file__).parents[1]), "PATH": "/usr/bin:/bin"}
    # a sanitizer build (.ci/sanitize) needs its runtime preloaded in the child too
    env.update({k: v for k, v in os.environ.items() if k == "LD_PRELOAD" or k.endswith("SAN_OPTIONS")})
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_path_shapes_and_scaling(tmp_path, gz):
    parts = write_fake_mnist(tmp_path, gz=gz)
    (x_tr, y_tr), (x_te, y_te) = datasets.load_mnist(tmp_path, download=False)
    assert x_tr.shape == (6, 784) and x_te.shape == (4, 784)
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    np.testing.assert_array_equal(x_tr, parts["train-images-idx3-ubyte"].reshape(6, -1) / np.float32(255))
    np.testing.assert_array_equal(y_te, parts["t10k-labels-idx1-ubyte"])
    assert 0.0 <= x_tr.min() and x_tr.max() <= 1.0
    (raw, _), _ = datasets.load_mnist(tmp_path, flatten=False, normalize=False, download=False)
    assert raw.shape == (6, 28, 28) and raw.dtype == np.uint8


def test_fastmlp_data_env_var(tmp_path, monkeypatch):
    write_fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path))
    (x_tr, _), _ = datasets.load_mnist(download=False)
    assert x_tr.shape == (6, 784)


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="standard MNIST files not present")
def test_real_mnist_files_and_digests():
    for stem, digest in datasets.MNIST_FILES.items():
        assert hashlib.sha256((MNIST_DIR / (stem + ".gz")).read_bytes()).hexdigest() == digest
    labels = datasets.read_idx(MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and labels.max() == 9


@pytest.mark.parametrize("blob, match", [
    (b"", "no header"),
    (b"\x08\x03\x00\x00" + b"\0" * 20, "bad magic"),
    (bytes([0, 0, 0x07, 1]) + struct.pack(">I", 3) + b"abc", "data type code"),
    (bytes([0, 0, 0x08, 3]) + struct.pack(">I", 2), "truncated IDX header"),
    (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"abc", "short data"),
    (bytes([0, 0, 0x08, 1]) + struct.pack(">I", 2) + b"abcd", "trailing"),
    (b"\x1f\x8b" + b"garbage", "corrupt gzip"),
])
def test_malformed_idx_raises_value_error(blob, match):
    with pytest.raises(ValueError, match=match):
        datasets.read_idx(blob)


def test_read_idx_other_dtypes():
    arr = np.arange(6, dtype=">i4").reshape(2, 3)
    blob = bytes([0, 0, 0x0C, 2]) + struct.pack(">2I", 2, 3) + arr.tobytes()
    out = datasets.read_idx(blob)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative


def test_mnist_count_mismatch_and_wrong_dtype(tmp_path):
    write_fake_mnist(tmp_path, labels_train=np.zeros(5, dtype=np.uint8))
    with pytest.raises(ValueError, match="6 images but 5 labels"):
        datasets.load_mnist(tmp_path, download=False)
    write_fake_mnist(tmp_path)
    wrong = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 4) + np.zeros(4, ">i4").tobytes()
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(wrong))
    with pytest.raises(ValueError, match="unsigned byte"):
        datasets.load_mnist(tmp_path, download=False)


def test_missing_files_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        datasets.load_mnist(tmp_path / "none", download=False)


def test_offline_download_gives_clear_error(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(datasets, "_urlopen", offline)
    with pytest.raises(datasets.DownloadError, match="offline") as info:
        datasets.load_mnist(tmp_path)
    assert "network is unreachable" in str(info.value) and str(tmp_path) in str(info.value)
    assert len(calls) == len(datasets.MNIST_MIRRORS)  # every mirror was tried
    assert not list(tmp_path.iterdir())  # nothing half-written


class _Response:
    def __init__(self, data):
        self.data = data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self):
        return self.data


def test_download_rejects_checksum_mismatch_then_uses_next_mirror(tmp_path, monkeypatch):
    fake = write_fake_mnist(tmp_path / "src")
    payload = {stem: (tmp_path / "src" / (stem + ".gz")).read_bytes() for stem in fake}
    monkeypatch.setattr(datasets, "MNIST_FILES", {k: hashlib.sha256(v).hexdigest() for k, v in payload.items()})
    seen = []

    def urlopen(url, timeout):
        seen.append(url)
        stem = url.rsplit("/", 1)[1][:-3]
        if url.startswith(datasets.MNIST_MIRRORS[0]):
            return _Response(b"tampered" + payload[stem])
        return _Response(payload[stem])

    monkeypatch.setattr(datasets, "_urlopen", urlopen)
    (x_tr, _), _ = datasets.load_mnist(tmp_path / "dl")
    assert x_tr.shape == (6, 784)
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == sorted(s + ".gz" for s in fake)
    assert len(seen) == 8  # two mirrors per file: the first always mismatches
    monkeypatch.setattr(datasets, "_urlopen", lambda url, timeout: _Response(b"tampered"))
    with pytest.raises(datasets.DownloadError, match="SHA-256 mismatch"):
        datasets.load_mnist(tmp_path / "dl2")


def test_load_digits():
    pytest.importorskip("sklearn")
    x, y = datasets.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() == 1.0
    assert np.issubdtype(y.dtype, np.integer) and set(np.unique(y)) == set(range(10))


def test_load_digits_without_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        datasets.load_digits()


def test_train_test_split_plain_and_stratified():
    x = np.arange(200, dtype=np.float32).reshape(100, 2)
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=1)
    assert x_tr.shape == (80, 2) and x_te.shape == (20, 2)
    np.testing.assert_array_equal(np.sort(np.concatenate([x_tr[:, 0], x_te[:, 0]])), x[:, 0])
    again = datasets.train_test_split(x, y, test_size=0.2, seed=1)
    np.testing.assert_array_equal(again[1], x_te)  # deterministic
    assert not np.array_equal(datasets.train_test_split(x, y, test_size=0.2, seed=2)[1], x_te)
    _, _, y_tr, y_te = datasets.train_test_split(x, y, test_size=0.2, seed=0, stratify=True)
    np.testing.assert_array_equal(np.bincount(y_te), [2, 4, 6, 8])
    np.testing.assert_array_equal(np.bincount(y_tr), [8, 16, 24, 32])
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, y, test_size=7, seed=0, stratify=True)
    assert len(x_te) == 7 and len(y_tr) == 93
    # rows stay paired
    x_tr, x_te, y_tr, y_te = datasets.train_test_split(x, x[:, 0] * 10, test_size=0.3)
    np.testing.assert_array_equal(y_te, x_te[:, 0] * 10)


@pytest.mark.parametrize("kwargs, err", [({"test_size": 0.0}, ValueError), ({"test_size": 1.5}, ValueError),
                                         ({"test_size": 10}, ValueError), ({"test_size": "a"}, TypeError)])
def test_train_test_split_rejects_bad_sizes(kwargs, err):
    with pytest.raises(err):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros(10), **kwargs)
    with pytest.raises(ValueError, match="same number"):
        datasets.train_test_split(np.zeros((10, 2)), np.zeros(9))


def test_to_categorical():
    out = datasets.to_categorical([0, 2, 1], num_classes=4)
    np.testing.assert_array_equal(out, [[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])
    assert out.dtype == np.float32
    assert datasets.to_categorical(np.array([1.0, 3.0])).shape == (2, 4)
    with pytest.raises(ValueError, match="does not fit"):
        datasets.to_categorical([0, 5], num_classes=3)
    with pytest.raises(ValueError, match=">= 0"):
        datasets.to_categorical([-1, 0])
    with pytest.raises(ValueError, match="integer"):
        datasets.to_categorical([0.5, 1])


def test_standardize_uses_train_statistics():
    rng = np.random.default_rng(0)
    x_tr = rng.normal(3.0, 2.0, (500, 3)).astype(np.float32)
    x_tr[:, 2] = 7.0  # constant column: std 0 -> only centered
    x_te = x_tr[:10] + 1
    s_tr, s_te = datasets.standardize(x_tr, x_te)
    np.testing.assert_allclose(s_tr[:, :2].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(s_tr[:, :2].std(axis=0), 1, atol=1e-4)
    np.testing.assert_array_equal(s_tr[:, 2], 0)
    np.testing.assert_allclose(s_te[:, :2], s_tr[:10, :2] + 1 / x_tr[:, :2].std(axis=0), atol=1e-5)
    assert s_tr.dtype == np.float32
    assert isinstance(datasets.standardize(x_tr), np.ndarray)
    with pytest.raises(ValueError, match="shape"):
        datasets.standardize(x_tr, np.zeros((2, 4)))

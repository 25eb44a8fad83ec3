"""The fastmlp command line, driven through fastmlp.cli.main(argv)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.cli import main


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, match):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmlp: error:"), err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]


@pytest.fixture
def npz_data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.8)
    path = tmp_path / "data.npz"
    np.savez(path, x_train=x[:240], y_train=y[:240], x_test=x[240:], y_test=y[240:])
    return path, x, y


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["predict", "--help"],
                                  ["demo", "--help"], ["info", "--help"]])
def test_help_everywhere(capsys, argv):
    rc, out, _ = run(capsys, *argv)
    assert rc == 0 and out.startswith("usage: fastmlp")


def test_python_dash_m_help():
    env = dict(os.environ, PYTHONPATH=str(Path(fm.__file__).parents[1]))
    r = subprocess.run([sys.executable, "-m", "fastmlp", "--help"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0
    assert "usage: fastmlp" in r.stdout and all(c in r.stdout for c in ("train", "evaluate", "predict", "demo"))


def test_version(capsys):
    rc, out, _ = run(capsys, "--version")
    assert rc == 0 and fm.__version__ in out


def test_info(capsys):
    rc, out, _ = run(capsys, "info")
    assert rc == 0
    assert re.search(r"fastmlp\s+" + re.escape(fm.__version__), out)
    assert re.search(r"numpy\s+" + re.escape(np.__version__), out)
    for key in ("BLAS", "threads", "CUDA available"):
        assert key in out


def test_demo_reaches_95_percent(capsys):
    pytest.importorskip("sklearn")
    rc, out, _ = run(capsys, "demo", "--device", "cpu")
    assert rc == 0
    assert out.count("Epoch ") == 20
    acc = float(re.search(r"test accuracy: ([\d.]+)%", out).group(1))
    assert acc > 95.0
    assert re.search(r"total time [\d.]+s", out)


def test_train_save_evaluate_predict(capsys, tmp_path, npz_data):
    path, x, y = npz_data
    model_path = tmp_path / "model.fm"
    rc, out, err = run(capsys, "train", "--data", str(path), "--hidden", "32,16", "--optimizer", "adam",
                       "--lr", "0.01", "--epochs", "5", "--batch-size", "32", "--device", "cpu", "--seed", "1",
                       "--save", str(model_path))
    assert rc == 0, err
    assert out.count("Epoch ") == 5 and "val_accuracy" in out and "saved model" in out
    # Keras's bar (the final line of each epoch off a terminal): 240 samples, 8 steps of 32
    assert len(re.findall(r"^8/8 ━{4,20} \d+s \d+(?:µs|ms|s)/step - loss: \d\.\d{4} - accuracy: \d\.\d{4}", out,
                          re.M)) == 5, out
    assert "\r" not in out and "\x1b" not in out
    test_acc = float(re.search(r"test loss: [\d.]+ - accuracy: ([\d.]+)", out).group(1))
    model = fm.load_model(model_path)
    assert [l.units for l in model.layers] == [32, 16, 3] and model.seed == 1
    assert model.optimizer.lr == 0.01

    rc, out, _ = run(capsys, "evaluate", "--model", str(model_path), "--data", str(path))
    assert rc == 0 and "test (60 samples)" in out
    assert float(re.search(r"accuracy: ([\d.]+)", out).group(1)) == test_acc

    np.savez(tmp_path / "x.npz", x=x[:7])
    out_path = tmp_path / "preds.npy"
    rc, out, _ = run(capsys, "predict", "--model", str(model_path), "--data", str(tmp_path / "x.npz"),
                     "--out", str(out_path))
    assert rc == 0
    np.testing.assert_array_equal(np.load(out_path), model.predict(x[:7]).argmax(axis=1))
    rc, _, _ = run(capsys, "predict", "--model", str(model_path), "--data", str(tmp_path / "x.npz"),
                   "--out", str(out_path), "--proba")
    assert rc == 0 and np.load(out_path).tobytes() == model.predict(x[:7]).tobytes()


def test_train_is_reproducible_and_regression(capsys, tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x_train=x, y_train=y)
    for name in ("a.fm", "b.fm"):
        rc, out, _ = run(capsys, "train", "--data", str(tmp_path / "reg.npz"), "--hidden", "16", "--epochs", "3",
                         "--device", "cpu", "--optimizer", "sgd", "--lr", "0.01", "-q", "--save",
                         str(tmp_path / name))
        assert rc == 0 and "train loss" in out and "mae" in out and "Epoch" not in out
    a, b = fm.load_model(tmp_path / "a.fm"), fm.load_model(tmp_path / "b.fm")
    assert a.loss.name == "mse" and a.layers[-1].units == 1
    assert all(p.tobytes() == q.tobytes() for p, q in zip(a.get_weights(), b.get_weights()))


def test_train_on_digits(capsys):
    pytest.importorskip("sklearn")
    rc, out, _ = run(capsys, "train", "--data", "digits", "--hidden", "64", "--epochs", "3", "--lr", "0.005",
                     "--batch-size", "64", "--device", "cpu", "-q")
    assert rc == 0
    assert float(re.search(r"test loss: [\d.]+ - accuracy: ([\d.]+)", out).group(1)) > 0.8


@pytest.mark.parametrize("argv, match", [
    ([], "missing command"),
    (["frobnicate"], "invalid choice"),
    (["train"], "required: --data"),
    (["train", "--data", "missing.npz"], "data file not found: missing.npz"),
    (["train", "--data", "digits", "--epochs", "ten"], "--epochs: expected a non-negative integer"),
    (["train", "--data", "digits", "--lr", "-1"], "--lr: expected a positive number"),
    (["train", "--data", "digits", "--hidden", "12,x"], "--hidden must be comma-separated"),
    (["train", "--data", "digits", "--optimizer", "adamm", "--epochs", "1"], "unknown optimizer 'adamm'"),
    (["train", "--data", "digits", "--activation", "relux", "--epochs", "1"], "unknown activation"),
    (["train", "--data", "digits", "--device", "tpu", "--epochs", "1"], "unknown device"),
    (["evaluate", "--model", "nope.fm", "--data", "digits"], "model file not found: nope.fm"),
])
def test_friendly_errors(capsys, argv, match):
    rc, _, err = run(capsys, *argv)
    assert_one_line_error(rc, err, match)


def test_bad_files(capsys, tmp_path, npz_data):
    path, x, _ = npz_data
    (tmp_path / "model.fm").write_text("not a model")
    rc, _, err = run(capsys, "evaluate", "--model", str(tmp_path / "model.fm"), "--data", str(path))
    assert_one_line_error(rc, err, "not a fastmlp model file")
    np.savez(tmp_path / "nokeys.npz", a=np.zeros(3))
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "nokeys.npz"))
    assert_one_line_error(rc, err, "needs arrays x_train and y_train")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "junk.npz"))
    assert_one_line_error(rc, err, "could not read arrays")
    # a model fed inputs of the wrong width
    rc, _, _ = run(capsys, "train", "--data", str(path), "--hidden", "4", "--epochs", "1", "--device", "cpu",
                   "-q", "--save", str(tmp_path / "ok.fm"))
    assert rc == 0
    np.savez(tmp_path / "wide.npz", x=np.zeros((2, 9), np.float32))
    rc, _, err = run(capsys, "predict", "--model", str(tmp_path / "ok.fm"), "--data", str(tmp_path / "wide.npz"),
                     "--out", str(tmp_path / "p.npy"))
    assert_one_line_error(rc, err, "9")


# ------------------------------------------------------------------ MNIST IDX folders, --data-dir
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def write_idx_folder(folder, n_train=40, n_test=12, gz=True, seed=0):
    """Four small MNIST-format IDX files (28x28 uint8 images, labels 0-9) in folder; returns the arrays."""
    import gzip
    import struct

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {IDX_STEMS[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
             IDX_STEMS[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
             IDX_STEMS[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
             IDX_STEMS[3]: rng.integers(0, 10, n_test, dtype=np.uint8)}
    for stem, arr in parts.items():
        data = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return parts


@pytest.fixture
def no_network(monkeypatch):
    """load_mnist's downloads fail at once, as offline."""
    from fastmlp import datasets

    def offline(url, timeout):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(datasets, "_urlopen", offline)


@pytest.mark.parametrize("gz", [True, False])
def test_data_accepts_a_folder_of_idx_files(capsys, tmp_path, gz, no_network):
    parts = write_idx_folder(tmp_path / "mnist", gz=gz)
    folder, model_path = str(tmp_path / "mnist"), tmp_path / "m.fm"
    rc, out, err = run(capsys, "train", "--data", folder, "--hidden", "8", "--epochs", "2", "--batch-size", "16",
                       "--device", "cpu", "--save", str(model_path))
    assert rc == 0, err
    assert out.count("Epoch ") == 2 and "val_loss" in out and "test loss" in out
    model = fm.load_model(model_path)
    assert model.input_dim == 784 and model.layers[-1].units == 10
    rc, out, err = run(capsys, "evaluate", "--model", str(model_path), "--data", folder)
    assert rc == 0 and "test (12 samples)" in out, err
    rc, _, err = run(capsys, "predict", "--model", str(model_path), "--data", folder, "--out",
                     str(tmp_path / "p.npy"))
    assert rc == 0, err
    x_test = parts[IDX_STEMS[2]].reshape(12, -1).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), model.predict(x_test).argmax(axis=1))
    # a folder whose subfolder mnist holds the files, as with $FASTMLP_DATA
    rc, out, err = run(capsys, "evaluate", "--model", str(model_path), "--data", str(tmp_path))
    assert rc == 0 and "test (12 samples)" in out, err


def test_data_dir_is_where_mnist_looks_and_overrides_the_environment(capsys, tmp_path, monkeypatch, no_network):
    write_idx_folder(tmp_path / "env" / "mnist", n_test=5, seed=1)
    write_idx_folder(tmp_path / "dir", n_test=7, seed=2)
    monkeypatch.setenv("FASTMLP_DATA", str(tmp_path / "env"))
    rc, out, err = run(capsys, "train", "--data", "mnist", "--hidden", "4", "--epochs", "1", "--device", "cpu", "-q",
                       "--save", str(tmp_path / "m.fm"))
    assert rc == 0, err
    assert "test loss" in out
    rc, out, _ = run(capsys, "evaluate", "--model", str(tmp_path / "m.fm"), "--data", "mnist")
    assert rc == 0 and "test (5 samples)" in out  # $FASTMLP_DATA/mnist
    for data_dir in (tmp_path / "dir", "~/" + os.path.relpath(tmp_path / "dir", os.path.expanduser("~"))):
        rc, out, err = run(capsys, "evaluate", "--model", str(tmp_path / "m.fm"), "--data", "mnist",
                           "--data-dir", str(data_dir))
        assert rc == 0 and "test (7 samples)" in out, err  # --data-dir wins over $FASTMLP_DATA
    rc, out, err = run(capsys, "predict", "--model", str(tmp_path / "m.fm"), "--data", "mnist", "--data-dir",
                       str(tmp_path / "dir"), "--out", str(tmp_path / "p.npy"))
    assert rc == 0 and np.load(tmp_path / "p.npy").shape == (7,), err


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help_says_where_data_is_looked_for(capsys, monkeypatch, command):
    monkeypatch.delenv("FASTMLP_DATA", raising=False)
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0
    for text in ("--data-dir DIR", "$FASTMLP_DATA (not set now)", "~/.cache/fastmlp/mnist", "train-images-idx3-ubyte",
                 "--data DIR", "--data digits", "--data FILE.npz"):
        assert text in out, text
    monkeypatch.setenv("FASTMLP_DATA", "/data/sets")
    rc, out, _ = run(capsys, command, "--help")
    assert rc == 0 and "$FASTMLP_DATA (now /data/sets)" in out


def test_data_folder_errors(capsys, tmp_path, no_network):
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run(capsys, "train", "--data", str(empty), "--epochs", "1")
    assert_one_line_error(rc, err, r"empty: no MNIST IDX files \(expected train-images-idx3-ubyte, .*t10k-labels")
    write_idx_folder(tmp_path / "part")
    (tmp_path / "part" / "t10k-labels-idx1-ubyte.gz").unlink()
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "part"), "--epochs", "1")
    assert_one_line_error(rc, err, r"missing MNIST IDX file t10k-labels-idx1-ubyte \(or .gz\)")
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "part" / "train-images-idx3-ubyte.gz"))
    assert_one_line_error(rc, err, "is one MNIST IDX file: pass the folder")
    (tmp_path / "part" / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "part"), "--epochs", "1")
    assert_one_line_error(rc, err, r"t10k-labels-idx1-ubyte: short data")
    rc, _, err = run(capsys, "train", "--data", "mnist", "--data-dir", str(tmp_path / "nowhere"))
    assert_one_line_error(rc, err, "--data-dir .*nowhere: no such folder")
    rc, _, err = run(capsys, "train", "--data", "digits", "--data-dir", str(empty))
    assert_one_line_error(rc, err, "--data-dir is where --data mnist looks .* does not apply to --data digits")
    rc, _, err = run(capsys, "train", "--data", "mnist", "--data-dir", str(empty), "--epochs", "1")
    assert_one_line_error(rc, err, "could not download MNIST file .*network is unreachable")
    assert not list(empty.iterdir())  # nothing half-written
    rc, _, err = run(capsys, "train", "--data", str(tmp_path / "nope"))
    assert_one_line_error(rc, err, "data file not found: .*nope .*a folder of MNIST IDX files")

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

"""fit's progress output: verbose 0/1/2, plain readable lines off a terminal, a live tqdm bar per epoch on one."""
import io
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp.progress import EpochProgress, epoch_line

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 3)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)


def make():
    m = fm.Sequential([fm.Dense(4, "relu", input_dim=3), fm.Dense(2, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    return m


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("verbose", [1, 2])
def test_non_tty_output_is_plain_lines(capsys, verbose):
    make().fit(X, Y, epochs=3, verbose=verbose, validation_data=(X[:20], Y[:20]))
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert line.startswith(f"Epoch {i + 1}/3 - ")
        for word in ("samples/s", "loss: ", "accuracy: ", "val_loss: ", "val_accuracy: "):
            assert word in line


def test_verbose_0_is_silent(capsys):
    make().fit(X, Y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_epoch_line_format():
    line = epoch_line(2, 10, {"loss": 0.41204, "accuracy": 0.875}, 0.5, 1000)
    assert line == "Epoch 3/10 - 0.50s - 2,000 samples/s - loss: 0.4120 - accuracy: 0.8750"


def test_tty_draws_a_tqdm_bar_with_metrics():
    pytest.importorskip("tqdm")
    stream = FakeTTY()
    p = EpochProgress(1, 3, 500, stream=stream)
    assert p.mode == "bar"
    for e in range(3):
        p.begin(e)
        p.end(e, {"loss": 0.25, "accuracy": 0.5}, 0.1)
    p.close()
    out = stream.getvalue()
    assert "3/3" in out and "loss=0.2500" in out and "accuracy=0.5000" in out and "5,000 samples/s" in out
    assert "\r" in out  # refreshed in place
    # verbose=2 stays plain lines even on a terminal
    stream = FakeTTY()
    p = EpochProgress(2, 1, 10, stream=stream)
    p.begin(0)
    p.end(0, {"loss": 1.0}, 1.0)
    p.close()
    assert p.mode == "lines" and stream.getvalue() == "Epoch 1/1 - 1.00s - 10 samples/s - loss: 1.0000\n"


def test_bar_refresh_thread_runs_while_epoch_runs():
    pytest.importorskip("tqdm")
    import time

    stream = FakeTTY()
    p = EpochProgress(1, 1, 10, stream=stream)
    p.refresh_seconds = 0.01
    p.begin(0)
    before = stream.getvalue().count("\r")
    time.sleep(0.1)  # the native loop would be running here, GIL released
    assert stream.getvalue().count("\r") > before
    p.end(0, {"loss": 1.0}, 0.1)
    p.close()
    assert p._ticker is None


def test_fit_on_a_terminal_uses_the_bar(monkeypatch):
    pytest.importorskip("tqdm")
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)
    make().fit(X, Y, epochs=2, verbose=1, initial_epoch=0)
    out = stream.getvalue()
    assert "2/2" in out and "loss=" in out and "samples/s" in out


def test_without_tqdm_falls_back_to_lines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    stream = FakeTTY()
    p = EpochProgress(1, 2, 10, stream=stream)
    assert p.mode == "lines"
    p.begin(0)
    p.end(0, {"loss": 0.5}, 0.5)
    p.close()
    assert stream.getvalue().startswith("Epoch 1/2 - 0.50s") and "\r" not in stream.getvalue()


def test_bar_is_closed_when_fit_fails(monkeypatch):
    pytest.importorskip("tqdm")
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)

    class Boom(fm.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make().fit(X, Y, epochs=3, verbose=1, callbacks=[Boom()])
    assert stream.getvalue().endswith("\n")  # tqdm closed the bar


def test_import_fastmlp_does_not_import_tqdm_or_sklearn():
    import subprocess

    code = "import sys, fastmlp; print('tqdm' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_bar_moves_within_the_epoch_through_an_adaptive_batch_hook(monkeypatch):
    pytest.importorskip("tqdm")
    seen = []
    real = EpochProgress.batch
    monkeypatch.setattr(EpochProgress, "batch", lambda self, b, logs: seen.append((b, sorted(logs))) or
                        real(self, b, logs))
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)
    live = make()
    live.fit(X, Y, epochs=2, batch_size=8, verbose=1)  # 12 steps per epoch
    # First epoch: speed unknown, ten updates at most (every 2 batches). The epoch took far less than
    # update_seconds, so the second runs uninterrupted and the bar moves once, at its end.
    assert [b for b, _ in seen] == [1, 3, 5, 7, 9, 11, 11]
    assert all(keys == ["accuracy", "loss"] for _, keys in seen)
    out = stream.getvalue()
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and "96/96" in out and "samples/s" in out
    quiet = make()
    quiet.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(live.get_weights(), quiet.get_weights()))


@pytest.mark.parametrize("seconds, interval", [(1.0, 25), (0.01, 100), (1000.0, 1)])
def test_update_interval_targets_update_seconds(seconds, interval):
    pytest.importorskip("tqdm")
    p = EpochProgress(1, 3, 1000, stream=FakeTTY(), batch_size=10)  # 100 steps
    assert p.batch_interval == 10
    p.update_seconds = 0.25
    p.begin(0)
    p.end(0, {"loss": 1.0}, seconds)
    p.close()
    assert p.batch_interval == interval


def test_a_terminal_of_width_zero_gets_plain_lines():
    import os
    import struct

    fcntl, pty, termios = (pytest.importorskip(m) for m in ("fcntl", "pty", "termios"))

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
            assert EpochProgress(1, 2, 10, stream=stream).mode == "lines"
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            expected = "bar" if EpochProgress._tqdm() is not None else "lines"
            assert EpochProgress(1, 2, 10, stream=stream).mode == expected
    finally:
        os.close(master)
        os.close(slave)

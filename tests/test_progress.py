"""fit's progress output, in Keras's format: verbose 0/1/2, a live bar per epoch on a terminal, plain
final lines off one, every line within the terminal's width."""
import io
import re
import sys

import numpy as np
import pytest

import fastmlp as fm
from fastmlp import progress
from fastmlp.progress import EpochProgress, format_per_step, format_seconds, format_value, layout

RNG = np.random.default_rng(0)
X = RNG.normal(size=(96, 3)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
LOGS = {"loss": 0.41204, "accuracy": 0.875, "val_loss": 1.23456e-4, "val_accuracy": 1.0,
        "val_mean_absolute_error": 12.5}


def make():
    m = fm.Sequential([fm.Dense(4, "relu", input_dim=3), fm.Dense(2, "softmax")], seed=0)
    m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"], device="cpu")
    return m


class FakeTTY(io.StringIO):
    encoding = "utf-8"

    def isatty(self):
        return True


def screen_lines(text):
    """Every piece of text a terminal shows on one row: split at newlines, carriage returns and
    cursor movements, colors removed."""
    return [piece for piece in re.split(r"\r|\n|\x1b\[\d*[AJK]", text)
            for piece in [ANSI.sub("", piece)] if piece]


def items(logs):
    return [f"{k}: {format_value(v)}" for k, v in logs.items()]


@pytest.mark.parametrize("verbose", [1, 2])
def test_non_tty_output_is_plain_lines(capsys, monkeypatch, verbose):
    monkeypatch.setenv("COLUMNS", "200")
    make().fit(X, Y, epochs=3, verbose=verbose, validation_data=(X[:20], Y[:20]))  # 3 steps of 32
    out = capsys.readouterr().out
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    # fit's first line: the optimizer as it runs (PyTorch's defaults, and Keras's where they differ)
    assert lines[0].startswith("Optimizer: Adam(lr=0.001") and "Keras's Adam defaults differ" in lines[0]
    lines = lines[1:]
    assert len(lines) == 6  # a header when the epoch begins, one line when it ends
    for i in range(3):
        assert lines[2 * i] == f"Epoch {i + 1}/3"
        line = lines[2 * i + 1]
        pattern = r"3/3 ━{20} \d+s \d+(µs|ms|s)/step - " if verbose == 1 else r"3/3 - \d+s - \d+(µs|ms|s)/step - "
        assert re.match(pattern, line), line
        assert re.search(r" - loss: \d\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d\.\d{4} - val_accuracy: \d\.\d{4}$",
                         line), line


def test_verbose_0_is_silent(capsys):
    make().fit(X, Y, epochs=2, verbose=0)
    assert capsys.readouterr().out == ""


def test_epoch_line_format():
    logs = {"loss": 0.41204, "accuracy": 0.875}
    p = EpochProgress(2, 10, 60000, stream=io.StringIO(), batch_size=128, width=200)  # 469 steps
    assert p.epoch_lines(logs, 2.8) == ["469/469 - 3s - 6ms/step - loss: 0.4120 - accuracy: 0.8750"]
    p = EpochProgress(1, 10, 60000, stream=io.StringIO(), batch_size=128, width=200)
    assert p.mode == "final"
    assert p.epoch_lines(logs, 2.8) == ["469/469 ━━━━━━━━━━━━━━━━━━━━ 3s 6ms/step - loss: 0.4120 - accuracy: 0.8750"]
    assert p.epoch_lines(logs, 0.3) == ["469/469 ━━━━━━━━━━━━━━━━━━━━ 0s 640µs/step - loss: 0.4120 - accuracy: 0.8750"]
    # a stream that cannot encode the bar's characters gets ASCII
    ascii_stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    p = EpochProgress(1, 10, 60000, stream=ascii_stream, batch_size=128, width=200)
    assert p.epoch_lines(logs, 0.3) == ["469/469 ==================== 0s 640us/step - loss: 0.4120 - accuracy: 0.8750"]


@pytest.mark.parametrize("value, text", [(0.22, "0.2200"), (12.5, "12.5000"), (0, "0.0000"), (-0.5, "-0.5000"),
                                         (1.23456e-4, "1.2346e-04"), (1e-3, "1.0000e-03"), (float("nan"), "nan"),
                                         (float("inf"), "inf"), (np.float32(0.75), "0.7500"), ("n/a", "n/a")])
def test_values_as_keras_prints_them(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("seconds, text", [(0.00004, "40µs/step"), (0.0009996, "1ms/step"), (0.006, "6ms/step"),
                                           (0.9999, "1s/step"), (2.4, "2s/step"), (0, "0µs/step")])
def test_time_per_step_units(seconds, text):
    assert format_per_step(seconds) == text


@pytest.mark.parametrize("seconds, text", [(0.2, "0s"), (2.8, "3s"), (65, "1:05"), (3725, "1:02:05")])
def test_durations(seconds, text):
    assert format_seconds(seconds) == text


def test_tty_draws_a_live_bar_with_metrics():
    stream = FakeTTY()
    p = EpochProgress(1, 3, 500, stream=stream, width=120)  # batch_size 1: 500 steps
    assert p.mode == "bar"
    for e in range(3):
        p.begin(e)
        p.batch(249, {"loss": 0.75})
        p.end(e, {"loss": 0.25, "accuracy": 0.5}, 0.1)
    p.close()
    out = stream.getvalue()
    assert [line for line in out.split("\n") if line.startswith("Epoch")] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    assert "250/500" in out and "loss: 0.7500" in out  # the running state
    assert "\r" in out and "\x1b[J" in out  # redrawn in place
    final = ANSI.sub("", out.split("\n")[-2].split("\r")[-1].replace("\x1b[J", ""))
    assert final == "500/500 ━━━━━━━━━━━━━━━━━━━━ 0s 200µs/step - loss: 0.2500 - accuracy: 0.5000"
    # verbose=2 stays plain lines even on a terminal
    stream = FakeTTY()
    p = EpochProgress(2, 1, 10, stream=stream)
    p.begin(0)
    assert stream.getvalue() == "Epoch 1/1\n"  # at once, before the epoch has run
    p.end(0, {"loss": 1.0}, 1.0)
    p.close()
    assert p.mode == "lines" and stream.getvalue() == "Epoch 1/1\n10/10 - 1s - 100ms/step - loss: 1.0000\n"


def test_bar_refresh_thread_counts_down_while_epoch_runs(monkeypatch):
    import time

    now = [100.0]
    monkeypatch.setattr(progress, "_clock", lambda: now[0])
    stream = FakeTTY()
    p = EpochProgress(1, 1, 10, stream=stream, width=80)  # 10 steps
    p.refresh_seconds = 0.01
    p.begin(0)
    now[0] += 2.0
    p.batch(1, {"loss": 0.5})  # 2 steps in 2 s: 1 s/step, 8 s left
    assert "2/10" in stream.getvalue() and "8s 1s/step" in stream.getvalue()
    now[0] += 3.0  # the native loop would be running here, GIL released
    deadline = time.monotonic() + 5
    while "5s 1s/step" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "5s 1s/step" in stream.getvalue()
    drawn = stream.getvalue()
    time.sleep(0.05)
    assert stream.getvalue() == drawn  # unchanged text is not redrawn
    p.end(0, {"loss": 1.0}, 10.0)
    p.close()
    assert p._ticker is None
    assert stream.getvalue().endswith("\r\x1b[J\x1b[1m10/10\x1b[0m \x1b[32m━━━━━━━━━━━━━━━━━━━━\x1b[0m 10s 1s/step - "
                                      "loss: 1.0000\n")  # bold steps, a green bar, as Keras draws it


def test_fit_on_a_terminal_uses_the_bar(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)
    make().fit(X, Y, epochs=2, verbose=1, initial_epoch=0)
    out = stream.getvalue()
    assert "Epoch 1/2\n" in out and "Epoch 2/2\n" in out and "3/3" in out and "loss: " in out and "/step" in out


def test_the_bar_needs_no_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    stream = FakeTTY()
    p = EpochProgress(1, 2, 10, stream=stream, width=80)
    assert p.mode == "bar"
    p.begin(0)
    p.end(0, {"loss": 0.5}, 0.5)
    p.close()
    assert stream.getvalue().startswith("Epoch 1/2\n") and "10/10" in stream.getvalue()


def test_bar_is_closed_when_fit_fails(monkeypatch):
    stream = FakeTTY()
    monkeypatch.setattr(sys, "stdout", stream)

    class Boom(fm.callbacks.Callback):
        batch_interval = 1

        def on_train_batch_end(self, batch, logs=None):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        make().fit(X, Y, epochs=3, verbose=1, callbacks=[Boom()])
    assert stream.getvalue().endswith("\n")  # the live bar was left on its own line


def test_import_fastmlp_does_not_import_tqdm_or_sklearn():
    import subprocess

    code = ("import sys, io, numpy as np, fastmlp as fm\n"
            "m = fm.Sequential([fm.Dense(2, 'softmax', input_dim=3)])\n"
            "m.compile('adam', 'sparse_categorical_crossentropy')\n"
            "m.fit(np.zeros((4, 3), np.float32), np.zeros(4, np.int64), verbose=1)\n"
            "print('tqdm' in sys.modules, 'sklearn' in sys.modules, file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stderr.strip() == "False False"


def test_bar_moves_within_the_epoch_through_an_adaptive_batch_hook(monkeypatch):
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
    assert "Epoch 1/2" in out and "Epoch 2/2" in out and " 4/12" in out and "12/12" in out and "/step" in out
    quiet = make()
    quiet.fit(X, Y, epochs=2, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(live.get_weights(), quiet.get_weights()))


@pytest.mark.parametrize("seconds, interval", [(1.0, 25), (0.01, 100), (1000.0, 1)])
def test_update_interval_targets_update_seconds(seconds, interval):
    p = EpochProgress(1, 3, 1000, stream=FakeTTY(), batch_size=10)  # 100 steps
    assert p.batch_interval == 10
    p.update_seconds = 0.25
    p.begin(0)
    p.end(0, {"loss": 1.0}, seconds)
    p.close()
    assert p.batch_interval == interval


def test_a_terminal_of_width_zero_gets_plain_lines(monkeypatch):
    import os
    import struct

    fcntl, pty, termios = (pytest.importorskip(m) for m in ("fcntl", "pty", "termios"))

    master, slave = pty.openpty()
    try:
        with os.fdopen(slave, "w", closefd=False) as stream:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
            assert EpochProgress(1, 2, 10, stream=stream).mode == "final"
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            p = EpochProgress(1, 2, 10, stream=stream)
            assert p.mode == "bar"
            monkeypatch.delenv("COLUMNS", raising=False)
            assert p.width() == 120
            monkeypatch.setenv("COLUMNS", "50")  # COLUMNS wins, as shutil.get_terminal_size reads it
            assert p.width() == 50
    finally:
        os.close(master)
        os.close(slave)


def test_dumb_terminal_and_no_color(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert EpochProgress(1, 2, 10, stream=FakeTTY()).mode == "final"
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("NO_COLOR", "1")
    stream = FakeTTY()
    p = EpochProgress(1, 1, 10, stream=stream, width=80)
    p.begin(0)
    p.batch(4, {"loss": 0.5})
    p.end(0, {"loss": 0.5}, 1.0)
    p.close()
    out = stream.getvalue()
    assert not re.search(r"\x1b\[[0-9;]*m", out)  # cursor movements, no colors
    assert "5/10 ━━━━━━━━━━──────────" in out  # done and left to do told apart without color


# ------------------------------------------------------------------------------- terminal widths
def check_fits(text, width, logs):
    shown = screen_lines(text)
    assert shown, text
    assert all(len(line) <= width for line in shown), [line for line in shown if len(line) > width]
    for item in items(logs):  # every value in full, on one row
        assert any(item in line for line in shown), (item, shown)


@pytest.mark.parametrize("width", [40, 80, 200])
@pytest.mark.parametrize("verbose, tty", [(1, True), (1, False), (2, False), (2, True)])
def test_every_line_fits_the_width_and_no_value_is_cut(width, verbose, tty):
    stream = FakeTTY() if tty else io.StringIO()
    p = EpochProgress(verbose, 20, 60000, stream=stream, batch_size=128, width=width)
    assert p.mode == {(1, True): "bar", (1, False): "final"}.get((verbose, tty), "lines")
    for epoch in range(2):
        p.begin(epoch)
        for b in (0, 46, 233, 468):
            p.batch(b, {"loss": 0.5 / (b + 1), "accuracy": b / 469})
        p.end(epoch, LOGS, 2.8)
    p.close()
    out = stream.getvalue()
    check_fits(out, width, LOGS)
    if not tty:
        assert "\r" not in out and "\x1b" not in out
        assert out.splitlines()[0] == "Epoch 1/20"
    finals = [line for line in screen_lines(out) if line.startswith("469/469") and "3s" in line]
    assert len(finals) == 2  # each epoch's final line
    if width == 200:  # room for everything: one line per epoch, the full bar
        assert all("val_mean_absolute_error: 12.5000" in line for line in finals)
        if verbose == 1:
            assert all(line.startswith("469/469 ━━━━━━━━━━━━━━━━━━━━ 3s 6ms/step - loss: 0.4120") for line in finals)
    else:  # wrapped, indented (under the bar when there is room)
        assert re.search(r"^ +- .*val_mean_absolute_error: 12\.5000$", ANSI.sub("", out), re.M)


@pytest.mark.parametrize("width", [40, 80, 200])
def test_fit_output_fits_the_width(capsys, monkeypatch, width):
    monkeypatch.setenv("COLUMNS", str(width))
    history = make().fit(X, Y, epochs=2, verbose=1, validation_data=(X[:20], Y[:20]))
    out = capsys.readouterr().out
    check_fits(out, width, {k: v[-1] for k, v in history.history.items()})


@pytest.mark.parametrize("width", [40, 80, 200])
def test_the_bar_shrinks_before_items_wrap(width):
    head, tail = "469/469", [(" ", "3s 6ms/step")] + [(" - ", item) for item in items(LOGS)]
    lines, bar = layout(head, tail, width, bar=True)
    assert all(len(line) <= width for line in lines)
    if len(lines) > 1:  # the next item did not fit even beside the narrowest bar
        first_next = lines[1].strip()
        assert len(lines[0]) - bar + progress.MIN_BAR_WIDTH + len(" ") + len(first_next) > width
        assert bar == progress.BAR_WIDTH or len(lines[0]) == width  # the bar took what was left
    else:
        assert bar == progress.BAR_WIDTH


def test_very_narrow_terminal_never_cuts_a_value():
    lines, bar = layout("469/469", [(" ", "3s 6ms/step"), (" - ", "val_accuracy: 0.9700")], 12, bar=True)
    assert lines == ["469/469 \0\0\0\0", "3s 6ms/step", "- val_accuracy: 0.9700"] and bar == 4


def test_a_resized_terminal_is_redrawn_from_the_bar_s_first_row():
    width = [200]
    stream = FakeTTY()
    p = EpochProgress(1, 1, 60000, stream=stream, batch_size=128, width=lambda: width[0])
    p.begin(0)
    p.batch(9, LOGS)  # one row of about 140 characters at 200 columns
    (shown,) = p._drawn_widths
    assert 120 < shown <= 200
    width[0] = 40  # the terminal wraps that row onto 4 rows of 40
    start = len(stream.getvalue())
    p.batch(19, LOGS)
    redraw = stream.getvalue()[start:]
    assert redraw.startswith(f"\r\x1b[{-(-shown // 40) - 1}A\x1b[J")
    assert all(len(line) <= 40 for line in screen_lines(redraw))
    p.end(0, LOGS, 2.8)
    p.close()

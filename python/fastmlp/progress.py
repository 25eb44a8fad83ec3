"""Per-epoch progress output for fit, in Keras's format.

verbose=0  silent.
verbose=1  "Epoch 3/10" when the epoch begins, then a bar over the epoch's steps (batches):

               Epoch 3/10
               469/469 ━━━━━━━━━━━━━━━━━━━━ 3s 6ms/step - loss: 0.2200 - accuracy: 0.9300 - val_loss: ...

           On a terminal the bar is live: the steps done, the estimated time left and the time per
           step, and the running loss and metric; when the epoch ends it shows the epoch's time and
           metrics (with val_*) and stays. It advances through a batch hook (Callback.batch_interval)
           whose interval adapts to the measured speed, so the native loop returns to Python about
           every `update_seconds` (the first epoch: ten times); an epoch shorter than that runs
           uninterrupted. Training is bit-identical either way. While the native loop runs it
           releases the GIL and a small thread refreshes the time left.
           Off a terminal (a log file, a pipe, CI, TERM=dumb) only each epoch's final line is
           printed, with no carriage return or control sequence.
verbose=2  "Epoch 3/10" when the epoch begins, one line when it ends:
               469/469 - 3s - 6ms/step - loss: 0.2200 - accuracy: 0.9300

Values have 4 decimals (4 significant digits in e-notation below 1e-3, as Keras prints them);
the time per step is in s, ms or µs. Every line fits the width of the terminal (COLUMNS when set,
as shutil.get_terminal_size reads it): the bar is shortened first (down to 4 characters), then
the ` - name: value` items wrap onto the following lines, indented; no value is ever cut.
"""
from __future__ import annotations

import codecs
import math
import os
import shutil
import sys
import threading
import time

from .callbacks import Callback

BAR_WIDTH = 20  # Keras's bar
MIN_BAR_WIDTH = 4  # narrower than this, the bar is left out
_clock = time.perf_counter


def _is_tty(stream) -> bool:
    try:
        if not stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
    if os.environ.get("TERM") == "dumb":  # cannot move the cursor
        return False
    try:  # a terminal of width 0 (e.g. a pseudo-terminal nobody sized) cannot show a bar
        return os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no file descriptor (a test's fake terminal)
        return True


def _encodes(stream, text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        codecs.lookup(encoding)
        text.encode(encoding)
        return True
    except (LookupError, UnicodeError):
        return False


def format_value(v) -> str:
    """A metric as Keras prints it: 4 decimals, e-notation for magnitudes up to 1e-3 (not 0)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return str(f)
    return f"{f:.4f}" if f == 0 or abs(f) > 1e-3 else f"{f:.4e}"


def format_seconds(seconds: float) -> str:
    """Keras's durations: 3s, 1:05, 1:01:05."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_per_step(seconds: float, micro: str = "µ") -> str:
    """Time per step: 2s/step, 6ms/step or 850µs/step (rounded, the unit chosen after rounding)."""
    seconds = max(0.0, float(seconds))
    if seconds * 1e3 >= 999.5:
        return f"{seconds:.0f}s/step"
    if seconds * 1e6 >= 999.5:
        return f"{seconds * 1e3:.0f}ms/step"
    return f"{seconds * 1e6:.0f}{micro}s/step"


def _items(logs: dict) -> list:
    return [f"{k}: {format_value(v)}" for k, v in (logs or {}).items()]


def layout(head: str, tail: list, width: int, bar: bool) -> tuple:
    """Lines of at most `width` characters (unless one piece alone is wider: nothing is cut).

    head (e.g. "12/469") starts the first line, followed by the bar when `bar`, then the pieces
    of `tail`, each (separator, text) with separator " " or " - ". The bar takes what is left of
    the first line, BAR_WIDTH at most: it shrinks (down to MIN_BAR_WIDTH) before a piece moves to
    the next line. Pieces that do not fit go on following lines, indented under the bar (less when
    the widest piece needs the room); " - " pieces start those lines with "- ". Returns
    (lines, bar_width); the first line has bar_width placeholder characters "\\0" where the bar
    goes (none when bar_width is 0)."""
    width = max(1, int(width))
    bar_room = 1 + MIN_BAR_WIDTH if bar and len(head) + 1 + MIN_BAR_WIDTH <= width else 0
    used = len(head) + bar_room
    n_first = 0
    for sep, text in tail:
        if used + len(sep) + len(text) > width:
            break
        used += len(sep) + len(text)
        n_first += 1
    bar_width = min(BAR_WIDTH, MIN_BAR_WIDTH + width - used) if bar_room else 0
    first = head + (" " + "\0" * bar_width if bar_width else "") + "".join(s + t for s, t in tail[:n_first])
    lines = [first]
    starts = [("- " if sep == " - " else "") + text for sep, text in tail[n_first:]]
    # one indent for all following lines: under the bar, less when the widest piece needs the room
    indent = " " * max(0, min(len(head) + 1, width - max(map(len, starts), default=0)))
    line = None
    for (sep, text), start in zip(tail[n_first:], starts):
        if line is not None and len(line) + len(sep) + len(text) <= width:
            line += sep + text
            continue
        if line is not None:
            lines.append(line)
        line = indent + start
    if line is not None:
        lines.append(line)
    return lines, bar_width


class EpochProgress:
    """Used by Sequential.fit: begin(epoch) before, end(epoch, logs, seconds) after each epoch,
    batch(batch, logs) from the batch hook (hook()), close() when training ends (also on errors).
    `mode` is 'silent', 'bar' (verbose=1 on a terminal: live), 'final' (verbose=1 elsewhere: the
    bar's final line per epoch) or 'lines' (verbose=2). `width`, an int or a callable returning
    one, overrides the terminal's width."""

    refresh_seconds = 0.5  # time-left refresh while the native loop runs
    update_seconds = 0.25  # target time between returns of the native loop for the bar

    def __init__(self, verbose: int, epochs: int, samples: int, stream=None, batch_size: int = 1, width=None):
        self.verbose = int(verbose)
        self.epochs = int(epochs)
        self.samples = int(samples)
        self.stream = stream if stream is not None else sys.stdout
        self._batch_size = max(1, int(batch_size))
        self.steps = max(1, -(-self.samples // self._batch_size))
        # Batches per bar update in the coming epoch; the first epoch's speed is unknown: ten updates.
        self.batch_interval = max(1, -(-self.steps // 10))
        self._width = width
        self._ticker = None
        self._stop = None
        self._lock = threading.Lock()
        self._live = False  # a live bar is on screen (bar mode, between begin and end)
        self._drawn = []  # the lines of the live bar now on screen
        self._drawn_widths = []  # and their widths in columns (without the color codes)
        self._started = 0.0
        self._current = 0  # steps done in this epoch, as last reported
        self._at_update = 0.0  # seconds into the epoch at that report
        self._logs = {}
        self._per_step = None  # the last epoch's seconds per step: first estimate of the next
        if self.verbose <= 0:
            self.mode = "silent"
        elif self.verbose == 1:
            self.mode = "bar" if _is_tty(self.stream) else "final"
        else:
            self.mode = "lines"
        self._color = self.mode == "bar" and not os.environ.get("NO_COLOR")
        fancy = _encodes(self.stream, "━─µ")
        self._done_char = "━" if fancy else "="
        self._todo_char = ("━" if self._color else "─") if fancy else "."
        self._micro = "µ" if fancy else "u"

    # ------------------------------------------------------------------ formatting
    def width(self) -> int:
        """Columns available: the `width` given, else COLUMNS, else the terminal's (80 off one)."""
        w = self._width() if callable(self._width) else self._width
        if w is None:
            env = os.environ.get("COLUMNS", "")
            if env.isdigit() and int(env) > 0:
                w = int(env)
            elif self.mode == "bar":
                try:
                    w = os.get_terminal_size(self.stream.fileno()).columns
                except (AttributeError, ValueError, OSError):
                    w = 0
            if not w:
                w = shutil.get_terminal_size().columns
        return max(1, int(w))

    def _bar_lines(self, current: int, logs: dict, seconds: float, per_step, final: bool, width: int) -> tuple:
        digits = len(str(self.steps))
        head = f"{current:>{digits}}/{self.steps}"
        tail = []
        if per_step is not None:
            shown = seconds if final else max(0.0, per_step * self.steps - seconds)  # time taken, or left
            tail.append((" ", f"{format_seconds(shown)} {format_per_step(per_step, self._micro)}"))
        tail += [(" - ", item) for item in _items(logs)]
        plain, bar_width = layout(head, tail, width, bar=True)
        lines, visible = list(plain), [len(line) for line in plain]
        done = bar_width if final else min(bar_width, bar_width * current // self.steps)
        if self._color:
            bar = (f"\x1b[32m{self._done_char * done}\x1b[0m" if done else "") \
                + (f"\x1b[37m{self._todo_char * (bar_width - done)}\x1b[0m" if done < bar_width else "")
            lines[0] = f"\x1b[1m{head}\x1b[0m" + lines[0][len(head):]
        else:
            bar = self._done_char * done + self._todo_char * (bar_width - done)
        if bar_width:
            lines[0] = lines[0].replace("\0" * bar_width, bar, 1)
        return lines, visible

    def epoch_lines(self, logs: dict, seconds: float, width=None) -> list:
        """The final line(s) of an epoch in this mode (verbose=1: the full bar; 2: Keras's summary)."""
        width = self.width() if width is None else width
        per_step = seconds / self.steps
        if self.mode == "lines":
            tail = [(" - ", format_seconds(seconds)), (" - ", format_per_step(per_step, self._micro))]
            tail += [(" - ", item) for item in _items(logs)]
            return layout(f"{self.steps}/{self.steps}", tail, width, bar=False)[0]
        return self._bar_lines(self.steps, logs, seconds, per_step, True, width)[0]

    def _write(self, text: str):
        self.stream.write(text)
        self.stream.flush()

    # ------------------------------------------------------------------ live bar
    def _draw(self, final: bool = False, logs=None, seconds=None):
        """Redraws the live bar in place (holding the lock): back to its first line, clear, write."""
        width = self.width()
        if final:
            lines, visible = self._bar_lines(self.steps, logs, seconds, seconds / self.steps, True, width)
        else:
            elapsed = _clock() - self._started
            per_step = self._at_update / self._current if self._current else self._per_step
            lines, visible = self._bar_lines(self._current, self._logs, elapsed, per_step, False, width)
        if not final and lines == self._drawn:
            return
        out = ""
        if self._drawn:  # rows the old lines take now, at today's width (the terminal may have been resized)
            rows = sum(max(1, -(-n // width)) for n in self._drawn_widths)
            out = "\r" + (f"\x1b[{rows - 1}A" if rows > 1 else "") + "\x1b[J"
        out += "\n".join(lines)
        if final:
            out += "\n"
            self._drawn, self._drawn_widths = [], []
        else:
            self._drawn, self._drawn_widths = lines, visible
        self._write(out)

    def _tick(self, stop: threading.Event):
        while not stop.wait(self.refresh_seconds):
            with self._lock:
                if self._live:
                    self._draw()

    def header(self, text: str):
        """Lines before the first epoch (fit's resolved optimizer settings), unless silent:
        wrapped at the width between words, as the epoch lines are (a word is never cut)."""
        if self.mode != "silent":
            import textwrap

            lines = textwrap.wrap(text, width=self.width(), subsequent_indent="    ", break_long_words=False,
                                  break_on_hyphens=False)
            self._write("\n".join(lines) + "\n")

    def begin(self, epoch: int):
        if self.mode == "silent":
            return
        self._write(f"Epoch {epoch + 1}/{self.epochs}\n")
        if self.mode != "bar":
            return
        with self._lock:
            self._started = _clock()
            self._current, self._at_update, self._logs = 0, 0.0, {}
            self._live, self._drawn, self._drawn_widths = True, [], []
            self._draw()
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(self._stop,), daemon=True,
                                        name="fastmlp-progress")
        self._ticker.start()

    def batch(self, batch: int, logs: dict):
        """After batch `batch` (0-based) of the epoch: the bar moves to the steps trained so far."""
        if self.mode != "bar" or not self._live:
            return
        with self._lock:
            self._current = min(batch + 1, self.steps)
            self._at_update = _clock() - self._started
            self._logs = dict(logs)
            self._draw()

    def _stop_ticker(self):
        if self._ticker is not None:
            self._stop.set()
            self._ticker.join()
            self._ticker = None

    def end(self, epoch: int, logs: dict, seconds: float):
        if self.mode == "silent":
            return
        if self.mode != "bar":
            self._write("\n".join(self.epoch_lines(logs, seconds)) + "\n")
            return
        self._stop_ticker()
        if seconds > 0:  # next epoch: return to Python about every update_seconds
            self.batch_interval = max(1, min(self.steps, int(self.update_seconds * self.steps / seconds)))
        self._per_step = seconds / self.steps
        with self._lock:
            if self._live:
                self._draw(final=True, logs=logs, seconds=seconds)
                self._live = False

    def hook(self):
        """The callback fit adds in bar mode: it moves the bar every batch_interval batches."""
        return _BarUpdates(self)

    def close(self):
        """Stops the refresh thread; a bar left live (an error, Ctrl-C) stays as it was, on its own line."""
        self._stop_ticker()
        with self._lock:
            if self._live:
                self._live = False
                self._drawn, self._drawn_widths = [], []
                self._write("\n")


class _BarUpdates(Callback):
    """Batch hook of the live bar; its interval is the progress object's current one."""

    def __init__(self, progress: EpochProgress):
        super().__init__()
        self.progress = progress

    @property
    def batch_interval(self):
        return self.progress.batch_interval

    def on_train_batch_end(self, batch, logs=None):
        self.progress.batch(batch, logs or {})


__all__ = ["EpochProgress", "layout", "format_value", "format_seconds", "format_per_step"]

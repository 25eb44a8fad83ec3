"""Learning-rate schedules, evaluated natively at every optimizer step (t counts updates from 0).

StepDecay:        lr * gamma ** floor(t / step_size)
ExponentialDecay: lr * decay_rate ** (t / decay_steps)   (floor of the exponent if staircase)
InverseTimeDecay: lr / (1 + decay_rate * t / decay_steps)  (the lectures' alpha / (1 + delta*t))
CosineDecay:      min_lr + (lr - min_lr) * (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2
Any schedule (or a constant) can get `warmup_steps`: the rate is scaled by (t + 1) / warmup_steps
for t < warmup_steps, a linear ramp up to the schedule.
Pass a schedule as an optimizer's lr: fm.optimizers.SGD(lr=fm.schedules.InverseTimeDecay(0.1, 1e-3)).
"""
from __future__ import annotations

import math

from . import _core
from ._enums import SCHEDULE_IDS


def _positive(name, v):
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a positive number, got {v}")
    return v


class Schedule:
    kind = "constant"

    def __init__(self, initial_lr: float, warmup_steps: int = 0):
        self.initial_lr = _positive("initial_lr", initial_lr)
        if int(warmup_steps) < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.decay_steps, self.rate, self.min_lr, self.staircase = 1.0, 1.0, 0.0, False

    def native(self):
        s = _core.Schedule()
        s.kind = SCHEDULE_IDS[self.kind]
        s.decay_steps, s.rate, s.min_lr = self.decay_steps, self.rate, self.min_lr
        s.staircase, s.warmup_steps = self.staircase, self.warmup_steps
        return s

    def __call__(self, step: int) -> float:
        """Learning rate of update `step` (0-based), computed by the same native code as training."""
        return _core.scheduled_lr(self.native(), self.initial_lr, int(step))

    def get_config(self) -> dict:
        return {"kind": self.kind, "initial_lr": self.initial_lr, "warmup_steps": self.warmup_steps,
                "decay_steps": self.decay_steps, "rate": self.rate, "min_lr": self.min_lr,
                "staircase": self.staircase}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class Constant(Schedule):
    kind = "constant"


class StepDecay(Schedule):
    kind = "step"

    def __init__(self, initial_lr, step_size, gamma=0.1, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("step_size", step_size)
        self.rate = _positive("gamma", gamma)


class ExponentialDecay(Schedule):
    kind = "exponential"

    def __init__(self, initial_lr, decay_steps, decay_rate, staircase=False, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.rate = _positive("decay_rate", decay_rate)
        self.staircase = bool(staircase)


class InverseTimeDecay(Schedule):
    kind = "inverse_time"

    def __init__(self, initial_lr, decay_rate, decay_steps=1, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.rate = float(decay_rate)
        if not (math.isfinite(self.rate) and self.rate >= 0):
            raise ValueError(f"decay_rate must be >= 0, got {decay_rate}")


class CosineDecay(Schedule):
    kind = "cosine"

    def __init__(self, initial_lr, decay_steps, min_lr=0.0, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.min_lr = float(min_lr)
        if not (0 <= self.min_lr <= self.initial_lr):
            raise ValueError(f"min_lr must be in [0, initial_lr], got {min_lr}")


def from_config(config: dict) -> Schedule:
    cls = {c.kind: c for c in (Constant, StepDecay, ExponentialDecay, InverseTimeDecay, CosineDecay)}[config["kind"]]
    s = cls.__new__(cls)
    Schedule.__init__(s, config["initial_lr"], config["warmup_steps"])
    s.decay_steps, s.rate = config["decay_steps"], config["rate"]
    s.min_lr, s.staircase = config["min_lr"], config["staircase"]
    return s


__all__ = ["Schedule", "Constant", "StepDecay", "ExponentialDecay", "InverseTimeDecay", "CosineDecay"]

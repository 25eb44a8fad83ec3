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

import inspect

from . import _core
from ._enums import SCHEDULE_IDS
from ._validation import boolean, config_class, non_negative_int, real_number


def _positive(name, v):
    v = real_number(v, name)  # rejects strings, bool, NaN/Inf and ints too large for a float
    if not v > 0:
        raise ValueError(f"{name} must be a positive number, got {v}")
    return v


class Schedule:
    kind = "constant"
    _config_args: dict = {}  # constructor argument -> get_config field, besides initial_lr and warmup_steps

    def __init__(self, initial_lr: float, warmup_steps: int = 0):
        # lr = 0 is allowed, as in PyTorch and Keras (e.g. a warm-up that starts from 0); negative is not
        self.initial_lr = real_number(initial_lr, "initial_lr", low=0.0)
        self.warmup_steps = non_negative_int(warmup_steps, "warmup_steps")  # int64_t natively
        self.decay_steps, self.rate, self.min_lr, self.staircase = 1.0, 1.0, 0.0, False

    def native(self):
        s = _core.Schedule()
        s.kind = SCHEDULE_IDS[self.kind]
        s.decay_steps, s.rate, s.min_lr = self.decay_steps, self.rate, self.min_lr
        s.staircase, s.warmup_steps = self.staircase, self.warmup_steps
        return s

    def __call__(self, step: int) -> float:
        """Learning rate of update `step` (0-based), computed by the same native code as training."""
        return _core.scheduled_lr(self.native(), self.initial_lr, non_negative_int(step, "step"))

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
    _config_args = {"step_size": "decay_steps", "gamma": "rate"}

    def __init__(self, initial_lr, step_size, gamma=0.1, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("step_size", step_size)
        self.rate = _positive("gamma", gamma)


class ExponentialDecay(Schedule):
    kind = "exponential"
    _config_args = {"decay_steps": "decay_steps", "decay_rate": "rate", "staircase": "staircase"}

    def __init__(self, initial_lr, decay_steps, decay_rate, staircase=False, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.rate = _positive("decay_rate", decay_rate)
        self.staircase = boolean(staircase, "staircase")


class InverseTimeDecay(Schedule):
    kind = "inverse_time"
    _config_args = {"decay_rate": "rate", "decay_steps": "decay_steps"}

    def __init__(self, initial_lr, decay_rate, decay_steps=1, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.rate = real_number(decay_rate, "decay_rate", low=0.0)


class CosineDecay(Schedule):
    kind = "cosine"
    _config_args = {"decay_steps": "decay_steps", "min_lr": "min_lr"}

    def __init__(self, initial_lr, decay_steps, min_lr=0.0, warmup_steps=0):
        super().__init__(initial_lr, warmup_steps)
        self.decay_steps = _positive("decay_steps", decay_steps)
        self.min_lr = real_number(min_lr, "min_lr")
        if not (0 <= self.min_lr <= self.initial_lr):
            raise ValueError(f"min_lr must be in [0, initial_lr], got {min_lr}")


_BY_KIND = {c.kind: c for c in (Constant, StepDecay, ExponentialDecay, InverseTimeDecay, CosineDecay)}
# Fields get_config writes for every kind, with the value they hold for kinds that do not use them.
_UNUSED_DEFAULTS = {"decay_steps": 1.0, "rate": 1.0, "min_lr": 0.0, "staircase": False}


def from_config(config: dict) -> Schedule:
    """The schedule that get_config described, built through its constructor so every field is
    checked as the constructor checks it. Unknown kinds or fields, missing ones, wrong types and
    out-of-range values raise ValueError naming the field (a saved file must not train with,
    say, min_lr = -0.1)."""
    cls = config_class(config, "schedule", "kind", _BY_KIND, {"kind", "initial_lr", "warmup_steps", *_UNUSED_DEFAULTS})
    args = {"initial_lr": "initial_lr", "warmup_steps": "warmup_steps", **cls._config_args}
    for field, default in _UNUSED_DEFAULTS.items():
        if field in config and field not in args.values():
            value = config[field]
            try:
                ok = (boolean(value, field) if isinstance(default, bool) else real_number(value, field)) == default
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"schedule config field {field!r} must be {default!r} for a {cls.kind!r} schedule "
                                 f"(which does not use it), got {value!r}")
    params = inspect.signature(cls.__init__).parameters
    kwargs = {}
    for arg, field in args.items():
        if field in config:
            kwargs[arg] = config[field]
        elif params[arg].default is inspect.Parameter.empty:
            raise ValueError(f"schedule config is missing the field {field!r}")
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the constructor names its argument; name the config field too
        msg = str(exc)
        for arg, field in args.items():
            if arg != field and msg.startswith(arg + " "):
                msg += f" (schedule config field {field!r})"
        raise ValueError(msg) from None


__all__ = ["Schedule", "Constant", "StepDecay", "ExponentialDecay", "InverseTimeDecay", "CosineDecay"]

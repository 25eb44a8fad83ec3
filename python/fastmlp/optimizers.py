"""Optimizers with torch.optim's update formulas, parameter names and defaults.

Each update is one fused native pass over the flat parameter buffer (csrc/fastmlp/math.h,
optimizer_update); docs/formulas.md writes every formula out. `weight_decay` adds
weight_decay * p to the gradient of every parameter, as PyTorch does (AdamW decouples it:
p *= 1 - lr * weight_decay before the Adam step). Layer regularizers are separate and act on
kernels only. `lr` may be a number or an fm.schedules schedule; `learning_rate` is an alias.
"""
from __future__ import annotations

import math

from . import _core
from ._enums import OPTIMIZER_IDS
from .schedules import Constant, Schedule


def _number(name, v, low=0.0, low_inclusive=True, high=None, high_inclusive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name} must be a finite number, got {v!r}")
    v = float(v)
    if (v < low) if low_inclusive else (v <= low):
        raise ValueError(f"{name} must be {'>=' if low_inclusive else '>'} {low}, got {v}")
    if high is not None and ((v > high) if high_inclusive else (v >= high)):
        raise ValueError(f"{name} must be {'<=' if high_inclusive else '<'} {high}, got {v}")
    return v


class Optimizer:
    kind = "sgd"
    _fields: tuple = ()

    def __init__(self, lr, learning_rate=None, weight_decay=0.0):
        if learning_rate is not None:
            lr = learning_rate
        if isinstance(lr, Schedule):
            self.schedule = lr
        else:
            self.schedule = Constant(_number("lr", lr, 0.0, False))
        self.weight_decay = _number("weight_decay", weight_decay)

    @property
    def lr(self) -> float:
        return self.schedule.initial_lr

    @lr.setter
    def lr(self, value):
        self.schedule.initial_lr = _number("lr", value, 0.0, False)

    def native(self):
        c = _core.OptimizerConfig()
        c.kind = OPTIMIZER_IDS[self.kind]
        c.lr = self.schedule.initial_lr
        c.schedule = self.schedule.native()
        c.weight_decay = self.weight_decay
        self._fill(c)
        return c

    def _fill(self, c):
        pass

    def get_config(self) -> dict:
        cfg = {"kind": self.kind, "schedule": self.schedule.get_config(), "weight_decay": self.weight_decay}
        cfg.update({f: getattr(self, f) for f in self._fields})
        return cfg

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class SGD(Optimizer):
    """p -= lr * g, with optional (Nesterov) momentum: buf = momentum*buf + (1-dampening)*g."""

    kind = "sgd"
    _fields = ("momentum", "dampening", "nesterov")

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, *, learning_rate=None):
        super().__init__(lr, learning_rate, weight_decay)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _fill(self, c):
        c.momentum, c.dampening, c.nesterov = self.momentum, self.dampening, self.nesterov


class Adagrad(Optimizer):
    """sum += g^2; p -= lr / (1 + (t-1)*lr_decay) * g / (sqrt(sum) + eps)."""

    kind = "adagrad"
    _fields = ("lr_decay", "initial_accumulator_value", "eps")

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 learning_rate=None):
        super().__init__(lr, learning_rate, weight_decay)
        self.lr_decay = _number("lr_decay", lr_decay)
        self.initial_accumulator_value = _number("initial_accumulator_value", initial_accumulator_value)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.lr_decay, c.initial_accumulator_value, c.eps = self.lr_decay, self.initial_accumulator_value, self.eps


class RMSprop(Optimizer):
    """v = alpha*v + (1-alpha)*g^2; p -= lr * g / (sqrt(v [- mean(g)^2 if centered]) + eps), with momentum."""

    kind = "rmsprop"
    _fields = ("alpha", "eps", "momentum", "centered")

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 learning_rate=None):
        super().__init__(lr, learning_rate, weight_decay)
        self.alpha = _number("alpha", alpha, high=1.0, high_inclusive=True)
        self.eps = _number("eps", eps)
        self.momentum = _number("momentum", momentum)
        self.centered = bool(centered)

    def _fill(self, c):
        c.alpha, c.eps, c.momentum, c.centered = self.alpha, self.eps, self.momentum, self.centered


class Adadelta(Optimizer):
    """v = rho*v + (1-rho)*g^2; d = sqrt(u+eps)/sqrt(v+eps)*g; u = rho*u + (1-rho)*d^2; p -= lr*d."""

    kind = "adadelta"
    _fields = ("rho", "eps")

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, learning_rate=None):
        super().__init__(lr, learning_rate, weight_decay)
        self.rho = _number("rho", rho, high=1.0, high_inclusive=True)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.rho, c.eps = self.rho, self.eps


class Adam(Optimizer):
    """m, v moving averages; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps); optional AMSGrad."""

    kind = "adam"
    _fields = ("betas", "eps", "amsgrad")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 learning_rate=None, beta_1=None, beta_2=None):
        super().__init__(lr, learning_rate, weight_decay)
        b1, b2 = betas
        b1 = b1 if beta_1 is None else beta_1
        b2 = b2 if beta_2 is None else beta_2
        self.betas = (_number("beta1", b1, high=1.0), _number("beta2", b2, high=1.0))
        self.eps = _number("eps", eps)
        self.amsgrad = bool(amsgrad)

    def _fill(self, c):
        c.beta1, c.beta2 = self.betas
        c.eps, c.amsgrad = self.eps, self.amsgrad

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg["betas"] = list(self.betas)
        return cfg


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay, then the Adam step."""

    kind = "adamw"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 learning_rate=None, beta_1=None, beta_2=None):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, learning_rate=learning_rate, beta_1=beta_1,
                         beta_2=beta_2)


_BY_NAME = {c.kind: c for c in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW)}


def get(identifier) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown optimizer {identifier!r}; choose one of: {', '.join(sorted(_BY_NAME))}")
        return _BY_NAME[key]()
    raise TypeError(f"optimizer must be a string or an fm.optimizers.Optimizer, got {type(identifier).__name__}")


def from_config(config: dict) -> Optimizer:
    from .schedules import from_config as schedule_from_config

    cfg = dict(config)
    cls = _BY_NAME[cfg.pop("kind")]
    schedule = schedule_from_config(cfg.pop("schedule"))
    if "betas" in cfg:
        cfg["betas"] = tuple(cfg["betas"])
    return cls(lr=schedule, **cfg)


__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "get"]

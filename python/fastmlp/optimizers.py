"""Optimizers with torch.optim's update formulas, parameter names and defaults.

Each update is one fused native pass over the flat parameter buffer (csrc/fastmlp/math.h,
optimizer_update); docs/formulas.md writes every formula out. `weight_decay` adds
weight_decay * p to the gradient of every parameter, as PyTorch does (AdamW decouples it:
p *= 1 - lr * weight_decay before the Adam step). Layer regularizers are separate and act on
kernels only. `lr` may be a number or an fm.schedules schedule; `learning_rate` is an alias.

Every optimizer also takes Keras's gradient clipping, applied to the gradient (loss plus
regularizers) before the optimizer's own weight decay and momentum: `clipvalue` clips each
element to [-clipvalue, clipvalue], `clipnorm` each parameter tensor (a kernel, a bias) to that
L2 norm, `global_clipnorm` all gradients together, as torch.nn.utils.clip_grad_norm_ does. At
most one of them may be set.
"""
from __future__ import annotations

import copy

from . import _core
from ._enums import OPTIMIZER_IDS
from ._validation import boolean, config_class, positive_int, real_number
from .schedules import Constant, Schedule


def _number(name, v, low=0.0, low_inclusive=True, high=None, high_inclusive=False):
    # Python and NumPy numbers alike (np.float32(1e-3) is a valid lr); 10**400 is not finite.
    return real_number(v, name, low, low_inclusive, high, high_inclusive)


_CLIPPING = ("clipvalue", "clipnorm", "global_clipnorm")


class Optimizer:
    kind = "sgd"
    _fields: tuple = ()

    def __init__(self, lr, learning_rate=None, weight_decay=0.0, **clipping):
        if learning_rate is not None:
            lr = learning_rate
        # lr >= 0: PyTorch and Keras accept 0 (warm-up schedules start there); negative is an error
        if isinstance(lr, Schedule):
            self.schedule = lr
        else:
            self.schedule = Constant(_number("lr", lr))
        self.weight_decay = _number("weight_decay", weight_decay)
        self._set_clipping(**clipping)

    def _set_clipping(self, clipvalue=None, clipnorm=None, global_clipnorm=None):
        # None (or absent) is off; a value must be > 0, as in Keras.
        values = {"clipvalue": clipvalue, "clipnorm": clipnorm, "global_clipnorm": global_clipnorm}
        for name, v in values.items():
            setattr(self, name, None if v is None else _number(name, v, low=0.0, low_inclusive=False))
        chosen = [name for name in _CLIPPING if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"only one of clipvalue, clipnorm and global_clipnorm may be set, got {', '.join(chosen)}")

    @property
    def lr(self) -> float:
        return self.schedule.initial_lr

    @lr.setter
    def lr(self, value):
        self.schedule.initial_lr = _number("lr", value)

    def copy(self) -> "Optimizer":
        """An independent deep copy (schedule included): a model compiled with it shares no state
        with others, so set_learning_rate on one model leaves the others' rates alone."""
        return copy.deepcopy(self)

    def native(self):
        c = _core.OptimizerConfig()
        c.kind = OPTIMIZER_IDS[self.kind]
        c.lr = self.schedule.initial_lr
        c.schedule = self.schedule.native()
        c.weight_decay = self.weight_decay
        for name in _CLIPPING:
            setattr(c, name, getattr(self, name) or 0.0)
        self._fill(c)
        return c

    def _fill(self, c):
        pass

    def nonnegative_state_slots(self) -> dict:
        """{slot: name} of the state slots that accumulate squared gradients and so can never be
        negative (a model file claiming otherwise is corrupt)."""
        return {}

    def get_config(self) -> dict:
        cfg = {"kind": self.kind, "schedule": self.schedule.get_config(), "weight_decay": self.weight_decay}
        cfg.update({f: getattr(self, f) for f in self._fields})
        cfg.update({name: getattr(self, name) for name in _CLIPPING if getattr(self, name) is not None})
        return cfg

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class SGD(Optimizer):
    """p -= lr * g, with optional (Nesterov) momentum: buf = momentum*buf + (1-dampening)*g."""

    kind = "sgd"
    _fields = ("momentum", "dampening", "nesterov")

    def __init__(self, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, *, learning_rate=None,
                 **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.momentum = _number("momentum", momentum)
        self.dampening = _number("dampening", dampening)
        self.nesterov = boolean(nesterov, "nesterov")
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")

    def _fill(self, c):
        c.momentum, c.dampening, c.nesterov = self.momentum, self.dampening, self.nesterov


class Adagrad(Optimizer):
    """sum += g^2; p -= lr / (1 + (t-1)*lr_decay) * g / (sqrt(sum) + eps)."""

    kind = "adagrad"
    _fields = ("lr_decay", "initial_accumulator_value", "eps")

    def __init__(self, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10, *,
                 learning_rate=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.lr_decay = _number("lr_decay", lr_decay)
        self.initial_accumulator_value = _number("initial_accumulator_value", initial_accumulator_value)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.lr_decay, c.initial_accumulator_value, c.eps = self.lr_decay, self.initial_accumulator_value, self.eps

    def nonnegative_state_slots(self) -> dict:
        return {0: "Adagrad sum"}


class RMSprop(Optimizer):
    """v = alpha*v + (1-alpha)*g^2; p -= lr * g / (sqrt(v [- mean(g)^2 if centered]) + eps), with momentum."""

    kind = "rmsprop"
    _fields = ("alpha", "eps", "momentum", "centered")

    def __init__(self, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, *,
                 learning_rate=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.alpha = _number("alpha", alpha, high=1.0, high_inclusive=True)
        self.eps = _number("eps", eps)
        self.momentum = _number("momentum", momentum)
        self.centered = boolean(centered, "centered")

    def _fill(self, c):
        c.alpha, c.eps, c.momentum, c.centered = self.alpha, self.eps, self.momentum, self.centered

    def nonnegative_state_slots(self) -> dict:
        return {0: "square average"}


class Adadelta(Optimizer):
    """v = rho*v + (1-rho)*g^2; d = sqrt(u+eps)/sqrt(v+eps)*g; u = rho*u + (1-rho)*d^2; p -= lr*d."""

    kind = "adadelta"
    _fields = ("rho", "eps")

    def __init__(self, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, learning_rate=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.rho = _number("rho", rho, high=1.0, high_inclusive=True)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.rho, c.eps = self.rho, self.eps

    def nonnegative_state_slots(self) -> dict:
        return {0: "square average", 1: "accumulated update"}


class Adam(Optimizer):
    """m, v moving averages; p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps); optional AMSGrad."""

    kind = "adam"
    _fields = ("betas", "eps", "amsgrad")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, *,
                 learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self.betas = _betas(betas, beta_1, beta_2)
        self.eps = _number("eps", eps)
        self.amsgrad = boolean(amsgrad, "amsgrad")

    def _fill(self, c):
        c.beta1, c.beta2 = self.betas
        c.eps, c.amsgrad = self.eps, self.amsgrad

    def nonnegative_state_slots(self) -> dict:
        return {1: "second moment v", 2: "AMSGrad max of v"} if self.amsgrad else {1: "second moment v"}

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg["betas"] = list(self.betas)
        return cfg


class AdamW(Adam):
    """Adam with decoupled weight decay: p *= 1 - lr*weight_decay, then the Adam step."""

    kind = "adamw"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, *,
                 learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, learning_rate=learning_rate, beta_1=beta_1,
                         beta_2=beta_2, **clipping)


class _AdamFamily(Optimizer):
    """Shared by NAdam, RAdam and LAMB: betas, eps and their two moment slots."""

    _fields = ("betas", "eps")

    def _init_moments(self, betas, eps, beta_1, beta_2):
        self.betas = _betas(betas, beta_1, beta_2)
        self.eps = _number("eps", eps)

    def _fill(self, c):
        c.beta1, c.beta2 = self.betas
        c.eps = self.eps

    def nonnegative_state_slots(self) -> dict:
        return {1: "second moment v"}

    def get_config(self) -> dict:
        cfg = super().get_config()
        cfg["betas"] = list(self.betas)
        return cfg


class NAdam(_AdamFamily):
    """torch.optim.NAdam: Adam with Nesterov momentum, mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay));
    p -= lr (1 - mu_t) / (1 - prod mu) * g / d + lr mu_{t+1} / (1 - prod mu ... mu_{t+1}) * m / d,
    d = sqrt(v / (1 - beta2^t)) + eps."""

    kind = "nadam"
    _fields = ("betas", "eps", "momentum_decay", "decoupled_weight_decay")

    def __init__(self, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3,
                 decoupled_weight_decay=False, *, learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self._init_moments(betas, eps, beta_1, beta_2)
        self.momentum_decay = _number("momentum_decay", momentum_decay)
        self.decoupled_weight_decay = boolean(decoupled_weight_decay, "decoupled_weight_decay")

    def _fill(self, c):
        super()._fill(c)
        c.momentum_decay, c.decoupled_weight_decay = self.momentum_decay, self.decoupled_weight_decay


class RAdam(_AdamFamily):
    """torch.optim.RAdam: Adam whose adaptive step is used only once the variance of its rate is
    tractable (rho_t > 5), then scaled by the rectification term r_t; before that, SGD with momentum."""

    kind = "radam"
    _fields = ("betas", "eps", "decoupled_weight_decay")

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, *,
                 learning_rate=None, beta_1=None, beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self._init_moments(betas, eps, beta_1, beta_2)
        self.decoupled_weight_decay = boolean(decoupled_weight_decay, "decoupled_weight_decay")

    def _fill(self, c):
        super()._fill(c)
        c.decoupled_weight_decay = self.decoupled_weight_decay


class LAMB(_AdamFamily):
    """LAMB (You et al. 2019, Algorithm 2): r = m_hat / (sqrt(v_hat) + eps) + weight_decay * p, and
    p -= lr * (||p|| / ||r||) * r with the trust ratio taken per kernel and per bias (1 when either
    norm is 0)."""

    kind = "lamb"

    def __init__(self, lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, *, learning_rate=None, beta_1=None,
                 beta_2=None, **clipping):
        super().__init__(lr, learning_rate, weight_decay, **clipping)
        self._init_moments(betas, eps, beta_1, beta_2)


class LBFGS(Optimizer):
    """torch.optim.LBFGS, run natively over the full batch: each fit epoch (or train_on_batch
    call) is one `step`, up to max_iter iterations of the two-loop recursion over the last
    history_size curvature pairs, with a fixed step lr (the very first scaled by min(1, 1/|g|_1))
    or line_search_fn="strong_wolfe". The loss must be deterministic, so models with Dropout or
    BatchNormalization are refused. The curvature history lives with the compiled model; it is
    not saved with it (a loaded model starts a new history)."""

    kind = "lbfgs"
    _fields = ("max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size", "line_search_fn")

    def __init__(self, lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7, tolerance_change=1e-9,
                 history_size=100, line_search_fn=None, *, learning_rate=None):
        super().__init__(lr, learning_rate, 0.0)
        if not isinstance(self.schedule, Constant) or self.schedule.warmup_steps:
            raise ValueError("LBFGS takes a number for lr, not a schedule")
        self.max_iter = positive_int(max_iter, "max_iter")
        self.max_eval = self.max_iter * 5 // 4 if max_eval is None else positive_int(max_eval, "max_eval")
        self.tolerance_grad = _number("tolerance_grad", tolerance_grad)
        self.tolerance_change = _number("tolerance_change", tolerance_change)
        self.history_size = positive_int(history_size, "history_size")
        if line_search_fn not in (None, "strong_wolfe"):
            raise ValueError(f"line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")
        self.line_search_fn = line_search_fn

    def native(self):
        # The engine's per-step update is not used (fit and train_on_batch call lbfgs_step);
        # a stateless SGD config with lr 0 keeps it harmless.
        c = _core.OptimizerConfig()
        c.kind = OPTIMIZER_IDS["sgd"]
        c.lr = 0.0
        return c

    def get_config(self) -> dict:
        cfg = super().get_config()
        del cfg["weight_decay"]  # LBFGS has none (torch's neither)
        return cfg

    def lbfgs_config(self):
        c = _core.LbfgsConfig()
        c.lr = self.lr
        c.max_iter, c.max_eval, c.history_size = self.max_iter, self.max_eval, self.history_size
        c.tolerance_grad, c.tolerance_change = self.tolerance_grad, self.tolerance_change
        c.strong_wolfe = self.line_search_fn == "strong_wolfe"
        return c


def _betas(betas, beta_1=None, beta_2=None):
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = betas
    b1 = b1 if beta_1 is None else beta_1
    b2 = b2 if beta_2 is None else beta_2
    return (_number("beta1", b1, high=1.0), _number("beta2", b2, high=1.0))


# The per-step optimizers, one per native kind (types.h's list is the source of both), and the
# full-batch methods that run their own native loop.
_PER_STEP = {c.kind: c for c in (SGD, Adagrad, RMSprop, Adadelta, Adam, AdamW, NAdam, RAdam, LAMB)}
assert set(_PER_STEP) == set(OPTIMIZER_IDS), "optimizers.py and the core's optimizer list disagree"
_BY_NAME = {**_PER_STEP, "lbfgs": LBFGS}


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
    """The optimizer that get_config described, built through its constructor so every field is
    checked as the constructor checks it; unknown kinds or fields, wrong types and out-of-range
    values (here or in the schedule) raise ValueError naming the field. Missing hyper-parameters
    take the constructor's defaults; kind and schedule are required."""
    from .schedules import from_config as schedule_from_config

    cls = config_class(config, "optimizer", "kind", _BY_NAME,
                       lambda cls: {"kind", "schedule", "weight_decay", *cls._fields, *_CLIPPING})
    kind = config["kind"]
    if "schedule" not in config:
        raise ValueError("optimizer config is missing the field 'schedule'")
    try:
        schedule = schedule_from_config(config["schedule"])
    except ValueError as exc:
        raise ValueError(f"optimizer config field 'schedule': {exc}") from None
    kwargs = {k: v for k, v in config.items() if k not in ("kind", "schedule")}
    if "betas" in kwargs and isinstance(kwargs["betas"], list):  # JSON writes the tuple as a list
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        return cls(lr=schedule, **kwargs)
    except ValueError as exc:
        raise ValueError(f"optimizer config ({kind!r}): {exc}") from None


__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "NAdam", "RAdam", "LAMB", "LBFGS",
           "get"]

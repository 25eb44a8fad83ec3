"""Loss functions, each a mean over the batch, computed natively from the output layer's
pre-activation z fused with the output activation:

sparse_categorical_crossentropy  logsumexp(z) - z[y]                (softmax output, integer labels)
categorical_crossentropy         sum_j y_j * (logsumexp(z) - z_j)   (softmax output, one-hot/soft rows)
binary_crossentropy              mean_j max(z,0) - z*y + log(1 + exp(-|z|))   (sigmoid output)
mse                              mean_j (a_j - y_j)^2, a = output activation(z)
multiclass_hinge                 sum_{j != y} max(0, a_j - a_y + 1)  (the lectures' SVM loss)
poisson                          mean_j a_j - y_j log(a_j + 1e-7)   (Keras; targets >= 0). On an
                                 exponential output it is e^z - y z, exactly (PyTorch's
                                 PoissonNLLLoss(log_input=True)): the Poisson deviance up to a constant
huber (delta=1.0)                mean_j 0.5 d^2 if |d| <= delta else delta (|d| - delta/2), d = a_j - y_j
mae                              mean_j |a_j - y_j|   (gradient sign(d), 0 at d = 0)
log_cosh                         mean_j log(cosh(a_j - y_j))   (computed without overflow)

Cross-entropies need a softmax (or sigmoid for BCE) output layer, or a linear output with
from_logits=True; either way they are evaluated on the logits, so they stay finite for logits
of any magnitude.
"""
from __future__ import annotations

from ._enums import LOSS_IDS
import math

from ._validation import boolean, config_class, real_number

_ALIASES = {
    "sparse_categorical_crossentropy": "sparse_categorical_crossentropy",
    "categorical_crossentropy": "categorical_crossentropy",
    "binary_crossentropy": "binary_crossentropy",
    "bce": "binary_crossentropy",
    "mse": "mse",
    "mean_squared_error": "mse",
    "squared_error": "mse",
    "multiclass_hinge": "multiclass_hinge",
    "hinge": "multiclass_hinge",
    "categorical_hinge": "multiclass_hinge",
    "poisson": "poisson",
    "huber": "huber",
    "huber_loss": "huber",
    "mae": "mae",
    "mean_absolute_error": "mae",
    "log_cosh": "log_cosh",
    "logcosh": "log_cosh",
}


class Loss:
    name = "mse"
    param = 0.0  # the native loss parameter (Huber's delta)

    def __init__(self, from_logits: bool = False):
        self.from_logits = boolean(from_logits, "from_logits")

    @property
    def takes_class_ids(self) -> bool:
        return self.name in ("sparse_categorical_crossentropy", "multiclass_hinge")

    @property
    def target_range(self) -> tuple | None:
        """(low, high) that every target value must lie in, or None. Cross-entropies take
        probabilities (one-hot or soft labels); labels 0..9 with BCE would train to a negative loss."""
        if self.name in ("binary_crossentropy", "categorical_crossentropy"):
            return (0.0, 1.0)
        if self.name == "poisson":  # counts or rates
            return (0.0, float("inf"))
        return None

    def get_config(self) -> dict:
        return {"name": self.name, "from_logits": self.from_logits}

    def __repr__(self):
        return f"{type(self).__name__}(from_logits={self.from_logits})"


def _loss_class(name):
    return type("".join(p.title() for p in name.split("_")), (Loss,), {"name": name})


SparseCategoricalCrossentropy = _loss_class("sparse_categorical_crossentropy")
CategoricalCrossentropy = _loss_class("categorical_crossentropy")
BinaryCrossentropy = _loss_class("binary_crossentropy")
MeanSquaredError = _loss_class("mse")
MulticlassHinge = _loss_class("multiclass_hinge")
Poisson = _loss_class("poisson")
MeanAbsoluteError = _loss_class("mae")
LogCosh = _loss_class("log_cosh")


class Huber(Loss):
    """Keras's Huber(delta=1.0) (PyTorch's HuberLoss): quadratic inside delta, linear outside."""

    name = "huber"

    def __init__(self, delta: float = 1.0, from_logits: bool = False):
        super().__init__(from_logits)
        self.delta = real_number(delta, "delta", low=0.0, low_inclusive=False)
        if not math.isfinite(self.delta):
            raise ValueError(f"delta must be a finite number > 0, got {delta!r}")

    @property
    def param(self) -> float:
        return self.delta

    def get_config(self) -> dict:
        return {**super().get_config(), "delta": self.delta}

    def __repr__(self):
        return f"Huber(delta={self.delta})"


_BY_NAME = {c.name: c for c in (SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy,
                                MeanSquaredError, MulticlassHinge, Poisson, Huber, MeanAbsoluteError, LogCosh)}


def get(identifier) -> Loss:
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str):
        key = _ALIASES.get(identifier.lower())
        if key is None:
            raise ValueError(f"unknown loss {identifier!r}; choose one of: {', '.join(sorted(_ALIASES))}")
        return _BY_NAME[key]()
    raise TypeError(f"loss must be a string or an fm.losses.Loss, got {type(identifier).__name__}")


def from_config(config: dict) -> Loss:
    """The Loss that get_config described; a bad config raises ValueError naming the field."""
    cls = config_class(config, "loss", "name", _BY_NAME, {"name", "from_logits", "delta"})
    if "delta" in config and cls is not Huber:
        raise ValueError(f"loss config field 'delta' belongs to huber, not {cls.name}")
    if cls is Huber:
        return Huber(delta=config.get("delta", 1.0), from_logits=config.get("from_logits", False))
    return cls(from_logits=config.get("from_logits", False))


__all__ = ["Loss", "SparseCategoricalCrossentropy", "CategoricalCrossentropy", "BinaryCrossentropy",
           "MeanSquaredError", "MulticlassHinge", "Poisson", "Huber", "MeanAbsoluteError", "LogCosh", "get",
           "LOSS_IDS"]

"""Kernel regularizers (never applied to biases).

L2(l) adds l * sum(W**2) to the loss (gradient 2*l*W); L1(l) adds l * sum(|W|) (gradient
l * sign(W)); L1L2(l1, l2) adds both. The penalty is part of the reported loss, as in Keras.
"""
from __future__ import annotations

from ._validation import real_number


class Regularizer:
    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        # Python or NumPy numbers; 10**400 is reported, not an OverflowError
        for name, v in (("l1", l1), ("l2", l2)):
            try:
                real_number(v, name, low=0.0)
            except ValueError:
                raise ValueError(f"regularization factor {name} must be a finite number >= 0, got {v!r}") from None
        self.l1 = float(l1)
        self.l2 = float(l2)

    def get_config(self) -> dict:
        return {"l1": self.l1, "l2": self.l2}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(l1={self.l1}, l2={self.l2})"


class L1(Regularizer):
    def __init__(self, l1: float = 0.01):
        super().__init__(l1=l1)


class L2(Regularizer):
    def __init__(self, l2: float = 0.01):
        super().__init__(l2=l2)


class L1L2(Regularizer):
    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        super().__init__(l1=l1, l2=l2)


def get(identifier) -> Regularizer | None:
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, dict):
        return L1L2(identifier.get("l1", 0.0), identifier.get("l2", 0.0))
    raise TypeError(f"kernel_regularizer must be an fm.regularizers object or None, got {identifier!r}")


__all__ = ["Regularizer", "L1", "L2", "L1L2", "get"]

"""Integer ids shared with the native core (must match csrc/fastmlp/types.h)."""
from ._core import LAYER_KINDS, OPTIMIZER_KINDS

LAYER_IDS = dict(LAYER_KINDS)  # exported by the core itself

ACTIVATION_IDS = {"linear": 0, "sigmoid": 1, "tanh": 2, "relu": 3, "leaky_relu": 4, "elu": 5, "softmax": 6,
                  "exponential": 7, "softplus": 8, "selu": 9, "gelu": 10, "silu": 11}
LOSS_IDS = {
    "sparse_categorical_crossentropy": 0,
    "categorical_crossentropy": 1,
    "binary_crossentropy": 2,
    "mse": 3,
    "multiclass_hinge": 4,
    "poisson": 5,
    "huber": 6,
    "mae": 7,
    "log_cosh": 8,
}
METRIC_IDS = {None: 0, "accuracy": 1, "binary_accuracy": 2, "mae": 3}
OPTIMIZER_IDS = dict(OPTIMIZER_KINDS)  # exported by the core from its list of optimizers
SCHEDULE_IDS = {"constant": 0, "step": 1, "exponential": 2, "inverse_time": 3, "cosine": 4}

"""The models and data of the data-parallel tests, shared by the MPI ranks (distributed_worker.py)
and the single-process reference runs in tests/test_distributed.py."""
import numpy as np

import fastmlp as fm

# Rows and global batches chosen so batches do not split evenly over 2 ranks and the last
# batch is partial (1001 = 9 * 110 + 11; 1001 = 10 * 100 + 1: rank 0's slice of the last is empty).
CASES = {
    "sgd_momentum_float32": dict(opt=lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9), dtype="float32",
                                 rows=1001, batch=110),
    "adam_float32": dict(opt=lambda: fm.optimizers.Adam(lr=1e-2), dtype="float32", rows=1001, batch=110),
    "sgd_momentum_float64": dict(opt=lambda: fm.optimizers.SGD(lr=0.05, momentum=0.9), dtype="float64",
                                 rows=1001, batch=100),
    "adam_float64": dict(opt=lambda: fm.optimizers.Adam(lr=1e-2), dtype="float64", rows=1001, batch=100),
    "dropout_l2_float64": dict(opt=lambda: fm.optimizers.Adam(lr=1e-2), dtype="float64", rows=1001, batch=111,
                               dropout=0.3, l2=1e-3, validation_split=0.2),
}


def data(case):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(case["rows"], 12)).astype(case["dtype"])
    y = (x[:, :3].sum(axis=1) > 0).astype(int) + (x[:, 3] > 1).astype(int)
    return x, y


def build(case, seed, same_dropout_seed=False, device="cpu"):
    reg = fm.regularizers.L2(case["l2"]) if case.get("l2") else None
    layers = [fm.Dense(24, activation="tanh", input_dim=12, kernel_regularizer=reg)]
    if case.get("dropout"):
        # Dropout's seed is part of the layer; the weights are what rank 0's broadcast replaces.
        layers.append(fm.Dropout(case["dropout"], seed=5 if same_dropout_seed else None))
    layers.append(fm.Dense(3, activation="softmax"))
    model = fm.Sequential(layers, seed=seed)
    model.compile(optimizer=case["opt"](), loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  device=device, dtype=case["dtype"])
    return model


def build_batchnorm(seed):
    """BatchNormalization first: its batch statistics are of x itself, whatever the weights, so its
    moving mean after a data-parallel fit (the row-weighted mean of the slices' means) must equal a
    single process's (get_weights()[2])."""
    model = fm.Sequential([fm.BatchNormalization(input_dim=12), fm.Dense(24, activation="tanh"),
                           fm.Dense(3, activation="softmax")], seed=seed)
    model.compile(optimizer=fm.optimizers.SGD(lr=0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
                  device="cpu", dtype="float64")
    return model


def shard_of_slices(n_rows, batch, rank, ranks):
    """The rows a rank's slices of the global batches take in an unshuffled replicated fit, in order:
    as its shard (sharded=True, shuffle=False) it trains exactly what the replicated fit gives it."""
    rows = []
    for first in range(0, n_rows, batch):
        g = min(batch, n_rows - first)
        rows.extend(range(first + g * rank // ranks, first + g * (rank + 1) // ranks))
    return np.array(rows, dtype=np.int64)

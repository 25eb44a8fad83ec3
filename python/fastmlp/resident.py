"""ResidentDataset: features (and targets) copied once into a backend's memory.

    data = model.upload(x, y)                 # one copy (host-to-device on CUDA)
    model.fit(data, epochs=10)                # no copy of x or y per fit call
    other.fit(data, validation_data=model.upload(xv, yv))

fit, evaluate and predict take a ResidentDataset where they take x (with y left out). It can be
used by any compiled model on the same device with the same dtype, input width and target
layout (class ids for sparse_categorical_crossentropy / hinge, rows of n_out values otherwise);
the engine checks this and raises ValueError naming the mismatch. fastmlp.model_selection uses
it to keep a search's data resident across all its trials.

Data larger than the model's data_budget (on CUDA: the free GPU memory less a reserve for the
workspace) stays in host memory instead and is `streamed`: fit, evaluate and predict copy it to
the backend in chunks of whole batches (fit gathers each chunk in the epoch's shuffled order on
the host), and training is bit-identical to resident data. (On the GPU, evaluate and predict of
streamed data may differ from resident in the last bits: cuBLASLt picks its GEMM algorithm by
pointer alignment, which chunking can change.) To avoid a second copy of data too large for the
GPU, a streamed dataset reads the validated array in place and keeps it alive: changing that
array in place changes the dataset. train_on_batch and compute_gradients copy a streamed batch
in whole for the call.
"""
from __future__ import annotations

import numpy as np


class ResidentDataset:
    """Training, validation or prediction data living in a model backend's memory (see module doc)."""

    def __init__(self, native, dtype):
        self._native = native
        self.dtype = np.dtype(dtype)

    @property
    def rows(self) -> int:
        return int(self._native.rows)

    @property
    def features(self) -> int:
        return int(self._native.features)

    @property
    def device(self) -> str:
        return self._native.device

    @property
    def has_targets(self) -> bool:
        return bool(self._native.has_targets)

    @property
    def target_columns(self) -> int:
        return int(self._native.target_columns)

    @property
    def streamed(self) -> bool:
        """True when the data stayed in host memory and passes to the backend in chunks."""
        return bool(self._native.streamed)

    @property
    def class_ids(self) -> bool:
        """True when the targets are one class id per row."""
        return bool(self._native.class_ids)

    def __len__(self):
        return self.rows

    def __repr__(self):
        if not self.has_targets:
            targets = "no targets"
        elif self.class_ids:
            targets = "class ids"
        else:
            targets = f"{self.target_columns} target columns"
        where = f"streamed to {self.device} from host memory" if self.streamed else f"on {self.device}"
        return f"ResidentDataset({self.rows} rows x {self.features} features, {targets}, {self.dtype.name}, {where})"


__all__ = ["ResidentDataset"]

"""Integer ids of the native core's enums by name, exported by the core from its lists in
csrc/fastmlp/types.h (nothing here is a copy that could drift)."""
from ._core import (ACTIVATION_KINDS, FURTHER_METRIC_KINDS, LAYER_KINDS, LOSS_KINDS, METRIC_KINDS,
                    OPTIMIZER_KINDS, SCHEDULE_KINDS)

LAYER_IDS = dict(LAYER_KINDS)
ACTIVATION_IDS = dict(ACTIVATION_KINDS)
LOSS_IDS = dict(LOSS_KINDS)
# The metric fused with the loss (compile(metrics=[...]) with one metric); the core's "none" is None.
METRIC_IDS = {None if name == "none" else name: id_ for name, id_ in METRIC_KINDS.items()}
# fastmlp.metrics' further metrics.
FURTHER_METRIC_IDS = dict(FURTHER_METRIC_KINDS)
OPTIMIZER_IDS = dict(OPTIMIZER_KINDS)
SCHEDULE_IDS = dict(SCHEDULE_KINDS)

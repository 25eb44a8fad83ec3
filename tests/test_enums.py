"""The core's named enums (csrc/fastmlp/types.h lists) as Python sees them: ids in list order,
every kind reachable from the Python API and every Python kind known to the core, and the core's
id checks following the lists (the first id past a list is refused)."""
import numpy as np
import pytest

import fastmlp as fm
from fastmlp import _core, _enums, activations, losses, metrics, schedules

ALL_KINDS = {
    "ACTIVATION_KINDS": _core.ACTIVATION_KINDS,
    "LOSS_KINDS": _core.LOSS_KINDS,
    "METRIC_KINDS": _core.METRIC_KINDS,
    "FURTHER_METRIC_KINDS": _core.FURTHER_METRIC_KINDS,
    "OPTIMIZER_KINDS": _core.OPTIMIZER_KINDS,
    "SCHEDULE_KINDS": _core.SCHEDULE_KINDS,
    "LAYER_KINDS": _core.LAYER_KINDS,
}


@pytest.mark.parametrize("attr", sorted(ALL_KINDS))
def test_ids_are_the_positions_of_distinct_names(attr):
    kinds = ALL_KINDS[attr]
    assert len(kinds) >= 4
    assert sorted(kinds.values()) == list(range(len(kinds)))
    assert all(isinstance(name, str) and name == name.lower() for name in kinds)


def test_ids_python_writes_into_saved_configs_did_not_move():
    # Ids are positions in the lists: a kind added anywhere but the end would renumber the others.
    # These are the ids of the first release's kinds, which native configs and tests were written with.
    assert _enums.ACTIVATION_IDS["sigmoid"] == 1 and _enums.ACTIVATION_IDS["silu"] == 11
    assert _enums.LOSS_IDS["sparse_categorical_crossentropy"] == 0 and _enums.LOSS_IDS["log_cosh"] == 8
    assert _enums.METRIC_IDS == {None: 0, "accuracy": 1, "binary_accuracy": 2, "mae": 3}
    assert _enums.SCHEDULE_IDS["cosine"] == 4 and _enums.LAYER_IDS["activation"] == 4
    assert _enums.OPTIMIZER_IDS["sgd"] == 0 and _enums.OPTIMIZER_IDS["lamb"] == 8


def test_every_core_activation_and_loss_has_its_python_name():
    for name in _core.ACTIVATION_KINDS:
        assert activations.get(name).name == name
    for name in _core.LOSS_KINDS:
        assert losses.get(name).name == name
    # ... and no Python class names a kind the core lacks.
    assert {cls().name for cls in set(activations._BY_NAME.values())} == set(_core.ACTIVATION_KINDS)
    assert {cls.name for cls in losses._BY_NAME.values()} == set(_core.LOSS_KINDS)


def test_every_core_schedule_and_further_metric_has_a_python_class():
    schedule_kinds = {cls.kind for cls in vars(schedules).values()
                      if isinstance(cls, type) and issubclass(cls, schedules.Schedule)}
    assert schedule_kinds == set(_core.SCHEDULE_KINDS)
    metric_kinds = {cls.kind for cls in vars(metrics).values()
                    if isinstance(cls, type) and issubclass(cls, metrics.Metric)}
    assert metric_kinds == set(_core.FURTHER_METRIC_KINDS)


def test_metric_slot_counts_come_from_the_core():
    ids = _core.FURTHER_METRIC_KINDS
    assert _core.metric_slot_count(ids["accuracy"]) == 1
    assert _core.metric_slot_count(ids["precision"]) == 2 == _core.metric_slot_count(ids["recall"])
    assert _core.metric_slot_count(ids["auc"]) == 2 * _core.AUC_BINS == metrics.AUC().slots
    assert _core.AUC_BINS == 200  # Keras's AUC(num_thresholds=200)
    assert metrics.MAX_METRICS == _core.MAX_METRICS and metrics.MAX_SLOTS == _core.MAX_METRIC_SLOTS
    with pytest.raises(ValueError, match="metric kind"):
        _core.metric_slot_count(len(ids))


def _engine(layers, loss=0, metric=0):
    return _core.Engine32(3, layers, loss, metric, "cpu", "float32", 0.0)


def test_the_core_refuses_the_first_id_past_each_list():
    dense = {"kind": _enums.LAYER_IDS["dense"], "units": 2, "activation": 0}
    _engine([dense])  # the valid model builds
    bad_layers = [dict(dense, kind=len(_core.LAYER_KINDS)), dict(dense, activation=len(_core.ACTIVATION_KINDS))]
    for layer in bad_layers:
        with pytest.raises(ValueError):
            _engine([layer])
    with pytest.raises(ValueError, match="loss id"):
        _engine([dense], loss=len(_core.LOSS_KINDS))
    with pytest.raises(ValueError, match="metric id"):
        _engine([dense], metric=len(_core.METRIC_KINDS))
    s = _core.Schedule()
    s.kind = len(_core.SCHEDULE_KINDS) - 1
    with pytest.raises(ValueError, match="schedule kind"):
        s.kind = len(_core.SCHEDULE_KINDS)
    c = _core.OptimizerConfig()
    c.kind = len(_core.OPTIMIZER_KINDS) - 1
    with pytest.raises(ValueError, match="optimizer kind"):
        c.kind = len(_core.OPTIMIZER_KINDS)


def test_models_of_the_last_kinds_train():
    # The last entry of each list works end to end (an off-by-one in a count would refuse it).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3)).astype(np.float32)
    y = x[:, :1] * 0.5
    model = fm.Sequential([fm.Dense(4, activation="silu", input_dim=3), fm.Activation("linear"), fm.Dense(1)], seed=0)
    model.compile(optimizer=fm.optimizers.LAMB(lr=schedules.CosineDecay(1e-2, decay_steps=10)), loss="log_cosh",
                  metrics=["mae", "mse"], device="cpu")
    h = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.isfinite(h.history["loss"]).all() and h.history["loss"][-1] < h.history["loss"][0]
    labels = (x[:, 0] > 0).astype(np.float32)[:, None]
    classifier = fm.Sequential([fm.Dense(4, activation="silu", input_dim=3), fm.Dense(1, activation="sigmoid")], seed=0)
    classifier.compile(optimizer="lamb", loss="binary_crossentropy", metrics=["accuracy", fm.metrics.AUC()],
                       device="cpu")
    h = classifier.fit(x, labels, batch_size=8, epochs=2, verbose=0)
    assert 0.0 <= h.history["auc"][-1] <= 1.0
